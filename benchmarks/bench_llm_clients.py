"""What recording an OpenAI call costs the caller, side by side with Logfire.

    python benchmarks/bench_llm_clients.py              # full run, about 5 minutes
    python benchmarks/bench_llm_clients.py --quick      # tiny sizes (smoke test)
    python benchmarks/bench_llm_clients.py --rounds 5   # more alternating rounds

The call: ``client.chat.completions.create`` on the real ``openai`` SDK, whose
HTTP client has an ``httpx2.MockTransport`` answering from memory (no network):
a ~2 KB chat completion, or the same answer streamed as 30 server-sent events.
Two sides, each in its own fresh interpreter:

- agent_trace: ``agent_trace.instrument_openai(client)``, the calls inside one
  ``at.session``, the default SQLite store in a temporary directory, default
  settings (``durability="batched"``); 2 events per call;
- logfire: ``logfire.instrument_openai(client)`` after ``logfire.configure(
  send_to_logfire=False, console=False)`` with a ``BatchSpanProcessor`` whose
  exporter encodes each batch as OTLP protobuf (what Logfire's exporter does
  before it sends) and drops the bytes. Offline, prints nothing.

Each interpreter also holds a bare client (same fake server, not
instrumented) and times blocks of calls on the two clients in turn, bare and
instrumented, flushing after each block (timed on its own). On a shared
machine the speed of the bare call drifts by tens of percent from one minute
to the next, more than the overhead measured; pairing blocks a fraction of a
second apart keeps that drift out of the difference. Instrumenting one
client runs the same wrapper per call as instrumenting them all.

Overhead = instrumented - bare, per call, in one interpreter, each the mean
of its fastest quarter of blocks (best-of, without letting one lucky block
decide). A round runs both sides once per shape, in an order that
alternates; the table shows the median over rounds and their range, and
ratios of medians with the range of the per-round ratios. Rows: wall time;
wall time plus the flush (events durable in SQLite; for Logfire
``force_flush()``, spans exported), amortized; CPU time of the whole process
(``time.process_time()``: caller plus background threads, our writer or the
OTel batch worker, flush included), which other programs on a busy machine
disturb far less than wall time; and the caller thread's own CPU
(``time.thread_time()``). The issue's target (<= 0.5x Logfire) is checked
for ``create`` on wall time and on process CPU.

Shapes: ``create`` (sync, not streamed: the issue's target), ``stream``
(sync, ``stream=True``, consumed to the end), ``async`` (``AsyncOpenAI``).

It prints a table and exits 0 whatever the numbers: a benchmark is not a
test. Without logfire installed its rows read "skipped: pip install logfire".
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SIDES = ("agent_trace", "logfire")
SHAPES = ("create", "stream", "async")
TARGET = 0.5  # agent_trace overhead / Logfire overhead, non-streaming create

# Sizes: (full, quick). Calls per block; a streamed call costs about three plain ones.
SIZES = {
    "calls": (50, 10),
    "stream_calls": (20, 5),
    "pairs": (12, 2),  # bare + instrumented blocks per interpreter
    "warmup": (50, 5),
    "rounds": (3, 1),
}

MODEL = "gpt-4o"
MESSAGES = [
    {"role": "system", "content": "You are a concise travel assistant."},
    {"role": "user", "content": "Plan one day in Paris: museums, lunch, a walk."},
]
ANSWER = (
    "Morning: the Louvre at opening time, Denon wing first for the Mona Lisa, "
    "then the Richelieu wing while the crowds build. Lunch: a bistro in the "
    "Marais, falafel on rue des Rosiers if you want it quick. Afternoon: walk "
    "the Seine from Île de la Cité to the Musée d'Orsay, stop at the bouquinistes, "
    "then the impressionists upstairs until closing. Evening: climb to "
    "Montmartre for sunset over the city and dinner near Place du Tertre. "
) * 3
STREAM_PIECES = 27  # + role chunk, finish chunk, usage chunk = 30 events


def size(name: str, quick: bool) -> int:
    full, small = SIZES[name]
    return small if quick else full


# --- the fake OpenAI server --------------------------------------------------------


def _completion() -> dict[str, Any]:
    return {
        "id": "chatcmpl-bench0001",
        "object": "chat.completion",
        "created": 1_764_000_000,
        "model": "gpt-4o-2024-08-06",
        "system_fingerprint": "fp_bench",
        "service_tier": "default",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": ANSWER,
                    "refusal": None,
                    "annotations": [],
                },
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {
            "prompt_tokens": 1200,
            "completion_tokens": 300,
            "total_tokens": 1500,
            "prompt_tokens_details": {"cached_tokens": 1000, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
        },
    }


def _chunks() -> list[bytes]:
    """The completion as server-sent events: role, text pieces, finish, usage, [DONE]."""
    done = _completion()
    head = {k: done[k] for k in ("id", "created", "model", "system_fingerprint")}
    head["object"] = "chat.completion.chunk"

    def event(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        return {**head, "choices": [choice]}

    step = -(-len(ANSWER) // STREAM_PIECES)
    events = [event({"role": "assistant", "content": ""})]
    events += [event({"content": ANSWER[i : i + step]}) for i in range(0, len(ANSWER), step)]
    events.append(event({}, "stop"))
    events.append({**head, "choices": [], "usage": done["usage"]})
    out = [b"data: " + json.dumps(e).encode() + b"\n\n" for e in events]
    return [*out, b"data: [DONE]\n\n"]


def fake_client(is_async: bool) -> Any:
    """An OpenAI client whose transport answers from memory."""
    import httpx2
    import openai

    body = json.dumps(_completion()).encode()
    chunks = _chunks()
    json_headers = {"content-type": "application/json"}
    sse_headers = {"content-type": "text/event-stream"}

    def sync_stream() -> Iterator[bytes]:
        yield from chunks

    async def async_stream() -> Any:
        for chunk in chunks:
            yield chunk

    def handler(request: httpx2.Request) -> httpx2.Response:
        if b'"stream":true' in request.content.replace(b" ", b""):
            content = async_stream() if is_async else sync_stream()
            return httpx2.Response(200, headers=sse_headers, content=content)
        return httpx2.Response(200, headers=json_headers, content=body)

    transport = httpx2.MockTransport(handler)
    common: dict[str, Any] = {
        "api_key": "sk-bench-not-a-real-key",
        "base_url": "http://fake-openai.test/v1",
        "max_retries": 0,
    }
    if is_async:
        return openai.AsyncOpenAI(http_client=httpx2.AsyncClient(transport=transport), **common)
    return openai.OpenAI(http_client=httpx2.Client(transport=transport), **common)


# --- one side, in its own interpreter -----------------------------------------------


class _Side:
    """One side's instrumentation: set up, instrument a client, flush, what was recorded."""

    def __init__(self, name: str, workdir: Path) -> None:
        self.name = name
        self.exporter: Any = None
        if name == "agent_trace":
            import agent_trace as at

            at.configure(store=f"sqlite:///{workdir / 'bench.db'}")
        else:
            import logfire
            from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
            from opentelemetry.sdk.trace.export import (
                BatchSpanProcessor,
                SpanExporter,
                SpanExportResult,
            )

            class EncodeAndDrop(SpanExporter):
                """Does an OTLP exporter's work short of the HTTP POST."""

                def __init__(self) -> None:
                    self.spans = 0
                    self.bytes = 0

                def export(self, spans: Any) -> SpanExportResult:
                    self.bytes += len(encode_spans(spans).SerializeToString())
                    self.spans += len(spans)
                    return SpanExportResult.SUCCESS

            self.exporter = EncodeAndDrop()
            logfire.configure(
                send_to_logfire=False,
                console=False,
                service_name="bench",
                additional_span_processors=[BatchSpanProcessor(self.exporter)],
            )

    def instrument(self, client: Any) -> None:
        if self.name == "agent_trace":
            import agent_trace as at

            at.instrument_openai(client)
        else:
            import logfire

            logfire.instrument_openai(client)

    def session(self, name: str) -> Any:
        """agent_trace records only inside a session (usable with ``with`` and ``async with``)."""
        if self.name == "agent_trace":
            import agent_trace as at

            return at.session(name)
        return contextlib.nullcontext()

    def flush(self) -> None:
        if self.name == "agent_trace":
            import agent_trace as at

            at.flush_sync()
        else:
            import logfire

            logfire.force_flush()

    async def aflush(self) -> None:
        if self.name == "agent_trace":
            import agent_trace as at

            await at.flush()
        else:
            self.flush()

    def recorded(self) -> dict[str, float]:
        """Events written, or spans exported (and their OTLP bytes), so far."""
        if self.name == "agent_trace":
            import agent_trace as at

            return {"events": at.stats()["written"]}
        return {"spans": self.exporter.spans, "otlp_bytes": self.exporter.bytes}


class _Blocks:
    """Timings of the blocks of one client: wall, caller CPU, process CPU, flush."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self.proc: list[float] = []
        self.flush: list[float] = []

    def start(self) -> tuple[float, float, float]:
        return time.perf_counter(), time.thread_time(), time.process_time()

    def stop(self, started: tuple[float, float, float]) -> float:
        """End of the calls: returns when the flush starts."""
        now = time.perf_counter()
        self.wall.append(now - started[0])
        self.cpu.append(time.thread_time() - started[1])
        return now

    def flushed(self, started: tuple[float, float, float], flush_started: float) -> None:
        """End of the flush; process CPU counts the calls and the flush."""
        self.flush.append(time.perf_counter() - flush_started)
        self.proc.append(time.process_time() - started[2])

    def as_dict(self) -> dict[str, list[float]]:
        return {"wall": self.wall, "cpu": self.cpu, "proc": self.proc, "flush": self.flush}


def _sync_call(client: Any, stream: bool) -> Callable[[], None]:
    create = client.chat.completions.create

    def call() -> None:
        if stream:
            options = {"include_usage": True}
            for _chunk in create(
                model=MODEL, messages=MESSAGES, stream=True, stream_options=options
            ):
                pass
        else:
            create(model=MODEL, messages=MESSAGES)

    return call


def _measure_sync(side: _Side, shape: str, calls: int, pairs: int, warmup: int) -> dict:
    bare_client, inst_client = fake_client(is_async=False), fake_client(is_async=False)
    side.instrument(inst_client)
    stream = shape == "stream"
    clients = {"bare": _sync_call(bare_client, stream), "inst": _sync_call(inst_client, stream)}
    blocks = {"bare": _Blocks(), "inst": _Blocks()}
    with side.session(f"bench-{shape}"):
        for call in clients.values():
            for _ in range(warmup):
                call()
        side.flush()
        before = side.recorded()
        for i in range(pairs):
            for which in ("bare", "inst") if i % 2 == 0 else ("inst", "bare"):
                call, timing = clients[which], blocks[which]
                started = timing.start()
                for _ in range(calls):
                    call()
                flush_started = timing.stop(started)
                side.flush()
                timing.flushed(started, flush_started)
        after = side.recorded()
    bare_client.close()
    inst_client.close()
    return _result(blocks, calls, pairs, before, after)


async def _measure_async(side: _Side, calls: int, pairs: int, warmup: int) -> dict:
    bare_client, inst_client = fake_client(is_async=True), fake_client(is_async=True)
    side.instrument(inst_client)
    clients = {"bare": bare_client, "inst": inst_client}
    blocks = {"bare": _Blocks(), "inst": _Blocks()}
    async with side.session("bench-async"):
        for client in clients.values():
            for _ in range(warmup):
                await client.chat.completions.create(model=MODEL, messages=MESSAGES)
        await side.aflush()
        before = side.recorded()
        for i in range(pairs):
            for which in ("bare", "inst") if i % 2 == 0 else ("inst", "bare"):
                create, timing = clients[which].chat.completions.create, blocks[which]
                started = timing.start()
                for _ in range(calls):
                    await create(model=MODEL, messages=MESSAGES)
                flush_started = timing.stop(started)
                await side.aflush()
                timing.flushed(started, flush_started)
        after = side.recorded()
    await bare_client.close()
    await inst_client.close()
    return _result(blocks, calls, pairs, before, after)


def _result(
    blocks: dict[str, _Blocks], calls: int, pairs: int, before: dict, after: dict
) -> dict[str, Any]:
    per_call = {k: (after[k] - before[k]) / (calls * pairs) for k in after}
    return {
        "calls": calls,
        "pairs": pairs,
        "bare": blocks["bare"].as_dict(),
        "inst": blocks["inst"].as_dict(),
        "recorded_per_call": per_call,
    }


def run_child(side_name: str, shapes: list[str], quick: bool) -> None:
    """Entry point of one side's interpreter: measure, print one JSON line."""
    pairs, warmup = size("pairs", quick), size("warmup", quick)
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-llm-") as tmp:
        side = _Side(side_name, Path(tmp))
        for shape in shapes:
            calls = size("stream_calls" if shape == "stream" else "calls", quick)
            if shape == "async":
                out[shape] = asyncio.run(_measure_async(side, calls, pairs, warmup))
            else:
                out[shape] = _measure_sync(side, shape, calls, pairs, warmup)
    print(json.dumps(out))


# --- the parent: alternate sides in fresh interpreters, print the table ------------


def have_logfire() -> bool:
    try:
        import logfire  # noqa: F401
    except ImportError:
        return False
    return True


def measure(side: str, shapes: list[str], quick: bool) -> dict | None:
    args = [sys.executable, __file__, "--child", side, "--shapes", ",".join(shapes)]
    env = dict(os.environ)
    env.pop("AGENT_TRACE_STORE", None)
    for key in list(env):  # a developer's Logfire token or console settings stay out
        if key.startswith(("LOGFIRE_", "OTEL_")):
            del env[key]
    args += ["--quick"] if quick else []
    proc = subprocess.run(args, capture_output=True, text=True, env=env)
    if proc.returncode != 0 or not proc.stdout.strip():
        print(f"[{side} {shapes}] failed (exit {proc.returncode}):\n{proc.stderr.strip()}",
              file=sys.stderr)  # fmt: skip
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


def _span(values: list[float], fmt: str = "{:.0f}") -> str:
    if len(values) < 2:
        return ""
    return f" ({fmt.format(min(values))}..{fmt.format(max(values))})"


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


@dataclass
class Overheads:
    """One side of one shape: per round, µs per call (fastest quarter of the blocks)."""

    bare: list[float]
    inst: list[float]
    wall: list[float]  # instrumented - bare
    amortized: list[float]  # the same, each block with the flush after it
    proc: list[float]  # process CPU (all threads), block and flush
    cpu: list[float]  # caller thread CPU, block only
    flush_ms: list[float]  # median flush after an instrumented block
    recorded: dict[str, float]
    calls: int
    pairs: int

    @classmethod
    def of(cls, runs: list[dict]) -> Overheads:
        out = cls([], [], [], [], [], [], [], runs[-1]["recorded_per_call"],
                  runs[0]["calls"], runs[0]["pairs"])  # fmt: skip
        for r in runs:
            bare, inst = r["bare"], r["inst"]

            def best(blocks: dict[str, list[float]], *keys: str, n: int = r["calls"]) -> float:
                """µs per call of the fastest quarter of the blocks (``keys`` summed per block).

                Not the single fastest: on a busy machine one lucky block
                would decide the difference.
                """
                fastest = sorted(map(sum, zip(*(blocks[k] for k in keys), strict=True)))
                quarter = fastest[: max(1, len(fastest) // 4)]
                return sum(quarter) / len(quarter) / n * 1e6

            out.bare.append(best(bare, "wall"))
            out.inst.append(best(inst, "wall"))
            out.wall.append(best(inst, "wall") - best(bare, "wall"))
            out.amortized.append(best(inst, "wall", "flush") - best(bare, "wall", "flush"))
            out.proc.append(best(inst, "proc") - best(bare, "proc"))
            out.cpu.append(best(inst, "cpu") - best(bare, "cpu"))
            out.flush_ms.append(_median(inst["flush"]) * 1e3)
        return out


def _ratio(ours: list[float], theirs: list[float]) -> tuple[float, str]:
    """Median over median, and the range of the per-round ratios."""
    ratio = _median(ours) / _median(theirs) if _median(theirs) > 0 else float("inf")
    rounds = [o / t for o, t in zip(ours, theirs, strict=False) if t > 0]
    return ratio, f"{ratio:.2f}x{_span(rounds, '{:.2f}')}"


def _us(values: list[float]) -> str:
    return f"{_median(values):.0f} µs{_span(values)}"


LABELS = {"create": "create", "stream": "stream (30 chunks)", "async": "async create"}


def shape_rows(shape: str, runs: dict[str, list[dict]], logfire_missing: bool) -> list[Row]:
    label = LABELS[shape]
    if not runs.get("agent_trace"):
        return [Row(f"{label}: agent_trace failed (see stderr)", "-", result="ERROR")]
    ours = Overheads.of(runs["agent_trace"])
    lf = None if logfire_missing or not runs.get("logfire") else Overheads.of(runs["logfire"])
    bare = ours.bare + (lf.bare if lf else [])
    events = ours.recorded.get("events", 0)
    rounds = len(ours.wall)
    rows = [
        Row(f"{label}: bare call ({ours.calls} calls x {ours.pairs} blocks, "
            f"{rounds} round{'s' * (rounds > 1)}, both sides)", _us(bare)),
        Row(f"{label}: agent_trace overhead (recorded - bare)", _us(ours.wall),
            f"{_median(ours.inst):.0f} µs recorded",
            f"{_median(ours.wall) / _median(ours.bare):.2f}x bare"),
        Row(f"{label}: agent_trace flush after {ours.calls} calls ({events:g} events/call)",
            f"{_median(ours.flush_ms):.2f} ms{_span(ours.flush_ms, '{:.2f}')}"),
    ]  # fmt: skip
    if events != 2:
        rows.append(Row(f"{label}: agent_trace events per call", f"{events:g}", "", "", "2",
                        "ERROR"))  # fmt: skip
    if logfire_missing:
        skipped = "skipped: pip install logfire"
        return [
            *rows,
            Row(f"{label}: Logfire overhead", skipped),
            Row(f"{label}: agent_trace overhead / Logfire overhead", skipped),
        ]
    if lf is None:
        return [*rows, Row(f"{label}: Logfire failed (see stderr)", "-", result="ERROR")]
    spans = lf.recorded.get("spans", 0)
    otlp_kb = lf.recorded.get("otlp_bytes", 0) / 1024

    def verdict(ours: list[float], theirs: list[float]) -> tuple[str, str, str]:
        """(ratio text, target, result); the target is the issue's, for ``create`` only."""
        ratio, text = _ratio(ours, theirs)
        if shape != "create":
            return text, "", ""
        if _median(ours) <= 0 or _median(theirs) <= 0:  # below the noise: no verdict
            return text, f"<= {TARGET}x", "NOISE"
        return text, f"<= {TARGET}x", "PASS" if ratio <= TARGET else "MISS"

    rows += [
        Row(f"{label}: Logfire overhead (instrumented - bare; {spans:g} spans, "
            f"{otlp_kb:.1f} KB OTLP per call)", _us(lf.wall),
            f"{_median(lf.inst):.0f} µs instrumented",
            f"{_median(lf.wall) / _median(lf.bare):.2f}x bare"),
        Row(f"{label}: agent_trace overhead / Logfire overhead", _us(ours.wall),
            f"{_us(lf.wall)} Logfire", *verdict(ours.wall, lf.wall)),
        Row(f"{label}: same, each block with its flush / force_flush", _us(ours.amortized),
            f"{_us(lf.amortized)} Logfire", _ratio(ours.amortized, lf.amortized)[1]),
        Row(f"{label}: same, process CPU (all threads, incl. flush)", _us(ours.proc),
            f"{_us(lf.proc)} Logfire", *verdict(ours.proc, lf.proc)),
        Row(f"{label}: same, caller thread CPU", _us(ours.cpu),
            f"{_us(lf.cpu)} Logfire", _ratio(ours.cpu, lf.cpu)[1]),
    ]  # fmt: skip
    return rows


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
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    parser.add_argument("--rounds", type=int, help="alternating rounds (default 3, quick 1)")
    parser.add_argument("--shapes", default=",".join(SHAPES), help="e.g. create,stream")
    parser.add_argument("--child", choices=SIDES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    shapes = [s for s in args.shapes.split(",") if s]
    unknown = set(shapes) - set(SHAPES)
    if unknown:
        parser.error(f"unknown shape(s) {', '.join(sorted(unknown))}; use {', '.join(SHAPES)}")
    if args.child:
        run_child(args.child, shapes, args.quick)
        return 0

    import openai

    import agent_trace

    logfire_missing = not have_logfire()
    lf_version = "not installed"
    if not logfire_missing:
        from importlib.metadata import version

        lf_version = version("logfire")
    rounds = args.rounds or size("rounds", args.quick)
    print(
        f"agent_trace {getattr(agent_trace, '__version__', '?')}, openai {openai.__version__}, "
        f"logfire {lf_version}, Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, "
        f"{sys.platform}{' (quick sizes)' if args.quick else ''}\n"
    )
    sides = [s for s in SIDES if not (s == "logfire" and logfire_missing)]
    # Quick: one interpreter per side for all shapes (start-up dominates).
    # Full: one per side and shape, the sides in turn, who goes first alternating.
    groups = [shapes] if args.quick else [[s] for s in shapes]
    runs: dict[str, dict[str, list[dict]]] = {s: {side: [] for side in sides} for s in shapes}
    for n in range(rounds):
        for group in groups:
            order = sides[n % len(sides) :] + sides[: n % len(sides)]
            for side in order:
                print(f"round {n + 1}/{rounds}: {side} {','.join(group)}", file=sys.stderr)
                result = measure(side, group, args.quick)
                for shape in group:
                    if result is not None and shape in result:
                        runs[shape][side].append(result[shape])
    rows: list[Row] = []
    for shape in shapes:
        rows.extend(shape_rows(shape, runs[shape], logfire_missing))
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
