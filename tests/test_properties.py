"""Property tests over payloads: anything JSON-like is stored exactly or in a documented form.

The documented normalized form (``agent_trace.capture``), mirrored here by
``normalized()``:

- tuples become lists; dict keys are strings (already are, here);
- NaN, inf and -inf become the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"``;
- integers outside [-2**63, 2**64) become their decimal string;
- lone surrogates in strings and keys become backslash escapes (``"\\ud800"``);
  a key that then collides with an existing one gets a `` (str)`` suffix;
- the value under a redacted key (``password``, ``api_key``, ``x-api-key``,
  ...; by the key's words) becomes ``"[REDACTED]"``, as does the second item
  of a ``(name, value)`` pair whose name is one; secrets inside strings
  (``Bearer …``, ``sk-…``, URL passwords) are masked;
- a container nested ``max_depth`` (32) deep becomes
  ``"<max depth 32 reached: list>"`` when the payload takes capture's slow
  path (any of the rules above applies, or it nests deeper than orjson's
  254 levels); otherwise deep nesting is kept whole.

Everything else (unicode, empty keys, ``-0.0``, huge floats, floats near
zero, 64-bit ints) round-trips exactly, and every stored chain verifies.
"""

from __future__ import annotations

import asyncio
import math
import tempfile
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import agent_trace as at
from agent_trace.capture import REDACTED, CaptureOptions, mask_secrets
from agent_trace.events import AgentEvent, format_timestamp, uuid7
from agent_trace.stores import JSONLStore, MemoryStore, SQLiteStore

MAX_DEPTH = 32
_OPTIONS = CaptureOptions()

_keys = st.one_of(
    st.text(max_size=12),  # includes "" and lone surrogates
    st.sampled_from(["", "password", "API_KEY", "a.b", "$bytes", "null", "0", "\x00"]),
)
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),  # unbounded: huge ints too
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(),  # NaN, inf, -0.0, subnormals
    st.text(max_size=40),
)
_values = st.recursive(
    _scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.tuples(children, children),
        st.dictionaries(_keys, children, max_size=5),
    ),
    max_leaves=25,
)
_payloads = st.dictionaries(_keys, _values, max_size=6)


def _text(s: str) -> str:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return s.encode("utf-8", "backslashreplace").decode("utf-8")
    return s


def normalized(value: Any, depth: int = 0) -> Any:
    """What the store must hold for ``value`` (see the module docstring)."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**64 else str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return value
    if isinstance(value, str):
        return mask_secrets(_text(value))
    if depth >= MAX_DEPTH:
        return f"<max depth {MAX_DEPTH} reached: {type(value).__name__}>"
    if isinstance(value, (list, tuple)):
        items = [normalized(v, depth + 1) for v in value]
        if len(items) == 2 and isinstance(items[0], str) and _OPTIONS.redacts(items[0]):
            items[1] = REDACTED  # a (name, value) pair such as an HTTP header
        return items
    out: dict[str, Any] = {}
    for k, v in value.items():
        key = _text(k)
        if key in out:
            key = f"{key} (str)"
        out[key] = REDACTED if _OPTIONS.redacts(key) else normalized(v, depth + 1)
    return out


def _same(a: Any, b: Any) -> bool:
    """Equality that also tells -0.0 from 0.0 (JSON keeps the sign)."""
    return orjson.dumps(a, option=orjson.OPT_SORT_KEYS) == orjson.dumps(
        b, option=orjson.OPT_SORT_KEYS
    )


_counter = iter(range(10**9))


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(payload=_payloads)
def test_recorded_payloads_are_stored_in_the_documented_form(memory_store, payload):
    sid = f"prop-{next(_counter)}"
    with at.session(sid):
        at.emit("custom_event", payload)
    events = asyncio.run(memory_store.get_events(sid))
    assert events[1].event_type == "custom_event"
    assert _same(events[1].payload, normalized(payload)), (payload, events[1].payload)
    assert asyncio.run(at.verify_session(sid, memory_store)).ok


@pytest.mark.parametrize("kind", ["sqlite", "jsonl"])
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(payloads=st.lists(_payloads, min_size=1, max_size=4))
def test_persistent_stores_keep_the_normalized_form_and_the_chain(kind, payloads):
    async def run(directory: Path) -> None:
        store = SQLiteStore(directory / "e.db") if kind == "sqlite" else JSONLStore(directory)
        events = [
            AgentEvent(
                event_id=uuid7(),
                session_id="prop",
                event_type="custom_event",
                timestamp=format_timestamp(1_700_000_000_000_000_000 + i),
                # what the recorder hands a store: the captured payload, decoded
                payload=orjson.loads(at.capture.capture(p)),
            )
            for i, p in enumerate(payloads)
        ]
        await store.append(events)
        await store.close()
        reopened = SQLiteStore(directory / "e.db") if kind == "sqlite" else JSONLStore(directory)
        stored = await reopened.get_events("prop")
        assert [e.event_id for e in stored] == [e.event_id for e in events]
        for got, sent in zip(stored, payloads, strict=True):
            assert _same(got.payload, normalized(sent)), (sent, got.payload)
        assert (await at.verify_session("prop", reopened)).ok
        await reopened.close()

    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(run(Path(tmp)))


_exact_keys = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=8)
_exact = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**63), max_value=2**64 - 1),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(_exact_keys, children, max_size=4),
    ),
    max_leaves=20,
)


@settings(max_examples=60, deadline=None)
@given(payloads=st.lists(st.dictionaries(_exact_keys, _exact, max_size=5), max_size=4))
def test_json_values_round_trip_exactly_through_a_store(payloads):

    async def run() -> None:
        store = MemoryStore()
        events = [
            AgentEvent(uuid7(), "exact", "custom_event", format_timestamp(i), p)
            for i, p in enumerate(payloads)
        ]
        await store.append(events)
        stored = await store.get_events("exact")
        assert [e.payload for e in stored] == payloads
        for got, sent in zip(stored, payloads, strict=True):
            assert _same(got.payload, sent)
        assert (await at.verify_session("exact", store)).ok

    asyncio.run(run())


async def test_deep_nesting_is_cut_at_max_depth_with_a_marker(memory_store):
    deep: Any = "bottom"
    for _ in range(300):  # beyond orjson's own limit: the bounded walk takes over
        deep = [deep]
    with at.session("deep"):
        at.emit("custom_event", {"deep": deep})
    (_, ev, _) = await at.get_events("deep")
    assert _same(ev.payload, normalized({"deep": deep}))
    assert "<max depth 32 reached: list>" in orjson.dumps(ev.payload).decode()
    assert (await at.verify_session("deep")).ok
