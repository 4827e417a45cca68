"""The sessions index (issue 16): kept in each append, it always answers as a full scan.

Every check compares the index with what the stored events say, folded by the
projections (``build_session_summary``, ``CostPerModel``, ``tool_stats``): an
independent implementation of the same figures.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest
from conftest import STORE_KINDS, StoreKind
from store_helpers import make_event

from agent_trace.events import AgentEvent, format_timestamp
from agent_trace.projections import CostPerModel, build_session_summary, rebuild, tool_stats
from agent_trace.stores import EventStore, SQLiteStore
from agent_trace.stores.base import SessionFilter, SessionIndexStore, SessionInfo

# PostgreSQL keeps no index yet: its readers (the CLI) fall back to a scan.
INDEXED = [k for k in STORE_KINDS if k.name != "postgres"]


@pytest.fixture(params=[pytest.param(k, id=k.name, marks=k.marks) for k in INDEXED])
def kind(request: pytest.FixtureRequest) -> StoreKind:
    return request.param


def ts(second: float) -> str:
    return format_timestamp(int((1_900_000_000 + second) * 1e9))


def session_events(sid: str, n: int, start: float = 0.0, fail: bool = False) -> list[AgentEvent]:
    """A session shaped like the SDK's: metadata, tools, LLM calls, a decision, an end."""
    t = start
    out: list[AgentEvent] = []

    def add(etype: str, payload: dict[str, Any]) -> None:
        nonlocal t
        t += 0.001
        out.append(make_event(sid, etype, payload, timestamp=ts(t)))

    add("session_started", {"metadata": {"user": sid, "agent": "researcher"}})
    for i in range(n):
        add("llm_started", {"name": "chat", "model": "gpt-4o-mini", "args": {}})
        if i % 5 == 4:
            add("llm_failed", {"name": "chat", "model": "gpt-4o", "error": "rate limited"})
        else:
            usage = {"input_tokens": 100 + i, "output_tokens": 10 + i}
            if i % 2:
                usage["total_tokens"] = 111 + 2 * i
                usage["cache_read_tokens"] = 7
            model = "gpt-4o-mini" if i % 3 else "claude-sonnet-4-5"
            add(
                "llm_responded",
                {"name": "chat", "model": model, "usage": usage, "response": "ok",
                 "duration_ms": 5.0},
            )  # fmt: skip
        add("decision_made", {"decision": "next", "choice": "search", "duration_ms": 1.0})
        tool = ("search", "fetch", "summarize")[i % 3]
        if fail and i == n // 2:
            add("tool_failed", {"tool": tool, "error": "timeout", "duration_ms": 50.0 + i})
        else:
            add("tool_executed", {"tool": tool, "result": [i], "duration_ms": 10.0 + i})
        add("observation", {"i": i})
    add("response_generated", {"response": "done", "tokens_used": 12})
    add("session_ended", {"status": "error" if fail else "ok", "duration_ms": 1234.5})
    return out


def expected_info(sid: str, events: Sequence[AgentEvent]) -> dict[str, Any]:
    """What the index must say of one session, from its events (the projections' fold)."""
    s = build_session_summary(events, sid)
    models: dict[str, dict[str, int]] = {}
    state: dict[str, Any] = {}
    cost = CostPerModel()
    for ev in events:
        key = cost.key(ev)
        if key is not None:
            state[key] = cost.apply_entry(state.get(key), ev)
    for name, m in state.items():
        models[name] = {k: v for k, v in m.items() if k != "cost"}
    tools = sorted(
        {
            ev.payload["tool"]
            for ev in events
            if ev.event_type in ("tool_executed", "tool_failed")
            and isinstance(ev.payload.get("tool"), str)
        }
    )
    meta = next(
        (ev.payload.get("metadata", {}) for ev in events if ev.event_type == "session_started"),
        {},
    )
    meta = meta if isinstance(meta, dict) else {}
    ended = [ev.payload.get("duration_ms") for ev in events if ev.event_type == "session_ended"]
    duration = ended[-1] if ended and isinstance(ended[-1], (int, float)) else None
    return {
        "session_id": sid,
        "started_at": s.started_at,
        "last_activity": s.last_activity,
        "event_count": len(events),
        "last_version": events[-1].version,
        "metadata": meta,
        "status": s.status,
        "duration_ms": duration,
        "tool_calls": sum(ev.event_type in ("tool_executed", "tool_failed") for ev in events),
        "llm_calls": s.llm_calls,
        "decisions": s.decisions,
        "failures": len(s.errors),
        "input_tokens": s.input_tokens,
        "output_tokens": s.output_tokens,
        "total_tokens": s.total_tokens,
        "models": models,
        "tools": tools,
        "agent": meta.get("agent"),
        "first_position": events[0].position,
        "last_position": events[-1].position,
    }


def as_dict(info: SessionInfo) -> dict[str, Any]:
    return {name: getattr(info, name) for name in info.__dataclass_fields__}


async def assert_index_matches_scan(store: EventStore) -> None:
    """The index (every entry, order, totals) equals the fold of every stored event."""
    assert isinstance(store, SessionIndexStore)
    by_session: dict[str, list[AgentEvent]] = {}
    for ev in await store.read_all():
        by_session.setdefault(ev.session_id, []).append(ev)
    infos = await store.query_sessions()
    assert {i.session_id for i in infos} == set(by_session)
    for info in infos:
        assert as_dict(info) == expected_info(info.session_id, by_session[info.session_id])
    order = sorted(
        by_session,
        key=lambda s: (min(e.timestamp for e in by_session[s]), by_session[s][0].position),
    )
    assert [i.session_id for i in infos] == order[::-1]
    assert [i.session_id for i in await store.list_sessions()] == order[::-1]

    totals = await store.session_totals()
    assert totals["sessions"] == len(by_session)
    assert totals["events"] == sum(len(v) for v in by_session.values())
    days: dict[str, int] = {}
    for info in infos:
        days[info.started_at[:10]] = days.get(info.started_at[:10], 0) + 1
    assert totals["per_day"] == dict(sorted(days.items()))
    cost = CostPerModel()
    scanned = await rebuild(cost, store)
    assert totals["models"] == {
        name: {k: v for k, v in m.items() if k != "cost"} for name, m in sorted(scanned.items())
    }
    scanned_tools = await tool_stats(store)
    assert list(totals["tools"]) == list(scanned_tools)
    for name, f in totals["tools"].items():
        t = scanned_tools[name]
        assert (f["calls"], f["failures"], f["p50_ms"], f["p95_ms"]) == (
            t.calls,
            t.failures,
            t.p50_ms,
            t.p95_ms,
        )
        assert f["mean_ms"] == pytest.approx(t.mean_ms)  # SQL sums floats its own way


async def test_index_answers_as_a_scan_and_filters(kind: StoreKind, tmp_path: Path) -> None:
    store = kind.make(tmp_path)
    try:
        batches = [
            session_events("a", 6, start=0),
            session_events("b", 3, start=10, fail=True),
            session_events("c", 1, start=20)[:-1],  # still open
        ]
        # Interleaved across batches and sessions, as concurrent sessions write.
        mixed = [ev for group in zip(*[b[:8] for b in batches], strict=False) for ev in group]
        await store.append(mixed)
        await store.append([ev for b in batches for ev in b[8:]])
        # A replayed batch changes nothing.
        assert await store.append(batches[0][:5]) == 0
        await assert_index_matches_scan(store)

        async def ids(**filter: Any) -> list[str]:
            infos = await store.query_sessions(None, SessionFilter(**filter))
            return [i.session_id for i in infos]

        assert await ids() == ["c", "b", "a"]
        assert await ids(failed=True) == ["b", "a"]  # a: an llm_failed
        assert await ids(tool="summarize") == ["b", "a"]
        assert await ids(tool="nope") == []
        assert await ids(model="claude-sonnet-4-5") == ["c", "b", "a"]
        assert await ids(model="gpt-4o") == ["a"]  # its llm_failed counts as a call to it
        assert await ids(status="open") == ["c"]
        assert await ids(status="ok") == ["a"]
        assert await ids(since=ts(10)) == ["c", "b"]
        assert await ids(failed=True, since=ts(11)) == []
        assert await ids(status="error") == ["b"]
        assert [i.session_id for i in await store.query_sessions(2)] == ["c", "b"]
        assert await store.query_sessions(0) == []
        # What a caller gets back is a copy.
        first = (await store.query_sessions(1))[0]
        first.models.clear()
        first.metadata.clear()
        again = (await store.query_sessions(1))[0]
        assert again.models and again.metadata
    finally:
        await store.close()


async def test_an_empty_store(kind: StoreKind, tmp_path: Path) -> None:
    store = kind.make(tmp_path)
    try:
        assert await store.query_sessions() == []
        totals = await store.session_totals()
        assert totals == {"sessions": 0, "events": 0, "per_day": {}, "models": {}, "tools": {}}
    finally:
        await store.close()


async def test_odd_payloads_are_indexed_like_the_summary(kind: StoreKind, tmp_path: Path) -> None:
    store = kind.make(tmp_path)
    try:
        await store.append(
            [
                make_event("o", "session_started", {"metadata": "not a dict"}, timestamp=ts(1)),
                make_event("o", "llm_responded", {"usage": "none"}, timestamp=ts(2)),
                make_event(
                    "o",
                    "llm_responded",
                    {"model": 7, "usage": {"input_tokens": True}},
                    timestamp=ts(3),
                ),
                make_event(
                    "o", "tool_executed", {"tool": None, "duration_ms": "x"}, timestamp=ts(4)
                ),
                make_event("o", "custom_failed", {"message": "x"}, timestamp=ts(5)),
                make_event("o", "session_ended", {}, timestamp=ts(0.5)),  # an earlier clock
            ]
        )
        await assert_index_matches_scan(store)
        (info,) = await store.query_sessions()
        assert info.status == "ok" and info.failures == 1 and info.started_at == ts(0.5)
    finally:
        await store.close()


# --- concurrent writers ----------------------------------------------------------------


def _thread_writer(make: Any, w: int) -> None:
    async def go() -> None:
        store = make()
        try:
            events = session_events(f"w{w}", 8, start=w) + session_events("shared", 2, start=w)
            for i in range(0, len(events), 7):
                await store.append(events[i : i + 7])
        finally:
            await store.close()

    asyncio.run(go())


async def test_threads_writing_one_store(kind: StoreKind, tmp_path: Path) -> None:
    """Persistent stores: an object per thread on one file/directory; memory: one object."""
    shared = None if kind.persistent else kind.make(tmp_path)

    def make() -> EventStore:
        return shared if shared is not None else kind.make(tmp_path)

    threads = [threading.Thread(target=_thread_writer, args=(make, w)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    store = make()
    try:
        await assert_index_matches_scan(store)
        assert len(await store.query_sessions()) == 5
    finally:
        await store.close()


_PROCESS_WRITER = textwrap.dedent(
    """
    import asyncio, sys
    sys.path.insert(0, {tests!r})
    from test_sessions_index import session_events
    from agent_trace.stores import open_store

    async def main(w):
        store = open_store({url!r})
        events = session_events(f"p{{w}}", 10, start=w) + session_events("shared", 3, start=w)
        for i in range(0, len(events), 5):
            await store.append(events[i : i + 5])
        await store.close()

    asyncio.run(main(int(sys.argv[1])))
    """
)


def _run_writers(url: str, n: int) -> None:
    code = _PROCESS_WRITER.format(tests=str(Path(__file__).parent), url=url)
    procs = [subprocess.Popen([sys.executable, "-c", code, str(w)]) for w in range(n)]
    for p in procs:
        assert p.wait(timeout=120) == 0


@pytest.mark.parametrize(
    "kind", [pytest.param(k, id=k.name, marks=k.marks) for k in INDEXED if k.persistent]
)
async def test_processes_writing_one_store(kind: StoreKind, tmp_path: Path) -> None:
    assert kind.url is not None
    kind.make(tmp_path)  # the directory/file's parent exists
    _run_writers(kind.url(tmp_path), 4)
    store = kind.make(tmp_path)
    try:
        await assert_index_matches_scan(store)
        assert (await store.session_totals())["sessions"] == 5
    finally:
        await store.close()


# --- a crash mid-append ----------------------------------------------------------------

_CRASHING_WRITER = textwrap.dedent(
    """
    import asyncio, sys
    sys.path.insert(0, {tests!r})
    from test_sessions_index import session_events
    from agent_trace.stores import SQLiteStore

    async def main():
        store = SQLiteStore({path!r})
        k = 0
        while True:
            events = [ev for s in range(5) for ev in session_events(f"c{{k}}-{{s}}", 40)]
            await store.append(events)
            print(k, flush=True)
            k += 1

    asyncio.run(main())
    """
)


async def test_sigkill_mid_append_leaves_index_and_events_agreeing(tmp_path: Path) -> None:
    path = tmp_path / "crash.db"
    code = _CRASHING_WRITER.format(tests=str(Path(__file__).parent), path=str(path))
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    for _ in range(3):  # a few batches committed, then killed inside a later one
        assert proc.stdout.readline()
    time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    store = SQLiteStore(path)
    try:
        await assert_index_matches_scan(store)
        # Every batch is whole or absent: sessions of 40 steps, all 203 events.
        assert {i.event_count for i in await store.query_sessions()} == {203}
        await store.append(session_events("after", 2))
        await assert_index_matches_scan(store)
    finally:
        await store.close()


# --- migration from an earlier schema --------------------------------------------------


async def _schema_2_store(path: Path, events: Iterable[AgentEvent]) -> None:
    """A store as schema 2 left it: events (with the store chain), no sessions index."""
    store = SQLiteStore(path)
    await store.append(list(events))
    await store.close()
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("DROP TABLE sessions")
    db.execute("DROP TABLE tool_calls")
    db.execute("PRAGMA user_version = 2")
    db.close()


async def test_an_old_store_gets_its_index_on_open(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    await _schema_2_store(path, session_events("x", 5) + session_events("y", 2, start=5, fail=True))
    # Read-only (no migration): answers from a scan, the same.
    readonly = SQLiteStore(path, read_only=True)
    try:
        await assert_index_matches_scan(readonly)
        assert [i.session_id for i in await readonly.query_sessions(1)] == ["y"]
        old_answer = await readonly.query_sessions()
    finally:
        await readonly.close()

    store = SQLiteStore(path)
    try:
        assert await store.query_sessions() == old_answer
        await assert_index_matches_scan(store)
        await store.append(session_events("x", 1, start=9)[1:])  # more in an old session
        await assert_index_matches_scan(store)
    finally:
        await store.close()
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA user_version").fetchone() == (3,)
        assert db.execute("SELECT COUNT(*) FROM sessions").fetchone() == (2,)
    finally:
        db.close()


async def test_schema_1_store_migrates_in_one_step(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    await _schema_2_store(path, session_events("v1", 3))
    db = sqlite3.connect(path, isolation_level=None)
    # Schema 1 had no store chain column: rebuild the table without it.
    db.executescript(
        """
        DROP TRIGGER events_no_update; DROP TRIGGER events_no_delete;
        CREATE TABLE old AS SELECT position, event_id, session_id, version, event_type,
            timestamp, span_id, parent_span_id, schema_version, payload, prev_hash, hash
            FROM events;
        DROP TABLE events; ALTER TABLE old RENAME TO events;
        PRAGMA user_version = 1;
        """
    )
    db.close()
    store = SQLiteStore(path)
    try:
        await assert_index_matches_scan(store)
    finally:
        await store.close()


# --- the CLI: the same table from the index as from a scan ------------------------------


class PlainStore:
    """A user's store with the five protocol methods only (no sessions index)."""

    def __init__(self, inner: EventStore) -> None:
        self.inner = inner

    async def append(self, events: Sequence[AgentEvent]) -> int:
        return await self.inner.append(events)

    async def get_events(self, *args: Any, **kwargs: Any) -> list[AgentEvent]:
        return await self.inner.get_events(*args, **kwargs)

    async def read_all(self, *args: Any, **kwargs: Any) -> list[AgentEvent]:
        return await self.inner.read_all(*args, **kwargs)

    async def list_sessions(self, limit: int | None = None) -> list[SessionInfo]:
        return await self.inner.list_sessions(limit)

    async def close(self) -> None:
        await self.inner.close()


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"limit": 2},
        {"failed": True},
        {"tool": "summarize"},
        {"model": "gpt-4o"},
        {"status": "open"},
        {"since": "2030-03-17T17:46:50+00:00"},
    ],
)
async def test_cli_sessions_and_stats_read_the_same_from_the_index(
    options: dict[str, Any], tmp_path: Path
) -> None:
    import argparse

    from agent_trace import cli

    store = SQLiteStore(tmp_path / "cli.db")
    try:
        await store.append(
            session_events("a", 6, start=0)
            + session_events("b", 3, start=10, fail=True)
            + session_events("c", 2, start=20)[:-1]
        )
        args = argparse.Namespace(
            **{
                "limit": None,
                "since": None,
                "tool": None,
                "failed": False,
                "model": None,
                "status": None,
                **options,
            }
        )
        since = cli._parse_since(args.since) if args.since else None
        indexed = await cli._indexed_session_rows(args, store, since)
        out = cli.Output(json_mode=True, plain=True)
        scanned, _ = await cli._scanned_session_rows(args, PlainStore(store), out, since)
        assert indexed == scanned
        if not options:
            assert len(indexed) == 3
            a = await cli._indexed_stats(store)
            b = await cli._scanned_stats(PlainStore(store))
            assert a[:3] == b[:3] and a[4] == b[4]
            # Tokens per model alike; cost priced from summed tokens (same prices here).
            assert a[3].keys() == b[3].keys()
            for name in a[3]:
                ma, mb = a[3][name], b[3][name]
                assert (ma.calls, ma.failures, ma.input_tokens, ma.total_tokens) == (
                    mb.calls, mb.failures, mb.input_tokens, mb.total_tokens,
                )  # fmt: skip
                assert (ma.cost is None) == (mb.cost is None)
                if ma.cost is not None:
                    assert ma.cost == pytest.approx(mb.cost)
    finally:
        await store.close()
