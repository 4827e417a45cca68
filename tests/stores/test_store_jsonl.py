"""What only the JSONL store promises: its file format and crash recovery."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from store_helpers import assert_chain, make_event

from agent_trace.events import payload_bytes
from agent_trace.stores import JSONLStore, StoreError, open_store


async def test_one_canonical_json_object_per_line(tmp_path: Path) -> None:
    directory = tmp_path / "deep" / "er"  # parents are created
    store = JSONLStore(directory)
    await store.append([make_event("s", payload={"z": 1, "a": (1, 2)}), make_event("t")])
    events = await store.read_all()
    await store.close()

    lines = (directory / "events.jsonl").read_bytes().splitlines(keepends=True)
    assert len(lines) == 2 and all(line.endswith(b"\n") for line in lines)
    for line, ev in zip(lines, events, strict=True):
        assert orjson.loads(line) == ev.to_dict()
    # The payload is stored exactly as hashed: canonical, sorted keys.
    assert b'"payload":' + payload_bytes(events[0].payload) + b"," in lines[0]


async def test_building_a_store_does_no_io(tmp_path: Path) -> None:
    JSONLStore(tmp_path / "j")
    open_store(f"jsonl:///{tmp_path / 'k'}")
    assert list(tmp_path.iterdir()) == []


async def test_torn_last_line_is_ignored_then_truncated(tmp_path: Path) -> None:
    store = JSONLStore(tmp_path)
    await store.append([make_event("s"), make_event("s")])
    await store.close()
    path = tmp_path / "events.jsonl"
    whole = path.read_bytes()
    # A writer crashed in the middle of its line: never acknowledged.
    path.write_bytes(whole + b'{"event_id": "0190a1b2-torn", "session_id": "s", "ver')

    reader = JSONLStore(tmp_path)
    assert [ev.version for ev in await reader.get_events("s")] == [1, 2]
    assert path.read_bytes().startswith(whole)  # readers do not repair

    assert await reader.append([make_event("s")]) == 1
    lines = path.read_bytes().splitlines()
    assert len(lines) == 3
    assert all(orjson.loads(line)["session_id"] == "s" for line in lines)
    assert_chain(await reader.get_events("s"))
    await reader.close()

    fresh = JSONLStore(tmp_path)
    assert_chain(await fresh.get_events("s"))
    await fresh.close()


async def test_a_corrupt_complete_line_is_reported(tmp_path: Path) -> None:
    store = JSONLStore(tmp_path)
    await store.append([make_event("s")])
    await store.close()
    with (tmp_path / "events.jsonl").open("ab") as f:
        f.write(b"not json at all\n")
    with pytest.raises(StoreError, match="unreadable line"):
        await JSONLStore(tmp_path).read_all()


async def test_an_edited_history_is_reported(tmp_path: Path) -> None:
    store = JSONLStore(tmp_path)
    await store.append([make_event("s"), make_event("s"), make_event("s")])
    await store.close()
    path = tmp_path / "events.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(lines[0] + lines[2])  # a deleted event leaves a version gap
    with pytest.raises(StoreError, match="does not follow"):
        await JSONLStore(tmp_path).get_events("s")


async def test_another_writer_is_seen_by_an_open_store(tmp_path: Path) -> None:
    a, b = JSONLStore(tmp_path), JSONLStore(tmp_path)
    await a.append([make_event("s")])
    assert len(await b.read_all()) == 1
    await b.append([make_event("s")])
    assert [ev.version for ev in await a.get_events("s")] == [1, 2]
    await a.close()
    await b.close()


async def test_directory_that_is_a_file_is_a_clear_error(tmp_path: Path) -> None:
    target = tmp_path / "a-file"
    target.write_text("x")
    store = JSONLStore(target)
    with pytest.raises((ValueError, PermissionError, ConnectionError), match=str(target)):
        await store.append([make_event("s")])
    await store.close()


# --- group commit: threads appending at once share one write and one fsync ----------


def _slow_fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count fsyncs of the process, each made slow enough (20 ms) for appends to queue."""
    import os
    import time

    calls: list[int] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        calls.append(fd)
        time.sleep(0.02)
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return calls


async def test_concurrent_appends_share_fsyncs_and_each_gets_its_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    store = JSONLStore(tmp_path)
    await store.list_sessions()  # open (and create the file) before counting
    fsyncs = _slow_fsyncs(monkeypatch)
    shared = make_event("shared")  # appended by every caller: stored (and counted) once
    batches = [[make_event(f"s{i % 3}"), make_event(f"s{i % 3}"), shared] for i in range(16)]
    counts = await asyncio.gather(*(store.append(b) for b in batches))
    assert sum(counts) == 33 and sorted(set(counts)) == [2, 3]
    assert counts.count(3) == 1  # one caller brought the shared event
    assert len(fsyncs) < 16, f"{len(fsyncs)} fsyncs for 16 concurrent appends"
    await store.close()

    reopened = JSONLStore(tmp_path)
    try:
        events = await reopened.read_all()
        assert len(events) == 33
        ids = {e.event_id for b in batches for e in b}
        assert {e.event_id for e in events} == ids
        for sid in ("s0", "s1", "s2", "shared"):
            assert_chain(await reopened.get_events(sid))
    finally:
        await reopened.close()


async def test_a_refused_batch_does_not_fail_the_others_in_its_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    store = JSONLStore(tmp_path)
    await store.list_sessions()
    _slow_fsyncs(monkeypatch)
    good = [[make_event("ok")] for _ in range(6)]
    bad = make_event("bad")
    # A captured tuple the store cannot seal (its payload is not bytes).
    broken = (bad.event_id, "bad", "tool_executed", bad.timestamp, {"x": 1}, None, None, 1)
    results = await asyncio.gather(
        *(store.append(b) for b in good[:3]),
        store.append_captured([broken]),
        *(store.append(b) for b in good[3:]),
        return_exceptions=True,
    )
    assert [r for r in results if isinstance(r, Exception)] != []
    assert results[:3] == [1, 1, 1] and results[4:] == [1, 1, 1]
    assert isinstance(results[3], Exception)
    assert len(await store.read_all()) == 6
    await store.close()


# --- views saved entry by entry: the snapshot and its log ----------------------------


async def _view(store: JSONLStore, name: str = "v") -> tuple[object, int]:
    state_json, checkpoint = await store.load_projection(name)
    return (None if state_json is None else orjson.loads(state_json)), checkpoint


async def test_a_torn_log_line_is_ignored_then_cut(tmp_path: Path) -> None:
    store = JSONLStore(tmp_path)
    await store.save_projection_entries("v", {"a": "1"}, 1, 0)
    await store.save_projection_entries("v", {"b": "2"}, 2, 1)
    log = tmp_path / "projections" / "v.log"
    with log.open("ab") as f:
        f.write(b'{"gen":"00","checkpoint":3,"set":{"a":')  # a save that died mid-write
    assert await _view(store) == ({"a": 1, "b": 2}, 2)
    await store.save_projection_entries("v", {"a": None}, 3, 2)
    assert log.read_bytes().endswith(b"\n") and log.read_bytes().count(b"\n") == 3
    assert await _view(store) == ({"b": 2}, 3)


async def test_log_lines_of_an_older_snapshot_are_ignored(tmp_path: Path) -> None:
    """A crash between writing a new snapshot and emptying the log leaves old lines."""
    store = JSONLStore(tmp_path)
    await store.save_projection_entries("v", {"a": "1", "b": "1"}, 5, 0)
    log = tmp_path / "projections" / "v.log"
    left_over = log.read_bytes()
    await store.save_projection("v", '{"z":0}', 6, 5)  # a new generation, log emptied
    log.write_bytes(left_over)
    assert await _view(store) == ({"z": 0}, 6)
    with pytest.raises(StoreError, match="expected checkpoint 5, found 6"):
        await store.save_projection_entries("v", {"c": "3"}, 7, 5)
    await store.save_projection_entries("v", {"c": "3"}, 7, 6)
    assert await _view(store) == ({"z": 0, "c": 3}, 7)


async def test_the_log_is_folded_into_the_snapshot_once_it_outgrows_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agent_trace.stores import jsonl

    monkeypatch.setattr(jsonl, "_COMPACT_AT", 0)
    store = JSONLStore(tmp_path)
    expected: dict[str, int] = {}
    for i in range(1, 200):
        key = f"k{i % 17}"
        expected[key] = i
        await store.save_projection_entries("v", {key: str(i)}, i, i - 1)
        snapshot = (tmp_path / "projections" / "v.json").stat().st_size
        assert (tmp_path / "projections" / "v.log").stat().st_size <= snapshot + 64
    assert await _view(store) == (expected, 199)
    reopened = JSONLStore(tmp_path)
    assert await _view(reopened) == (expected, 199)


async def test_a_view_saved_by_an_earlier_release_goes_on_entry_by_entry(tmp_path: Path) -> None:
    folder = tmp_path / "projections"
    folder.mkdir()
    (folder / "v.json").write_bytes(b'{"checkpoint":4,"state":{"a":{"n":1}}}\n')  # no "gen"
    store = JSONLStore(tmp_path)
    assert await _view(store) == ({"a": {"n": 1}}, 4)
    await store.save_projection_entries("v", {"b": '{"n":2}'}, 5, 4)
    assert await _view(store) == ({"a": {"n": 1}, "b": {"n": 2}}, 5)
    (folder / "w.json").write_bytes(b'{"checkpoint":2,"state":[1,2]}\n')
    with pytest.raises(StoreError, match="'w' was saved whole as a JSON list"):
        await store.save_projection_entries("w", {"a": "1"}, 3, 2)
    assert await _view(store, "w") == ([1, 2], 2)
