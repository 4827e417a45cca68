"""The helpers every store shares: sealing rows, deduplication, the in-memory index."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from store_helpers import make_event

from agent_trace.events import AgentEvent, compute_hash, event_from_values, payload_bytes
from agent_trace.stores.base import (
    EventIndex,
    StoreError,
    assign_chain,
    captured_from_events,
    event_from_row,
    events_from_captured,
    events_from_rows,
    seal_rows,
    unique_captured,
)

_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
_events = st.lists(
    st.builds(
        AgentEvent,
        event_id=st.uuids().map(str),
        session_id=st.sampled_from(["a", "b", "ü/ñ:1"]),
        event_type=st.sampled_from(["tool_executed", "x.y:z-1"]),
        timestamp=st.text(max_size=32),
        payload=st.dictionaries(st.text(max_size=8), _json, max_size=5),
        span_id=st.none() | st.text(max_size=16),
        parent_span_id=st.none() | st.text(max_size=16),
        schema_version=st.integers(min_value=1, max_value=5),
    ),
    max_size=8,
)


@settings(max_examples=200, deadline=None)
@given(events=_events, first_position=st.integers(min_value=1, max_value=10**9))
def test_seal_rows_matches_assign_chain_and_compute_hash(events, first_position) -> None:
    heads = {"a": (3, "f" * 64)}
    rows = seal_rows(events, dict(heads), first_position)
    sealed = assign_chain(events, dict(heads), first_position)
    assert len(rows) == len(sealed)
    for row, (ev, pj) in zip(rows, sealed, strict=True):
        stored = event_from_row(row)
        # Every field the same (the payload as JSON gives it back) ...
        assert stored == dataclasses.replace(ev, payload=stored.payload)
        # ... the payload text exactly the canonical bytes, and the hash verifies.
        assert row[4] == pj.decode()
        assert payload_bytes(stored.payload) == pj
        assert compute_hash(stored) == row[11]


@settings(max_examples=50, deadline=None)
@given(events=_events)
def test_the_read_path_builds_real_frozen_events(events) -> None:
    rows = seal_rows(events, {}, 1)
    built = events_from_rows(rows)
    assert built == [event_from_row(row) for row in rows]
    for row, ev in zip(rows, built, strict=True):
        # event_from_values builds the object its own way: it must be an
        # ordinary, still frozen AgentEvent, equal to the constructor's.
        again = AgentEvent(*row[:4], ev.payload, *row[5:12])  # type: ignore[misc]
        assert type(ev) is AgentEvent and ev == again and repr(ev) == repr(again)
        assert dataclasses.replace(ev, version=7).version == 7
        with pytest.raises(dataclasses.FrozenInstanceError):
            ev.version = 1  # type: ignore[misc]
        assert event_from_values(*row[:4], ev.payload, *row[5:12]) == ev


def test_seal_rows_leaves_the_callers_heads_alone_on_failure() -> None:
    index = EventIndex()
    for row in index.seal(captured_from_events([make_event("s")])):
        index.add(row)
    heads_before = dict(index.heads)
    good, bad = captured_from_events([make_event("s"), make_event("s")])
    bad = (*bad[:4], b"\xff not utf-8", *bad[5:])
    with pytest.raises(UnicodeDecodeError):
        index.seal([good, bad])
    assert index.heads == heads_before


def test_captured_tuples_round_trip_and_dedupe() -> None:
    a, b = make_event("s", payload={"z": 1, "a": [1, 2]}), make_event("s")
    a2 = make_event("s", payload={"other": 1}, event_id=a.event_id)
    items = captured_from_events([a, b, a2, b])
    assert events_from_captured(items[:2]) == [a, b]
    assert unique_captured(items, ()) == items[:2]
    assert unique_captured(items[:3], {b.event_id}) == items[:1]


def test_index_refuses_a_row_that_does_not_follow() -> None:
    index = EventIndex()
    rows = index.seal(captured_from_events([make_event("s"), make_event("s"), make_event("s")]))
    index.add(rows[0])
    with pytest.raises(StoreError, match="does not follow"):
        index.add(rows[2])  # a gap
    with pytest.raises(StoreError, match="does not follow"):
        index.add(rows[0])  # a repeat
    index.add(rows[1])
    index.add(rows[2])
    assert index.heads["s"] == (3, rows[2][11])
