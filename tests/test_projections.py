"""Views folded from events (SPEC 7): session summary, cross-session queries, span tree."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

import agent_trace as at
from agent_trace.events import AgentEvent, format_timestamp, uuid7
from agent_trace.projections import (
    CostPerModel,
    Projection,
    SessionSummary,
    ToolStats,
    average_tokens_per_session,
    build_session_summary,
    build_span_tree,
    fold,
    rebuild,
    session_summaries,
    session_summary,
    sessions_using_tool,
    span_tree,
    tool_stats,
)
from agent_trace.stores import MemoryStore, SQLiteStore

REPO = Path(__file__).resolve().parent.parent
T0 = 1_780_000_000_000_000_000  # a fixed instant, in ns


def ev(session_id: str, event_type: str, payload: dict | None = None, *, at_ms: int = 0, **kw):
    return AgentEvent(
        event_id=uuid7(),
        session_id=session_id,
        event_type=event_type,
        timestamp=format_timestamp(T0 + at_ms * 1_000_000),
        payload=payload or {},
        **kw,
    )


# --- build_session_summary: the seed semantics --------------------------------


def test_summary_of_a_hand_written_session() -> None:
    events = [
        ev("s1", "session_started", {"metadata": {"user": "u"}}, at_ms=0),
        ev("s1", "user_message_received", {"message": "hi"}, at_ms=1),
        ev(
            "s1",
            "llm_responded",
            {"model": "m", "usage": {"input_tokens": 10, "output_tokens": 5, "total_tokens": 15}},
            at_ms=2,
        ),
        ev("s1", "tool_executed", {"tool": "search", "duration_ms": 3}, at_ms=3),
        ev(
            "s1",
            "tool_failed",
            {"tool": "fetch", "error_type": "TimeoutError", "error": "slow"},
            at_ms=4,
        ),
        ev("s1", "tool_executed", {"tool": "search", "duration_ms": 4}, at_ms=5),
        ev("s1", "decision_made", {"decision": "plan", "choice": "x"}, at_ms=6),
        ev("s1", "error_occurred", {"error": "oops"}, at_ms=7),
        ev("s1", "user_message_received", {"message": "more"}, at_ms=8),
        ev("s1", "llm_failed", {"model": "m", "error": "rate limited"}, at_ms=9),
        ev("s1", "response_generated", {"response": "ok", "tokens_used": 7}, at_ms=10),
        ev("s1", "session_ended", {"status": "error", "duration_ms": 11.5}, at_ms=11),
    ]
    s = build_session_summary(events)
    assert s == SessionSummary(
        session_id="s1",
        total_messages=2,
        tools_used=["search", "search"],
        total_tokens=15 + 7,
        errors=["slow", "oops", "rate limited"],
        started_at=events[0].timestamp,
        last_activity=events[-1].timestamp,
        llm_calls=2,
        input_tokens=10,
        output_tokens=5,
        decisions=1,
        duration_ms=11.5,
        status="error",
    )
    assert s.to_dict()["tools_used"] == ["search", "search"]
    assert SessionSummary.from_dict(s.to_dict()) == s


def test_summary_edge_cases() -> None:
    empty = build_session_summary([], "nothing")
    assert empty == SessionSummary(session_id="nothing")
    assert empty.status == "open" and empty.started_at is None and empty.duration_ms is None

    open_session = build_session_summary(
        [
            ev("s2", "session_started", at_ms=0),
            # usage without total_tokens: input + output; bools/strings are not counts
            ev("s2", "llm_responded", {"usage": {"input_tokens": 3, "output_tokens": 4}}, at_ms=5),
            ev("s2", "llm_responded", {"usage": {"total_tokens": "many"}}, at_ms=6),
            ev("s2", "llm_responded", {}, at_ms=7),
            ev("s2", "custom_failed", {"message": "custom"}, at_ms=8),
            ev("s2", "decision_failed", {}, at_ms=40),
        ]
    )
    assert open_session.status == "open"
    assert open_session.total_tokens == 7
    assert (open_session.input_tokens, open_session.output_tokens) == (3, 4)
    assert open_session.llm_calls == 3
    assert open_session.errors == ["custom", "decision_failed"]
    assert open_session.duration_ms == pytest.approx(40.0)  # from timestamps while open


def test_summary_times_are_the_earliest_and_latest_whatever_the_order() -> None:
    at = [5, 9, 2, 9, 7, 1, 3]
    s = build_session_summary([ev("s", "observation_added", at_ms=ms) for ms in at])
    assert s.started_at == format_timestamp(T0 + 1_000_000)
    assert s.last_activity == format_timestamp(T0 + 9_000_000)
    assert s.duration_ms == pytest.approx(8.0)


async def test_summary_kinds_of_unseen_types_are_cached_right(memory_store) -> None:
    # Types outside the known set are classified once ("*_failed" is an error).
    events = [ev("k", t) for t in ("a_failed", "b_started", "a_failed", "b_started")]
    await memory_store.append(events)
    for summary in (build_session_summary(events), (await session_summaries(memory_store))["k"]):
        assert summary.errors == ["a_failed", "a_failed"] and summary.llm_calls == 0


async def test_scans_relax_the_gc_and_restore_it(memory_store) -> None:
    from agent_trace.projections import _SCAN_GC_THRESHOLD

    await memory_store.append([ev("g", "tool_executed", {"tool": "t"}, at_ms=i) for i in range(3)])
    seen: list[int] = []

    class Watch(Projection):
        def initial(self):
            return 0

        def apply(self, state, event):
            seen.append(gc.get_threshold()[0])
            if event.payload.get("boom"):
                raise RuntimeError("boom")
            return state + 1

    before = gc.get_threshold()
    gc.set_threshold(123, 4, 5)
    try:
        # Overlapping scans share one raise; the last one to finish restores.
        assert await asyncio.gather(*(rebuild(Watch(), memory_store) for _ in range(3))) == [3] * 3
        assert gc.get_threshold() == (123, 4, 5)
        assert seen and all(t == _SCAN_GC_THRESHOLD for t in seen)
        await memory_store.append([ev("g", "x", {"boom": True}, at_ms=9)])
        with pytest.raises(RuntimeError, match="boom"):
            await rebuild(Watch(), memory_store)
        assert gc.get_threshold() == (123, 4, 5)
    finally:
        gc.set_threshold(*before)


async def test_session_summary_reads_one_session_from_the_configured_store(memory_store) -> None:
    @at.record_tool
    async def search(q: str) -> str:
        return q

    async with at.session("conv-42"):
        at.emit("user_message_received", {"message": "find"})
        await search("x")
    async with at.session("other"):
        await search("y")

    summary = await session_summary("conv-42")
    assert summary.session_id == "conv-42"
    assert (summary.total_messages, summary.tools_used, summary.status) == (1, ["search"], "ok")
    assert (await session_summary("missing")) == SessionSummary(session_id="missing")
    assert (await session_summary("other", store=memory_store)).tools_used == ["search"]


# --- cross-session queries on a recording made by real decorated code -------------


class Usage:
    def __init__(self, inp: int, out: int) -> None:
        self.input_tokens, self.output_tokens = inp, out


class Reply:
    def __init__(self, text: str, inp: int, out: int) -> None:
        self.text, self.usage = text, Usage(inp, out)


@at.record_tool
async def search(query: str) -> list[str]:
    return [query]


@at.record_tool
async def fetch(url: str) -> str:
    if "bad" in url:
        raise ConnectionError(f"cannot reach {url}")
    return "page"


@at.record_llm(model="small")
async def small_llm(prompt: str) -> Reply:
    return Reply("ok", 10, 2)


@at.record_llm(model="big")
async def big_llm(prompt: str) -> Reply:
    return Reply("fine", 100, 20)


@at.record_decision
async def choose(options: list[str]) -> str:
    await small_llm("which?")
    return options[0]


@pytest.fixture
async def recorded(memory_store) -> MemoryStore:
    """Three sessions recorded by running decorated code (answers below are by hand)."""
    async with at.session("alpha"):
        at.emit("user_message_received", {"message": "q1"})
        await choose(["search"])  # small: 12 tokens
        await search("a")
        with pytest.raises(ConnectionError):
            await fetch("https://bad.example")
        await fetch("https://good.example")
        await big_llm("answer")  # big: 120 tokens
    async with at.session("beta"):
        await search("b")
        await search("c")
        at.emit("response_generated", {"response": "x", "tokens_used": 8})
    async with at.session("gamma"):
        await fetch("https://good.example")
        at.emit("error_occurred", {"error": "disk full"})
    await at.flush()
    return memory_store


async def test_sessions_using_tool(recorded) -> None:
    assert await sessions_using_tool("search") == ["alpha", "beta"]
    assert await sessions_using_tool("fetch", store=recorded) == ["alpha", "gamma"]
    assert await sessions_using_tool("nope") == []


async def test_average_tokens_per_session(recorded) -> None:
    # alpha 12 + 120, beta 8, gamma 0 -> 140 / 3
    assert await average_tokens_per_session() == pytest.approx(140 / 3)
    assert await average_tokens_per_session(store=MemoryStore()) == 0.0


async def test_tool_stats_counts(recorded) -> None:
    stats = await tool_stats(store=recorded)
    assert list(stats) == ["fetch", "search"]
    assert (stats["search"].calls, stats["search"].failures) == (3, 0)
    assert (stats["fetch"].calls, stats["fetch"].failures) == (3, 1)
    assert stats["fetch"].failure_rate == pytest.approx(1 / 3)
    assert all(s.p50_ms is not None and s.p50_ms <= s.p95_ms for s in stats.values())


async def test_session_summaries_of_the_recording(recorded) -> None:
    summaries = await session_summaries()
    assert list(summaries) == ["alpha", "beta", "gamma"]
    a = summaries["alpha"]
    assert a.tools_used == ["search", "fetch"]
    assert (a.llm_calls, a.total_tokens, a.input_tokens, a.output_tokens) == (2, 132, 110, 22)
    assert a.decisions == 1 and a.total_messages == 1
    assert a.errors == ["cannot reach https://bad.example"]
    assert summaries["gamma"].errors == ["disk full"]
    for sid, summary in summaries.items():
        assert summary == await session_summary(sid)  # scan and index agree


async def test_tool_stats_percentiles_by_hand() -> None:
    store = MemoryStore()
    durations = [10.0, 20.0, 30.0, 40.0, 1000.0]
    await store.append(
        [ev("p", "tool_executed", {"tool": "t", "duration_ms": d}) for d in durations]
        + [ev("p", "tool_failed", {"tool": "t", "error": "x", "duration_ms": 50.0})]
    )
    [stats] = (await tool_stats(store=store)).values()
    # sorted: 10 20 30 40 50 1000; p50 at rank 2.5 -> 35; p95 at rank 4.75 -> 50 + .75 * 950
    assert stats == ToolStats("t", calls=6, failures=1, p50_ms=35.0, p95_ms=762.5, mean_ms=1150 / 6)


async def test_cost_per_model(recorded) -> None:
    view = CostPerModel(prices={"small": (1.0, 2.0)})
    usage = view.usage(await rebuild(view, store=recorded))
    assert list(usage) == ["big", "small"]
    assert (usage["small"].calls, usage["small"].input_tokens, usage["small"].output_tokens) == (
        1,
        10,
        2,
    )
    assert usage["small"].cost == pytest.approx((10 * 1.0 + 2 * 2.0) / 1e6)
    assert (usage["big"].total_tokens, usage["big"].cost) == (120, None)


async def test_span_tree_nests_calls(recorded) -> None:
    roots = await span_tree("alpha", store=recorded)
    shape = [(depth, n.kind, n.name, n.status) for r in roots for depth, n in r.walk()]
    assert shape == [
        (0, "decision", "choose", "ok"),
        (1, "llm", "small_llm", "ok"),
        (0, "tool", "search", "ok"),
        (0, "tool", "fetch", "error"),
        (0, "tool", "fetch", "ok"),
        (0, "llm", "big_llm", "ok"),
    ]
    failed = roots[2]
    assert failed.error == "cannot reach https://bad.example"
    assert failed.started_at <= failed.ended_at and failed.duration_ms >= 0
    assert build_span_tree([]) == []


# --- user projections ------------------------------------------------------------


class CountByType(Projection):
    def apply(self, state, event):
        state[event.event_type] = state.get(event.event_type, 0) + 1
        return state


class ToolNames(Projection):
    """Handler sugar: on_<event_type> methods."""

    def initial(self):
        return []

    def on_tool_executed(self, state, event):
        return [*state, event.payload["tool"]]


async def test_user_projections_fold_and_rebuild(recorded) -> None:
    counts = await rebuild(CountByType(), store=recorded)
    assert counts["tool_executed"] == 5 and counts["tool_failed"] == 1
    assert counts["session_started"] == 3
    events = await recorded.read_all()
    assert fold(ToolNames(), events) == ["search", "fetch", "search", "search", "fetch"]


# --- the research agent's recordings, checked against SQL over the same file -------


@pytest.fixture(scope="module")
def research_db(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("research") / "agent.db"
    env = {k: v for k, v in os.environ.items() if k != "AGENT_TRACE_STORE"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    subprocess.run(
        [
            sys.executable,
            str(REPO / "examples" / "research_agent.py"),
            "--store",
            f"sqlite:///{path}",
            "--sessions",
            "20",
            "--quiet",
        ],
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    return path


def _sql(path: Path, query: str) -> list[tuple]:
    with sqlite3.connect(path) as db:
        return db.execute(query).fetchall()


def test_queries_match_sql_on_the_research_agent(research_db: Path) -> None:
    async def main():
        store = SQLiteStore(research_db)
        try:
            return (
                await tool_stats(store=store),
                await sessions_using_tool("calculator", store=store),
                await average_tokens_per_session(store=store),
                await session_summaries(store=store),
            )
        finally:
            await store.close()

    stats, calc_sessions, avg, summaries = asyncio.run(main())
    expected_calls = dict(
        _sql(
            research_db,
            """
        SELECT json_extract(payload, '$.tool'), COUNT(*) FROM events
        WHERE event_type IN ('tool_executed', 'tool_failed') GROUP BY 1""",
        )
    )
    expected_failures = dict(
        _sql(
            research_db,
            """
        SELECT json_extract(payload, '$.tool'), COUNT(*) FROM events
        WHERE event_type = 'tool_failed' GROUP BY 1""",
        )
    )
    assert {t: s.calls for t, s in stats.items()} == expected_calls
    assert {t: s.failures for t, s in stats.items() if s.failures} == expected_failures
    assert expected_failures  # the fake web has unreachable hosts
    assert calc_sessions == [
        r[0]
        for r in _sql(
            research_db,
            """
        SELECT session_id FROM events WHERE event_type = 'tool_executed'
        AND json_extract(payload, '$.tool') = 'calculator'
        GROUP BY session_id ORDER BY MIN(position)""",
        )
    ]
    [(tokens,)] = _sql(
        research_db,
        """
        SELECT SUM(COALESCE(json_extract(payload, '$.usage.total_tokens'), 0)
                   + COALESCE(json_extract(payload, '$.tokens_used'), 0))
        FROM events WHERE event_type IN ('llm_responded', 'response_generated')""",
    )
    assert len(summaries) == 20
    assert avg == pytest.approx(tokens / 20)
    for sid, n in _sql(
        research_db,
        "SELECT session_id, COUNT(*) FROM events WHERE event_type = 'llm_responded' GROUP BY 1",
    ):
        assert summaries[sid].llm_calls == n
        assert summaries[sid].status == "ok"
    assert json.dumps([s.to_dict() for s in summaries.values()])  # JSON-ready


def test_handler_sugar_maps_dotted_and_dashed_types() -> None:
    class Dotted(Projection):
        def initial(self):
            return []

        def on_order_paid(self, state, event):
            return [*state, event.event_type]

    events = [ev("s", t) for t in ("order.paid", "order-paid", "order:paid", "order_paid", "x")]
    assert fold(Dotted(), events) == ["order.paid", "order-paid", "order:paid", "order_paid"]


async def test_a_sqlite_scan_reads_inline_and_still_lets_other_tasks_run(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "scan.db")
    await store.append([ev(f"s{i % 7}", "tool_executed", {"tool": "t"}) for i in range(5_500)])
    await store.close()  # the scan reopens it with its first (awaited) page
    inline_reads = 0
    read_inline = store.read_all_inline

    def counting(*args, **kwargs):
        nonlocal inline_reads
        inline_reads += 1
        return read_inline(*args, **kwargs)

    store.read_all_inline = counting  # type: ignore[method-assign]
    ticks = 0
    done = False

    async def heartbeat() -> None:
        nonlocal ticks
        while not done:
            ticks += 1
            await asyncio.sleep(0)

    beat = asyncio.create_task(heartbeat())
    await asyncio.sleep(0)
    uses = await sessions_using_tool("t", store)
    done = True
    await beat
    assert uses == [f"s{i}" for i in range(7)]
    assert inline_reads >= 5  # pages 2..6 and the empty one that ends the scan
    assert ticks >= 5  # the loop ran between pages
    await store.close()
