"""What recording costs: per-call overhead, durable throughput and memory, side by side.

    python benchmarks/bench_recording.py                # full run, about a minute
    python benchmarks/bench_recording.py --quick        # small sizes (smoke test)
    python benchmarks/bench_recording.py --only call    # one part: call | throughput | memory

Three parts, each in a fresh interpreter so one part's buffers, threads and
garbage never weigh on another:

1. call: a recorded no-op async tool (2 events per call, SQLite store) against
   the bare call and against the same function inside an OpenTelemetry SDK
   span (BatchSpanProcessor with its defaults, exporter that drops). Best of
   several repeats; the flush that follows is timed on its own, and an
   amortized row adds it back (against OTel plus its ``force_flush``). Note the
   OTel SDK drops spans when its 2,048-span queue is full; the recorder waits.
2. throughput: events/s from the first ``at.emit`` to the end of ``flush``,
   against a store that commits each event on its own and against raw
   ``executemany`` of the same rows into the same schema in one transaction.
   The recorder runs with its defaults, so the SQLite writer process starts
   once the writer falls behind (during the 20,000-event warm-up, as in any
   sustained run); ``AGENT_TRACE_WRITER_PROCESS=never`` measures the
   in-process writer.
3. memory: peak RSS growth while 1,000,000 events are recorded and flushed.

It prints a table and exits 0 whatever the numbers: a benchmark is not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

PARTS = ("call", "throughput", "memory")

# Sizes per part: (full, quick).
SIZES = {
    "calls": (50_000, 2_000),
    "repeats": (5, 2),
    "events": (200_000, 10_000),
    "naive_events": (2_000, 100),
    "memory_events": (1_000_000, 20_000),
}

# Journal and sync settings for the raw executemany reference.
RAW_PRAGMAS = ("PRAGMA journal_mode=WAL", "PRAGMA synchronous=NORMAL")


def size(name: str, quick: bool) -> int:
    full, small = SIZES[name]
    return small if quick else full


# --- part 1: per-call cost ---------------------------------------------------


async def _time_calls(fn, n: int) -> float:
    """Seconds for ``n`` awaited calls; yields to the loop now and then, as agents do."""
    started = time.perf_counter()
    for i in range(n):
        await fn(i)
        if i % 1000 == 999:
            await asyncio.sleep(0)
    return time.perf_counter() - started


def _otel_tracer():
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    class DropExporter(SpanExporter):
        def export(self, spans):
            return SpanExportResult.SUCCESS

        def shutdown(self):
            pass

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(DropExporter()))
    return provider, provider.get_tracer("bench")


async def bench_call(quick: bool, workdir: Path) -> dict:
    import agent_trace as at

    calls, repeats = size("calls", quick), size("repeats", quick)
    at.configure(store=f"sqlite:///{workdir / 'call.db'}")
    provider, tracer = _otel_tracer()

    async def bare(x):
        return x

    @at.record_tool
    async def noop(x):
        return x

    async def otel_noop(x):
        with tracer.start_as_current_span("execute_tool noop") as span:
            span.set_attribute("gen_ai.tool.name", "noop")
            return x

    best = {"bare": float("inf"), "otel": float("inf"), "recorded": float("inf")}
    flushes, with_flush, otel_with_flush = [], [], []
    async with at.session("bench-call"):
        # Warm up every path (store opened, writer thread started, caches filled).
        for fn in (bare, otel_noop, noop):
            await _time_calls(fn, min(calls, 1000))
        await at.flush()
        for _ in range(repeats):
            best["bare"] = min(best["bare"], await _time_calls(bare, calls))
            otel = await _time_calls(otel_noop, calls)
            best["otel"] = min(best["otel"], otel)
            started = time.perf_counter()
            provider.force_flush()
            otel_with_flush.append(otel + time.perf_counter() - started)
            recorded = await _time_calls(noop, calls)
            best["recorded"] = min(best["recorded"], recorded)
            started = time.perf_counter()
            await at.flush()
            flushes.append(time.perf_counter() - started)
            with_flush.append(recorded + flushes[-1])
    async with at.session("bench-llm"):
        llm = await _bench_llm(at, tracer, provider, calls // 5, repeats)
    provider.shutdown()
    return {
        "llm": llm,
        "calls": calls,
        "repeats": repeats,
        "us": {name: seconds / calls * 1e6 for name, seconds in best.items()},
        "flush_ms": min(flushes) * 1e3,
        "with_flush_us": min(with_flush) / calls * 1e6,
        "otel_with_flush_us": min(otel_with_flush) / calls * 1e6,
        "stats": at.stats(),
    }


def _chat_completion():
    """A ~2.2 KB OpenAI chat completion (the SDK's pydantic object) and its prompt."""
    from openai.types.chat import ChatCompletion

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_read_side import openai_response

    messages = [
        {"role": "system", "content": "You are a helpful research assistant."},
        {"role": "user", "content": "Summarise the three papers in my notes, briefly."},
    ]
    return ChatCompletion.model_validate(openai_response(1)), messages


async def _bench_llm(at, tracer, provider, calls: int, repeats: int) -> dict:
    """``@record_llm`` returning a realistic response vs an OTel span with the same content:
    the prompt and the whole response as JSON (``model_dump_json``, pydantic's own
    serializer), plus the usual GenAI attributes. Caller side: flushes not timed."""
    import orjson

    response, messages = _chat_completion()
    model = response.model

    async def bare(msgs):
        return response

    recorded = at.record_llm(model=model)(bare)

    async def otel(msgs):
        with tracer.start_as_current_span(f"chat {model}") as span:
            span.set_attribute("gen_ai.operation.name", "chat")
            span.set_attribute("gen_ai.request.model", model)
            span.set_attribute("gen_ai.input.messages", orjson.dumps(msgs).decode())
            result = await bare(msgs)
            span.set_attribute("gen_ai.response.id", result.id)
            span.set_attribute("gen_ai.response.model", result.model)
            span.set_attribute("gen_ai.usage.input_tokens", result.usage.prompt_tokens)
            span.set_attribute("gen_ai.usage.output_tokens", result.usage.completion_tokens)
            span.set_attribute("gen_ai.output", result.model_dump_json())
            return result

    async def time_calls(fn) -> float:
        started = time.perf_counter()
        for i in range(calls):
            await fn(messages)
            if i % 1000 == 999:
                await asyncio.sleep(0)
        return time.perf_counter() - started

    for fn in (bare, otel, recorded):
        await time_calls(fn)
    await at.flush()
    best = {"bare": float("inf"), "otel": float("inf"), "recorded": float("inf")}
    ratios = []
    for _ in range(repeats):
        bare_s = await time_calls(bare)
        otel_s = await time_calls(otel)
        provider.force_flush()
        recorded_s = await time_calls(recorded)
        await at.flush()
        ratios.append(recorded_s / otel_s)
        best["bare"] = min(best["bare"], bare_s)
        best["otel"] = min(best["otel"], otel_s)
        best["recorded"] = min(best["recorded"], recorded_s)
    return {
        "calls": calls,
        "size": len(response.model_dump_json()),
        "us": {name: seconds / calls * 1e6 for name, seconds in best.items()},
        "ratios": ratios,
    }


# --- part 2: durable throughput ----------------------------------------------


def _payload(session: int, step: int) -> dict:
    """A small, realistic event payload (a tool call's outcome)."""
    return {
        "tool": "web_search",
        "args": {"query": f"solar capacity {2015 + step % 9}", "max_results": 3},
        "result": {"hits": step % 5, "top": f"https://example.org/{session}/{step}"},
        "duration_ms": 3.2,
    }


async def _emit_events(at, n: int, sessions: int, prefix: str) -> None:
    """``n`` events over ``sessions`` concurrent sessions, ending with a flush."""
    per_session = n // sessions

    async def one(s: int) -> None:
        async with at.session(f"{prefix}-{s:03d}", user_id=f"user-{s}"):
            for step in range(per_session):
                at.emit("tool_observed", _payload(s, step))
                if step % 500 == 499:
                    await asyncio.sleep(0)

    await asyncio.gather(*(one(s) for s in range(sessions)))
    await at.flush()


def _copy_schema(src: Path, dst: Path) -> list[str]:
    """Create ``src``'s tables, indexes and triggers in a new database ``dst``."""
    with sqlite3.connect(src) as conn:
        ddl = [
            sql
            for (sql,) in conn.execute(
                "SELECT sql FROM sqlite_master WHERE sql IS NOT NULL "
                "AND name NOT LIKE 'sqlite_%' ORDER BY type = 'trigger', rowid"
            )
        ]
    out = sqlite3.connect(dst)
    for sql in ddl:
        out.execute(sql)
    out.commit()
    out.close()
    return ddl


def _library_pragmas(db: Path) -> dict[str, str]:
    """The journal mode the store left on the file (synchronous is per connection)."""
    with sqlite3.connect(db) as conn:
        return {"journal_mode": conn.execute("PRAGMA journal_mode").fetchone()[0]}


def _raw_executemany(db: Path, table: str, rows: list[tuple]) -> float:
    conn = sqlite3.connect(db, isolation_level=None)
    for pragma in RAW_PRAGMAS:
        conn.execute(pragma)
    marks = ",".join("?" * len(rows[0]))
    started = time.perf_counter()
    conn.execute("BEGIN")
    conn.executemany(f"INSERT INTO {table} VALUES ({marks})", rows)
    conn.execute("COMMIT")
    elapsed = time.perf_counter() - started
    conn.close()
    return elapsed


def _per_event_commit(db: Path, table: str, rows: list[tuple], pragmas: tuple[str, ...]) -> float:
    """The naive store: one INSERT and one COMMIT per event."""
    conn = sqlite3.connect(db, isolation_level=None)
    for pragma in pragmas:
        conn.execute(pragma)
    marks = ",".join("?" * len(rows[0]))
    sql = f"INSERT INTO {table} VALUES ({marks})"
    started = time.perf_counter()
    for row in rows:
        conn.execute("BEGIN")
        conn.execute(sql, row)
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - started
    conn.close()
    return elapsed


async def bench_throughput(quick: bool, workdir: Path) -> dict:
    import agent_trace as at

    n, naive_n = size("events", quick), size("naive_events", quick)
    db = workdir / "throughput.db"
    at.configure(store=f"sqlite:///{db}")
    # Opens the store and starts the writer thread; enough events that, as in
    # any sustained run, the writer falls behind and its helper process is up.
    await _emit_events(at, 200 if quick else 20_000, 2, "warmup")

    started = time.perf_counter()
    await _emit_events(at, n, 20, "tp")
    agent_trace_s = time.perf_counter() - started

    # The same rows, as the store wrote them, replayed into the same schema.
    table = "events"
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            f"SELECT * FROM {table} WHERE session_id LIKE 'tp-%' ORDER BY rowid"
        ).fetchall()
    raw_dbs = [workdir / f"raw{i}.db" for i in range(3)]
    naive_db, defaults_db = workdir / "naive.db", workdir / "defaults.db"
    for target in (*raw_dbs, naive_db, defaults_db):
        _copy_schema(db, target)
    raw_s = min(_raw_executemany(raw_db, table, rows) for raw_db in raw_dbs)  # best of 3
    naive_s = _per_event_commit(naive_db, table, rows[:naive_n], RAW_PRAGMAS)
    defaults_s = _per_event_commit(defaults_db, table, rows[:naive_n], ())
    return {
        "events": len(rows),
        "naive_events": naive_n,
        "agent_trace": len(rows) / agent_trace_s,
        "raw": len(rows) / raw_s,
        "naive_wal": naive_n / naive_s,
        "naive_defaults": naive_n / defaults_s,
        "library_pragmas": _library_pragmas(db),
        "stats": at.stats(),
    }


# --- part 3: memory ------------------------------------------------------------


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _rss_now_kb() -> int:
    # Without /proc, ru_maxrss (KiB on Linux, bytes on macOS) is the best we have.
    now = _status_kb("VmRSS")
    if now is not None:
        return now
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak


def _rss_peak_kb() -> int:
    peak = _status_kb("VmHWM")
    if peak is not None:
        return peak
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak


async def bench_memory(quick: bool, workdir: Path) -> dict:
    import agent_trace as at

    n = size("memory_events", quick)
    at.configure(store=f"sqlite:///{workdir / 'memory.db'}")
    await _emit_events(at, 1_000, 2, "warmup")
    before = _rss_now_kb()
    started = time.perf_counter()
    await _emit_events(at, n, 100, "mem")
    seconds = time.perf_counter() - started
    peak = _rss_peak_kb()
    return {
        "events": n,
        "rss_before_mb": before / 1024,
        "peak_mb": peak / 1024,
        "growth_mb": max(0, peak - before) / 1024,
        "events_per_s": n / seconds,
        "stats": at.stats(),
    }


# --- running parts in fresh interpreters and printing the table ---------------

BENCHES = {"call": bench_call, "throughput": bench_throughput, "memory": bench_memory}


def run_child(part: str, quick: bool) -> None:
    """Entry point of one part's interpreter: measure, print one JSON line."""
    with tempfile.TemporaryDirectory(prefix=f"bench-{part}-") as tmp:
        result = asyncio.run(BENCHES[part](quick, Path(tmp)))
        print(json.dumps(result, default=str))


def measure(part: str, quick: bool) -> dict | None:
    args = [sys.executable, __file__, "--child", part] + (["--quick"] if quick else [])
    proc = subprocess.run(args, capture_output=True, text=True)
    if proc.returncode != 0 or not proc.stdout.strip():
        print(f"[{part}] failed (exit {proc.returncode}):\n{proc.stderr.strip()}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


@dataclass
class Row:
    metric: str
    value: str
    reference: str = ""
    ratio: str = ""
    target: str = ""
    result: str = ""


def check(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def call_rows(r: dict) -> list[Row]:
    us = r["us"]
    recorded, otel, bare = us["recorded"], us["otel"], us["bare"]
    n = f"{r['calls']:,} calls, best of {r['repeats']}"
    return [
        Row(f"call: bare async call ({n})", f"{bare:.2f} µs"),
        Row("call: OpenTelemetry SDK span", f"{otel:.2f} µs"),
        Row("call: recorded tool, 2 events", f"{recorded:.2f} µs", "", "", "< 8 µs",
            check(recorded < 8)),
        Row("call: recorded vs OpenTelemetry", f"{recorded:.2f} µs", f"{otel:.2f} µs (OTel)",
            f"{recorded / otel:.2f}x", "<= 0.33x", check(recorded / otel <= 1 / 3)),
        Row("call: recording overhead", f"{recorded - bare:.2f} µs", f"{bare:.2f} µs (bare)"),
        Row(f"call: flush after {r['calls'] * 2:,} events", f"{r['flush_ms']:.1f} ms"),
        Row("call: recorded tool incl. flush, amortized", f"{r['with_flush_us']:.2f} µs",
            f"{r['otel_with_flush_us']:.2f} µs (OTel incl. flush)",
            f"{r['with_flush_us'] / r['otel_with_flush_us']:.2f}x"),
        *llm_rows(r["llm"]),
    ]  # fmt: skip


def llm_rows(r: dict) -> list[Row]:
    us = r["us"]
    recorded, otel = us["recorded"] - us["bare"], us["otel"] - us["bare"]
    ratio = recorded / otel
    spread = f"{min(r['ratios']):.2f}-{max(r['ratios']):.2f}x per repeat"
    return [
        Row(f"llm: @record_llm, {r['size'] / 1000:.1f} KB OpenAI response, caller side "
            f"({r['calls']:,} calls)", f"{recorded:.2f} µs", f"{otel:.2f} µs (OTel span, "
            "same content)", f"{ratio:.2f}x ({spread})", "<= 0.7x", check(ratio <= 0.7)),
    ]  # fmt: skip


def throughput_rows(r: dict) -> list[Row]:
    ours, raw = r["agent_trace"], r["raw"]
    naive, defaults = r["naive_wal"], r["naive_defaults"]
    journal = r["library_pragmas"]["journal_mode"]
    writer = "writer process" if r["stats"].get("writer_pid") else "in-process writer"
    return [
        Row(f"throughput: emit + flush, {r['events']:,} events (journal={journal}, {writer})",
            f"{ours:,.0f} ev/s", "", "", ">= 100,000 ev/s", check(ours >= 100_000)),
        Row(f"throughput: vs per-event commit, WAL+NORMAL ({r['naive_events']:,} events)",
            f"{ours:,.0f} ev/s", f"{naive:,.0f} ev/s", f"{ours / naive:,.1f}x", ">= 100x",
            check(ours / naive >= 100)),
        Row("throughput: vs per-event commit, sqlite3 defaults (fsync each)",
            f"{ours:,.0f} ev/s", f"{defaults:,.0f} ev/s", f"{ours / defaults:,.1f}x", ">= 100x",
            check(ours / defaults >= 100)),
        Row("throughput: vs raw executemany, one transaction (best of 3)",
            f"{ours:,.0f} ev/s", f"{raw:,.0f} ev/s", f"{ours / raw:.2f}x", ">= 0.7x",
            check(ours / raw >= 0.7)),
    ]  # fmt: skip


def memory_rows(r: dict) -> list[Row]:
    growth = r["growth_mb"]
    return [
        Row(f"memory: peak RSS growth, {r['events']:,} events",
            f"{growth:.1f} MB", f"{r['rss_before_mb']:.1f} MB before", "", "< 150 MB",
            check(growth < 150)),
        Row("memory: emit + flush rate during that run", f"{r['events_per_s']:,.0f} ev/s"),
    ]  # fmt: skip


ROWS = {"call": call_rows, "throughput": throughput_rows, "memory": memory_rows}
HEADERS = ("metric", "value", "reference", "ratio", "target", "result")


def print_table(rows: list[Row]) -> None:
    cells = [HEADERS] + [
        (r.metric, r.value, r.reference, r.ratio, r.target, r.result) for r in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(HEADERS))]
    for i, row in enumerate(cells):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    parser.add_argument("--only", choices=PARTS, help="run one part")
    parser.add_argument("--child", choices=PARTS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        run_child(args.child, args.quick)
        return 0

    import agent_trace

    print(
        f"agent_trace {getattr(agent_trace, '__version__', '?')}, Python "
        f"{sys.version.split()[0]}, {os.cpu_count()} CPUs, {sys.platform}"
        f"{' (quick sizes)' if args.quick else ''}\n"
    )
    rows: list[Row] = []
    for part in [args.only] if args.only else PARTS:
        result = measure(part, args.quick)
        if result is None:
            rows.append(Row(f"{part}: failed (see stderr)", "-", result="ERROR"))
        else:
            rows.extend(ROWS[part](result))
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
