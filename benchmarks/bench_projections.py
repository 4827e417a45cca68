"""How fast views rebuild from history, against the speed of merely reading it.

    python benchmarks/bench_projections.py            # 1,000,000 events, 10,000 sessions
    python benchmarks/bench_projections.py --quick    # 20,000 events, 200 sessions (smoke)
    python benchmarks/bench_projections.py --db big.db  # keep the generated store, reuse it

A SQLite store is filled with sessions shaped like an agent's (a message,
LLM calls with usage, decisions, tool calls of which some fail, a final
response; 100 events each), appended in large batches of pre-built events.
Then:

1. read limit: a plain Python loop over ``SELECT ... ORDER BY position``
   with ``sqlite3``, touching each row and nothing else;
2. rebuild: every ``SessionSummary`` and ``tool_stats`` from the same rows,
   through the store protocol (``read_all`` pages -> ``AgentEvent`` ->
   fold), in one scan (``rebuild_many``); target at least 0.5x the read limit;
3. ``session_summary`` of one session among them (``get_events``, an index
   lookup): median and p95 over random sessions; target under 5 ms.

For scale it also lists the scan alone (the same ``read_all`` pages folded
into a view that ignores every event) and the two views each in its own
scan. It prints a table and exits 0 whatever the numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

from agent_trace.events import AgentEvent, format_timestamp, uuid7
from agent_trace.projections import (
    Projection,
    SessionSummaries,
    SessionSummary,
    ToolStatsProjection,
    rebuild,
    rebuild_many,
    session_summaries,
    session_summary,
    tool_stats,
)
from agent_trace.stores import SQLiteStore

EVENTS_PER_SESSION = 100
RATIO_TARGET = 0.5
LATENCY_TARGET_MS = 5.0
TOOLS = ("web_search", "fetch_page", "calculator", "read_notes")


def session_events(sid: str, t0: int) -> list[AgentEvent]:
    """One session's 100 events, timestamps a millisecond apart."""
    out: list[AgentEvent] = []

    def add(event_type: str, payload: dict, span: str | None = None, parent: str | None = None):
        out.append(
            AgentEvent(
                event_id=uuid7(),
                session_id=sid,
                event_type=event_type,
                timestamp=format_timestamp(t0 + len(out) * 1_000_000),
                payload=payload,
                span_id=span,
                parent_span_id=parent,
            )
        )

    add("session_started", {"metadata": {"user_id": f"user-{hash(sid) % 97}", "topic": "bench"}})
    add("user_message_received", {"message": "How much did solar capacity grow since 2015?"})
    for step in range(16):
        decision, llm, tool = f"d{step:015x}", f"l{step:015x}", f"t{step:015x}"
        name = TOOLS[step % len(TOOLS)]
        add(
            "llm_started",
            {"name": "complete", "model": "gpt-4o-mini", "args": {"n": step}},
            llm,
            decision,
        )
        add(
            "llm_responded",
            {
                "name": "complete",
                "model": "gpt-4o-mini",
                "response": f'{{"tool": "{name}"}}',
                "duration_ms": 2.0 + step % 5,
                "usage": {
                    "input_tokens": 300 + step,
                    "output_tokens": 40,
                    "total_tokens": 340 + step,
                },
            },
            llm,
            decision,
        )
        add(
            "decision_made",
            {
                "decision": "choose_next_action",
                "args": {},
                "choice": name,
                "reasoning": None,
                "duration_ms": 3.1,
            },
            decision,
        )
        add("tool_started", {"tool": name, "args": {"query": "solar capacity 2015 2023"}}, tool)
        if step % 7 == 6:
            add(
                "tool_failed",
                {
                    "tool": name,
                    "error_type": "TimeoutError",
                    "error": "no response",
                    "duration_ms": 2000.0,
                },
                tool,
            )
        else:
            add(
                "tool_executed",
                {"tool": name, "result": ["a result", step], "duration_ms": 1.0 + step},
                tool,
            )
        add("observation_added", {"chars": 120 + step})
    add("response_generated", {"response": "Solar capacity grew 525%.", "tokens_used": 12})
    add("session_ended", {"status": "ok", "duration_ms": 99.0})
    assert len(out) == EVENTS_PER_SESSION
    return out


async def fill(store: SQLiteStore, sessions: int, sessions_per_batch: int = 500) -> float:
    """Append ``sessions`` sessions, interleaved within each batch; returns seconds."""
    start = time.perf_counter()
    t0 = 1_780_000_000_000_000_000
    for first in range(0, sessions, sessions_per_batch):
        per_session = [
            session_events(f"sess-{i:06d}", t0 + i * 10_000_000)
            for i in range(first, min(first + sessions_per_batch, sessions))
        ]
        batch = [ev for step in zip(*per_session, strict=True) for ev in step]  # interleaved
        await store.append(batch)
    return time.perf_counter() - start


def read_limit(path: Path) -> tuple[float, int]:
    """A plain loop over every row in position order: the speed of reading alone."""
    db = sqlite3.connect(path)
    start = time.perf_counter()
    n = 0
    for _row in db.execute(
        "SELECT event_id, session_id, event_type, timestamp, payload, version, position, "
        "span_id, parent_span_id, schema_version, prev_hash, hash FROM events ORDER BY position"
    ):
        n += 1
    elapsed = time.perf_counter() - start
    db.close()
    return elapsed, n


class Nothing(Projection[None]):
    """A view that ignores every event: rebuilding it costs the scan alone."""

    def initial(self) -> None:
        return None

    def apply(self, state: None, event: AgentEvent) -> None:
        return state


async def scan_only(store: SQLiteStore) -> float:
    """The rebuild's own reading (same pages, same setup), with a fold that does nothing."""
    start = time.perf_counter()
    await rebuild(Nothing(), store)
    return time.perf_counter() - start


async def rebuild_both(store: SQLiteStore) -> tuple[float, int, int]:
    start = time.perf_counter()
    summaries_state, tools_state = await rebuild_many(
        [SessionSummaries(), ToolStatsProjection()], store
    )
    summaries = {sid: SessionSummary.from_dict(s) for sid, s in summaries_state.items()}
    stats = ToolStatsProjection.stats(tools_state)
    return time.perf_counter() - start, len(summaries), sum(s.calls for s in stats.values())


async def timed(coro_fn) -> float:
    start = time.perf_counter()
    await coro_fn()
    return time.perf_counter() - start


async def latencies(store: SQLiteStore, sessions: int, samples: int) -> list[float]:
    rng = random.Random(7)
    await session_summary("sess-000000", store)  # warm the connection
    out = []
    for _ in range(samples):
        sid = f"sess-{rng.randrange(sessions):06d}"
        start = time.perf_counter()
        summary = await session_summary(sid, store)
        out.append((time.perf_counter() - start) * 1000)
        assert summary.llm_calls == 16, summary
    return out


def row(
    metric: str,
    value: str,
    reference: str = "",
    ratio: str = "",
    target: str = "",
    result: str = "",
) -> str:
    return f"{metric:<38}{value:>16}{reference:>16}{ratio:>8}{target:>10}  {result}"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    parser.add_argument("--sessions", type=int, default=None, help="default 10,000 (quick: 200)")
    parser.add_argument("--db", type=Path, default=None, help="keep/reuse the store at this path")
    parser.add_argument("--repeat", type=int, default=None, help="best of N (default 3; quick 1)")
    parser.add_argument("--samples", type=int, default=500, help="session_summary samples")
    args = parser.parse_args()
    sessions = args.sessions or (200 if args.quick else 10_000)
    repeat = args.repeat or (1 if args.quick else 3)
    n = sessions * EVENTS_PER_SESSION

    with tempfile.TemporaryDirectory() as tmp:
        path = args.db.resolve() if args.db else Path(tmp) / "bench.db"
        store = SQLiteStore(path)
        existing = (await store.read_all(n - 1, 2)) if path.exists() else []
        if len(existing) == 1 and existing[0].position == n:
            print(f"reusing {path} ({n:,} events)")
        elif path.exists() and (await store.read_all(0, 1)):
            raise SystemExit(f"{path} holds other data; pass a new --db path")
        else:
            seconds = await fill(store, sessions)
            print(f"filled {n:,} events / {sessions:,} sessions in {seconds:.1f}s -> {path}")

        best: dict[str, float] = {}

        def keep(name: str, elapsed: float) -> None:
            best[name] = min(best.get(name, float("inf")), elapsed)

        for _ in range(repeat):
            gc.collect()
            elapsed, rows = read_limit(path)
            assert rows == n, (rows, n)
            keep("read", elapsed)
            gc.collect()
            keep("scan", await scan_only(store))
            gc.collect()
            elapsed, summarized, calls = await rebuild_both(store)
            assert summarized == sessions and calls == sessions * 16, (summarized, calls)
            keep("rebuild", elapsed)
            gc.collect()
            keep("summaries", await timed(lambda: session_summaries(store)))
            gc.collect()
            keep("tool_stats", await timed(lambda: tool_stats(store)))
        lat = await latencies(store, sessions, args.samples)
        await store.close()

    read_rate = n / best["read"]
    print(f"{n:,} events, {sessions:,} sessions, best of {repeat}; python {sys.version.split()[0]}")
    print(row("metric", "value", "reference", "ratio", "target", "result"))

    def rate_row(label: str, key: str, target: float | None = None) -> str:
        rate = n / best[key]
        ratio = rate / read_rate
        verdict = "" if target is None else ("ok" if ratio >= target else "BELOW TARGET")
        return row(
            label,
            f"{rate:,.0f} ev/s",
            f"{read_rate:,.0f} ev/s",
            f"{ratio:.2f}x",
            "" if target is None else f">={target:.1f}x",
            verdict,
        )

    print(row("read limit: sqlite3 row loop", f"{read_rate:,.0f} ev/s"))
    print(rate_row("rebuild: summaries + tool_stats", "rebuild", RATIO_TARGET))
    print(rate_row("  scan alone (no-op view)", "scan"))
    fold_share = best["scan"] / best["rebuild"]
    print(row("  rebuild rate / scan rate", "", "", f"{fold_share:.2f}x"))
    print(rate_row("  session_summaries (own scan)", "summaries"))
    print(rate_row("  tool_stats (own scan)", "tool_stats"))
    med, p95 = statistics.median(lat), statistics.quantiles(lat, n=20)[-1]
    verdict = "ok" if med < LATENCY_TARGET_MS else "ABOVE TARGET"
    print(
        row(
            "session_summary(one session) median",
            f"{med:.2f} ms",
            "",
            "",
            f"<{LATENCY_TARGET_MS:.0f} ms",
            verdict,
        )
    )
    print(row("session_summary(one session) p95", f"{p95:.2f} ms"))


if __name__ == "__main__":
    asyncio.run(main())
