"""The PostgreSQL store: many processes on many machines append to one database.

Concurrency model. asyncpg pools are bound to the event loop that created
them, while the recorder appends from its writer thread's loop and users read
from theirs. So a store owns one daemon thread running its own event loop,
which owns the pool; every public method is "run this coroutine on the store's
loop, await its future" (the aiosqlite shape, one thread hop per call). Any
thread and any event loop may call any method. A cancelled caller cancels the
operation; an append cancelled mid-transaction closes its connection, so the
server rolls it back.

Ordering. An append is one transaction that takes a transaction-level
advisory lock for the store's schema (``pg_advisory_xact_lock``, sent with
``BEGIN``), then reads the known event ids, the heads of the touched sessions
and the last position in one query, seals the new events with the hash chain
(``base.seal_rows``), COPYs them in and commits. Appends therefore commit one
at a time, in position order: per-session versions are contiguous, positions
are gap-free, and a reader following ``read_all`` never skips an event that
commits late (no lower position can commit after a higher one is visible).
The cost: appends from all processes are serialized for three round trips
plus the commit's WAL flush each, so throughput stops growing with more
writers and batching (the recorder's default) is what scales it; see
``benchmarks/bench_postgres.py``. Readers never take the lock. (The other
correct design, sequence positions plus a reader high-water mark from
``pg_snapshot_xmin``, lets appends overlap but makes every reader wait for
the slowest open transaction; at agent event rates the lock is simpler.)

Connections lost to a server restart, failover or ``pg_terminate_backend``
are retried with backoff for ``reconnect_timeout`` seconds; appends are
idempotent by event id, so a retry never writes twice.

Never: update or delete stored rows (triggers refuse UPDATE, DELETE and
TRUNCATE), or connect before the first call. Errors reaching the server are
``ConnectionError`` naming the URL with its password masked.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import inspect
import os
import re
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit

import asyncpg
import orjson

from agent_trace.events import AgentEvent
from agent_trace.stores.base import (
    ENTRIES_MARKER,
    Captured,
    SessionInfo,
    StoreError,
    captured_from_events,
    check_limit,
    check_projection_name,
    event_from_row,
    event_types_filter,
    mask_url,
    projection_conflict,
    seal_captured,
    session_metadata,
    split_state,
    unique_captured,
)

__all__ = ["PostgresStore"]

T = TypeVar("T")

DEFAULT_SCHEMA = "agent_trace"
_SCHEMES = ("postgresql", "postgres")
_POOL_TAKES_RESET = "reset" in inspect.signature(asyncpg.create_pool).parameters  # asyncpg 0.30+
_SCHEMA_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")

# Columns in AgentEvent field order: the row layout of base.seal_rows and event_from_row.
_COLUMNS = (
    'event_id, session_id, event_type, "timestamp", payload, version, position, '
    "span_id, parent_span_id, schema_version, prev_hash, hash"
)
_COLUMN_NAMES = [c.strip().strip('"') for c in _COLUMNS.split(",")]

# Each migration runs once per schema, in order, inside the migration lock.
# ``{s}`` is the quoted schema name. The payload is TEXT, not JSONB: it is the
# exact canonical JSON the hash covered (JSONB would reorder keys and refuse
# \u0000). Text columns that are compared or sorted use the C collation, so
# they order by code point, as in Python and SQLite.
_MIGRATIONS: list[tuple[str, str]] = [
    (
        "events table, append-only triggers",
        """
CREATE TABLE {s}.events (
    position BIGINT PRIMARY KEY,
    event_id TEXT COLLATE "C" NOT NULL UNIQUE,
    session_id TEXT COLLATE "C" NOT NULL,
    version INTEGER NOT NULL,
    event_type TEXT COLLATE "C" NOT NULL,
    "timestamp" TEXT COLLATE "C" NOT NULL,
    span_id TEXT,
    parent_span_id TEXT,
    schema_version INTEGER NOT NULL,
    payload TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL,
    UNIQUE (session_id, version)
);
CREATE FUNCTION {s}.refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'agent_trace events are append-only: % is not allowed', TG_OP;
END
$$;
CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE ON {s}.events
    FOR EACH ROW EXECUTE FUNCTION {s}.refuse_change();
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON {s}.events
    FOR EACH STATEMENT EXECUTE FUNCTION {s}.refuse_change();
""",
    ),
    (
        "projection checkpoints",
        """
CREATE TABLE {s}.projections (
    name TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    position BIGINT NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
""",
    ),
    (
        # A view saved entry by entry: its projections row holds ENTRIES_MARKER.
        "projection entries",
        """
CREATE TABLE {s}.projection_entries (
    name TEXT NOT NULL,
    key TEXT COLLATE "C" NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (name, key)
);
""",
    ),
]
SCHEMA_VERSION = len(_MIGRATIONS)


class PostgresStore:
    """Events in one PostgreSQL schema, shared by any number of processes.

    ``url`` is a ``postgresql://`` (or ``postgres://``) URL as asyncpg takes it;
    its ``schema=`` query option (or the ``schema`` argument) names the schema
    holding the tables (default ``agent_trace``), created on first use.
    Nothing connects until the first call.
    """

    def __init__(
        self,
        url: str,
        *,
        schema: str | None = None,
        min_size: int = 1,
        max_size: int = 8,
        connect_timeout: float = 10.0,
        reconnect_timeout: float = 15.0,
        notify: bool = True,
    ) -> None:
        if not isinstance(url, str) or urlsplit(url).scheme.lower() not in _SCHEMES:
            raise ValueError(f"not a PostgreSQL URL: {mask_url(str(url))!r}")
        try:
            urlsplit(url).port  # noqa: B018 - parsing it is the check
        except ValueError as exc:
            raise ValueError(f"invalid PostgreSQL URL {mask_url(url)!r}: {exc}") from None
        dsn, url_schema, has_app_name = _split_url(url)
        schema = schema or url_schema or DEFAULT_SCHEMA
        if not _SCHEMA_RE.match(schema):
            raise ValueError(
                f"invalid schema name {schema!r} for store {mask_url(url)!r}: use a letter or _ "
                "then up to 62 letters, digits or _"
            )
        if not (isinstance(min_size, int) and isinstance(max_size, int) and min_size >= 0):
            raise ValueError("min_size and max_size must be ints >= 0")
        if max_size < max(min_size, 1):
            raise ValueError(f"max_size must be >= max(min_size, 1), got {max_size!r}")
        self.url = mask_url(url)
        self.schema = schema
        #: The channel each append notifies (payload: the last position written).
        self.channel = f"agent_trace.{schema}"
        self._dsn = dsn
        self._pool_options: dict[str, Any] = {
            "min_size": min_size,
            "max_size": max_size,
            "timeout": connect_timeout,
        }
        if not has_app_name:
            self._pool_options["server_settings"] = {"application_name": "agent_trace"}
        if _POOL_TAKES_RESET:
            # Every operation leaves the session as it found it (transactions
            # end, listeners are removed): skip asyncpg's reset round trip.
            self._pool_options["reset"] = _keep_session
        #: How long an operation keeps retrying after losing its connection.
        self.reconnect_timeout = reconnect_timeout
        q = f'"{schema}"'
        t = f"{q}.events"
        self._q = q
        self._append_key = _lock_key(f"agent_trace.append:{schema}")
        self._migrate_key = _lock_key(f"agent_trace.migrate:{schema}")
        self._sql_state = (
            f"SELECT 0, event_id, 0::bigint, NULL::text FROM {t} WHERE event_id = ANY($1::text[]) "
            "UNION ALL "
            f"SELECT 1, s.id, h.version::bigint, h.hash FROM unnest($2::text[]) AS s(id) "
            f"CROSS JOIN LATERAL (SELECT version, hash FROM {t} WHERE session_id = s.id "
            "ORDER BY version DESC LIMIT 1) h "
            "UNION ALL "
            f"SELECT 2, NULL, (SELECT COALESCE(MAX(position), 0) FROM {t}), NULL"
        )
        # The channel and the key are validated/derived values, safe as literals.
        self._sql_begin = f"BEGIN; SELECT pg_advisory_xact_lock({self._append_key})"
        if notify:
            # Delivered at commit only (and never for a rolled-back append).
            self._sql_begin += f"; SELECT pg_notify('{self.channel}', '')"
        self._sql_events = f"SELECT {_COLUMNS} FROM {t} WHERE session_id = $1 AND version > $2"
        self._sql_read_all = (
            f"SELECT {_COLUMNS} FROM {t} WHERE position > $1 ORDER BY position LIMIT $2"
        )
        self._sql_sessions = f"""
SELECT g.session_id, g.started_at, g.last_activity, g.event_count, g.last_version,
    (SELECT m.payload FROM {t} m
     WHERE m.session_id = g.session_id AND m.event_type = 'session_started'
     ORDER BY m.version LIMIT 1)
FROM (
    SELECT session_id, MIN("timestamp") AS started_at, MAX("timestamp") AS last_activity,
        COUNT(*) AS event_count, MAX(version) AS last_version, MIN(position) AS first_position
    FROM {t} GROUP BY session_id
    ORDER BY started_at DESC, first_position DESC LIMIT $1
) g
ORDER BY g.started_at DESC, g.first_position DESC
"""
        self._guard = threading.Lock()
        self._worker: _Worker | None = None
        self._pid = os.getpid()

    def __repr__(self) -> str:
        return f"PostgresStore({self.url!r}, schema={self.schema!r})"

    # --- the protocol ----------------------------------------------------------

    async def append(self, events: Sequence[AgentEvent]) -> int:
        """Durably append in one transaction; skip known event ids; return the count."""
        if not events:
            return 0
        return await self.append_captured(captured_from_events(events))

    async def append_captured(self, items: Sequence[Captured]) -> int:
        """:meth:`append` for the recorder's captured tuples (no JSON round trip)."""
        if not items:
            return 0
        return await self._run(self._append, unique_captured(items, ()))

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
        if types is None:
            sql, args = self._sql_events + " ORDER BY version", (session_id, after_version)
        else:
            sql = self._sql_events + " AND event_type = ANY($3::text[]) ORDER BY version"
            args = (session_id, after_version, list(types))
        return await self._run(self._fetch_events, sql, args, raw)

    async def read_all(
        self, after_position: int = 0, limit: int | None = None, *, raw: bool = False
    ) -> list[AgentEvent]:
        """Events of every session with ``position > after_position``, in position order."""
        limit = check_limit(limit)
        if limit == 0:
            return []
        return await self._run(self._fetch_events, self._sql_read_all, (after_position, limit), raw)

    async def list_sessions(self, limit: int | None = None) -> list[SessionInfo]:
        """Sessions, most recently started first."""
        limit = check_limit(limit)
        if limit == 0:
            return []
        rows = await self._run(self._fetch, self._sql_sessions, (limit,))
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

    async def close(self) -> None:
        """Close the pool and its thread; a later call opens new ones. Safe to call twice."""
        with self._guard:
            worker, self._worker = self._worker, None
        if worker is not None:
            await worker.close()

    # --- projection checkpoints (base.ProjectionStore) -------------------------

    async def load_projection(self, name: str) -> tuple[str | None, int]:
        """``(state_json, checkpoint)`` as last saved, or ``(None, 0)``."""
        # One statement, one snapshot: the row and its entries agree.
        p, e = f"{self._q}.projections", f"{self._q}.projection_entries"
        sql = (
            "SELECT CASE WHEN p.state = $2 THEN (SELECT '{' || COALESCE(string_agg("
            "to_json(e.key)::text || ':' || e.value, ',' ORDER BY e.key), '') || '}' "
            f"FROM {e} e WHERE e.name = p.name) ELSE p.state END, p.position "
            f"FROM {p} p WHERE p.name = $1"
        )
        rows = await self._run(self._fetch, sql, (check_projection_name(name), ENTRIES_MARKER))
        return (rows[0][0], rows[0][1]) if rows else (None, 0)

    async def save_projection(
        self, name: str, state_json: str, checkpoint: int, expected_checkpoint: int
    ) -> None:
        """Store state and checkpoint in one statement if the stored checkpoint is expected."""
        check_projection_name(name)
        t = f"{self._q}.projections"
        if expected_checkpoint == 0:
            saved = (
                f"INSERT INTO {t} AS p (name, state, position) VALUES ($1, $2, $3) "
                "ON CONFLICT (name) DO UPDATE SET state = $2, position = $3, updated_at = now() "
                "WHERE p.position = 0 RETURNING 1"
            )
            args: tuple[Any, ...] = (name, state_json, checkpoint)
        else:
            saved = (
                f"UPDATE {t} SET state = $2, position = $3, updated_at = now() "
                "WHERE name = $1 AND position = $4 RETURNING 1"
            )
            args = (name, state_json, checkpoint, expected_checkpoint)
        # One statement is one transaction: the compare and the set cannot be
        # split. Entries of a view saved entry by entry until now go with it.
        sql = (
            f"WITH saved AS ({saved}), dropped AS (DELETE FROM {self._q}.projection_entries "
            "WHERE name = $1 AND EXISTS (SELECT 1 FROM saved)) SELECT 1 FROM saved"
        )
        if not await self._run(self._fetch, sql, args):
            _, found = await self.load_projection(name)
            raise projection_conflict(name, expected_checkpoint, found)

    async def save_projection_entries(
        self,
        name: str,
        entries: Mapping[str, str | None],
        checkpoint: int,
        expected_checkpoint: int,
    ) -> None:
        """Set (or delete, ``None``) entries and move the checkpoint in one transaction."""
        check_projection_name(name)
        await self._run(self._save_entries, name, dict(entries), checkpoint, expected_checkpoint)

    async def _save_entries(
        self,
        pool: asyncpg.Pool,
        name: str,
        entries: dict[str, str | None],
        checkpoint: int,
        expected: int,
    ) -> None:
        p, e = f"{self._q}.projections", f"{self._q}.projection_entries"
        async with _connection(pool) as conn, conn.transaction():
            if expected == 0:
                # Claim the row (or find it): a concurrent first save waits here.
                await conn.execute(
                    f"INSERT INTO {p} (name, state, position) VALUES ($1, $2, 0) "
                    "ON CONFLICT (name) DO NOTHING",
                    name,
                    ENTRIES_MARKER,
                )
            row = await conn.fetchrow(
                f"SELECT state, position FROM {p} WHERE name = $1 FOR UPDATE", name
            )
            found = row["position"] if row is not None else 0
            if row is None or found != expected:
                raise projection_conflict(name, expected, found)
            if row["state"] != ENTRIES_MARKER:
                # Saved whole until now: its entries first, then the changes over them.
                entries = {**split_state(name, row["state"]), **entries}
            keys = [k for k, v in entries.items() if v is not None]
            if keys:
                await conn.execute(
                    f"INSERT INTO {e} (name, key, value) "
                    "SELECT $1, k, v FROM unnest($2::text[], $3::text[]) AS u(k, v) "
                    "ON CONFLICT (name, key) DO UPDATE SET value = excluded.value",
                    name,
                    keys,
                    [entries[k] for k in keys],
                )
            gone = [k for k, v in entries.items() if v is None]
            if gone:
                await conn.execute(
                    f"DELETE FROM {e} WHERE name = $1 AND key = ANY($2::text[])", name, gone
                )
            await conn.execute(
                f"UPDATE {p} SET state = $2, position = $3, updated_at = now() WHERE name = $1",
                name,
                ENTRIES_MARKER,
                checkpoint,
            )

    # --- beyond the protocol -------------------------------------------------

    async def last_position(self) -> int:
        """The highest committed position (0 for an empty store)."""
        rows = await self._run(
            self._fetch, f"SELECT COALESCE(MAX(position), 0) FROM {self._q}.events", ()
        )
        return rows[0][0]

    async def wait_for_events(self, after_position: int, timeout: float | None = None) -> bool:
        """Wait until an event with ``position > after_position`` may be committed.

        Uses LISTEN/NOTIFY (every append notifies at commit; the wait holds a
        pooled connection) and checks the table once listening, so a commit
        just before the wait is not missed. Returns False on timeout.
        """
        return await self._run(self._wait_for_events, after_position, timeout)

    # --- running on the store's loop -------------------------------------------

    async def _run(self, op: Callable[..., Awaitable[T]], *args: Any) -> T:
        worker = self._current_worker()
        future = asyncio.run_coroutine_threadsafe(self._attempt(worker, op, *args), worker.loop)
        return await asyncio.wrap_future(future)

    def _current_worker(self) -> _Worker:
        with self._guard:
            if self._pid != os.getpid():
                # A forked child: the parent's thread and sockets are not ours.
                self._worker, self._pid = None, os.getpid()
            if self._worker is None:
                self._worker = _Worker(f"agent_trace-postgres-{self.schema}")
            return self._worker

    async def _attempt(self, worker: _Worker, op: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``op(pool, *args)``, retrying while the connection keeps being lost."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.reconnect_timeout
        delay = 0.02
        while True:
            try:
                # Setting up a new pool (migrations) may lose its connection too;
                # an unreachable server is not retried (a ConnectionError at once).
                pool = await self._pool(worker)
                return await op(pool, *args)
            except Exception as exc:
                if not _connection_lost(exc) or isinstance(exc, _Unreachable):
                    raise
                if loop.time() + delay > deadline:
                    raise ConnectionError(
                        f"lost the connection to PostgreSQL store {self.url!r} and could not "
                        f"reconnect within {self.reconnect_timeout}s: {type(exc).__name__}: {exc}"
                    ) from exc
            # Appends are idempotent by event id, so retrying one whose commit
            # did reach the server writes nothing twice.
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def _pool(self, worker: _Worker) -> asyncpg.Pool:
        if worker.pool is not None:
            return worker.pool
        async with worker.opening:
            if worker.pool is None:
                worker.pool = await self._open_pool()
        return worker.pool

    async def _open_pool(self) -> asyncpg.Pool:
        try:
            pool = await asyncpg.create_pool(self._dsn, **self._pool_options)
        except Exception as exc:
            unreachable = (OSError, asyncio.TimeoutError, asyncpg.PostgresError)
            if isinstance(exc, (*unreachable, asyncpg.InterfaceError)):
                raise _Unreachable(
                    f"cannot connect to PostgreSQL store {self.url!r}: {type(exc).__name__}: {exc}"
                ) from exc
            raise
        try:
            async with pool.acquire() as conn:
                await self._migrate(conn)
        except BaseException:
            pool.terminate()
            raise
        return pool

    async def _migrate(self, conn: asyncpg.Connection) -> None:
        q = self._q
        table = f"{q}.schema_migrations"
        if await conn.fetchval("SELECT to_regclass($1)", table) is not None:
            current = await conn.fetchval(f"SELECT COALESCE(MAX(version), 0) FROM {table}")
            if current == SCHEMA_VERSION:
                return
        # Several processes may start at once: one migrates, the others wait
        # for it here and then find nothing left to do.
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", self._migrate_key)
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {q}")
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {table} (version INTEGER PRIMARY KEY, "
                "description TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
            )
            current = await conn.fetchval(f"SELECT COALESCE(MAX(version), 0) FROM {table}")
            if current > SCHEMA_VERSION:
                raise StoreError(
                    f"PostgreSQL store {self.url!r} schema {self.schema!r} is at version "
                    f"{current}; this agent_trace knows up to {SCHEMA_VERSION}: upgrade agent_trace"
                )
            for version in range(current + 1, SCHEMA_VERSION + 1):
                description, sql = _MIGRATIONS[version - 1]
                await conn.execute(sql.format(s=q))
                await conn.execute(
                    f"INSERT INTO {table} (version, description) VALUES ($1, $2)",
                    version,
                    description,
                )

    # --- operations: each runs whole on the store's loop -----------------------

    async def _append(self, pool: asyncpg.Pool, items: list[Captured]) -> int:
        ids = [item[0] for item in items]
        sessions = list(dict.fromkeys(item[1] for item in items))
        async with _connection(pool) as conn:
            try:
                # BEGIN, the append lock and the listeners' wake-up in one round trip.
                await conn.execute(self._sql_begin)
                stored: set[str] = set()
                heads: dict[str, tuple[int, str]] = {}
                last_position = 0
                for kind, key, number, digest in await conn.fetch(self._sql_state, ids, sessions):
                    if kind == 0:
                        stored.add(key)
                    elif kind == 1:
                        heads[key] = (number, digest)
                    else:
                        last_position = number
                new = [item for item in items if item[0] not in stored] if stored else items
                if not new:
                    await conn.execute("ROLLBACK")
                    return 0
                rows = seal_captured(new, heads, last_position + 1)
                # COPY: one round trip like a multi-row INSERT, and the cheapest
                # for the server (the benchmark's baseline is plain COPY).
                await conn.copy_records_to_table(
                    "events", records=rows, columns=_COLUMN_NAMES, schema_name=self.schema
                )
                await conn.execute("COMMIT")
            except asyncio.CancelledError:
                # Mid-transaction and no time to roll back politely: closing the
                # connection makes the server roll back.
                conn.terminate()
                raise
            except BaseException as exc:
                if not _connection_lost(exc):
                    try:
                        await conn.execute("ROLLBACK")
                    except Exception:
                        conn.terminate()
                raise
        return len(new)

    async def _fetch(self, pool: asyncpg.Pool, sql: str, args: Sequence[Any]) -> list[Any]:
        async with _connection(pool) as conn:
            return await conn.fetch(sql, *args)

    async def _fetch_events(
        self, pool: asyncpg.Pool, sql: str, args: Sequence[Any], raw: bool = False
    ) -> list[AgentEvent]:
        async with _connection(pool) as conn:
            rows = await conn.fetch(sql, *args)
        return [event_from_row(r, raw) for r in rows]

    async def _wait_for_events(
        self, pool: asyncpg.Pool, after_position: int, timeout: float | None
    ) -> bool:
        woke = asyncio.Event()
        sql = f"SELECT COALESCE(MAX(position), 0) FROM {self._q}.events"

        def on_notify(_conn: Any, _pid: int, _channel: str, _payload: str) -> None:
            woke.set()

        async with _connection(pool) as conn:
            await conn.add_listener(self.channel, on_notify)
            try:
                if await conn.fetchval(sql) > after_position:
                    return True
                try:
                    await asyncio.wait_for(woke.wait(), timeout)
                except asyncio.TimeoutError:
                    return False
                return True
            finally:
                await conn.remove_listener(self.channel, on_notify)


class _Worker:
    """A daemon thread running the event loop that owns one store's pool."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.pool: asyncpg.Pool | None = None
        self.opening = asyncio.Lock()
        # Daemon: a store the program forgot to close must not keep the
        # interpreter from exiting (the server sees the sockets close).
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()

    async def close(self) -> None:
        async def close_pool() -> None:
            if self.pool is not None:
                pool, self.pool = self.pool, None
                try:
                    await asyncio.wait_for(pool.close(), 10)
                except Exception:
                    pool.terminate()

        try:
            future = asyncio.run_coroutine_threadsafe(close_pool(), self.loop)
            await asyncio.wrap_future(future)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            done = concurrent.futures.Future()
            threading.Thread(target=self._join_and_close, args=(done,), daemon=True).start()
            await asyncio.wrap_future(done)

    def _join_and_close(self, done: concurrent.futures.Future[None]) -> None:
        self.thread.join()
        self.loop.close()
        done.set_result(None)


def _split_url(url: str) -> tuple[str, str | None, bool]:
    """``(dsn for asyncpg, schema option or None, whether application_name is set)``."""
    base, _, query = url.partition("?")
    options = parse_qsl(query, keep_blank_values=True)
    schema = None
    rest = []
    for key, value in options:
        if key == "schema":
            schema = value
        else:
            rest.append((key, value))
    has_app_name = any(key == "application_name" for key, _ in rest)
    return (f"{base}?{urlencode(rest)}" if rest else base), schema, has_app_name


def _lock_key(name: str) -> int:
    """A stable signed 64-bit advisory lock key for ``name``."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Pool reset hook: nothing to undo (asyncpg still rolls back an open transaction)."""


@contextlib.asynccontextmanager
async def _connection(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
    """A pooled connection, discarded (not reused) if it turned out to be lost."""
    async with pool.acquire() as conn:
        try:
            yield conn
        except Exception as exc:
            if _connection_lost(exc):
                # A backend killed while idle can leave asyncpg's protocol in a
                # state where the next query fails oddly; never hand it out again.
                # (If asyncpg already saw it close, the pool has taken it back.)
                with contextlib.suppress(asyncpg.InterfaceError):
                    conn.terminate()
            raise


class _Unreachable(ConnectionError):
    """The server could not be reached to open a pool (not a connection lost mid-use)."""


def _connection_lost(exc: BaseException) -> bool:
    if isinstance(
        exc,
        (
            OSError,
            asyncpg.exceptions.ConnectionDoesNotExistError,
            asyncpg.exceptions.PostgresConnectionError,
            asyncpg.exceptions.AdminShutdownError,
            asyncpg.exceptions.CrashShutdownError,
            asyncpg.exceptions.CannotConnectNowError,
            asyncpg.exceptions.InternalClientError,
        ),
    ):
        return True
    return isinstance(exc, asyncpg.InterfaceError) and "closed" in str(exc)
