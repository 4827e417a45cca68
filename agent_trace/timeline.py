"""A session as one self-contained HTML page: span waterfall, events, payloads.

``render_html(events)`` returns a single HTML document with its CSS, its
JavaScript and the session's data inlined (``timeline.html`` is the
template): it opens offline, from a file or an e-mail attachment, and never
loads anything from the network. ``timeline_data(events)`` is the JSON the
page draws, for tests and other front ends.

Large sessions: the page embeds spans and events as rows of values and each
payload as one line of a plain-text script element, parsed only when its
event is clicked, and draws only the rows in view. A 50,000-event session
opens in about a second (``benchmarks/bench_read_side.py``).

Time axis: every position comes from the events' wall-clock timestamps. A
recorded ``duration_ms`` is measured with ``perf_counter`` and the end event
is stamped a little after it is measured, so "end minus duration" lands late:
it only places a span that has no other start (a decision without recorded
calls inside it); a span with children starts no later than its first child.

Pure: reads nothing, writes nothing (the CLI's ``html`` command does the I/O).
Span structure and totals come from ``agent_trace.projections``; this module
only adds what a drawing needs (offsets on a time axis, a label per span).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from importlib import resources
from typing import Any

import orjson

from agent_trace.events import AgentEvent
from agent_trace.projections import SpanNode, build_session_summary, build_span_tree, llm_cost

__all__ = ["render_html", "timeline_data"]

_DATA_MARKER = "/*__AGENT_TRACE_DATA__*/null"
_TITLE_MARKER = "__AGENT_TRACE_TITLE__"
_PAYLOADS_MARKER = "__AGENT_TRACE_PAYLOADS__"
_NAV_MARKER = "<!--__AGENT_TRACE_NAV__-->"


def timeline_data(events: Iterable[AgentEvent]) -> dict[str, Any]:
    """What the page draws: totals, spans on a ms axis (depth first), and every event."""
    events = list(events)
    if not events:
        raise ValueError("a timeline needs at least one event")
    summary = build_session_summary(events, events[0].session_id)
    t0 = _parse(min(ev.timestamp for ev in events))
    t_end = _offset(t0, max(ev.timestamp for ev in events))

    by_span: dict[str, list[AgentEvent]] = {}
    for ev in events:
        if ev.span_id is not None:
            by_span.setdefault(ev.span_id, []).append(ev)

    def subtree(node: SpanNode, depth: int) -> list[dict[str, Any]]:
        """The node's span then its descendants', depth first; children placed first."""
        below = [span for child in node.children for span in subtree(child, depth + 1)]
        first_child = min((s["start_ms"] for s in below if s["depth"] == depth + 1), default=None)
        me = _span(node, depth, by_span.get(node.span_id, []), t0, t_end, first_child)
        return [me, *below]

    spans = [span for root in build_span_tree(events) for span in subtree(root, 0)]
    t_end = max([t_end, *(s["end_ms"] for s in spans)])

    tool_calls = sum(1 for s in spans if s["kind"] == "tool")
    return {
        "session_id": summary.session_id,
        "summary": {
            **summary.to_dict(),
            "events": len(events),
            "tool_calls": tool_calls,
            "failures": len(summary.errors),
        },
        "duration_ms": t_end,
        "started_at": events[0].timestamp,
        "spans": spans,
        "events": [
            {**ev.to_dict(), "offset_ms": round(_offset(t0, ev.timestamp), 3)} for ev in events
        ],
    }


def render_html(
    events: Iterable[AgentEvent], title: str | None = None, *, nav_html: str = ""
) -> str:
    """The whole page as one string; no external resources.

    ``nav_html``: trusted markup put above the header (``agent-trace ui`` puts
    its links there); links only, the page's policy allows no other loads.
    """
    data = timeline_data(events)
    page_title = title or f"agent_trace · {data['session_id']}"
    return _fill(_page_data(data), _payload_lines(data["events"]), _escape(page_title), nav_html)


#: The keys of each span row in the page's data, in order.
SPAN_FIELDS = (
    "span_id",
    "parent_span_id",
    "depth",
    "kind",
    "name",
    "detail",
    "status",
    "error",
    "start_ms",
    "end_ms",
    "duration_ms",
    "model",
    "tokens",
    "cost_usd",
    "versions",
)


def _page_data(data: dict[str, Any]) -> bytes:
    """``timeline_data`` as the page embeds it: rows of values, payloads left out."""
    compact = {
        "session_id": data["session_id"],
        "summary": data["summary"],
        "duration_ms": data["duration_ms"],
        "started_at": data["started_at"],
        "span_fields": SPAN_FIELDS,
        "spans": [[s[k] for k in SPAN_FIELDS] for s in data["spans"]],
        "events": [
            [e["version"], e["offset_ms"], e["event_type"], e["span_id"], e["timestamp"]]
            for e in data["events"]
        ],
    }
    return _script_safe(orjson.dumps(compact))


def _payload_lines(events: list[dict[str, Any]]) -> bytes:
    """Each event's payload as one line of JSON (compact JSON has no raw newline)."""
    dumps = orjson.dumps
    return _script_safe(b"\n".join(dumps(e["payload"]) for e in events))


def _script_safe(json: bytes) -> bytes:
    # "<" never occurs in JSON outside strings, so escaping it keeps "</script>"
    # (and "<!--") inside a payload from ending the script element early.
    return json.replace(b"<", b"\\u003c")


def _fill(data: bytes, payloads: bytes, title: str, nav: str = "") -> str:
    """The template with its four markers replaced, in one pass (a payload may
    contain a marker's text: it must not be replaced in turn)."""
    template = resources.files("agent_trace").joinpath("timeline.html").read_text("utf-8")
    head, rest = template.split(_TITLE_MARKER, 1)
    top, rest = rest.split(_NAV_MARKER, 1)
    middle, rest = rest.split(_DATA_MARKER, 1)
    before, tail = rest.split(_PAYLOADS_MARKER, 1)
    parts = (head, title, top, nav, middle, data.decode(), before, payloads.decode(), tail)
    return "".join(parts)


def _span(
    node: SpanNode,
    depth: int,
    events: list[AgentEvent],
    t0: datetime,
    t_end: float,
    first_child: float | None = None,
) -> dict[str, Any]:
    end = _offset(t0, node.ended_at) if node.ended_at else None
    if node.started_at:
        start = _offset(t0, node.started_at)
    elif first_child is not None:
        # A decision is one event, written when it returns. Its calls' starts
        # are on the same (wall) clock as every other position.
        start = first_child
    elif end is not None and node.duration_ms is not None:
        # Nothing else to go by: end minus the measured duration.
        start = max(end - node.duration_ms, 0.0)
    elif events:
        start = _offset(t0, events[0].timestamp)
    else:
        start = 0.0
    if end is None:
        end = start + node.duration_ms if node.duration_ms is not None else t_end
    model, tokens, cost = None, None, None
    for ev in events:
        p = ev.payload
        if ev.event_type.startswith("llm_"):
            model = p.get("response_model") or p.get("model") or model
            usage = p.get("usage")
            if isinstance(usage, dict) and usage.get("total_tokens") is not None:
                tokens = usage["total_tokens"]
            if ev.event_type == "llm_responded":
                cost = llm_cost(ev)
    return {
        "span_id": node.span_id,
        "parent_span_id": node.parent_span_id,
        "depth": depth,
        "kind": node.kind or "call",
        "name": node.name or node.span_id,
        "detail": _detail(node, events),
        "status": node.status,
        "error": node.error,
        "start_ms": round(start, 3),
        "end_ms": round(max(end, start), 3),
        "duration_ms": node.duration_ms,
        "model": model,
        "tokens": tokens,
        "cost_usd": cost,
        "versions": [ev.version for ev in events],
    }


def _detail(node: SpanNode, events: list[AgentEvent]) -> str:
    """A few words after the span's name: the decision's choice, a tool's args."""
    for ev in events:
        p = ev.payload
        if ev.event_type == "decision_made":
            choice = p.get("choice")
            if isinstance(choice, dict):
                if "tool" in choice:
                    return f"→ {choice['tool']}"
                if choice.get("final"):
                    return "→ final answer"
            return f"→ {_short(orjson.dumps(choice).decode(), 40)}"
        if ev.event_type == "tool_started":
            args = p.get("args") or {}
            if isinstance(args, dict):
                return _short(", ".join(f"{k}={v!r}" for k, v in args.items()), 60)
        if ev.event_type == "llm_responded" and "chunks" in p:
            return f"streamed {p['chunks']} chunks"
    return ""


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _parse(ts: str) -> datetime:
    return datetime.fromisoformat(ts)


def _offset(t0: datetime, ts: str) -> float:
    return (_parse(ts) - t0).total_seconds() * 1000


def _escape(text: str) -> str:
    return (
        text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
    )
