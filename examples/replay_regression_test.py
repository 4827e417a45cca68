"""Regression tests from recorded sessions, with the agent_trace pytest plugin.

Every recorded session of ``examples/research_agent.py`` becomes a test case
(test id = session id). The agent's own code runs again on the recorded
question, with tools and LLM answered from the recording: no network, no API
key, no live tool. A change that makes the agent call a tool with other
arguments, skip a call or answer differently fails the case and says where.
The plugin comes with ``agent-trace`` (a pytest entry point): no conftest.

    pytest examples/replay_regression_test.py            # records 5 sessions first
    REPLAY_STORE=sqlite:///agent_trace.db pytest examples/replay_regression_test.py

With ``REPLAY_STORE`` the cases are the sessions in your store (recorded by
``python examples/research_agent.py``, or in production); the replays are
recorded in memory, never there. ``agent-trace test`` runs the same check from
the command line (see the README's CI recipe).
"""

from __future__ import annotations

import asyncio
import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

import agent_trace as at
from agent_trace.replay import RecordedSession

sys.path.insert(0, str(Path(__file__).resolve().parent))
import research_agent


def record_demo_sessions() -> str:
    """Record 5 research sessions into a throwaway SQLite file; returns its URL."""
    directory = tempfile.mkdtemp(prefix="agent_trace_recordings_")
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    url = f"sqlite:///{directory}/agent_trace.db"
    at.configure(store=url)
    asyncio.run(research_agent.run_sessions(5))
    return url


# Cases are selected when pytest collects this file, so the recordings exist by then.
STORE = os.environ.get("REPLAY_STORE") or record_demo_sessions()
at.configure(store="memory://")  # where the replays are recorded: never into STORE


def run_agent(session: RecordedSession):
    """The agent's entry point, re-run on the recorded question."""
    return research_agent.ResearchAgent().answer(session.user_message)


@pytest.mark.agent_trace_replay(store=STORE, select="metadata.topic=solar")
def test_the_solar_question_still_gets_its_answer(recorded_session, agent_replay):
    """One topic only (``select`` takes the filters of ``agent-trace test --select``)."""
    answer = agent_replay(run_agent)
    assert "1419 GW" in answer


@pytest.mark.agent_trace_replay(store=STORE)
def test_every_session_replays_identically(recorded_session, agent_replay):
    """Tools and LLM served from the recording: same calls, same decisions, same answer."""
    answer = agent_replay(run_agent)
    assert answer == recorded_session.final_response


@pytest.mark.agent_trace_replay(store=STORE, select="tool=fetch_page", mock="tool")
def test_live_llm_against_recorded_tools(recorded_session, agent_replay):
    """The check for a new prompt or model: the LLM runs live, tools are recorded."""
    agent_replay(run_agent)
    assert agent_replay.result.after.total_tokens == agent_replay.result.before.total_tokens


@pytest.mark.agent_trace_replay(store=STORE, select="limit=1")
def test_a_changed_agent_is_caught(recorded_session, agent_replay):
    """An agent that gives up after one step no longer makes the recorded calls."""
    hasty = research_agent.ResearchAgent(max_steps=1)
    with pytest.raises(pytest.fail.Exception, match=r"diverged at step \d+"):
        agent_replay(lambda session: hasty.answer(session.user_message))
    assert agent_replay.result.tool_choice
