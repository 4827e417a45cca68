"""Tamper with stored history the way an attacker with file access would; verification notices.

The SQLite tests drop the append-only triggers first (anyone who can write
the file can), then edit, delete, reorder, insert or re-hash rows with plain
``sqlite3``. The JSONL tests edit ``events.jsonl`` directly.
"""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from pathlib import Path

import orjson
import pytest

import agent_trace as at
from agent_trace.events import GENESIS_HASH, AgentEvent, compute_hash, format_timestamp, uuid7
from agent_trace.integrity import SessionHead, check_chain
from agent_trace.stores import JSONLStore, SQLiteStore

N = 6


def _event(sid: str, i: int) -> AgentEvent:
    return AgentEvent(
        event_id=uuid7(),
        session_id=sid,
        event_type="tool_executed",
        timestamp=format_timestamp(1_700_000_000_000_000_000 + i * 1000),
        payload={"tool": "search", "result": [i, "ok"], "i": i},
    )


@pytest.fixture
async def db(tmp_path: Path):
    """A SQLite file with sessions s1 and s2 of N events each; yields its path."""
    path = tmp_path / "events.db"
    store = SQLiteStore(path)
    for sid in ("s1", "s2"):
        await store.append([_event(sid, i) for i in range(N)])
    await store.close()
    return path


def _tamper(path: Path, *statements: tuple[str, tuple] | str) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("DROP TRIGGER events_no_update")
        conn.execute("DROP TRIGGER events_no_delete")
        for st in statements:
            sql, params = (st, ()) if isinstance(st, str) else st
            conn.execute(sql, params)
    finally:
        conn.close()


async def _verify(path: Path, sid: str = "s1", **kw) -> at.VerificationResult:
    store = SQLiteStore(path)
    try:
        return await at.verify_session(sid, store, **kw)
    finally:
        await store.close()


async def test_untouched_history_verifies(db):
    result = await _verify(db)
    assert result.ok and bool(result)
    assert (result.events_checked, result.first_bad_version, result.reason) == (N, None, None)
    store = SQLiteStore(db)
    head = await at.session_head("s1", store)
    await store.close()
    assert result.head == head and head.version == N


def test_triggers_refuse_update_and_delete_with_a_clear_message(db):
    conn = sqlite3.connect(db)
    with pytest.raises(sqlite3.DatabaseError, match="append-only: UPDATE is not allowed"):
        conn.execute("UPDATE events SET payload = '{}' WHERE version = 1")
    with pytest.raises(sqlite3.DatabaseError, match="append-only: DELETE is not allowed"):
        conn.execute("DELETE FROM events")
    conn.close()


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("payload", '{"i":2,"result":[2,"tampered"],"tool":"search"}'),
        ("event_type", "tool_failed"),
        ("timestamp", "2020-01-01T00:00:00.000000+00:00"),
        ("span_id", "deadbeefdeadbeef"),
        ("schema_version", 2),
    ],
)
async def test_an_edited_field_is_detected_at_its_version(db, column, value):
    _tamper(
        db, (f"UPDATE events SET {column} = ? WHERE session_id = 's1' AND version = 3", (value,))
    )
    result = await _verify(db)
    assert not result.ok
    assert result.first_bad_version == 3
    assert result.events_checked == 2
    assert "content" in result.reason
    assert (await _verify(db, "s2")).ok  # the other session is untouched


async def test_a_deleted_event_is_a_version_gap(db):
    _tamper(db, "DELETE FROM events WHERE session_id = 's1' AND version = 4")
    result = await _verify(db)
    assert not result.ok and result.first_bad_version == 4
    assert "gap" in result.reason and "deleted" in result.reason


async def test_deleting_the_first_event_is_detected(db):
    _tamper(db, "DELETE FROM events WHERE session_id = 's1' AND version = 1")
    result = await _verify(db)
    assert not result.ok and result.first_bad_version == 1


async def test_deleting_and_renumbering_breaks_the_chain(db):
    # A careful attacker closes the gap: versions stay contiguous, hashes don't.
    _tamper(
        db,
        "DELETE FROM events WHERE session_id = 's1' AND version = 2",
        "UPDATE events SET version = version - 1 WHERE session_id = 's1' AND version > 2",
    )
    result = await _verify(db)
    assert not result.ok and result.first_bad_version == 2


async def test_reordered_events_are_detected(db):
    _tamper(
        db,
        "UPDATE events SET version = -1 WHERE session_id = 's1' AND version = 2",
        "UPDATE events SET version = 2 WHERE session_id = 's1' AND version = 3",
        "UPDATE events SET version = 3 WHERE session_id = 's1' AND version = -1",
    )
    result = await _verify(db)
    assert not result.ok and result.first_bad_version == 2


async def test_an_inserted_event_is_detected_even_with_a_valid_hash(db):
    store = SQLiteStore(db)
    stored = await store.get_events("s1")
    await store.close()
    # A well-formed event at version 3, chained to version 2, correctly hashed.
    fake = replace(_event("s1", 99), version=3, prev_hash=stored[1].hash)
    fake = replace(fake, hash=compute_hash(fake))
    _tamper(
        db,
        "UPDATE events SET version = version + 100 WHERE session_id = 's1' AND version >= 3",
        "UPDATE events SET version = version - 99 WHERE session_id = 's1' AND version >= 103",
        (
            "INSERT INTO events (event_id, session_id, event_type, timestamp, payload, version, "
            "position, span_id, parent_span_id, schema_version, prev_hash, hash) "
            "VALUES (?, ?, ?, ?, ?, ?, 1000, NULL, NULL, 1, ?, ?)",
            (
                fake.event_id,
                "s1",
                fake.event_type,
                fake.timestamp,
                orjson.dumps(fake.payload, option=orjson.OPT_SORT_KEYS).decode(),
                3,
                fake.prev_hash,
                fake.hash,
            ),
        ),
    )
    result = await _verify(db)
    assert not result.ok
    assert result.first_bad_version == 4  # the fake itself chains; its successor does not
    assert "prev_hash" in result.reason


async def test_a_forged_hash_breaks_the_next_link(db):
    store = SQLiteStore(db)
    stored = await store.get_events("s1")
    await store.close()
    edited = replace(stored[2], payload={"tool": "search", "result": "forged", "i": 2})
    forged = compute_hash(edited)
    _tamper(
        db,
        (
            "UPDATE events SET payload = ?, hash = ? WHERE session_id = 's1' AND version = 3",
            (orjson.dumps(edited.payload, option=orjson.OPT_SORT_KEYS).decode(), forged),
        ),
    )
    result = await _verify(db)
    assert not result.ok and result.first_bad_version == 4
    assert "prev_hash" in result.reason


async def test_a_non_hex_hash_is_reported(db):
    _tamper(db, "UPDATE events SET hash = 'x' WHERE session_id = 's1' AND version = 6")
    result = await _verify(db)
    assert not result.ok and result.first_bad_version == 6


async def _rewrite_from(db: Path, version: int) -> None:
    """Edit ``version`` and re-hash the rest of the chain: invisible without an anchor."""
    store = SQLiteStore(db)
    stored = await store.get_events("s1")
    await store.close()
    prev = stored[version - 2].hash if version > 1 else GENESIS_HASH
    statements = []
    for ev in stored[version - 1 :]:
        payload = {**ev.payload, "rewritten": True}
        new = replace(ev, payload=payload, prev_hash=prev)
        new = replace(new, hash=compute_hash(new))
        prev = new.hash
        statements.append(
            (
                "UPDATE events SET payload = ?, prev_hash = ?, hash = ? WHERE event_id = ?",
                (
                    orjson.dumps(payload, option=orjson.OPT_SORT_KEYS).decode(),
                    new.prev_hash,
                    new.hash,
                    ev.event_id,
                ),
            )
        )
    _tamper(db, *statements)


async def test_a_rewritten_chain_is_caught_by_the_anchored_head(db):
    store = SQLiteStore(db)
    anchor = await at.session_head("s1", store)
    await store.close()
    await _rewrite_from(db, 3)
    assert (await _verify(db)).ok  # the chain alone cannot tell
    result = await _verify(db, expected_head=anchor)
    assert not result.ok and "rewritten" in result.reason
    assert result.first_bad_version == N


async def test_truncation_is_caught_by_the_anchored_head(db):
    store = SQLiteStore(db)
    anchor = await at.session_head("s1", store)
    await store.close()
    _tamper(db, "DELETE FROM events WHERE session_id = 's1' AND version >= 5")
    assert (await _verify(db)).ok  # a shorter chain is still a chain
    result = await _verify(db, expected_head=anchor)
    assert not result.ok
    assert result.first_bad_version == 5 and "truncated" in result.reason
    assert result.events_checked == 4
    # the anchor survives a round trip through JSON (kept in another system)
    as_json = orjson.loads(orjson.dumps(anchor.to_dict()))
    assert not (await _verify(db, expected_head=as_json)).ok


async def test_verify_store_reports_every_failure(db):
    _tamper(
        db,
        "UPDATE events SET payload = '{}' WHERE session_id = 's1' AND version = 2",
        "DELETE FROM events WHERE session_id = 's2' AND version = 5",
    )
    store = SQLiteStore(db)
    await store.append([_event("s3", i) for i in range(3)])
    result = await at.verify_store(store)
    await store.close()
    assert not result.ok
    assert result.sessions_checked == 3
    # The deleted row also breaks the store chain (the global order): listed as "*".
    assert {(f.session_id, f.first_bad_version) for f in result.failures} == {
        ("*", None),
        ("s1", 2),
        ("s2", 5),
    }
    assert "s1" in str(result) and "FAILED" in str(result)


async def test_verify_store_with_anchors_finds_a_deleted_session(db):
    store = SQLiteStore(db)
    heads = {sid: await at.session_head(sid, store) for sid in ("s1", "s2")}
    await store.close()
    _tamper(db, "DELETE FROM events WHERE session_id = 's2'")
    store = SQLiteStore(db)
    result = await at.verify_store(store, expected_heads=list(heads.values()))
    await store.close()
    assert [(f.session_id, "missing" in f.reason) for f in result.failures] == [("s2", True)]


async def test_verify_uses_the_configured_store(sqlite_store):
    with at.session("configured"):
        at.emit("tick", {"n": 1})
    result = await at.verify_session("configured")
    assert result.ok and result.events_checked == 3
    assert (await at.verify_store()).ok


async def test_recorded_sdk_events_carry_schema_version_1(memory_store):
    @at.record_tool
    def add(a, b):
        return a + b

    with at.session("sv"):
        add(1, 2)
    events = await memory_store.get_events("sv")
    assert {e.schema_version for e in events} == {1}
    assert (await at.verify_session("sv", memory_store)).ok


# --- JSONL: the file is plain text, so the tampering is plain text too ----------


@pytest.fixture
async def jsonl(tmp_path: Path):
    directory = tmp_path / "log"
    store = JSONLStore(directory)
    for sid in ("s1", "s2"):
        await store.append([_event(sid, i) for i in range(N)])
    await store.close()
    return directory / "events.jsonl"


async def _verify_jsonl(path: Path, sid: str = "s1", **kw):
    store = JSONLStore(path.parent)
    try:
        return await at.verify_session(sid, store, **kw)
    finally:
        await store.close()


def _edit_lines(path: Path, fn) -> None:
    lines = path.read_bytes().splitlines()
    records = [orjson.loads(line) for line in lines]
    records = fn(records)
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))


async def test_jsonl_untouched_verifies(jsonl):
    result = await _verify_jsonl(jsonl)
    assert result.ok and result.events_checked == N


async def test_jsonl_edited_payload_is_detected(jsonl):
    def edit(records):
        for r in records:
            if r["session_id"] == "s1" and r["version"] == 2:
                r["payload"]["result"] = "tampered"
        return records

    _edit_lines(jsonl, edit)
    result = await _verify_jsonl(jsonl)
    assert not result.ok and result.first_bad_version == 2 and "content" in result.reason


async def test_jsonl_byte_level_edit_is_detected(jsonl):
    data = jsonl.read_bytes()
    assert data.count(b'"i":4') == 2
    jsonl.write_bytes(data.replace(b'"i":4', b'"i":5', 1))  # same length, s1 comes first
    result = await _verify_jsonl(jsonl)
    assert not result.ok and result.first_bad_version == 5


async def test_jsonl_deleted_line_is_detected(jsonl):
    _edit_lines(
        jsonl, lambda rs: [r for r in rs if not (r["session_id"] == "s1" and r["version"] == 3)]
    )
    result = await _verify_jsonl(jsonl)
    assert not result.ok
    assert "does not follow" in result.reason or "gap" in result.reason


async def test_jsonl_truncated_tail_is_caught_by_the_anchor(jsonl):
    store = JSONLStore(jsonl.parent)
    anchor = await at.session_head("s2", store)
    await store.close()
    _edit_lines(jsonl, lambda rs: rs[:-2])  # the last two lines are s2's versions 5 and 6
    assert (await _verify_jsonl(jsonl, "s2")).ok
    result = await _verify_jsonl(jsonl, "s2", expected_head=anchor)
    assert not result.ok and result.first_bad_version == 5


async def test_jsonl_verify_store_reports_an_unreadable_file(jsonl):
    _edit_lines(jsonl, lambda rs: rs[:3] + rs[4:])
    store = JSONLStore(jsonl.parent)
    result = await at.verify_store(store)
    await store.close()
    assert not result.ok and result.failures


# --- the pure checker -----------------------------------------------------------


def test_check_chain_on_an_empty_session():
    result = check_chain("empty", [])
    assert result.ok and result.events_checked == 0 and result.head is None
    assert check_chain("empty", [], expected_head=SessionHead("empty", 0, GENESIS_HASH)).ok
    assert not check_chain("empty", [], expected_head=(1, "a" * 64)).ok


def test_check_chain_rejects_an_event_of_another_session():
    ev = replace(_event("other", 0), version=1, prev_hash=GENESIS_HASH)
    ev = replace(ev, hash=compute_hash(ev))
    result = check_chain("mine", [ev])
    assert not result.ok and "belongs to session" in result.reason


def test_expected_head_rejects_garbage():
    with pytest.raises(TypeError, match="expected_head"):
        check_chain("x", [], expected_head="nope")
