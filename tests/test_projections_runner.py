"""ProjectionRunner: exactly-once catch-up, checkpoints in the store, crashes, conflicts.

Runs on the Memory, SQLite and JSONL stores, built directly. The views here
make "applied twice" observable: ``PerPosition`` counts how often each
position was folded in, so every count must be exactly 1.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent_trace.events import AgentEvent, format_timestamp, uuid7
from agent_trace.projections import (
    Projection,
    ProjectionConflict,
    ProjectionError,
    ProjectionRunner,
    SessionSummaries,
    fold,
    rebuild,
)
from agent_trace.stores import JSONLStore, MemoryStore, SQLiteStore, open_store

REPO = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent


class PerPosition(Projection):
    """How many times each position was applied, plus a per-session count."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay

    def initial(self):
        return {"applied": {}, "sessions": {}}

    def apply(self, state, event):
        if self.delay:
            time.sleep(self.delay)  # slow enough for a SIGKILL to land mid-run
        key = str(event.position)
        state["applied"][key] = state["applied"].get(key, 0) + 1
        state["sessions"][event.session_id] = state["sessions"].get(event.session_id, 0) + 1
        return state


class FailsOn(PerPosition):
    """PerPosition that raises on every event of one type."""

    def __init__(self, event_type: str) -> None:
        super().__init__()
        self.event_type = event_type

    def apply(self, state, event):
        if event.event_type == self.event_type:
            raise KeyError("no handler for this payload")
        return super().apply(state, event)


def make_events(n: int, sessions: int = 3, event_type: str = "tool_executed") -> list[AgentEvent]:
    return [
        AgentEvent(
            event_id=uuid7(),
            session_id=f"s{i % sessions}",
            event_type=event_type,
            timestamp=format_timestamp(time.time_ns()),
            payload={"tool": "t", "i": i},
        )
        for i in range(n)
    ]


def _make(kind: str, tmp: Path):
    if kind == "memory":
        return MemoryStore()
    if kind == "sqlite":
        return SQLiteStore(tmp / "events.db")
    return JSONLStore(tmp / "jsonl")


def _url(kind: str, tmp: Path) -> str:
    return f"sqlite:///{tmp / 'events.db'}" if kind == "sqlite" else f"jsonl:///{tmp / 'jsonl'}"


@pytest.fixture(params=["memory", "sqlite", "jsonl"])
async def store(request, tmp_path):
    s = _make(request.param, tmp_path)
    yield s
    await s.close()


def assert_exactly_once(state: dict, positions: list[int]) -> None:
    assert state["applied"] == {str(p): 1 for p in positions}


# --- catching up ---------------------------------------------------------------


async def test_run_once_applies_everything_once_and_saves_the_checkpoint(store) -> None:
    await store.append(make_events(25))
    runner = ProjectionRunner(store, PerPosition(), name="per-position", batch_size=10)
    assert await runner.checkpoint() == 0
    assert await runner.state() == {"applied": {}, "sessions": {}}

    assert await runner.run_once() == 25
    positions = [e.position for e in await store.read_all()]
    assert await runner.checkpoint() == positions[-1]
    assert_exactly_once(await runner.state(), positions)
    assert await runner.run_once() == 0

    await store.append(make_events(4))
    assert await runner.run_once() == 4
    positions = [e.position for e in await store.read_all()]
    state = await runner.state()
    assert_exactly_once(state, positions)
    assert state == await rebuild(PerPosition(), store)  # incremental == from scratch


async def test_a_new_runner_resumes_from_the_saved_checkpoint(store) -> None:
    await store.append(make_events(12))
    first = ProjectionRunner(store, PerPosition(), name="resumable", batch_size=5)
    assert await first.run_once() == 12
    await store.append(make_events(3))
    second = ProjectionRunner(store, PerPosition(), name="resumable")
    assert await second.run_once() == 3
    assert_exactly_once(await second.state(), [e.position for e in await store.read_all()])


async def test_runners_with_different_names_coexist(store) -> None:
    await store.append(make_events(9))
    a = ProjectionRunner(store, PerPosition(), name="a", batch_size=2)
    b = ProjectionRunner(store, SessionSummaries(), name="b")
    assert await asyncio.gather(a.run_once(), b.run_once()) == [9, 9]
    assert sorted((await b.state()).keys()) == ["s0", "s1", "s2"]
    assert (await a.state())["sessions"] == {"s0": 3, "s1": 3, "s2": 3}
    assert await a.checkpoint() == await b.checkpoint()


async def test_two_runners_with_one_name_cannot_both_advance(store) -> None:
    await store.append(make_events(6))
    first = ProjectionRunner(store, PerPosition(), name="shared")
    second = ProjectionRunner(store, PerPosition(), name="shared")
    # Both start from checkpoint 0; the first to save wins.
    assert await first.checkpoint() == await second.checkpoint() == 0
    second._cached = await second._load()  # the second holds state from checkpoint 0
    assert await first.run_once() == 6
    with pytest.raises(ProjectionConflict, match="'shared' was advanced by another runner"):
        await second.run_once()
    assert_exactly_once(await first.state(), [e.position for e in await store.read_all()])
    # The loser dropped its stale state: run again, it reloads and has nothing to do.
    assert await second.run_once() == 0


async def test_concurrent_runners_with_one_name_never_apply_an_event_twice(store) -> None:
    await store.append(make_events(60))
    runners = [ProjectionRunner(store, PerPosition(), "race", batch_size=7) for _ in range(4)]
    outcomes = await asyncio.gather(*(r.run_once() for r in runners), return_exceptions=True)
    for outcome in outcomes:
        assert isinstance(outcome, (int, ProjectionConflict)), outcome
    for r in runners:  # losers reload from the store: no conflict, nothing twice
        await r.run_once()
    assert_exactly_once(await runners[0].state(), [e.position for e in await store.read_all()])


# --- a failing view ----------------------------------------------------------------


async def test_a_failing_view_stops_at_the_event_and_keeps_its_checkpoint(store) -> None:
    await store.append(make_events(10))
    [bad] = make_events(1, event_type="poison")
    await store.append([bad])
    await store.append(make_events(5))
    [stored_bad] = [e for e in await store.read_all() if e.event_type == "poison"]

    runner = ProjectionRunner(store, FailsOn("poison"), name="fragile", batch_size=4)
    with pytest.raises(ProjectionError) as info:
        await runner.run_once()
    message = str(info.value)
    assert f"position {stored_bad.position}" in message
    assert repr(stored_bad.session_id) in message and "'poison'" in message
    assert "KeyError" in message
    assert isinstance(info.value.__cause__, KeyError)
    assert info.value.event == stored_bad
    checkpoint = await runner.checkpoint()
    assert 0 < checkpoint < stored_bad.position  # saved pages before it, never past it
    assert all(int(p) <= checkpoint for p in (await runner.state())["applied"])
    with pytest.raises(ProjectionError):
        await runner.run_once()  # still stuck on the same event
    assert await runner.checkpoint() == checkpoint

    fixed = ProjectionRunner(store, PerPosition(), name="fragile", batch_size=4)
    await fixed.run_once()
    assert await fixed.state() == await rebuild(PerPosition(), store)


# --- following --------------------------------------------------------------------


async def test_run_forever_follows_new_events_until_stopped(store) -> None:
    runner = ProjectionRunner(store, PerPosition(), name="follower")
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run_forever(poll_interval=0.02, stop=stop))
    await store.append(make_events(3))
    for _ in range(200):
        if await runner.checkpoint() >= 3:
            break
        await asyncio.sleep(0.01)
    await store.append(make_events(2))
    for _ in range(200):
        if len((await runner.state())["applied"]) == 5:
            break
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(task, 2)
    assert_exactly_once(await runner.state(), [e.position for e in await store.read_all()])


async def test_run_forever_ends_on_a_failing_view(store) -> None:
    await store.append(make_events(2, event_type="poison"))
    runner = ProjectionRunner(store, FailsOn("poison"), name="dies")
    with pytest.raises(ProjectionError):
        await asyncio.wait_for(runner.run_forever(poll_interval=0.01), 2)


async def test_run_forever_is_cancellable(store) -> None:
    runner = ProjectionRunner(store, PerPosition(), name="cancel-me")
    task = asyncio.create_task(runner.run_forever(poll_interval=10))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_arguments_are_checked() -> None:
    class NotAProjectionStore:
        async def read_all(self, after_position=0, limit=None):
            return []

    with pytest.raises(TypeError, match="load_projection"):
        ProjectionRunner(NotAProjectionStore(), PerPosition(), name="x")
    with pytest.raises(ValueError, match="invalid projection name"):
        ProjectionRunner(MemoryStore(), PerPosition(), name="../x")
    with pytest.raises(ValueError, match="batch_size"):
        ProjectionRunner(MemoryStore(), PerPosition(), name="x", batch_size=0)


async def test_a_state_that_is_not_json_is_refused_before_anything_is_saved() -> None:
    class Bad(Projection):
        def apply(self, state, event):
            return {1: object()}

    store = MemoryStore()
    await store.append(make_events(1))
    runner = ProjectionRunner(store, Bad(), name="bad")
    with pytest.raises(TypeError):
        await runner.run_once()
    assert await runner.checkpoint() == 0


# --- crash: SIGKILL a real process mid-run, then resume ------------------------------

_RUNNER_CHILD = """
import asyncio, sys
sys.path.insert(0, sys.argv[2])
from agent_trace.projections import ProjectionRunner
from agent_trace.stores import open_store
from test_projections_runner import PerPosition

async def main():
    store = open_store(sys.argv[1])
    runner = ProjectionRunner(store, PerPosition(delay=0.0005), name="crashy", batch_size=7)
    print("running", flush=True)
    await runner.run_once()
    print("finished", flush=True)

asyncio.run(main())
"""


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "AGENT_TRACE_STORE"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def _record_research_sessions(url: str, sessions: int = 20) -> None:
    subprocess.run(
        [
            sys.executable,
            str(REPO / "examples" / "research_agent.py"),
            "--store",
            url,
            "--sessions",
            str(sessions),
            "--quiet",
        ],
        env=_env(),
        check=True,
        capture_output=True,
        timeout=120,
    )


@pytest.mark.parametrize("kind", ["sqlite", "jsonl"])
def test_sigkill_mid_run_then_resume_applies_each_event_exactly_once(kind, tmp_path) -> None:
    url = _url(kind, tmp_path)
    _record_research_sessions(url)

    async def checkpoint() -> int:
        store = open_store(url)
        try:
            return (await store.load_projection("crashy"))[1]
        finally:
            await store.close()

    async def all_positions() -> list[int]:
        store = open_store(url)
        try:
            return [e.position for e in await store.read_all()]
        finally:
            await store.close()

    positions = asyncio.run(all_positions())
    assert len(positions) > 500
    child = subprocess.Popen(
        [sys.executable, "-c", _RUNNER_CHILD, url, str(TESTS)],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while asyncio.run(checkpoint()) < positions[len(positions) // 4]:
            assert child.poll() is None, child.communicate()
            assert time.monotonic() < deadline, "the child runner made no progress"
            time.sleep(0.005)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == -signal.SIGKILL
    killed_at = asyncio.run(checkpoint())
    assert 0 < killed_at < positions[-1], "killed mid-run"

    async def resume():
        store = open_store(url)
        try:
            runner = ProjectionRunner(store, PerPosition(), name="crashy", batch_size=50)
            applied = await runner.run_once()
            return (
                applied,
                await runner.state(),
                await runner.checkpoint(),
                await rebuild(PerPosition(), store),
            )
        finally:
            await store.close()

    applied, state, final_checkpoint, scratch = asyncio.run(resume())
    assert applied == sum(1 for p in positions if p > killed_at)  # only what was unsaved
    assert final_checkpoint == positions[-1]
    assert_exactly_once(state, positions)
    assert state == scratch


_CONCURRENT_CHILD = """
import asyncio, sys
sys.path.insert(0, sys.argv[2])
from agent_trace.projections import ProjectionConflict, ProjectionRunner
from agent_trace.stores import open_store
from test_projections_runner import PerPosition

async def main():
    store = open_store(sys.argv[1])
    runner = ProjectionRunner(store, PerPosition(delay=0.0002), name="contended", batch_size=25)
    try:
        await runner.run_once()
        print("done", flush=True)
    except ProjectionConflict as exc:
        print("conflict", exc, flush=True)
    await store.close()

asyncio.run(main())
"""


@pytest.mark.parametrize("kind", ["sqlite", "jsonl"])
def test_two_runner_processes_with_one_name(kind, tmp_path) -> None:
    url = _url(kind, tmp_path)
    _record_research_sessions(url, sessions=10)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CONCURRENT_CHILD, url, str(TESTS)],
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        outputs.append(out)
    assert any(o.startswith("done") for o in outputs)
    for o in outputs:
        assert o.startswith("done") or "was advanced by another runner" in o

    async def check():
        store = open_store(url)
        try:
            runner = ProjectionRunner(store, PerPosition(), name="contended")
            await runner.run_once()  # finish whatever the loser left
            positions = [e.position for e in await store.read_all()]
            assert_exactly_once(await runner.state(), positions)
            assert await runner.state() == fold(PerPosition(), await store.read_all())
        finally:
            await store.close()

    asyncio.run(check())


# --- no gaps: a follower never skips an event that commits late --------------------


@pytest.mark.parametrize("kind", ["memory", "sqlite", "jsonl"])
async def test_a_follower_sees_every_event_while_several_writers_append(kind, tmp_path) -> None:
    reader = _make(kind, tmp_path)
    # Separate store objects on the same storage (separate connections/file
    # descriptors) for the persistent kinds: writers race for positions.
    writers = [reader] * 3 if kind == "memory" else [_make(kind, tmp_path) for _ in range(3)]
    runner = ProjectionRunner(reader, PerPosition(), name="follower", batch_size=13)
    stop = asyncio.Event()
    follow = asyncio.create_task(runner.run_forever(poll_interval=0.001, stop=stop))

    def write(store) -> None:
        async def go():
            for _ in range(40):
                await store.append(make_events(3, sessions=5))

        asyncio.run(go())

    try:
        await asyncio.gather(*(asyncio.to_thread(write, w) for w in writers))
        positions = [e.position for e in await reader.read_all()]
        assert len(positions) == 360
        for _ in range(500):
            if await runner.checkpoint() == positions[-1]:
                break
            await asyncio.sleep(0.01)
    finally:
        stop.set()
        await asyncio.wait_for(follow, 5)
        for w in {id(w): w for w in [reader, *writers]}.values():
            await w.close()
    store = _make(kind, tmp_path) if kind != "memory" else reader
    try:
        state = await ProjectionRunner(store, PerPosition(), name="follower").state()
    finally:
        await store.close()
    assert_exactly_once(state, positions)


class GappyStore:
    """A MemoryStore whose positions go 10, 20, 30... (as a database sequence may leave gaps),
    with the optional ``wait_for_events`` hook counting its calls."""

    def __init__(self) -> None:
        self.inner = MemoryStore()
        self.waits = 0

    async def append(self, events):
        return await self.inner.append(events)

    async def read_all(self, after_position=0, limit=None):
        import dataclasses

        page = await self.inner.read_all(after_position // 10, limit)
        return [dataclasses.replace(e, position=e.position * 10) for e in page]

    async def load_projection(self, name):
        return await self.inner.load_projection(name)

    async def save_projection(self, name, state_json, checkpoint, expected_checkpoint):
        await self.inner.save_projection(name, state_json, checkpoint, expected_checkpoint)

    async def wait_for_events(self, after_position, timeout):
        self.waits += 1
        await asyncio.sleep(min(timeout, 0.005))


async def test_positions_with_gaps_and_the_wait_for_events_hook() -> None:
    store = GappyStore()
    await store.append(make_events(7))
    runner = ProjectionRunner(store, PerPosition(), name="gappy", batch_size=3)
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run_forever(poll_interval=5, stop=stop))
    for _ in range(200):
        if store.waits >= 2:
            break
        await asyncio.sleep(0.005)
    await store.append(make_events(2))
    for _ in range(200):
        if await runner.checkpoint() == 90:
            break
        await asyncio.sleep(0.005)
    stop.set()
    await asyncio.wait_for(task, 2)
    assert store.waits >= 2  # waited on the store, not slept for poll_interval
    assert_exactly_once(await runner.state(), [10 * p for p in range(1, 10)])
