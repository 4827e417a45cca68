"""The read side at 1,000,000 events: each figure next to its reference, in one run.

    python benchmarks/bench_read_side.py            # 1M events, 10,000 sessions (~3 min)
    python benchmarks/bench_read_side.py --quick    # 20,000 events, 200 sessions (smoke)
    python benchmarks/bench_read_side.py --db big.db  # keep the 1M store, reuse it next time

The store is built through ``SQLiteStore.append_captured``, the recorder's
own append path (events sealed, hash-chained and verifiable), in batches of
5,000 pre-serialized events: sessions of 100 events shaped like an agent's
(a message, 16 rounds of LLM call -> decision -> tool call with realistic
OpenAI-style responses and tool results, some tool failures, a final
response), 20 sessions in flight at a time, so their events interleave.

Rows (each value and its reference measured side by side in this run):

- ``list_sessions(limit=20)`` vs a raw "20 latest sessions" query (the last
  20 ``session_started`` rows by position, plain ``sqlite3``);
- ``agent-trace sessions --limit 20`` and ``sessions`` vs CLI start-up
  (``agent-trace --version``);
- ``agent-trace stats`` vs CLI start-up + a raw scan of every payload;
  ``agent-trace verify`` (full) vs CLI start-up + a minimal verifier;
  ``agent-trace verify`` (incremental, nothing new) vs CLI start-up;
- ``ProjectionRunner.run_once`` (``SessionSummaries``) per event at 1%, 10%
  and 100% of the store, vs a plain ``rebuild`` of the same view;
- ``verify_store()`` (full) per event vs a minimal verifier (a loop
  recomputing each session's hash chain from the rows), and a second,
  incremental run (nothing new) vs that first run;
- capture of a 2.2 KB OpenAI chat completion vs ``orjson.dumps``;
- ``JSONLStore`` appends vs a plain append + fsync of the same lines, one
  fsync per batch; and 8 tasks appending one event at a time;
- the HTML timeline of a 50,000-event session (500 for scale): file size and
  load time in headless Chromium.

Rows another change will improve (sessions index, stats from it, incremental
verify, capture) are printed as they are. Exits 0 whatever the numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from agent_trace.capture import capture
from agent_trace.events import (
    GENESIS_HASH,
    AgentEvent,
    canonical_from_fields,
    format_timestamp,
    uuid7,
)
from agent_trace.integrity import verify_store
from agent_trace.projections import ProjectionRunner, SessionSummaries, rebuild
from agent_trace.stores import JSONLStore, SQLiteStore
from agent_trace.timeline import render_html

CHROMIUM = "/usr/bin/chromium"
EVENTS_PER_SESSION = 100
IN_FLIGHT = 20  # sessions whose events interleave
BATCH = 5_000
TOOLS = ("web_search", "fetch_page", "calculator", "read_notes")
SORT = orjson.OPT_SORT_KEYS


# --- the store ---------------------------------------------------------------------


def openai_response(i: int, words: int = 185) -> dict[str, Any]:
    """A chat completion as the OpenAI SDK's ``model_dump()`` gives it (~2.2 KB)."""
    text = " ".join(f"token{(i * 7 + k) % 997}" for k in range(words))
    return {
        "id": f"chatcmpl-{i:024d}",
        "object": "chat.completion",
        "created": 1_764_000_000 + i,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": text,
                    "refusal": None,
                    "annotations": [],
                    "audio": None,
                    "function_call": None,
                    "tool_calls": None,
                },
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": 812,
            "completion_tokens": 231,
            "total_tokens": 1043,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        },
        "service_tier": "default",
        "system_fingerprint": "fp_0ba0d124f1",
    }


def session_payloads(n: int) -> list[tuple[str, bytes, str | None, str | None]]:
    """Session ``n``'s 100 events as (type, payload JSON, span, parent)."""
    out: list[tuple[str, bytes, str | None, str | None]] = []

    def add(t: str, payload: dict[str, Any], span: str | None = None, parent: str | None = None):
        out.append((t, orjson.dumps(payload, option=SORT), span, parent))

    add("session_started", {"metadata": {"user_id": f"user-{n % 997}", "agent": "research"}})
    add("user_message_received", {"message": f"Question {n}: how did solar capacity grow?"})
    for step in range(16):
        d, llm, tool = f"{n:08x}d{step:07x}", f"{n:08x}l{step:07x}", f"{n:08x}t{step:07x}"
        name = TOOLS[(n + step) % len(TOOLS)]
        add("llm_started", {"name": "chat", "model": "gpt-4o-mini", "args": {"turn": step}}, llm, d)
        if step % 4 == 3:  # a shorter answer that asks for a tool
            body = {"name": "chat", "model": "gpt-4o-mini", "duration_ms": 412.5,
                    "response_model": "gpt-4o-mini-2024-07-18",
                    "usage": {"input_tokens": 812, "output_tokens": 31, "total_tokens": 843},
                    "response": {"tool": name, "arguments": {"query": f"q{n}-{step}"}}}
        else:
            body = {"name": "chat", "model": "gpt-4o-mini", "duration_ms": 1203.25,
                    "response_model": "gpt-4o-mini-2024-07-18",
                    "usage": {"input_tokens": 812, "output_tokens": 231, "total_tokens": 1043},
                    "response": openai_response(n * 16 + step, words=60)}
        add("llm_responded", body, llm, d)
        add("decision_made", {"decision": "next_action", "choice": {"tool": name},
                              "reasoning": "the answer needs fresh figures",
                              "duration_ms": 1210.0}, d)
        add("tool_started", {"tool": name, "args": {"query": f"solar {n} {step}",
                                                    "max_results": 3}}, tool, d)
        if (n + step) % 23 == 0:
            add("tool_failed", {"tool": name, "error_type": "TimeoutError",
                                "error": "no response after 2.0s", "duration_ms": 2001.0},
                tool, d)
        else:
            result = [{"title": f"Result {k} for {n}", "url": f"https://example.org/{n}/{k}",
                       "snippet": "Installed capacity rose by a quarter year on year. " * 2}
                      for k in range(3)]
            add("tool_executed", {"tool": name, "result": result, "duration_ms": 88.5},
                tool, d)
        add("observation", {"step": step, "note": f"kept {step % 3 + 1} figures"})
    add("response_generated", {"response": "Capacity grew about 25% a year.", "tokens_used": 64})
    add("session_ended", {"status": "ok", "duration_ms": 61_000.0})
    assert len(out) == EVENTS_PER_SESSION
    return out


def captured_stream(sessions: int, first: int = 0) -> Iterator[tuple[Any, ...]]:
    """Captured tuples of ``sessions`` sessions, ``IN_FLIGHT`` at a time interleaved."""
    t = 1_764_000_000_000_000_000 + first * 10_000_000_000
    for group in range(first, first + sessions, IN_FLIGHT):
        members = range(group, min(group + IN_FLIGHT, first + sessions))
        plans = [(f"session-{n:06d}", session_payloads(n)) for n in members]
        for k in range(EVENTS_PER_SESSION):
            for sid, plan in plans:
                etype, pj, span, parent = plan[k]
                t += 1_000_000  # a millisecond apart
                yield (uuid7(), sid, etype, format_timestamp(t), pj, span, parent, 1)


async def build_store(path: Path, sessions: int) -> float:
    """Fill a new SQLite store; seconds taken."""
    store = SQLiteStore(path)
    start = time.perf_counter()
    # One batch is written (on the store's thread) while the next is generated.
    pending: asyncio.Future[int] | None = None
    batch: list[tuple[Any, ...]] = []
    for item in captured_stream(sessions):
        batch.append(item)
        if len(batch) == BATCH:
            if pending is not None:
                await pending
            pending = asyncio.ensure_future(store.append_captured(batch))
            batch = []
    if pending is not None:
        await pending
    if batch:
        await store.append_captured(batch)
    await store.close()
    return time.perf_counter() - start


def count_events(path: Path) -> int:
    db = sqlite3.connect(path)
    try:
        return int(db.execute("SELECT COUNT(*) FROM events").fetchone()[0])
    finally:
        db.close()


# --- measuring ---------------------------------------------------------------------


@dataclass
class Row:
    what: str
    value: str
    reference: str
    ratio: str
    target: str = ""


def fmt_s(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds * 1e6:.2f} us"


def median_time(fn: Callable[[], Any], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


async def amedian_time(fn: Callable[[], Any], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        await fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "agent_trace.cli", *args]


def run_cli(args: list[str], runs: int) -> float:
    env = {k: v for k, v in os.environ.items() if k != "AGENT_TRACE_STORE"}

    def once() -> None:
        subprocess.run(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=True)

    return median_time(once, runs)


def raw_latest_sessions(path: Path) -> Callable[[], list[Any]]:
    db = sqlite3.connect(path)
    sql = (
        "SELECT session_id, timestamp, payload FROM events "
        "WHERE event_type = 'session_started' ORDER BY position DESC LIMIT 20"
    )
    return lambda: db.execute(sql).fetchall()


def raw_payload_scan(path: Path) -> float:
    db = sqlite3.connect(path)
    try:
        start = time.perf_counter()
        n = 0
        for (payload,) in db.execute("SELECT payload FROM events"):
            n += len(payload)
        return time.perf_counter() - start
    finally:
        db.close()


def minimal_verify(path: Path) -> tuple[float, int]:
    """Recompute every session's chain from the rows in one pass; seconds, events."""
    db = sqlite3.connect(path)
    try:
        start = time.perf_counter()
        heads: dict[str, tuple[int, str]] = {}
        n = 0
        sha256 = hashlib.sha256
        rows = db.execute(
            "SELECT event_id, event_type, parent_span_id, payload, prev_hash, schema_version, "
            "session_id, span_id, timestamp, version, hash FROM events ORDER BY position"
        )
        for eid, etype, parent, payload, prev, sv, sid, span, ts, version, digest in rows:
            head_version, head_hash = heads.get(sid, (0, GENESIS_HASH))
            canonical = canonical_from_fields(
                eid, etype, parent, payload.encode(), prev, sv, sid, span, ts, version
            )
            if (
                version != head_version + 1
                or prev != head_hash
                or sha256(prev.encode() + canonical).hexdigest() != digest
            ):
                raise AssertionError(f"chain broken at {sid} v{version}")
            heads[sid] = (version, digest)
            n += 1
        return time.perf_counter() - start, n
    finally:
        db.close()


async def runner_row(path: Path, label: str) -> tuple[float, float, int]:
    """run_once and rebuild of SessionSummaries on one store: us/event each, events."""
    store = SQLiteStore(path)
    try:
        n = count_events(path)
        await store.list_sessions(limit=1)  # opened outside the timing, as for rebuild
        gc.collect()
        runner = ProjectionRunner(store, SessionSummaries(), f"bench-{uuid7()}")
        start = time.perf_counter()
        applied = await runner.run_once()
        run_once = time.perf_counter() - start
        assert applied == n, (applied, n)
        gc.collect()
        start = time.perf_counter()
        await rebuild(SessionSummaries(), store)
        scratch = time.perf_counter() - start
    finally:
        await store.close()
    return run_once / n * 1e6, scratch / n * 1e6, n


# --- JSONL ---------------------------------------------------------------------------


async def jsonl_rows(tmp: Path, batches: int, batch: int, writers: int, per_writer: int):
    """(store s, reference s) for batched appends, then for one-event appends from tasks."""
    items = list(captured_stream(max(1, batches * batch // EVENTS_PER_SESSION) + 1, 500_000))
    items = items[: batches * batch]
    chunks = [items[i : i + batch] for i in range(0, len(items), batch)]
    store = JSONLStore(tmp / "jsonl-batches")
    await store.list_sessions(limit=1)
    start = time.perf_counter()
    for chunk in chunks:
        await store.append_captured(chunk)
    batched = time.perf_counter() - start
    await store.close()
    lines = (tmp / "jsonl-batches" / "events.jsonl").read_bytes().splitlines(keepends=True)
    line_chunks = [b"".join(lines[i : i + batch]) for i in range(0, len(lines), batch)]
    fd = os.open(tmp / "plain.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        start = time.perf_counter()
        for data in line_chunks:
            os.write(fd, data)
            os.fsync(fd)
        plain = time.perf_counter() - start
    finally:
        os.close(fd)

    # Concurrent single-event appends: what a recorder with several writers does.
    singles = list(captured_stream(writers * per_writer // EVENTS_PER_SESSION + 1, 600_000))
    store = JSONLStore(tmp / "jsonl-singles")
    await store.list_sessions(limit=1)

    async def writer(k: int) -> None:
        for j in range(per_writer):
            await store.append_captured([singles[k * per_writer + j]])

    start = time.perf_counter()
    await asyncio.gather(*(writer(k) for k in range(writers)))
    concurrent = time.perf_counter() - start
    await store.close()
    single_lines = (tmp / "jsonl-singles" / "events.jsonl").read_bytes().splitlines(keepends=True)
    fd = os.open(tmp / "plain-singles.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        start = time.perf_counter()
        for line in single_lines:
            os.write(fd, line)
            os.fsync(fd)
        plain_singles = time.perf_counter() - start
    finally:
        os.close(fd)
    return batched, plain, len(items), concurrent, plain_singles, len(single_lines)


# --- HTML timeline -------------------------------------------------------------------


def long_session(events: int) -> list[AgentEvent]:
    """One session of about ``events`` events, sealed enough for the page (versions)."""
    out: list[AgentEvent] = []
    for n, item in enumerate(captured_stream(events // EVENTS_PER_SESSION + 1, 900_000), 1):
        if n > events:
            break
        eid, _sid, etype, ts, pj, span, parent, sv = item
        out.append(AgentEvent(eid, "long", etype, ts, orjson.loads(pj), n, n, span, parent, sv))
    return out


def page_load(path: Path, runs: int) -> float | None:
    """Median seconds from navigation to the page ready, in headless Chromium."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None
    if not Path(CHROMIUM).exists():
        return None
    times = []
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            for _ in range(runs):
                page = browser.new_page(viewport={"width": 1400, "height": 900})
                start = time.perf_counter()
                page.goto(path.as_uri(), wait_until="load", timeout=120_000)
                page.wait_for_function("window.agentTrace")  # set once drawn
                times.append(time.perf_counter() - start)
                page.close()
        finally:
            browser.close()
    return statistics.median(times)


# --- main --------------------------------------------------------------------------


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20,000 events (a smoke run)")
    parser.add_argument("--db", type=Path, help="keep the big store here and reuse it")
    args = parser.parse_args()
    sessions = 200 if args.quick else 10_000
    runs = 3 if args.quick else 5
    timeline_sizes = (500, 2_000) if args.quick else (500, 50_000)

    tmp = Path(tempfile.mkdtemp(prefix="bench-read-side-"))
    rows: list[Row] = []
    try:
        big = args.db or tmp / "big.db"
        if big.exists() and count_events(big) == sessions * EVENTS_PER_SESSION:
            print(f"reusing {big}")
        else:
            if big.exists():
                raise SystemExit(f"{big} exists and is not this benchmark's store: remove it")
            built = await build_store(big, sessions)
            total = sessions * EVENTS_PER_SESSION
            print(f"built {total:,} events ({sessions:,} sessions) in {built:.1f} s "
                  f"({total / built:,.0f} events/s), {big.stat().st_size / 1e6:,.0f} MB")
        n = count_events(big)
        url = f"sqlite:///{big}"

        # list_sessions(limit=20) vs the raw query
        store = SQLiteStore(big)
        await store.list_sessions(limit=1)
        api = await amedian_time(lambda: store.list_sessions(limit=20), runs)
        await store.close()
        raw = median_time(raw_latest_sessions(big), runs * 3)
        rows.append(Row("list_sessions(limit=20)", fmt_s(api), f"raw 20 latest: {fmt_s(raw)}",
                        f"{api / raw:.0f}x", "<= 10x"))

        # CLI
        startup = run_cli(cli("--version"), runs)
        limit20 = run_cli(cli("--store", url, "--plain", "sessions", "--limit", "20"), runs)
        rows.append(Row("agent-trace sessions --limit 20", fmt_s(limit20),
                        f"CLI start-up: {fmt_s(startup)}", f"{limit20 / startup:.1f}x", "<= 2.5x"))
        every = run_cli(cli("--store", url, "--plain", "sessions"), 1)
        rows.append(Row("agent-trace sessions (no limit)", fmt_s(every),
                        f"CLI start-up: {fmt_s(startup)}", f"{every / startup:.1f}x"))
        scan = raw_payload_scan(big)
        stats = run_cli(cli("--store", url, "--plain", "stats"), 1)
        rows.append(Row("agent-trace stats", fmt_s(stats),
                        f"start-up + raw payload scan: {fmt_s(startup + scan)}",
                        f"{stats / (startup + scan):.2f}x", "<= 0.5x"))
        minimal, checked = minimal_verify(big)
        assert checked == n
        verify_cli = run_cli(cli("--store", url, "--plain", "verify"), 1)
        rows.append(Row("agent-trace verify (full)", fmt_s(verify_cli),
                        f"start-up + minimal verifier: {fmt_s(startup + minimal)}",
                        f"{verify_cli / (startup + minimal):.1f}x"))

        # verify_store per event vs the minimal verifier (a full run, which
        # also remembers the verified heads)
        start = time.perf_counter()
        result = await verify_store(url)
        api_verify = time.perf_counter() - start
        assert result.ok and result.events_checked == n, result
        rows.append(Row("verify_store per event (full)", fmt_s(api_verify / n),
                        f"minimal verifier: {fmt_s(minimal / n)}",
                        f"{api_verify / minimal:.1f}x"))
        # the second run: only the remembered head is re-checked (nothing new)
        again = []
        for _ in range(runs):
            start = time.perf_counter()
            second = await verify_store(url, incremental=True)
            again.append(time.perf_counter() - start)
            assert second.ok and second.resumed_after == result.store_head[0], second
        again.sort()
        rows.append(Row(f"verify_store second run, {n:,} events, nothing new",
                        f"{fmt_s(again[0])}-{fmt_s(again[-1])}",
                        f"first (full) run: {fmt_s(api_verify)}",
                        f"{again[len(again) // 2] / api_verify:.4f}x"))
        agent_verify = run_cli(cli("--store", url, "--plain", "verify", "--incremental"), runs)
        rows.append(Row("agent-trace verify --incremental, nothing new", fmt_s(agent_verify),
                        f"CLI start-up: {fmt_s(startup)}", f"{agent_verify / startup:.1f}x"))

        # ProjectionRunner.run_once at 1%, 10% and 100% of the store
        per_event: dict[int, float] = {}
        for fraction in (100, 10, 1):
            part_sessions = sessions // fraction
            if fraction == 1:
                path = big
            else:
                path = tmp / f"part-{fraction}.db"
                await build_store(path, part_sessions)
            us, scratch_us, events = await runner_row(path, f"1/{fraction}")
            per_event[events] = us
            rows.append(Row(f"run_once per event at {events:,}", f"{us:.2f} us",
                            f"rebuild: {scratch_us:.2f} us", f"{us / scratch_us:.2f}x"))
        sizes = sorted(per_event)
        rows.append(Row(f"run_once per event, {sizes[-1]:,} vs {sizes[-2]:,}",
                        f"{per_event[sizes[-1]]:.2f} us", f"{per_event[sizes[-2]]:.2f} us",
                        f"{per_event[sizes[-1]] / per_event[sizes[-2]]:.2f}x", "<= 1.5x"))

        # capture of a 2.2 KB OpenAI response vs orjson.dumps
        response = openai_response(1)
        size = len(orjson.dumps(response))
        number = 20_000 if args.quick else 100_000
        cap = min(timeit.repeat(lambda: capture(response), number=number, repeat=5)) / number
        plain = min(timeit.repeat(lambda: orjson.dumps(response, option=SORT),
                                  number=number, repeat=5)) / number
        rows.append(Row(f"capture of a {size / 1000:.1f} KB OpenAI response", fmt_s(cap),
                        f"orjson.dumps: {fmt_s(plain)}", f"{cap / plain:.1f}x"))

        # JSONL
        batches, batch = (20, 200) if args.quick else (100, 500)
        writers, per_writer = (4, 25) if args.quick else (8, 100)
        jb, jp, jn, jc, jps, jsn = await jsonl_rows(tmp, batches, batch, writers, per_writer)
        rows.append(Row(f"JSONLStore, batches of {batch}", f"{jn / jb:,.0f} ev/s",
                        f"append+fsync: {jn / jp:,.0f} ev/s", f"{jp / jb:.2f}x"))
        rows.append(Row(f"JSONLStore, {writers} tasks x 1 event", f"{jsn / jc:,.0f} ev/s",
                        f"append+fsync each: {jsn / jps:,.0f} ev/s", f"{jps / jc:.2f}x"))

        # HTML timeline
        loads: dict[int, tuple[float | None, int]] = {}
        for size_events in timeline_sizes:
            page = tmp / f"timeline-{size_events}.html"
            start = time.perf_counter()
            page.write_text(render_html(long_session(size_events)))
            # Playwright's sync API refuses to run on an event loop's thread.
            load = await asyncio.to_thread(page_load, page, 3 if size_events < 10_000 else 2)
            loads[size_events] = (load, page.stat().st_size)
        small, large = timeline_sizes
        (t_small, b_small), (t_large, b_large) = loads[small], loads[large]
        if t_small is None or t_large is None:
            rows.append(Row(f"HTML timeline, {large:,} events", f"{b_large / 1e6:.1f} MB",
                            "no Chromium/Playwright: load not measured", ""))
        else:
            rows.append(Row(f"HTML timeline, {large:,} events",
                            f"{fmt_s(t_large)}, {b_large / 1e6:.1f} MB",
                            f"{small:,} events: {fmt_s(t_small)}, {b_small / 1e6:.2f} MB",
                            f"{t_large / t_small:.1f}x"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"\n{n:,} events, {sessions:,} sessions; values and references measured in this run")
    widths = [max(len(getattr(r, f)) for r in rows) for f in ("what", "value", "reference")]
    header = ("row", "value", "reference", "ratio", "target")
    print(f"{header[0]:<{widths[0]}}  {header[1]:>{widths[1]}}  {header[2]:<{widths[2]}}  "
          f"{header[3]:>7}  {header[4]}")
    for r in rows:
        print(f"{r.what:<{widths[0]}}  {r.value:>{widths[1]}}  {r.reference:<{widths[2]}}  "
              f"{r.ratio:>7}  {r.target}")


if __name__ == "__main__":
    asyncio.run(main())
