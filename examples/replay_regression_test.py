"""Regression tests from recordings: every recorded session still behaves.

Each recorded session of ``examples/research_agent.py`` is re-run through the
agent's own code with ``agent_trace.replay``: tools (and, for the fully
deterministic check, LLM answers) come from the recording, so the test needs
no network, no API key and no live tool. A change to the agent that makes it
call a tool with other args, skip a call, or decide differently fails the
test and says where.

    pytest examples/replay_regression_test.py                 # records 5 sessions first
    REPLAY_STORE=sqlite:///agent_trace.db pytest examples/replay_regression_test.py

With ``REPLAY_STORE`` the recordings are read from your store (sessions
recorded by ``python examples/research_agent.py``); replays are recorded in
memory and never written there.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

import agent_trace as at
from agent_trace.replay import Recording, replay, replay_many

sys.path.insert(0, str(Path(__file__).resolve().parent))
import research_agent


def run_agent(recording: Recording, agent: research_agent.ResearchAgent | None = None):
    """Re-run the agent on the recorded user message (inside the replay's session)."""
    return (agent or research_agent.ResearchAgent()).answer(recording.user_message)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> tuple[str, list[str]]:
    """(store URL, ids of the research sessions recorded there)."""
    url = os.environ.get("REPLAY_STORE")
    if url is None:
        url = f"sqlite:///{tmp_path_factory.mktemp('recordings')}/agent_trace.db"
        at.configure(store=url)
        asyncio.run(research_agent.run_sessions(5))
    at.configure(store="memory://")  # where the replays go
    sessions = at.list_sessions_sync(store=url)
    ids = [
        s.session_id
        for s in sessions
        if "topic" in s.metadata and "replay_of" not in s.metadata  # originals only
    ]
    assert ids, f"no research_agent sessions in {url}"
    return url, ids


def test_every_session_replays_identically(recorded):
    """Tools and LLM served from the recording: same calls, same decisions, same answer."""
    url, ids = recorded
    batch = asyncio.run(replay_many(ids, run_agent, mock=("tool", "llm"), store=url))
    assert batch.ok, batch.render()


def test_live_llm_against_recorded_tools(recorded):
    """The check for a new prompt or model: the LLM runs live, tools are recorded."""
    url, ids = recorded
    batch = asyncio.run(replay_many(ids, run_agent, mock=("tool",), store=url))
    assert batch.ok, batch.render()


def test_a_changed_agent_is_caught(recorded):
    """An agent that gives up after one step no longer makes the recorded calls."""
    url, ids = recorded
    hasty = research_agent.ResearchAgent(max_steps=1)
    batch = asyncio.run(
        replay_many(ids[:1], lambda rec: run_agent(rec, hasty), mock=("tool", "llm"), store=url)
    )
    assert not batch.ok
    assert "FAIL" in batch.render()


def test_step_through_and_fork_one_session(recorded):
    """Fork a session after its first tool call and let the rest run live."""
    url, ids = recorded

    original = at.get_events_sync(ids[0], store=url)
    first_tool = next(e.version for e in original if e.event_type == "tool_executed")

    async def fork() -> str:
        async with replay(ids[0], mock=("tool", "llm"), store=url, until_version=first_tool) as r:
            await run_agent(r.recording)
        return r.id

    forked = at.get_events_sync(asyncio.run(fork()))
    assert forked[0].payload["metadata"]["replay_of"] == ids[0]
    assert forked[-1].payload["status"] == "ok"
    assert at.get_events_sync(ids[0], store=url) == original  # never modified
