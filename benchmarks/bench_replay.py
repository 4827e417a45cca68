"""What replay costs: a 1,000-event session re-run with every tool and LLM call mocked.

    python benchmarks/bench_replay.py             # memory and SQLite stores
    python benchmarks/bench_replay.py --repeats 3

The agent makes ~200 rounds of decision -> LLM call -> tool call (plus the
session's own events): 1,000 recorded events. Timed, best of ``--repeats``:

- ``replay total``: the whole ``async with replay(...)`` block — reading the
  recording from the store, serving every call, recording the replay's own
  1,000 events and flushing them when the replay session ends;
- ``agent run``: only the agent's code inside the block (lookup + serving);
- ``record``: recording the original session, for reference.

It prints a table and exits 0 whatever the numbers: a benchmark is not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import agent_trace as at
from agent_trace.replay import diff_sessions, replay

ROUNDS = 199  # 5 events per round + 5 more (session, message, note, answer) = 1,000


@at.record_tool
async def search(query: str, page: int = 1) -> dict:
    return {"query": query, "page": page, "hits": [f"{query}-{i}" for i in range(5)]}


@at.record_llm(model="fake")
async def complete(prompt: str) -> dict:
    return {"text": f"search for {prompt[-12:]}", "usage": {"input_tokens": 12, "output_tokens": 4}}


@at.record_decision
async def choose(step: int) -> dict:
    reply = await complete(f"step {step}: what next?")
    return {"tool": "search", "reasoning": reply["text"]}


async def agent() -> None:
    at.emit("user_message_received", {"message": "research something"})
    for step in range(ROUNDS):
        await choose(step)
        await search(f"topic {step}", page=step % 3 + 1)
    at.emit("note", {"message": "all rounds done"})
    at.emit("response_generated", {"response": "done"})


async def bench(url: str, repeats: int) -> dict[str, float]:
    at.configure(store=url, durability="batched")
    t0 = time.perf_counter()
    async with at.session("bench-original"):
        await agent()
    await at.flush()
    record_s = time.perf_counter() - t0
    events = await at.get_events("bench-original")
    assert len(events) == 1000, len(events)

    best_total = best_run = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        async with replay("bench-original", mock=("tool", "llm")) as r:
            t1 = time.perf_counter()
            await agent()
            run_s = time.perf_counter() - t1
        total_s = time.perf_counter() - t0
        best_total, best_run = min(best_total, total_s), min(best_run, run_s)
        assert r.served == 2 * ROUNDS and not r.divergences
    report = await diff_sessions("bench-original", r.id)
    assert not report, report.render()
    return {"record": record_s, "total": best_total, "run": best_run}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        stores = {"memory": "memory://", "sqlite": f"sqlite:///{Path(tmp) / 'bench.db'}"}
        print(f"{'store':<8} {'events':>6} {'record':>10} {'replay total':>13} {'agent run':>10}")
        for name, url in stores.items():
            t = asyncio.run(bench(url, args.repeats))
            print(
                f"{name:<8} {1000:>6} {t['record'] * 1000:>8.1f}ms {t['total'] * 1000:>11.1f}ms"
                f" {t['run'] * 1000:>8.1f}ms"
            )
        at.configure(store="memory://")  # release the SQLite file before the dir goes
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
