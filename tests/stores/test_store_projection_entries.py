"""Views saved entry by entry (``base.ProjectionEntriesStore``), on every backend with it.

A ``KeyedProjection``'s runner saves only the entries a page touched: the
store must set and delete entries with the same compare-and-set as a whole
save, load them back as one JSON object, and switch a view saved whole (by
an earlier release) to entries without losing or repeating anything.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import orjson
import pytest
from store_helpers import make_event

from agent_trace.projections import ProjectionRunner, SessionSummaries, rebuild
from agent_trace.stores import EventStore, SQLiteStore
from agent_trace.stores.base import ProjectionConflict, ProjectionEntriesStore, StoreError


@pytest.fixture
def estore(store: EventStore) -> ProjectionEntriesStore:
    assert isinstance(store, ProjectionEntriesStore), f"{type(store).__name__}: no entries"
    return store


async def load(store: ProjectionEntriesStore, name: str) -> tuple[object, int]:
    state_json, checkpoint = await store.load_projection(name)
    return (None if state_json is None else orjson.loads(state_json)), checkpoint


async def test_entries_are_set_updated_and_deleted(estore: ProjectionEntriesStore) -> None:
    await estore.save_projection_entries("view", {"a": "1", "b": '{"x":[1,2]}', "é\n": '"ü"'}, 3, 0)
    assert await load(estore, "view") == ({"a": 1, "b": {"x": [1, 2]}, "é\n": "ü"}, 3)
    await estore.save_projection_entries("view", {"a": "2", "b": None, "c": "null"}, 5, 3)
    assert await load(estore, "view") == ({"a": 2, "é\n": "ü", "c": None}, 5)
    await estore.save_projection_entries("view", {"nope": None}, 6, 5)  # deleting a missing key
    assert await load(estore, "view") == ({"a": 2, "é\n": "ü", "c": None}, 6)


async def test_an_empty_set_of_entries_moves_the_checkpoint(estore: ProjectionEntriesStore) -> None:
    await estore.save_projection_entries("view", {}, 4, 0)
    assert await load(estore, "view") == ({}, 4)


async def test_a_stale_checkpoint_is_refused_and_changes_nothing(
    estore: ProjectionEntriesStore,
) -> None:
    await estore.save_projection_entries("view", {"a": "1"}, 5, 0)
    with pytest.raises(ProjectionConflict, match=r"'view'.*expected checkpoint 0, found 5"):
        await estore.save_projection_entries("view", {"a": "9", "b": "9"}, 6, 0)
    with pytest.raises(ProjectionConflict, match="expected checkpoint 4, found 5"):
        await estore.save_projection_entries("view", {"a": None}, 6, 4)
    assert await load(estore, "view") == ({"a": 1}, 5)


async def test_concurrent_entry_saves_let_exactly_one_win(estore: ProjectionEntriesStore) -> None:
    await estore.save_projection_entries("race", {"n": "0"}, 1, 0)

    async def attempt(i: int) -> bool:
        try:
            await estore.save_projection_entries("race", {"n": str(i), f"k{i}": "1"}, 2, 1)
        except ProjectionConflict:
            return False
        return True

    results = await asyncio.gather(*(attempt(i) for i in range(8)))
    assert results.count(True) == 1
    winner = results.index(True)
    assert await load(estore, "race") == ({"n": winner, f"k{winner}": 1}, 2)


async def test_first_entry_saves_race_from_nothing(estore: ProjectionEntriesStore) -> None:
    async def attempt(i: int) -> bool:
        try:
            await estore.save_projection_entries("fresh", {f"k{i}": "1"}, 1, 0)
        except ProjectionConflict:
            return False
        return True

    results = await asyncio.gather(*(attempt(i) for i in range(6)))
    assert results.count(True) == 1
    assert await load(estore, "fresh") == ({f"k{results.index(True)}": 1}, 1)


async def test_a_view_saved_whole_switches_to_entries_and_back(
    estore: ProjectionEntriesStore,
) -> None:
    await estore.save_projection("view", '{"a":1,"b":{"c":2}}', 7, 0)
    await estore.save_projection_entries("view", {"b": "3", "d": "4"}, 8, 7)
    assert await load(estore, "view") == ({"a": 1, "b": 3, "d": 4}, 8)
    await estore.save_projection("view", '{"z":0}', 9, 8)  # whole again: entries dropped
    assert await load(estore, "view") == ({"z": 0}, 9)
    await estore.save_projection_entries("view", {"y": "1"}, 10, 9)
    assert await load(estore, "view") == ({"z": 0, "y": 1}, 10)


async def test_a_whole_state_that_is_not_an_object_cannot_be_split(
    estore: ProjectionEntriesStore,
) -> None:
    await estore.save_projection("view", "[1,2]", 3, 0)
    with pytest.raises(StoreError, match="'view' was saved whole as a JSON list"):
        await estore.save_projection_entries("view", {"a": "1"}, 4, 3)
    assert await estore.load_projection("view") == ("[1,2]", 3)


async def test_names_keep_their_own_entries(estore: ProjectionEntriesStore) -> None:
    await estore.save_projection_entries("one", {"k": "1"}, 1, 0)
    await estore.save_projection_entries("two", {"k": "2"}, 1, 0)
    assert await load(estore, "one") == ({"k": 1}, 1)
    assert await load(estore, "two") == ({"k": 2}, 1)


async def test_entries_survive_reopening(persistent_kind, tmp_path: Path) -> None:
    first = persistent_kind.make(tmp_path)
    assert isinstance(first, ProjectionEntriesStore)
    await first.save_projection_entries("durable", {"s1": '{"n":1}', "s2": "[]"}, 42, 0)
    await first.close()
    second = persistent_kind.make(tmp_path)
    try:
        assert await load(second, "durable") == ({"s1": {"n": 1}, "s2": []}, 42)
    finally:
        await second.close()


# --- the runner: a page saves what it touched --------------------------------------


def _session_events(sessions: list[str], per_session: int) -> list:
    return [
        make_event(sid, "tool_executed", {"tool": "search", "duration_ms": 1.5})
        for _ in range(per_session)
        for sid in sessions
    ]


async def test_a_keyed_runner_saves_only_the_entries_a_page_touched(
    estore: ProjectionEntriesStore,
) -> None:
    saved: list[set[str]] = []
    inner = estore.save_projection_entries

    async def spy(name, entries, checkpoint, expected):  # records, then the real save
        saved.append(set(entries))
        await inner(name, entries, checkpoint, expected)

    estore.save_projection_entries = spy  # type: ignore[method-assign]
    await estore.append(_session_events([f"s{i}" for i in range(50)], 2))
    runner = ProjectionRunner(estore, SessionSummaries(), "sessions", batch_size=1000)
    assert await runner.run_once() == 100
    assert saved == [{f"s{i}" for i in range(50)}]
    await estore.append(_session_events(["s7", "s8"], 3))
    assert await runner.run_once() == 6
    assert saved[-1] == {"s7", "s8"}
    state = await runner.state()
    assert len(state) == 50 and state["s7"]["tools_used"] == ["search"] * 5
    assert state == await rebuild(SessionSummaries(), estore)


# --- SQLite: a database of an earlier release ---------------------------------------

_OLD_PROJECTIONS_TABLE = """
CREATE TABLE projections (
    name TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    position INTEGER NOT NULL,
    updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now'))
)
"""


async def test_sqlite_view_saved_whole_by_an_earlier_release_resumes_entry_by_entry(
    tmp_path: Path,
) -> None:
    path = tmp_path / "events.db"
    store = SQLiteStore(path)
    await store.append(_session_events([f"s{i}" for i in range(5)], 4))
    half = (await store.read_all())[9].position
    # What an earlier release left: its own table and the whole state up to `half`.
    state = await rebuild(SessionSummaries(), _Prefix(store, half))
    await store.close()
    db = sqlite3.connect(path)
    db.execute(_OLD_PROJECTIONS_TABLE)
    db.execute(
        "INSERT INTO projections (name, state, position) VALUES (?, ?, ?)",
        ("sessions", orjson.dumps(state).decode(), half),
    )
    db.commit()
    db.close()

    store = SQLiteStore(path)
    try:
        runner = ProjectionRunner(store, SessionSummaries(), "sessions")
        assert await runner.state() == state  # the old row reads as before
        assert await runner.run_once() == 10
        assert await runner.state() == await rebuild(SessionSummaries(), store)
        await store.append(_session_events(["s1"], 1))
        assert await runner.run_once() == 1
        assert await runner.state() == await rebuild(SessionSummaries(), store)
    finally:
        await store.close()
    db = sqlite3.connect(path)
    try:
        keys = [k for (k,) in db.execute("SELECT key FROM projection_entries ORDER BY key")]
    finally:
        db.close()
    assert keys == [f"s{i}" for i in range(5)]


class _Prefix:
    """A store's events up to a position (what an earlier run had seen)."""

    def __init__(self, store: SQLiteStore, last: int) -> None:
        self.store, self.last = store, last

    async def read_all(self, after_position: int = 0, limit: int | None = None, *, raw=False):
        page = await self.store.read_all(after_position, limit)
        return [e for e in page if e.position <= self.last]
