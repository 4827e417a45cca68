"""OpenTelemetry export: recorded sessions as GenAI spans, live or after the fact.

Mapping (OpenTelemetry GenAI semantic conventions):

- a session entry (a turn) -> ``invoke_agent {agent}`` (``gen_ai.operation.name``
  ``invoke_agent``, ``gen_ai.agent.name`` when the session metadata has ``agent``
  or one is configured); with ``capture_content=True`` it carries the turn's
  question and final answer as ``input.value``/``output.value``;
- a tool call -> ``execute_tool {tool}`` (``gen_ai.tool.name``,
  ``gen_ai.tool.call.id`` = the call's span id; arguments and result only
  with ``capture_content=True``);
- an LLM call -> ``chat {model}`` (``gen_ai.request.model``,
  ``gen_ai.provider.name``, ``gen_ai.usage.*`` incl. cache and reasoning tokens,
  ``gen_ai.response.finish_reasons``; with ``capture_content=True``,
  ``gen_ai.input.messages``/``gen_ai.output.messages`` in the conventions'
  message shape: ``role``, ``parts`` of ``{"type": "text", "content": ...}``,
  ``finish_reason``);
- a decision -> ``decision {name}``, a chain step (OpenInference span kind
  ``CHAIN``) whose ``output.value`` is the choice;
- failures set the span status to error, ``error.type`` and an ``exception``
  span event (``exception.type``, ``exception.message``); any other event
  (``emit()``) becomes a span event on the call (or session) it happened in.

Each entry into a session is its own trace, all sharing
``gen_ai.conversation.id`` (on every span): a turn's trace id is its
``session_started`` event id (a UUIDv7; calls whose turn start was not seen
use the session id, or a hash of it). Span ids are the recorded span
ids, parents come from ``parent_span_id``, and every timestamp is the event's
own. Spans are built directly (not through a live tracer), so exporting a
session twice yields the same ids. ``project_name`` sets
``openinference.project.name`` on the resource (the project in Phoenix).

Two ways in: :class:`OTelExporter` takes batches of events as they are
written (a recorder sink) or any list of events; :func:`export_session`
exports a stored session. :func:`session_to_otlp_json` renders a session as
OTLP/JSON with no OpenTelemetry package at all; :func:`session_to_otlp_proto`
as OTLP protobuf (needs ``opentelemetry-proto``). The SDK is imported lazily
(extra ``otel``); ``import agent_trace`` never imports it. Never raises into
agent code: the recorder calls the exporter off the caller's path.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import orjson

from agent_trace._version import __version__
from agent_trace.events import AgentEvent

if TYPE_CHECKING:
    from agent_trace.stores.base import EventStore

__all__ = [
    "OTelExporter",
    "SpanRecord",
    "build_spans",
    "export_session",
    "export_session_otlp_json",
    "input_messages",
    "otlp_json_to_request",
    "output_messages",
    "session_to_otlp_json",
    "session_to_otlp_proto",
    "spans_to_otlp_json",
]

log = logging.getLogger("agent_trace")
_SCOPE = "agent_trace"
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


@dataclass
class SpanRecord:
    """One finished span, independent of the OpenTelemetry SDK."""

    name: str
    trace_id: int
    span_id: int
    parent_span_id: int | None
    kind: str  # "internal" or "client"
    start_ns: int
    end_ns: int
    attributes: dict[str, Any] = field(default_factory=dict)
    #: (name, time in ns, attributes)
    events: list[tuple[str, int, dict[str, Any]]] = field(default_factory=list)
    error: str | None = None  # status description when the span failed
    failed: bool = False


class _SpanBuilder:
    """Folds events into spans: opens on ``*_started``, finishes on the outcome.

    Keeps open spans between calls, so batches may split a call or a session.
    """

    def __init__(self, *, capture_content: bool = False, agent_name: str | None = None) -> None:
        self.capture_content = capture_content
        self.agent_name = agent_name
        # (session id, span key) -> open span; the session span's key is "".
        self._open: dict[tuple[str, str], SpanRecord] = {}
        self._last_ns: dict[str, int] = {}
        # session id -> the trace of its current turn (each session entry is a trace)
        self._trace: dict[str, int] = {}
        # session id -> the turn's question and answer: from the emitted
        # user_message_received / response_generated, else from its LLM calls
        self._turn_io: dict[str, dict[str, Any]] = {}

    def feed(self, events: Iterable[AgentEvent]) -> list[SpanRecord]:
        done: list[SpanRecord] = []
        for ev in events:
            try:
                self._one(ev, done)
            except Exception:  # a malformed payload must not stop the export
                continue
        return done

    def finish_open(self, session_id: str | None = None) -> list[SpanRecord]:
        """End spans still open (of one session, or all) at their session's last event."""
        done = []
        for key in [k for k in self._open if session_id is None or k[0] == session_id]:
            span = self._open.pop(key)
            span.end_ns = max(span.start_ns, self._last_ns.get(key[0], span.start_ns))
            span.attributes["agent_trace.incomplete"] = True
            if key[1] == "":
                self._turn_done(key[0], span)
            done.append(span)
        # Children before parents, as they would have ended.
        done.sort(key=lambda s: s.parent_span_id is None)
        return done

    def _one(self, ev: AgentEvent, done: list[SpanRecord]) -> None:
        sid, etype, p = ev.session_id, ev.event_type, ev.payload
        ts = _to_ns(ev.timestamp)
        self._last_ns[sid] = max(ts, self._last_ns.get(sid, 0))
        if etype == "session_started":
            # Each entry (turn) is its own trace, named by its session_started event:
            # the same ids live (events not yet stored) and after the fact.
            self._trace[sid] = _trace_id(ev.event_id)
            self._turn_io[sid] = {}
        trace_id = self._trace.get(sid) or _trace_id(sid)
        if etype == "session_started":
            meta: dict[str, Any] = p["metadata"] if isinstance(p.get("metadata"), dict) else {}
            agent = meta.get("agent") or meta.get("agent_name") or self.agent_name
            attrs: dict[str, Any] = {
                "gen_ai.operation.name": "invoke_agent",
                "gen_ai.conversation.id": sid,
            }
            if agent:
                attrs["gen_ai.agent.name"] = str(agent)
            for key, value in meta.items():
                if isinstance(value, (str, bool, int, float)):
                    attrs[f"agent_trace.session.{key}"] = value
            previous = self._open.pop((sid, ""), None)
            if previous is not None:  # re-entered before it ended: close the old one
                previous.end_ns = ts
                self._turn_done(sid, previous)
                done.append(previous)
            self._open[(sid, "")] = SpanRecord(
                name=f"invoke_agent {agent}" if agent else "invoke_agent",
                trace_id=trace_id,
                span_id=_hash_id(f"{sid}/{ev.event_id}", 8),
                parent_span_id=None,
                kind="internal",
                start_ns=ts,
                end_ns=ts,
                attributes=attrs,
            )
            return
        if etype == "session_ended":
            span = self._open.pop((sid, ""), None)
            if span is None:
                return
            span.end_ns = ts
            if p.get("status") == "error":
                _fail(span, {"error_type": p.get("error_type") or "error", **p}, ts)
            elif p.get("status"):
                span.attributes["agent_trace.session.status"] = str(p["status"])
            self._turn_done(sid, span)
            done.append(span)
            if not any(key[0] == sid for key in self._open):
                # A live exporter runs for days: forget ended sessions.
                del self._last_ns[sid]
                self._trace.pop(sid, None)
            return
        kind, _, phase = etype.rpartition("_")
        if kind in ("tool", "llm") and phase in ("started", "executed", "responded", "failed"):
            if phase == "started":
                self._start_call(ev, kind, ts, trace_id)
            else:
                done.append(self._end_call(ev, kind, phase, ts, trace_id))
            return
        if etype in ("agent_started", "agent_finished"):  # an agent framework's run
            self._agent_run(ev, etype, ts, trace_id, done)
            return
        if etype in ("decision_made", "decision_failed"):
            span = self._new_call_span(ev, ts - _duration_ns(p), trace_id)
            name = str(p.get("decision") or "decision")
            span.name = f"decision {name}"
            # A step of the agent's chain (OpenInference), so backends do not show UNKNOWN.
            span.attributes["openinference.span.kind"] = "CHAIN"
            span.attributes["agent_trace.decision.name"] = name
            if etype == "decision_made":
                span.attributes["agent_trace.decision.choice"] = _attr_value(p.get("choice"))
                _set_io(span.attributes, "output", p.get("choice"))
                if p.get("reasoning") is not None:
                    span.attributes["agent_trace.decision.reasoning"] = _attr_value(p["reasoning"])
            else:
                _fail(span, p, ts)
            if self.capture_content and "args" in p:
                span.attributes["agent_trace.decision.arguments"] = _json(p["args"])
                _set_io(span.attributes, "input", p["args"])
            span.end_ns = ts
            done.append(span)
            return
        if self.capture_content and etype in ("user_message_received", "response_generated"):
            io = self._turn_io.setdefault(sid, {})
            if etype == "user_message_received":
                io.setdefault("input", p.get("message"))
            else:
                io["output"] = p.get("response")
        # Any other event: a span event on the call it happened in, else the session.
        target = self._open.get((sid, ev.span_id or "")) or self._open.get((sid, ""))
        if target is not None:
            attrs = {"agent_trace.event_id": ev.event_id}
            if self.capture_content:
                attrs["agent_trace.payload"] = _json(p)
            target.events.append((etype, ts, attrs))

    def _agent_run(
        self, ev: AgentEvent, etype: str, ts: int, trace_id: int, done: list[SpanRecord]
    ) -> None:
        """``invoke_agent {agent}``: the parent of the run's LLM and tool spans."""
        p = ev.payload
        key = (ev.session_id, ev.span_id or ev.event_id)
        if etype == "agent_started":
            span = self._new_call_span(ev, ts, trace_id)
            agent = str(p.get("agent") or "agent")
            span.name = f"invoke_agent {agent}"
            span.attributes.update(
                {
                    "gen_ai.operation.name": "invoke_agent",
                    "gen_ai.agent.name": agent,
                    "openinference.span.kind": "AGENT",
                }
            )
            self._open[key] = span
            return
        span = self._open.pop(key, None) or self._new_call_span(ev, ts - _duration_ns(p), trace_id)
        span.end_ns = max(ts, span.start_ns)
        if p.get("status") not in (None, "ok"):
            _fail(span, {"error_type": p.get("error_type") or p.get("status"), **p}, span.end_ns)
        done.append(span)

    def _new_call_span(self, ev: AgentEvent, start_ns: int, trace_id: int) -> SpanRecord:
        sid = ev.session_id
        parent: int | None
        if ev.parent_span_id:
            parent = _span_int(ev.parent_span_id)
        else:
            session = self._open.get((sid, ""))
            parent = session.span_id if session is not None else None
        return SpanRecord(
            name=ev.event_type,
            trace_id=trace_id,
            span_id=_span_int(ev.span_id) if ev.span_id else _hash_id(ev.event_id, 8),
            parent_span_id=parent,
            kind="internal",
            start_ns=start_ns,
            end_ns=start_ns,
            attributes={"gen_ai.conversation.id": sid},
        )

    def _start_call(self, ev: AgentEvent, kind: str, ts: int, trace_id: int) -> None:
        span = self._new_call_span(ev, ts, trace_id)
        self._describe(span, kind, ev.payload)
        if self.capture_content and "args" in ev.payload:
            args = ev.payload["args"]
            if kind == "tool":
                span.attributes["gen_ai.tool.call.arguments"] = _json(args)
                _set_io(span.attributes, "input", args)
            else:
                messages, system = input_messages(args)
                span.attributes["gen_ai.input.messages"] = _json(messages)
                if system:
                    span.attributes["gen_ai.system_instructions"] = _json(system)
                question = _last_text(messages, "user")
                if question is not None:
                    self._turn_io.setdefault(ev.session_id, {}).setdefault("llm_input", question)
        self._open[(ev.session_id, ev.span_id or ev.event_id)] = span

    def _end_call(
        self, ev: AgentEvent, kind: str, phase: str, ts: int, trace_id: int
    ) -> SpanRecord:
        p = ev.payload
        span = self._open.pop((ev.session_id, ev.span_id or ""), None)
        if span is None:  # its start was not seen (exporter added mid-call)
            span = self._new_call_span(ev, ts - _duration_ns(p), trace_id)
            self._describe(span, kind, p)
        span.end_ns = max(ts, span.start_ns)
        if phase == "failed":
            _fail(span, p, span.end_ns)
        elif kind == "tool":
            if self.capture_content and "result" in p:
                span.attributes["gen_ai.tool.call.result"] = _json(p["result"])
                _set_io(span.attributes, "output", p["result"])
        else:
            answer = _llm_outcome(span, p, self.capture_content)
            if answer is not None:
                self._turn_io.setdefault(ev.session_id, {})["llm_output"] = answer
        return span

    def _turn_done(self, sid: str, root: SpanRecord) -> None:
        """Give the turn's root span its question and answer (``input.value``/``output.value``)."""
        io = self._turn_io.pop(sid, {})
        question = io.get("input", io.get("llm_input"))
        answer = io.get("output", io.get("llm_output"))
        if question is not None:
            _set_io(root.attributes, "input", question)
        if answer is not None:
            _set_io(root.attributes, "output", answer)

    def _describe(self, span: SpanRecord, kind: str, p: Mapping[str, Any]) -> None:
        if kind == "tool":
            tool = str(p.get("tool") or "tool")
            span.name = f"execute_tool {tool}"
            span.attributes.update(
                {
                    "gen_ai.operation.name": "execute_tool",
                    "gen_ai.tool.name": tool,
                    "gen_ai.tool.type": "function",
                    "gen_ai.tool.call.id": f"{span.span_id:016x}",
                }
            )
        else:
            model = p.get("model")
            span.name = f"chat {model or p.get('name') or 'llm'}"
            span.kind = "client"
            span.attributes["gen_ai.operation.name"] = "chat"
            if model:
                span.attributes["gen_ai.request.model"] = str(model)
            span.attributes["gen_ai.provider.name"] = _provider(p)
            if p.get("name"):
                span.attributes["agent_trace.llm.name"] = str(p["name"])


def _llm_outcome(span: SpanRecord, p: Mapping[str, Any], capture_content: bool) -> str | None:
    """Usage, response model and finish reasons; with content, the output messages.

    Returns the response's text (with content), the turn's answer if no
    ``response_generated`` says otherwise.
    """
    usage: dict[str, Any] = p["usage"] if isinstance(p.get("usage"), dict) else {}
    for ours, theirs in (
        ("input_tokens", "gen_ai.usage.input_tokens"),
        ("output_tokens", "gen_ai.usage.output_tokens"),
        ("cache_read_tokens", "gen_ai.usage.cache_read.input_tokens"),
        ("cache_write_tokens", "gen_ai.usage.cache_creation.input_tokens"),
        ("reasoning_tokens", "gen_ai.usage.reasoning.output_tokens"),
    ):
        if isinstance(usage.get(ours), int):
            span.attributes[theirs] = usage[ours]
    response = p.get("response")
    reasons = _finish_reasons(p, response)
    if reasons:
        span.attributes["gen_ai.response.finish_reasons"] = reasons
    if isinstance(p.get("response_model"), str):
        span.attributes["gen_ai.response.model"] = p["response_model"]
    if isinstance(response, dict):
        if isinstance(response.get("model"), str):
            span.attributes.setdefault("gen_ai.response.model", response["model"])
        if isinstance(response.get("id"), str):
            span.attributes["gen_ai.response.id"] = response["id"]
    if p.get("provider"):  # the outcome may know it when the start did not
        span.attributes["gen_ai.provider.name"] = _provider(p)
    if p.get("status") == "incomplete":
        span.attributes["agent_trace.llm.status"] = "incomplete"
    if not capture_content or "response" not in p:
        return None
    messages = output_messages(response, reasons)
    span.attributes["gen_ai.output.messages"] = _json(messages)
    text = _last_text(messages, "assistant")
    if text is not None:
        # What a backend lists as the call's output (else it shows the response id).
        span.attributes["output.value"] = text
        span.attributes["output.mime_type"] = "text/plain"
    return text


def _finish_reasons(p: Mapping[str, Any], response: Any) -> list[str]:
    for key in ("finish_reasons", "finish_reason", "stop_reason"):
        value = p.get(key)
        if value:
            return [str(v) for v in value] if isinstance(value, list) else [str(value)]
    if isinstance(response, dict):
        if isinstance(response.get("choices"), list):  # OpenAI
            found = [
                str(c["finish_reason"])
                for c in response["choices"]
                if isinstance(c, dict) and c.get("finish_reason")
            ]
            if found:
                return found
        if response.get("stop_reason"):  # Anthropic
            return [str(response["stop_reason"])]
    return []


def _fail(span: SpanRecord, p: Mapping[str, Any], ts: int) -> None:
    """Error status, ``error.type``, and the ``exception`` event backends show."""
    span.failed = True
    error_type = str(p.get("error_type") or "error")
    span.attributes["error.type"] = error_type
    attrs = {"exception.type": error_type}
    if p.get("error") is not None:
        span.error = str(p["error"])
        attrs["exception.message"] = span.error
    span.events.append(("exception", ts, attrs))


def _set_io(attrs: dict[str, Any], which: str, value: Any) -> None:
    """OpenInference's ``input.value``/``output.value``: text as is, anything else as JSON."""
    if isinstance(value, str):
        attrs[f"{which}.value"] = value
        attrs[f"{which}.mime_type"] = "text/plain"
    else:
        attrs[f"{which}.value"] = _json(value)
        attrs[f"{which}.mime_type"] = "application/json"


# --- messages in the GenAI conventions' shape ---------------------------------------

# Provider finish reasons -> the conventions' (stop, length, content_filter, tool_call, error).
_FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "completed": "stop",
    "max_tokens": "length",
    "incomplete": "length",
    "tool_calls": "tool_call",
    "tool_use": "tool_call",
    "function_call": "tool_call",
    "refusal": "content_filter",
}
_MODEL_PROVIDERS = (
    ("gpt-", "openai"),
    ("chatgpt", "openai"),
    ("o1", "openai"),
    ("o3", "openai"),
    ("o4", "openai"),
    ("text-embedding", "openai"),
    ("claude", "anthropic"),
    ("gemini", "gcp.gemini"),
    ("mistral", "mistral_ai"),
    ("codestral", "mistral_ai"),
    ("command", "cohere"),
    ("grok", "x_ai"),
    ("deepseek", "deepseek"),
)


def _provider(p: Mapping[str, Any]) -> str:
    """``gen_ai.provider.name``: as recorded, else told by the call's name or model."""
    if isinstance(p.get("provider"), str) and p["provider"]:
        return str(p["provider"])
    name = str(p.get("name") or "")
    for prefix in ("openai", "anthropic"):
        if name.startswith(prefix + "."):
            return prefix
    model = str(p.get("model") or "").lower().rpartition("/")[2]
    for prefix, provider in _MODEL_PROVIDERS:
        if model.startswith(prefix):
            return provider
    return "unknown"


def _text_part(text: Any) -> dict[str, Any]:
    return {"type": "text", "content": text if isinstance(text, str) else _json(text)}


def _parts(content: Any) -> list[dict[str, Any]]:
    """Message content (a string, or OpenAI/Anthropic content blocks) as parts."""
    if content is None:
        return []
    if not isinstance(content, list):
        return [_text_part(content)]
    parts = []
    for block in content:
        if not isinstance(block, dict):
            parts.append(_text_part(block))
            continue
        kind = block.get("type")
        if isinstance(block.get("text"), str):  # text, input_text, output_text
            parts.append(_text_part(block["text"]))
        elif kind in ("tool_use", "function_call"):  # Anthropic; OpenAI Responses
            part = {"type": "tool_call", "name": str(block.get("name") or "")}
            call_id = block.get("id") or block.get("call_id")
            if call_id:
                part["id"] = str(call_id)
            arguments = block.get("input", block.get("arguments"))
            part["arguments"] = _maybe_json(arguments)
            parts.append(part)
        elif kind in ("tool_result", "function_call_output"):
            call_id = block.get("tool_use_id") or block.get("call_id")
            response = block.get("content", block.get("output"))
            parts.append({"type": "tool_call_response", "id": call_id, "response": response})
        else:  # images, files, ...: named, not copied
            parts.append({"type": str(kind or "unknown")})
    return parts


def _message(m: Mapping[str, Any], default_role: str) -> dict[str, Any]:
    role = str(m.get("role") or default_role)
    if role == "developer":
        role = "system"
    if role in ("tool", "function") and (m.get("tool_call_id") or m.get("name")):
        call_id = m.get("tool_call_id")
        return {
            "role": "tool",
            "parts": [{"type": "tool_call_response", "id": call_id, "response": m.get("content")}],
        }
    parts = _parts(m.get("content"))
    for call in m.get("tool_calls") or []:  # OpenAI chat
        if isinstance(call, dict):
            fn: dict[str, Any] = (
                call["function"] if isinstance(call.get("function"), dict) else call
            )
            part = {"type": "tool_call", "name": str(fn.get("name") or "")}
            if call.get("id"):
                part["id"] = str(call["id"])
            part["arguments"] = _maybe_json(fn.get("arguments"))
            parts.append(part)
    return {"role": role, "parts": parts}


def _conventional(messages: Any) -> bool:
    return (
        isinstance(messages, list)
        and bool(messages)
        and all(isinstance(m, dict) and "role" in m and "parts" in m for m in messages)
    )


def input_messages(args: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """An LLM call's recorded arguments as GenAI input messages and system instructions.

    Knows OpenAI chat (``messages``), the Responses API (``input``,
    ``instructions``), Anthropic (``messages``, ``system``) and messages already
    in the conventions' shape; any other function's arguments become one user
    message (the argument itself when it is the only string, else JSON).
    """
    if not isinstance(args, dict):
        return [{"role": "user", "parts": [_text_part(args)]}], []
    system: list[dict[str, Any]] = []
    for key in ("system", "instructions"):
        if args.get(key):
            system = _parts(args[key])
    messages = args.get("messages")
    if isinstance(messages, list) and _conventional(messages):
        return list(messages), system
    if isinstance(messages, list) and all(isinstance(m, dict) for m in messages):
        return [_message(m, "user") for m in messages], system
    given = args.get("input")
    if isinstance(given, str):
        return [{"role": "user", "parts": [_text_part(given)]}], system
    if isinstance(given, list) and all(isinstance(m, dict) for m in given):
        return [_message(m, "user") for m in given if "role" in m or "content" in m], system
    strings = [v for v in args.values() if isinstance(v, str)]
    text = strings[0] if len(args) == 1 and strings else args
    return [{"role": "user", "parts": [_text_part(text)]}], system


def output_messages(response: Any, reasons: Sequence[str] = ()) -> list[dict[str, Any]]:
    """A recorded response as GenAI output messages (role, parts, finish_reason)."""
    default = _FINISH.get(reasons[0], reasons[0]) if reasons else "stop"

    def done(role: Any, parts: list[dict[str, Any]], reason: Any = None) -> dict[str, Any]:
        reason = str(reason) if reason else default
        return {
            "role": str(role or "assistant"),
            "parts": parts,
            "finish_reason": _FINISH.get(reason, reason),
        }

    if _conventional(response):
        return [dict(m, finish_reason=m.get("finish_reason") or default) for m in response]
    if isinstance(response, dict):
        choices = response.get("choices")
        if isinstance(choices, list) and choices:  # OpenAI chat
            out = []
            for c in choices:
                if isinstance(c, dict):
                    m = c.get("message") or c.get("delta") or {}
                    if isinstance(m, dict):
                        msg = _message(m, "assistant")
                        out.append(done(msg["role"], msg["parts"], c.get("finish_reason")))
            if out:
                return out
        if isinstance(response.get("output"), list):  # OpenAI Responses
            parts = []
            for item in response["output"]:
                if isinstance(item, dict):
                    if item.get("type") == "message":
                        parts.extend(_parts(item.get("content")))
                    elif item.get("type") == "function_call":
                        parts.extend(_parts([item]))
            return [done("assistant", parts, response.get("status"))]
        if isinstance(response.get("content"), list):  # Anthropic Message
            return [
                done(response.get("role"), _parts(response["content"]), response.get("stop_reason"))
            ]
        if "content" in response:  # {"content": "...", ...}
            return [done(response.get("role"), _parts(response["content"]))]
    return [done("assistant", [_text_part(response)])]


def _last_text(messages: list[dict[str, Any]], role: str) -> str | None:
    """The text of the last message from ``role`` (its text parts joined), if any."""
    for m in reversed(messages):
        if m.get("role") == role:
            texts = [
                str(part.get("content"))
                for part in m.get("parts") or []
                if isinstance(part, dict) and part.get("type") == "text"
            ]
            if texts:
                return "".join(texts)
    return None


def _maybe_json(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            return value
    return value


def build_spans(
    events: Iterable[AgentEvent], *, capture_content: bool = False, agent_name: str | None = None
) -> list[SpanRecord]:
    """The spans of complete event histories; calls left open end at their session's last event."""
    builder = _SpanBuilder(capture_content=capture_content, agent_name=agent_name)
    return builder.feed(events) + builder.finish_open()


# --- ids and values -----------------------------------------------------------


def _hash_id(text: str, size: int) -> int:
    n = int.from_bytes(hashlib.sha256(text.encode()).digest()[:size], "big")
    return n or 1  # all-zero ids are invalid in OpenTelemetry


def _trace_id(session_id: str) -> int:
    """An id's digits when it is a UUID (event ids, default session ids), else a hash of it."""
    digits = session_id.replace("-", "")
    if len(digits) == 32:
        try:
            n = int(digits, 16)
        except ValueError:
            pass
        else:
            if n:
                return n
    return _hash_id(f"session/{session_id}", 16)


def _span_int(span_id: str) -> int:
    if len(span_id) == 16:
        try:
            n = int(span_id, 16)
        except ValueError:
            pass
        else:
            if n:
                return n
    return _hash_id(f"span/{span_id}", 8)


def _to_ns(timestamp: str) -> int:
    dt = datetime.fromisoformat(timestamp)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    delta = dt - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000


def _duration_ns(p: Mapping[str, Any]) -> int:
    d = p.get("duration_ms")
    return int(d * 1_000_000) if isinstance(d, (int, float)) and d > 0 else 0


def _json(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def _attr_value(value: Any) -> Any:
    """Scalars as themselves, anything else as JSON text (attributes are flat)."""
    if isinstance(value, (str, bool, int, float)):
        return value
    return _json(value)


# --- the OpenTelemetry SDK side -----------------------------------------------


def _sdk() -> Any:
    try:
        from opentelemetry.sdk import trace as sdk_trace
    except ImportError as exc:
        raise ImportError(
            f"OpenTelemetry export needs the SDK: pip install 'agent-trace[otel]' ({exc})"
        ) from exc
    return sdk_trace


class OTelExporter:
    """Sends recorded events to OpenTelemetry as spans.

    Give it a ``span_exporter`` (any SDK ``SpanExporter``, e.g.
    ``OTLPSpanExporter``; wrapped in a ``BatchSpanProcessor`` unless
    ``batch=False``) or a ``tracer_provider`` (an SDK ``TracerProvider``: its
    span processors get the spans, so the pipeline you configured applies).
    With neither, the global tracer provider is used.

    ``project_name`` sets ``openinference.project.name`` on the resource: the
    project Arize Phoenix files the traces under.

    Call it with each written batch of events (``exporter(events)``): the
    recorder does so as an extra sink, and a call or session split across
    batches is finished when its last event arrives. Call ``shutdown()`` at
    the end (it ends spans left open and flushes).
    """

    def __init__(
        self,
        span_exporter: Any = None,
        *,
        tracer_provider: Any = None,
        capture_content: bool = False,
        agent_name: str | None = None,
        service_name: str = "agent_trace",
        project_name: str | None = None,
        batch: bool = True,
    ) -> None:
        sdk_trace = _sdk()
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope

        if span_exporter is not None:
            self._processor = (BatchSpanProcessor if batch else SimpleSpanProcessor)(span_exporter)
            self._owns_processor = True
            self._resource = Resource.create(_resource_attributes(service_name, project_name))
        else:
            if tracer_provider is None:
                from opentelemetry import trace

                tracer_provider = trace.get_tracer_provider()
            if not isinstance(tracer_provider, sdk_trace.TracerProvider):
                raise TypeError(
                    "OTelExporter needs a span_exporter or an SDK TracerProvider "
                    f"(opentelemetry.sdk.trace.TracerProvider), got {tracer_provider!r}"
                )
            # The provider's own processor chain (what add_span_processor built).
            self._processor = tracer_provider._active_span_processor
            self._owns_processor = False
            self._resource = tracer_provider.resource
            if project_name:
                self._resource = self._resource.merge(Resource(_project(project_name)))
        self._scope = InstrumentationScope(_SCOPE, __version__)
        self._builder = _SpanBuilder(capture_content=capture_content, agent_name=agent_name)
        self._lock = threading.Lock()
        self.exported = 0
        self.failures = 0

    def __call__(self, events: Sequence[AgentEvent]) -> int:
        """The sink form of :meth:`export`: logs a failure instead of raising it."""
        try:
            return self.export(events)
        except Exception as exc:
            self.failures += 1
            log.warning("agent_trace: OpenTelemetry export failed: %s: %s", type(exc).__name__, exc)
            return 0

    def export(self, events: Sequence[AgentEvent]) -> int:
        """Export the spans these events finish; return how many."""
        with self._lock:
            records = self._builder.feed(events)
        return self._emit(records)

    def finish(self, session_id: str | None = None) -> int:
        """End and export spans still open (of one session, or all)."""
        with self._lock:
            records = self._builder.finish_open(session_id)
        return self._emit(records)

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Wait until exported spans have left the processor."""
        return self._processor.force_flush(timeout_millis)

    def shutdown(self) -> None:
        """Finish open spans, flush, and shut the processor down if this exporter made it."""
        self.finish()
        self.force_flush()
        if self._owns_processor:
            self._processor.shutdown()

    def _emit(self, records: list[SpanRecord]) -> int:
        for record in records:
            self._processor.on_end(self._readable(record))
        self.exported += len(records)
        return len(records)

    def _readable(self, r: SpanRecord) -> Any:
        from opentelemetry.sdk.trace import Event, ReadableSpan
        from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

        flags = TraceFlags(TraceFlags.SAMPLED)
        context = SpanContext(r.trace_id, r.span_id, is_remote=False, trace_flags=flags)
        parent = (
            SpanContext(r.trace_id, r.parent_span_id, is_remote=False, trace_flags=flags)
            if r.parent_span_id is not None
            else None
        )
        status = Status(StatusCode.ERROR, r.error) if r.failed else Status(StatusCode.UNSET)
        return ReadableSpan(
            name=r.name,
            context=context,
            parent=parent,
            resource=self._resource,
            attributes=r.attributes,
            events=[Event(name, attrs, ts) for name, ts, attrs in r.events],
            kind=SpanKind.CLIENT if r.kind == "client" else SpanKind.INTERNAL,
            status=status,
            start_time=r.start_ns,
            end_time=r.end_ns,
            instrumentation_scope=self._scope,
        )


async def export_session(
    session_id: str,
    store: EventStore | str | None = None,
    *,
    span_exporter: Any = None,
    tracer_provider: Any = None,
    capture_content: bool = False,
    agent_name: str | None = None,
    service_name: str = "agent_trace",
    project_name: str | None = None,
) -> int:
    """Export one recorded session's spans (read from ``store`` or the configured one).

    Synchronous from the caller's view: returns once the spans have been
    handed to the exporter (flushed). Returns the number of spans.
    """
    from agent_trace.reading import get_events

    events = await get_events(session_id, store=store)
    exporter = OTelExporter(
        span_exporter,
        tracer_provider=tracer_provider,
        capture_content=capture_content,
        agent_name=agent_name,
        service_name=service_name,
        project_name=project_name,
        batch=False,
    )
    n = exporter.export(events) + exporter.finish()
    exporter.force_flush()
    if exporter._owns_processor:
        exporter._processor.shutdown()
    return n


# --- OTLP/JSON (no OpenTelemetry package needed) --------------------------------


def _any_value(value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}
    if isinstance(value, float):
        return {"doubleValue": value}
    if isinstance(value, (list, tuple)):
        return {"arrayValue": {"values": [_any_value(v) for v in value]}}
    return {"stringValue": str(value)}


def _key_values(attrs: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [{"key": k, "value": _any_value(v)} for k, v in attrs.items()]


def _project(project_name: str | None) -> dict[str, str]:
    return {"openinference.project.name": project_name} if project_name else {}


def _resource_attributes(service_name: str, project_name: str | None) -> dict[str, str]:
    return {"service.name": service_name, **_project(project_name)}


def spans_to_otlp_json(
    spans: Sequence[SpanRecord],
    *,
    service_name: str = "agent_trace",
    project_name: str | None = None,
) -> dict[str, Any]:
    """An OTLP/JSON ``ExportTraceServiceRequest`` (what ``POST /v1/traces`` accepts)."""
    out = []
    for s in spans:
        span: dict[str, Any] = {
            "traceId": f"{s.trace_id:032x}",
            "spanId": f"{s.span_id:016x}",
            "name": s.name,
            "kind": 3 if s.kind == "client" else 1,  # SPAN_KIND_CLIENT / SPAN_KIND_INTERNAL
            "startTimeUnixNano": str(s.start_ns),
            "endTimeUnixNano": str(s.end_ns),
            "attributes": _key_values(s.attributes),
            "events": [
                {"timeUnixNano": str(ts), "name": name, "attributes": _key_values(attrs)}
                for name, ts, attrs in s.events
            ],
            "status": {"code": 2, "message": s.error or ""} if s.failed else {"code": 0},
        }
        if s.parent_span_id is not None:
            span["parentSpanId"] = f"{s.parent_span_id:016x}"
        out.append(span)
    return {
        "resourceSpans": [
            {
                "resource": {
                    "attributes": _key_values(_resource_attributes(service_name, project_name))
                },
                "scopeSpans": [{"scope": {"name": _SCOPE, "version": __version__}, "spans": out}],
            }
        ]
    }


def session_to_otlp_json(
    events: Iterable[AgentEvent],
    *,
    capture_content: bool = False,
    agent_name: str | None = None,
    service_name: str = "agent_trace",
    project_name: str | None = None,
) -> dict[str, Any]:
    """A session's events as OTLP/JSON (``agent-trace export ID --format otlp-json``)."""
    spans = build_spans(events, capture_content=capture_content, agent_name=agent_name)
    return spans_to_otlp_json(spans, service_name=service_name, project_name=project_name)


def session_to_otlp_proto(events: Iterable[AgentEvent], **options: Any) -> bytes:
    """A session's events as OTLP protobuf (``--format otlp-proto``), the encoding every
    OTLP/HTTP receiver accepts (``Content-Type: application/x-protobuf``).

    Same options as :func:`session_to_otlp_json`; needs ``opentelemetry-proto`` (extra ``otel``).
    """
    request = otlp_json_to_request(session_to_otlp_json(events, **options))
    return bytes(request.SerializeToString())


def otlp_json_to_request(doc: Any) -> Any:
    """An OTLP/JSON document as an ``ExportTraceServiceRequest`` protobuf message.

    OTLP/JSON writes trace and span ids as hex, where protobuf's JSON mapping
    reads bytes as base64, so the ids are converted first (on a copy). Raises
    ``ValueError`` naming what is wrong with a document that is not OTLP/JSON.
    """
    import base64
    import copy

    try:
        from google.protobuf import json_format
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )
    except ImportError as exc:
        raise ImportError(
            f"OTLP protobuf needs opentelemetry-proto: pip install 'agent-trace[otel]' ({exc})"
        ) from exc
    spans = doc.get("resourceSpans", doc.get("resource_spans")) if isinstance(doc, dict) else None
    if not isinstance(spans, list) and doc != {}:
        raise ValueError(
            "not an OTLP/JSON ExportTraceServiceRequest: expected an object with "
            "a 'resourceSpans' list"
        )
    doc = copy.deepcopy(doc)

    def items(obj: Any, *keys: str) -> list[Any]:
        for key in keys:
            value = obj.get(key) if isinstance(obj, dict) else None
            if isinstance(value, list):
                return [item for item in value if isinstance(item, dict)]
        return []  # a wrong shape is left for the protobuf parser to name

    def fix(obj: dict[str, Any], where: str) -> None:
        for key in ("traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id"):
            value = obj.get(key)
            if isinstance(value, str) and value:
                try:
                    raw = bytes.fromhex(value)
                except ValueError:
                    raise ValueError(f"{where}: {key} {value[:40]!r} is not hex") from None
                obj[key] = base64.b64encode(raw).decode()

    for rs in items(doc, "resourceSpans", "resource_spans"):
        for ss in items(rs, "scopeSpans", "scope_spans"):
            for span in items(ss, "spans"):
                where = f"span {str(span.get('name', ''))[:80]!r}"
                fix(span, where)
                for link in items(span, "links"):
                    fix(link, where)
    request = ExportTraceServiceRequest()
    try:
        json_format.ParseDict(doc, request, ignore_unknown_fields=True)
    except json_format.ParseError as exc:
        raise ValueError(f"not an OTLP/JSON ExportTraceServiceRequest: {exc}") from None
    return request


async def export_session_otlp_json(
    session_id: str,
    store: EventStore | str | None = None,
    **options: Any,
) -> dict[str, Any]:
    """:func:`session_to_otlp_json` of a stored session."""
    from agent_trace.reading import get_events

    return session_to_otlp_json(await get_events(session_id, store=store), **options)
