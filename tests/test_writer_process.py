"""The SQLite writer process: batches sealed and inserted by a helper process."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import agent_trace as at
from agent_trace.config import Settings
from agent_trace.events import format_timestamp, uuid7_many
from agent_trace.integrity import verify_store
from agent_trace.recorder import get_recorder
from agent_trace.stores import SQLiteStore
from agent_trace.stores.sqlite_writer import WriterProcess, WriterProcessError, WriterProcessSkipped


@pytest.fixture
def writer_store(tmp_path):
    """A SQLite file store recorded through a writer process from the first batch."""
    store = SQLiteStore(tmp_path / "events.db")
    at.configure(store=store, writer_process="always", durability="batched")
    yield store
    at.flush_sync(timeout=10)
    at.configure(writer_process="auto")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except OSError:
        return True


def _wait_gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.02)
    return False


async def test_batches_go_through_a_child_process_and_read_back_intact(writer_store):
    async with at.session("wp-basic", user_id="u1"):
        for i in range(300):
            at.emit("tick", {"i": i, "text": "ü" * (i % 5)})
    assert await at.flush(timeout=10)
    pid = at.stats()["writer_pid"]
    assert isinstance(pid, int) and pid != os.getpid()
    events = await at.get_events("wp-basic")
    assert [e.version for e in events] == list(range(1, 303))
    assert [e.payload["i"] for e in events[1:-1]] == list(range(300))
    assert events[5].payload["text"] == "ü" * 4
    report = await verify_store(writer_store)
    assert report.ok, report


async def test_a_killed_writer_process_loses_and_duplicates_nothing(writer_store, caplog):
    async with at.session("wp-kill"):
        at.emit("tick", {"i": -1})
    assert await at.flush(timeout=10)
    pid = at.stats()["writer_pid"]
    os.kill(pid, signal.SIGKILL)
    async with at.session("wp-kill-2"):
        for i in range(2000):
            at.emit("tick", {"i": i})
    assert await at.flush(timeout=20)
    events = await at.get_events("wp-kill-2")
    assert [e.payload.get("i") for e in events[1:-1]] == list(range(2000))
    assert len({e.event_id for e in events}) == len(events)
    assert "writer process" in caplog.text
    assert (await verify_store(writer_store)).ok


async def test_a_writer_killed_with_batches_in_its_pipe_keeps_every_session_in_order(
    writer_store, caplog
):
    at.configure(batch_size=50)
    try:
        async with at.session("wp-pipe-warm"):
            at.emit("tick", {})
        assert await at.flush(timeout=10)
        pid = at.stats()["writer_pid"]
        async with at.session("wp-pipe"):
            for i in range(6000):
                at.emit("tick", {"i": i})
                if i == 3000:
                    # Batches are in flight (one committing, one in the pipe).
                    await asyncio.sleep(0.01)
                    os.kill(pid, signal.SIGKILL)
                elif i % 200 == 199:
                    await asyncio.sleep(0)
        assert await at.flush(timeout=30)
    finally:
        at.configure(batch_size=5_000)
    events = await at.get_events("wp-pipe")
    assert [e.version for e in events] == list(range(1, 6003))
    assert [e.payload.get("i") for e in events[1:-1]] == list(range(6000))
    assert "writer process" in caplog.text
    assert (await verify_store(writer_store)).ok


async def test_store_errors_in_the_child_are_retried(tmp_path):
    writer_store = SQLiteStore(tmp_path / "locked.db", busy_timeout_ms=200)
    # No flush at session end: it would wait out the lock (flush_timeout).
    at.configure(
        store=writer_store, writer_process="always", spill_path=None, flush_on_session_end=False
    )
    async with at.session("wp-warm"):
        pass
    assert await at.flush(timeout=10)
    # Another connection holds the write lock past the busy timeout.
    blocker = sqlite3.connect(writer_store.path, isolation_level=None, timeout=0)
    blocker.execute("BEGIN IMMEDIATE")
    busy_s = writer_store.busy_timeout_ms / 1000
    try:
        async with at.session("wp-locked"):
            for i in range(50):
                at.emit("tick", {"i": i})
        assert not await at.flush(timeout=busy_s + 0.5)
        assert at.stats()["store_failures"] >= 1
        assert "locked" in at.stats()["last_error"]
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    try:
        assert await at.flush(timeout=20)
        assert len(await at.get_events("wp-locked")) == 52
    finally:
        at.configure(
            writer_process="auto", spill_path=Settings().spill_path, flush_on_session_end=True
        )


async def test_pipelined_batches_keep_their_order_through_child_errors(tmp_path):
    store = SQLiteStore(tmp_path / "pipelined.db", busy_timeout_ms=100)
    # Small batches, so several wait in the child's pipe behind one that fails.
    at.configure(
        store=store,
        writer_process="always",
        batch_size=40,
        spill_path=None,
        flush_on_session_end=False,
    )
    try:
        async with at.session("wp-order-warm"):
            pass
        assert await at.flush(timeout=10)
        blocker = sqlite3.connect(store.path, isolation_level=None, timeout=0)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            async with at.session("wp-order"):
                for i in range(1000):
                    at.emit("tick", {"i": i})
            # Release the lock as soon as the first batch has failed: batches
            # sent behind it must not commit before its retry.
            deadline = time.monotonic() + 10
            while at.stats()["store_failures"] < 1 and time.monotonic() < deadline:
                await asyncio.sleep(0.001)
            assert at.stats()["store_failures"] >= 1
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert await at.flush(timeout=30)
        events = await at.get_events("wp-order")
        assert [e.version for e in events] == list(range(1, 1003))
        assert [e.payload["i"] for e in events[1:-1]] == list(range(1000))
        assert (await verify_store(store)).ok
    finally:
        at.flush_sync(timeout=10)
        at.configure(
            writer_process="auto",
            batch_size=5_000,
            spill_path=Settings().spill_path,
            flush_on_session_end=True,
        )


@pytest.fixture
def child(tmp_path):
    """A writer process for a fresh SQLite file, ready for batches."""
    wp = WriterProcess(str(tmp_path / "child.db"), 1000, "NORMAL")
    wp.start()
    try:
        assert wp.wait_ready(10)
        yield wp
    finally:
        wp.close()


def _captured(n: int, sessions: int = 1, pad: str = "") -> list[tuple]:
    """``n`` captured events spread over ``sessions`` sessions (``wp-0`` ...)."""
    ids = uuid7_many([time.time_ns()] * n)
    stamp = format_timestamp(time.time_ns())
    body = b'{"i":%d,"pad":"' + pad.encode() + b'"}'
    return [
        (ids[i], f"wp-{i % sessions}", "tick", stamp, body % i, None, None, 1) for i in range(n)
    ]


def _versions(path: str, session_id: str) -> list[int]:
    with sqlite3.connect(path) as conn:
        sql = "SELECT version FROM events WHERE session_id = ? ORDER BY version"
        return [v for (v,) in conn.execute(sql, (session_id,))]


def test_the_wal_stays_bounded_and_reaches_the_database_file(child):
    n = 90_000
    events = _captured(n, sessions=7, pad="x" * 400)
    futures = [child.submit(events[i : i + 2_000]) for i in range(0, n, 2_000)]
    assert sum(f.result(60) for f in futures) == n
    # About 75 MB of pages: most of it is in the database file by now
    # (checkpointed beside the inserts), and the WAL never held it all. It
    # restarts past 16 MB once a checkpoint has caught up, which two
    # checkpoints colliding can put off by a few batches.
    wal = os.path.getsize(child.path + "-wal")
    assert wal < 48 * 2**20, wal
    assert os.path.getsize(child.path) > 30 * 2**20
    assert len(_versions(child.path, "wp-3")) == n // 7


def test_the_child_skips_batches_sent_behind_a_failed_one(child):
    epoch = child.epoch
    broken = [("not", "a", "captured", "tuple")]
    failed = child.submit(broken, epoch)
    behind = child.submit(_captured(3), epoch)
    with pytest.raises(WriterProcessError, match="ValueError"):
        failed.result(10)
    with pytest.raises(WriterProcessSkipped):
        behind.result(10)
    assert child.epoch == epoch + 1
    assert _versions(child.path, "wp-0") == []
    # Resent in the new epoch, in order: it goes through.
    assert child.submit(_captured(3)).result(10) == 3
    assert _versions(child.path, "wp-0") == [1, 2, 3]


async def test_auto_starts_a_writer_only_under_sustained_load(tmp_path):
    store = SQLiteStore(tmp_path / "auto.db")
    at.configure(store=store, writer_process="auto", batch_size=200)
    try:
        async with at.session("quiet"):
            at.emit("tick", {})
        assert await at.flush(timeout=10)
        assert at.stats()["writer_pid"] is None
        deadline = time.monotonic() + 20
        async with at.session("busy"):
            while at.stats()["writer_pid"] is None and time.monotonic() < deadline:
                for i in range(2000):  # far faster than one batch of 200 is written
                    at.emit("tick", {"i": i})
                await at.flush(timeout=10)
        assert at.stats()["writer_pid"] is not None
        assert (await verify_store(store)).ok
    finally:
        at.flush_sync(timeout=10)
        at.configure(writer_process="auto", batch_size=5_000)


async def test_never_keeps_everything_in_process(tmp_path):
    store = SQLiteStore(tmp_path / "never.db")
    at.configure(store=store, writer_process="never", batch_size=100)
    try:
        async with at.session("never"):
            for i in range(5000):
                at.emit("tick", {"i": i})
        assert await at.flush(timeout=20)
        assert at.stats()["writer_pid"] is None
    finally:
        at.configure(writer_process="auto", batch_size=5_000)


def test_configure_rejects_an_unknown_writer_process_mode():
    with pytest.raises(ValueError, match="writer_process must be one of auto, always, never"):
        at.configure(writer_process="sometimes")


def test_switching_stores_stops_the_writer_process(writer_store, tmp_path):
    with at.session("wp-switch"):
        at.emit("tick", {})
    assert at.flush_sync(timeout=10)
    pid = at.stats()["writer_pid"]
    at.configure(store=SQLiteStore(tmp_path / "other.db"))
    assert _wait_gone(pid)
    assert len(at.get_events_sync("wp-switch", store=writer_store)) == 3


def _script(tmp_path: Path, body: str) -> Path:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(body))
    return script


def test_the_writer_exits_with_the_recording_process_even_on_sigkill(tmp_path):
    script = _script(
        tmp_path,
        """
        import sys, time
        import agent_trace as at
        at.configure(store="sqlite:///events.db", writer_process="always")
        with at.session("parent"):
            at.emit("tick", {})
        at.flush_sync(timeout=10)
        print(at.stats()["writer_pid"], flush=True)
        time.sleep(60)
        """,
    )
    proc = subprocess.Popen(
        [sys.executable, str(script)], cwd=tmp_path, stdout=subprocess.PIPE, text=True
    )
    try:
        pid = int(proc.stdout.readline())
        assert _alive(pid)
        proc.kill()
        proc.wait(10)
        assert _wait_gone(pid), "the writer process outlived the process it wrote for"
    finally:
        if proc.poll() is None:
            proc.kill()
    events = at.get_events_sync("parent", store=f"sqlite:///{tmp_path / 'events.db'}")
    assert [e.event_type for e in events] == ["session_started", "tick", "session_ended"]


def test_normal_exit_flushes_through_the_writer_and_stops_it(tmp_path):
    script = _script(
        tmp_path,
        """
        import agent_trace as at
        at.configure(store="sqlite:///events.db", writer_process="always",
                     flush_on_session_end=False)
        with at.session("exit"):
            at.emit("tick", {"i": -1})
            at.flush_sync(10)
            print(at.stats()["writer_pid"], flush=True)
            for i in range(20000):  # left to the exit hook
                at.emit("tick", {"i": i})
        """,
    )
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    pid = int(proc.stdout.split()[-1])
    assert _wait_gone(pid)
    events = at.get_events_sync("exit", store=f"sqlite:///{tmp_path / 'events.db'}")
    assert len(events) == 20003


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_starts_its_own_writer(writer_store):
    with at.session("wp-fork-parent"):
        at.emit("tick", {})
    assert at.flush_sync(timeout=10)
    parent_writer = at.stats()["writer_pid"]
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: record, report its writer, exit without cleanup
        code = 1
        try:
            with at.session("wp-fork-child"):
                at.emit("tick", {})
            at.flush_sync(timeout=10)
            os.write(write, str(at.stats()["writer_pid"]).encode())
            get_recorder().close(10)
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    child_writer = int(os.read(read, 100) or b"0")
    os.close(read)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert child_writer not in (0, parent_writer)
    assert _alive(parent_writer)
    assert _wait_gone(child_writer)
    assert len(at.get_events_sync("wp-fork-child", store=writer_store)) == 3
    # The parent's writer still works after the fork.
    with at.session("wp-fork-after"):
        at.emit("tick", {})
    assert at.flush_sync(timeout=10)
    assert at.stats()["writer_pid"] == parent_writer


def test_a_python_that_cannot_start_the_child_falls_back_in_process(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-such-python"))
    store = SQLiteStore(tmp_path / "fallback.db")
    at.configure(store=store, writer_process="always")
    try:
        _records_in_process(store, "fallback")
    finally:
        at.configure(writer_process="auto")


def _records_in_process(store: SQLiteStore, session_id: str) -> None:
    """One session recorded and flushed with no writer process running."""
    with at.session(session_id):
        at.emit("tick", {})
    assert at.flush_sync(timeout=10)
    assert at.stats()["writer_pid"] is None
    assert len(at.get_events_sync(session_id, store=store)) == 3


def test_threads_recording_at_once_through_the_writer(writer_store):
    def work(t: int) -> None:
        with at.session(f"wp-thread-{t}"):
            for i in range(500):
                at.emit("tick", {"i": i})

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert at.flush_sync(timeout=20)
    for t in range(4):
        events = at.get_events_sync(f"wp-thread-{t}", store=writer_store)
        assert [e.version for e in events] == list(range(1, 503))


def test_a_child_that_never_gets_ready_is_stopped_and_work_stays_in_process(
    tmp_path, monkeypatch, caplog
):
    silent = tmp_path / "silent-python"
    silent.write_text("#!/bin/sh\nexec sleep 60\n")
    silent.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(silent))
    monkeypatch.setattr("agent_trace.recorder._WRITER_READY_TIMEOUT", 0.3)
    store = SQLiteStore(tmp_path / "silent.db")
    at.configure(store=store, writer_process="always")
    try:
        _records_in_process(store, "silent")
        assert "did not start within" in caplog.text
    finally:
        at.configure(writer_process="auto")
