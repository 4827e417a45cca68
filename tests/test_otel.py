"""OpenTelemetry export: GenAI span mapping, live and after the fact, OTLP/HTTP and OTLP/JSON."""

from __future__ import annotations

import base64
import http.server
import subprocess
import sys
import threading
from pathlib import Path

import orjson
import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import SpanKind, StatusCode

import agent_trace as at
from agent_trace.otel import (
    OTelExporter,
    build_spans,
    export_session,
    export_session_otlp_json,
    session_to_otlp_json,
)


class ToolBroke(Exception):
    pass


@at.record_tool
def search(query: str) -> list[str]:
    return [f"result for {query}"]


@at.record_tool(name="fetch")
def fetch_page(url: str) -> str:
    raise ToolBroke(f"cannot fetch {url}")


@at.record_llm(model="gpt-4o")
def chat(prompt: str) -> dict:
    search("nested inside the LLM call")
    return {
        "id": "chatcmpl-1",
        "model": "gpt-4o-2024-08-06",
        "choices": [{"message": {"content": "hello"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
    }


@at.record_decision
def route(question: str) -> str:
    return "search"


def record_one_session(session_id: str | None = None) -> str:
    with at.session(session_id, agent="researcher", user="u1") as s:
        at.emit("user_message_received", {"message": "hi"})
        route("what is otel?")
        search("otel")
        with pytest.raises(ToolBroke):
            fetch_page("http://example.invalid")
        chat("say hello")
    at.flush_sync(timeout=10)
    return s.id


def by_name(spans) -> dict:
    return {s.name: s for s in spans}


async def test_a_recorded_session_maps_to_genai_spans(memory_store) -> None:
    sid = record_one_session()
    exporter = InMemorySpanExporter()
    assert await export_session(sid, store=memory_store, span_exporter=exporter) == 6
    spans = exporter.get_finished_spans()
    names = sorted(s.name for s in spans)
    assert names == sorted(
        [
            "invoke_agent researcher",
            "decision route",
            "execute_tool search",
            "execute_tool fetch",
            "chat gpt-4o",
            "execute_tool search",
        ]
    )
    root = next(s for s in spans if s.name.startswith("invoke_agent"))
    assert root.parent is None
    assert root.attributes["gen_ai.operation.name"] == "invoke_agent"
    assert root.attributes["gen_ai.conversation.id"] == sid
    assert root.attributes["gen_ai.agent.name"] == "researcher"
    assert root.attributes["agent_trace.session.user"] == "u1"
    # One trace per turn, the trace id being its session_started event id.
    started = next(e for e in await at.get_events(sid, store=memory_store) if e.version == 1)
    assert {s.context.trace_id for s in spans} == {int(started.event_id.replace("-", ""), 16)}
    # The emitted event is a span event on the session span.
    assert [e.name for e in root.events] == ["user_message_received"]

    events = await at.get_events(sid, store=memory_store)
    started = next(e for e in events if e.event_type == "session_started")
    ended = next(e for e in events if e.event_type == "session_ended")
    assert root.start_time == _ns(started.timestamp) and root.end_time == _ns(ended.timestamp)

    calls = [s for s in spans if s is not root]
    llm = next(s for s in calls if s.name == "chat gpt-4o")
    nested = next(s for s in calls if s.name == "execute_tool search" and s.parent != root.context)
    top_search = next(s for s in calls if s.name == "execute_tool search" and s is not nested)
    assert top_search.parent.span_id == root.context.span_id
    assert nested.parent.span_id == llm.context.span_id  # parent/child from span ids
    assert llm.kind == SpanKind.CLIENT
    assert llm.attributes["gen_ai.operation.name"] == "chat"
    assert llm.attributes["gen_ai.request.model"] == "gpt-4o"
    assert llm.attributes["gen_ai.response.model"] == "gpt-4o-2024-08-06"
    assert llm.attributes["gen_ai.usage.input_tokens"] == 11
    assert llm.attributes["gen_ai.usage.output_tokens"] == 7
    assert tuple(llm.attributes["gen_ai.response.finish_reasons"]) == ("stop",)
    assert llm.start_time <= nested.start_time <= nested.end_time <= llm.end_time

    tool = top_search
    assert tool.attributes["gen_ai.operation.name"] == "execute_tool"
    assert tool.attributes["gen_ai.tool.name"] == "search"
    assert tool.attributes["gen_ai.tool.call.id"] == f"{tool.context.span_id:016x}"
    assert tool.status.status_code == StatusCode.UNSET
    # Content is opt-in.
    assert "gen_ai.tool.call.arguments" not in tool.attributes
    assert "gen_ai.input.messages" not in llm.attributes

    failed = by_name(calls)["execute_tool fetch"]
    assert failed.status.status_code == StatusCode.ERROR
    assert failed.attributes["error.type"] == "ToolBroke"
    assert "cannot fetch" in failed.status.description

    decision = by_name(calls)["decision route"]
    assert decision.attributes["agent_trace.decision.choice"] == "search"
    assert decision.parent.span_id == root.context.span_id
    assert decision.start_time <= decision.end_time


async def test_capture_content_adds_arguments_and_results(memory_store) -> None:
    sid = record_one_session()
    exporter = InMemorySpanExporter()
    await export_session(sid, store=memory_store, span_exporter=exporter, capture_content=True)
    spans = by_name(exporter.get_finished_spans())
    tool = spans["execute_tool fetch"]
    assert orjson.loads(tool.attributes["gen_ai.tool.call.arguments"]) == {
        "url": "http://example.invalid"
    }
    llm = spans["chat gpt-4o"]
    # The GenAI conventions' message shape: a lone string argument is the user's text.
    assert orjson.loads(llm.attributes["gen_ai.input.messages"]) == [
        {"role": "user", "parts": [{"type": "text", "content": "say hello"}]}
    ]
    assert orjson.loads(llm.attributes["gen_ai.output.messages"]) == [
        {
            "role": "assistant",
            "parts": [{"type": "text", "content": "hello"}],
            "finish_reason": "stop",
        }
    ]
    assert llm.attributes["output.value"] == "hello"
    # The turn's root: the question emitted as user_message_received, the LLM's reply.
    root = spans["invoke_agent researcher"]
    assert root.attributes["input.value"] == "hi"
    assert root.attributes["output.value"] == "hello"
    assert orjson.loads(spans["decision route"].attributes["input.value"]) == {
        "question": "what is otel?"
    }


async def test_live_batches_give_the_same_spans_as_after_the_fact(memory_store) -> None:
    sid = record_one_session()
    events = await at.get_events(sid, store=memory_store)
    whole = build_spans(events)

    live = InMemorySpanExporter()
    exporter = OTelExporter(live, batch=False)
    for i in range(0, len(events), 3):  # batches that split calls and the session
        exporter(events[i : i + 3])
    exporter.shutdown()
    got = live.get_finished_spans()
    assert len(got) == len(whole) == 6
    assert sorted(
        (s.name, s.context.span_id, s.parent and s.parent.span_id) for s in got
    ) == sorted((r.name, r.span_id, r.parent_span_id) for r in whole)
    # Exporting again yields the same ids: spans are derived from the events.
    again = build_spans(events)
    assert [(r.trace_id, r.span_id) for r in again] == [(r.trace_id, r.span_id) for r in whole]


async def test_through_a_tracer_provider_pipeline(memory_store) -> None:
    sid = record_one_session("session-not-a-uuid")
    sink = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(sink))
    assert await export_session(sid, store=memory_store, tracer_provider=provider) == 6
    spans = sink.get_finished_spans()
    assert len({s.context.trace_id for s in spans}) == 1
    assert all(s.resource is provider.resource for s in spans)
    assert all(s.instrumentation_scope.name == "agent_trace" for s in spans)


async def test_an_unfinished_call_is_ended_and_marked(memory_store) -> None:
    sid = record_one_session()
    events = await at.get_events(sid, store=memory_store)
    cut = [e for e in events if e.event_type not in ("tool_executed", "session_ended")]
    spans = build_spans(cut)
    assert [s.attributes.get("agent_trace.incomplete") for s in spans].count(True) == 3


async def test_the_recorder_can_feed_the_exporter_as_a_sink(memory_store) -> None:
    # Until the recorder has a sink hook, feed it what the store received.
    live = InMemorySpanExporter()
    exporter = OTelExporter(live, batch=False)
    sid = record_one_session()
    for ev in await at.get_events(sid, store=memory_store):
        exporter([ev])
    exporter.force_flush()
    assert len(live.get_finished_spans()) == 6
    assert exporter.exported == 6


def test_otel_is_imported_lazily(subprocess_env: dict[str, str]) -> None:
    code = (
        "import sys, agent_trace, agent_trace.otel as o\n"
        "o.session_to_otlp_json([])\n"
        "assert not [m for m in sys.modules if m.startswith('opentelemetry')]\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], env=subprocess_env, capture_output=True, timeout=60
    )
    assert result.returncode == 0, result.stderr.decode()


@pytest.fixture
def subprocess_env() -> dict[str, str]:
    import os

    root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


# --- OTLP on the wire -------------------------------------------------------------


class _Receiver(http.server.BaseHTTPRequestHandler):
    bodies: list[tuple[str, str, bytes]]

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        self.bodies.append((self.path, self.headers.get("Content-Type"), self.rfile.read(length)))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()
        self.wfile.write(b"")

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def receiver():
    bodies: list[tuple[str, str, bytes]] = []
    handler = type("Handler", (_Receiver,), {"bodies": bodies})
    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", bodies
    server.shutdown()
    server.server_close()


def _decoded_spans(request) -> dict:
    spans = {}
    for rs in request.resource_spans:
        for ss in rs.scope_spans:
            assert ss.scope.name == "agent_trace"
            for span in ss.spans:
                spans.setdefault(span.name, []).append(span)
    return spans


def _attrs(span) -> dict:
    out = {}
    for kv in span.attributes:
        v = kv.value
        kind = v.WhichOneof("value")
        if kind == "array_value":
            out[kv.key] = [getattr(x, x.WhichOneof("value")) for x in v.array_value.values]
        else:
            out[kv.key] = getattr(v, kind)
    return out


async def test_otlp_http_export_to_a_local_receiver(memory_store, receiver) -> None:
    pytest.importorskip("opentelemetry.exporter.otlp.proto.http")
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    url, bodies = receiver
    sid = record_one_session()
    otlp = OTLPSpanExporter(endpoint=f"{url}/v1/traces")
    assert await export_session(sid, store=memory_store, span_exporter=otlp) == 6

    assert bodies and all(path == "/v1/traces" for path, _, _ in bodies)
    assert all(ctype == "application/x-protobuf" for _, ctype, _ in bodies)
    request = ExportTraceServiceRequest()
    for _, _, body in bodies:
        part = ExportTraceServiceRequest()
        part.ParseFromString(body)
        request.resource_spans.extend(part.resource_spans)
    spans = _decoded_spans(request)
    [root] = spans["invoke_agent researcher"]
    [llm] = spans["chat gpt-4o"]
    [fetch] = spans["execute_tool fetch"]
    assert root.parent_span_id == b""
    assert _attrs(root)["gen_ai.conversation.id"] == sid
    started = (await at.get_events(sid, store=memory_store))[0]
    assert root.trace_id == bytes.fromhex(started.event_id.replace("-", ""))
    assert _attrs(llm)["gen_ai.usage.input_tokens"] == 11
    assert _attrs(llm)["gen_ai.request.model"] == "gpt-4o"
    assert _attrs(fetch)["error.type"] == "ToolBroke"
    assert fetch.status.code == 2  # STATUS_CODE_ERROR
    searches = spans["execute_tool search"]
    assert sorted(s.parent_span_id for s in searches) == sorted([root.span_id, llm.span_id])
    assert fetch.parent_span_id == root.span_id
    assert {s.trace_id for group in spans.values() for s in group} == {root.trace_id}


async def test_otlp_json_matches_the_protobuf_schema(memory_store) -> None:
    from google.protobuf import json_format
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    sid = record_one_session()
    doc = await export_session_otlp_json(sid, store=memory_store, service_name="my-agent")
    assert doc == session_to_otlp_json(
        await at.get_events(sid, store=memory_store), service_name="my-agent"
    )
    text = orjson.dumps(doc).decode()
    # OTLP/JSON writes ids as hex; the generic protobuf JSON mapping wants base64.
    for span in doc["resourceSpans"][0]["scopeSpans"][0]["spans"]:
        for key in ("traceId", "spanId", "parentSpanId"):
            if key in span:
                span[key] = base64.b64encode(bytes.fromhex(span[key])).decode()
    request = json_format.Parse(orjson.dumps(doc), ExportTraceServiceRequest())
    spans = _decoded_spans(request)
    assert set(spans) == {
        "invoke_agent researcher",
        "decision route",
        "execute_tool search",
        "execute_tool fetch",
        "chat gpt-4o",
    }
    [llm] = spans["chat gpt-4o"]
    assert llm.kind == 3  # SPAN_KIND_CLIENT
    assert _attrs(llm)["gen_ai.response.finish_reasons"] == ["stop"]
    [root] = spans["invoke_agent researcher"]
    turn = (await at.get_events(sid, store=memory_store))[0].event_id.replace("-", "")
    assert root.trace_id.hex() == turn
    assert _attrs(request.resource_spans[0].resource)["service.name"] == "my-agent"
    assert f'"traceId":"{turn}"' in text


def _ns(timestamp: str) -> int:
    from agent_trace.otel import _to_ns

    return _to_ns(timestamp)


def test_the_sink_form_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    class Broken(InMemorySpanExporter):
        def export(self, spans):
            raise RuntimeError("collector down")

    from agent_trace.events import AgentEvent

    exporter = OTelExporter(Broken(), batch=False)
    started = AgentEvent("e1", "s", "session_started", "2030-01-01T00:00:00.000000+00:00")
    ended = AgentEvent(
        "e2", "s", "session_ended", "2030-01-01T00:00:01.000000+00:00", {"status": "ok"}
    )
    exporter([started, ended])  # SimpleSpanProcessor logs the exporter's error itself
    exporter._processor = None  # and a failure inside the exporter is logged, not raised
    assert exporter([started, ended]) == 0
    assert exporter.failures == 1
    assert "OpenTelemetry export failed" in caplog.text


# --- what a backend shows (SPEC 11) ------------------------------------------------


async def test_failures_decisions_and_providers_as_backends_read_them(memory_store) -> None:
    sid = record_one_session()
    spans = by_name(build_spans(await at.get_events(sid, store=memory_store)))
    failed = spans["execute_tool fetch"]
    [(name, ts, attrs)] = failed.events
    assert name == "exception" and ts == failed.end_ns
    assert attrs == {
        "exception.type": "ToolBroke",
        "exception.message": "cannot fetch http://example.invalid",
    }
    decision = spans["decision route"]
    assert decision.attributes["openinference.span.kind"] == "CHAIN"
    assert decision.attributes["output.value"] == "search"
    assert "input.value" not in decision.attributes  # content is opt-in
    llm = spans["chat gpt-4o"]
    assert llm.attributes["gen_ai.provider.name"] == "openai"  # told by the model name
    assert "output.value" not in llm.attributes
    assert {s.attributes["gen_ai.conversation.id"] for s in spans.values()} == {sid}


def test_each_entry_into_a_session_is_its_own_trace(memory_store) -> None:
    sid = record_one_session()
    record_one_session(sid)  # re-entered: a second turn
    events = at.get_events_sync(sid, store=memory_store)
    spans = build_spans(events)
    roots = sorted((s for s in spans if s.parent_span_id is None), key=lambda s: s.start_ns)
    assert len(roots) == 2
    turns = [e for e in events if e.event_type == "session_started"]
    for root, turn in zip(roots, turns, strict=True):
        assert root.trace_id == int(turn.event_id.replace("-", ""), 16)
    for root in roots:
        tree = [s for s in spans if s.trace_id == root.trace_id]
        assert len(tree) == 6
        assert all(s.parent_span_id is not None for s in tree if s is not root)
    assert {s.attributes["gen_ai.conversation.id"] for s in spans} == {sid}


@pytest.mark.parametrize(
    ("args", "response", "messages", "output"),
    [
        (  # OpenAI chat, with a tool call in the reply
            {
                "model": "gpt-4o",
                "messages": [
                    {"role": "developer", "content": "Be brief."},
                    {"role": "user", "content": [{"type": "text", "text": "Weather?"}]},
                ],
            },
            {
                "choices": [
                    {
                        "message": {
                            "role": "assistant",
                            "content": None,
                            "tool_calls": [
                                {
                                    "id": "call_1",
                                    "type": "function",
                                    "function": {
                                        "name": "weather",
                                        "arguments": '{"city": "Paris"}',
                                    },
                                }
                            ],
                        },
                        "finish_reason": "tool_calls",
                    }
                ]
            },
            [
                {"role": "system", "parts": [{"type": "text", "content": "Be brief."}]},
                {"role": "user", "parts": [{"type": "text", "content": "Weather?"}]},
            ],
            [
                {
                    "role": "assistant",
                    "parts": [
                        {
                            "type": "tool_call",
                            "name": "weather",
                            "id": "call_1",
                            "arguments": {"city": "Paris"},
                        }
                    ],
                    "finish_reason": "tool_call",
                }
            ],
        ),
        (  # Anthropic, with a tool result going in
            {
                "system": "Be brief.",
                "messages": [
                    {"role": "user", "content": "Weather?"},
                    {
                        "role": "user",
                        "content": [
                            {"type": "tool_result", "tool_use_id": "tu_1", "content": "sunny"}
                        ],
                    },
                ],
            },
            {
                "role": "assistant",
                "content": [{"type": "text", "text": "Sunny."}],
                "stop_reason": "end_turn",
            },
            [
                {"role": "user", "parts": [{"type": "text", "content": "Weather?"}]},
                {
                    "role": "user",
                    "parts": [{"type": "tool_call_response", "id": "tu_1", "response": "sunny"}],
                },
            ],
            [
                {
                    "role": "assistant",
                    "parts": [{"type": "text", "content": "Sunny."}],
                    "finish_reason": "stop",
                }
            ],
        ),
        (  # OpenAI Responses API
            {"input": "Weather?", "instructions": "Be brief."},
            {
                "status": "completed",
                "output": [
                    {"type": "message", "content": [{"type": "output_text", "text": "Sunny."}]},
                ],
            },
            [{"role": "user", "parts": [{"type": "text", "content": "Weather?"}]}],
            [
                {
                    "role": "assistant",
                    "parts": [{"type": "text", "content": "Sunny."}],
                    "finish_reason": "stop",
                }
            ],
        ),
        (  # any function: its arguments as JSON, its result as text
            {"city": "Paris", "days": 2},
            "Sunny.",
            [{"role": "user", "parts": [{"type": "text", "content": '{"city":"Paris","days":2}'}]}],
            [
                {
                    "role": "assistant",
                    "parts": [{"type": "text", "content": "Sunny."}],
                    "finish_reason": "stop",
                }
            ],
        ),
    ],
)
def test_llm_content_in_the_conventions_message_shape(args, response, messages, output) -> None:
    from agent_trace.otel import _finish_reasons, input_messages, output_messages

    got, system = input_messages(args)
    assert got == messages
    if "system" in args or "instructions" in args:
        assert system == [{"type": "text", "content": "Be brief."}]
    assert output_messages(response, _finish_reasons({}, response)) == output


async def test_otlp_proto_and_project_name(memory_store, tmp_path) -> None:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    from agent_trace.otel import otlp_json_to_request, session_to_otlp_proto

    sid = record_one_session()
    events = await at.get_events(sid, store=memory_store)
    body = session_to_otlp_proto(events, capture_content=True, project_name="research")
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    assert _attrs(request.resource_spans[0].resource)["openinference.project.name"] == "research"
    spans = _decoded_spans(request)
    [root] = spans["invoke_agent researcher"]
    assert root.trace_id.hex() == events[0].event_id.replace("-", "")
    assert _attrs(root)["input.value"] == "hi"
    # The same request as OTLP/JSON, converted: identical.
    doc = session_to_otlp_json(events, capture_content=True, project_name="research")
    assert otlp_json_to_request(doc) == request
    with pytest.raises(ValueError, match="resourceSpans"):
        otlp_json_to_request({"spans": []})


def test_cli_export_otlp_proto(sqlite_store, tmp_path, subprocess_env) -> None:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    sid = record_one_session()
    out = tmp_path / "trace.pb"
    url = f"sqlite:///{sqlite_store.path}"
    options = ["--format", "otlp-proto", "--capture-content", "--project", "p1", "-o", str(out)]
    done = subprocess.run(
        [sys.executable, "-m", "agent_trace.cli", "--store", url, "export", sid, *options],
        env=subprocess_env,
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr.decode()
    request = ExportTraceServiceRequest()
    request.ParseFromString(out.read_bytes())
    spans = _decoded_spans(request)
    assert len([s for group in spans.values() for s in group]) == 6
    assert _attrs(request.resource_spans[0].resource)["openinference.project.name"] == "p1"
    assert "gen_ai.input.messages" in _attrs(spans["chat gpt-4o"][0])


async def test_a_live_exporter_gives_each_turn_its_own_trace(memory_store) -> None:
    # As a recorder sink the exporter sees events before the store numbers them.
    live = InMemorySpanExporter()
    at.configure(store=memory_store, sinks=[OTelExporter(live, batch=False)])
    try:
        sid = record_one_session()
        record_one_session(sid)
    finally:
        at.configure(store=memory_store, sinks=[])
    spans = live.get_finished_spans()
    assert len(spans) == 12
    after = build_spans(await at.get_events(sid, store=memory_store))
    assert sorted((s.context.trace_id, s.context.span_id) for s in spans) == sorted(
        (r.trace_id, r.span_id) for r in after
    )
    assert len({s.context.trace_id for s in spans}) == 2


async def test_project_name_on_a_providers_resource(memory_store) -> None:
    from opentelemetry.sdk.resources import Resource

    sid = record_one_session()
    sink = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "svc"}))
    provider.add_span_processor(SimpleSpanProcessor(sink))
    await export_session(sid, store=memory_store, tracer_provider=provider, project_name="p2")
    resources = {s.resource for s in sink.get_finished_spans()}
    assert len(resources) == 1
    [resource] = resources
    assert resource.attributes["service.name"] == "svc"
    assert resource.attributes["openinference.project.name"] == "p2"
