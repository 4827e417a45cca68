"""The JSONL store: one append-only, human-readable file of events.

``<directory>/events.jsonl`` holds one JSON object per line (the
``AgentEvent.to_dict`` form, payload as its canonical JSON), in position
order. Several processes may append: each append holds an exclusive
``flock`` on ``events.lock``, first reads whatever other processes added
since it last looked (from the byte offset it had reached), then writes its
lines and fsyncs before unlocking. Readers hold a shared lock, so they never
see a batch before it is durable. Threads of one process appending at the
same time share that work: one write and one fsync per group of batches.

A final line without its newline is a write torn by a crash; it was never
acknowledged, so readers ignore it and the next append truncates it. A crash
may also leave the first lines of a batch whole: they are valid events, and
the retried batch skips them by ``event_id``.

Each process keeps an index of every event id, session head and line offset
in memory, so this store suits development and small deployments; use
SQLite or PostgreSQL for large histories. It needs ``fcntl`` (POSIX).

Never: rewrite a complete line, or return an event that is not yet fsynced.
"""

from __future__ import annotations

import asyncio
import os
import re
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from typing import Any

import orjson

from agent_trace import upcasting
from agent_trace.events import AgentEvent
from agent_trace.stores.base import (
    Captured,
    EventIndex,
    SessionFilter,
    SessionInfo,
    StoreError,
    check_limit,
    check_projection_name,
    checked_captured,
    event_types_filter,
    projection_conflict,
    split_state,
)

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["JSONLStore"]

EVENTS_FILE = "events.jsonl"
LOCK_FILE = "events.lock"
PROJECTIONS_DIR = "projections"
# A snapshot's first bytes: its checkpoint, generation (absent in files of
# earlier releases) and the first character of its state.
_SNAPSHOT_HEAD = re.compile(rb'\{"checkpoint":(-?\d+),(?:"gen":"([0-9a-f]*)",)?"state":(.)')
_COMPACT_AT = 1 << 20  # a view's log is folded into its snapshot past max(this, snapshot)
_READ_CHUNK = 8 << 20


class JSONLStore:
    """Events as lines of ``<directory>/events.jsonl``, safe across threads and processes."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = os.path.abspath(os.fspath(directory))
        self.path = os.path.join(self.directory, EVENTS_FILE)
        self._lock = threading.Lock()  # this process's threads; flock covers processes
        # Batches waiting for the next group commit (see _append).
        self._queue_lock = threading.Lock()
        self._queue: list[_Append] = []
        self._fd: int | None = None
        self._lock_fd: int | None = None
        self._index = EventIndex()
        self._offsets: list[int] = []  # byte offset of position p's line at index p - 1
        self._end = 0  # end of the last complete line indexed

    def __repr__(self) -> str:
        return f"JSONLStore({self.directory!r})"

    # --- the protocol ----------------------------------------------------------
    # File I/O and fsync run in a worker thread so the event loop keeps going.

    async def append(self, events: Sequence[AgentEvent]) -> int:
        """Durably append (fsync); skip known event ids; return the count."""
        if not events:
            return 0
        return await asyncio.to_thread(self._append, checked_captured(events))

    async def append_captured(self, items: Sequence[Captured]) -> int:
        """:meth:`append` for the recorder's captured tuples (no JSON round trip)."""
        if not items:
            return 0
        return await asyncio.to_thread(self._append, list(items))

    async def get_events(
        self,
        session_id: str,
        after_version: int = 0,
        event_types: Iterable[str] | None = None,
        *,
        raw: bool = False,
    ) -> list[AgentEvent]:
        """One session's events with ``version > after_version``, in version order."""
        types = event_types_filter(event_types)
        if types is not None and not types:
            return []
        return await asyncio.to_thread(self._get_events, session_id, after_version, types, raw)

    async def read_all(
        self, after_position: int = 0, limit: int | None = None, *, raw: bool = False
    ) -> list[AgentEvent]:
        """Events of every session with ``position > after_position``, in position order."""
        limit = check_limit(limit)
        return await asyncio.to_thread(self._read_all, max(after_position, 0), limit, raw)

    async def list_sessions(self, limit: int | None = None) -> list[SessionInfo]:
        """Sessions, most recently started first."""
        limit = check_limit(limit)
        return await asyncio.to_thread(self._list_sessions, limit)

    async def close(self) -> None:
        """Close the files and forget the index; a later call reopens. Safe to call twice."""
        with self._lock:
            for fd in (self._fd, self._lock_fd):
                if fd is not None:
                    os.close(fd)
            self._fd = self._lock_fd = None
            self._index = EventIndex()
            self._offsets = []
            self._end = 0

    # --- projection checkpoints (base.ProjectionStore) -------------------------
    # <directory>/projections/<name>.json holds {"checkpoint", "gen", "state"}: one
    # file, replaced whole (temp file, fsync, rename, fsync directory), so a crash
    # leaves the old pair or the new one. A view saved entry by entry appends its
    # changes to <name>.log instead, one fsynced line per save
    # {"gen", "checkpoint", "set", "del"}; only lines of the snapshot's
    # generation count, so a crash between writing a new snapshot (a whole save,
    # or a compaction once the log outgrows it) and emptying the log leaves the
    # old lines ignored. A final line without its newline was never acknowledged.
    # An exclusive flock on <name>.lock makes compare-and-set atomic across
    # processes without blocking appends; loads hold it shared.

    async def load_projection(self, name: str) -> tuple[str | None, int]:
        """``(state_json, checkpoint)`` as last saved, or ``(None, 0)``."""
        return await asyncio.to_thread(self._load_projection, check_projection_name(name))

    async def save_projection(
        self, name: str, state_json: str, checkpoint: int, expected_checkpoint: int
    ) -> None:
        """Replace the projection's file atomically if the stored checkpoint is expected."""
        check_projection_name(name)
        await asyncio.to_thread(
            self._save_projection, name, state_json, checkpoint, expected_checkpoint
        )

    async def save_projection_entries(
        self,
        name: str,
        entries: Mapping[str, str | None],
        checkpoint: int,
        expected_checkpoint: int,
    ) -> None:
        """Append the changed entries (``None``: deleted) and the checkpoint, compare-and-set."""
        check_projection_name(name)
        await asyncio.to_thread(
            self._save_entries, name, dict(entries), checkpoint, expected_checkpoint
        )

    def _projection_path(self, name: str, suffix: str = ".json") -> str:
        return os.path.join(self.directory, PROJECTIONS_DIR, f"{name}{suffix}")

    @contextmanager
    def _projection_locked(self, name: str, *, exclusive: bool) -> Iterator[bool]:
        """Hold ``<name>.lock``; yields False (nothing held) if there is none to hold."""
        if fcntl is None:  # pragma: no cover - Windows
            raise StoreError("JSONLStore needs fcntl (POSIX); use SQLiteStore on this platform")
        folder = os.path.join(self.directory, PROJECTIONS_DIR)
        if exclusive:
            os.makedirs(folder, exist_ok=True)
        try:
            flags = os.O_RDWR | os.O_CREAT if exclusive else os.O_RDONLY
            lock_fd = os.open(self._projection_path(name, ".lock"), flags, 0o644)
        except FileNotFoundError:
            yield False
            return
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield True
        finally:
            os.close(lock_fd)  # releases the flock

    def _load_projection(self, name: str) -> tuple[str | None, int]:
        with self._projection_locked(name, exclusive=False):
            return self._read_projection(name)

    def _read_projection(self, name: str) -> tuple[str | None, int]:
        """The snapshot with its log applied (caller holds the lock)."""
        try:
            with open(self._projection_path(name), "rb") as f:
                d = orjson.loads(f.read())
        except FileNotFoundError:
            return None, 0
        state, checkpoint, gen = d["state"], d["checkpoint"], d.get("gen")
        try:
            with open(self._projection_path(name, ".log"), "rb") as f:
                log = f.read()
        except FileNotFoundError:
            log = b""
        for line in log.split(b"\n")[:-1]:  # a last part without newline: torn, ignored
            change = orjson.loads(line)
            if change["gen"] != gen:
                continue  # left by a crash before the log was emptied
            state.update(change["set"])
            for key in change["del"]:
                state.pop(key, None)
            checkpoint = change["checkpoint"]
        return orjson.dumps(state).decode(), checkpoint

    def _head(self, name: str) -> tuple[int, str | None, bool | None, int]:
        """(checkpoint, gen, state is an object, log size) as saved; the lock is held.

        Reads the snapshot's first bytes and the log's last line only, and cuts
        a torn last line off the log: a save costs what it writes, not the view.
        """
        try:
            with open(self._projection_path(name), "rb") as f:
                head = f.read(200)
        except FileNotFoundError:
            return 0, None, None, 0
        m = _SNAPSHOT_HEAD.match(head)
        if m is None:
            raise StoreError(f"{self._projection_path(name)}: not a projection snapshot")
        checkpoint, is_object = int(m[1]), m[3] == b"{"
        gen = m[2].decode() if m[2] is not None else None
        try:
            fd = os.open(self._projection_path(name, ".log"), os.O_RDWR)
        except FileNotFoundError:
            return checkpoint, gen, is_object, 0
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                size = _line_start(fd, size)  # a save that crashed mid-write
                os.ftruncate(fd, size)
                os.fsync(fd)
            if size:
                last = orjson.loads(_pread(fd, _line_start(fd, size - 1), size - 1))
                if last["gen"] == gen:
                    checkpoint = last["checkpoint"]
                else:  # only lines a crash left behind: drop them now
                    os.ftruncate(fd, 0)
                    os.fsync(fd)
                    size = 0
        finally:
            os.close(fd)
        return checkpoint, gen, is_object, size

    def _save_projection(self, name: str, state_json: str, checkpoint: int, expected: int) -> None:
        with self._projection_locked(name, exclusive=True):
            found = self._head(name)[0]
            if found != expected:
                raise projection_conflict(name, expected, found)
            self._write_snapshot(name, state_json.encode(), checkpoint)

    def _write_snapshot(self, name: str, state_json: bytes, checkpoint: int) -> None:
        """A new generation: the snapshot replaced atomically, then the log emptied."""
        path = self._projection_path(name)
        gen = os.urandom(8).hex()
        data = b'{"checkpoint":%d,"gen":"%s","state":' % (checkpoint, gen.encode())
        tmp = f"{path}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            _write_all(fd, data + state_json + b"}\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        _fsync_dir(os.path.dirname(path))
        with suppress(FileNotFoundError):
            fd = os.open(self._projection_path(name, ".log"), os.O_RDWR)
            try:
                os.ftruncate(fd, 0)
                os.fsync(fd)
            finally:
                os.close(fd)

    def _save_entries(
        self, name: str, entries: dict[str, str | None], checkpoint: int, expected: int
    ) -> None:
        with self._projection_locked(name, exclusive=True):
            found, gen, is_object, log_size = self._head(name)
            if found != expected:
                raise projection_conflict(name, expected, found)
            if is_object is None:  # nothing saved yet: an empty snapshot to log against
                self._write_snapshot(name, b"{}", expected)
                found, gen, is_object, log_size = self._head(name)
            if not is_object:
                state_json, _ = self._read_projection(name)
                split_state(name, state_json or "null")  # raises: not a JSON object
            change = {
                "gen": gen,
                "checkpoint": checkpoint,
                "set": {k: orjson.Fragment(v) for k, v in entries.items() if v is not None},
                "del": [k for k, v in entries.items() if v is None],
            }
            line = orjson.dumps(change, option=orjson.OPT_APPEND_NEWLINE)
            log = self._projection_path(name, ".log")
            created = not os.path.exists(log)
            fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                _write_all(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
            if created:
                _fsync_dir(os.path.dirname(log))
            snapshot_size = os.stat(self._projection_path(name)).st_size
            if log_size + len(line) > max(snapshot_size, _COMPACT_AT):
                # The log outgrew the view: fold it into a new snapshot (amortized:
                # it took at least the snapshot's size in saves to get here).
                state_json, _ = self._read_projection(name)
                self._write_snapshot(name, (state_json or "{}").encode(), checkpoint)

    # --- blocking work (worker thread) -----------------------------------------

    def _append(self, items: list[Captured]) -> int:
        """Append one caller's batch, committed with whatever other threads queued meanwhile.

        Group commit: each batch joins a queue; the thread that next holds the
        store's lock writes every queued batch with one ``write`` and one
        ``fsync`` and tells each caller its count. So N threads appending at
        once cost one fsync, not N, and no call returns before its events are
        durable.
        """
        request = _Append(items)
        with self._queue_lock:
            self._queue.append(request)
        with self._lock:
            if not request.done:
                with self._queue_lock:
                    group, self._queue = self._queue, []
                self._commit_group(group)
        if request.error is not None:
            raise request.error
        return request.count

    def _commit_group(self, group: list[_Append]) -> None:
        """Commit ``group`` (under ``self._lock``); each request gets its count or error."""
        try:
            if len(group) == 1:
                group[0].count = self._commit(group[0].items)
            else:
                try:
                    counts = self._commit([item for r in group for item in r.items], group)
                except Exception as exc:
                    if isinstance(exc, OSError):
                        raise
                    # A batch the store refuses must not fail the others: alone, each
                    # gets its own outcome.
                    for r in group:
                        self._commit_group([r])
                    return
                for r, count in zip(group, counts, strict=True):
                    r.count = count
        except BaseException as exc:
            for r in group:
                r.error = exc
        finally:
            for r in group:
                r.done = True

    def _commit(self, items: list[Captured], group: list[_Append] | None = None) -> Any:
        """Write ``items`` durably: their new count, or with ``group`` each request's."""
        with self._locked(exclusive=True) as fd:
            self._catch_up(fd, repair=True)
            rows = self._index.seal(items)
            if group is not None:
                counts = _counts(group, {row[0] for row in rows})
            if not rows:
                return 0 if group is None else counts
            lines = [_line(row) for row in rows]
            start = self._end
            try:
                _write_all(fd, b"".join(lines))
                os.fsync(fd)
            except BaseException:
                # Nothing was acknowledged: take back whatever part got written.
                with suppress(OSError):  # if not, the next append drops the torn line
                    os.ftruncate(fd, start)
                raise
            offset = start
            for row, line in zip(rows, lines, strict=True):
                self._index.add(row)
                self._offsets.append(offset)
                offset += len(line)
            self._end = offset
        return len(rows) if group is None else counts

    def _get_events(
        self, session_id: str, after_version: int, types: frozenset[str] | None, raw: bool = False
    ) -> list[AgentEvent]:
        with self._lock, self._locked(exclusive=False) as fd:
            self._catch_up(fd, repair=False)
            positions = self._index.positions(session_id, after_version)
            chunks = [_pread(fd, start, stop) for start, stop in self._spans(positions)]
        events = [_parse(line, raw) for chunk in chunks for line in chunk.splitlines()]
        if types is not None:
            events = [ev for ev in events if ev.event_type in types]
        return events

    def _read_all(
        self, after_position: int, limit: int | None, raw: bool = False
    ) -> list[AgentEvent]:
        with self._lock, self._locked(exclusive=False) as fd:
            self._catch_up(fd, repair=False)
            last = self._index.last_position
            stop = last if limit is None else min(last, after_position + limit)
            if stop <= after_position:
                return []
            start_offset = self._offsets[after_position]
            end_offset = self._offsets[stop] if stop < last else self._end
            data = _pread(fd, start_offset, end_offset)
        return [_parse(line, raw) for line in data.splitlines()]

    async def stored_rows(
        self, session_id: str | None = None, after_position: int = 0, limit: int | None = None
    ) -> list[tuple[Any, ...]]:
        """Rows as stored, for verification (see ``SQLiteStore.stored_rows``).

        A line is its row written canonically; a line that is not (a
        duplicate key, other spacing or number spelling) comes back with its
        raw text as the payload, which verification then reports.
        """
        limit = check_limit(limit)
        return await asyncio.to_thread(self._stored_rows, session_id, after_position, limit)

    def _stored_rows(
        self, session_id: str | None, after_position: int, limit: int | None
    ) -> list[tuple[Any, ...]]:
        with self._lock, self._locked(exclusive=False) as fd:
            self._catch_up(fd, repair=False)
            if session_id is not None:
                positions = self._index.positions(session_id)
            else:
                last = self._index.last_position
                stop = last if limit is None else min(last, after_position + limit)
                positions = list(range(max(after_position, 0) + 1, stop + 1))
            chunks = [_pread(fd, start, stop) for start, stop in self._spans(positions)]
        return [_stored_row(line) for chunk in chunks for line in chunk.splitlines()]

    def _list_sessions(
        self, limit: int | None, filter: SessionFilter | None = None, full: bool = False
    ) -> list[SessionInfo]:
        with self._lock, self._locked(exclusive=False) as fd:
            self._catch_up(fd, repair=False)
            return self._index.session_infos(limit, filter, full)

    async def query_sessions(
        self, limit: int | None = None, filter: SessionFilter | None = None
    ) -> list[SessionInfo]:
        """Sessions from the sessions index, newest-started first (``SessionIndexStore``).

        The index is built from the file as it is read (on open and as other
        writers append), under the same lock as the append.
        """
        limit = check_limit(limit)
        return await asyncio.to_thread(self._list_sessions, limit, filter, True)

    async def session_totals(self) -> dict[str, Any]:
        """Counts over every session, from the sessions index."""
        return await asyncio.to_thread(self._totals)

    def _totals(self) -> dict[str, Any]:
        with self._lock, self._locked(exclusive=False) as fd:
            self._catch_up(fd, repair=False)
            return self._index.totals()

    def _spans(self, positions: list[int]) -> list[tuple[int, int]]:
        """Byte ranges holding the lines of ``positions`` (ascending); adjacent lines merged."""
        offsets, last, end = self._offsets, self._index.last_position, self._end
        spans = []
        i, n = 0, len(positions)
        while i < n:
            j = i
            while j + 1 < n and positions[j + 1] == positions[j] + 1:
                j += 1
            final = positions[j]
            spans.append((offsets[positions[i] - 1], offsets[final] if final < last else end))
            i = j + 1
        return spans

    @contextmanager
    def _locked(self, *, exclusive: bool) -> Iterator[int]:
        """The events file's descriptor, under a shared or exclusive ``flock``."""
        fd, lock_fd = self._open()
        fcntl.flock(lock_fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield fd
        finally:
            fcntl.flock(lock_fd, fcntl.LOCK_UN)

    def _open(self) -> tuple[int, int]:
        if self._fd is not None and self._lock_fd is not None:
            return self._fd, self._lock_fd
        if fcntl is None:  # pragma: no cover - Windows
            raise StoreError("JSONLStore needs fcntl (POSIX); use SQLiteStore on this platform")
        where = f"cannot open JSONL store {self.directory!r}"
        try:
            os.makedirs(self.directory, exist_ok=True)
            created = not os.path.exists(self.path)
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        except PermissionError as exc:
            raise PermissionError(f"{where}: {exc.strerror}") from exc
        except OSError as exc:
            raise ConnectionError(f"{where}: {exc.strerror or exc}") from exc
        try:
            lock_path = os.path.join(self.directory, LOCK_FILE)
            lock_fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            os.close(fd)
            raise ConnectionError(f"{where}: {exc.strerror or exc}") from exc
        if created:
            _fsync_dir(self.directory)  # make the new file's directory entry durable
        self._fd, self._lock_fd = fd, lock_fd
        return fd, lock_fd

    def _catch_up(self, fd: int, *, repair: bool) -> None:
        """Index complete lines past ``self._end``; with ``repair``, drop a torn last line."""
        size = os.fstat(fd).st_size
        if size < self._end:
            raise StoreError(
                f"{self.path} shrank from {self._end} to {size} bytes: it was edited or replaced"
            )
        start, chunk_size = self._end, _READ_CHUNK
        while start < size:
            data = os.pread(fd, min(chunk_size, size - start), start)
            cut = data.rfind(b"\n") + 1
            if cut == 0:
                if start + len(data) >= size:
                    break  # no newline up to EOF: a torn line
                chunk_size *= 2  # one line longer than the chunk
                continue
            self._index_lines(data[:cut], start)
            start += cut
        if repair and start < size:
            os.ftruncate(fd, start)
            os.fsync(fd)

    def _index_lines(self, data: bytes, offset: int) -> None:
        index, offsets = self._index, self._offsets
        for line in data.split(b"\n")[:-1]:
            try:
                d = orjson.loads(line)
                row = _row(d)
            except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
                raise StoreError(f"{self.path}: unreadable line at byte {offset}: {exc}") from exc
            index.add(row, d.get("payload"))
            offsets.append(offset)
            offset += len(line) + 1
            self._end = offset


class _Append:
    """One caller's batch in a group commit, and what came of it."""

    __slots__ = ("count", "done", "error", "items")

    def __init__(self, items: list[Captured]) -> None:
        self.items = items
        self.done = False
        self.count = 0
        self.error: BaseException | None = None


def _counts(group: list[_Append], new_ids: set[str]) -> list[int]:
    """How many of the new events each request brought (an id counts once, first come)."""
    claimed: set[str] = set()
    counts = []
    for r in group:
        n = 0
        for item in r.items:
            eid = item[0]
            if eid in new_ids and eid not in claimed:
                claimed.add(eid)
                n += 1
        counts.append(n)
    return counts


def _line(row: tuple[Any, ...]) -> bytes:
    # Fragment: the payload is written exactly as it was hashed.
    return orjson.dumps(
        {
            "event_id": row[0],
            "session_id": row[1],
            "event_type": row[2],
            "timestamp": row[3],
            "payload": orjson.Fragment(row[4]),
            "version": row[5],
            "position": row[6],
            "span_id": row[7],
            "parent_span_id": row[8],
            "schema_version": row[9],
            "prev_hash": row[10],
            "hash": row[11],
            "store_hash": row[12],
        },
        option=orjson.OPT_APPEND_NEWLINE,
    )


def _line_without_store_hash(row: tuple[Any, ...]) -> bytes:
    """The line an earlier release wrote for ``row`` (no store chain link)."""
    line = _line(row)
    return line[: line.rindex(b',"store_hash":')] + b"}\n"


def _row(d: dict[str, Any]) -> tuple[Any, ...]:
    """A parsed line as a row; its payload (already decoded) is left out (None)."""
    return (
        d["event_id"],
        d["session_id"],
        d["event_type"],
        d["timestamp"],
        None,
        d["version"],
        d["position"],
        d.get("span_id"),
        d.get("parent_span_id"),
        d.get("schema_version", 1),
        d["prev_hash"],
        d["hash"],
        d.get("store_hash"),
    )


def _stored_row(line: bytes) -> tuple[Any, ...]:
    d = orjson.loads(line)
    payload = d.get("payload")
    row = _row(d)
    try:
        text = orjson.dumps(payload, option=orjson.OPT_SORT_KEYS).decode()
    except TypeError:
        text = line.decode("utf-8", "replace")
    row = (*row[:4], text, *row[5:])
    canonical = _line(row) if row[12] is not None else _line_without_store_hash(row)
    if canonical != line + b"\n":
        row = (*row[:4], line.decode("utf-8", "replace"), *row[5:])
    return row


def _parse(line: bytes, raw: bool = False) -> AgentEvent:
    d = orjson.loads(line)
    if not isinstance(d, dict):
        raise TypeError(f"expected a JSON object, got {type(d).__name__}")
    ev = AgentEvent.from_dict(d)
    return ev if raw or not upcasting.has_upcasters() else upcasting.upcast(ev)


def _line_start(fd: int, end: int) -> int:
    """The offset just after the last newline before ``end`` (0 if there is none)."""
    start, step = end, 1 << 16
    while start > 0:
        lo = max(0, start - step)
        cut = os.pread(fd, start - lo, lo).rfind(b"\n")
        if cut >= 0:
            return lo + cut + 1
        start, step = lo, step * 2
    return 0


def _pread(fd: int, start: int, stop: int) -> bytes:
    """Bytes ``start:stop`` of the file (pread may return less than asked)."""
    parts = []
    while start < stop:
        part = os.pread(fd, stop - start, start)
        if not part:
            raise StoreError(f"events file ended at byte {start}, expected {stop}")
        parts.append(part)
        start += len(part)
    return b"".join(parts)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fsync_dir(directory: str) -> None:
    try:
        dfd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)
