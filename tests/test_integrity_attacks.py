"""Issue 13's attacks on tamper evidence, each reproduced on a real SQLite file.

An attacker with write access to the file drops the append-only triggers and
edits rows with plain ``sqlite3``; verification must notice every edit that
changes what any reader can see: payload text that parses to the hashed value
in one JSON reader and to another value in a second one, the global order
across sessions, and a file too damaged to read at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import agent_trace as at
from agent_trace.events import (
    GENESIS_HASH,
    AgentEvent,
    format_timestamp,
    store_link,
    uuid7,
    validate_event_type,
    validate_session_id,
)
from agent_trace.stores import SQLiteStore
from agent_trace.stores.base import seal_rows

N = 5


def _event(sid: str, i: int, payload: dict | None = None) -> AgentEvent:
    return AgentEvent(
        event_id=uuid7(),
        session_id=sid,
        event_type="tool_executed",
        timestamp=format_timestamp(1_700_000_000_000_000_000 + i * 1000),
        payload={"n": 100 + i, "ratio": 0.5, "tool": "search"} if payload is None else payload,
    )


async def _build(path: Path, sessions: tuple[str, ...] = ("s1", "s2")) -> None:
    store = SQLiteStore(path)
    for i in range(N):  # interleaved: positions alternate between sessions
        await store.append([_event(sid, i) for sid in sessions])
    await store.close()


def _tamper(path: Path, *statements: tuple[str, tuple] | str) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("DROP TRIGGER IF EXISTS events_no_update")
        conn.execute("DROP TRIGGER IF EXISTS events_no_delete")
        for st_ in statements:
            sql, params = (st_, ()) if isinstance(st_, str) else st_
            conn.execute(sql, params)
    finally:
        conn.close()


def _payload(path: Path, position: int) -> str:
    conn = sqlite3.connect(path)
    try:
        row = conn.execute("SELECT payload FROM events WHERE position = ?", (position,))
        return row.fetchone()[0]
    finally:
        conn.close()


async def _store_result(path: Path) -> at.StoreVerification:
    store = SQLiteStore(path)
    try:
        return await at.verify_store(store)
    finally:
        await store.close()


async def _session_result(path: Path, sid: str) -> at.VerificationResult:
    store = SQLiteStore(path)
    try:
        return await at.verify_session(sid, store)
    finally:
        await store.close()


@pytest.fixture
async def db(tmp_path: Path) -> Path:
    path = tmp_path / "events.db"
    await _build(path)
    return path


# --- byte-exact payloads ----------------------------------------------------------------


async def test_a_duplicate_key_that_sql_reads_differently_fails(db: Path) -> None:
    original = _payload(db, 3)  # s1 version 2: {"n":101,...}
    # orjson keeps the last of two equal keys and SQLite's json_extract the
    # first: the forged text hashes like the original for one, not the other.
    forged = original.replace('{"n":101', '{"n":999999,"n":101')
    assert orjson.loads(forged) == orjson.loads(original)
    _tamper(db, ("UPDATE events SET payload = ? WHERE position = 3", (forged,)))
    conn = sqlite3.connect(db)
    seen = conn.execute("SELECT json_extract(payload, '$.n') FROM events WHERE position = 3")
    assert seen.fetchone() == (999999,)  # what a SQL report would show
    conn.close()

    result = await _session_result(db, "s1")
    assert not result.ok and result.first_bad_version == 2
    assert "canonical" in (result.reason or "")
    assert not (await _store_result(db)).ok


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ('"n":101,', '"n": 101,'),  # whitespace
        ('"ratio":0.5', '"ratio":5e-1'),  # another spelling of the same number
        ('"ratio":0.5', '"ratio":0.50'),
        ('"tool":"search"', '"tool":"\\u0073earch"'),  # an escape for a plain letter
    ],
)
async def test_a_payload_text_that_parses_the_same_but_is_not_canonical_fails(
    db: Path, old: str, new: str
) -> None:
    original = _payload(db, 3)
    forged = original.replace(old, new)
    assert forged != original and orjson.loads(forged) == orjson.loads(original)
    _tamper(db, ("UPDATE events SET payload = ? WHERE position = 3", (forged,)))
    result = await _session_result(db, "s1")
    assert not result.ok and result.first_bad_version == 2, result
    assert "canonical" in (result.reason or "")


# --- the global order -------------------------------------------------------------------


def _swap(path: Path, a: int, b: int) -> None:
    _tamper(
        path,
        ("UPDATE events SET position = -1 WHERE position = ?", (a,)),
        ("UPDATE events SET position = ? WHERE position = ?", (a, b)),
        ("UPDATE events SET position = ? WHERE position = -1", (b,)),
    )


async def test_swapping_two_events_of_different_sessions_is_detected(db: Path) -> None:
    _swap(db, 3, 4)  # s1 v2 and s2 v2
    # Each session's own chain is intact: only the global order changed.
    assert (await _session_result(db, "s1")).ok
    assert (await _session_result(db, "s2")).ok
    result = await _store_result(db)
    assert not result.ok
    assert [f.session_id for f in result.failures] == ["*"]
    assert "global order" in (result.failures[0].reason or "")


async def test_a_removed_or_inserted_position_is_detected(tmp_path: Path) -> None:
    removed = tmp_path / "removed.db"
    await _build(removed)
    # The last event of s2: its session chain stays valid (a cut tail) ...
    _tamper(removed, f"DELETE FROM events WHERE position = {2 * N}")
    # ... but not the store head, when it was anchored elsewhere.
    result = await _store_result(removed)
    assert result.ok and result.store_head is not None
    assert result.store_head[0] == 2 * N - 1
    path = tmp_path / "anchored.db"
    await _build(path)
    head = (await _store_result(path)).store_head
    _tamper(path, f"DELETE FROM events WHERE position = {2 * N}")
    store = SQLiteStore(path)
    cut = await at.verify_store(store, expected_store_head=head)
    await store.close()
    assert not cut.ok and "truncated" in (cut.failures[0].reason or "")

    # A position in the middle renumbered away: the chain breaks there.
    middle = tmp_path / "middle.db"
    await _build(middle, ("s1",))
    _tamper(middle, "UPDATE events SET position = position + 100 WHERE position = 3")
    result = await _store_result(middle)
    assert not result.ok and result.failures[0].session_id == "*"

    # A well-formed event of a new session inserted without a store chain link.
    inserted = tmp_path / "inserted.db"
    await _build(inserted)
    (row,) = seal_rows([_event("s9", 0)], {}, 2 * N + 1)
    _tamper(inserted, (f"INSERT INTO events VALUES ({','.join('?' * 13)})", _reorder(row)))
    result = await _store_result(inserted)
    assert not result.ok
    assert "no store chain link" in (result.failures[0].reason or "")


def _reorder(row: tuple) -> tuple:
    """A sealed row in the table's column order, store chain link left out (NULL)."""
    (eid, sid, etype, ts, payload, version, position, span, parent, sv, prev, digest, _) = row
    return (position, eid, sid, version, etype, ts, span, parent, sv, payload, prev, digest, None)


async def test_a_store_of_an_earlier_release_still_verifies_and_gains_the_chain(
    tmp_path: Path,
) -> None:
    """Schema 1 (no store chain column), rows sealed as earlier releases did."""
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript(
        """
        PRAGMA journal_mode = WAL;
        CREATE TABLE events (
            position INTEGER PRIMARY KEY, event_id TEXT NOT NULL UNIQUE,
            session_id TEXT NOT NULL, version INTEGER NOT NULL, event_type TEXT NOT NULL,
            timestamp TEXT NOT NULL, span_id TEXT, parent_span_id TEXT,
            schema_version INTEGER NOT NULL, payload TEXT NOT NULL, prev_hash TEXT NOT NULL,
            hash TEXT NOT NULL, UNIQUE (session_id, version));
        PRAGMA user_version = 1;
        """
    )
    heads: dict = {}
    rows = seal_rows([_event("old", i) for i in range(3)], heads, 1)
    for row in rows:
        conn.execute(f"INSERT INTO events VALUES ({','.join('?' * 12)})", _reorder(row)[:12])
    conn.close()

    # Read-only (it cannot be migrated then): readable, and it verifies.
    readonly = SQLiteStore(path, read_only=True)
    assert len(await readonly.read_all()) == 3
    assert (await at.verify_store(readonly)).ok
    assert (await at.verify_session("old", readonly)).ok
    await readonly.close()

    store = SQLiteStore(path)
    assert (await at.verify_store(store)).ok
    await store.append([_event("old", 9), _event("new", 0)])
    result = await at.verify_store(store)
    await store.close()
    assert result.ok and result.events_checked == 5
    # The chain starts after the legacy rows: position 4 links to the genesis hash.
    conn = sqlite3.connect(path)
    (digest, link) = conn.execute(
        "SELECT hash, store_hash FROM events WHERE position = 4"
    ).fetchone()
    legacy = conn.execute("SELECT COUNT(*) FROM events WHERE store_hash IS NULL").fetchone()
    conn.close()
    assert link == store_link(GENESIS_HASH, 4, digest) and legacy == (3,)


# --- ingest, ids --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [("event_id", 12345), ("timestamp", 1700000000), ("version", "3"), ("span_id", 7)],
)
async def test_ingest_refuses_a_wrongly_typed_field_and_the_store_still_verifies(
    tmp_path: Path, field: str, value: object, caplog: pytest.LogCaptureFixture
) -> None:
    good = [_event("s", i).to_dict() for i in range(3)]
    bad = dict(good[1], **{field: value})
    spill = tmp_path / "in.jsonl"
    spill.write_bytes(b"".join(orjson.dumps(d) + b"\n" for d in (good[0], bad, good[2])))
    store = SQLiteStore(tmp_path / "e.db")
    try:
        assert await at.ingest(spill, store) == 2
        assert f"in.jsonl:2: field {field!r}" in caplog.text
        assert (await at.verify_store(store)).ok
        assert await at.ingest(spill, store) == 0  # again: no TypeError, nothing twice
        assert (await at.verify_store(store)).ok
    finally:
        await store.close()
    rejected = (tmp_path / "in.jsonl.rejected").read_bytes().splitlines()
    assert [orjson.loads(line)[field] for line in rejected][:1] == [value]


def test_appending_a_wrongly_typed_event_is_refused_naming_the_field(tmp_path: Path) -> None:
    async def go() -> None:
        store = SQLiteStore(tmp_path / "e.db")
        bad = AgentEvent(12345, "s", "tick", format_timestamp(0))  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="field 'event_id'"):
            await store.append([bad])
        await store.close()

    asyncio.run(go())


@pytest.mark.parametrize("check", [validate_session_id, validate_event_type])
def test_a_trailing_newline_is_refused(check) -> None:
    with pytest.raises(ValueError):
        check("conv-1\n")
    with pytest.raises(ValueError):
        check("tick\n")
    assert check("tick") == "tick"


# --- a corrupt file ------------------------------------------------------------------------


def _corrupt(path: Path, offset: int, length: int = 4096) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(b"\xa5" * length)


@pytest.mark.parametrize("offset", [0, 4096])  # the header; the first table page
async def test_a_corrupt_file_is_a_failed_verification_never_an_exception(
    tmp_path: Path, offset: int
) -> None:
    path = tmp_path / "events.db"
    store = SQLiteStore(path)
    for i in range(40):
        await store.append([_event(f"s{j}", i) for j in range(10)])
    await store.close()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    _corrupt(path, offset)
    result = await at.verify_store(f"sqlite:///{path}")
    assert not result.ok
    assert "cannot be read" in (result.failures[0].reason or "")
    session = await at.verify_session("s1", f"sqlite:///{path}")
    assert not session.ok and "cannot be read" in (session.reason or "")

    proc = subprocess.run(
        [sys.executable, "-m", "agent_trace.cli", "--store", f"sqlite:///{path}", "verify"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "FAILED" in proc.stdout


# --- random byte edits ------------------------------------------------------------------------

_TEXT_COLUMNS = (
    "event_id",
    "session_id",
    "event_type",
    "timestamp",
    "span_id",
    "payload",
    "prev_hash",
    "hash",
    "store_hash",
)
_INT_COLUMNS = ("version", "position", "schema_version")


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("pristine") / "events.db"

    async def go() -> None:
        store = SQLiteStore(path)
        for i in range(3):
            events = [_event(sid, i, {"k": [i, "é", 1.5], "s": sid}) for sid in ("a", "b")]
            events[0] = AgentEvent(**{**events[0].to_dict(), "span_id": "00ff00ff00ff00ff"})
            await store.append(events)
        await store.close()

    asyncio.run(go())
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.execute("PRAGMA journal_mode = DELETE")
    conn.close()
    return path.read_bytes()


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    position=st.integers(min_value=1, max_value=6),
    column=st.sampled_from(_TEXT_COLUMNS + _INT_COLUMNS),
    where=st.integers(min_value=0, max_value=10_000),
    byte=st.integers(min_value=0, max_value=255),
    delta=st.sampled_from([-2, -1, 1, 2, 1000]),
)
def test_random_byte_edits_of_a_stored_row_are_always_detected_or_rejected(
    pristine: bytes, tmp_path: Path, position, column, where, byte, delta
) -> None:
    path = tmp_path / f"edit-{position}-{column}-{where}-{byte}-{delta}.db"
    path.write_bytes(pristine)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.text_factory = bytes
    conn.execute("DROP TRIGGER events_no_update")
    (value,) = conn.execute(f"SELECT {column} FROM events WHERE position = ?", (position,))
    value = value[0]
    if column in _INT_COLUMNS:
        edited: object = value + delta
    else:
        if value is None:
            edited = bytes([byte])
        else:
            data = bytearray(value)
            i = where % len(data)
            if data[i] == byte:
                byte = (byte + 1) % 256
            data[i] = byte
            edited = bytes(data)
        with contextlib.suppress(UnicodeDecodeError):
            edited = edited.decode()  # stored as TEXT when it still is text
    try:
        conn.execute(f"UPDATE events SET {column} = ? WHERE position = ?", (edited, position))
    except sqlite3.IntegrityError:
        conn.close()
        return  # the database itself rejected the edit (a duplicate id or position)
    conn.close()
    result = asyncio.run(_store_result(path))
    assert not result.ok, (column, position, value, edited)


async def test_a_jsonl_store_of_an_earlier_release_still_verifies(tmp_path: Path) -> None:
    from agent_trace.stores import JSONLStore

    store = JSONLStore(tmp_path)
    await store.append([_event("old", i) for i in range(3)])
    await store.close()
    path = tmp_path / "events.jsonl"
    # An earlier release wrote the same lines without the store chain's link.
    lines = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    path.write_bytes(
        b"".join(
            orjson.dumps({k: v for k, v in d.items() if k != "store_hash"}) + b"\n" for d in lines
        )
    )
    # (orjson writes the payload object back canonically, as the old release did)
    store = JSONLStore(tmp_path)
    assert (await at.verify_store(store)).ok
    await store.append([_event("new", 0)])
    result = await at.verify_store(store)
    assert result.ok and result.events_checked == 4 and result.store_head is not None
    # A line whose text is not what the store writes (here: spaces) fails byte for byte.
    await store.close()
    text = path.read_bytes().replace(b'"tool":"search"', b'"tool": "search"', 1)
    path.write_bytes(text)
    store = JSONLStore(tmp_path)
    result = await at.verify_store(store)  # every event is read again
    await store.close()
    assert not result.ok and "canonical" in (result.failures[-1].reason or "")


async def test_incremental_verify_store_what_it_rechecks_and_what_a_full_run_adds(
    tmp_path: Path,
) -> None:
    path = tmp_path / "events.db"
    await _build(path)
    store = SQLiteStore(path)
    assert (await at.verify_store(store)).ok  # remembered: head at position 10
    await store.close()
    # An already verified event is edited in place: an incremental run does not
    # read it again (README), a full run does.
    _tamper(path, ("UPDATE events SET payload = ? WHERE position = 3", ('{"n":1}',)))
    store = SQLiteStore(path)
    incremental = await at.verify_store(store, incremental=True)
    assert incremental.ok and incremental.resumed_after == 10
    full = await at.verify_store(store)
    assert not full.ok and full.failures[0].first_bad_version == 2
    await store.close()
    # History rewritten up to the head (its hash changes): the incremental run
    # re-checks the remembered head and fails.
    _tamper(path, ("UPDATE events SET hash = ? WHERE position = 10", ("ab" * 32,)))
    store = SQLiteStore(path)
    rewritten = await at.verify_store(store, incremental=True)
    await store.close()
    assert not rewritten.ok and rewritten.failures[0].session_id == "*"
    assert "changed since it was verified" in (rewritten.failures[0].reason or "")
    proc = subprocess.run(
        [sys.executable, "-m", "agent_trace.cli", "--store", f"sqlite:///{path}", "verify",
         "--json"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 1 and not orjson.loads(proc.stdout)["ok"], proc.stderr
