"""Projection checkpoints, the optional protocol extension (``base.ProjectionStore``).

Runs on every backend in ``STORE_KINDS`` that implements it: a store that
hosts a ``ProjectionRunner`` must load what it saved, and compare-and-set the
checkpoint so two runners with one name cannot both advance. Then the runner
itself on each backend: exactly once across resumes, a SIGKILL mid-run, and
concurrent writers (no late-committing position skipped).
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from store_helpers import make_event

from agent_trace.projections import KeyedProjection, Projection, ProjectionRunner, rebuild
from agent_trace.stores import EventStore
from agent_trace.stores.base import ProjectionConflict, ProjectionStore


@pytest.fixture
def pstore(store: EventStore) -> ProjectionStore:
    _skip_unless_supported(store)
    return store


async def test_nothing_saved_loads_as_none_and_zero(pstore: ProjectionStore) -> None:
    assert await pstore.load_projection("never-saved") == (None, 0)


async def test_save_then_load_round_trips_state_and_checkpoint(pstore: ProjectionStore) -> None:
    state = {"a": [1, 2.5, None, True], "ü": {"nested": "✓"}}
    await pstore.save_projection("view", orjson.dumps(state).decode(), 7, 0)
    state_json, checkpoint = await pstore.load_projection("view")
    assert orjson.loads(state_json) == state
    assert checkpoint == 7
    await pstore.save_projection("view", orjson.dumps({"b": 1}).decode(), 9, 7)
    state_json, checkpoint = await pstore.load_projection("view")
    assert (orjson.loads(state_json), checkpoint) == ({"b": 1}, 9)


async def test_stale_expected_checkpoint_is_refused_and_changes_nothing(
    pstore: ProjectionStore,
) -> None:
    await pstore.save_projection("view", '{"n":1}', 5, 0)
    with pytest.raises(ProjectionConflict, match=r"'view'.*expected checkpoint 0, found 5"):
        await pstore.save_projection("view", '{"n":2}', 6, 0)
    with pytest.raises(ProjectionConflict):
        await pstore.save_projection("view", '{"n":2}', 6, 4)
    assert await pstore.load_projection("view") == ('{"n":1}', 5)


async def test_names_are_independent(pstore: ProjectionStore) -> None:
    await pstore.save_projection("one", "[1]", 3, 0)
    await pstore.save_projection("two", "[2]", 8, 0)
    assert await pstore.load_projection("one") == ("[1]", 3)
    assert await pstore.load_projection("two") == ("[2]", 8)


@pytest.mark.parametrize("name", ["", "../escape", "a/b", ".hidden", "x" * 129, "sp ace", 3])
async def test_bad_names_are_refused(pstore: ProjectionStore, name: object) -> None:
    with pytest.raises(ValueError, match="invalid projection name"):
        await pstore.save_projection(name, "{}", 1, 0)  # type: ignore[arg-type]


async def test_concurrent_compare_and_set_lets_exactly_one_win(pstore: ProjectionStore) -> None:
    await pstore.save_projection("race", "0", 1, 0)

    async def attempt(i: int) -> bool:
        try:
            await pstore.save_projection("race", str(i), 2, 1)
        except ProjectionConflict:
            return False
        return True

    results = await asyncio.gather(*(attempt(i) for i in range(8)))
    assert results.count(True) == 1
    state_json, checkpoint = await pstore.load_projection("race")
    assert checkpoint == 2 and int(state_json) == results.index(True)


def _skip_unless_supported(store: EventStore) -> None:
    if not isinstance(store, ProjectionStore):
        pytest.skip(f"{type(store).__name__} does not implement projection checkpoints")


async def test_checkpoints_survive_reopening(persistent_kind, tmp_path: Path) -> None:
    first = persistent_kind.make(tmp_path)
    _skip_unless_supported(first)
    await first.save_projection("durable", '{"k":"v"}', 42, 0)
    await first.close()
    second = persistent_kind.make(tmp_path)
    try:
        assert await second.load_projection("durable") == ('{"k":"v"}', 42)
    finally:
        await second.close()


_CAS_CHILD = """
import asyncio, sys
from agent_trace.stores import open_store
from agent_trace.stores.base import ProjectionConflict

async def main():
    store = open_store(sys.argv[1])
    won = 0
    for step in range(50):
        while True:
            state, cp = await store.load_projection("shared")
            try:
                await store.save_projection("shared", str(int(state or 0) + 1), cp + 1, cp)
                won += 1
                break
            except ProjectionConflict:
                continue
    await store.close()
    print(won)

asyncio.run(main())
"""


def test_compare_and_set_holds_across_processes(
    persistent_kind, tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    _skip_unless_supported(persistent_kind.make(tmp_path))
    url = persistent_kind.url(tmp_path)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CAS_CHILD, url],
            env=subprocess_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        assert out.strip() == "50"
    store = persistent_kind.make(tmp_path)
    try:
        # 150 increments, each from a checkpoint nobody else advanced: none lost.
        assert asyncio.run(store.load_projection("shared")) == ("150", 150)
    finally:
        asyncio.run(store.close())


# --- the runner on every backend ------------------------------------------------


class PerPosition(Projection):
    """How many times each position was applied (each must end at exactly 1)."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay

    def initial(self):
        return {}

    def apply(self, state, event):
        if self.delay:
            time.sleep(self.delay)  # slow enough for a SIGKILL to land mid-run
        key = str(event.position)
        state[key] = state.get(key, 0) + 1
        return state


class PositionsPerSession(KeyedProjection):
    """PerPosition kept entry by entry: session id -> {position: times applied}."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay

    def key(self, event):
        return event.session_id

    def apply_entry(self, entry, event):
        if self.delay:
            time.sleep(self.delay)
        entry = entry or {}
        key = str(event.position)
        entry[key] = entry.get(key, 0) + 1
        return entry


VIEWS = {"whole": PerPosition, "keyed": PositionsPerSession}


@pytest.fixture(params=sorted(VIEWS))
def view(request: pytest.FixtureRequest) -> str:
    return request.param


def applied(view: str, state: dict) -> dict:
    """position -> times applied, from either view's state."""
    if view == "whole":
        return state
    return {p: n for entry in state.values() for p, n in entry.items()}


def _events(n: int) -> list:
    return [make_event(f"s{i % 4}", "tool_executed", {"tool": "t", "i": i}) for i in range(n)]


async def test_runner_catches_up_exactly_once_and_resumes(
    pstore: ProjectionStore, view: str
) -> None:
    await pstore.append(_events(23))
    runner = ProjectionRunner(pstore, VIEWS[view](), name="per-position", batch_size=5)
    assert await runner.run_once() == 23
    await pstore.append(_events(4))
    again = ProjectionRunner(pstore, VIEWS[view](), name="per-position", batch_size=5)
    assert await again.run_once() == 4
    positions = [e.position for e in await pstore.read_all()]
    assert applied(view, await again.state()) == {str(p): 1 for p in positions}
    assert await again.checkpoint() == positions[-1]
    assert await again.state() == await rebuild(VIEWS[view](), pstore)


async def test_runner_follows_concurrent_writers_without_skipping(
    store_kind, pstore: ProjectionStore, tmp_path: Path, view: str
) -> None:
    # Writers on their own store objects (own connections) race for positions
    # while the runner follows: a late-committing lower position must not be skipped.
    writers = (
        [pstore] * 3 if not store_kind.persistent else [store_kind.make(tmp_path) for _ in range(3)]
    )
    runner = ProjectionRunner(pstore, VIEWS[view](), name="follower", batch_size=7)
    stop = asyncio.Event()
    follow = asyncio.create_task(runner.run_forever(poll_interval=0.001, stop=stop))

    async def write(w) -> None:
        for _ in range(30):
            await w.append(_events(3))

    try:
        await asyncio.gather(*(write(w) for w in writers))
        positions = [e.position for e in await pstore.read_all()]
        assert len(positions) == 270
        for _ in range(1000):
            if await runner.checkpoint() == positions[-1]:
                break
            await asyncio.sleep(0.01)
    finally:
        stop.set()
        await asyncio.wait_for(follow, 10)
        for w in writers:
            if w is not pstore:
                await w.close()
    assert applied(view, await runner.state()) == {str(p): 1 for p in positions}


_RUNNER_CHILD = """
import asyncio, sys
sys.path.insert(0, sys.argv[2])
from agent_trace.projections import ProjectionRunner
from agent_trace.stores import open_store
from test_store_projections import VIEWS

async def main():
    store = open_store(sys.argv[1])
    view = VIEWS[sys.argv[3]](delay=0.001)
    await ProjectionRunner(store, view, "crashy", batch_size=7).run_once()

asyncio.run(main())
"""


def test_runner_killed_mid_run_resumes_exactly_once(
    persistent_kind, tmp_path: Path, subprocess_env: dict[str, str], view: str
) -> None:
    probe = persistent_kind.make(tmp_path)
    _skip_unless_supported(probe)
    url = persistent_kind.url(tmp_path)

    async def setup() -> list[int]:
        await probe.append(_events(600))
        return [e.position for e in await probe.read_all()]

    async def checkpoint() -> int:
        return (await probe.load_projection("crashy"))[1]

    loop = asyncio.new_event_loop()
    try:
        positions = loop.run_until_complete(setup())
        child = subprocess.Popen(
            [sys.executable, "-c", _RUNNER_CHILD, url, str(Path(__file__).parent), view],
            env=subprocess_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            deadline = time.monotonic() + 60
            while loop.run_until_complete(checkpoint()) < positions[100]:
                assert child.poll() is None, child.communicate()
                assert time.monotonic() < deadline, "the child runner made no progress"
                time.sleep(0.005)
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=10)
        finally:
            if child.poll() is None:
                child.kill()
        assert child.returncode == -signal.SIGKILL
        killed_at = loop.run_until_complete(checkpoint())
        assert 0 < killed_at < positions[-1]

        async def resume():
            runner = ProjectionRunner(probe, VIEWS[view](), "crashy", batch_size=50)
            return await runner.run_once(), await runner.state()

        count, state = loop.run_until_complete(resume())
        assert count == sum(1 for p in positions if p > killed_at)
        assert applied(view, state) == {str(p): 1 for p in positions}
        assert state == loop.run_until_complete(rebuild(VIEWS[view](), probe))
    finally:
        loop.run_until_complete(probe.close())
        loop.close()
