"""OTLP in: OpenTelemetry GenAI spans become agent_trace events.

:func:`ingest_otlp` takes the body of an OTLP/HTTP ``POST /v1/traces``
(``application/x-protobuf`` or ``application/json``, gzip or not) and
appends the events its spans stand for:

- a trace's root span -> ``session_started`` / ``session_ended`` (one turn),
  around the root span's own events;
- an LLM span (``gen_ai.operation.name`` chat / text_completion /
  generate_content / embeddings, OpenInference ``LLM``/``EMBEDDING``,
  OpenLLMetry ``llm.request.type``) -> ``llm_started`` / ``llm_responded``
  or ``llm_failed`` with model, response model, provider, usage (cache and
  reasoning tokens included), finish reasons, input and output messages;
- a tool span (``execute_tool``, OpenInference ``TOOL``/``RETRIEVER``,
  OpenLLMetry ``tool``) -> ``tool_started`` / ``tool_executed`` or
  ``tool_failed``;
- an agent or chain span (``invoke_agent``, OpenInference ``AGENT``/``CHAIN``,
  OpenLLMetry ``workflow``/``task``/``agent``) -> ``agent_started`` /
  ``agent_finished`` (``agent``, ``status``, ``duration_ms``).

Spans that are none of these (HTTP, database, ...) are ignored and counted.
Messages are kept in the GenAI conventions' shape (``role``, ``parts``,
``finish_reason``), whichever attribute names the producer used: the current
``gen_ai.input.messages``/``gen_ai.output.messages``, OpenInference's
``llm.input_messages.N.message.*``, or the older ``gen_ai.prompt.N.*`` /
``gen_ai.completion.N.*``.

The session is ``gen_ai.conversation.id``, else OpenInference's ``session.id``,
else the trace id (as a UUID). Span ids are the spans' own (16 hex chars),
parents likewise, timestamps the spans' start and end. Event ids are
UUIDv7-shaped, derived from trace id, span id and the event's role, so a batch
sent twice writes nothing the second time (stores are idempotent by
``event_id``). An exporter sends a span when it ends, so children usually
arrive before their parent: each batch is appended in timestamp order, and
versions follow arrival.

Needs ``opentelemetry-proto`` (extra ``otel``), imported when first called.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import re
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from agent_trace.events import AgentEvent, format_timestamp
from agent_trace.otel import otlp_json_to_request

if TYPE_CHECKING:
    from agent_trace.stores.base import EventStore

__all__ = ["OtlpBatch", "ingest_otlp", "ingest_otlp_request", "otlp_to_events"]

log = logging.getLogger("agent_trace")

_PROTOBUF = ("application/x-protobuf", "application/protobuf")
_JSON = ("application/json",)


@dataclass
class OtlpBatch:
    """What one OTLP request stands for: its events, and how many spans were used or ignored."""

    events: list[AgentEvent] = field(default_factory=list)
    spans: int = 0  # spans that became events
    ignored: int = 0  # spans that are not GenAI spans (HTTP, database, ...)
    written: int = 0  # events newly stored (0 for spans sent before)


async def ingest_otlp(body: bytes, content_type: str, store: EventStore) -> int:
    """Append the events of an OTLP/HTTP trace request; return how many were newly written.

    ``content_type`` is the request's (``application/x-protobuf`` or
    ``application/json``; parameters such as ``charset`` are ignored). A body
    that is not an OTLP ``ExportTraceServiceRequest`` raises ``ValueError``
    saying why, and nothing is written. Sending the same spans again writes
    nothing (event ids are derived from the spans).
    """
    return (await ingest_otlp_request(body, content_type, store)).written


async def ingest_otlp_request(body: bytes, content_type: str, store: EventStore) -> OtlpBatch:
    """:func:`ingest_otlp`, saying also how many spans were used and ignored (for a server's
    reply or log)."""
    batch = otlp_to_events(body, content_type)
    if batch.ignored:
        log.debug("agent_trace: OTLP ingest ignored %d non-GenAI spans", batch.ignored)
    if batch.events:
        batch.written = await store.append(batch.events)
    return batch


def otlp_to_events(body: bytes, content_type: str) -> OtlpBatch:
    """The events an OTLP/HTTP trace request stands for, in timestamp order (nothing written)."""
    spans = _decode(body, content_type)
    sessions = _sessions_of(spans)
    kinds = {(s.trace_id, s.span_id): _kind(s.attrs) for s in spans}
    _skip_ignored_parents(spans, kinds)
    batch = OtlpBatch()
    keyed: list[tuple[int, int, AgentEvent]] = []
    for span in spans:
        kind = kinds[(span.trace_id, span.span_id)]
        if kind is None:
            batch.ignored += 1
            continue
        batch.spans += 1
        session_id = sessions[span.trace_id]
        for ns, rank, ev in _span_events(span, kind, session_id):
            keyed.append((ns, rank, ev))
    keyed.sort(key=lambda item: (item[0], item[1]))
    batch.events = [ev for _, _, ev in keyed]
    return batch


def _skip_ignored_parents(spans: list[_Span], kinds: dict[tuple[str, str], str | None]) -> None:
    """Parent GenAI spans to their nearest GenAI ancestor in the request.

    A GenAI span under ignored spans only (say, a web framework's request span
    as the trace's root) becomes a root: a turn. A parent not in the request
    is kept as it is (it may be a GenAI span sent earlier or later).
    """
    by_id = {(s.trace_id, s.span_id): s for s in spans}
    for span in spans:
        parent = span.parent_span_id
        seen = 0
        while parent is not None and seen < len(spans):  # bound: a cycle in bad data
            above = by_id.get((span.trace_id, parent))
            if above is None or kinds[(span.trace_id, parent)] is not None:
                break
            parent = above.parent_span_id
            seen += 1
        span.parent_span_id = parent


# --- decoding -----------------------------------------------------------------


@dataclass
class _Span:
    trace_id: str  # 32 hex
    span_id: str  # 16 hex
    parent_span_id: str | None
    name: str
    start_ns: int
    end_ns: int
    attrs: dict[str, Any]
    events: list[tuple[str, int, dict[str, Any]]]
    failed: bool
    status_message: str
    resource: dict[str, Any]


def _decode(body: bytes, content_type: str) -> list[_Span]:
    ctype = (content_type or "").split(";")[0].strip().lower()
    if ctype not in _PROTOBUF + _JSON:
        raise ValueError(
            f"unsupported content type {content_type!r}: OTLP/HTTP trace requests are "
            "application/x-protobuf or application/json"
        )
    if not isinstance(body, (bytes, bytearray, memoryview)):
        raise ValueError(f"the body must be bytes, got {type(body).__name__}")
    data = bytes(body)
    if data[:2] == b"\x1f\x8b":  # gzip (Content-Encoding: gzip left to us)
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise ValueError(f"the body looks gzipped but does not decompress: {exc}") from None
    if ctype in _PROTOBUF:
        try:
            from google.protobuf.message import DecodeError
            from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
                ExportTraceServiceRequest,
            )
        except ImportError as exc:
            raise ImportError(
                f"OTLP ingest needs opentelemetry-proto: pip install 'agent-trace[otel]' ({exc})"
            ) from exc
        request = ExportTraceServiceRequest()
        try:
            request.ParseFromString(data)
        except DecodeError as exc:
            raise ValueError(f"not an OTLP protobuf ExportTraceServiceRequest: {exc}") from None
    else:
        try:
            doc = orjson.loads(data) if data.strip() else None
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"not valid JSON: {exc}") from None
        request = otlp_json_to_request(doc)
    return _spans_of(request)


def _spans_of(request: Any) -> list[_Span]:
    spans = []
    for rs in request.resource_spans:
        resource = _key_values(rs.resource.attributes)
        for ss in rs.scope_spans:
            for sp in ss.spans:
                where = f"span {sp.name[:80]!r}"
                if len(sp.trace_id) != 16 or not any(sp.trace_id):
                    raise ValueError(f"{where}: trace id must be 16 non-zero bytes")
                if len(sp.span_id) != 8 or not any(sp.span_id):
                    raise ValueError(f"{where}: span id must be 8 non-zero bytes")
                if sp.parent_span_id and len(sp.parent_span_id) != 8:
                    raise ValueError(f"{where}: parent span id must be 8 bytes")
                end = sp.end_time_unix_nano or sp.start_time_unix_nano
                spans.append(
                    _Span(
                        trace_id=sp.trace_id.hex(),
                        span_id=sp.span_id.hex(),
                        parent_span_id=sp.parent_span_id.hex() if any(sp.parent_span_id) else None,
                        name=sp.name,
                        start_ns=sp.start_time_unix_nano,
                        end_ns=max(end, sp.start_time_unix_nano),
                        attrs=_key_values(sp.attributes),
                        events=[
                            (e.name, e.time_unix_nano, _key_values(e.attributes)) for e in sp.events
                        ],
                        failed=sp.status.code == 2,  # STATUS_CODE_ERROR
                        status_message=sp.status.message,
                        resource=resource,
                    )
                )
    return spans


def _key_values(kvs: Iterable[Any]) -> dict[str, Any]:
    return {kv.key: _any_value(kv.value) for kv in kvs}


def _any_value(v: Any) -> Any:
    which = v.WhichOneof("value")
    if which == "array_value":
        return [_any_value(x) for x in v.array_value.values]
    if which == "kvlist_value":
        return _key_values(v.kvlist_value.values)
    if which == "bytes_value":
        return {"$bytes": len(v.bytes_value)}
    if which is None or which == "string_value_strindex":
        return None
    return getattr(v, which)


# --- sessions -------------------------------------------------------------------

_SESSION_KEYS = ("gen_ai.conversation.id", "session.id")
_BAD_SESSION_CHARS = re.compile(r"[^A-Za-z0-9._:@/+=-]")
# A trace's session, remembered across requests: an exporter sends a trace's
# spans in several batches, and often only some of them carry the
# conversation id (the root, or the spans made inside a session context).
_trace_sessions: OrderedDict[str, str] = OrderedDict()
_REMEMBERED = 10_000


def _session_value(attrs: Mapping[str, Any]) -> str | None:
    for key in _SESSION_KEYS:
        value = attrs.get(key)
        if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value):
            text = _BAD_SESSION_CHARS.sub("_", str(value))[:256]
            return text
    return None


def _sessions_of(spans: list[_Span]) -> dict[str, str]:
    """Each trace's session: a conversation id any of its spans carries, else the trace id."""
    found: dict[str, str] = {}
    for span in spans:
        value = _session_value(span.attrs)
        # The root's id wins over a child's (they should agree anyway).
        if value is not None and (span.trace_id not in found or span.parent_span_id is None):
            found[span.trace_id] = value
    sessions = {}
    for span in spans:
        tid = span.trace_id
        if tid in sessions:
            continue
        session = found.get(tid) or _trace_sessions.get(tid) or _uuid_form(tid)
        sessions[tid] = session
        if tid in found:
            _trace_sessions[tid] = session
            _trace_sessions.move_to_end(tid)
            while len(_trace_sessions) > _REMEMBERED:
                _trace_sessions.popitem(last=False)
    return sessions


def _uuid_form(hex32: str) -> str:
    return f"{hex32[:8]}-{hex32[8:12]}-{hex32[12:16]}-{hex32[16:20]}-{hex32[20:]}"


# --- classification ---------------------------------------------------------------

_OI_KINDS = {
    "LLM": "llm",
    "EMBEDDING": "llm",
    "TOOL": "tool",
    "RETRIEVER": "tool",
    "RERANKER": "tool",
    "AGENT": "agent",
    "CHAIN": "agent",
    "GUARDRAIL": "agent",
    "EVALUATOR": "agent",
}
_GENAI_OPS = {
    "chat": "llm",
    "text_completion": "llm",
    "generate_content": "llm",
    "embeddings": "llm",
    "execute_tool": "tool",
    "retrieval": "tool",
    "invoke_agent": "agent",
    "create_agent": "agent",
    "invoke_workflow": "agent",
}
_TRACELOOP_KINDS = {"tool": "tool", "workflow": "agent", "task": "agent", "agent": "agent"}


def _kind(a: Mapping[str, Any]) -> str | None:
    """``llm``, ``tool``, ``agent`` or None (not a GenAI span)."""
    oi = a.get("openinference.span.kind")
    if isinstance(oi, str) and oi.upper() in _OI_KINDS:
        return _OI_KINDS[oi.upper()]
    op = a.get("gen_ai.operation.name")
    if isinstance(op, str) and op in _GENAI_OPS:
        return _GENAI_OPS[op]
    tl = a.get("traceloop.span.kind")
    if isinstance(tl, str) and tl in _TRACELOOP_KINDS:
        return _TRACELOOP_KINDS[tl]
    if any(
        key in a
        for key in (
            "llm.request.type",
            "gen_ai.request.model",
            "gen_ai.response.model",
            "gen_ai.provider.name",
            "gen_ai.system",
            "gen_ai.input.messages",
            "llm.model_name",
        )
    ):
        return "llm"
    if "gen_ai.tool.name" in a or "tool.name" in a:
        return "tool"
    if "gen_ai.agent.name" in a or "agent.name" in a:
        return "agent"
    return None


# --- events of one span --------------------------------------------------------------

# Sort ranks for events with equal timestamps: a turn opens before the root's
# call starts, and the call ends before the turn does.
_OPEN_TURN, _START, _END, _CLOSE_TURN = range(4)


def _span_events(span: _Span, kind: str, session_id: str) -> list[tuple[int, int, AgentEvent]]:
    a = span.attrs
    duration_ms = round((span.end_ns - span.start_ns) / 1_000_000, 3)
    error_type, error = _failure(span) if span.failed else (None, None)
    if kind == "llm":
        started, finished = _llm_payloads(span, duration_ms, error_type, error)
        types = ("llm_started", "llm_failed" if span.failed else "llm_responded")
    elif kind == "tool":
        name = _first_str(a, "gen_ai.tool.name", "tool.name", "traceloop.entity.name")
        name = name or span.name.removeprefix("execute_tool ").strip() or "tool"
        started = {"tool": name, "args": _tool_args(a)}
        if span.failed:
            finished = {"tool": name, "error_type": error_type, "error": error}
        else:
            finished = {"tool": name, "result": _tool_result(a)}
        finished["duration_ms"] = duration_ms
        types = ("tool_started", "tool_failed" if span.failed else "tool_executed")
    else:
        name = _first_str(
            a, "gen_ai.agent.name", "agent.name", "agent_name", "traceloop.entity.name"
        )
        name = name or span.name.removeprefix("invoke_agent ").strip() or "agent"
        started = {"agent": name}
        oi_kind = a.get("openinference.span.kind")
        if isinstance(oi_kind, str) and oi_kind.upper() != "AGENT":
            started["kind"] = oi_kind.lower()
        agent_input = _agent_input(a)
        if agent_input is not None:
            started["input"] = agent_input
        finished = {"agent": name, "status": "error" if span.failed else "ok"}
        finished["duration_ms"] = duration_ms
        output = _agent_output(a)
        if output is not None:
            finished["output"] = output
        if span.failed:
            finished.update(error_type=error_type, error=error)
        types = ("agent_started", "agent_finished")
    otel = {"trace_id": span.trace_id, "span_name": span.name}
    started["otel"] = otel
    parent = span.parent_span_id
    out = [
        (span.start_ns, _START, _event(span, types[0], span.start_ns, started, session_id, parent)),
        (span.end_ns, _END, _event(span, types[1], span.end_ns, finished, session_id, parent)),
    ]
    if parent is None:  # a trace's root: one turn of the session
        meta: dict[str, Any] = {"source": "otlp", "trace_id": span.trace_id}
        service = span.resource.get("service.name")
        if isinstance(service, str):
            meta["service"] = service
        project = span.resource.get("openinference.project.name")
        if isinstance(project, str):
            meta["project"] = project
        if kind == "agent":
            meta["agent"] = started["agent"]
        ended: dict[str, Any] = {"status": "error" if span.failed else "ok"}
        if span.failed:
            ended["error"] = f"{error_type}: {error}"
        ended["duration_ms"] = duration_ms
        out.append(
            (
                span.start_ns,
                _OPEN_TURN,
                _event(span, "session_started", span.start_ns, {"metadata": meta}, session_id),
            )
        )
        out.append(
            (
                span.end_ns,
                _CLOSE_TURN,
                _event(span, "session_ended", span.end_ns, ended, session_id),
            )
        )
    return out


def _event(
    span: _Span,
    event_type: str,
    ns: int,
    payload: dict[str, Any],
    session_id: str,
    parent: str | None = None,
) -> AgentEvent:
    session_event = event_type.startswith("session_")
    return AgentEvent(
        event_id=_event_id(span.trace_id, span.span_id, event_type, ns),
        session_id=session_id,
        event_type=event_type,
        timestamp=format_timestamp(ns),
        payload=payload,
        span_id=None if session_event else span.span_id,
        parent_span_id=None if session_event else parent,
    )


def _event_id(trace_id: str, span_id: str, role: str, ns: int) -> str:
    """A UUIDv7-shaped id: the event's millisecond, then bits of a hash of what it is."""
    ms = (ns // 1_000_000) & ((1 << 48) - 1)
    h = int.from_bytes(hashlib.sha256(f"{trace_id}/{span_id}/{role}".encode()).digest()[:10], "big")
    rand_a = h & 0xFFF
    rand_b = (h >> 12) & ((1 << 62) - 1)
    n = (ms << 80) | (0x7 << 76) | (rand_a << 64) | (0b10 << 62) | rand_b
    x = f"{n:032x}"
    return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


def _failure(span: _Span) -> tuple[str, str]:
    for name, _, attrs in span.events:
        if name == "exception":
            etype = attrs.get("exception.type")
            message = attrs.get("exception.message")
            return (
                str(etype or span.attrs.get("error.type") or "Error"),
                str(message if message is not None else span.status_message),
            )
    return str(span.attrs.get("error.type") or "Error"), span.status_message


# --- LLM spans ---------------------------------------------------------------------


def _llm_payloads(
    span: _Span, duration_ms: float, error_type: str | None, error: str | None
) -> tuple[dict[str, Any], dict[str, Any]]:
    a = dict(span.attrs)
    # The newest conventions may put the messages on an event instead.
    for name, _, attrs in span.events:
        if name == "gen_ai.client.inference.operation.details":
            for key, value in attrs.items():
                a.setdefault(key, value)
    model = _first_str(a, "gen_ai.request.model", "llm.model_name", "gen_ai.response.model")
    response_model = _first_str(a, "gen_ai.response.model", "llm.model_name")
    provider = _first_str(a, "gen_ai.provider.name", "llm.provider", "gen_ai.system", "llm.system")
    common: dict[str, Any] = {"name": span.name, "model": model}
    if provider:
        common["provider"] = provider.lower()
    args: dict[str, Any] = {}
    messages = _input_messages(a, span.events)
    if messages is not None:
        args["messages"] = messages
    params = {
        key.removeprefix("gen_ai.request."): value
        for key, value in a.items()
        if key.startswith("gen_ai.request.") and key != "gen_ai.request.model"
    }
    if params:
        args["parameters"] = params
    started = {**common, "args": args}
    finished = dict(common)
    if error_type is not None:
        finished.update(error_type=error_type, error=error)
    else:
        if response_model:
            finished["response_model"] = response_model
        output = _output_messages(a, span.events)
        finished["response"] = output
        finished["usage"] = _usage(a)
        reasons = _finish_reasons(a, output)
        if reasons:
            finished["finish_reasons"] = reasons
        response_id = a.get("gen_ai.response.id")
        if isinstance(response_id, str):
            finished["response_id"] = response_id
    finished["duration_ms"] = duration_ms
    return started, finished


def _usage(a: Mapping[str, Any]) -> dict[str, int]:
    found = {
        "input_tokens": _first_int(
            a, "gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens", "llm.token_count.prompt"
        ),
        "output_tokens": _first_int(
            a,
            "gen_ai.usage.output_tokens",
            "gen_ai.usage.completion_tokens",
            "llm.token_count.completion",
        ),
        "total_tokens": _first_int(
            a, "llm.token_count.total", "llm.usage.total_tokens", "gen_ai.usage.total_tokens"
        ),
        "cache_read_tokens": _first_int(
            a,
            "gen_ai.usage.cache_read.input_tokens",
            "gen_ai.usage.cache_read_input_tokens",
            "llm.token_count.prompt_details.cache_read",
            "gen_ai.usage.details.cache_read_tokens",
        ),
        "cache_write_tokens": _first_int(
            a,
            "gen_ai.usage.cache_creation.input_tokens",
            "gen_ai.usage.cache_creation_input_tokens",
            "llm.token_count.prompt_details.cache_write",
            "gen_ai.usage.details.cache_write_tokens",
        ),
        "reasoning_tokens": _first_int(
            a,
            "gen_ai.usage.reasoning.output_tokens",
            "llm.token_count.completion_details.reasoning",
            "gen_ai.usage.details.reasoning_tokens",
        ),
    }
    usage = {key: value for key, value in found.items() if value is not None}
    if "total_tokens" not in usage and "input_tokens" in usage and "output_tokens" in usage:
        usage["total_tokens"] = usage["input_tokens"] + usage["output_tokens"]
    return usage


def _finish_reasons(a: Mapping[str, Any], output: Any) -> list[str]:
    reasons = a.get("gen_ai.response.finish_reasons")
    if isinstance(reasons, list) and reasons:
        return [str(r) for r in reasons]
    if isinstance(reasons, str) and reasons:
        return [reasons]
    if isinstance(output, list):
        return [
            str(m["finish_reason"])
            for m in output
            if isinstance(m, dict) and m.get("finish_reason")
        ]
    return []


def _input_messages(a: Mapping[str, Any], events: list[Any]) -> list[dict[str, Any]] | None:
    system = _json_value(a.get("gen_ai.system_instructions"))
    head: list[dict[str, Any]] = []
    if isinstance(system, list) and system:
        head = [{"role": "system", "parts": system}]
    messages = _json_value(a.get("gen_ai.input.messages"))
    if isinstance(messages, list):
        return head + messages
    for prefix in ("llm.input_messages", "gen_ai.prompt"):
        flat = _indexed(a, prefix)
        if flat:
            return head + [_message(m) for m in flat]
    prompt = _json_value(a.get("gen_ai.prompt"))
    if prompt is not None:
        return head + _loose_messages(prompt, "user")
    # Older conventions: one span event per message (gen_ai.user.message, ...).
    by_event = [
        _message({"role": name.split(".")[1], **attrs})
        for name, _, attrs in events
        if re.fullmatch(r"gen_ai\.(system|user|assistant|tool)\.message", name)
    ]
    if by_event:
        return head + by_event
    if "input.value" in a:
        return head + _loose_messages(_oi_value(a, "input.value"), "user")
    return head or None


def _output_messages(a: Mapping[str, Any], events: list[Any]) -> list[dict[str, Any]]:
    messages = _json_value(a.get("gen_ai.output.messages"))
    if isinstance(messages, list):
        return messages
    for prefix in ("llm.output_messages", "gen_ai.completion"):
        flat = _indexed(a, prefix)
        if flat:
            return [_message(m, output=True) for m in flat]
    completion = _json_value(a.get("gen_ai.completion"))
    if completion is not None:
        return _loose_messages(completion, "assistant")
    choices = [
        _message({"role": "assistant", **attrs}, output=True)
        for name, _, attrs in events
        if name == "gen_ai.choice"
    ]
    if choices:
        return choices
    if "output.value" in a:
        return _loose_messages(_oi_value(a, "output.value"), "assistant")
    return []


def _message(m: Mapping[str, Any], *, output: bool = False) -> dict[str, Any]:
    """One message from OpenInference's or the older conventions' flattened form."""
    if isinstance(m.get("message"), dict):  # OpenInference: llm.input_messages.N.message.*
        m = m["message"]
    role = str(m.get("role") or ("assistant" if output else "user"))
    parts: list[dict[str, Any]] = []
    content = m.get("content")
    if isinstance(content, str):
        if role == "tool" and m.get("tool_call_id"):
            parts.append(
                {"type": "tool_call_response", "id": m["tool_call_id"], "response": content}
            )
        else:
            parts.append({"type": "text", "content": content})
    elif content is not None:
        parts.extend(_loose_messages(content, role)[0]["parts"])
    for item in m.get("contents") or []:  # OpenInference multi-part content
        c = item.get("message_content", item) if isinstance(item, dict) else {}
        if isinstance(c, dict) and isinstance(c.get("text"), str):
            parts.append({"type": "text", "content": c["text"]})
    for call in m.get("tool_calls") or []:
        if not isinstance(call, dict):
            continue
        call = call.get("tool_call", call)
        fn = call.get("function") if isinstance(call.get("function"), dict) else call
        part: dict[str, Any] = {"type": "tool_call", "name": str(fn.get("name") or "")}
        if call.get("id"):
            part["id"] = str(call["id"])
        arguments = _json_value(fn.get("arguments"))
        if arguments is not None:
            part["arguments"] = arguments
        parts.append(part)
    out: dict[str, Any] = {"role": role, "parts": parts}
    if m.get("name"):
        out["name"] = str(m["name"])
    if output:
        out["finish_reason"] = str(m.get("finish_reason") or "stop")
    return out


def _loose_messages(value: Any, role: str) -> list[dict[str, Any]]:
    """Messages from a value of no known shape: a list of role/content dicts, else text."""
    if (
        isinstance(value, list)
        and value
        and all(isinstance(m, dict) and "role" in m for m in value)
    ):
        if all("parts" in m for m in value):
            return value
        return [_message(m, output=role == "assistant") for m in value]
    text = value if isinstance(value, str) else orjson.dumps(value).decode()
    message: dict[str, Any] = {"role": role, "parts": [{"type": "text", "content": text}]}
    if role == "assistant":
        message["finish_reason"] = "stop"
    return [message]


def _indexed(a: Mapping[str, Any], prefix: str) -> list[dict[str, Any]]:
    """``prefix.0.role``, ``prefix.0.content``, ... as a list of nested dicts."""
    root: dict[str, Any] = {}
    start = prefix + "."
    for key, value in a.items():
        if not key.startswith(start):
            continue
        node = root
        path = key[len(start) :].split(".")
        if not path[0].isdigit():
            continue
        for step in path[:-1]:
            nxt = node.setdefault(step, {})
            if not isinstance(nxt, dict):
                break
            node = nxt
        else:
            node[path[-1]] = value
    return [_listify(root[k]) for k in sorted(root, key=int)]


def _listify(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    if node and all(k.isdigit() for k in node):
        return [_listify(node[k]) for k in sorted(node, key=int)]
    return {k: _listify(v) for k, v in node.items()}


# --- tool and agent spans -----------------------------------------------------------


def _tool_args(a: Mapping[str, Any]) -> Any:
    for key in ("gen_ai.tool.call.arguments", "tool.parameters"):
        if key in a:
            return _json_value(a[key])
    if "input.value" in a:
        return _oi_value(a, "input.value")
    entity = _json_value(a.get("traceloop.entity.input"))
    if isinstance(entity, dict) and isinstance(entity.get("inputs"), dict):
        return entity["inputs"]
    return entity if entity is not None else {}


def _tool_result(a: Mapping[str, Any]) -> Any:
    if "gen_ai.tool.call.result" in a:
        return _json_value(a["gen_ai.tool.call.result"])
    if "output.value" in a:
        return _oi_value(a, "output.value")
    entity = _json_value(a.get("traceloop.entity.output"))
    if isinstance(entity, dict) and "output" in entity:
        return entity["output"]
    return entity


def _oi_value(a: Mapping[str, Any], key: str) -> Any:
    """OpenInference's ``input.value``/``output.value``: JSON only when its mime type says so."""
    value = a[key]
    if a.get(key.replace(".value", ".mime_type")) == "application/json":
        return _json_value(value)
    return value


def _agent_input(a: Mapping[str, Any]) -> Any:
    if "input.value" in a:
        return _oi_value(a, "input.value")
    if "traceloop.entity.input" in a:
        return _json_value(a["traceloop.entity.input"])
    for key in ("gen_ai.input.messages", "pydantic_ai.all_messages", "all_messages_events"):
        messages = _json_value(a.get(key))
        if isinstance(messages, list):
            text = _first_text(messages, "user")
            if text is not None:
                return text
    return None


def _agent_output(a: Mapping[str, Any]) -> Any:
    if "output.value" in a:
        return _oi_value(a, "output.value")
    if "final_result" in a:  # pydantic-ai: the run's output as the agent returned it
        return a["final_result"]
    if "traceloop.entity.output" in a:
        return _json_value(a["traceloop.entity.output"])
    messages = _json_value(a.get("gen_ai.output.messages"))
    if isinstance(messages, list):
        return _first_text(messages, "assistant")
    return None


def _first_text(messages: list[Any], role: str) -> str | None:
    for m in messages:
        if isinstance(m, dict) and m.get("role") == role:
            for part in m.get("parts") or []:
                if isinstance(part, dict) and part.get("type") == "text":
                    return str(part.get("content"))
            if isinstance(m.get("content"), str):
                return str(m["content"])
    return None


# --- values -----------------------------------------------------------------------


def _json_value(value: Any) -> Any:
    """A JSON text attribute as the value it encodes; anything else as is."""
    if isinstance(value, str) and value[:1] in ("{", "[", '"'):
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            return value
    return value


def _first_str(a: Mapping[str, Any], *keys: str) -> str | None:
    for key in keys:
        value = a.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def _first_int(a: Mapping[str, Any], *keys: str) -> int | None:
    for key in keys:
        value = a.get(key)
        if isinstance(value, bool):
            continue
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and value.isdigit():
            return int(value)
    return None
