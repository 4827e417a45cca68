"""A session as one self-contained HTML page: span waterfall, events, payloads.

``render_html(events)`` returns a single HTML document with its CSS, its
JavaScript and the session's data inlined (``timeline.html`` is the
template): it opens offline, from a file or an e-mail attachment, and never
loads anything from the network. ``timeline_data(events)`` is the JSON the
page draws, for tests and other front ends.

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

    spans = []
    for root in build_span_tree(events):
        for depth, node in root.walk():
            spans.append(_span(node, depth, by_span.get(node.span_id, []), t0, t_end))
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
    template = resources.files("agent_trace").joinpath("timeline.html").read_text("utf-8")
    # "<" never occurs in JSON outside strings, so escaping it keeps "</script>"
    # (and "<!--") inside a payload from ending the script element early.
    payload = orjson.dumps(data).decode().replace("<", "\\u003c")
    page_title = title or f"agent_trace · {data['session_id']}"
    return (
        template.replace(_TITLE_MARKER, _escape(page_title))
        .replace(_NAV_MARKER, nav_html)
        .replace(_DATA_MARKER, payload)
    )


def _span(
    node: SpanNode, depth: int, events: list[AgentEvent], t0: datetime, t_end: float
) -> dict[str, Any]:
    end = _offset(t0, node.ended_at) if node.ended_at else None
    if node.started_at:
        start = _offset(t0, node.started_at)
    elif end is not None and node.duration_ms is not None:
        # A decision is one event, written when it returns: start = end - duration.
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
