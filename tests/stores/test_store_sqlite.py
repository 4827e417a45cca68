"""What only the SQLite store promises: triggers, schema, file errors, lifecycle."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from store_helpers import assert_chain, make_event

from agent_trace.stores import SQLiteStore, StoreError, open_store

OPEN_ERRORS = (ValueError, PermissionError, ConnectionError)


async def test_update_and_delete_are_refused(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "e.db")
    await store.append([make_event("s", payload={"v": 1}), make_event("s")])
    await store.close()

    raw = sqlite3.connect(tmp_path / "e.db")
    try:
        with pytest.raises(sqlite3.DatabaseError, match="append-only: UPDATE is not allowed"):
            raw.execute("""UPDATE events SET payload = '{"v":2}' WHERE version = 1""")
        with pytest.raises(sqlite3.DatabaseError, match="append-only: DELETE is not allowed"):
            raw.execute("DELETE FROM events WHERE version = 2")
        raw.rollback()
        assert raw.execute("SELECT COUNT(*) FROM events").fetchone() == (2,)
    finally:
        raw.close()
    store = SQLiteStore(tmp_path / "e.db")
    events = await store.get_events("s")
    assert events[0].payload == {"v": 1}
    assert_chain(events)
    await store.close()


async def test_schema_pragmas_and_stored_payload(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "e.db")
    await store.append([make_event("s", payload={"b": 1, "a": (2, 3)})])
    await store.close()
    await store.close()
    # Opening an existing database again leaves the schema alone.
    again = SQLiteStore(tmp_path / "e.db")
    assert len(await again.read_all()) == 1
    await again.close()

    raw = sqlite3.connect(tmp_path / "e.db")
    try:
        assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert raw.execute("PRAGMA user_version").fetchone() == (3,)
        # Exactly the canonical JSON the hash covered: sorted keys, no spaces.
        assert raw.execute("SELECT payload FROM events").fetchone() == ('{"a":[2,3],"b":1}',)
        triggers = {
            r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type='trigger'")
        }
        assert triggers == {"events_no_update", "events_no_delete"}
    finally:
        raw.close()


async def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    raw = sqlite3.connect(tmp_path / "e.db")
    raw.execute("PRAGMA user_version = 99")
    raw.close()
    store = SQLiteStore(tmp_path / "e.db")
    with pytest.raises(StoreError, match="schema version 99"):
        await store.read_all()
    await store.close()


async def test_building_a_store_creates_nothing(tmp_path: Path) -> None:
    SQLiteStore(tmp_path / "e.db")
    open_store(f"sqlite:///{tmp_path / 'other.db'}")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "relative",
    ["missing-dir/e.db", "missing/deeper/e.db", "a-file/e.db", "a-directory"],
)
def test_unusable_path_is_a_clear_error(tmp_path: Path, relative: str) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    (tmp_path / "a-directory").mkdir()
    path = tmp_path / relative
    with pytest.raises(OPEN_ERRORS, match=str(path)):
        SQLiteStore(path)
    assert not (tmp_path / "missing-dir").exists()  # no directory is created behind our back


async def test_a_directory_removed_before_first_use_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    store = SQLiteStore(tmp_path / "d" / "e.db")
    (tmp_path / "d").rename(tmp_path / "elsewhere")
    with pytest.raises(ConnectionError, match=str(tmp_path / "d" / "e.db")):
        await store.read_all()
    # A failed open is not remembered: once the directory is back, it works.
    (tmp_path / "elsewhere").rename(tmp_path / "d")
    assert await store.append([make_event("s")]) == 1
    await store.close()


async def test_not_a_database_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "e.db"
    path.write_bytes(b"this is not a SQLite database" * 100)
    store = SQLiteStore(path)
    with pytest.raises(OPEN_ERRORS, match=str(path)):
        await store.read_all()
    await store.close()


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_unwritable_directory_is_a_clear_error(tmp_path: Path) -> None:
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(PermissionError, match=str(locked / "e.db")):
            SQLiteStore(locked / "e.db")
    finally:
        locked.chmod(0o700)


def test_invalid_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="synchronous"):
        SQLiteStore("x.db", synchronous="SOMETIMES")
    with pytest.raises(ValueError, match="busy_timeout_ms"):
        SQLiteStore("x.db", busy_timeout_ms=-1)
    assert SQLiteStore("x.db", synchronous="full").synchronous == "FULL"


async def test_synchronous_setting_is_applied(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "e.db", synchronous="FULL", busy_timeout_ms=1234)
    await store.read_all()
    conn, db = store._conn  # the store's own connection, read on its thread
    assert await conn._execute(lambda: db.execute("PRAGMA synchronous").fetchone()) == (2,)
    assert await conn._execute(lambda: db.execute("PRAGMA busy_timeout").fetchone()) == (1234,)
    await store.close()


async def test_in_memory_database(tmp_path: Path) -> None:
    store = open_store("sqlite://")
    await store.append([make_event("s"), make_event("s")])
    assert_chain(await store.get_events("s"))
    await store.close()


async def test_cancelled_append_leaves_no_open_transaction(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "e.db")
    await store.read_all()
    big = [make_event(f"s{i % 7}", payload={"i": i}) for i in range(20_000)]
    task = asyncio.create_task(store.append(big))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The append ran to its end on the connection thread (or not at all); either
    # way the connection is usable and the history is whole.
    assert await store.append([make_event("s0")]) == 1
    events = await store.get_events("s0")
    assert_chain(events)
    assert len(await store.read_all()) in (1, 20_001)
    await store.close()


async def test_a_store_never_closed_does_not_block_interpreter_exit(
    tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    code = (
        "import asyncio, sys\n"
        "from agent_trace.stores import SQLiteStore\n"
        "from agent_trace.events import AgentEvent, uuid7\n"
        "store = SQLiteStore(sys.argv[1])\n"
        "ev = AgentEvent(uuid7(), 's', 'x', '2030-01-01T00:00:00.000000+00:00')\n"
        "asyncio.run(store.append([ev]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "e.db")],
        env=subprocess_env,
        timeout=60,
        capture_output=True,
    )
    assert result.returncode == 0, result.stderr.decode()
    store = SQLiteStore(tmp_path / "e.db")
    assert len(await store.read_all()) == 1  # and what it appended is there
    await store.close()


async def test_readers_see_only_committed_events(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "e.db")
    await store.append([make_event("s")])
    raw = sqlite3.connect(tmp_path / "e.db", isolation_level=None)
    try:
        raw.execute("BEGIN IMMEDIATE")
        raw.execute(
            "INSERT INTO events (position, event_id, session_id, version, event_type, timestamp,"
            " schema_version, payload, prev_hash, hash) VALUES (99, 'x', 's', 2, 't', 'ts', 1,"
            " '{}', 'p', 'h')"
        )
        # Another writer holds an open transaction: reads go on and do not see it.
        assert [ev.version for ev in await store.get_events("s")] == [1]
        assert len(await store.read_all()) == 1
        raw.execute("ROLLBACK")
    finally:
        raw.close()
    await store.close()


async def test_read_all_inline_reads_what_read_all_reads(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "inline.db")
    assert store.read_all_inline() is None  # not opened yet: nothing created by a read
    assert not (tmp_path / "inline.db").exists()
    await store.append([make_event(f"s{i % 3}") for i in range(30)])
    assert store.read_all_inline(0, 0) == []
    assert store.read_all_inline(5, 10) == await store.read_all(5, 10)
    assert store.read_all_inline() == await store.read_all()
    # Another thread gets its own connection and sees every committed event.
    seen = await asyncio.to_thread(store.read_all_inline, 20)
    assert [e.position for e in seen] == list(range(21, 31))
    await store.append([make_event("late")])
    assert [e.session_id for e in store.read_all_inline(30)] == ["late"]
    await store.close()
    assert store.read_all_inline() is None
    assert len(await store.read_all()) == 31  # reopened by the awaited read
    assert len(store.read_all_inline()) == 31
    await store.close()


async def test_read_all_inline_is_unavailable_in_memory() -> None:
    store = open_store("sqlite://")
    await store.append([make_event("s")])
    assert store.read_all_inline() is None
    await store.close()
