"""Building events and checking histories, for the store tests."""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from typing import Any

from agent_trace.events import GENESIS_HASH, AgentEvent, compute_hash, format_timestamp, uuid7


def make_event(
    session_id: str,
    event_type: str = "tool_executed",
    payload: dict[str, Any] | None = None,
    *,
    timestamp: str | None = None,
    **fields: Any,
) -> AgentEvent:
    """An unsealed event as the recorder would hand it to a store."""
    return AgentEvent(
        event_id=fields.pop("event_id", None) or uuid7(),
        session_id=session_id,
        event_type=event_type,
        timestamp=timestamp or format_timestamp(time.time_ns()),
        payload={"n": 0} if payload is None else payload,
        **fields,
    )


def assert_chain(events: Sequence[AgentEvent]) -> None:
    """One session's full history: versions 1..n, each hash chained and correct."""
    prev = GENESIS_HASH
    for i, ev in enumerate(events, start=1):
        assert ev.version == i, f"version {ev.version} where {i} was expected"
        assert ev.prev_hash == prev, f"version {i}: prev_hash does not chain"
        assert ev.hash == compute_hash(ev), f"version {i}: hash does not verify"
        prev = ev.hash


def assert_positions_increase(events: Sequence[AgentEvent]) -> None:
    positions = [ev.position for ev in events]
    assert all(p > 0 for p in positions)
    assert all(a < b for a, b in itertools.pairwise(positions)), positions
