"""Append throughput of the stores against raw ``sqlite3.executemany``.

Appends N events (batches of B, S sessions) into a fresh SQLiteStore and,
as the baseline, inserts the same rows, already sealed, with
``executemany`` into a file with the same schema and PRAGMAs (WAL,
synchronous=NORMAL), one transaction per batch. The store's extra work is
deduplication, reading session heads, hashing and building rows; the target
is a ratio of at least 0.7. Memory and JSONL stores are listed for scale.

    python benchmarks/store_append.py [--events 100000] [--batch 2000] [--sessions 20]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sqlite3
import tempfile
import time
from pathlib import Path

from agent_trace.events import AgentEvent, format_timestamp, uuid7
from agent_trace.stores import JSONLStore, MemoryStore, SQLiteStore
from agent_trace.stores.base import assign_chain

TARGET = 0.7  # SQLiteStore events/s over raw executemany events/s

_INSERT = (
    "INSERT INTO events (position, event_id, session_id, version, event_type, timestamp, "
    "span_id, parent_span_id, schema_version, payload, prev_hash, hash) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def make_batches(n: int, batch: int, sessions: int) -> list[list[AgentEvent]]:
    """Events shaped like the SDK's: a tool call's payload, spans, round-robin sessions."""
    ids = [f"bench-{i:03d}" for i in range(sessions)]
    events = [
        AgentEvent(
            event_id=uuid7(),
            session_id=ids[i % sessions],
            event_type="tool_executed",
            timestamp=format_timestamp(time.time_ns()),
            payload={"tool": "search", "result": ["a result", i], "duration_ms": 1.25},
            span_id=f"{i:016x}",
            parent_span_id=None,
        )
        for i in range(n)
    ]
    return [events[i : i + batch] for i in range(0, n, batch)]


async def time_store(store, batches: list[list[AgentEvent]]) -> float:
    await store.list_sessions(limit=1)  # open (and create the schema) outside the timing
    start = time.perf_counter()
    for b in batches:
        await store.append(b)
    elapsed = time.perf_counter() - start
    await store.close()
    return elapsed


async def time_raw(path: Path, batches: list[list[AgentEvent]]) -> float:
    store = SQLiteStore(path)  # only to create the identical schema
    await store.list_sessions(limit=1)
    await store.close()
    heads: dict[str, tuple[int, str]] = {}
    row_batches, position = [], 1
    for b in batches:
        sealed = assign_chain(b, heads, position)
        position += len(sealed)
        row_batches.append(
            [
                (
                    e.position,
                    e.event_id,
                    e.session_id,
                    e.version,
                    e.event_type,
                    e.timestamp,
                    e.span_id,
                    e.parent_span_id,
                    e.schema_version,
                    pj.decode(),
                    e.prev_hash,
                    e.hash,
                )
                for e, pj in sealed
            ]
        )
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")
    start = time.perf_counter()
    for rows in row_batches:
        db.execute("BEGIN IMMEDIATE")
        db.executemany(_INSERT, rows)
        db.execute("COMMIT")
    elapsed = time.perf_counter() - start
    db.close()
    return elapsed


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=2_000)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3, help="best of this many runs")
    args = parser.parse_args()
    n = args.events

    def batches() -> list[list[AgentEvent]]:
        return make_batches(n, args.batch, args.sessions)

    best: dict[str, float] = {}
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory() as tmp:
            d = Path(tmp)
            runs = {
                "raw sqlite3.executemany": lambda d=d: time_raw(d / "raw.db", batches()),
                "SQLiteStore": lambda d=d: time_store(SQLiteStore(d / "store.db"), batches()),
                "MemoryStore": lambda: time_store(MemoryStore(), batches()),
                "JSONLStore": lambda d=d: time_store(JSONLStore(d / "jsonl"), batches()),
            }
            for name, run in runs.items():
                gc.collect()
                elapsed = await run()
                best[name] = min(best.get(name, float("inf")), elapsed)

    raw = n / best["raw sqlite3.executemany"]
    print(
        f"{n:,} events, batches of {args.batch:,}, {args.sessions} sessions (best of {args.repeat})"
    )
    print(f"{'store':<26}{'events/s':>12}{'vs raw':>9}")
    for name, elapsed in best.items():
        rate = n / elapsed
        print(f"{name:<26}{rate:>12,.0f}{rate / raw:>8.2f}x")
    ratio = best["raw sqlite3.executemany"] / best["SQLiteStore"]
    verdict = "meets" if ratio >= TARGET else "is below"
    print(f"SQLiteStore at {ratio:.3f}x raw {verdict} the {TARGET:.2f}x target")


if __name__ == "__main__":
    asyncio.run(main())
