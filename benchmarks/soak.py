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
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

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
    args = parser.parse_args(argv)
    if args.quick:
        args.sessions, args.events = 10, 300
    logging.basicConfig(level=logging.ERROR)  # the once-per-outage warnings are expected here
    with tempfile.TemporaryDirectory() as tmp:
        ok = asyncio.run(soak(args, Path(tmp)))
        at.configure(store="memory://")  # release the scratch store before the directory goes
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
