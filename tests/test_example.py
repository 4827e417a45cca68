"""examples/research_agent.py runs as users run it, and records what it says it does.

The example runs in a subprocess (a fresh interpreter, its own cwd), then the
database it wrote is read back through ``agent_trace.open_store``.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

import agent_trace as at

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "research_agent.py"


def run_example(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("AGENT_TRACE_STORE", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, str(EXAMPLE), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def read_back(url: str) -> tuple[list, dict[str, list[at.AgentEvent]]]:
    async def read():
        store = at.open_store(url)
        try:
            sessions = await store.list_sessions()
            events = {s.session_id: await store.get_events(s.session_id) for s in sessions}
            return sessions, events
        finally:
            await store.close()

    return asyncio.run(read())


@pytest.fixture(scope="module")
def five_sessions(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("example")
    url = f"sqlite:///{tmp}/x.db"
    proc = run_example(tmp, "--store", url, "--sessions", "5")
    sessions, events = read_back(url)
    return proc.stdout, sessions, events


def test_prints_table_totals_steps_and_stats(five_sessions):
    out, _, _ = five_sessions
    for i in range(5):
        assert f"research-{i:02d}" in out
    assert "total: 5 sessions" in out
    assert "steps of research-" in out
    for event_type in ("session_started", "tool_failed", "decision_made", "session_ended"):
        assert event_type in out
    assert "x.db" in out  # where the data lives
    assert "recorder stats:" in out and "emitted=" in out and "written=" in out


def test_every_session_is_a_complete_contiguous_stream(five_sessions):
    _, sessions, events = five_sessions
    assert sorted(s.session_id for s in sessions) == [f"research-{i:02d}" for i in range(5)]
    for info in sessions:
        stream = events[info.session_id]
        types = [ev.event_type for ev in stream]
        assert types[0] == "session_started", types
        assert types[1] == "user_message_received", types
        assert types[-1] == "session_ended", types
        assert types[-2] == "response_generated", types
        assert [ev.version for ev in stream] == list(range(1, len(stream) + 1))
        assert info.event_count == len(stream)
        assert stream[-1].payload["status"] == "ok"
        assert {"user_id", "topic"} <= set(stream[0].payload["metadata"])
        assert info.metadata.get("topic") == stream[0].payload["metadata"]["topic"]


def test_global_positions_are_unique_and_increasing(five_sessions):
    _, _, events = five_sessions
    for stream in events.values():
        positions = [ev.position for ev in stream]
        assert positions == sorted(positions)
    all_positions = [ev.position for stream in events.values() for ev in stream]
    assert len(set(all_positions)) == len(all_positions)


def test_spans_nest_inside_their_session(five_sessions):
    _, _, events = five_sessions
    for stream in events.values():
        spans = {ev.span_id for ev in stream if ev.span_id}
        for ev in stream:
            assert ev.parent_span_id is None or ev.parent_span_id in spans
        # The planning LLM call runs inside the decision that asked for it.
        decisions = {ev.span_id for ev in stream if ev.event_type == "decision_made"}
        plans = [ev for ev in stream if ev.event_type == "llm_started"][:-1]
        assert plans and all(ev.parent_span_id in decisions for ev in plans)


def test_tools_decisions_and_llm_calls_are_recorded(five_sessions):
    _, _, events = five_sessions
    everything = [ev for stream in events.values() for ev in stream]
    counts = Counter(ev.event_type for ev in everything)
    assert counts["tool_started"] == counts["tool_executed"] + counts["tool_failed"]
    assert counts["llm_started"] == counts["llm_responded"]
    assert counts["decision_made"] >= 5 * 4

    failed = [ev for ev in everything if ev.event_type == "tool_failed"]
    assert failed, "the example should show a tool failure the agent recovers from"
    assert all(ev.payload["tool"] == "fetch_page" for ev in failed)
    assert failed[0].payload["error_type"] == "TimeoutError"
    assert "unreachable.invalid" in failed[0].payload["error"]

    tools = {ev.payload["tool"] for ev in everything if ev.event_type == "tool_executed"}
    assert {"web_search", "fetch_page", "calculator", "read_notes"} <= tools

    decision = next(ev for ev in everything if ev.event_type == "decision_made")
    assert decision.payload["decision"] == "choose_next_action"
    assert decision.payload["choice"]["tool"] == "read_notes"
    assert decision.payload["reasoning"]

    responded = [ev for ev in everything if ev.event_type == "llm_responded"]
    planned = [ev for ev in responded if "chunks" not in ev.payload]
    streamed = [ev for ev in responded if "chunks" in ev.payload]
    assert len(streamed) == 5
    for ev in planned:
        usage = ev.payload["usage"]
        assert usage["input_tokens"] > 0 and usage["output_tokens"] > 0
        assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
        assert ev.payload["model"] == "fake-gpt-4o-mini"
    for ev in streamed:
        assert ev.payload["chunks"] > 1
        assert ev.payload["response"].startswith("According to")


def test_default_store_is_agent_trace_db_in_cwd(tmp_path):
    proc = run_example(tmp_path, "--sessions", "3", "--quiet")
    assert "recorded 3 sessions" in proc.stdout
    db = tmp_path / "agent_trace.db"
    assert db.exists()
    sessions, events = read_back(f"sqlite:///{db}")
    assert len(sessions) == 3
    assert all(stream[-1].event_type == "session_ended" for stream in events.values())


def test_importing_the_example_has_no_side_effects(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = importlib.util.spec_from_file_location("research_agent_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look themselves up
    spec.loader.exec_module(module)
    assert callable(module.main) and module.ResearchAgent
    assert list(tmp_path.iterdir()) == []
