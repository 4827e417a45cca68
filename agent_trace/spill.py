"""The spill file: where batches wait on local disk while the store is down.

When appends keep failing for ``spill_after`` seconds, the recorder writes
each batch it cannot deliver to ``spill_path`` (JSON lines, one sealed event
per line in the ``AgentEvent.to_dict`` form, fsynced) and the agent keeps
running. Once the store accepts writes again the recorder re-appends the
spill first, in order, then truncates it. A spill left behind by a process
that died is re-appended by hand: ``agent_trace.ingest(path)`` or
``agent-trace ingest FILE``. Stores skip event ids they already hold, so
ingesting twice writes nothing twice.

Payloads in the spill are what the recorder captured, i.e. already redacted.
Several processes may share one spill file: every write and every drain
holds an exclusive ``flock`` on it. A torn last line (a crash mid-write) was
never acknowledged and is ignored.

Never: drop a line it cannot parse (it raises instead), or truncate the file
before the store has acknowledged every event read from it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, Any

import orjson

from agent_trace.events import AgentEvent, validate_event_type, validate_session_id

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: one process per spill file
    fcntl = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from agent_trace.stores.base import EventStore

__all__ = ["DEFAULT_SPILL_PATH", "SpillFile", "ingest", "ingest_sync"]

DEFAULT_SPILL_PATH = "agent_trace.spill.jsonl"


class SpillFile:
    """One spill file; its methods block (the recorder calls them on its writer thread)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.path.abspath(os.fspath(path))
        self._progress: tuple[int, str] | None = None

    def __repr__(self) -> str:
        return f"SpillFile({self.path!r})"

    def write(self, events: Sequence[AgentEvent]) -> None:
        """Append ``events`` as whole lines and fsync; raises ``OSError`` if that fails."""
        data = b"".join(
            orjson.dumps(ev.to_dict(), option=orjson.OPT_APPEND_NEWLINE) for ev in events
        )
        directory = os.path.dirname(self.path)
        os.makedirs(directory, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            with _locked(fd):
                start = os.fstat(fd).st_size
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view) :]
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

    def read(self) -> list[AgentEvent]:
        """The events in the file (complete lines only)."""
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return []
        return [ev for ev, _ in _parse(data, self.path)]

    async def drain(self, store: EventStore, batch_size: int = 5000) -> int:
        """Append everything in the file to ``store``, then empty the file.

        Holds the file's lock throughout, so no other writer adds lines that
        the truncation would lose. Returns how many events were newly written.
        If an append fails, the file stays whole; the next ``drain`` on this
        object resumes after the last acknowledged chunk (a store that fails
        now and then would otherwise never get through a long spill).
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
                entries = _parse(_pread_all(fd, size), self.path)
                start = self._resume_index(entries)
                written = 0
                for i in range(start, len(entries), batch_size):
                    chunk = entries[i : i + batch_size]
                    written += await store.append([ev for ev, _ in chunk])
                    last, end = chunk[-1]
                    self._progress = (end, last.event_id)
                os.ftruncate(fd, 0)
                os.fsync(fd)
                self._progress = None
                return written
        finally:
            os.close(fd)

    def _resume_index(self, entries: list[tuple[AgentEvent, int]]) -> int:
        """Where an interrupted drain left off, if the file still starts the same way.

        Progress is the end offset and event id of the last line acknowledged;
        if another process emptied and refilled the file since, that line is
        not there any more and the drain starts over (idempotent, only slower).
        """
        progress = self._progress
        if progress is None:
            return 0
        end, event_id = progress
        for i, (ev, line_end) in enumerate(entries):
            if line_end == end:
                return i + 1 if ev.event_id == event_id else 0
            if line_end > end:
                break
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


def _parse(data: bytes, path: str) -> list[tuple[AgentEvent, int]]:
    """The complete lines' events, each with the byte offset where its line ends."""
    lines = data.split(b"\n")
    lines.pop()  # after the last newline: empty, or a torn line never acknowledged
    events = []
    end = 0
    for number, line in enumerate(lines, start=1):
        end += len(line) + 1
        if not line.strip():
            continue
        try:
            d: Any = orjson.loads(line)
            ev = AgentEvent.from_dict(d)
            validate_session_id(ev.session_id)
            validate_event_type(ev.event_type)
            if not isinstance(ev.payload, dict):
                raise TypeError("payload is not an object")
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"{path}:{number}: not a spilled agent_trace event: {exc}") from exc
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
        events.append((fresh, end))
    return events


async def ingest(
    path: str | os.PathLike[str],
    store: EventStore | str | None = None,
    *,
    batch_size: int = 5000,
    remove: bool = False,
) -> int:
    """Re-append a spill (or any JSONL of events) to the store; returns events newly written.

    Idempotent by ``event_id``: events the store already holds are skipped,
    so ingesting the same file twice writes nothing the second time. With
    ``remove=True`` the file is emptied once everything in it is stored.
    """
    from agent_trace.reading import _with_store

    spill = SpillFile(path)
    if not os.path.exists(spill.path):
        raise FileNotFoundError(f"no spill file at {spill.path!r}")

    async def run(s: EventStore) -> int:
        if remove:
            return await spill.drain(s, batch_size)
        events = await asyncio.to_thread(spill.read)
        written = 0
        for i in range(0, len(events), batch_size):
            written += await s.append(events[i : i + batch_size])
        return written

    return await _with_store(store, run)


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
