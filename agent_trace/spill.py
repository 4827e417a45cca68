"""The spill file: where batches wait on local disk while the store is down.

When appends keep failing for ``spill_after`` seconds, the recorder writes
each batch it cannot deliver to ``spill_path`` (JSON lines, one event per
line in the ``AgentEvent.to_dict`` form plus ``"store"``, the store it is
for; fsynced) and the agent keeps running. As soon as that store accepts
writes again (and at a normal exit) the recorder re-appends its own lines
first, in order, and removes them from the file. A spill left behind by a
process that died is re-appended by the next process recording into the
same store, or by hand: ``agent_trace.ingest(path)`` or ``agent-trace
ingest FILE`` (which ingests every line into the store it is given). Stores
skip event ids they already hold, so ingesting twice writes nothing twice.

Payloads in the spill are what the recorder captured, i.e. already redacted.
Several processes (and stores) may share one spill file: every write and
every drain holds an exclusive ``flock`` on it, and a drain keeps the lines
of other stores. A line that is torn (a crash mid-write) or not a valid
event costs only itself: it is logged with its line number and the field
at fault, and moved to ``<path>.rejected``; the lines after it go on.

Never: truncate the file before the store has acknowledged every event read
from it, or drop a line without keeping it in the ``.rejected`` file.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from agent_trace.events import AgentEvent, event_from_dict_checked

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: one process per spill file
    fcntl = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from agent_trace.stores.base import EventStore

__all__ = ["DEFAULT_SPILL_PATH", "SpillFile", "ingest", "ingest_sync", "store_identity"]

log = logging.getLogger("agent_trace")

DEFAULT_SPILL_PATH = "agent_trace.spill.jsonl"
REJECTED_SUFFIX = ".rejected"


def store_identity(store: Any) -> str:
    """What names ``store`` in a spill line: the file, directory or URL (no
    password); for an in-process store, its object in this process only."""
    from agent_trace.stores.base import mask_url

    kind = type(store).__name__
    if kind == "SQLiteStore" and store.path != ":memory:":
        return f"sqlite:///{store.path}"
    if kind == "JSONLStore":
        return f"jsonl:///{store.directory}"
    if kind == "PostgresStore":
        return f"{mask_url(store.url)}#schema={store.schema}"
    return f"{type(store).__module__}.{type(store).__qualname__}@{os.getpid()}:{id(store):x}"


@dataclass(frozen=True, slots=True)
class _Line:
    event: AgentEvent
    store: str | None  # the store it was spilled for (None: an earlier release's line)
    raw: bytes


@dataclass(frozen=True, slots=True)
class _Rejected:
    number: int
    raw: bytes
    reason: str


class SpillFile:
    """One spill file; its methods block (the recorder calls them on its writer thread).

    ``owner`` (see :func:`store_identity`) is written on every line, and
    :meth:`drain` with ``only_owner=True`` re-appends only those lines.
    """

    def __init__(self, path: str | os.PathLike[str], owner: str | None = None) -> None:
        self.path = os.path.abspath(os.fspath(path))
        self.owner = owner
        self._progress: tuple[int, str] | None = None  # (lines acknowledged, last event id)

    def __repr__(self) -> str:
        return f"SpillFile({self.path!r})"

    @property
    def rejected_path(self) -> str:
        return self.path + REJECTED_SUFFIX

    def write(self, events: Sequence[AgentEvent]) -> None:
        """Append ``events`` as whole lines and fsync; raises ``OSError`` if that fails."""
        owner = self.owner
        data = b"".join(
            orjson.dumps(
                {**ev.to_dict(), "store": owner} if owner is not None else ev.to_dict(),
                option=orjson.OPT_APPEND_NEWLINE,
            )
            for ev in events
        )
        directory = os.path.dirname(self.path)
        os.makedirs(directory, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            with _locked(fd):
                start = os.fstat(fd).st_size
                if start and os.pread(fd, 1, start - 1) != b"\n":
                    # A line torn by a crash: end it, so it costs only itself.
                    data = b"\n" + data
                try:
                    _write_all(fd, data)
                    os.fsync(fd)
                except BaseException:
                    # Disk full half way: take the partial batch back.
                    with suppress(OSError):
                        os.ftruncate(fd, start)
                    raise
        finally:
            os.close(fd)

    def pending(self) -> bool:
        """True if the file holds anything."""
        try:
            return os.path.getsize(self.path) > 0
        except OSError:
            return False

    def count(self, store: str | None) -> tuple[int, int]:
        """(lines spilled for ``store``, other lines) now in the file."""
        lines, rejected = self.scan()
        mine = sum(1 for line in lines if line.store == store)
        return mine, len(lines) - mine + len(rejected)

    def read(self) -> list[AgentEvent]:
        """The valid events in the file (torn or invalid lines left out)."""
        return [line.event for line in self.scan()[0]]

    def scan(self) -> tuple[list[_Line], list[_Rejected]]:
        """The file's valid lines, and those that are torn or invalid (with why)."""
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return [], []
        return _parse(data)

    async def drain(
        self, store: EventStore, batch_size: int = 5000, *, only_owner: bool = False
    ) -> int:
        """Append the file's events to ``store``, then take them out of the file.

        With ``only_owner``, only lines spilled for this file's ``owner``;
        other stores' lines stay. Torn or invalid lines are logged and moved
        to :attr:`rejected_path`. Holds the file's lock throughout, so no
        other writer adds lines that the rewrite would lose. Returns how many
        events were newly written. If an append fails, the file stays whole;
        the next ``drain`` on this object resumes after the last acknowledged
        chunk (a store that fails now and then would otherwise never get
        through a long spill).
        """
        try:
            fd = os.open(self.path, os.O_RDWR)
        except FileNotFoundError:
            return 0
        try:
            with _locked(fd):
                size = os.fstat(fd).st_size
                if size == 0:
                    self._progress = None
                    return 0
                lines, rejected = _parse(_pread_all(fd, size))
                if only_owner:
                    mine = [line for line in lines if line.store == self.owner]
                    kept = [line.raw for line in lines if line.store != self.owner]
                else:
                    mine, kept = lines, []
                start = self._resume_index(mine)
                written = 0
                for i in range(start, len(mine), batch_size):
                    chunk = mine[i : i + batch_size]
                    written += await store.append([line.event for line in chunk])
                    self._progress = (i + len(chunk), chunk[-1].event.event_id)
                if rejected:
                    self._reject(rejected)
                os.ftruncate(fd, 0)
                if kept:
                    _pwrite_all(fd, b"".join(kept))
                os.fsync(fd)
                self._progress = None
                return written
        finally:
            os.close(fd)

    def _reject(self, rejected: list[_Rejected]) -> None:
        """Keep bad lines in the ``.rejected`` file (fsynced) and say so, line by line."""
        where = self.rejected_path
        fd = os.open(where, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            _write_all(fd, b"".join(r.raw + b"\n" for r in rejected))
            os.fsync(fd)
        finally:
            os.close(fd)
        for r in rejected:
            log.warning(
                "agent_trace: %s:%d: %s; line kept in %s", self.path, r.number, r.reason, where
            )

    def _resume_index(self, lines: list[_Line]) -> int:
        """Where an interrupted drain left off, if the file still holds the same lines.

        Progress is the number of lines acknowledged and the last one's event
        id; if another process emptied and refilled the file since, that line
        is not there any more and the drain starts over (idempotent, only slower).
        """
        progress = self._progress
        if progress is None:
            return 0
        done, event_id = progress
        if 0 < done <= len(lines) and lines[done - 1].event.event_id == event_id:
            return done
        return 0


@contextmanager
def _locked(fd: int) -> Iterator[None]:
    if fcntl is None:  # pragma: no cover
        yield
        return
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


def _pread_all(fd: int, size: int) -> bytes:
    parts, offset = [], 0
    while offset < size:
        part = os.pread(fd, size - offset, offset)
        if not part:
            break
        parts.append(part)
        offset += len(part)
    return b"".join(parts)


def _pwrite_all(fd: int, data: bytes) -> None:
    view, offset = memoryview(data), 0
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _parse(data: bytes) -> tuple[list[_Line], list[_Rejected]]:
    """The file's valid lines, and the torn or invalid ones with the reason."""
    lines = data.split(b"\n")
    tail = lines.pop()  # after the last newline: empty, or a line torn by a crash
    good: list[_Line] = []
    bad: list[_Rejected] = []
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            d: Any = orjson.loads(raw)
            owner = d.pop("store", None) if isinstance(d, dict) else None
            if owner is not None and not isinstance(owner, str):
                raise ValueError("field 'store': must be a str")
            ev = event_from_dict_checked(d)
        except (orjson.JSONDecodeError, ValueError) as exc:
            reason = str(exc) if not isinstance(exc, orjson.JSONDecodeError) else f"not JSON: {exc}"
            bad.append(_Rejected(number, raw, reason))
            continue
        # Store-assigned fields are assigned again by the store it goes to.
        fresh = AgentEvent(
            event_id=ev.event_id,
            session_id=ev.session_id,
            event_type=ev.event_type,
            timestamp=ev.timestamp,
            payload=ev.payload,
            span_id=ev.span_id,
            parent_span_id=ev.parent_span_id,
            schema_version=ev.schema_version,
        )
        good.append(_Line(fresh, owner, raw + b"\n"))
    if tail.strip():
        bad.append(_Rejected(len(lines) + 1, tail, "torn: the line has no end (a crash mid-write)"))
    return good, bad


async def ingest(
    path: str | os.PathLike[str],
    store: EventStore | str | None = None,
    *,
    batch_size: int = 5000,
    remove: bool = False,
) -> int:
    """Re-append a spill (or any JSONL of events) to the store; returns events newly written.

    Every line's fields are checked (types and shapes); a torn or invalid
    line is refused with a warning naming the line and the field, and kept
    in ``<path>.rejected``; the other lines are ingested. Idempotent by
    ``event_id``: ingesting the same file twice writes nothing the second
    time. With ``remove=True`` the file is emptied once everything in it is
    stored. Every line goes to ``store``, whichever store it was spilled for.
    """
    from agent_trace.reading import _with_store

    spill = SpillFile(path)
    if not os.path.exists(spill.path):
        raise FileNotFoundError(f"no spill file at {spill.path!r}")

    async def run(s: EventStore) -> int:
        if remove:
            return await spill.drain(s, batch_size)
        lines, rejected = await asyncio.to_thread(spill.scan)
        if rejected:
            await asyncio.to_thread(_reject_once, spill, rejected)
        events = [line.event for line in lines]
        written = 0
        for i in range(0, len(events), batch_size):
            written += await s.append(events[i : i + batch_size])
        return written

    return await _with_store(store, run)


def _reject_once(spill: SpillFile, rejected: list[_Rejected]) -> None:
    """Report bad lines; copy them to the ``.rejected`` file unless already there
    (the spill itself is left as it is, so ingesting twice keeps one copy)."""
    try:
        with open(spill.rejected_path, "rb") as f:
            known = set(f.read().split(b"\n"))
    except FileNotFoundError:
        known = set()
    fresh = [r for r in rejected if r.raw not in known]
    if fresh:
        spill._reject(fresh)
    for r in rejected:
        if r not in fresh:
            log.warning("agent_trace: %s:%d: %s", spill.path, r.number, r.reason)


def ingest_sync(
    path: str | os.PathLike[str],
    store: EventStore | str | None = None,
    *,
    batch_size: int = 5000,
    remove: bool = False,
) -> int:
    """Blocking :func:`ingest`, for scripts and the CLI."""
    from agent_trace.reading import _run

    return _run(ingest(path, store, batch_size=batch_size, remove=remove))
