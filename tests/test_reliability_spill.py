"""The spill file and ``ingest``: durable lines, torn tails ignored, idempotent re-append."""

from __future__ import annotations

import pytest

import agent_trace as at
from agent_trace.events import AgentEvent, format_timestamp, uuid7
from agent_trace.spill import SpillFile, ingest, ingest_sync
from agent_trace.stores import MemoryStore, SQLiteStore


def _events(sid: str, n: int, start: int = 0) -> list[AgentEvent]:
    return [
        AgentEvent(uuid7(), sid, "tick", format_timestamp(1_700_000_000_000_000_000 + i), {"i": i})
        for i in range(start, start + n)
    ]


def test_write_then_read_round_trips(tmp_path):
    spill = SpillFile(tmp_path / "sub" / "spill.jsonl")
    assert spill.read() == [] and not spill.pending()
    evs = _events("s", 5)
    spill.write(evs[:2])
    spill.write(evs[2:])
    assert spill.pending()
    assert spill.read() == evs
    assert oct((tmp_path / "sub" / "spill.jsonl").stat().st_mode & 0o777) == "0o600"


def test_a_torn_or_invalid_line_costs_only_that_line(tmp_path):
    path = tmp_path / "spill.jsonl"
    spill = SpillFile(path)
    evs = _events("s", 4)
    spill.write(evs[:3])
    with open(path, "ab") as f:
        f.write(b'{"event_id": "torn')  # a crash in the middle of a write
    assert spill.read() == evs[:3]
    _, rejected = spill.scan()
    assert [r.number for r in rejected] == [4] and "torn" in rejected[0].reason
    # Garbage in the middle, and a line with an invalid field: each costs itself only.
    bad_id = b'{"event_id": "x", "session_id": "bad id", "event_type": "t", "timestamp": "t"}\n'
    path.write_bytes(path.read_bytes().replace(b'{"event_id": "torn', b"not json\n" + bad_id))
    spill.write(evs[3:])
    assert spill.read() == evs
    _, rejected = spill.scan()
    assert [r.number for r in rejected] == [4, 5]
    assert rejected[0].reason.startswith("not JSON")
    assert rejected[1].reason.startswith("field 'session_id': invalid session_id")


async def test_ingest_is_idempotent_by_event_id(tmp_path):
    path = tmp_path / "spill.jsonl"
    store = SQLiteStore(tmp_path / "events.db")
    evs = _events("a", 4) + _events("b", 3)
    SpillFile(path).write(evs)
    # a few of them already made it before the outage: they are skipped
    await store.append(evs[:2])
    assert await ingest(path, store) == 5
    assert await ingest(path, store) == 0  # twice: nothing twice
    stored = await store.get_events("a")
    assert [e.event_id for e in stored] == [e.event_id for e in evs[:4]]
    assert [e.version for e in stored] == [1, 2, 3, 4]
    assert (await at.verify_store(store)).ok
    assert path.exists() and SpillFile(path).pending()  # left in place by default
    assert await ingest(path, store, remove=True) == 0
    assert not SpillFile(path).pending()
    await store.close()


def test_ingest_sync_into_a_store_url(tmp_path):
    path = tmp_path / "spill.jsonl"
    SpillFile(path).write(_events("c", 3))
    url = f"sqlite:///{tmp_path / 'events.db'}"
    assert ingest_sync(path, url, batch_size=2) == 3
    assert ingest_sync(path, url) == 0
    assert len(at.get_events_sync("c", store=url)) == 3


async def test_ingest_of_a_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no spill file"):
        await ingest(tmp_path / "nope.jsonl", "memory://")


async def test_drain_keeps_the_file_when_the_store_fails(tmp_path):
    class Down:
        async def append(self, events):
            raise OSError("disk full")

    path = tmp_path / "spill.jsonl"
    evs = _events("d", 3)
    SpillFile(path).write(evs)
    with pytest.raises(OSError, match="disk full"):
        await SpillFile(path).drain(Down())
    assert SpillFile(path).read() == evs


async def test_an_interrupted_drain_resumes_after_the_last_acknowledged_chunk(tmp_path):
    class FailsOnce(MemoryStore):
        def __init__(self):
            super().__init__()
            self.calls = []

        async def append(self, events):
            self.calls.append(len(events))
            if len(self.calls) == 3:
                raise ConnectionError("blip")
            return await super().append(events)

    path = tmp_path / "spill.jsonl"
    evs = _events("r", 10)
    SpillFile(path).write(evs)
    spill, store = SpillFile(path), FailsOnce()
    with pytest.raises(ConnectionError):
        await spill.drain(store, batch_size=3)
    assert store.calls == [3, 3, 3] and spill.pending()
    assert await spill.drain(store, batch_size=3) == 4  # resumes at event 7, not at 1
    assert store.calls == [3, 3, 3, 3, 1]
    assert [e.event_id for e in await store.get_events("r")] == [e.event_id for e in evs]
    assert not spill.pending()
    # progress is dropped once the file was emptied and refilled by someone else
    SpillFile(path).write(_events("r", 2, start=10))
    assert await spill.drain(store, batch_size=3) == 2
