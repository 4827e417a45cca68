"""The SQLite store: one file, many processes, the default backend.

Every operation is one plain function run on the connection's aiosqlite
thread, so an append is a single ``BEGIN IMMEDIATE`` ... ``COMMIT`` that no
other task, thread or event loop can interleave with, and that a cancelled
caller cannot leave half open. Processes sharing the file serialize on
SQLite's write lock (waiting up to ``busy_timeout_ms``); readers see only
committed events (WAL) and never block the writer.

Durability: the database runs in WAL mode. With ``synchronous="NORMAL"``
(the default) a returned ``append`` survives a crash of the process; with
``"FULL"`` it also survives a power loss or OS crash, at the cost of an
fsync per batch.

Never: rewrite or delete stored rows (triggers refuse UPDATE and DELETE), or
open or create anything before the first call (constructing a store only
checks that its directory exists and is writable).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
import orjson

from agent_trace.events import AgentEvent
from agent_trace.stores.base import (
    ENTRIES_MARKER,
    INDEX_FIELDS,
    INDEX_JSON_FIELDS,
    ROW_WIDTH,
    Captured,
    SessionFilter,
    SessionInfo,
    StoreError,
    add_models,
    add_tool_calls,
    check_limit,
    check_projection_name,
    checked_captured,
    entries_json,
    event_from_row,
    event_types_filter,
    events_from_rows,
    fold_index,
    fold_index_flat,
    info_from_entry,
    percentile_ranks,
    projection_conflict,
    seal_captured_flat,
    session_metadata,
    split_state,
    totals_of,
    unique_captured,
)

__all__ = ["FileChanged", "SQLiteStore"]

T = TypeVar("T")
_Pair = tuple[aiosqlite.Connection, sqlite3.Connection]

# 1: events and triggers; 2: the store chain column (SPEC 8, the global order);
# 3: the sessions index (a row per session, written in each append's transaction).
SCHEMA_VERSION = 3
# A read-only connection cannot migrate; schema 1 lacks only the store chain
# column, which reads do without (verification sees no links: an earlier release),
# and schemas 1-2 lack the sessions index, which reads replace with a scan.
_READABLE_FROM = 1
_INDEXED_FROM = 3
_SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")
# Well under SQLite's bound-parameter limit (999 before 3.32).
_CHUNK = 500

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    position INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL UNIQUE,
    session_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    event_type TEXT NOT NULL,
    timestamp TEXT NOT NULL,
    span_id TEXT,
    parent_span_id TEXT,
    schema_version INTEGER NOT NULL,
    payload TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL,
    store_hash TEXT,
    UNIQUE (session_id, version)
);
CREATE TRIGGER IF NOT EXISTS events_no_update BEFORE UPDATE ON events
BEGIN
    SELECT RAISE(ABORT, 'agent_trace events are append-only: UPDATE is not allowed');
END;
CREATE TRIGGER IF NOT EXISTS events_no_delete BEFORE DELETE ON events
BEGIN
    SELECT RAISE(ABORT, 'agent_trace events are append-only: DELETE is not allowed');
END;
"""
# No index on event_type: every read is by session (the UNIQUE index) or by
# position (the primary key); another index would only slow appends.

# The sessions index (base.fold_index): one row per session, upserted in the
# append's transaction, so it always agrees with the committed events.
_SESSIONS_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    session_id TEXT PRIMARY KEY,
    started_at TEXT NOT NULL,
    last_activity TEXT NOT NULL,
    first_position INTEGER NOT NULL,
    last_position INTEGER NOT NULL,
    event_count INTEGER NOT NULL,
    last_version INTEGER NOT NULL,
    status TEXT NOT NULL,
    duration_ms REAL,
    tool_calls INTEGER NOT NULL,
    llm_calls INTEGER NOT NULL,
    decisions INTEGER NOT NULL,
    failures INTEGER NOT NULL,
    input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    total_tokens INTEGER NOT NULL,
    models TEXT NOT NULL,
    tools TEXT NOT NULL,
    agent TEXT,
    metadata TEXT,
    last_hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_by_start ON sessions (started_at, first_position);
CREATE TABLE IF NOT EXISTS tool_calls (
    tool TEXT NOT NULL,
    failed INTEGER NOT NULL,
    duration_ms REAL
);
CREATE INDEX IF NOT EXISTS tool_calls_by_tool ON tool_calls (tool, duration_ms, failed);
"""
# ``sessions`` also keeps each session's head hash: an append reads the heads
# it chains onto from there, in the same query as the entries it updates.
# ``tool_calls``: one row per tool call (tool, failed, duration), for the
# per-tool figures of ``stats`` (their percentiles need every duration).
_SESSION_FIELDS = (*INDEX_FIELDS, "last_hash")
_SESSION_COLUMNS = ", ".join(_SESSION_FIELDS)
_UPSERT_SESSION = (
    f"INSERT OR REPLACE INTO sessions ({_SESSION_COLUMNS}) "
    f"VALUES ({', '.join('?' * len(_SESSION_FIELDS))})"
)
_JSON_COLUMNS = tuple(i for i, name in enumerate(_SESSION_FIELDS) if name in INDEX_JSON_FIELDS)
_INSERT_TOOL_CALL = "INSERT INTO tool_calls (tool, failed, duration_ms) VALUES (?, ?, ?)"
# The event types whose payload the index reads (base._INDEX_KINDS, any *_failed).
_INDEXED_PAYLOAD = (
    "CASE WHEN event_type IN ('session_started', 'session_ended', 'tool_executed', "
    "'tool_failed', 'llm_responded', 'llm_failed', 'decision_made', "
    "'response_generated', 'error_occurred') OR event_type LIKE '%\\_failed' ESCAPE '\\' "
    "THEN payload END"
)

# Columns in AgentEvent field order: the row layout of base.seal_rows and event_from_row.
_COLUMNS = (
    "event_id, session_id, event_type, timestamp, payload, version, position, "
    "span_id, parent_span_id, schema_version, prev_hash, hash"
)
# What is stored, for verification: the events' columns and the store chain's link.
_STORED_COLUMNS = f"{_COLUMNS}, store_hash"
_INSERT = f"INSERT INTO events ({_STORED_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
# Rows per multi-row INSERT. executemany steps (and so releases and re-takes
# the GIL) once per row; under a busy caller thread each re-take can wait a
# whole switch interval. One statement per block of rows steps once. The
# block stays under SQLite's bound-parameter limit (999 before 3.32).
_ROWS_PER_INSERT = 500 if sqlite3.sqlite_version_info >= (3, 32, 0) else 70
_INSERT_BLOCK = f"INSERT INTO events ({_STORED_COLUMNS}) VALUES " + ",".join(
    ["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"] * _ROWS_PER_INSERT
)
_LIST_SESSIONS = """
SELECT g.session_id, g.started_at, g.last_activity, g.event_count, g.last_version,
    (SELECT m.payload FROM events m
     WHERE m.session_id = g.session_id AND m.event_type = 'session_started'
     ORDER BY m.version LIMIT 1)
FROM (
    SELECT session_id, MIN(timestamp) AS started_at, MAX(timestamp) AS last_activity,
        COUNT(*) AS event_count, MAX(version) AS last_version, MIN(position) AS first_position
    FROM events GROUP BY session_id
    ORDER BY started_at DESC, first_position DESC LIMIT ?
) g
ORDER BY g.started_at DESC, g.first_position DESC
"""


class FileChanged(StoreError):
    """The database file was deleted or replaced since this connection opened it.

    SQLite would go on writing into the unlinked (or the old) file, where no
    reader will ever find the rows: the append is refused instead, and the
    store reopens the path on the next call.
    """


FileId = tuple[int, int]


def _file_id(path: str) -> FileId | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def check_same_file(path: str, opened: FileId | None) -> None:
    """Raise :class:`FileChanged` unless ``path`` is still the file opened as ``opened``."""
    if opened is None:
        return
    now = _file_id(path)
    if now != opened:
        what = "deleted" if now is None else "replaced by another file"
        raise FileChanged(
            f"SQLite store {path!r} was {what} while this process was writing to it; "
            "the store reopens the path, events go to the new file"
        )
    # Never open() the database file here to look at it: closing any descriptor
    # of it drops every POSIX lock this process holds on it, SQLite's included
    # (SQLite's "How To Corrupt" page, 2.2). os.stat opens nothing.


class _OpenInterrupted(Exception):
    """The task opening the connection was cancelled; a waiter should try again."""


class SQLiteStore:
    """Events in one SQLite file, shared safely by threads, event loops and processes.

    ``path`` is resolved against the current directory when the store is
    built; ``":memory:"`` gives a private in-memory database. A missing or
    unwritable directory raises ``ConnectionError``/``PermissionError`` naming
    the path right here; the file itself is created on first use.

    ``read_only=True`` opens an existing file with SQLite's ``mode=ro`` (for
    viewers such as ``agent-trace ui``): it creates nothing, sets no PRAGMA
    that writes, and ``append`` raises ``StoreError``.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        busy_timeout_ms: int = 30_000,
        synchronous: str = "NORMAL",
        read_only: bool = False,
    ) -> None:
        path = os.fspath(path)
        self.path = path if path == ":memory:" else os.path.abspath(path)
        if not isinstance(busy_timeout_ms, int) or busy_timeout_ms < 0:
            raise ValueError(f"busy_timeout_ms must be an int >= 0, got {busy_timeout_ms!r}")
        if str(synchronous).upper() not in _SYNCHRONOUS:
            raise ValueError(f"synchronous must be one of {_SYNCHRONOUS}, got {synchronous!r}")
        self.busy_timeout_ms = busy_timeout_ms
        self.synchronous = str(synchronous).upper()
        self.read_only = bool(read_only)
        if self.read_only and self.path == ":memory:":
            raise ValueError("a read-only SQLite store needs a file, not ':memory:'")
        if self.path != ":memory:":
            # A few stat calls, so a mistyped path fails where it is configured
            # rather than later in a background writer. Nothing is opened yet.
            _check_path(self.path, self.read_only)
        self._guard = threading.Lock()
        self._conn: _Pair | None = None
        self._file: FileId | None = None  # the file the connection opened
        self._opening: concurrent.futures.Future[_Pair] | None = None
        # read_all_inline's connections: one per calling thread (and process).
        self._inline = threading.local()
        self._inline_conns: list[sqlite3.Connection] = []

    def __repr__(self) -> str:
        return f"SQLiteStore({self.path!r}{', read_only=True' if self.read_only else ''})"

    # --- the protocol ----------------------------------------------------------

    async def append(self, events: Sequence[AgentEvent]) -> int:
        """Durably append in one transaction; skip known event ids; return the count."""
        if not events:
            return 0
        self._check_writable()
        return await self._append_items(checked_captured(events))

    async def append_captured(self, items: Sequence[Captured]) -> int:
        """:meth:`append` for the recorder's captured tuples (no JSON round trip)."""
        if not items:
            return 0
        self._check_writable()
        return await self._append_items(list(items))

    async def _append_items(self, items: list[Captured]) -> int:
        conn, db = self._conn or await self._connect()
        try:
            return await conn._execute(_append, db, items, self.path, self._file)
        except FileChanged:
            # Drop the connection to the old file: the retry opens the path afresh.
            with self._guard:
                if self._conn is not None and self._conn[1] is db:
                    self._conn, self._opening = None, None
            await conn.close()
            raise
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError):
                raise  # locked, busy, disk full: the file itself is fine
            raise StoreError(f"SQLite store {self.path!r} is corrupt: {exc}") from exc

    async def stored_rows(
        self, session_id: str | None = None, after_position: int = 0, limit: int | None = None
    ) -> list[tuple[Any, ...]]:
        """Rows exactly as stored (payload text, store chain link), for verification.

        One session's rows in version order, or (``session_id=None``) every
        row after ``after_position`` in position order, at most ``limit``.
        """
        limit = check_limit(limit)
        return await self._run(_stored_rows, session_id, after_position, limit)

    def _check_writable(self) -> None:
        if self.read_only:
            raise StoreError(f"SQLite store {self.path!r} is open read-only: cannot append")

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
        return await self._run(_get_events, session_id, after_version, types, raw)

    async def read_all(
        self, after_position: int = 0, limit: int | None = None, *, raw: bool = False
    ) -> list[AgentEvent]:
        """Events of every session with ``position > after_position``, in position order."""
        limit = check_limit(limit)
        if limit == 0:
            return []
        return await self._run(_read_all, after_position, limit, raw)

    def read_all_inline(
        self, after_position: int = 0, limit: int | None = None, *, raw: bool = False
    ) -> list[AgentEvent] | None:
        """:meth:`read_all` on the calling thread, blocking it; None if unavailable.

        For scans that fold each page on this thread right away (projection
        rebuilds): reading here skips the hand-off to the connection thread and
        back, a third of a rebuild's time on two cores. A WAL reader never
        waits for writers. None until the store has been opened (by any
        awaited call) and for ``:memory:``, whose data only its own connection
        sees: then use :meth:`read_all`.
        """
        if self.path == ":memory:" or self._conn is None:
            return None
        limit = check_limit(limit)
        if limit == 0:
            return []
        return _read_all(self._inline_conn(), after_position, limit, raw)

    def _inline_conn(self) -> sqlite3.Connection:
        local = self._inline
        conn = getattr(local, "conn", None)
        if conn is None or local.pid != os.getpid():
            conn = _connect(self.path, self.read_only, check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout = {self.busy_timeout_ms}")
            local.conn, local.pid = conn, os.getpid()
            with self._guard:
                self._inline_conns.append(conn)
        return conn

    async def list_sessions(self, limit: int | None = None) -> list[SessionInfo]:
        """Sessions, most recently started first."""
        limit = check_limit(limit)
        if limit == 0:
            return []
        return await self._run(_list_sessions, limit)

    async def query_sessions(
        self, limit: int | None = None, filter: SessionFilter | None = None
    ) -> list[SessionInfo]:
        """Sessions from the sessions index, newest-started first (``SessionIndexStore``).

        One indexed query: its cost grows with ``limit`` (and how many rows a
        filter skips), not with the events stored. A read-only store of an
        older schema has no index: it is folded from a scan instead.
        """
        limit = check_limit(limit)
        if limit == 0:
            return []
        return await self._run(_query_sessions, limit, filter)

    async def session_totals(self) -> dict[str, Any]:
        """Sessions, events, sessions per day and tokens per model, from the index."""
        return await self._run(_session_totals)

    async def close(self) -> None:
        """Close the connection; a later call opens a new one. Safe to call twice."""
        with self._guard:
            conn, self._conn, self._opening = self._conn, None, None
            inline, self._inline_conns = self._inline_conns, []
            self._inline = threading.local()
        for c in inline:
            c.close()
        if conn is not None:
            await conn[0].close()

    # --- projection checkpoints (base.ProjectionStore) -------------------------

    async def load_projection(self, name: str) -> tuple[str | None, int]:
        """``(state_json, checkpoint)`` as last saved, or ``(None, 0)``."""
        return await self._run(_load_projection, check_projection_name(name))

    async def save_projection(
        self, name: str, state_json: str, checkpoint: int, expected_checkpoint: int
    ) -> None:
        """Store state and checkpoint in one transaction if the stored checkpoint is expected."""
        check_projection_name(name)
        self._check_writable()
        await self._run(_save_projection, name, state_json, checkpoint, expected_checkpoint)

    async def save_projection_entries(
        self,
        name: str,
        entries: Mapping[str, str | None],
        checkpoint: int,
        expected_checkpoint: int,
    ) -> None:
        """Set (or delete, ``None``) entries and move the checkpoint in one transaction."""
        check_projection_name(name)
        self._check_writable()
        await self._run(
            _save_projection_entries, name, dict(entries), checkpoint, expected_checkpoint
        )

    # --- connection ------------------------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        conn, db = self._conn or await self._connect()
        # Connection._execute is aiosqlite's own "run this callable on the
        # connection thread" (every public method goes through it). Running the
        # whole operation in one call keeps it atomic and costs one thread hop.
        return await conn._execute(fn, db, *args)

    async def _connect(self) -> _Pair:
        # Several tasks, threads or event loops may ask at once: one opens, the
        # others wait on a thread-safe future (awaitable from any loop).
        while True:
            with self._guard:
                if self._conn is not None:
                    return self._conn
                opening, owner = self._opening, self._opening is None
                if owner:
                    opening = self._opening = concurrent.futures.Future()
            assert opening is not None
            if not owner:
                try:
                    return await asyncio.wrap_future(opening)
                except _OpenInterrupted:
                    continue
            try:
                pair = await self._open()
            except BaseException as exc:
                with self._guard:
                    self._opening = None
                opening.set_exception(exc if isinstance(exc, Exception) else _OpenInterrupted())
                raise
            with self._guard:
                self._conn = pair
                self._file = None if self.path == ":memory:" else _file_id(self.path)
            opening.set_result(pair)
            return pair

    async def _open(self) -> _Pair:
        path = self.path
        if path != ":memory:":
            _check_path(path, self.read_only)  # again: clearer errors than SQLite's
        opened: list[sqlite3.Connection] = []

        def connect() -> sqlite3.Connection:
            opened.append(_connect(path, self.read_only))
            return opened[0]

        conn = aiosqlite.Connection(connect, iter_chunk_size=64)
        # aiosqlite's worker is not a daemon thread: a store the program forgot
        # to close would otherwise keep the interpreter from exiting. (Before
        # aiosqlite 0.20 the connection was itself the thread.)
        worker = conn if isinstance(conn, threading.Thread) else conn._thread
        worker.daemon = True
        try:
            await conn
        except sqlite3.Error as exc:
            raise ConnectionError(f"cannot open SQLite store {path!r}: {exc}") from exc
        db = opened[0]
        try:
            await conn._execute(self._set_up, db)
        except BaseException as exc:
            await conn.close()
            if isinstance(exc, sqlite3.Error):
                raise ConnectionError(f"cannot open SQLite store {path!r}: {exc}") from exc
            raise
        return conn, db

    def _set_up(self, db: sqlite3.Connection) -> None:
        """PRAGMAs and schema (runs on the connection thread)."""
        db.execute(f"PRAGMA busy_timeout = {self.busy_timeout_ms}")
        if self.read_only:
            _check_schema(db, self.path)
            return
        # Switching a new file to WAL while other processes open it too can fail
        # with SQLITE_BUSY at once (SQLite skips the busy handler to avoid a
        # deadlock), so the setup retries until busy_timeout.
        deadline = time.monotonic() + self.busy_timeout_ms / 1000
        while True:
            try:
                db.execute("PRAGMA journal_mode = WAL")
                db.execute(f"PRAGMA synchronous = {self.synchronous}")
                _ensure_schema(db, self.path)
                return
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc) or time.monotonic() >= deadline:
                    raise
                time.sleep(0.005)


def _connect(path: str, read_only: bool, **kwargs: Any) -> sqlite3.Connection:
    """A connection in autocommit mode; ``read_only`` opens the file with ``mode=ro``."""
    if not read_only:
        return sqlite3.connect(path, isolation_level=None, **kwargs)
    uri = Path(path).as_uri() + "?mode=ro"
    return sqlite3.connect(uri, uri=True, isolation_level=None, **kwargs)


def _check_path(path: str, read_only: bool = False) -> None:
    p = Path(path)
    parent = p.parent
    where = f"cannot open SQLite store {path!r}"
    if not parent.is_dir():
        raise ConnectionError(f"{where}: directory {str(parent)!r} does not exist")
    if p.is_dir():
        raise ConnectionError(f"{where}: it is a directory")
    if read_only:
        if not p.is_file():
            raise ConnectionError(f"{where} read-only: the file does not exist")
        if not os.access(p, os.R_OK):
            raise PermissionError(f"{where}: the file is not readable")
        return
    # WAL mode creates -wal and -shm files beside the database.
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"{where}: directory {str(parent)!r} is not writable")
    if p.exists() and not os.access(p, os.R_OK | os.W_OK):
        raise PermissionError(f"{where}: the file is not readable and writable")


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)  # Python 3.11+
    if code is not None:
        return code & 0xFF in (5, 6)  # SQLITE_BUSY, SQLITE_LOCKED and their extended codes
    return "locked" in str(exc) or "busy" in str(exc)


def _check_schema(db: sqlite3.Connection, path: str) -> None:
    """For a read-only connection: the file holds an agent_trace store this version reads."""
    try:
        (version,) = db.execute("PRAGMA user_version").fetchone()
    except sqlite3.DatabaseError as exc:
        raise ConnectionError(f"cannot open SQLite store {path!r}: {exc}") from exc
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"SQLite store {path!r} has schema version {version}; this agent_trace knows "
            f"up to {SCHEMA_VERSION}: upgrade agent_trace"
        )
    if version == 0:
        raise ConnectionError(
            f"cannot open SQLite store {path!r} read-only: it holds no agent_trace events "
            "(record something into it first)"
        )
    if version < _READABLE_FROM:  # a read-only connection cannot migrate it
        raise ConnectionError(
            f"cannot open SQLite store {path!r} read-only: its schema version {version} is "
            f"older than this agent_trace's {SCHEMA_VERSION}; open it once read-write "
            "(record into it, or any agent_trace call that appends) to upgrade it"
        )


def _ensure_schema(db: sqlite3.Connection, path: str) -> None:
    (version,) = db.execute("PRAGMA user_version").fetchone()
    if version == SCHEMA_VERSION:
        return
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"SQLite store {path!r} has schema version {version}; this agent_trace knows "
            f"up to {SCHEMA_VERSION}: upgrade agent_trace"
        )
    db.execute("BEGIN IMMEDIATE")  # another process may be creating it right now
    try:
        (version,) = db.execute("PRAGMA user_version").fetchone()
        if version == 1:
            # A store of an earlier release: its rows keep no store chain link
            # (NULL); the chain starts with the first event appended from now on.
            db.execute("ALTER TABLE events ADD COLUMN store_hash TEXT")
        elif version == 0:
            for statement in _statements(_SCHEMA):
                db.execute(statement)
        if version < _INDEXED_FROM:
            # The sessions index, built once from the stored events (in this
            # same transaction: a crash leaves the old schema, tried again).
            for statement in _statements(_SESSIONS_SCHEMA):
                db.execute(statement)
            if version > 0:
                entries, tool_calls = _scan_entries(db)
                _write_entries(db, entries.values())
                db.executemany(_INSERT_TOOL_CALL, tool_calls)
        if version < SCHEMA_VERSION:
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def _statements(script: str) -> list[str]:
    # Split on ';' at statement ends, keeping each trigger body (which has its
    # own ';') whole: sqlite3.complete_statement tells when one is finished.
    out, current = [], ""
    for piece in script.split(";"):
        current += piece + ";"
        if sqlite3.complete_statement(current):
            if current.strip() != ";":
                out.append(current.strip())
            current = ""
    return out


# --- operations: each runs whole on the connection thread ----------------------


def _qmarks(n: int) -> str:
    return ",".join("?" * n)


def _append(
    db: sqlite3.Connection,
    items: list[Captured],
    path: str | None = None,
    opened: FileId | None = None,
) -> int:
    """Append ``items`` in one transaction; with ``path``/``opened``, refuse
    (:class:`FileChanged`) if the file was deleted or replaced, before
    and after the commit, so no batch is acknowledged from a lost file."""
    if path is not None:
        check_same_file(path, opened)
    n = _append_checked(db, items)
    if path is not None:
        check_same_file(path, opened)  # rows committed to a lost file: the retry rewrites them
    return n


def _append_checked(db: sqlite3.Connection, items: list[Captured]) -> int:
    ids = [item[0] for item in items]
    if len(set(ids)) != len(ids):
        items = unique_captured(items, ())
        ids = [item[0] for item in items]
    db.execute("BEGIN IMMEDIATE")
    try:
        # Fresh UUIDv7 ids sort after every stored one, and then none can be
        # stored: one index lookup instead of one per event. (Python and SQLite
        # order strings alike: by code point, i.e. by UTF-8 bytes.)
        (max_stored,) = db.execute("SELECT MAX(event_id) FROM events").fetchone()
        new = items
        if max_stored is not None and min(ids) <= max_stored:
            stored: set[str] = set()
            for i in range(0, len(ids), _CHUNK):
                chunk = ids[i : i + _CHUNK]
                sql = f"SELECT event_id FROM events WHERE event_id IN ({_qmarks(len(chunk))})"
                stored.update(row[0] for row in db.execute(sql, chunk))
            if stored:
                new = [item for item in items if item[0] not in stored]
        if not new:
            db.execute("ROLLBACK")
            return 0
        sessions = list(dict.fromkeys(item[1] for item in new))
        # The sessions' index entries, and from them the heads to chain onto.
        entries = _read_entries(db, sessions)
        heads = {sid: (e["last_version"], e["last_hash"]) for sid, e in entries.items()}
        last = db.execute(
            "SELECT position, store_hash FROM events ORDER BY position DESC LIMIT 1"
        ).fetchone()
        last_position, store_head = last if last is not None else (0, None)
        flat = seal_captured_flat(new, heads, last_position + 1, store_head)
        _insert(db, flat)
        tool_calls: list[tuple[str, int, float | None]] = []
        fold_index_flat(entries, flat, tool_calls)
        _write_entries(db, entries.values())
        if tool_calls:
            db.executemany(_INSERT_TOOL_CALL, tool_calls)
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    return len(new)


def _insert(db: sqlite3.Connection, flat: list[Any]) -> None:
    """Insert sealed rows given end to end (see ``seal_captured_flat``)."""
    block = _ROWS_PER_INSERT * ROW_WIDTH
    full = len(flat) - len(flat) % block
    for i in range(0, full, block):
        db.execute(_INSERT_BLOCK, flat[i : i + block])
    if full < len(flat):
        rest = iter(flat[full:])
        db.executemany(_INSERT, zip(*[rest] * ROW_WIDTH, strict=True))


def _get_events(
    db: sqlite3.Connection,
    session_id: str,
    after_version: int,
    types: frozenset[str] | None,
    raw: bool = False,
) -> list[AgentEvent]:
    sql = f"SELECT {_COLUMNS} FROM events WHERE session_id = ? AND version > ?"
    params: list[Any] = [session_id, after_version]
    if types is not None and len(types) <= _CHUNK:
        sql += f" AND event_type IN ({_qmarks(len(types))})"
        params.extend(types)
    rows = db.execute(sql + " ORDER BY version", params).fetchall()
    if types is not None and len(types) > _CHUNK:
        rows = [r for r in rows if r[2] in types]
    return [event_from_row(r, raw) for r in rows]


def _read_all(
    db: sqlite3.Connection, after_position: int, limit: int | None, raw: bool = False
) -> list[AgentEvent]:
    rows = db.execute(
        f"SELECT {_COLUMNS} FROM events WHERE position > ? ORDER BY position LIMIT ?",
        (after_position, -1 if limit is None else limit),
    )
    return events_from_rows(rows, raw)


def _stored_rows(
    db: sqlite3.Connection, session_id: str | None, after_position: int, limit: int | None
) -> list[tuple[Any, ...]]:
    # Text columns as bytes: a row whose text is not valid UTF-8 is reported by
    # the verifier instead of failing the whole read.
    (version,) = db.execute("PRAGMA user_version").fetchone()
    # Schema 1 (opened read-only, so not migrated) has no store chain column.
    columns = _STORED_COLUMNS if version >= 2 else f"{_COLUMNS}, NULL"
    db.text_factory = bytes
    try:
        if session_id is not None:
            sql = f"SELECT {columns} FROM events WHERE session_id = ? ORDER BY version"
            rows = db.execute(sql, (session_id,)).fetchall()
        else:
            sql = f"SELECT {columns} FROM events WHERE position > ? ORDER BY position LIMIT ?"
            rows = db.execute(sql, (after_position, -1 if limit is None else limit)).fetchall()
    finally:
        db.text_factory = str
    return [tuple(_text(v) for v in row) for row in rows]


def _text(value: Any) -> Any:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value  # left as bytes: the verifier reports it
    return value


def _schema_version(db: sqlite3.Connection) -> int:
    (version,) = db.execute("PRAGMA user_version").fetchone()
    return int(version)


def _list_sessions(db: sqlite3.Connection, limit: int | None) -> list[SessionInfo]:
    if _schema_version(db) >= _INDEXED_FROM:
        return _query_sessions(db, limit, None, full=False)
    # A read-only store of an earlier schema: no index, the grouped scan.
    rows = db.execute(_LIST_SESSIONS, (-1 if limit is None else limit,)).fetchall()
    return [
        SessionInfo(
            session_id=sid,
            started_at=started,
            last_activity=last,
            event_count=count,
            last_version=last_version,
            metadata=session_metadata(orjson.loads(meta)) if meta is not None else {},
        )
        for sid, started, last, count, last_version, meta in rows
    ]


# --- the sessions index -------------------------------------------------------


def _entry_from_row(row: Sequence[Any]) -> dict[str, Any]:
    entry = dict(zip(_SESSION_FIELDS, row, strict=True))
    for name in INDEX_JSON_FIELDS:
        value = entry[name]
        entry[name] = orjson.loads(value) if value is not None else None
    return entry


def _read_entries(db: sqlite3.Connection, session_ids: list[str]) -> dict[str, dict[str, Any]]:
    """The index entries of ``session_ids`` (those that have one)."""
    entries: dict[str, dict[str, Any]] = {}
    for i in range(0, len(session_ids), _CHUNK):
        chunk = session_ids[i : i + _CHUNK]
        sql = f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE session_id IN ({_qmarks(len(chunk))})"
        for row in db.execute(sql, chunk):
            entries[row[0]] = _entry_from_row(row)
    return entries


def _write_entries(db: sqlite3.Connection, entries: Iterable[dict[str, Any]]) -> None:
    dumps = orjson.dumps
    rows = []
    for e in entries:
        row = [e[name] for name in _SESSION_FIELDS]
        for i in _JSON_COLUMNS:
            if row[i] is not None:
                row[i] = dumps(row[i]).decode()
        rows.append(row)
    db.executemany(_UPSERT_SESSION, rows)


def _scan_entries(
    db: sqlite3.Connection,
) -> tuple[dict[str, dict[str, Any]], list[tuple[str, int, float | None]]]:
    """Every session's index entry and every tool call, folded from the stored
    events (the migration; reads of a read-only store of an older schema)."""
    entries: dict[str, dict[str, Any]] = {}
    tool_calls: list[tuple[str, int, float | None]] = []
    fold = fold_index
    rows = db.execute(
        f"SELECT session_id, event_type, timestamp, {_INDEXED_PAYLOAD}, version, position, "
        "hash FROM events ORDER BY position"
    )
    for sid, etype, ts, payload, version, position, digest in rows:
        fold(
            entries, sid, etype, ts, payload if payload is not None else b"{}", version,
            position, None, tool_calls,
        )  # fmt: skip
        entries[sid]["last_hash"] = digest
    return entries, tool_calls


def _query_sessions(
    db: sqlite3.Connection, limit: int | None, filter: SessionFilter | None, full: bool = True
) -> list[SessionInfo]:
    if _schema_version(db) < _INDEXED_FROM:
        # A read-only store of an earlier schema: the index folded in memory.
        found = _scan_entries(db)[0].values()
        entries = [e for e in found if filter is None or filter.matches(e)]
        entries.sort(key=lambda e: (e["started_at"], e["first_position"]), reverse=True)
        return [info_from_entry(e, full) for e in entries[:limit]]
    where, params = _filter_sql(filter)
    sql = (
        f"SELECT {_SESSION_COLUMNS} FROM sessions{where} "
        "ORDER BY started_at DESC, first_position DESC LIMIT ?"
    )
    rows = db.execute(sql, [*params, -1 if limit is None else limit])
    return [info_from_entry(_entry_from_row(row), full) for row in rows]


def _filter_sql(filter: SessionFilter | None) -> tuple[str, list[Any]]:
    """A WHERE clause for ``filter`` (the same tests as ``SessionFilter.matches``)."""
    if filter is None:
        return "", []
    terms: list[str] = []
    params: list[Any] = []
    if filter.failed:
        terms.append("(status IN ('error', 'cancelled') OR failures > 0)")
    if filter.tool is not None:
        terms.append("EXISTS (SELECT 1 FROM json_each(tools) WHERE value = ?)")
        params.append(filter.tool)
    if filter.model is not None:
        terms.append("json_type(models, '$.' || json_quote(?)) IS NOT NULL")
        params.append(filter.model)
    if filter.status is not None:
        terms.append("status = ?")
        params.append(filter.status)
    if filter.since is not None:
        terms.append("started_at >= ?")
        params.append(filter.since)
    return (" WHERE " + " AND ".join(terms) if terms else ""), params


def _session_totals(db: sqlite3.Connection) -> dict[str, Any]:
    tools: dict[str, dict[str, Any]] = {}
    if _schema_version(db) < _INDEXED_FROM:
        entries, tool_calls = _scan_entries(db)
        add_tool_calls(tools, tool_calls)
        return totals_of(entries.values(), tools)
    db.execute("BEGIN")  # one snapshot for every figure
    try:
        sessions, events = db.execute(
            "SELECT COUNT(*), COALESCE(SUM(event_count), 0) FROM sessions"
        ).fetchone()
        per_day = dict(
            db.execute(
                "SELECT substr(started_at, 1, 10) AS day, COUNT(*) FROM sessions "
                "GROUP BY day ORDER BY day"
            ).fetchall()
        )
        models: dict[str, dict[str, int]] = {}
        loads = orjson.loads
        for (text,) in db.execute("SELECT models FROM sessions WHERE models != '{}'"):
            add_models(models, loads(text))
        figures = _tool_figures(db)
    finally:
        db.execute("COMMIT")
    return {
        "sessions": sessions,
        "events": events,
        "per_day": per_day,
        "models": dict(sorted(models.items())),
        "tools": figures,
    }


def _tool_figures(db: sqlite3.Connection) -> dict[str, dict[str, Any]]:
    """``tool_figures`` of every tool, read from the covering index: each
    percentile is two values at an offset, not every duration in Python."""
    counts = db.execute(
        "SELECT tool, COUNT(*), SUM(failed), COUNT(duration_ms), TOTAL(duration_ms) "
        "FROM tool_calls GROUP BY tool ORDER BY tool"
    ).fetchall()
    at = (
        "SELECT duration_ms FROM tool_calls WHERE tool = ? AND duration_ms IS NOT NULL "
        "ORDER BY duration_ms LIMIT 2 OFFSET ?"
    )
    values: dict[tuple[str, int], float] = {}
    for tool, _calls, _failed, n, _total in counts:
        for pct in (50, 95):
            if n:
                lo, _hi, _w = percentile_ranks(n, pct)
                for i, (d,) in enumerate(db.execute(at, (tool, lo))):
                    values[(tool, lo + i)] = d
    out: dict[str, dict[str, Any]] = {}
    for tool, calls, failed, n, total in counts:
        f: dict[str, Any] = {"calls": calls, "failures": failed}
        for name, pct in (("p50_ms", 50), ("p95_ms", 95)):
            if n:
                lo, hi, w = percentile_ranks(n, pct)
                f[name] = values[(tool, lo)] + (values[(tool, hi)] - values[(tool, lo)]) * w
            else:
                f[name] = None
        f["mean_ms"] = total / n if n else None
        out[tool] = f
    return out


# --- projection checkpoints ----------------------------------------------------
# A view's checkpoint is one row of ``projections``, written in one BEGIN
# IMMEDIATE transaction in the events' own database together with its state:
# whole in that row, or (state ENTRIES_MARKER) entry by entry in
# ``projection_entries``, where a save writes only the entries that changed.
# The tables are created on first save (not in _SCHEMA) so stores that never
# run projections keep their schema version. Tables of earlier releases need
# no change: their rows are whole-state views, split into entries by the
# first entry-wise save (base.split_state).

_PROJECTION_TABLES = (
    """
CREATE TABLE IF NOT EXISTS projections (
    name TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    position INTEGER NOT NULL,
    updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now'))
)
""",
    """
CREATE TABLE IF NOT EXISTS projection_entries (
    name TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (name, key)
) WITHOUT ROWID
""",
)


def _ensure_projection_tables(db: sqlite3.Connection) -> None:
    """Create the projection tables if missing (inside the caller's write transaction)."""
    for statement in _PROJECTION_TABLES:
        db.execute(statement)  # IF NOT EXISTS: a lookup in the cached schema


def _load_projection(db: sqlite3.Connection, name: str) -> tuple[str | None, int]:
    db.execute("BEGIN")  # one snapshot for the row and its entries
    try:
        try:
            found = db.execute(
                "SELECT state, position FROM projections WHERE name = ?", (name,)
            ).fetchone()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return None, 0
            raise
        if found is None:
            return None, 0
        state, position = found
        if state == ENTRIES_MARKER:
            rows = db.execute(
                "SELECT key, value FROM projection_entries WHERE name = ? ORDER BY key", (name,)
            )
            state = entries_json(rows)
        return state, position
    finally:
        db.execute("COMMIT")


def _begin_projection_save(db: sqlite3.Connection, name: str, expected: int) -> str | None:
    """BEGIN IMMEDIATE, tables ready, compare-and-set: the stored state (None: no row)."""
    db.execute("BEGIN IMMEDIATE")
    _ensure_projection_tables(db)
    row = db.execute("SELECT state, position FROM projections WHERE name = ?", (name,)).fetchone()
    found = row[1] if row else 0
    if found != expected:
        raise projection_conflict(name, expected, found)
    return row[0] if row else None


def _save_projection(
    db: sqlite3.Connection, name: str, state_json: str, checkpoint: int, expected: int
) -> None:
    try:
        if _begin_projection_save(db, name, expected) == ENTRIES_MARKER:
            db.execute("DELETE FROM projection_entries WHERE name = ?", (name,))
        db.execute(
            "INSERT INTO projections (name, state, position) VALUES (?, ?, ?) "
            "ON CONFLICT (name) DO UPDATE SET state = excluded.state, "
            "position = excluded.position, updated_at = excluded.updated_at",
            (name, state_json, checkpoint),
        )
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def _save_projection_entries(
    db: sqlite3.Connection,
    name: str,
    entries: dict[str, str | None],
    checkpoint: int,
    expected: int,
) -> None:
    try:
        stored = _begin_projection_save(db, name, expected)
        if stored is not None and stored != ENTRIES_MARKER:
            # Saved whole until now: its entries first, then the changes over them.
            entries = {**split_state(name, stored), **entries}
        upserts = [(name, k, v) for k, v in entries.items() if v is not None]
        deletes = [(name, k) for k, v in entries.items() if v is None]
        if upserts:
            db.executemany(
                "INSERT INTO projection_entries (name, key, value) VALUES (?, ?, ?) "
                "ON CONFLICT (name, key) DO UPDATE SET value = excluded.value",
                upserts,
            )
        if deletes:
            db.executemany("DELETE FROM projection_entries WHERE name = ? AND key = ?", deletes)
        db.execute(
            "INSERT INTO projections (name, state, position) VALUES (?, ?, ?) "
            "ON CONFLICT (name) DO UPDATE SET state = excluded.state, "
            "position = excluded.position, updated_at = excluded.updated_at",
            (name, ENTRIES_MARKER, checkpoint),
        )
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
