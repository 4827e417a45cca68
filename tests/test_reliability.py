"""Store failure while the agent runs: retry, spill to disk, re-append; nothing lost or doubled."""

from __future__ import annotations

import logging
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import agent_trace as at
from agent_trace.spill import SpillFile
from agent_trace.stores import MemoryStore, SQLiteStore

ROOT = Path(__file__).resolve().parents[1]


class SwitchStore(MemoryStore):
    """A MemoryStore that is down while ``down`` is set; ``lose_acks`` writes, then raises."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.lose_acks = False
        self.attempts = 0

    async def append(self, events):
        self.attempts += 1
        if self.down:
            raise ConnectionError("store unavailable")
        n = await super().append(events)
        if self.lose_acks:
            raise ConnectionError("connection lost after commit")
        return n


@pytest.fixture
def spill_setup(tmp_path):
    """Configure a store with a fast spill; yields (configure, spill path)."""
    path = tmp_path / "spill.jsonl"

    def configure(store, **options):
        defaults = {"spill_path": str(path), "spill_after": 0.2, "flush_on_session_end": False}
        at.configure(store=store, durability="batched", **{**defaults, **options})
        return store

    yield configure, path
    at.flush_sync(timeout=10)
    at.configure(store="memory://", spill_after=5.0, flush_on_session_end=True)


def _ticks(sid, start, n):
    with at.session(sid):
        for i in range(start, start + n):
            at.emit("tick", {"i": i})


def _wait_drained(timeout=10.0):
    """Spilled events go back to the store when a probe finds it up (within ~2 s)."""
    deadline = time.monotonic() + timeout
    while at.stats()["spill_pending"] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert at.stats()["spill_pending"] == 0


def _assert_complete(events, n):
    ticks = [e.payload["i"] for e in events if e.event_type == "tick"]
    assert ticks == list(range(n)), ticks[:20]
    assert len({e.event_id for e in events}) == len(events)
    assert [e.version for e in events] == list(range(1, len(events) + 1))


async def test_a_long_outage_spills_then_re_appends_in_order(spill_setup, caplog):
    configure, path = spill_setup
    store = configure(SwitchStore())
    before = at.stats()
    store.down = True
    with caplog.at_level(logging.WARNING, logger="agent_trace"):
        _ticks("outage", 0, 100)
        start = time.monotonic()
        assert at.flush_sync(timeout=10) is True  # durable in the spill: the agent goes on
        assert time.monotonic() - start < 5
        _ticks("outage", 100, 100)  # spilled straight away while the store is still down
        assert at.flush_sync(timeout=10) is True
    stats = at.stats()
    assert stats["spilled"] - before["spilled"] == 204
    assert stats["spill_pending"] == 204
    assert SpillFile(path).pending()
    assert await store.get_events("outage") == []
    warnings = [r for r in caplog.records if "store append failed" in r.getMessage()]
    assert len(warnings) == 1  # once per outage, not per batch

    store.down = False
    with at.session("after"):
        at.emit("tick", {"i": 0})
    assert at.flush_sync(timeout=10) is True
    _wait_drained()
    events = await store.get_events("outage")
    _assert_complete(events, 200)
    assert not SpillFile(path).pending()
    assert at.stats()["spill_pending"] == 0
    assert (await at.verify_store(store)).ok
    # the spilled events went in before the later session's
    positions = {e.session_id: e.position for e in await store.read_all()}
    assert positions["outage"] < positions["after"]


async def test_lost_acknowledgements_and_spill_do_not_duplicate(spill_setup):
    configure, _ = spill_setup
    store = configure(SwitchStore())
    store.lose_acks = True  # every append commits, then reports failure
    _ticks("lost", 0, 50)
    assert at.flush_sync(timeout=10) is True  # spilled after spill_after
    store.lose_acks = False
    _wait_drained()
    events = await store.get_events("lost")
    _assert_complete(events, 50)


async def test_without_spill_path_events_wait_in_memory(spill_setup):
    configure, path = spill_setup
    store = configure(SwitchStore(), spill_path=None)
    store.down = True
    _ticks("no-spill", 0, 10)
    assert at.flush_sync(timeout=0.6) is False
    assert not path.exists()
    store.down = False
    assert at.flush_sync(timeout=10) is True
    _assert_complete(await store.get_events("no-spill"), 10)


async def test_a_database_locked_longer_than_the_busy_timeout(spill_setup, tmp_path):
    configure, path = spill_setup
    db = tmp_path / "locked.db"
    store = configure(SQLiteStore(db, busy_timeout_ms=50))
    _ticks("locked", 0, 5)  # creates the schema
    assert at.flush_sync(timeout=10)
    blocker = sqlite3.connect(db, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
    try:
        with at.session("locked-2"):
            for i in range(20):
                at.emit("tick", {"i": i})
        assert at.flush_sync(timeout=10) is True
        assert SpillFile(path).pending()
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    _wait_drained()
    _assert_complete(await store.get_events("locked-2"), 20)
    assert not SpillFile(path).pending()
    assert (await at.verify_store(store)).ok


def test_store_down_at_exit_spills_and_ingest_recovers(tmp_path):
    db = tmp_path / "events.db"
    spill = tmp_path / "spill.jsonl"
    script = tmp_path / "child.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import agent_trace as at
            from agent_trace.stores import MemoryStore

            class Down(MemoryStore):
                async def append(self, events):
                    raise ConnectionError("PostgreSQL is down")

            at.configure(store=Down(), spill_path={str(spill)!r}, spill_after=0.2,
                         flush_on_session_end=False)
            with at.session("exit-down", password="hunter2-at-exit"):
                for i in range(500):
                    at.emit("tick", {{"i": i, "api_key": "sk-SECRET-KEY"}})
            """
        )
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "store append failed" in proc.stderr
    data = spill.read_bytes()
    assert b"hunter2-at-exit" not in data and b"sk-SECRET-KEY" not in data  # redacted first
    url = f"sqlite:///{db}"
    assert at.ingest_sync(spill, url) == 502
    assert at.ingest_sync(spill, url) == 0
    events = at.get_events_sync("exit-down", store=url)
    _assert_complete(events, 500)


def test_leftover_spill_is_reported_when_the_writer_starts(tmp_path):
    spill = tmp_path / "old.spill.jsonl"
    spill.write_text('{"not": "read here"}\n')
    script = tmp_path / "s.py"
    script.write_text(
        "import logging, agent_trace as at\n"
        "logging.basicConfig()\n"
        f"at.configure(store='memory://', spill_path={str(spill)!r})\n"
        "with at.session('leftover'):\n"
        "    at.emit('tick', {})\n"
    )
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert "spilled by an earlier run" in proc.stderr and str(spill) in proc.stderr
    assert spill.read_text() == '{"not": "read here"}\n'  # left for ingest, untouched
