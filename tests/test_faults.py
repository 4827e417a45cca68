"""Issue 13's faults, injected for real: files deleted or corrupted under a
recording process, another process holding SQLite's write lock, a writer
process stopped with SIGSTOP, a PostgreSQL server that never answers, a file
size limit standing in for a full disk, spill files shared by two stores.

Each scenario runs the agent in a child process (its own recorder, its own
exit path) and checks afterwards, from the files, that no acknowledged event
was lost or written twice, and that the agent was never held up for much
longer than ``spill_after``.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import orjson
import pytest

import agent_trace as at
from agent_trace.spill import SpillFile
from agent_trace.stores import SQLiteStore

ROOT = Path(__file__).resolve().parents[1]

PRELUDE = """
import json, logging, os, sys, time
import agent_trace as at
logging.basicConfig(level=logging.WARNING)
def ticks(session_id, n, start=0, pad=0, flush_every=0):
    with at.session(session_id):
        for i in range(start, start + n):
            at.emit("tick", {"i": i, "pad": "x" * pad} if pad else {"i": i})
            if flush_every and (i + 1) % flush_every == 0:
                assert at.flush_sync(60)
def report(**values):
    print("REPORT " + json.dumps({"stats": at.stats(), **values}), flush=True)
"""


def run_child(tmp_path: Path, code: str, timeout: float = 180) -> tuple[dict, str]:
    script = tmp_path / f"child_{time.monotonic_ns()}.py"
    script.write_text(PRELUDE + textwrap.dedent(code))
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_TRACE_")}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    reports = [line[7:] for line in proc.stdout.splitlines() if line.startswith("REPORT ")]
    return (json.loads(reports[-1]) if reports else {}), proc.stderr


def stored_ticks(db: Path, session_id: str) -> list[int]:
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute(
            "SELECT payload FROM events WHERE session_id = ? AND event_type = 'tick' "
            "ORDER BY version",
            (session_id,),
        ).fetchall()
    finally:
        conn.close()
    return [orjson.loads(r[0])["i"] for r in rows]


def spilled_ticks(spill: Path, session_id: str) -> list[int]:
    return [
        ev.payload["i"]
        for ev in SpillFile(spill).read()
        if ev.session_id == session_id and ev.event_type == "tick"
    ]


def verify(db: Path) -> at.StoreVerification:
    import asyncio

    async def go() -> at.StoreVerification:
        store = SQLiteStore(db)
        try:
            return await at.verify_store(store)
        finally:
            await store.close()

    return asyncio.run(go())


class LockHolder:
    """Another process holding the SQLite write lock (BEGIN IMMEDIATE) until released."""

    def __init__(self, db: Path, seconds: float) -> None:
        code = (
            "import sqlite3, sys, time\n"
            "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
            "c.execute('PRAGMA journal_mode = WAL')\n"
            "c.execute('BEGIN IMMEDIATE')\n"
            "print('locked', flush=True)\n"
            "time.sleep(float(sys.argv[2]))\n"
            "c.execute('ROLLBACK')\n"
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, str(db), str(seconds)], stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "locked"

    def release(self) -> None:
        self.proc.kill()
        self.proc.wait()


def _make_db(db: Path) -> None:
    import asyncio

    async def go():
        store = SQLiteStore(db)
        await store.append([])
        await store.list_sessions()  # creates the file and its schema
        await store.close()

    asyncio.run(go())


# --- the SQLite file deleted, replaced or corrupted under a recording process ------------


@pytest.mark.parametrize("writer_process", ["never", "always"])
def test_a_deleted_sqlite_file_loses_no_event_acknowledged_after_the_deletion(
    tmp_path: Path, writer_process: str
) -> None:
    db = tmp_path / "events.db"
    report, stderr = run_child(
        tmp_path,
        f"""
        db = {str(db)!r}
        at.configure(store="sqlite:///" + db, writer_process={writer_process!r}, spill_after=5)
        ticks("before", 200, flush_every=100)
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(db + suffix):
                os.remove(db + suffix)
        ticks("after", 300, flush_every=50)  # every 50 acknowledged by a flush
        report()
        """,
    )
    assert "deleted" in stderr
    assert stored_ticks(db, "after") == list(range(300))
    assert report["stats"]["lost"] == 0
    assert verify(db).ok


def test_a_corrupted_sqlite_file_sends_later_events_to_the_spill(tmp_path: Path) -> None:
    db, spill, go = tmp_path / "events.db", tmp_path / "spill.jsonl", tmp_path / "go"
    script = f"""
import sqlite3
db = {str(db)!r}
at.configure(store="sqlite:///" + db, writer_process="never",
             spill_path={str(spill)!r}, spill_after=0.3)
ticks("before", 3000, pad=100, flush_every=1000)
c = sqlite3.connect(db)
c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
c.close()
print("ready", flush=True)
while not os.path.exists({str(go)!r}):
    time.sleep(0.01)
ticks("after", 100, flush_every=20)
report()
"""
    path = tmp_path / "child.py"
    path.write_text(PRELUDE + script)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_TRACE_")}
    child = subprocess.Popen(
        [sys.executable, str(path)],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None and child.stdout.readline().strip() == "ready"
    with open(db, "r+b") as f:  # another process scribbles over every page but the first
        size = f.seek(0, 2)
        f.seek(4096)
        f.write(b"\xa5" * (size - 4096))
    go.touch()
    out, stderr = child.communicate(timeout=120)
    assert child.returncode == 0, stderr
    report = json.loads(next(x[7:] for x in out.splitlines() if x.startswith("REPORT ")))
    assert "is corrupt" in stderr
    assert spilled_ticks(spill, "after") == list(range(100))
    assert report["stats"]["spilled"] >= 100 and report["stats"]["lost"] == 0
    result = verify(db)
    assert not result.ok and "cannot be read" in (result.failures[0].reason or "")


# --- the spill file: bound to its store, drained when the store is back ------------------


def test_two_stores_sharing_the_default_spill_file_each_get_only_their_own(
    tmp_path: Path,
) -> None:
    a_dir = tmp_path / "a"
    a_dir.mkdir()
    a_db, b_db = a_dir / "events.db", tmp_path / "b.db"
    spill = tmp_path / "agent_trace.spill.jsonl"  # the default, in the shared directory
    # A: its directory vanishes while it records, so its batches spill.
    run_child(
        tmp_path,
        f"""
        import shutil
        at.configure(store="sqlite:///" + {str(a_db)!r}, spill_after=0.2,
                     flush_on_session_end=False)
        ticks("a-session", 1)
        at.flush_sync(30)
        shutil.rmtree({str(a_dir)!r})
        ticks("a-session", 50, start=1)
        at.flush_sync(30)
        report()
        """,
    )
    assert spilled_ticks(spill, "a-session") == list(range(1, 51))
    # B, in the same directory with the same default spill file, must not take them.
    _, stderr = run_child(
        tmp_path,
        f"""
        at.configure(store="sqlite:///" + {str(b_db)!r})
        ticks("b-session", 10)
        report()
        """,
    )
    assert "another store" in stderr
    conn = sqlite3.connect(b_db)
    sessions = {r[0] for r in conn.execute("SELECT DISTINCT session_id FROM events")}
    conn.close()
    assert sessions == {"b-session"}
    assert spilled_ticks(spill, "a-session") == list(range(1, 51))  # still waiting for A
    # A again: its own lines go back to A at once.
    a_dir.mkdir()
    run_child(
        tmp_path,
        f"""
        at.configure(store="sqlite:///" + {str(a_db)!r})
        ticks("a-later", 1)
        report()
        """,
    )
    assert stored_ticks(a_db, "a-session") == list(range(1, 51))
    assert not SpillFile(spill).pending()


def test_a_short_outage_is_drained_as_soon_as_the_store_is_back_and_a_torn_line_costs_one(
    tmp_path: Path,
) -> None:
    db, spill = tmp_path / "events.db", tmp_path / "spill.jsonl"
    _make_db(db)
    holder = LockHolder(db, 2.0)  # the lock is released after 2 s
    try:
        report, stderr = run_child(
            tmp_path,
            f"""
            at.configure(store="sqlite:///" + {str(db)!r}, writer_process="never",
                         spill_path={str(spill)!r}, spill_after=0.3)
            t0 = time.monotonic()
            ticks("outage", 60)
            exit_took = time.monotonic() - t0
            with open({str(spill)!r}, "ab") as f:  # garbage between spilled batches
                f.write(b'{{"event_id": 12, "torn\\n')
            ticks("outage", 45, start=60)
            deadline = time.monotonic() + 20
            while at.stats()["spill_pending"] and time.monotonic() < deadline:
                time.sleep(0.05)
            report(exit_took=exit_took, drained=at.stats()["spill_pending"] == 0)
            """,
        )
    finally:
        holder.release()
    assert report["drained"], stderr
    assert report["exit_took"] < 2.0  # not held up by the 30 s busy timeout
    assert stored_ticks(db, "outage") == list(range(105))
    assert not SpillFile(spill).pending()
    rejected = (tmp_path / "spill.jsonl.rejected").read_bytes()
    assert rejected == b'{"event_id": 12, "torn\n'
    assert "spill.jsonl:" in stderr and "kept in" in stderr
    assert verify(db).ok


def test_a_store_back_before_a_normal_exit_gets_the_spill_at_exit(tmp_path: Path) -> None:
    db, spill = tmp_path / "events.db", tmp_path / "spill.jsonl"
    _make_db(db)
    holder = LockHolder(db, 1.5)
    try:
        run_child(
            tmp_path,
            f"""
            at.configure(store="sqlite:///" + {str(db)!r}, writer_process="never",
                         spill_path={str(spill)!r}, spill_after=0.2)
            ticks("short", 105)
            assert at.stats()["spill_pending"] > 0
            time.sleep(2.0)  # the lock is gone now; exit normally at once
            """,
        )
    finally:
        holder.release()
    assert stored_ticks(db, "short") == list(range(105))
    assert not SpillFile(spill).pending()


# --- bounded stalls ---------------------------------------------------------------------------


@pytest.mark.parametrize("durability", ["batched", "immediate"])
def test_a_write_lock_held_by_another_process_stalls_the_agent_about_spill_after(
    tmp_path: Path, durability: str
) -> None:
    db, spill = tmp_path / "events.db", tmp_path / "spill.jsonl"
    _make_db(db)
    holder = LockHolder(db, 60)  # far beyond the 30 s busy timeout
    try:
        report, _ = run_child(
            tmp_path,
            f"""
            at.configure(store="sqlite:///" + {str(db)!r}, writer_process="never",
                         spill_path={str(spill)!r}, spill_after=1.0, durability={durability!r})
            took = []
            for s in range(3):
                t0 = time.monotonic()
                ticks(f"locked-{{s}}", 20)
                took.append(time.monotonic() - t0)
            report(took=took)
            os._exit(0)  # the lock is still held: no exit drain wanted here
            """,
        )
    finally:
        holder.release()
    # Each session waits at most about spill_after (1 s) for the store, never 30 s.
    assert max(report["took"]) < 5.0, report["took"]
    assert sum(report["took"]) < 8.0, report["took"]
    for s in range(3):
        assert spilled_ticks(spill, f"locked-{s}") == list(range(20))
    assert report["stats"]["lost"] == 0


def test_a_stopped_writer_process_is_killed_and_nothing_is_lost_or_doubled(
    tmp_path: Path,
) -> None:
    db = tmp_path / "events.db"
    report, stderr = run_child(
        tmp_path,
        f"""
        import signal
        at.configure(store="sqlite:///" + {str(db)!r}, writer_process="always", spill_after=1.0,
                     spill_path={str(tmp_path / "spill.jsonl")!r})
        ticks("w", 1000, flush_every=500)
        pid = at.stats()["writer_pid"]
        os.kill(pid, signal.SIGSTOP)
        t0 = time.monotonic()
        ticks("w2", 1000, flush_every=500)
        took = time.monotonic() - t0
        report(pid=pid, took=took)
        """,
    )
    assert "did not answer" in stderr
    assert report["took"] < 10.0
    assert stored_ticks(db, "w") == list(range(1000))
    w2 = stored_ticks(db, "w2") + spilled_ticks(tmp_path / "spill.jsonl", "w2")
    assert sorted(w2) == list(range(1000))
    assert verify(db).ok
    with pytest.raises(ProcessLookupError):
        os.kill(report["pid"], 0)  # killed (and reaped), not left stopped


class _Blackhole:
    """A TCP server that accepts connections and never says a word (a hung server)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)

    def close(self) -> None:
        self.sock.close()
        for c in self.conns:
            c.close()


@pytest.mark.parametrize("server", ["silent", "down"])
def test_a_postgresql_server_down_or_silent_stalls_the_agent_about_spill_after(
    tmp_path: Path, server: str
) -> None:
    pytest.importorskip("asyncpg")
    spill = tmp_path / "spill.jsonl"
    hole = _Blackhole()
    if server == "down":
        hole.close()  # nothing listens on the port any more: connections are refused
    try:
        report, _ = run_child(
            tmp_path,
            f"""
            at.configure(store="postgresql://u:pw@127.0.0.1:{hole.port}/db",
                         spill_path={str(spill)!r}, spill_after=1.0)
            took = []
            for s in range(2):
                t0 = time.monotonic()
                ticks(f"pg-{{s}}", 10)
                took.append(time.monotonic() - t0)
            report(took=took)
            os._exit(0)
            """,
        )
    finally:
        hole.close()
    assert max(report["took"]) < 5.0, report["took"]
    assert spilled_ticks(spill, "pg-0") == list(range(10))
    assert spilled_ticks(spill, "pg-1") == list(range(10))


# --- disk full (a file size limit) ---------------------------------------------------------

_DISK_FULL = """
import resource, signal
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
db, spill = {db!r}, {spill!r}
at.configure(store="sqlite:///" + db, writer_process="never", spill_path=spill,
             spill_after=0.5, durability={durability!r})
ticks("warm", 1)
at.flush_sync(30)
limit = 256 * 1024
resource.setrlimit(resource.RLIMIT_FSIZE, (max(os.path.getsize(db), 4096) + limit,
                                           resource.RLIM_INFINITY))
"""


def test_disk_full_for_store_and_spill_raises_durability_error_in_immediate_mode(
    tmp_path: Path,
) -> None:
    db, spill = tmp_path / "events.db", tmp_path / "spill.jsonl"
    report, _ = run_child(
        tmp_path,
        _DISK_FULL.format(db=str(db), spill=str(spill), durability="immediate")
        + """
acked, error, took = 0, None, None
with at.session("full"):
    for i in range(2000):
        t0 = time.monotonic()
        try:
            at.emit("tick", {"i": i, "pad": "x" * 4000})
        except at.DurabilityError as exc:
            error, took = str(exc), time.monotonic() - t0
            break
        acked = i + 1
report(acked=acked, error=error, took=took)
os._exit(0)
""",
    )
    assert report["error"] is not None
    assert report["took"] < 3.0  # at most about spill_after (0.5 s), then the spill's failure
    durable = stored_ticks(db, "full") + spilled_ticks(spill, "full")
    assert sorted(durable)[: report["acked"]] == list(range(report["acked"]))


def test_disk_full_in_batched_mode_counts_lost_events_and_logs_an_error(tmp_path: Path) -> None:
    db, spill = tmp_path / "events.db", tmp_path / "spill.jsonl"
    report, stderr = run_child(
        tmp_path,
        _DISK_FULL.format(db=str(db), spill=str(spill), durability="batched")
        + """
took = []
for s in range(3):
    t0 = time.monotonic()
    ticks(f"full-{s}", 300, pad=4000)
    took.append(time.monotonic() - t0)
report(took=took)
os._exit(0)
""",
    )
    stats = report["stats"]
    assert stats["lost"] > 0 and "LOST" in stderr
    assert max(report["took"]) < 5.0, report["took"]  # never the 30 s flush timeout
    conn = sqlite3.connect(db)
    stored = conn.execute("SELECT COUNT(*) FROM events WHERE session_id LIKE 'full-%'")
    kept = stored.fetchone()[0] + sum(
        1 for ev in SpillFile(spill).read() if ev.session_id.startswith("full-")
    )
    conn.close()
    assert kept + stats["lost"] == 3 * 302  # every event stored, spilled or counted lost
    assert stats["emitted"] == 3 + 3 * 302  # the warm-up session, then ticks with start/end
    assert stats["written"] + stats["spilled"] + stats["lost"] == stats["emitted"]


# --- streams honour durability="immediate" ----------------------------------------------------


def test_streamed_calls_are_durable_before_the_caller_continues(tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    report, _ = run_child(
        tmp_path,
        f"""
        import asyncio, sqlite3
        at.configure(store="sqlite:///" + {str(db)!r}, durability="immediate",
                     flush_on_session_end=False)

        def count():
            c = sqlite3.connect({str(db)!r})
            try:
                return c.execute("SELECT event_type FROM events ORDER BY position").fetchall()
            finally:
                c.close()

        @at.record_llm(model="m")
        def stream(prompt):
            yield "a"
            yield "b"

        @at.record_llm(model="m")
        async def astream(prompt):
            yield "c"
            yield "d"

        seen = {{}}
        with at.session("s"):
            seen["sync"] = "".join(stream("hi"))
            seen["after_sync"] = [r[0] for r in count()]

            async def main():
                seen["async"] = "".join([c async for c in astream("hi")])
                seen["after_async"] = [r[0] for r in count()]

            asyncio.run(main())
        report(seen=seen)
        """,
    )
    seen = report["seen"]
    assert seen["sync"] == "ab" and seen["async"] == "cd"
    assert seen["after_sync"] == ["session_started", "llm_started", "llm_responded"]
    assert seen["after_async"] == seen["after_sync"] + ["llm_started", "llm_responded"]


# --- a huge event does not push the rest to the spill -------------------------------------------


def test_an_oversized_event_is_cut_and_the_events_after_it_reach_the_store(
    tmp_path: Path,
) -> None:
    db = tmp_path / "events.db"
    report, _ = run_child(
        tmp_path,
        f"""
        at.configure(store="sqlite:///" + {str(db)!r}, spill_path={str(tmp_path / "s.jsonl")!r},
                     spill_after=1.0)
        with at.session("big"):
            at.emit("huge", {{"parts": ["y" * 19_000 for _ in range(3000)]}})  # 57 MB
        ticks("big", 2000)
        report()
        """,
    )
    assert report["stats"]["spilled"] == 0 and report["stats"]["lost"] == 0
    assert stored_ticks(db, "big") == list(range(2000))
    conn = sqlite3.connect(db)
    (size,) = conn.execute(
        "SELECT length(payload) FROM events WHERE event_type = 'huge'"
    ).fetchone()
    conn.close()
    assert size <= 2 * 2_000_000
