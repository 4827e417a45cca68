"""Soak test: many concurrent sessions into a store that fails at random; nothing is lost.

50 sessions (asyncio tasks) emit 2,000 events each through the recorder into
a SQLite file whose ``append`` fails 5% of the time: half of the failures
raise before writing (a refused write), half after the transaction committed
(a lost acknowledgement, so the retry must not duplicate anything). At the
end the store must hold exactly the emitted events, every session's chain
must verify, and versions must follow each session's emission order.

    python benchmarks/soak.py [--sessions 50] [--events 2000] [--failure-rate 0.05]
                              [--store sqlite|memory|jsonl] [--seed 1] [--spill-after 5]

Exit status 0 when emitted == stored and verification passed, 1 otherwise.
Not part of the test suite (it takes a while); ``--quick`` runs a small one.

``--faults`` runs the same sessions (100,000 events by default) into a plain
SQLite file (the writer process on) and injects real faults between rounds of
emission: the writer process stopped with SIGSTOP, another process holding
the write lock through a round (at least twice ``spill_after``; twice), the
database file (with its
-wal and -shm) renamed away under the recorder, and a torn line written into
the spill file while batches are spilling. At the end every emitted event must
be stored exactly once (the renamed-away file counts: its events were
acknowledged before the rename), everything spilled must have been
re-appended, every session chain and the global order must verify.
(PostgreSQL down and a full disk are injected in tests/test_faults.py.)

    python benchmarks/soak.py --faults [--sessions 50] [--events 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import orjson

import agent_trace as at
from agent_trace.events import AgentEvent
from agent_trace.stores import EventStore, JSONLStore, MemoryStore, SQLiteStore


class FlakyStore:
    """Wraps a store; ``append`` fails at random, before or after the real write."""

    def __init__(self, inner: EventStore, rate: float, seed: int) -> None:
        self.inner = inner
        self.rate = rate
        self.rng = random.Random(seed)
        self.attempts = self.refused = self.lost_acks = 0

    async def append(self, events: Sequence[AgentEvent]) -> int:
        self.attempts += 1
        roll = self.rng.random()
        if roll < self.rate / 2:
            self.refused += 1
            raise OSError("injected failure: database is locked")
        n = await self.inner.append(events)
        if roll < self.rate:
            self.lost_acks += 1
            raise ConnectionError("injected failure: connection lost before the commit was acked")
        return n

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


async def _session(i: int, events: int) -> None:
    async with at.session(f"soak-{i:03d}", worker=i):
        for n in range(events - 2):  # session_started and session_ended make up the rest
            at.emit("soak_tick", {"session": i, "n": n, "text": "x" * (n % 50)})
            if n % 100 == 99:
                await asyncio.sleep(0)  # let the other sessions interleave


async def soak(args: argparse.Namespace, directory: Path) -> bool:
    if args.store == "sqlite":
        inner: EventStore = SQLiteStore(directory / "soak.db")
    elif args.store == "jsonl":
        inner = JSONLStore(directory / "soak")
    else:
        inner = MemoryStore()
    store = FlakyStore(inner, args.failure_rate, args.seed)
    at.configure(
        store=store,
        durability="batched",
        flush_on_session_end=False,
        batch_size=args.batch_size,
        spill_path=str(directory / "soak.spill.jsonl"),
        spill_after=args.spill_after,
    )
    before = at.stats()
    started = time.perf_counter()
    await asyncio.gather(*(_session(i, args.events) for i in range(args.sessions)))
    emit_done = time.perf_counter()
    ok_flush = await at.flush(timeout=600)
    # Spilled batches count as flushed (durable on local disk); they reach the
    # store when the recorder next finds it up. Wait for that before counting.
    deadline = time.monotonic() + 120
    while at.stats().get("spill_pending", 0) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    elapsed = time.perf_counter() - started
    after = at.stats()

    emitted = after["emitted"] - before["emitted"]
    stored_events = await inner.read_all()
    stored = len(stored_events)
    unique = len({e.event_id for e in stored_events})
    verification = await at.verify_store(inner)
    in_order = True
    for i in range(args.sessions):
        evs = await inner.get_events(f"soak-{i:03d}")
        ns = [e.payload["n"] for e in evs if e.event_type == "soak_tick"]
        in_order &= ns == list(range(args.events - 2)) and evs[-1].event_type == "session_ended"
    await inner.close()

    rows = [
        ("sessions", args.sessions),
        ("events per session", args.events),
        ("events emitted", emitted),
        ("events stored", stored),
        ("duplicates", stored - unique),
        ("append attempts", store.attempts),
        ("injected: refused", store.refused),
        ("injected: lost ack", store.lost_acks),
        ("recorder retried", after["retried"] - before["retried"]),
        ("recorder spilled", after.get("spilled", 0) - before.get("spilled", 0)),
        ("chain verified", f"{verification.sessions_checked} sessions, ok={verification.ok}"),
        ("per-session order kept", in_order),
        ("emit time (s)", f"{emit_done - started:.2f}"),
        ("total time (s)", f"{elapsed:.2f}"),
        ("throughput (events/s)", f"{emitted / elapsed:,.0f}"),
    ]
    width = max(len(name) for name, _ in rows)
    print(f"soak: store={args.store} failure_rate={args.failure_rate:.0%} seed={args.seed}")
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    ok = ok_flush and emitted == stored == unique and verification.ok and in_order
    print("RESULT:", "PASS" if ok else "FAIL")
    return ok


# --- --faults: real faults between rounds of emission ---------------------------------

_LOCK_HOLDER = (
    "import sqlite3, sys, time\n"
    "c = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=60)\n"
    "c.execute('BEGIN IMMEDIATE')\n"
    "print('locked', flush=True)\n"
    "time.sleep(600)\n"
)


def _hold_lock(db: Path) -> subprocess.Popen[str]:
    """Another process holding the write lock until it is killed."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _LOCK_HOLDER, str(db)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def _rows(db: Path) -> list[tuple[str, str, int, str]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(
            "SELECT event_id, session_id, version, payload FROM events ORDER BY position"
        ).fetchall()
    finally:
        conn.close()


async def _verify_file(db: Path) -> at.StoreVerification:
    store = SQLiteStore(db)
    try:
        return await at.verify_store(store)
    finally:
        await store.close()


async def soak_faults(args: argparse.Namespace, directory: Path) -> bool:
    db, spill = directory / "soak.db", directory / "soak.spill.jsonl"
    moved = directory / "moved-away.db"
    at.configure(
        store=f"sqlite:///{db}",
        durability="batched",
        flush_on_session_end=False,
        batch_size=args.batch_size,
        spill_path=str(spill),
        spill_after=args.spill_after,
        writer_process="always",
    )
    rounds = 8
    per_round = (args.events - 2) // rounds
    go = [asyncio.Event() for _ in range(rounds)]
    done = [0] * rounds

    async def session(i: int) -> None:
        async with at.session(f"soak-{i:03d}", worker=i):
            n = 0
            for r in range(rounds):
                await go[r].wait()
                end = args.events - 2 if r == rounds - 1 else n + per_round
                while n < end:
                    at.emit("soak_tick", {"session": i, "n": n, "text": "x" * (n % 50)})
                    n += 1
                    if n % 100 == 0:
                        await asyncio.sleep(0)
                done[r] += 1

    async def round_(r: int) -> float:
        t0 = time.perf_counter()
        go[r].set()
        while done[r] < args.sessions:
            await asyncio.sleep(0.01)
        await at.flush(timeout=600)
        return time.perf_counter() - t0

    async def drained(timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while at.stats()["spill_pending"] and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    log: list[tuple[str, str]] = []
    started = time.perf_counter()
    tasks = [asyncio.create_task(session(i)) for i in range(args.sessions)]
    await round_(0)
    # 1. The writer process stopped (SIGSTOP): killed after spill_after, in-process.
    pid = at.stats()["writer_pid"]
    if pid is not None:
        os.kill(pid, signal.SIGSTOP)
    took = await round_(1)
    log.append(("writer process SIGSTOPped", f"pid {pid}, round took {took:.1f}s"))
    # 2. Another process holds the write lock for the whole round (at least 2 x spill_after).
    holder = _hold_lock(db)
    t0 = time.monotonic()
    took = await round_(2)
    await asyncio.sleep(max(0.0, 2 * args.spill_after - (time.monotonic() - t0)))
    held = time.monotonic() - t0
    holder.kill()
    holder.wait()
    await drained()
    log.append(
        ("write lock held by another process", f"{held:.1f}s; round took {took:.1f}s, drained")
    )
    # 3. The database file renamed away (deleted, as the recorder sees it).
    for suffix in ("-wal", "-shm", ""):
        if os.path.exists(f"{db}{suffix}"):
            os.rename(f"{db}{suffix}", f"{moved}{suffix}")
    took = await round_(3)
    log.append(("database renamed away", f"round took {took:.1f}s"))
    await round_(4)
    # 4. The lock again, with a torn line written into the spill between two rounds.
    holder = _hold_lock(db)
    took = await round_(5)
    with open(spill, "ab") as f:
        f.write(b'{"event_id": "torn-by-a-crash')  # no newline: torn
    await round_(6)
    holder.kill()
    holder.wait()
    await drained()
    log.append(("lock again + torn spill line", f"round took {took:.1f}s, drained"))
    await round_(7)
    await asyncio.gather(*tasks)
    ok_flush = await at.flush(timeout=600)
    await drained()
    elapsed = time.perf_counter() - started
    stats = at.stats()
    at.configure(store="memory://")  # close the file (and the writer process)

    rows_now, rows_moved = _rows(db), _rows(moved) if moved.exists() else []
    ids_now = [r[0] for r in rows_now]
    ids_moved = [r[0] for r in rows_moved]
    union = set(ids_now) | set(ids_moved)
    in_both = len(set(ids_now) & set(ids_moved))
    emitted = stats["emitted"]
    ticks: dict[str, list[int]] = {}
    for rows in (rows_moved, rows_now):
        for eid, sid, _, payload in rows:
            if eid in ids_moved and rows is rows_now:
                continue  # the batch in flight at the rename, retried into the new file
            p = orjson.loads(payload)
            if "n" in p:
                ticks.setdefault(sid, []).append(p["n"])
    in_order = (
        all(
            sorted(ns) == list(range(args.events - 2)) and len(ns) == args.events - 2
            for ns in ticks.values()
        )
        and len(ticks) == args.sessions
    )
    v_now, v_moved = await _verify_file(db), await _verify_file(moved)
    rejected_path = directory / "soak.spill.jsonl.rejected"
    rejected = rejected_path.read_bytes() if rejected_path.exists() else b""
    spill_left = _size(spill)
    rows = [
        ("sessions", args.sessions),
        ("events per session", args.events),
        ("events emitted", emitted),
        ("events stored (both files)", len(union)),
        (
            "duplicates within a file",
            (len(ids_now) - len(set(ids_now))) + (len(ids_moved) - len(set(ids_moved))),
        ),
        ("in both files (batch in flight at the rename)", in_both),
        ("spilled and re-appended", stats["spilled"]),
        ("spill left over (bytes)", spill_left),
        ("torn spill lines kept in .rejected", rejected.count(b"\n")),
        ("lost", stats["lost"]),
        *log,
        ("chains + global order (new file)", f"{v_now.sessions_checked} sessions, ok={v_now.ok}"),
        ("chains + global order (moved file)", f"ok={v_moved.ok}"),
        ("per-session ticks complete", in_order),
        ("total time (s)", f"{elapsed:.1f}"),
    ]
    width = max(len(name) for name, _ in rows)
    print(f"soak --faults: store=sqlite (writer process) spill_after={args.spill_after:g}s")
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    ok = (
        ok_flush
        and emitted == len(union)
        and len(ids_now) == len(set(ids_now))
        and len(ids_moved) == len(set(ids_moved))
        and stats["lost"] == 0
        and spill_left == 0
        and rejected.count(b"\n") == 1
        and v_now.ok
        and v_moved.ok
        and in_order
    )
    print("RESULT:", "PASS" if ok else "FAIL")
    return ok


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--failure-rate", type=float, default=0.05)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--store", choices=("sqlite", "memory", "jsonl"), default="sqlite")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--spill-after",
        type=float,
        default=5.0,
        help="seconds of failure before batches spill to disk (0: spill on the first failure)",
    )
    parser.add_argument("--quick", action="store_true", help="10 sessions x 300 events")
    parser.add_argument(
        "--faults", action="store_true", help="inject real faults (see the module docstring)"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.sessions, args.events = 10, 300
    logging.basicConfig(level=logging.ERROR)  # the once-per-outage warnings are expected here
    if args.faults and args.spill_after == 5.0:
        args.spill_after = 1.0  # the faults last twice this long
    with tempfile.TemporaryDirectory() as tmp:
        run = soak_faults if args.faults else soak
        ok = asyncio.run(run(args, Path(tmp)))
        at.configure(store="memory://")  # release the scratch store before the directory goes
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
