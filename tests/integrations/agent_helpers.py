"""What the agent-framework tests check the same way for every framework."""

from __future__ import annotations

import sys
from collections import Counter
from typing import Any

import pytest

import agent_trace as at
import agent_trace.integrations

CALL_EVENTS = {"llm_started", "llm_responded", "llm_failed", "tool_started", "tool_executed"}


async def events_of(session_id: str) -> list[at.AgentEvent]:
    await at.flush()
    return await at.get_events(session_id)


def assert_calls_keep_their_own_events(
    events: list[at.AgentEvent], llm_calls: int, tool_calls: int
) -> None:
    """Each LLM/tool call's span holds exactly its own events; agent events hold none."""
    by_span: dict[str | None, list[str]] = {}
    for ev in events:
        if ev.event_type in CALL_EVENTS:
            by_span.setdefault(ev.span_id, []).append(ev.event_type)
    for ev in events:
        if ev.event_type not in CALL_EVENTS:
            assert ev.span_id not in by_span, ev
    assert Counter(tuple(v) for v in by_span.values()) == Counter(
        {("llm_started", "llm_responded"): llm_calls, ("tool_started", "tool_executed"): tool_calls}
    )


def without_package(monkeypatch: pytest.MonkeyPatch, package: str, integration: str) -> None:
    """Make ``import package`` fail, as if the extra were not installed."""
    for name in [m for m in sys.modules if m.split(".")[0] == package]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, package, None)
    monkeypatch.delitem(sys.modules, f"agent_trace.integrations.{integration}", raising=False)
    monkeypatch.delattr(agent_trace.integrations, integration, raising=False)


def payloads(events: list[at.AgentEvent], event_type: str) -> list[dict[str, Any]]:
    return [e.payload for e in events if e.event_type == event_type]
