"""The store conformance suite: what every EventStore must do (SPEC 2, 5, 8).

Written once against the protocol; ``conftest.STORE_KINDS`` says which
backends it runs on. Positions are only required to increase (a database
sequence may leave gaps), versions to be contiguous from 1.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from store_helpers import assert_chain, assert_positions_increase, make_event

from agent_trace.events import GENESIS_HASH, AgentEvent, compute_hash
from agent_trace.stores import EventStore, SessionInfo, open_store

PAYLOAD = {
    "text": 'héllo wörld ✓ 🚀 \u2028 "quoted" \\ back\nslash\ttab \x00 nul',
    "nested": {
        "list": [1, 2.5, None, True, False, {"deep": ["x", {"deeper": {}}]}],
        "empty": {},
        "empty_list": [],
    },
    "tuple": (1, "two", (3, (4,))),
    "max_int": 2**63 - 1,
    "min_int": -(2**63),
    "float": 0.1,
    "big_float": 1e300,
    "tiny_float": 5e-324,
    "negative_zero": -0.0,
    "none": None,
    "ключ ü": "unicode key",
    "": "empty key",
}
# What a payload becomes through JSON: tuples are lists, the rest is unchanged.
EXPECTED_PAYLOAD = orjson.loads(orjson.dumps(PAYLOAD))


async def test_is_an_event_store(store: EventStore) -> None:
    assert isinstance(store, EventStore)


async def test_append_round_trips_every_field(store: EventStore) -> None:
    ev = make_event(
        "sess-1",
        "tool_executed",
        PAYLOAD,
        span_id="a1b2c3d4e5f60718",
        parent_span_id="0f1e2d3c4b5a6978",
        schema_version=3,
    )
    assert await store.append([ev]) == 1

    [got] = await store.get_events("sess-1")
    assert got.event_id == ev.event_id
    assert got.session_id == "sess-1"
    assert got.event_type == "tool_executed"
    assert got.timestamp == ev.timestamp
    assert got.payload == EXPECTED_PAYLOAD
    assert got.payload["tuple"] == [1, "two", [3, [4]]]
    assert isinstance(got.payload["max_int"], int) and got.payload["max_int"] == 2**63 - 1
    assert isinstance(got.payload["float"], float) and got.payload["float"] == 0.1
    assert got.payload["tiny_float"] == 5e-324
    assert got.version == 1
    assert got.position >= 1
    assert got.span_id == "a1b2c3d4e5f60718"
    assert got.parent_span_id == "0f1e2d3c4b5a6978"
    assert got.schema_version == 3
    assert got.prev_hash == GENESIS_HASH
    assert got.hash == compute_hash(got)
    assert len(got.hash) == 64

    # Every read path returns the same, field for field.
    assert await store.read_all() == [got]


async def test_optional_fields_round_trip_as_none(store: EventStore) -> None:
    await store.append([make_event("s", "x", {})])
    [got] = await store.get_events("s")
    assert got.span_id is None and got.parent_span_id is None
    assert got.payload == {}
    assert got.schema_version == 1


async def test_returned_events_share_no_state_with_the_store(store: EventStore) -> None:
    payload = {"items": [1, 2], "inner": {"k": "v"}}
    await store.append([make_event("s", "x", payload)])
    payload["items"].append(3)  # the caller's object changes after append
    [first] = await store.get_events("s")
    first.payload["inner"]["k"] = "changed"  # and a reader changes what it got
    [again] = await store.read_all()
    assert again.payload == {"items": [1, 2], "inner": {"k": "v"}}


async def test_append_counts_and_empty_batch(store: EventStore) -> None:
    assert await store.append([]) == 0
    assert await store.append([make_event("s") for _ in range(5)]) == 5
    assert await store.append([make_event("s"), make_event("t")]) == 2
    assert len(await store.read_all()) == 7


async def test_versions_hashes_and_positions_across_sessions_and_batches(
    store: EventStore,
) -> None:
    appended: list[AgentEvent] = []
    for batch_no in range(3):
        batch = [
            make_event(sid, payload={"batch": batch_no, "i": i})
            for i in range(4)
            for sid in ("a", "b", "c")
        ]
        appended += batch
        assert await store.append(batch) == len(batch)

    everything = await store.read_all()
    assert [ev.event_id for ev in everything] == [ev.event_id for ev in appended]
    assert_positions_increase(everything)
    for sid in ("a", "b", "c"):
        events = await store.get_events(sid)
        assert len(events) == 12
        assert_chain(events)
        assert [ev.payload for ev in events] == [
            {"batch": b, "i": i} for b in range(3) for i in range(4)
        ]
        # get_events and read_all agree on every field.
        assert events == [ev for ev in everything if ev.session_id == sid]


async def test_replayed_batch_writes_nothing(store: EventStore) -> None:
    batch = [make_event(sid) for sid in ("a", "b", "a", "a")]
    assert await store.append(batch) == 4
    before = await store.read_all()
    assert await store.append(batch) == 0
    assert await store.append(list(reversed(batch))) == 0
    assert await store.read_all() == before


async def test_partially_replayed_batch_writes_only_new_events(store: EventStore) -> None:
    first = [make_event("s", payload={"i": i}) for i in range(4)]
    await store.append(first)
    later = [make_event("s", payload={"i": i}) for i in range(4, 7)]
    # The recorder retried a batch whose first half was already written.
    assert await store.append(first[2:] + later) == 3
    events = await store.get_events("s")
    assert [ev.payload["i"] for ev in events] == list(range(7))
    assert_chain(events)
    assert len(await store.read_all()) == 7


async def test_duplicates_within_one_batch_keep_the_first(store: EventStore) -> None:
    a = make_event("s", payload={"copy": "first"})
    a_again = make_event("s", payload={"copy": "second"}, event_id=a.event_id)
    b = make_event("s", payload={"copy": "b"})
    assert await store.append([a, b, a_again, b]) == 2
    events = await store.get_events("s")
    assert [ev.payload["copy"] for ev in events] == ["first", "b"]
    assert_chain(events)


async def test_a_batch_that_cannot_be_serialized_writes_nothing(store: EventStore) -> None:
    await store.append([make_event("s")])
    bad = [make_event("s"), make_event("t"), make_event("s", payload={"x": object()})]
    with pytest.raises(TypeError):
        await store.append(bad)
    assert len(await store.read_all()) == 1
    # The good events of that batch can still be written, and no version was used up.
    assert await store.append(bad[:2]) == 2
    assert_chain(await store.get_events("s"))
    assert_chain(await store.get_events("t"))


async def test_get_events_filters(store: EventStore) -> None:
    types = ["session_started", "tool_started", "tool_executed", "llm_responded", "tool_started"]
    await store.append([make_event("s", t, {"i": i}) for i, t in enumerate(types)])
    await store.append([make_event("other", "tool_started")])

    assert [ev.version for ev in await store.get_events("s", after_version=2)] == [3, 4, 5]
    assert await store.get_events("s", after_version=5) == []
    assert await store.get_events("s", after_version=50) == []
    assert len(await store.get_events("s", after_version=0)) == 5
    assert len(await store.get_events("s", after_version=-3)) == 5

    started = await store.get_events("s", event_types=["tool_started"])
    assert [(ev.version, ev.payload["i"]) for ev in started] == [(2, 1), (5, 4)]
    two = await store.get_events("s", event_types={"llm_responded", "session_started"})
    assert [ev.version for ev in two] == [1, 4]
    both = await store.get_events("s", after_version=2, event_types=("tool_started",))
    assert [ev.version for ev in both] == [5]
    assert await store.get_events("s", event_types=[]) == []
    assert await store.get_events("s", event_types=["never_emitted"]) == []


async def test_unknown_session_and_empty_store(store: EventStore) -> None:
    assert await store.get_events("no-such-session") == []
    assert await store.read_all() == []
    assert await store.list_sessions() == []
    await store.append([make_event("s")])
    assert await store.get_events("no-such-session") == []
    assert await store.get_events("no-such-session", after_version=3, event_types=["x"]) == []


async def test_read_all_pages_until_exhausted(store: EventStore) -> None:
    for n in range(5):
        await store.append([make_event(f"s{i % 3}", payload={"n": n, "i": i}) for i in range(5)])
    full = await store.read_all()
    assert len(full) == 25

    pages, after = [], 0
    while page := await store.read_all(after_position=after, limit=4):
        assert len(page) <= 4
        pages.append(page)
        after = page[-1].position
    assert [ev for page in pages for ev in page] == full
    assert [len(p) for p in pages] == [4, 4, 4, 4, 4, 4, 1]

    assert await store.read_all(limit=0) == []
    assert await store.read_all(after_position=-5, limit=2) == full[:2]
    assert await store.read_all(after_position=full[-1].position) == []
    assert await store.read_all(after_position=full[9].position) == full[10:]
    assert await store.read_all(after_position=full[9].position, limit=3) == full[10:13]
    with pytest.raises(ValueError):
        await store.read_all(limit=-1)


async def test_list_sessions(store: EventStore) -> None:
    def ts(second: int, micro: int = 0) -> str:
        return f"2030-01-01T00:00:{second:02d}.{micro:06d}+00:00"

    await store.append(
        [
            make_event(
                "alpha",
                "session_started",
                {"metadata": {"user": "u1", "tags": ["x"]}},
                timestamp=ts(1),
            ),
            make_event("alpha", "tool_executed", timestamp=ts(5)),
            make_event("beta", "user_message_received", {"message": "hi"}, timestamp=ts(2)),
        ]
    )
    await store.append(
        [
            # Clocks differ between writers: started_at is the earliest timestamp.
            make_event("gamma", "tool_executed", timestamp=ts(4)),
            make_event("gamma", "session_started", {"metadata": {"first": True}}, timestamp=ts(3)),
            make_event("gamma", "session_started", {"metadata": {"first": False}}, timestamp=ts(9)),
            make_event("alpha", "session_ended", {"status": "ok"}, timestamp=ts(7, 5)),
        ]
    )
    sessions = await store.list_sessions()
    assert all(isinstance(s, SessionInfo) for s in sessions)
    assert [s.session_id for s in sessions] == ["gamma", "beta", "alpha"]
    by_id = {s.session_id: s for s in sessions}
    assert by_id["alpha"] == SessionInfo(
        session_id="alpha",
        started_at=ts(1),
        last_activity=ts(7, 5),
        event_count=3,
        last_version=3,
        metadata={"user": "u1", "tags": ["x"]},
    )
    assert by_id["beta"].metadata == {}
    assert (by_id["beta"].event_count, by_id["beta"].last_version) == (1, 1)
    assert by_id["gamma"].started_at == ts(3)
    assert by_id["gamma"].last_activity == ts(9)
    assert by_id["gamma"].metadata == {"first": True}

    assert [s.session_id for s in await store.list_sessions(limit=2)] == ["gamma", "beta"]
    assert await store.list_sessions(limit=0) == []
    # Metadata handed out is a copy.
    by_id["alpha"].metadata["user"] = "changed"
    assert (await store.list_sessions())[2].metadata["user"] == "u1"


async def test_list_sessions_ties_put_the_later_session_first(store: EventStore) -> None:
    same = "2030-01-01T00:00:00.000000+00:00"
    await store.append([make_event("one", timestamp=same)])
    await store.append([make_event("two", timestamp=same)])
    assert [s.session_id for s in await store.list_sessions()] == ["two", "one"]


async def test_close_is_idempotent(store: EventStore) -> None:
    await store.append([make_event("s")])
    await store.close()
    await store.close()


async def test_reopened_store_continues_history(persistent_kind, tmp_path: Path) -> None:
    first = persistent_kind.make(tmp_path)
    await first.append([make_event("s", payload={"i": i}) for i in range(3)])
    await first.append([make_event("t")])
    before = await first.read_all()
    await first.close()

    second = persistent_kind.make(tmp_path)
    try:
        assert await second.read_all() == before
        assert await second.get_events("s") == [ev for ev in before if ev.session_id == "s"]
        # Ids written by the first object are still known to the second.
        assert await second.append([make_event("s", event_id=before[0].event_id)]) == 0
        assert await second.append([make_event("s", payload={"i": 3})]) == 1
        events = await second.get_events("s")
        assert [ev.payload["i"] for ev in events] == [0, 1, 2, 3]
        assert_chain(events)
        assert_positions_increase(await second.read_all())
        assert [s.session_id for s in await second.list_sessions()] == ["t", "s"]
    finally:
        await second.close()


async def test_two_open_objects_on_one_storage_interleave(persistent_kind, tmp_path: Path) -> None:
    a, b = persistent_kind.make(tmp_path), persistent_kind.make(tmp_path)
    try:
        for i in range(5):
            await a.append([make_event("s", payload={"by": "a", "i": i})])
            await b.append([make_event("s", payload={"by": "b", "i": i})])
        for store in (a, b):
            events = await store.get_events("s")
            assert len(events) == 10
            assert_chain(events)
            assert [ev.payload["by"] for ev in events] == ["a", "b"] * 5
        assert await a.read_all() == await b.read_all()
    finally:
        await a.close()
        await b.close()


async def test_concurrent_tasks_append_to_one_session(store: EventStore) -> None:
    async def writer(w: int) -> None:
        for i in range(20):
            batch = [make_event("shared", payload={"w": w, "i": i, "j": j}) for j in range(3)]
            batch.append(make_event(f"own-{w}", payload={"i": i}))
            assert await store.append(batch) == 4
            await asyncio.sleep(0)

    await asyncio.gather(*(writer(w) for w in range(8)))

    shared = await store.get_events("shared")
    assert len(shared) == 8 * 20 * 3
    assert_chain(shared)
    for w in range(8):
        mine = [(ev.payload["i"], ev.payload["j"]) for ev in shared if ev.payload["w"] == w]
        assert mine == sorted(mine), "one writer's events were reordered"
        assert_chain(await store.get_events(f"own-{w}"))
    everything = await store.read_all()
    assert len(everything) == 8 * 20 * 4
    assert_positions_increase(everything)
    assert len({ev.event_id for ev in everything}) == len(everything)


async def test_threads_with_their_own_event_loops(store: EventStore) -> None:
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def thread_main(t: int) -> None:
        async def run() -> None:
            for i in range(15):
                await store.append(
                    [make_event("shared", payload={"t": t, "i": i}), make_event(f"thread-{t}")]
                )
                await store.get_events("shared", after_version=i)

        try:
            start.wait()  # all threads reach the (possibly unopened) store at once
            asyncio.run(run())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=thread_main, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=60)
    assert not errors, errors

    # And the test's own loop still reads what the other loops wrote.
    shared = await store.get_events("shared")
    assert len(shared) == 60
    assert_chain(shared)
    for t in range(4):
        assert [ev.payload["i"] for ev in shared if ev.payload["t"] == t] == list(range(15))
        assert_chain(await store.get_events(f"thread-{t}"))
    assert len(await store.read_all()) == 120


_CHILD = """
import asyncio, os, sys, time
from agent_trace.events import AgentEvent, format_timestamp, uuid7
from agent_trace.stores import open_store

url, proc, go, sessions, per_session, batch = sys.argv[1:7]
proc, sessions, per_session, batch = int(proc), int(sessions), int(per_session), int(batch)

async def main():
    store = open_store(url)
    while not os.path.exists(go):
        time.sleep(0.002)
    for start in range(0, per_session, batch):
        events = [
            AgentEvent(
                event_id=uuid7(), session_id=f"s{s}", event_type="tool_executed",
                timestamp=format_timestamp(time.time_ns()), payload={"proc": proc, "n": n},
            )
            for n in range(start, start + batch) for s in range(sessions)
        ]
        assert await store.append(events) == len(events)
        if start == 0:  # a retried batch must write nothing, even under contention
            assert await store.append(events) == 0
    await store.close()

asyncio.run(main())
"""


@pytest.mark.slow
async def test_processes_append_concurrently(
    persistent_kind, tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    procs, sessions, per_session, batch = 4, 5, 200, 10
    url = persistent_kind.url(tmp_path)
    go = tmp_path / "go"
    children = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                _CHILD,
                url,
                str(p),
                str(go),
                str(sessions),
                str(per_session),
                str(batch),
            ],
            env=subprocess_env,
            stderr=subprocess.PIPE,
        )
        for p in range(procs)
    ]
    time.sleep(0.5)  # let them import and open, so they start appending together
    go.touch()
    for child in children:
        _, err = child.communicate(timeout=180)
        assert child.returncode == 0, err.decode()

    store = persistent_kind.make(tmp_path)
    try:
        everything = await store.read_all()
        assert len(everything) == procs * sessions * per_session
        assert len({ev.event_id for ev in everything}) == len(everything)
        assert_positions_increase(everything)
        for s in range(sessions):
            events = await store.get_events(f"s{s}")
            assert len(events) == procs * per_session
            assert_chain(events)
            for p in range(procs):
                assert [ev.payload["n"] for ev in events if ev.payload["proc"] == p] == list(
                    range(per_session)
                )
        assert {info.event_count for info in await store.list_sessions()} == {procs * per_session}
    finally:
        await store.close()


# --- a model-based check: random batches, replays and duplicates ---------------

_ops = st.lists(
    st.tuples(
        st.lists(st.sampled_from(["a", "b", "c"]), min_size=0, max_size=6),  # new events
        st.lists(st.integers(min_value=0, max_value=40), max_size=4),  # replays of earlier ones
    ),
    min_size=1,
    max_size=6,
)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(ops=_ops)
def test_random_batches_keep_every_invariant(store_kind, ops) -> None:
    async def check(store: EventStore) -> None:
        written: list[AgentEvent] = []
        for new_sessions, replays in ops:
            new = [
                make_event(sid, payload={"k": len(written) + i})
                for i, sid in enumerate(new_sessions)
            ]
            old = [written[i % len(written)] for i in replays] if written else []
            batch = old[:1] + new + old[1:] + new[:1]  # replays around, a duplicate at the end
            assert await store.append(batch) == len(new)
            written += new
        everything = await store.read_all()
        assert [ev.event_id for ev in everything] == [ev.event_id for ev in written]
        assert_positions_increase(everything)
        for sid in ("a", "b", "c"):
            events = await store.get_events(sid)
            assert [ev.event_id for ev in events] == [
                ev.event_id for ev in written if ev.session_id == sid
            ]
            assert_chain(events)
        await store.close()

    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(check(store_kind.make(Path(tmp))))


def test_open_store_urls_of_each_kind_reach_the_same_data(persistent_kind, tmp_path: Path) -> None:
    async def run() -> None:
        direct = persistent_kind.make(tmp_path)
        await direct.append([make_event("s")])
        await direct.close()
        via_url = open_store(persistent_kind.url(tmp_path))
        assert len(await via_url.get_events("s")) == 1
        await via_url.close()

    asyncio.run(run())


async def test_append_captured_matches_append(store: EventStore) -> None:
    """The recorder's fast path stores exactly what ``append`` would."""
    from agent_trace.capture import capture
    from agent_trace.stores.base import captured_from_events

    append_captured = getattr(store, "append_captured", None)
    if append_captured is None:
        pytest.skip(f"{type(store).__name__} has no append_captured (optional)")
    payload = {"z": [1, {"b": 2, "a": None}], "a": "ü"}
    first, second = make_event("cap-a", payload=payload), make_event("cap-b", payload=payload)
    (item,) = captured_from_events([second])
    assert item[4] == capture(payload)  # the recorder's bytes are the canonical ones
    assert await store.append([first]) == 1
    assert await append_captured([item]) == 1
    assert await append_captured([item]) == 0  # idempotent by event id
    a = (await store.get_events("cap-a"))[0]
    b = (await store.get_events("cap-b"))[0]
    assert b.payload == a.payload == payload
    assert b.hash == compute_hash(b)
    assert b.event_id == second.event_id and b.timestamp == second.timestamp
