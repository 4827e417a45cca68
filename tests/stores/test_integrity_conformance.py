"""Integrity and schema evolution on every store (SPEC 8): raw reads, upcasting, verification.

Runs once per backend in ``conftest.STORE_KINDS``: a new store is only done
when stored bytes survive upcasting untouched and the chain verifies.
"""

from __future__ import annotations

import pytest
from store_helpers import make_event

from agent_trace.events import GENESIS_HASH
from agent_trace.integrity import SessionHead, session_head, verify_session, verify_store
from agent_trace.upcasting import clear_upcasters, register_upcaster


@pytest.fixture(autouse=True)
def _no_upcasters():
    clear_upcasters()
    yield
    clear_upcasters()


def _v1_to_v2(p):
    # v2 renamed "amount" to "total_cents"
    return {"total_cents": p["amount"] * 100, "currency": p.get("currency", "EUR")}


def _v2_to_v3(p):
    # v3 nests money in an object
    return {"total": {"cents": p["total_cents"], "currency": p["currency"]}}


async def _write_orders(store, sid="orders"):
    await store.append(
        [
            make_event(sid, "order_placed", {"amount": 3}, schema_version=1),
            make_event(
                sid, "order_placed", {"total_cents": 500, "currency": "USD"}, schema_version=2
            ),
            make_event(
                sid, "order_placed", {"total": {"cents": 7, "currency": "GBP"}}, schema_version=3
            ),
            make_event(sid, "note", {"text": "untouched"}),
        ]
    )


async def test_upcasters_chain_on_get_events_and_read_all(store):
    await _write_orders(store)
    register_upcaster("order_placed", 1, _v1_to_v2)
    register_upcaster("order_placed", 2, _v2_to_v3)
    expected = [
        {"total": {"cents": 300, "currency": "EUR"}},
        {"total": {"cents": 500, "currency": "USD"}},
        {"total": {"cents": 7, "currency": "GBP"}},
    ]
    for events in (await store.get_events("orders"), await store.read_all()):
        orders = [e for e in events if e.event_type == "order_placed"]
        assert [e.payload for e in orders] == expected
        assert {e.schema_version for e in orders} == {3}
        assert events[-1].payload == {"text": "untouched"} and events[-1].schema_version == 1
    filtered = await store.get_events("orders", event_types=["order_placed"], after_version=1)
    assert [e.payload for e in filtered] == expected[1:]


async def test_raw_reads_return_the_stored_form(store):
    await _write_orders(store)
    register_upcaster("order_placed", 1, _v1_to_v2)
    register_upcaster("order_placed", 2, _v2_to_v3)
    raw = await store.get_events("orders", raw=True)
    assert raw[0].payload == {"amount": 3} and raw[0].schema_version == 1
    assert raw[1].payload == {"total_cents": 500, "currency": "USD"}
    assert [e.payload for e in await store.read_all(raw=True)] == [e.payload for e in raw]


async def test_upcasted_events_keep_their_stored_hashes_and_the_chain_verifies(store):
    await _write_orders(store)
    before = await store.get_events("orders")
    register_upcaster("order_placed", 1, _v1_to_v2)
    register_upcaster("order_placed", 2, _v2_to_v3)
    after = await store.get_events("orders")
    assert [e.hash for e in after] == [e.hash for e in before]
    assert [e.prev_hash for e in after] == [e.prev_hash for e in before]
    result = await verify_session("orders", store)
    assert result.ok and result.events_checked == 4, result


async def test_no_complete_path_reads_as_stored(store):
    await _write_orders(store)
    register_upcaster("order_placed", 2, _v2_to_v3)  # no v1 -> v2
    events = await store.get_events("orders")
    assert events[0].payload == {"amount": 3} and events[0].schema_version == 1
    assert events[1].schema_version == 3
    # an event newer than every registered upcaster reads as stored too
    await store.append([make_event("orders", "order_placed", {"future": 1}, schema_version=9)])
    assert (await store.get_events("orders"))[-1].payload == {"future": 1}


async def test_session_head_anchors_the_chain(store):
    sid = "anchored"
    assert await session_head(sid, store) == SessionHead(sid, 0, GENESIS_HASH)
    await store.append([make_event(sid, payload={"i": i}) for i in range(5)])
    head = await session_head(sid, store)
    stored = await store.get_events(sid)
    assert (head.version, head.hash) == (5, stored[-1].hash)
    await store.append([make_event(sid, payload={"i": 5})])
    # appending after the anchor is fine; the anchored version still matches
    assert (await verify_session(sid, store, expected_head=head)).ok
    assert (await verify_session(sid, store, expected_head=(head.version, head.hash))).ok
    forged = SessionHead(sid, 3, "f" * 64)
    result = await verify_session(sid, store, expected_head=forged)
    assert not result.ok and result.first_bad_version == 3 and "rewritten" in result.reason
    future = SessionHead(sid, 9, "a" * 64)
    result = await verify_session(sid, store, expected_head=future.to_dict())
    assert not result.ok and result.first_bad_version == 7 and "truncated" in result.reason


async def test_verify_store_checks_every_session(store):
    for sid in ("a", "b", "c"):
        await store.append([make_event(sid, payload={"i": i}) for i in range(3)])
    result = await verify_store(store)
    assert result.ok and result.sessions_checked == 3 and result.events_checked == 9
    missing = await verify_store(store, expected_heads={"gone": (2, "0" * 64)})
    assert not missing.ok
    assert [f.session_id for f in missing.failures] == ["gone"]


async def test_every_store_keeps_the_store_chain_and_hands_over_stored_rows(store):
    from agent_trace.events import store_link
    from agent_trace.integrity import check_rows

    for i in range(3):  # interleaved sessions: the global order is what the chain covers
        await store.append([make_event("a", payload={"i": i}), make_event("b", payload={"i": i})])
    rows = await store.stored_rows()
    assert [r[6] for r in rows] == list(range(1, 7))
    link = GENESIS_HASH
    for row in rows:
        link = store_link(link, row[6], row[11])
        assert row[12] == link
        assert isinstance(row[4], str)  # the payload text as stored
    assert [r[6] for r in await store.stored_rows(after_position=2, limit=2)] == [3, 4]
    a_rows = await store.stored_rows("a")
    assert [r[5] for r in a_rows] == [1, 2, 3]
    assert check_rows("a", a_rows).ok
    report = await verify_store(store)
    assert report.ok and report.store_head == (6, link) and report.events_checked == 6
    again = await verify_store(store, expected_store_head=report.store_head)
    assert again.ok
    cut = await verify_store(store, expected_store_head=(7, link))
    assert not cut.ok and "truncated" in (cut.failures[0].reason or "")


# --- verify_store, incremental (remembered in projection "agent_trace.verified") ---


async def _two_sessions(store, n: int, first: int = 0) -> None:
    await store.append([make_event(f"s{i % 2}", "note", {"n": first + i}) for i in range(n)])


def _count_rows(store) -> list[int]:
    """How many rows verify_store reads through the store (instrumenting the instance)."""
    read = [0]
    stored_rows = store.stored_rows

    async def counting(*args, **kwargs):
        rows = await stored_rows(*args, **kwargs)
        read[0] += len(rows)
        return rows

    store.stored_rows = counting
    return read


async def test_a_second_verify_store_reads_only_what_is_new(store):
    await _two_sessions(store, 6)
    first = await verify_store(store)
    assert first.ok and first.resumed_after is None and first.events_checked == 6
    await _two_sessions(store, 3, first=6)
    read = _count_rows(store)
    second = await verify_store(store, incremental=True)
    assert second.ok and second.resumed_after == first.store_head[0]
    assert second.events_checked == 9 and second.store_head[0] > first.store_head[0]
    assert read[0] == 1 + 3  # the remembered head's row, then the new events
    read[0] = 0
    again = await verify_store(store, incremental=True)
    assert again.ok and again.store_head == second.store_head and read[0] == 1
    read[0] = 0
    full = await verify_store(store)
    assert full.ok and full.resumed_after is None and read[0] == 9
    assert full.store_head == second.store_head


async def test_an_incremental_run_continues_each_session_chain(store):
    await _two_sessions(store, 4)
    assert (await verify_store(store)).ok
    await _two_sessions(store, 2, first=4)
    # A verified head the new events do not follow (as if the stored history
    # before it had been rewritten and re-hashed after that run).
    state, checkpoint = await store.load_projection("agent_trace.verified")
    import orjson

    memory = orjson.loads(state)
    memory["heads"]["s0"][1] = "0" * 63 + "1"
    await store.save_projection("agent_trace.verified", orjson.dumps(memory).decode(),
                                checkpoint, checkpoint)  # fmt: skip
    result = await verify_store(store, incremental=True)
    assert not result.ok and [f.session_id for f in result.failures] == ["s0"]
    assert result.failures[0].first_bad_version == 3
    # A full run reads the store itself: intact, and it rewrites the memory.
    assert (await verify_store(store)).ok
    assert (await verify_store(store, incremental=True)).ok


async def test_a_changed_or_vanished_head_fails_an_incremental_run(store):
    import orjson

    await _two_sessions(store, 4)
    verified = await verify_store(store)
    state, checkpoint = await store.load_projection("agent_trace.verified")
    memory = orjson.loads(state)
    for change, words in (
        ({"link": "f" * 64}, "changed since it was verified"),
        ({"position": verified.store_head[0] + 50}, "is gone"),
    ):
        forged = orjson.dumps({**memory, **change}).decode()
        await store.save_projection("agent_trace.verified", forged, checkpoint, checkpoint)
        result = await verify_store(store, incremental=True)
        assert not result.ok and result.failures[0].session_id == "*"
        assert words in (result.failures[0].reason or "")
        # A failed run leaves the memory as it was: the next run fails the same way.
        assert (await store.load_projection("agent_trace.verified"))[0] == forged
        assert (await verify_store(store)).ok
        state, checkpoint = await store.load_projection("agent_trace.verified")
        assert orjson.loads(state) == memory
