"""Append throughput into PostgreSQL from 1, 4 and 8 processes, against COPY.

Each process appends its own events (batches of B over S sessions of its own)
through ``PostgresStore.append``: one transaction per batch holding the
store's append lock while it reads heads, seals the hash chain and inserts.
The baseline ("the limit") is the same rows, already sealed, sent with
``COPY`` (``copy_records_to_table``, one per batch) by the same number of
processes into a table with the same columns and indexes, with no lock,
no dedup, no hashing. Wall time runs from a common start line to the last
process done; events/s is all events over that time.

    python benchmarks/bench_postgres.py [--dsn URL] [--events 40000] [--batch 500]
        [--sessions 50] [--procs 1,4,8]

The DSN defaults to $AGENT_TRACE_TEST_PG_DSN, else the local server.
Everything is created in throw-away schemas, dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

DEFAULT_DSN = os.environ.get("AGENT_TRACE_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")


def make_batches(proc: int, n: int, batch: int, sessions: int) -> list[list]:
    from agent_trace.events import AgentEvent, format_timestamp, uuid7

    ids = [f"bench-p{proc}-s{i:03d}" for i in range(sessions)]
    events = [
        AgentEvent(
            event_id=uuid7(),
            session_id=ids[i % sessions],
            event_type="tool_executed",
            timestamp=format_timestamp(time.time_ns()),
            payload={"tool": "search", "result": ["a result", i], "duration_ms": 1.25},
            span_id=f"{i:016x}",
        )
        for i in range(n)
    ]
    return [events[i : i + batch] for i in range(0, n, batch)]


async def child(mode: str, dsn: str, schema: str, proc: int, args: argparse.Namespace, go: str):
    import asyncpg

    from agent_trace.stores.base import seal_rows
    from agent_trace.stores.postgres import PostgresStore

    batches = make_batches(proc, args.events, args.batch, args.sessions)
    if mode == "store":
        store = PostgresStore(dsn, schema=schema)
        await store.read_all(limit=1)  # connect and migrate before the start line
        Path(f"{go}.ready{proc}").touch()
        while not os.path.exists(go):
            await asyncio.sleep(0.001)
        for b in batches:
            await store.append(b)
        await store.close()
        return
    # COPY: rows sealed up front, positions disjoint per process.
    heads: dict = {}
    first = proc * args.events + 1
    rows = seal_rows([ev for b in batches for ev in b], heads, first)
    row_batches = [rows[i : i + args.batch] for i in range(0, len(rows), args.batch)]
    columns = [
        "event_id",
        "session_id",
        "event_type",
        "timestamp",
        "payload",
        "version",
        "position",
        "span_id",
        "parent_span_id",
        "schema_version",
        "prev_hash",
        "hash",
    ]
    conn = await asyncpg.connect(dsn)
    Path(f"{go}.ready{proc}").touch()
    while not os.path.exists(go):
        await asyncio.sleep(0.001)
    for b in row_batches:
        await conn.copy_records_to_table("events", records=b, columns=columns, schema_name=schema)
    await conn.close()


def run_round(mode: str, dsn: str, procs: int, args: argparse.Namespace) -> float:
    import asyncpg

    schema = f"bench_{uuid.uuid4().hex[:10]}"

    async def setup() -> None:
        from agent_trace.stores.postgres import PostgresStore

        store = PostgresStore(dsn, schema=schema)
        await store.read_all(limit=1)  # the same table, indexes and triggers
        await store.close()

    async def drop() -> None:
        conn = await asyncpg.connect(dsn)
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.close()

    asyncio.run(setup())
    try:
        with tempfile.TemporaryDirectory() as tmp:
            go = str(Path(tmp) / "go")
            cmd = [sys.executable, __file__, "--child", mode, "--dsn", dsn, "--schema", schema]
            cmd += ["--events", str(args.events), "--batch", str(args.batch)]
            cmd += ["--sessions", str(args.sessions), "--go", go]
            children = [subprocess.Popen([*cmd, "--proc", str(p)]) for p in range(procs)]
            # Start together, once all have built their events and connected.
            while not all(Path(f"{go}.ready{p}").exists() for p in range(procs)):
                if any(c.poll() not in (None, 0) for c in children):
                    raise SystemExit(f"a {mode} process failed")
                time.sleep(0.01)
            start = time.perf_counter()
            Path(go).touch()
            for c in children:
                if c.wait(timeout=600) != 0:
                    raise SystemExit(f"a {mode} process failed")
            return procs * args.events / (time.perf_counter() - start)
    finally:
        asyncio.run(drop())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dsn", default=DEFAULT_DSN)
    parser.add_argument("--events", type=int, default=40_000, help="per process")
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--sessions", type=int, default=50, help="per process")
    parser.add_argument("--procs", default="1,4,8")
    parser.add_argument("--child", choices=["store", "copy"], help=argparse.SUPPRESS)
    parser.add_argument("--schema", help=argparse.SUPPRESS)
    parser.add_argument("--proc", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--go", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        asyncio.run(child(args.child, args.dsn, args.schema, args.proc, args, args.go))
        return

    from agent_trace.stores.base import mask_url

    counts = [int(p) for p in args.procs.split(",")]
    print(
        f"PostgreSQL append throughput: {args.events} events per process, batches of "
        f"{args.batch}, {args.sessions} sessions per process ({mask_url(args.dsn)})"
    )
    print(f"{'processes':>9}  {'PostgresStore ev/s':>18}  {'COPY ev/s':>10}  {'store/COPY':>10}")
    for procs in counts:
        store_rate = run_round("store", args.dsn, procs, args)
        copy_rate = run_round("copy", args.dsn, procs, args)
        ratio = store_rate / copy_rate
        print(f"{procs:>9}  {store_rate:>18,.0f}  {copy_rate:>10,.0f}  {ratio:>10.2f}")


if __name__ == "__main__":
    main()
