"""What replay costs: a 1,000-event session re-run with every tool and LLM call mocked,
and ``agent-trace test`` over 1,000 recorded sessions.

    python benchmarks/bench_replay.py             # memory and SQLite stores
    python benchmarks/bench_replay.py --repeats 3 --sessions 1000

The agent makes ~200 rounds of decision -> LLM call -> tool call (plus the
session's own events): 1,000 recorded events. Timed, best of ``--repeats``:

- ``replay total``: the whole ``async with replay(...)`` block — reading the
  recording from the store, serving every call, recording the replay's own
  1,000 events and flushing them when the replay session ends;
- ``agent run``: only the agent's code inside the block (lookup + serving);
- ``record``: recording the original session, for reference.

The second table is ``agent-trace test`` (``agent_trace.regression``) on
``--sessions`` recorded research-agent sessions (``examples/research_agent.py``,
~30 events each), everything mocked, replays recorded into the same store:

- ``select``: reading the sessions to replay (``select_recordings``);
- ``test``: replaying and judging them all (``run_regression``: the replays,
  one flush, reading each replay back, diffing it), and ``sessions/s`` from it;
- ``bare replay``: the same replays in a plain ``async with replay(...)`` loop
  with no judging, side by side: ``test / bare`` is what the judging costs.

It prints tables and exits 0 whatever the numbers: a benchmark is not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import agent_trace as at
from agent_trace.regression import run_regression, select_recordings
from agent_trace.replay import RecordedSession, diff_sessions, replay

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
import research_agent

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


async def answer(session: RecordedSession) -> str:
    return await research_agent.ResearchAgent().answer(session.user_message)


async def bench_regression(url: str, sessions: int, repeats: int) -> dict[str, float]:
    at.configure(store=url, durability="batched", flush_on_session_end=True)
    await research_agent.run_sessions(sessions)
    t0 = time.perf_counter()
    recordings = await select_recordings(None)
    select_s = time.perf_counter() - t0
    assert len(recordings) == sessions, len(recordings)
    at.configure(flush_on_session_end=False)  # as agent-trace test does: one flush at the end

    best_test = best_bare = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        report = await run_regression(answer, recordings)
        best_test = min(best_test, time.perf_counter() - t0)
        assert report.ok, report.diverged[0].explain()

        t0 = time.perf_counter()
        for rec in recordings:
            async with replay(rec, mock=("tool", "llm")):
                await answer(rec)
        await at.flush()
        best_bare = min(best_bare, time.perf_counter() - t0)
    events = sum(len(r.events) for r in recordings)
    at.configure(flush_on_session_end=True)
    return {"select": select_s, "test": best_test, "bare": best_bare, "events": events}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sessions", type=int, default=1000, help="recorded sessions to test")
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
        print()
        print(
            f"{'store':<8} {'sessions':>8} {'events':>7} {'select':>9} {'test':>9}"
            f" {'sessions/s':>10} {'bare replay':>11} {'test/bare':>9}"
        )
        stores = {"memory": "memory://", "sqlite": f"sqlite:///{Path(tmp) / 'regression.db'}"}
        for name, url in stores.items():
            t = asyncio.run(bench_regression(url, args.sessions, max(1, args.repeats // 2)))
            print(
                f"{name:<8} {args.sessions:>8,} {t['events']:>7,} {t['select']:>8.2f}s"
                f" {t['test']:>8.2f}s {args.sessions / t['test']:>10,.0f} {t['bare']:>10.2f}s"
                f" {t['test'] / t['bare']:>8.2f}x"
            )
        at.configure(store="memory://")  # release the SQLite file before the dir goes
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
