"""What only the PostgreSQL store promises: triggers, migrations, errors, scale-out.

The shared conformance suite runs on PostgreSQL too (``conftest.STORE_KINDS``);
these tests add what it cannot say: many OS processes on shared sessions with
a projection runner following live, a server connection killed mid-run, and
the schema and error behaviour.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import pytest
from pg_helpers import PG_DSN, PG_MARKS, PG_UNAVAILABLE, REQUIRE_PG, pg_schema, pg_url
from store_helpers import assert_chain, make_event

from agent_trace.events import AgentEvent
from agent_trace.projections import Projection, ProjectionRunner
from agent_trace.stores import open_store
from agent_trace.stores.base import StoreError
from agent_trace.stores.postgres import SCHEMA_VERSION, PostgresStore

pytestmark = list(PG_MARKS)


@pytest.fixture
async def raw() -> asyncpg.Connection:
    conn = await asyncpg.connect(PG_DSN)
    yield conn
    await conn.close()


def test_server_is_reachable_when_required() -> None:
    # CI sets AGENT_TRACE_REQUIRE_PG=1: then a missing server is a failure, not a skip.
    if REQUIRE_PG:
        assert PG_UNAVAILABLE is None, PG_UNAVAILABLE


async def test_update_delete_and_truncate_are_refused(tmp_path: Path, raw) -> None:
    store = PostgresStore(pg_url(tmp_path))
    await store.append([make_event("s", payload={"v": 1}), make_event("s")])
    t = f'"{store.schema}".events'
    for sql, op in (
        (f"""UPDATE {t} SET payload = '{{"v":2}}' WHERE version = 1""", "UPDATE"),
        (f"DELETE FROM {t} WHERE version = 2", "DELETE"),
        (f"TRUNCATE {t}", "TRUNCATE"),
    ):
        with pytest.raises(asyncpg.RaiseError, match=f"append-only: {op} is not allowed"):
            await raw.execute(sql)
    events = await store.get_events("s")
    assert events[0].payload == {"v": 1}
    assert_chain(events)
    await store.close()


async def test_schema_migrations_and_stored_payload(tmp_path: Path, raw) -> None:
    store = PostgresStore(pg_url(tmp_path))
    await store.append([make_event("s", payload={"b": 1, "a": (2, 3)})])
    await store.close()
    again = PostgresStore(pg_url(tmp_path))  # opening again migrates nothing
    assert len(await again.read_all()) == 1
    await again.close()

    schema = f'"{store.schema}"'
    versions = await raw.fetch(f"SELECT version FROM {schema}.schema_migrations ORDER BY 1")
    assert [r[0] for r in versions] == list(range(1, SCHEMA_VERSION + 1))
    # Exactly the canonical JSON the hash covered: sorted keys, no spaces.
    assert await raw.fetchval(f"SELECT payload FROM {schema}.events") == '{"a":[2,3],"b":1}'


async def test_a_newer_schema_is_refused(tmp_path: Path, raw) -> None:
    store = PostgresStore(pg_url(tmp_path))
    await store.read_all()
    await store.close()
    await raw.execute(
        f'INSERT INTO "{store.schema}".schema_migrations (version, description) '
        "VALUES (999, 'from the future')"
    )
    with pytest.raises(StoreError, match=r"version 999.*upgrade agent_trace"):
        await PostgresStore(pg_url(tmp_path)).read_all()


async def test_schema_option_and_argument(tmp_path: Path) -> None:
    name = pg_schema(tmp_path)
    by_arg = PostgresStore(PG_DSN, schema=name)
    by_url = open_store(pg_url(tmp_path))
    assert isinstance(by_url, PostgresStore) and by_url.schema == by_arg.schema == name
    await by_arg.append([make_event("s")])
    assert len(await by_url.read_all()) == 1
    await by_arg.close()
    await by_url.close()
    assert PostgresStore("postgresql://u@h/db").schema == "agent_trace"
    for bad_url in ("postgresql://u:pw@h:port/db", "mysql://u:pw@h/db"):
        with pytest.raises(ValueError, match="PostgreSQL URL") as info:
            PostgresStore(bad_url)
        assert "pw" not in str(info.value)
    for bad in ("1abc", "a-b", 'x"; DROP TABLE y; --', "x" * 64):
        with pytest.raises(ValueError, match="invalid schema name"):
            PostgresStore(f"postgresql://u:pw@h/db?schema={bad}")


async def test_unreachable_server_is_a_connection_error_with_the_password_masked() -> None:
    url = "postgresql://agent:s3cret@127.0.0.1:1/db"
    store = open_store(url)  # building connects to nothing
    for attempt in range(2):  # and a failed first use leaves it usable to retry
        with pytest.raises(ConnectionError) as info:
            await store.append([make_event("s")])
        message = str(info.value)
        assert "postgresql://agent:***@127.0.0.1:1/db" in message, attempt
        assert "s3cret" not in message and "s3cret" not in repr(store)
    await store.close()


async def test_unknown_database_is_a_connection_error(tmp_path: Path) -> None:
    base = PG_DSN.rsplit("/", 1)[0]
    store = PostgresStore(f"{base}/no_such_db_agent_trace")
    with pytest.raises(ConnectionError, match="no_such_db_agent_trace"):
        await store.read_all()
    await store.close()


async def test_wait_for_events_wakes_on_commit(tmp_path: Path) -> None:
    store = PostgresStore(pg_url(tmp_path))
    writer = PostgresStore(pg_url(tmp_path))
    await store.append([make_event("s")])
    assert await store.wait_for_events(0, timeout=5) is True  # already there
    assert await store.wait_for_events(1, timeout=0.2) is False

    async def append_soon() -> None:
        await asyncio.sleep(0.3)
        await writer.append([make_event("s")])

    started = time.monotonic()
    task = asyncio.create_task(append_soon())
    assert await store.wait_for_events(1, timeout=10) is True
    assert time.monotonic() - started < 5  # woken by NOTIFY, not by the timeout
    await task
    await store.close()
    await writer.close()


async def test_connection_killed_mid_run_recovers_and_loses_nothing(tmp_path: Path, raw) -> None:
    url = pg_url(tmp_path) + "&application_name=agent_trace_kill_test"
    store = PostgresStore(url)
    expected: list[str] = []
    stop = asyncio.Event()

    async def writer(w: int) -> None:
        for i in range(150):
            batch = [make_event(f"s{(w + i) % 4}", payload={"w": w, "i": i}) for _ in range(5)]
            await store.append(batch)  # must not raise: the store reconnects and retries
            expected.extend(ev.event_id for ev in batch)
        stop.set()

    async def killer() -> int:
        kills = 0
        while not stop.is_set():
            await asyncio.sleep(0.1)
            kills += await raw.fetchval(
                "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = 'agent_trace_kill_test') k"
            )
        return kills

    results = await asyncio.gather(writer(0), writer(1), killer())
    assert results[2] >= 3, "the test should have killed connections mid-run"
    # The next call after a kill reconnects too.
    await raw.fetchval(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE application_name = 'agent_trace_kill_test') k"
    )
    assert await store.append([make_event("s0", payload={"after": True})]) == 1

    everything = await store.read_all()
    ids = [ev.event_id for ev in everything]
    assert len(ids) == len(set(ids)) == len(expected) + 1
    assert set(expected) <= set(ids)
    assert [ev.position for ev in everything] == list(range(1, len(everything) + 1))
    for s in range(4):
        assert_chain(await store.get_events(f"s{s}"))
    await store.close()


async def test_cancelled_append_leaves_no_open_transaction(
    tmp_path: Path, raw, caplog: pytest.LogCaptureFixture
) -> None:
    store = PostgresStore(pg_url(tmp_path) + "&application_name=agent_trace_cancel_test")
    await store.read_all()
    big = [make_event(f"s{i % 7}", payload={"i": i}) for i in range(20_000)]
    for delay in (0, 0.001, 0.005, 0.01, 0.02, 0.05):
        task = asyncio.create_task(store.append(big[:5000] if delay else big))
        await asyncio.sleep(delay)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):  # it may have finished first
            await task
    # Whatever got through is whole, the lock is free and the store is usable.
    assert await store.append([make_event("s0")]) == 1
    for s in range(7):
        assert_chain(await store.get_events(f"s{s}"))
    positions = [ev.position for ev in await store.read_all()]
    assert positions == list(range(1, len(positions) + 1))
    idle_in_tx = await raw.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = "
        "'agent_trace_cancel_test' AND state LIKE 'idle in transaction%'"
    )
    assert idle_in_tx == 0
    await store.close()
    # A cancelled append closes its connection itself; asyncpg never had to clean up.
    assert "active transaction" not in caplog.text


async def test_a_store_never_closed_does_not_block_interpreter_exit(
    tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    code = (
        "import asyncio, sys\n"
        "from agent_trace.stores import open_store\n"
        "from agent_trace.events import AgentEvent, uuid7\n"
        "store = open_store(sys.argv[1])\n"
        "ev = AgentEvent(uuid7(), 's', 'x', '2030-01-01T00:00:00.000000+00:00')\n"
        "asyncio.run(store.append([ev]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, pg_url(tmp_path)],
        env=subprocess_env,
        timeout=60,
        capture_output=True,
    )
    assert result.returncode == 0, result.stderr.decode()
    store = PostgresStore(pg_url(tmp_path))
    assert len(await store.read_all()) == 1
    await store.close()


async def test_the_recorder_writes_through_postgres(tmp_path: Path) -> None:
    import agent_trace as at

    store = PostgresStore(pg_url(tmp_path))
    at.configure(store=store, durability="batched", auto_session=False)
    try:

        @at.record_tool
        def add(a: int, b: int) -> int:
            return a + b

        async with at.session("pg-session", user="u1") as s:
            assert add(2, 3) == 5
            at.emit("user_message_received", {"message": "hi"})
        await at.flush()
        events = await at.get_events(s.id, store=store)
        assert [ev.event_type for ev in events] == [
            "session_started",
            "tool_started",
            "tool_executed",
            "user_message_received",
            "session_ended",
        ]
        assert_chain(events)
        [info] = await store.list_sessions()
        assert info.metadata == {"user": "u1"}
    finally:
        at.configure(store="memory://")
        await store.close()


# --- many processes, shared sessions, a runner following live ------------------

_CHILD = """
import asyncio, os, sys, time
from agent_trace.events import AgentEvent, format_timestamp, uuid7
from agent_trace.stores import open_store

url, proc, go = sys.argv[1], int(sys.argv[2]), sys.argv[3]
own, shared, per_session, step = 40, 10, 200, 4

async def main():
    store = open_store(url)
    await store.read_all(limit=1)  # connect and migrate before the start line
    while not os.path.exists(go):
        time.sleep(0.002)
    sessions = [f"p{proc}-s{i}" for i in range(own)] + [f"shared-{i}" for i in range(shared)]
    for start in range(0, per_session, step):
        events = [
            AgentEvent(
                event_id=uuid7(), session_id=sid, event_type="tool_executed",
                timestamp=format_timestamp(time.time_ns()), payload={"proc": proc, "n": n},
            )
            for n in range(start, start + step) for sid in sessions
        ]
        assert await store.append(events) == len(events)
        if start % 40 == 0:  # a retried batch writes nothing, even under contention
            assert await store.append(events[::7]) == 0
    await store.close()

asyncio.run(main())
"""


class _Follower(Projection):
    """Counts events per session and the positions seen, to detect a skip."""

    def initial(self) -> dict:
        return {"count": 0, "last_position": 0, "skips": 0, "per_session": {}}

    def apply(self, state: dict, event: AgentEvent) -> dict:
        if event.position != state["last_position"] + 1:
            state["skips"] += 1
        state["last_position"] = event.position
        state["count"] += 1
        per = state["per_session"]
        per[event.session_id] = per.get(event.session_id, 0) + 1
        return state


@pytest.mark.slow
async def test_eight_processes_on_shared_sessions_with_a_live_runner(
    tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    procs, own, shared, per_session = 8, 40, 10, 200
    total = procs * (own + shared) * per_session  # 80,000 events
    url = pg_url(tmp_path)
    store = PostgresStore(url)
    await store.read_all(limit=1)  # create the schema once, before the children race
    runner = ProjectionRunner(store, _Follower(), "follower", batch_size=2000)
    stop = asyncio.Event()
    follow = asyncio.create_task(runner.run_forever(poll_interval=0.2, stop=stop))

    go = tmp_path / "go"
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _CHILD, url, str(p), str(go)],
            env=subprocess_env,
            stderr=subprocess.PIPE,
        )
        for p in range(procs)
    ]
    await asyncio.sleep(1.0)
    go.touch()
    started = time.monotonic()
    for child in children:
        _, err = await asyncio.to_thread(child.communicate, timeout=300)
        assert child.returncode == 0, err.decode()
    elapsed = time.monotonic() - started

    # The runner catches up live, never skipping a position.
    deadline = time.monotonic() + 60
    while (await runner.checkpoint()) < total and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    stop.set()
    await asyncio.wait_for(follow, 10)
    state = await runner.state()
    assert state["count"] == total and state["skips"] == 0
    assert state["last_position"] == total

    everything = await store.read_all()
    assert len(everything) == total, f"{len(everything)} events after {elapsed:.1f}s"
    assert len({ev.event_id for ev in everything}) == total
    assert [ev.position for ev in everything] == list(range(1, total + 1))
    sessions = {ev.session_id for ev in everything}
    assert len(sessions) == procs * own + shared
    for sid in sorted(sessions):
        events = await store.get_events(sid)
        writers = procs if sid.startswith("shared-") else 1
        assert len(events) == writers * per_session == state["per_session"][sid]
        assert_chain(events)
        for p in range(procs):
            mine = [ev.payload["n"] for ev in events if ev.payload["proc"] == p]
            assert mine in ([], list(range(per_session)))
    await store.close()


def test_benchmark_runs(tmp_path: Path, subprocess_env: dict[str, str]) -> None:
    bench = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_postgres.py"
    args = ["--dsn", PG_DSN, "--events", "600", "--batch", "200", "--sessions", "5"]
    result = subprocess.run(
        [sys.executable, str(bench), *args, "--procs", "1,2"],
        cwd=tmp_path,
        env=subprocess_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "PostgresStore ev/s" in result.stdout and "COPY ev/s" in result.stdout
    assert len(result.stdout.strip().splitlines()) == 4  # title, header, 1 and 2 processes


async def test_configured_by_environment_from_a_script(
    tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    code = (
        "import agent_trace as at\n"
        "@at.record_tool\n"
        "def add(a, b):\n"
        "    return a + b\n"
        "with at.session('env-session'):\n"
        "    add(1, 2)\n"
        "print(len(at.get_events_sync('env-session')))\n"
    )
    env = {**subprocess_env, "AGENT_TRACE_STORE": pg_url(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, timeout=60
    )
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().strip() == "4"
    store = PostgresStore(pg_url(tmp_path))
    assert_chain(await store.get_events("env-session"))
    await store.close()
