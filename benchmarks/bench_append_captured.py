"""SQLite ``append_captured`` throughput of this tree against another revision's, side by side.

The recorder's hot path: batches of pre-captured events (an SDK-shaped mix of
tool, LLM and decision events, 20 sessions interleaved) into a fresh store.
Each revision runs in its own child process, alternating, best of ``--repeat``:

    git archive <rev> | tar -x -C /tmp/base
    python benchmarks/bench_append_captured.py --baseline /tmp/base [--events 100000]

Without ``--baseline`` it prints this tree's figure alone.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import asyncio, json, sys, tempfile, time
from pathlib import Path
import orjson
from agent_trace.events import format_timestamp, uuid7
from agent_trace.stores import SQLiteStore

def items(n, sessions):
    kinds = [
        ("session_started", {"metadata": {"user": "u1", "agent": "bench"}}),
        ("llm_started", {"name": "chat", "model": "gpt-4o-mini", "args": {"turn": 1}}),
        ("llm_responded", {"name": "chat", "model": "gpt-4o-mini", "duration_ms": 412.5,
            "usage": {"input_tokens": 812, "output_tokens": 31, "total_tokens": 843},
            "response": "x" * 400}),
        ("decision_made", {"decision": "next", "choice": "search", "reasoning": None,
            "duration_ms": 1.0}),
        ("tool_started", {"tool": "search", "args": {"q": "solar"}}),
        ("tool_executed", {"tool": "search", "result": ["r"] * 20, "duration_ms": 88.5}),
        ("observation", {"note": "kept"}),
    ]
    t = 1_764_000_000_000_000_000
    out = []
    for i in range(n):
        etype, payload = kinds[(i // sessions) % len(kinds)]
        t += 1000
        out.append((uuid7(), f"s-{i % sessions:03d}", etype, format_timestamp(t),
                    orjson.dumps(payload, option=orjson.OPT_SORT_KEYS), None, None, 1))
    return out

async def main(n, batch, sessions):
    data = items(n, sessions)
    with tempfile.TemporaryDirectory() as tmp:
        store = SQLiteStore(Path(tmp) / "a.db")
        await store.list_sessions(limit=1)  # opened outside the timing
        start = time.perf_counter()
        for i in range(0, n, batch):
            await store.append_captured(data[i : i + batch])
        took = time.perf_counter() - start
        await store.close()
    print(json.dumps(n / took))

asyncio.run(main(*map(int, sys.argv[1:4])))
"""


def run(tree: Path, events: int, batch: int, sessions: int) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(events), str(batch), str(sessions)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return float(json.loads(out.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, help="source tree of the revision to compare")
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    here = Path(__file__).resolve().parent.parent
    trees = {"this tree": here}
    if args.baseline is not None:
        trees["baseline"] = args.baseline.resolve()
    runs: dict[str, list[float]] = {name: [] for name in trees}
    for _ in range(args.repeat):  # alternating, so noise hits both alike
        for name, tree in trees.items():
            runs[name].append(run(tree, args.events, args.batch, args.sessions))
    print(
        f"\nSQLite append_captured, {args.events:,} events, batches of {args.batch}, "
        f"{args.sessions} sessions (best / median of {args.repeat}, alternating)"
    )
    for name, values in runs.items():
        values.sort()
        print(
            f"  {name:10s} {values[-1]:>10,.0f} events/s   median {values[len(values) // 2]:,.0f}"
        )
    if args.baseline is not None:
        best = max(runs["this tree"]) / max(runs["baseline"])
        median = (
            sorted(runs["this tree"])[args.repeat // 2] / sorted(runs["baseline"])[args.repeat // 2]
        )
        print(f"  this tree / baseline: {best:.2f}x (best), {median:.2f}x (median)")


if __name__ == "__main__":
    main()
