"""Schema evolution end to end: old events read in the latest schema everywhere; bytes untouched."""

from __future__ import annotations

import sqlite3

import pytest

import agent_trace as at
from agent_trace.upcasting import (
    UpcastError,
    clear_upcasters,
    latest_schema_version,
    register_upcaster,
)


@pytest.fixture(autouse=True)
def _no_upcasters():
    clear_upcasters()
    yield
    clear_upcasters()


def _old_response(p):
    # v1 of our app's event said {"text", "tokens"}; v2 uses the SDK vocabulary
    return {"response": p["text"], "tokens_used": p["tokens"]}


async def test_every_read_path_sees_the_latest_schema(sqlite_store, tmp_path):
    store = sqlite_store
    with at.session("evolve"):
        at.emit("response_generated", {"text": "hello", "tokens": 42})
    at.flush_sync()
    raw_before = _payload_column(tmp_path / "events.db")

    register_upcaster("response_generated", 1, _old_response)
    assert latest_schema_version("response_generated") == 2

    (ev,) = await at.get_events("evolve", event_types=["response_generated"])
    assert ev.payload == {"response": "hello", "tokens_used": 42} and ev.schema_version == 2
    assert [e.payload for e in await at.read_all() if e.event_type == "response_generated"] == [
        ev.payload
    ]

    from agent_trace.projections import session_summary

    summary = await session_summary("evolve", store)
    assert summary.total_tokens == 42  # the projection folded the upcast payload

    # stored bytes are never rewritten, and the chain still verifies
    assert _payload_column(tmp_path / "events.db") == raw_before
    assert (await at.verify_session("evolve", store)).ok
    assert (await at.verify_store(store)).ok
    raw = await store.get_events("evolve", raw=True)
    assert raw[1].payload == {"text": "hello", "tokens": 42} and raw[1].schema_version == 1


def _payload_column(path):
    conn = sqlite3.connect(path)
    try:
        return conn.execute(
            "SELECT payload, schema_version FROM events ORDER BY position"
        ).fetchall()
    finally:
        conn.close()


async def test_a_failing_upcaster_is_a_clear_error(memory_store):
    register_upcaster("tick", 1, lambda p: p["missing"])
    with at.session("bad-upcast"):
        at.emit("tick", {})
    with pytest.raises(UpcastError, match=r"'tick' v1->v2 failed on event .*KeyError"):
        await at.get_events("bad-upcast")
    register_upcaster("tick", 1, lambda p: ["not", "a", "dict"])
    with pytest.raises(UpcastError, match="returned list"):
        await at.get_events("bad-upcast")
    # raw reads and verification do not run upcasters at all
    assert (await at.verify_session("bad-upcast", memory_store)).ok


def test_register_upcaster_validates_its_arguments():
    with pytest.raises(ValueError, match="from_version"):
        register_upcaster("tick", 0, dict)
    with pytest.raises(ValueError, match="event_type"):
        register_upcaster("bad type!", 1, dict)
    with pytest.raises(TypeError, match="callable"):
        register_upcaster("tick", 1, "not callable")
    assert latest_schema_version("tick") == 1


async def test_re_registering_replaces_and_clear_forgets(memory_store):
    register_upcaster("tick", 1, lambda p: {"v": "first"})
    register_upcaster("tick", 1, lambda p: {"v": "second"})
    with at.session("replace"):
        at.emit("tick", {})
    assert (await at.get_events("replace"))[1].payload == {"v": "second"}
    clear_upcasters("tick")
    assert (await at.get_events("replace"))[1].payload == {}
