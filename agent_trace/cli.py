"""The ``agent-trace`` command line: look at, check and move recorded sessions.

Every command reads the store through the store protocol and derives what it
shows with the SDK's own modules: ``projections`` (summaries, span trees, tool
and model stats), ``integrity`` (verify), ``spill`` (ingest), ``replay``,
``otel`` (OTLP/JSON export), ``regression`` (``test``) and ``timeline`` (HTML, and the waterfall of
``show``). Output is rich tables and trees on a terminal,
plain text when piped, and JSON with ``--json``. Exit codes: 0 ok, 1 a
verification failed, 2 a usage error (bad arguments, missing store, unknown
session, bad URL), always with a one-line message on stderr.

Never rewrites or deletes events; only ``ingest``, ``demo`` and ``test`` (its replays,
unless ``--replays-to`` sends them elsewhere) append.
``rich`` is imported only when output goes to a terminal.
``agent_trace/_demo_agent.py`` (for ``demo``) is a symlink to
``examples/research_agent.py``, so a wheel ships the example itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import difflib
import importlib
import importlib.util
import os
import re
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from agent_trace.config import DEFAULT_STORE_URL
from agent_trace.events import AgentEvent

if TYPE_CHECKING:
    from agent_trace.stores.base import EventStore, SessionIndexStore

__all__ = ["main"]

PROG = "agent-trace"
#: Events per ``read_all`` page when following or scanning the log.
PAGE = 5000
_KIND_STYLE = {
    "decision": "magenta",
    "tool": "green",
    "llm": "blue",
    "agent": "cyan",
    "call": "white",
}


class UsageError(Exception):
    """A mistake on the command line or in its environment: exit 2 with this message."""


class VerificationFailed(Exception):
    """A hash chain did not verify: exit 1 (the report is already printed)."""


# --- output: rich on a terminal, plain text when piped, JSON on request -------


class Output:
    """Where a command writes; ``rich`` is set only for a terminal with rich installed."""

    def __init__(self, json_mode: bool, plain: bool) -> None:
        self.json = json_mode
        self.rich = False
        self.console: Any = None
        self.stderr_console: Any = None
        if not json_mode and not plain and sys.stdout.isatty():
            try:
                from rich.console import Console
            except ImportError:
                return
            self.rich = True
            self.console = Console(highlight=False, emoji=False)
        if not json_mode and sys.stderr.isatty():
            with contextlib.suppress(ImportError):
                from rich.console import Console

                self.stderr_console = Console(stderr=True)

    def line(self, text: str = "", style: str | None = None) -> None:
        if self.rich:
            self.console.print(text, style=style, markup=False)
        else:
            print(text, flush=True)

    def emit_json(self, value: Any) -> None:
        sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n")

    @contextlib.contextmanager
    def status(self, description: str) -> Iterator[None]:
        """A spinner on stderr when it is a terminal, for work of unknown length."""
        if self.stderr_console is None:
            yield
            return
        with self.stderr_console.status(description):
            yield

    @contextlib.contextmanager
    def progress(self, description: str, total: int | None) -> Iterator[Any]:
        """A progress bar on stderr when it is a terminal; a no-op advance otherwise."""
        if self.stderr_console is None or not total or total < 50:
            yield lambda n=1: None
            return
        from rich.progress import Progress

        with Progress(console=self.stderr_console, transient=True) as bar:
            task = bar.add_task(description, total=total)
            yield lambda n=1: bar.advance(task, n)


def _table(out: Output, columns: Sequence[str], rows: list[list[str]], title: str = "") -> None:
    """A table: rich on a terminal, aligned columns (numbers right) otherwise."""
    numeric = [
        all(re.fullmatch(r"[-+]?[\d,.]+( ?[a-z%]+)?|-", r[i] or "-") for r in rows)
        if rows
        else False
        for i in range(len(columns))
    ]
    if out.rich:
        from rich import box
        from rich.table import Table

        table = Table(
            title=title or None,
            title_justify="left",
            header_style="bold",
            box=box.SIMPLE_HEAD,
            pad_edge=False,
            collapse_padding=True,
        )
        for name, right in zip(columns, numeric, strict=True):
            table.add_column(name, justify="right" if right else "left", no_wrap=True)
        for row in rows:
            style = "red" if any(c in ("error", "cancelled") for c in row) else None
            table.add_row(*row, style=style)
        out.console.print(table)
        return
    if title:
        print(title)
    widths = [max([len(c), *(len(r[i]) for r in rows)]) for i, c in enumerate(columns)]

    def fmt(cells: Sequence[str]) -> str:
        parts = [
            c.rjust(w) if right else c.ljust(w)
            for c, w, right in zip(cells, widths, numeric, strict=True)
        ]
        return "  ".join(parts).rstrip()

    print(fmt(columns))
    for row in rows:
        print(fmt(row))
    sys.stdout.flush()


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 1000:
        return f"{value / 1000:.2f} s"
    return f"{value:.1f} ms" if value < 10 else f"{value:.0f} ms"


def _n(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}" + ("" if n == 1 else "s")


def _short(text: Any, width: int) -> str:
    text = "" if text is None else str(text)
    text = text.replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def _when(ts: str | None) -> str:
    """A stored timestamp as ``YYYY-MM-DD HH:MM`` (UTC)."""
    return "-" if not ts else ts[:16].replace("T", " ")


def _event_style(event_type: str) -> str | None:
    if event_type.endswith("_failed") or event_type == "error_occurred":
        return "bold red"
    if event_type.startswith("tool_"):
        return "green"
    if event_type.startswith("llm_"):
        return "blue"
    if event_type.startswith("decision_"):
        return "magenta"
    if event_type.startswith("session_"):
        return "bold"
    return None


# --- the store -------------------------------------------------------------------


def _store_url(args: argparse.Namespace) -> str:
    return getattr(args, "store", None) or os.environ.get("AGENT_TRACE_STORE") or DEFAULT_STORE_URL


def _open_store(url: str, must_exist: bool = True) -> EventStore:
    """The store at ``url``; a missing file or directory is a usage error when reading."""
    from agent_trace.stores import JSONLStore, SQLiteStore, open_store
    from agent_trace.stores.base import mask_url

    try:
        store = open_store(url)
    except (ValueError, ConnectionError, PermissionError, ImportError, TypeError) as exc:
        raise UsageError(str(exc)) from None
    if must_exist:
        missing = None
        if isinstance(store, SQLiteStore) and store.path != ":memory:":
            missing = None if os.path.isfile(store.path) else f"file {store.path}"
        elif isinstance(store, JSONLStore):
            missing = None if os.path.isdir(store.directory) else f"directory {store.directory}"
        if missing:
            raise UsageError(
                f"no store at {mask_url(url)} ({missing} does not exist); pass --store URL, "
                "set AGENT_TRACE_STORE, or record something first (agent-trace demo)"
            )
    return store


async def _session_events(store: EventStore, session_id: str, url: str) -> list[AgentEvent]:
    """The session's events; an unknown id is a usage error that suggests near matches."""
    events = await store.get_events(session_id)
    if events:
        return events
    from agent_trace.stores.base import mask_url

    ids = [info.session_id for info in await store.list_sessions()]
    near = [i for i in ids if session_id and i.startswith(session_id)][:3]
    near += [
        i for i in difflib.get_close_matches(session_id, ids, n=3, cutoff=0.6) if i not in near
    ]
    hint = f"; did you mean {', '.join(near[:3])}?" if near else ""
    if not ids:
        hint = " (the store is empty)"
    raise UsageError(f"no session {session_id!r} in {mask_url(url)}{hint}")


# --- commands ------------------------------------------------------------------


async def cmd_sessions(args: argparse.Namespace, store: EventStore, out: Output) -> int:
    """A table of sessions, newest first."""
    from agent_trace.stores.base import SessionIndexStore

    since = _parse_since(args.since) if args.since else None
    if isinstance(store, SessionIndexStore):
        rows = await _indexed_session_rows(args, store, since)
        empty = not rows and not await store.list_sessions(limit=1)
    else:
        rows, empty = await _scanned_session_rows(args, store, out, since)
    if out.json:
        out.emit_json(rows)
        return 0
    if not rows:
        out.line("no sessions in the store yet" if empty else "no sessions match")
        return 0
    _table(
        out,
        [
            "session",
            "started (UTC)",
            "duration",
            "events",
            "tools",
            "tokens",
            "cost",
            "failures",
            "status",
        ],
        [
            [
                r["session_id"],
                _when(r["started_at"]),
                _ms(r["duration_ms"]),
                _n(r["events"]),
                _n(r["tool_calls"]),
                _n(r["tokens"]),
                _usd(r["cost_usd"]),
                _n(r["failures"]),
                r["status"],
            ]
            for r in rows
        ],
    )
    return 0


async def _indexed_session_rows(
    args: argparse.Namespace, store: SessionIndexStore, since: datetime | None
) -> list[dict[str, Any]]:
    """The table's rows from the store's sessions index: one query for the page,
    then the LLM events of the rows shown, to price them (``llm_cost``)."""
    from agent_trace.prices import llm_cost
    from agent_trace.stores.base import SessionFilter

    since_text = None
    if since is not None:
        since_text = since.astimezone(timezone.utc).isoformat(timespec="microseconds")
    chosen = SessionFilter(
        failed=args.failed,
        tool=args.tool,
        model=args.model,
        status=args.status,
        since=since_text,
    )
    infos = await store.query_sessions(args.limit, chosen)
    rows = []
    for info in infos:
        cost = None
        if info.llm_calls:
            priced = [
                llm_cost(ev)
                for ev in await store.get_events(info.session_id, event_types=("llm_responded",))
            ]
            known = [c for c in priced if c is not None]
            cost = sum(known) if known else None
        duration = info.duration_ms
        if duration is None:
            elapsed = datetime.fromisoformat(info.last_activity) - datetime.fromisoformat(
                info.started_at
            )
            duration = elapsed.total_seconds() * 1000
        rows.append(
            {
                "session_id": info.session_id,
                "started_at": info.started_at,
                "last_activity": info.last_activity,
                "duration_ms": duration,
                "events": info.event_count,
                "tool_calls": info.tool_calls,
                "tools": info.tools,
                "llm_calls": info.llm_calls,
                "tokens": info.total_tokens,
                "cost_usd": cost,
                "failures": info.failures,
                "status": info.status,
                "models": sorted(info.models),
                "agent": info.agent,
                "metadata": info.metadata,
            }
        )
    return rows


async def _scanned_session_rows(
    args: argparse.Namespace, store: EventStore, out: Output, since: datetime | None
) -> tuple[list[dict[str, Any]], bool]:
    """The table's rows for a store without a sessions index: each session's
    events read and summarized. Returns the rows and whether the store is empty."""
    from agent_trace.projections import build_session_summary

    infos = await store.list_sessions()
    rows = []
    with out.progress("reading sessions", len(infos)) as advance:
        for info in infos:
            advance()
            if since is not None and datetime.fromisoformat(info.started_at) < since:
                continue
            events = await store.get_events(info.session_id)
            summary = build_session_summary(events, info.session_id)
            calls = [
                ev.payload.get("tool")
                for ev in events
                if ev.event_type in ("tool_executed", "tool_failed")
            ]
            if args.tool and args.tool not in calls:
                continue
            failed = summary.status in ("error", "cancelled") or bool(summary.errors)
            if args.failed and not failed:
                continue
            if args.status is not None and summary.status != args.status:
                continue
            models = sorted(
                {
                    m if isinstance(m, str) else "unknown"
                    for ev in events
                    if ev.event_type in ("llm_responded", "llm_failed")
                    for m in [ev.payload.get("response_model") or ev.payload.get("model")]
                }
            )
            if args.model is not None and args.model not in models:
                continue
            agent = info.metadata.get("agent")
            rows.append(
                {
                    "session_id": info.session_id,
                    "started_at": info.started_at,
                    "last_activity": info.last_activity,
                    "duration_ms": summary.duration_ms,
                    "events": info.event_count,
                    "tool_calls": len(calls),
                    "tools": sorted({c for c in calls if isinstance(c, str)}),
                    "llm_calls": summary.llm_calls,
                    "tokens": summary.total_tokens,
                    "cost_usd": summary.cost_usd,
                    "failures": len(summary.errors),
                    "status": summary.status,
                    "models": models,
                    "agent": agent if isinstance(agent, str) else None,
                    "metadata": info.metadata,
                }
            )
            if args.limit is not None and len(rows) >= args.limit:
                break
    return rows, not infos


def _usd(cost: float | None) -> str:
    """A cost for a table: ``$0.0123``; ``-`` when no call could be priced."""
    if cost is None:
        return "-"
    return f"${cost:,.2f}" if cost >= 100 else f"${cost:.4f}"


def _parse_since(text: str) -> datetime:
    """``30m``, ``2h``, ``7d`` ago, or an ISO date/datetime (UTC unless it says otherwise)."""
    from agent_trace.regression import parse_when

    try:
        return parse_when(text)
    except ValueError as exc:
        raise UsageError(f"--since {exc}") from None


async def cmd_show(args: argparse.Namespace, store: EventStore, out: Output) -> int:
    """The span tree of one session, with a waterfall of when each call ran."""
    from agent_trace.timeline import timeline_data

    events = await _session_events(store, args.session_id, _store_url(args))
    data = timeline_data(events)
    spans, s = data["spans"], data["summary"]
    if out.json:
        out.emit_json(
            {
                "session_id": data["session_id"],
                "summary": s,
                "duration_ms": data["duration_ms"],
                "spans": _nest(spans),
            }
        )
        return 0
    header = (
        f"session {data['session_id']}  {s['status']}  {_ms(s['duration_ms'])}  "
        f"{s['events']} events  {s['llm_calls']} LLM calls  {s['tool_calls']} tool calls  "
        f"{s['decisions']} decisions  tokens {_n(s['total_tokens'])} "
        f"({_n(s['input_tokens'])} in / {_n(s['output_tokens'])} out)  "
        f"cost {_usd(s['cost_usd'])}  {_plural(s['failures'], 'failure')}"
    )
    total = max(data["duration_ms"], 1e-9)
    width = 32 if not out.rich or out.console.width >= 120 else 16

    def bar(sp: dict[str, Any]) -> str:
        a = int(sp["start_ms"] / total * width)
        b = max(round(sp["end_ms"] / total * width), a + 1)
        return " " * a + "█" * (b - a) + " " * (width - b)

    def label(sp: dict[str, Any]) -> str:
        parts = [sp["name"]]
        if sp["detail"]:
            parts.append(sp["detail"])
        if sp["model"]:
            parts.append(sp["model"])
        if sp["tokens"] is not None:
            parts.append(f"{sp['tokens']} tok")
        if sp.get("cost_usd") is not None:
            parts.append(_usd(sp["cost_usd"]))
        return " ".join(parts)

    def failure(sp: dict[str, Any]) -> str:
        return f"FAILED: {_short(sp['error'], 200)}" if sp["status"] == "error" else ""

    prefixes = _tree_prefixes(spans)
    if out.rich:
        from rich.text import Text

        console = out.console
        out.console.print(Text(header, style="bold"))
        room = max(console.width - width - 13, 20)
        for sp, prefix in zip(spans, prefixes, strict=True):
            failed = sp["status"] == "error"
            style = "red" if failed else _KIND_STYLE.get(sp["kind"], "white")
            cell = Text(no_wrap=True, overflow="ellipsis")
            cell.append(prefix, style="dim")
            cell.append(f"{sp['kind']} ", style=f"bold {style}")
            cell.append(label(sp), style="red" if failed else None)
            cell.truncate(room, overflow="ellipsis", pad=True)
            cell.append(f" {_ms(sp['duration_ms']):>9}  ")
            cell.append(bar(sp), style=style)
            console.print(cell, no_wrap=True, crop=True)
            if failed:
                guide = prefix.replace("├─", "│ ").replace("└─", "  ")
                note = Text(no_wrap=True, overflow="ellipsis")
                note.append(guide + "   ", style="dim")
                note.append(failure(sp), style="bold red")
                console.print(note, no_wrap=True, crop=True)
        return 0
    print(header)
    rows = [
        _short(f"{p}{sp['kind']} {label(sp)}", 80) for sp, p in zip(spans, prefixes, strict=True)
    ]
    w = max((len(r) for r in rows), default=0)
    for sp, row in zip(spans, rows, strict=True):
        line = f"{row:<{w}}  {_ms(sp['duration_ms']):>8}  |{bar(sp)}|  {failure(sp)}"
        print(line.rstrip())
    return 0


def _tree_prefixes(spans: list[dict[str, Any]]) -> list[str]:
    """``├─``/``└─`` guides for spans listed depth first with their depth."""
    prefixes = []
    for i, sp in enumerate(spans):
        d = sp["depth"]
        guides = []
        for level in range(d + 1):
            # Is there a later span at this level before the subtree ends?
            later = False
            for nxt in spans[i + 1 :]:
                if nxt["depth"] < level:
                    break
                if nxt["depth"] == level:
                    later = True
                    break
            if level < d:
                guides.append("│  " if later else "   ")
            else:
                guides.append("├─ " if later else "└─ ")
        prefixes.append("".join(guides))
    return prefixes


def _nest(spans: list[dict[str, Any]]) -> list[dict[str, Any]]:
    roots: list[dict[str, Any]] = []
    stack: list[dict[str, Any]] = []
    for sp in spans:
        node = {k: v for k, v in sp.items() if k != "depth"} | {"children": []}
        del stack[sp["depth"] :]
        (stack[-1]["children"] if stack else roots).append(node)
        stack.append(node)
    return roots


async def cmd_replay(args: argparse.Namespace, store: EventStore, out: Output) -> int:
    """Step through a session in recorded order; ``--step`` waits for Enter on a terminal."""
    from agent_trace.replay import iter_steps

    events = await _session_events(store, args.session_id, _store_url(args))
    steps = list(iter_steps(events))
    if out.json:
        out.emit_json(
            [
                {
                    "index": st.index,
                    "version": st.version,
                    "event_type": st.event_type,
                    "depth": st.depth,
                    "kind": st.kind,
                    "name": st.name,
                    "text": st.render(),
                    "event": st.event.to_dict(),
                }
                for st in steps
            ]
        )
        return 0
    interactive = args.step and sys.stdin.isatty() and sys.stdout.isatty()
    for i, st in enumerate(steps):
        first, *details = st.lines()
        out.line(first, style=_event_style(st.event_type))
        for detail in details:
            out.line(detail, style="dim")
        if interactive and i < len(steps) - 1:
            try:
                answer = await asyncio.to_thread(
                    input, f"-- step {i + 1}/{len(steps)}: Enter, q --"
                )
            except EOFError:
                break
            if answer.strip().lower() == "q":
                break
    return 0


async def cmd_summary(args: argparse.Namespace, store: EventStore, out: Output) -> int:
    """One session's summary (``agent_trace.projections.build_session_summary``)."""
    from agent_trace.projections import build_session_summary

    events = await _session_events(store, args.session_id, _store_url(args))
    summary = build_session_summary(events, args.session_id).to_dict()
    if out.json:
        out.emit_json(summary)
        return 0
    tools = Counter(summary["tools_used"])
    rows = [
        ["session", summary["session_id"]],
        ["status", summary["status"]],
        ["started (UTC)", _when(summary["started_at"])],
        ["last activity", _when(summary["last_activity"])],
        ["duration", _ms(summary["duration_ms"])],
        ["events", _n(len(events))],
        ["user messages", _n(summary["total_messages"])],
        ["decisions", _n(summary["decisions"])],
        ["LLM calls", _n(summary["llm_calls"])],
        ["tokens", f"{_n(summary['total_tokens'])}"],
        ["input tokens", _n(summary["input_tokens"])],
        ["output tokens", _n(summary["output_tokens"])],
        ["cost", _usd(summary["cost_usd"])],
        ["tools used", ", ".join(f"{t} x{n}" for t, n in tools.items()) or "-"],
        ["errors", _n(len(summary["errors"]))],
    ]
    rows += [["  error", _short(e, 100)] for e in summary["errors"]]
    if out.rich:
        from rich.table import Table

        table = Table(show_header=False, box=None)
        table.add_column(style="bold")
        table.add_column()
        for key, value in rows:
            bad = key.strip() == "error" or (key == "status" and value in ("error", "cancelled"))
            table.add_row(key, value, style="red" if bad else None)
        out.console.print(table)
        return 0
    for key, value in rows:
        print(f"{key + ':':<15} {value}")
    return 0


_Stats = tuple[int, int, dict[str, Any], dict[str, Any], dict[str, int]]


async def _indexed_stats(store: SessionIndexStore) -> _Stats:
    """Stats from the sessions index: no event is read.

    A model's cost is priced from its summed tokens (``prices.usage_cost``),
    where a scan prices each call on its own day: the two differ only for
    tiered prices or a price change within the store's span.
    """
    from agent_trace.prices import usage_cost
    from agent_trace.projections import ModelUsage, ToolStats

    totals = await store.session_totals()
    tools = {name: ToolStats(tool=name, **f) for name, f in totals["tools"].items()}
    models = {}
    for name, m in totals["models"].items():
        usage = {k: v for k, v in m.items() if k not in ("calls", "failures")}
        priced = m["calls"] > m["failures"] and any(usage.values())
        cost = usage_cost(usage, [name]) if priced else None
        models[name] = ModelUsage(model=name, cost=cost, **m)
    return totals["sessions"], totals["events"], tools, models, totals["per_day"]


async def _scanned_stats(store: EventStore) -> _Stats:
    """Stats for a store without a sessions index: folded from every event."""
    from agent_trace.projections import CostPerModel, rebuild, tool_stats

    tools = await tool_stats(store)
    cost = CostPerModel()
    models = cost.usage(await rebuild(cost, store))
    infos = await store.list_sessions()
    per_day = Counter(info.started_at[:10] for info in infos)
    days = dict(sorted(per_day.items()))
    return len(infos), sum(info.event_count for info in infos), tools, models, days


async def cmd_stats(args: argparse.Namespace, store: EventStore, out: Output) -> int:
    """Tool stats, tokens per model and sessions per day across the store."""
    from agent_trace.stores.base import SessionIndexStore

    if isinstance(store, SessionIndexStore):
        sessions, events, tools, models, days = await _indexed_stats(store)
    else:
        sessions, events, tools, models, days = await _scanned_stats(store)
    if out.json:
        out.emit_json(
            {
                "sessions": sessions,
                "events": events,
                "tools": {
                    name: {
                        "calls": t.calls,
                        "failures": t.failures,
                        "failure_rate": t.failure_rate,
                        "p50_ms": t.p50_ms,
                        "p95_ms": t.p95_ms,
                        "mean_ms": t.mean_ms,
                    }
                    for name, t in tools.items()
                },
                "models": {
                    name: {
                        "calls": m.calls,
                        "failures": m.failures,
                        "input_tokens": m.input_tokens,
                        "output_tokens": m.output_tokens,
                        "total_tokens": m.total_tokens,
                        "cache_read_tokens": m.cache_read_tokens,
                        "cache_write_tokens": m.cache_write_tokens,
                        "reasoning_tokens": m.reasoning_tokens,
                        "cost_usd": m.cost,
                    }
                    for name, m in models.items()
                },
                "sessions_per_day": days,
            }
        )
        return 0
    out.line(f"{sessions:,} sessions, {events:,} events")
    out.line()
    _table(
        out,
        ["tool", "calls", "failures", "fail %", "p50", "p95", "mean"],
        [
            [
                name,
                _n(t.calls),
                _n(t.failures),
                f"{t.failure_rate * 100:.1f}%",
                _ms(t.p50_ms),
                _ms(t.p95_ms),
                _ms(t.mean_ms),
            ]
            for name, t in tools.items()
        ],
        title="tools",
    )
    out.line()
    _table(
        out,
        ["model", "calls", "failures", "input tokens", "cached", "output tokens", "cost"],
        [
            [
                name,
                _n(m.calls),
                _n(m.failures),
                _n(m.input_tokens),
                _n(m.cache_read_tokens),
                _n(m.output_tokens),
                _usd(m.cost),
            ]
            for name, m in models.items()
        ],
        title="tokens and cost per model",
    )
    out.line()
    _table(
        out, ["day (UTC)", "sessions"], [[d, _n(n)] for d, n in days.items()], "sessions per day"
    )
    return 0


async def cmd_verify(args: argparse.Namespace, store: EventStore, out: Output) -> int:
    """Recompute hash chains: exit 0 if every chain holds, 1 if any breaks."""
    import sqlite3

    from agent_trace.stores.base import StoreError

    try:
        return await _verify(args, store, out)
    except (StoreError, sqlite3.DatabaseError, ConnectionError) as exc:
        if isinstance(exc, ConnectionError) and not isinstance(
            exc.__cause__, sqlite3.DatabaseError
        ):
            raise  # unreachable, not unreadable: a usage error (exit 2)
        # The store cannot even be read back in order (a line cut out of a JSONL
        # file, a corrupt SQLite file): a failed verification, not a usage error.
        if out.json:
            out.emit_json({"ok": False, "error": str(exc), "failures": []})
        else:
            out.line(f"FAILED: the stored history is broken: {exc}", style="bold red")
        raise VerificationFailed from None


async def _verify(args: argparse.Namespace, store: EventStore, out: Output) -> int:
    from agent_trace.integrity import verify_session, verify_store

    if args.session_id:
        await _session_events(store, args.session_id, _store_url(args))
        results = [await verify_session(args.session_id, store)]
        sessions = 1
        events_checked = results[0].events_checked
    else:
        # Every session's chain and the global order (the store chain), in one pass.
        infos = await store.list_sessions()
        total = sum(info.event_count for info in infos)
        done = [0]
        with out.progress("verifying", total if len(infos) >= 50 else 0) as advance:

            def step(checked: int) -> None:
                advance(checked - done[0])
                done[0] = checked

            report = await verify_store(store, progress=step, incremental=args.incremental)
        sessions = max(report.sessions_checked, len(infos))
        results = list(report.failures)
        events_checked = report.events_checked
    failures = [r for r in results if not r.ok]
    bad = []
    for r in failures:
        event_id = None
        if r.first_bad_version is not None and r.session_id != "*":
            at_bad = await store.get_events(r.session_id, after_version=r.first_bad_version - 1)
            event_id = at_bad[0].event_id if at_bad else None
        bad.append(
            {
                "session_id": r.session_id,
                "first_bad_version": r.first_bad_version,
                "event_id": event_id,
                "reason": r.reason,
                "events_checked": r.events_checked,
            }
        )
    ok = not failures
    if out.json:
        out.emit_json(
            {
                "ok": ok,
                "sessions_checked": sessions,
                "events_checked": events_checked,
                "failures": bad,
            }
        )
    else:
        for f in bad:
            event = f" (event {f['event_id']})" if f["event_id"] else ""
            where = (
                "the store" if f["session_id"] == "*" else
                f"{f['session_id']} at version {f['first_bad_version']}"
            )  # fmt: skip
            out.line(f"FAILED {where}{event}: {f['reason']}", style="bold red")
        verdict = "ok" if ok else f"{len(bad)} of {sessions} sessions FAILED"
        checked = f"{_plural(sessions, 'session')}, {_plural(events_checked, 'event')}"
        out.line(
            f"verified {checked}: {verdict}",
            style="green" if ok else "bold red",
        )
    if not ok:
        raise VerificationFailed
    return 0


async def cmd_export(args: argparse.Namespace, store: EventStore, out: Output) -> int:
    """Write one session as JSON lines (the stored form, hashes included), OTLP/JSON or
    OTLP protobuf (what every OTLP/HTTP receiver accepts: POST it to /v1/traces with
    Content-Type: application/x-protobuf)."""
    events = await _session_events(store, args.session_id, _store_url(args))
    if args.format in ("otlp-json", "otlp-proto"):
        from agent_trace.otel import session_to_otlp_json, session_to_otlp_proto

        options = {"capture_content": args.capture_content, "project_name": args.project}
        if args.format == "otlp-proto":
            body = session_to_otlp_proto(events, **options)
        else:
            doc = session_to_otlp_json(events, **options)
            body = orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n"
    else:
        # The stored form (no upcasting): what the hash chain covers.
        stored = await store.get_events(args.session_id, raw=True)  # type: ignore[call-arg]
        lines = []
        with out.progress("exporting", len(stored)) as advance:
            for ev in stored:
                lines.append(orjson.dumps(ev.to_dict()))
                advance()
        body = b"".join(line + b"\n" for line in lines)
    if args.output and args.output != "-":
        Path(args.output).write_bytes(body)
        if out.json:
            out.emit_json({"path": args.output, "format": args.format, "events": len(events)})
        else:
            print(f"wrote {args.output} ({args.format}, {len(body):,} bytes)", file=sys.stderr)
    else:
        sys.stdout.flush()
        sys.stdout.buffer.write(body)
        sys.stdout.flush()
    return 0


async def cmd_ingest(args: argparse.Namespace, store: EventStore, out: Output) -> int:
    """Append the events of a JSONL file (a spill file or an export); idempotent by event id."""
    from agent_trace.spill import ingest

    if not os.path.isfile(args.file):
        raise UsageError(f"no such file: {args.file}")
    from agent_trace.spill import SpillFile

    spill = SpillFile(args.file)
    refused = len((await asyncio.to_thread(spill.scan))[1])
    with out.status(f"ingesting {args.file}"):
        # Each torn or invalid line is refused (logged naming the line and the
        # field, kept in FILE.rejected); the others are ingested.
        written = await ingest(args.file, store, remove=args.remove)
    if out.json:
        out.emit_json(
            {"path": args.file, "written": written, "removed": args.remove, "refused": refused}
        )
    else:
        out.line(f"ingested {args.file}: {_plural(written, 'new event')} written")
        if refused:
            out.line(
                f"{_plural(refused, 'line')} refused, kept in {spill.rejected_path}",
                style="bold red",
            )
    return 1 if refused else 0


async def cmd_tail(args: argparse.Namespace, store: EventStore, out: Output) -> int:
    """Print new events of every session as they are appended, until Ctrl-C."""
    position = 0
    pending: list[AgentEvent] = []
    if not args.from_start:
        position = await _end_position(store)
        if args.last:
            pending = (await store.read_all(max(position - args.last, 0)))[-args.last :]
    from agent_trace.stores.base import mask_url

    # On stderr, so stdout stays events only; also says "ready" to a script.
    print(
        f"{PROG}: following {mask_url(_store_url(args))} after position {position} "
        "(Ctrl-C to stop)",
        file=sys.stderr,
        flush=True,
    )
    shown = 0
    deadline = time.monotonic() + args.timeout if args.timeout else None
    wait_for_events = getattr(store, "wait_for_events", None)
    while True:
        for ev in pending:
            _print_event(out, ev)
            shown += 1
            if args.max_events and shown >= args.max_events:
                return 0
        if deadline is not None and time.monotonic() >= deadline:
            return 0
        page = await store.read_all(position, PAGE)
        if page:
            position = page[-1].position
            pending = page
            continue
        pending = []
        wait = args.interval
        if deadline is not None:
            wait = max(min(wait, deadline - time.monotonic()), 0)
        if wait_for_events is not None:
            await wait_for_events(position, wait)
        else:
            await asyncio.sleep(wait)


async def _end_position(store: EventStore) -> int:
    """The store's last position, in O(log n) one-event reads (positions only increase)."""
    lo, hi = 0, 1
    while await store.read_all(hi, 1):
        lo, hi = hi, hi * 2
    # Events exist after ``lo`` (or lo == 0), none after ``hi``.
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if await store.read_all(mid, 1):
            lo = mid
        else:
            hi = mid
    page = await store.read_all(lo, 1)
    return page[0].position if page else 0


def _print_event(out: Output, ev: AgentEvent) -> None:
    if out.json:
        sys.stdout.write(orjson.dumps(ev.to_dict()).decode() + "\n")
        sys.stdout.flush()
        return
    from agent_trace.replay import describe

    sid = _short(ev.session_id, 20)
    text = f"{ev.timestamp[11:26]}  {sid:<20}  {ev.event_type:<22}  {describe(ev)}"
    out.line(text, style=_event_style(ev.event_type))


async def cmd_test(args: argparse.Namespace, store: EventStore, out: Output) -> int:
    """Replay recorded sessions through an agent entry point and report what changed.

    TARGET (module:function) is called with each selected session's
    RecordedSession (user_message, metadata, events) inside a replay: tools and
    LLM answered from the recording (--mock tool keeps the LLM live). Exit 0 when
    no session diverged, 1 otherwise. Replays (replay_of) are never selected.
    """
    import agent_trace as at
    from agent_trace import regression as rg
    from agent_trace.stores.base import mask_url

    try:
        target = rg.load_target(args.target)
        selection = rg.parse_selection(args.select)
        mock = rg.parse_mock(args.mock)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    url = _store_url(args)
    with out.status("selecting sessions"):
        recordings = await rg.select_recordings(store, selection)
    if not recordings:
        raise UsageError(f"no recorded sessions in {mask_url(url)} match {selection}")
    # The replays go to --replays-to (default: the store itself), flushed once at the end.
    replays_to = args.replays_to or url
    await _open_store(replays_to, must_exist=False).close()  # a bad URL: a usage error now
    at.configure(store=replays_to, flush_on_session_end=False)
    with out.progress(f"replaying {len(recordings)} sessions", len(recordings)) as advance:
        report = await rg.run_regression(
            target,
            recordings,
            mock=mock,
            concurrency=args.concurrency,
            on_result=advance,
            name=args.target,
        )
    if args.junit_xml:
        rg.write_junit_xml(report, args.junit_xml)
    if out.json:
        out.emit_json(report.to_dict())
    else:
        _table(out, *rg.table(report))
        hint = ""  # how to look at a replay, unless it lived in this process only
        if not replays_to.startswith("memory:"):
            hint = (
                f" --store {replays_to}" if getattr(args, "store", None) or args.replays_to else ""
            )
        for result in report.diverged:
            out.line()
            out.line(result.explain(hint), style="red")
        out.line()
        for line in rg.summary_lines(report):
            out.line(line, style=None if report.ok else "bold")
    return 0 if report.ok else 1


async def cmd_html(args: argparse.Namespace, store: EventStore, out: Output) -> int:
    """Write the session's self-contained HTML timeline."""
    from agent_trace.timeline import render_html, timeline_data

    events = await _session_events(store, args.session_id, _store_url(args))
    path = Path(args.output or re.sub(r"[^A-Za-z0-9._-]", "_", args.session_id) + ".html")
    path.write_text(render_html(events), encoding="utf-8")
    spans = len(timeline_data(events)["spans"])
    if out.json:
        out.emit_json({"path": str(path), "events": len(events), "spans": spans})
    else:
        out.line(f"wrote {path} ({len(events)} events, {spans} spans)")
        out.line(f"open {path.resolve().as_uri()}")
    return 0


def cmd_demo(args: argparse.Namespace, out: Output) -> int:
    """Run the bundled research agent into the store and say where to look next."""
    agent = _load_demo_agent()
    url = _store_url(args)
    _open_store(url, must_exist=False)  # a bad URL is a usage error, before anything runs
    argv = ["--store", url, "--sessions", str(args.sessions), "--quiet"]
    with contextlib.redirect_stdout(sys.stderr if out.json else sys.stdout):
        agent.main(argv)
    store_opt = f" --store {url}" if getattr(args, "store", None) else ""
    example = "research-03" if args.sessions > 3 else "research-00"
    commands = [
        f"{PROG}{store_opt} sessions",
        f"{PROG}{store_opt} show {example}",
        f"{PROG}{store_opt} html {example} -o trace.html",
        f"{PROG}{store_opt} verify",
        f"{PROG}{store_opt} stats",
    ]
    if out.json:
        out.emit_json({"store": url, "sessions": args.sessions, "next": commands})
        return 0
    out.line("look next:")
    for c in commands:
        out.line(f"  {c}")
    return 0


def cmd_ui(args: argparse.Namespace, out: Output) -> int:
    """Serve a local web UI over the store until Ctrl-C (read-only; see docs/cli.md)."""
    if importlib.util.find_spec("starlette") is None or importlib.util.find_spec("uvicorn") is None:
        raise UsageError("agent-trace ui needs the ui extra: pip install 'agent-trace[ui]'")
    from agent_trace.stores.base import mask_url
    from agent_trace.ui import bind, is_loopback, serve

    url = _store_url(args)
    # With --otlp the store may start empty (ingest creates it); otherwise it must
    # exist, and is probed through the same read-only connection the UI uses.
    store = _open_store(url, must_exist=not args.otlp)
    if not args.otlp:
        from agent_trace.ui.app import read_only_store

        try:
            store = read_only_store(url)
        except (ValueError, OSError) as exc:
            raise UsageError(str(exc)) from None
    asyncio.run(_probe_store(store, url))
    try:
        sock = bind(args.host, args.port)
    except OSError as exc:
        why = exc.strerror or exc
        raise UsageError(f"cannot listen on {args.host}:{args.port}: {why}") from None
    host, port = sock.getsockname()[:2]
    base = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    print(f"{PROG} ui: serving {mask_url(url)} at {base}/ (Ctrl-C to stop)", file=sys.stderr)
    if args.otlp:
        print(f"{PROG} ui: OTLP/HTTP traces in at {base}/v1/traces", file=sys.stderr)
    if not is_loopback(host):
        print(
            f"{PROG} ui: warning: listening on {host}, not loopback: anyone who can reach "
            "this port can read every recorded session (there is no login)",
            file=sys.stderr,
        )
    sys.stderr.flush()
    serve(url, sock, otlp=args.otlp)
    return 0


async def _probe_store(store: EventStore, url: str) -> None:
    """Read one event, so a store that cannot be read is a usage error before serving."""
    from agent_trace.stores.base import mask_url

    try:
        await store.read_all(0, 1)
    except Exception as exc:  # also sqlite3.DatabaseError: "file is not a database"
        raise UsageError(f"cannot read the store {mask_url(url)}: {exc}") from None
    finally:
        await store.close()


def _load_demo_agent() -> Any:
    """The research agent: shipped in the package, or ``examples/`` of a source checkout.

    ``agent_trace/_demo_agent.py`` is a symlink to ``examples/research_agent.py``
    (one source); a wheel holds the file itself. A checkout without symlink
    support (a text file holding the link's target) falls back to ``examples/``.
    """
    with contextlib.suppress(ImportError, SyntaxError):
        return importlib.import_module("agent_trace._demo_agent")
    path = Path(__file__).resolve().parent.parent / "examples" / "research_agent.py"
    if not path.is_file():
        raise UsageError(
            "the demo agent is not in this installation (examples/research_agent.py not found)"
        )
    spec = importlib.util.spec_from_file_location("agent_trace_demo_research_agent", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


# --- argument parsing ----------------------------------------------------------


_COMMANDS: dict[str, tuple[Any, str, str]] = {
    "sessions": (cmd_sessions, "list sessions, newest first", "agent-trace sessions --failed"),
    "show": (cmd_show, "span tree of one session", "agent-trace show research-03"),
    "replay": (cmd_replay, "step through a session", "agent-trace replay research-03 --step"),
    "summary": (cmd_summary, "one session's summary", "agent-trace summary research-03 --json"),
    "stats": (cmd_stats, "tool stats, tokens per model, sessions per day", "agent-trace stats"),
    "verify": (
        cmd_verify,
        "verify hash chains (exit 1 if any fails)",
        "agent-trace verify\n  agent-trace verify --incremental\n  agent-trace verify research-03",
    ),
    "export": (
        cmd_export,
        "export a session as JSON lines, OTLP/JSON or OTLP protobuf",
        "agent-trace export research-03 --format jsonl -o research-03.jsonl",
    ),
    "ingest": (
        cmd_ingest,
        "append the events of a JSONL file (spill file or export)",
        "agent-trace ingest agent_trace.spill.jsonl",
    ),
    "tail": (cmd_tail, "follow new events of all sessions live", "agent-trace tail --last 20"),
    "html": (
        cmd_html,
        "write a self-contained HTML timeline of a session",
        "agent-trace html research-03 -o trace.html",
    ),
    "test": (
        cmd_test,
        "replay recorded sessions through your agent (exit 1 if any diverged)",
        "agent-trace test myapp.agent:handle --select since=7d,limit=200 --junit-xml replay.xml",
    ),
    "ui": (
        cmd_ui,
        "serve a local web UI over the store (extra: ui)",
        "agent-trace ui --store sqlite:///agent_trace.db --port 6006",
    ),
    "demo": (
        cmd_demo,
        "record the bundled research agent into the store",
        "agent-trace --store sqlite:///demo.db demo",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: the options work before or after the command without one
    # position's default overwriting the other's value.
    common.add_argument(
        "--store",
        metavar="URL",
        default=argparse.SUPPRESS,
        help="store URL (default: $AGENT_TRACE_STORE or sqlite:///agent_trace.db)",
    )
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="JSON output"
    )
    common.add_argument(
        "--plain",
        action="store_true",
        default=argparse.SUPPRESS,
        help="plain text even on a terminal",
    )
    parser = argparse.ArgumentParser(
        prog=PROG,
        parents=[common],
        description="Inspect, verify and export agent_trace sessions.",
        epilog="exit codes: 0 ok, 1 verification failed, 2 usage error\n"
        "example:\n  agent-trace demo && agent-trace sessions",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from agent_trace import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    subs = {}
    for name, (fn, help_text, example) in _COMMANDS.items():
        doc = (fn.__doc__ or help_text).strip()
        subs[name] = sub.add_parser(
            name,
            parents=[common],
            help=help_text,
            description=doc,
            epilog=f"example:\n  {example}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
    s = subs["sessions"]
    s.add_argument("--limit", type=_non_negative, default=None, help="at most N sessions")
    s.add_argument("--since", metavar="WHEN", help="started since: 30m, 2h, 7d or an ISO date")
    s.add_argument("--tool", metavar="NAME", help="only sessions that called this tool")
    s.add_argument("--failed", action="store_true", help="only sessions with a failure")
    s.add_argument("--model", metavar="NAME", help="only sessions with an LLM call to this model")
    s.add_argument(
        "--status", metavar="STATUS", help="only sessions with this status (open, ok, error, ...)"
    )
    for name in ("show", "replay", "summary", "html", "export"):
        subs[name].add_argument("session_id", metavar="ID", help="session id")
    subs["verify"].add_argument(
        "session_id", metavar="ID", nargs="?", help="one session (default: every session)"
    )
    subs["verify"].add_argument(
        "--incremental",
        action="store_true",
        help="check only events after the head a clean run verified last time "
        "(re-checks that head; an in-place edit before it needs a full run)",
    )
    subs["replay"].add_argument(
        "--step", action="store_true", help="wait for Enter between steps (on a terminal)"
    )
    e = subs["export"]
    e.add_argument("--format", choices=("jsonl", "otlp-json", "otlp-proto"), default="jsonl")
    e.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout")
    e.add_argument(
        "--capture-content",
        action="store_true",
        help="otlp-*: include arguments, results, messages and the turn's question and answer",
    )
    e.add_argument(
        "--project",
        metavar="NAME",
        help="otlp-*: the project on the resource (openinference.project.name, e.g. Phoenix)",
    )
    subs["ingest"].add_argument("file", metavar="FILE", help="JSONL file of events")
    subs["ingest"].add_argument(
        "--remove", action="store_true", help="empty the file once every event is stored"
    )
    t = subs["tail"]
    t.add_argument("-n", "--last", type=_non_negative, default=0, help="first show the last N")
    t.add_argument("--from-start", action="store_true", help="replay the whole log first")
    t.add_argument("--interval", type=float, default=0.5, help="poll interval in seconds")
    t.add_argument("--max-events", type=_non_negative, default=0, help="stop after N events")
    t.add_argument("--timeout", type=float, default=0, help="stop after this many seconds")
    subs["html"].add_argument("-o", "--output", metavar="FILE", help="default: ID.html")
    te = subs["test"]
    te.add_argument("target", metavar="TARGET", help="the agent entry point, module:function")
    te.add_argument(
        "--select",
        action="append",
        metavar="FILTERS",
        help="comma-separated, repeatable: tool=NAME, model=NAME, "
        "status=ok|error|cancelled|open|any, since=WHEN, until=WHEN, session=GLOB, "
        "metadata.KEY=VALUE, limit=N, sample=N, seed=N, replays=exclude|include|only",
    )
    te.add_argument(
        "--mock",
        default="tool,llm",
        metavar="KINDS",
        help="what the recording answers: tool,llm (default), tool (LLM live), none",
    )
    te.add_argument(
        "--replays-to",
        metavar="URL",
        help="where the replays are recorded (default: the --store; memory:// keeps them out)",
    )
    te.add_argument("--junit-xml", metavar="FILE", help="also write a JUnit XML report")
    te.add_argument("--concurrency", type=_positive, default=1, help="sessions replayed at a time")
    subs["demo"].add_argument("--sessions", type=_positive, default=8, help="sessions to run")
    u = subs["ui"]
    u.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback)")
    u.add_argument("--port", type=_non_negative, default=6006, help="port (default 6006; 0: any)")
    u.add_argument(
        "--otlp", action="store_true", help="also take OTLP/HTTP traces on POST /v1/traces"
    )
    return parser


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {text!r}")
    return value


def _positive(text: str) -> int:
    value = _non_negative(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1: {text!r}")
    return value


async def _run(args: argparse.Namespace, out: Output) -> int:
    fn = _COMMANDS[args.command][0]
    store = _open_store(_store_url(args), must_exist=args.command != "ingest")
    try:
        return await fn(args, store, out)
    finally:
        await store.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``agent-trace`` console script; returns the exit code."""
    from agent_trace.stores.base import StoreError

    args = build_parser().parse_args(argv)
    out = Output(getattr(args, "json", False), getattr(args, "plain", False))
    try:
        if args.command == "demo":
            return cmd_demo(args, out)
        if args.command == "ui":
            return cmd_ui(args, out)
        return asyncio.run(_run(args, out))
    except UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except VerificationFailed:
        return 1
    except BrokenPipeError:
        # The reader (``| head``) has what it wanted; silence the flush at exit.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (ConnectionError, OSError, StoreError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130 if args.command not in ("tail", "ui") else 0  # how they stop


if __name__ == "__main__":
    sys.exit(main())
