"""OTLP in: real OpenTelemetry producers post to a loopback receiver that calls ingest_otlp."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import importlib
import os
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.trace import Status, StatusCode

import agent_trace as at
from agent_trace.integrity import verify_session
from agent_trace.otlp_ingest import ingest_otlp, ingest_otlp_request, otlp_to_events
from agent_trace.projections import session_summary, tool_stats
from agent_trace.replay import iter_steps
from agent_trace.stores import SQLiteStore


def need(module: str) -> Any:
    """``module``, imported; CI (``CI`` set) must have it, elsewhere the test is skipped."""
    try:
        return importlib.import_module(module)
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run this test; {module} is not installed")
        pytest.skip(f"{module} is not installed")


class Receiver:
    """A loopback OTLP/HTTP endpoint in the test's event loop: POST /v1/traces -> ingest_otlp."""

    def __init__(self, store: SQLiteStore) -> None:
        self.store = store
        self.requests: list[tuple[str, bytes]] = []
        self.written: list[int] = []
        self.url = ""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                headers = {
                    k.strip().lower(): v.strip()
                    for k, _, v in (line.partition(":") for line in lines[1:] if line)
                }
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                ctype = headers.get("content-type", "")
                self.requests.append((ctype, body))
                try:
                    self.written.append(await ingest_otlp(body, ctype, self.store))
                    status, reply = "200 OK", b""
                except ValueError as exc:
                    status, reply = "400 Bad Request", str(exc).encode()
                writer.write(
                    f"HTTP/1.1 {status}\r\nContent-Type: application/x-protobuf\r\n"
                    f"Content-Length: {len(reply)}\r\n\r\n".encode()
                    + reply
                )
                await writer.drain()
        writer.close()


@pytest.fixture
async def receiver(tmp_path) -> AsyncIterator[Receiver]:
    store = SQLiteStore(tmp_path / "ingested.db")
    rx = Receiver(store)
    server = await asyncio.start_server(rx.handle, "127.0.0.1", 0)
    rx.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1/traces"
    async with server:
        yield rx
        server.close()
    await store.close()


def provider_for(rx: Receiver, *, batch: bool = True, **resource: str) -> TracerProvider:
    provider = TracerProvider(resource=Resource.create({"service.name": "my-agent", **resource}))
    exporter = OTLPSpanExporter(endpoint=rx.url)
    provider.add_span_processor(
        BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter)
    )
    return provider


def genai_turn(provider: TracerProvider, conversation: str, question: str) -> None:
    """One agent turn written by hand with the OTel API, as the GenAI conventions say."""
    tracer = provider.get_tracer("handwritten")
    conv = {"gen_ai.conversation.id": conversation}
    with tracer.start_as_current_span(
        "invoke_agent researcher",
        attributes={"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "researcher"}
        | conv,
    ):
        with tracer.start_as_current_span(
            "chat gpt-4o",
            attributes={
                "gen_ai.operation.name": "chat",
                "gen_ai.provider.name": "openai",
                "gen_ai.request.model": "gpt-4o",
                "gen_ai.response.model": "gpt-4o-2024-08-06",
                "gen_ai.request.temperature": 0.2,
                "gen_ai.usage.input_tokens": 120,
                "gen_ai.usage.output_tokens": 30,
                "gen_ai.usage.cache_read.input_tokens": 100,
                "gen_ai.response.finish_reasons": ["tool_call"],
                "gen_ai.input.messages": orjson.dumps(
                    [{"role": "user", "parts": [{"type": "text", "content": question}]}]
                ).decode(),
                "gen_ai.output.messages": orjson.dumps(
                    [
                        {
                            "role": "assistant",
                            "parts": [
                                {"type": "tool_call", "id": "c1", "name": "search", "arguments": {}}
                            ],
                            "finish_reason": "tool_call",
                        }
                    ]
                ).decode(),
            }
            | conv,
        ):
            pass
        with (
            tracer.start_as_current_span(
                "execute_tool search",
                attributes={
                    "gen_ai.operation.name": "execute_tool",
                    "gen_ai.tool.name": "search",
                    "gen_ai.tool.call.arguments": '{"query": "otel"}',
                    "gen_ai.tool.call.result": '["a", "b"]',
                },
            ),
            tracer.start_as_current_span("GET /search", attributes={"http.method": "GET"}),
        ):
            pass  # not a GenAI span: ignored
        with tracer.start_as_current_span(
            "execute_tool fetch",
            attributes={"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "fetch"},
        ) as span:
            span.record_exception(TimeoutError("fetch timed out"))
            span.set_status(Status(StatusCode.ERROR, "fetch timed out"))


async def test_the_otel_sdk_exporter_posts_spans_that_become_a_verified_session(
    receiver: Receiver,
) -> None:
    provider = provider_for(receiver)
    genai_turn(provider, "conv-1", "what is otel?")
    genai_turn(provider, "conv-1", "and otlp?")  # a second turn: its own trace, same session
    await asyncio.to_thread(provider.force_flush)
    await asyncio.to_thread(provider.shutdown)
    assert receiver.requests and all(c == "application/x-protobuf" for c, _ in receiver.requests)
    store = receiver.store

    events = await store.get_events("conv-1")
    types = [e.event_type for e in events]
    assert types.count("session_started") == types.count("session_ended") == 2
    assert types.count("llm_responded") == 2 and types.count("tool_failed") == 2
    assert types.count("tool_executed") == 2 and types.count("agent_finished") == 2
    assert sum(receiver.written) == len(events) == 20  # the HTTP spans wrote nothing
    again = [await ingest_otlp_request(body, ctype, store) for ctype, body in receiver.requests]
    assert sum(b.spans for b in again) == 8 and sum(b.ignored for b in again) == 2
    assert sum(b.written for b in again) == 0  # sent before
    assert (await verify_session("conv-1", store=store)).ok
    # One batch per flush: each turn's events are in timestamp order.
    stamps = [e.timestamp for e in events]
    assert stamps == sorted(stamps)

    llm = next(e for e in events if e.event_type == "llm_responded")
    assert llm.payload["model"] == "gpt-4o"
    assert llm.payload["response_model"] == "gpt-4o-2024-08-06"
    assert llm.payload["provider"] == "openai"
    assert llm.payload["usage"] == {
        "input_tokens": 120,
        "output_tokens": 30,
        "total_tokens": 150,
        "cache_read_tokens": 100,
    }
    assert llm.payload["finish_reasons"] == ["tool_call"]
    assert llm.payload["response"][0]["parts"][0]["name"] == "search"
    started = next(e for e in events if e.event_type == "llm_started")
    assert started.payload["args"]["messages"][0]["parts"][0]["content"] == "what is otel?"
    assert started.payload["args"]["parameters"] == {"temperature": 0.2}
    failed = next(e for e in events if e.event_type == "tool_failed")
    assert failed.payload["error_type"] == "TimeoutError"
    assert failed.payload["error"] == "fetch timed out"
    tool = next(e for e in events if e.event_type == "tool_executed")
    assert tool.payload["result"] == ["a", "b"]
    start_tool = next(e for e in events if e.event_type == "tool_started")
    assert start_tool.payload["args"] == {"query": "otel"}

    # Nesting: the calls are children of the agent span; the agent is the root.
    agent = next(e for e in events if e.event_type == "agent_started")
    assert agent.parent_span_id is None and agent.payload["agent"] == "researcher"
    assert {e.parent_span_id for e in events if e.event_type == "tool_started"} >= {agent.span_id}
    steps = list(iter_steps("conv-1", store=store))
    assert [s.depth for s in steps if s.event_type == "llm_started"] == [1, 1]
    assert [s.name for s in steps if s.event_type == "tool_started"] == [
        "search",
        "fetch",
        "search",
        "fetch",
    ]

    summary = await session_summary("conv-1", store=store)
    assert summary.llm_calls == 2 and summary.input_tokens == 240 and summary.output_tokens == 60
    assert summary.tools_used == ["search", "search"]
    assert summary.errors == ["fetch timed out", "fetch timed out"] and summary.status == "ok"
    stats = await tool_stats(store=store)
    assert stats["fetch"].failures == 2 and stats["search"].calls == 2

    # Sending the same requests again writes nothing.
    for ctype, body in receiver.requests:
        assert await ingest_otlp(body, ctype, store) == 0
    assert len(await store.get_events("conv-1")) == 20


async def test_span_by_span_export_keeps_ids_and_nesting(receiver: Receiver) -> None:
    # SimpleSpanProcessor posts each span as it ends: children before their parent.
    provider = provider_for(receiver, batch=False)
    await asyncio.to_thread(genai_turn, provider, "conv-2", "q")
    await asyncio.to_thread(provider.shutdown)
    assert len(receiver.requests) == 5  # one per span
    events = await receiver.store.get_events("conv-2")
    assert len(events) == 10
    assert (await verify_session("conv-2", store=receiver.store)).ok
    # Versions follow arrival; each call's own events are in time order.
    by_span: dict[str, list[str]] = {}
    for e in events:
        if e.span_id:
            by_span.setdefault(e.span_id, []).append(e.timestamp)
    assert all(stamps == sorted(stamps) for stamps in by_span.values())
    spans = {e.span_id for e in events if e.span_id}
    assert all(e.parent_span_id in spans for e in events if e.parent_span_id)


async def test_a_trace_without_a_conversation_id_is_its_own_session(receiver: Receiver) -> None:
    provider = provider_for(receiver)
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span(
        "chat claude", attributes={"gen_ai.operation.name": "chat", "gen_ai.system": "anthropic"}
    ) as span:
        trace_id = span.get_span_context().trace_id
    await asyncio.to_thread(provider.shutdown)
    hex_id = f"{trace_id:032x}"
    session = f"{hex_id[:8]}-{hex_id[8:12]}-{hex_id[12:16]}-{hex_id[16:20]}-{hex_id[20:]}"
    events = await receiver.store.get_events(session)
    assert [e.event_type for e in events] == [
        "session_started",
        "llm_started",
        "llm_responded",
        "session_ended",
    ]
    assert events[1].payload["provider"] == "anthropic"
    assert events[0].payload["metadata"]["service"] == "my-agent"


async def test_a_web_request_span_around_the_agent(receiver: Receiver) -> None:
    """GenAI spans under a framework's HTTP span: the topmost GenAI span is the turn."""
    provider = provider_for(receiver)
    tracer = provider.get_tracer("web")
    with tracer.start_as_current_span("POST /chat", attributes={"http.request.method": "POST"}):
        genai_turn(provider, "web-1", "hello?")
    await asyncio.to_thread(provider.shutdown)
    events = await receiver.store.get_events("web-1")
    types = [e.event_type for e in events]
    assert types[0] == "session_started" and types[-1] == "session_ended"
    agent = next(e for e in events if e.event_type == "agent_started")
    assert agent.parent_span_id is None
    llm = next(e for e in events if e.event_type == "llm_started")
    assert llm.parent_span_id == agent.span_id
    assert (await session_summary("web-1", store=receiver.store)).status == "ok"


async def test_pydantic_ai_instrumentation(receiver: Receiver) -> None:
    need("pydantic_ai")
    from pydantic_ai import Agent
    from pydantic_ai.models.instrumented import InstrumentationSettings
    from pydantic_ai.models.test import TestModel

    provider = provider_for(receiver)
    settings = InstrumentationSettings(tracer_provider=provider, include_content=True)
    try:
        from pydantic_ai.capabilities.instrumentation import Instrumentation

        agent = Agent(TestModel(), name="weather", capabilities=[Instrumentation(settings)])
    except ImportError:  # pydantic-ai before capabilities
        agent = Agent(TestModel(), name="weather", instrument=settings)

    @agent.tool_plain
    def forecast(city: str) -> str:
        """The weather in a city."""
        return f"sunny in {city}"

    result = await agent.run("What is the weather in Paris?")
    await asyncio.to_thread(provider.shutdown)

    sessions = await receiver.store.list_sessions()
    assert len(sessions) == 1
    sid = sessions[0].session_id
    events = await receiver.store.get_events(sid)
    assert (await verify_session(sid, store=receiver.store)).ok
    types = [e.event_type for e in events]
    assert types[0] == "session_started" and types[-1] == "session_ended"
    assert types.count("llm_responded") == 2 and types.count("tool_executed") == 1
    agent_started = next(e for e in events if e.event_type == "agent_started")
    assert agent_started.payload["agent"] == "weather"
    assert agent_started.payload["input"] == "What is the weather in Paris?"
    finished = next(e for e in events if e.event_type == "agent_finished")
    assert finished.payload["status"] == "ok" and finished.payload["output"] == result.output
    tool = next(e for e in events if e.event_type == "tool_executed")
    assert tool.payload["tool"] == "forecast" and tool.payload["result"].startswith("sunny in")
    llm = [e for e in events if e.event_type == "llm_responded"]
    assert all(e.payload["model"] == "test" and e.payload["usage"]["input_tokens"] > 0 for e in llm)
    assert llm[0].payload["response"][0]["parts"][0]["type"] == "tool_call"
    # Everything nests under the agent run.
    assert {e.parent_span_id for e in events if e.event_type.startswith(("llm_", "tool_"))} == {
        agent_started.span_id
    }
    summary = await session_summary(sid, store=receiver.store)
    assert summary.llm_calls == 2 and summary.tools_used == ["forecast"]
    assert summary.total_tokens == sum(e.payload["usage"]["total_tokens"] for e in llm)


async def test_openinference_openai_instrumentation(receiver: Receiver) -> None:
    need("openinference.instrumentation.openai")
    openai = need("openai")
    from openinference.instrumentation import using_session
    from openinference.instrumentation.openai import OpenAIInstrumentor

    provider = provider_for(receiver, **{"openinference.project.name": "demo"})
    instrumentor = OpenAIInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    try:
        client = fake_openai_client(openai)
        with using_session("oi-session"):
            answer = await asyncio.to_thread(
                client.chat.completions.create,
                model="gpt-4o-mini",
                messages=[
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "Capital of France?"},
                ],
            )
    finally:
        instrumentor.uninstrument()
    await asyncio.to_thread(provider.shutdown)
    assert answer.choices[0].message.content == "Paris."

    events = await receiver.store.get_events("oi-session")
    assert [e.event_type for e in events] == [
        "session_started",
        "llm_started",
        "llm_responded",
        "session_ended",
    ]
    assert (await verify_session("oi-session", store=receiver.store)).ok
    assert events[0].payload["metadata"]["project"] == "demo"
    started, responded = events[1].payload, events[2].payload
    assert started["args"]["messages"] == [
        {"role": "system", "parts": [{"type": "text", "content": "Be brief."}]},
        {"role": "user", "parts": [{"type": "text", "content": "Capital of France?"}]},
    ]
    assert responded["model"] == "gpt-4o-mini-2024-07-18" or responded["model"] == "gpt-4o-mini"
    assert responded["response_model"] == "gpt-4o-mini-2024-07-18"
    assert responded["provider"] == "openai"
    assert responded["usage"]["input_tokens"] == 25 and responded["usage"]["output_tokens"] == 2
    assert responded["usage"]["total_tokens"] == 27
    assert responded["usage"]["cache_read_tokens"] == 16
    assert responded["response"][0]["parts"] == [{"type": "text", "content": "Paris."}]
    steps = list(iter_steps("oi-session", store=receiver.store))
    assert [s.event_type for s in steps][1:3] == ["llm_started", "llm_responded"]


def fake_openai_reply(request: httpx.Request) -> httpx.Response:
    return httpx.Response(
        200,
        json={
            "id": "chatcmpl-9",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": "gpt-4o-mini-2024-07-18",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "Paris."},
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": 25,
                "completion_tokens": 2,
                "total_tokens": 27,
                "prompt_tokens_details": {"cached_tokens": 16},
            },
        },
    )


def fake_openai_client(openai: Any) -> Any:
    """A real OpenAI client whose HTTP transport answers offline."""
    return openai.OpenAI(
        api_key="sk-test",
        base_url="http://openai.invalid/v1",
        http_client=httpx.Client(transport=httpx.MockTransport(fake_openai_reply)),
    )


async def test_openllmetry_openai_instrumentation(receiver: Receiver) -> None:
    need("opentelemetry.instrumentation.openai")
    openai = need("openai")
    from opentelemetry.instrumentation.openai import OpenAIInstrumentor

    provider = provider_for(receiver)
    instrumentor = OpenAIInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    try:
        client = fake_openai_client(openai)
        await asyncio.to_thread(
            client.chat.completions.create,
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "Capital of France?"}],
        )
    finally:
        instrumentor.uninstrument()
    await asyncio.to_thread(provider.shutdown)

    [info] = await receiver.store.list_sessions()
    events = await receiver.store.get_events(info.session_id)
    assert [e.event_type for e in events] == [
        "session_started",
        "llm_started",
        "llm_responded",
        "session_ended",
    ]
    started, responded = events[1].payload, events[2].payload
    assert started["model"] == "gpt-4o-mini" and responded["provider"] == "openai"
    assert started["args"]["messages"][-1]["parts"][0]["content"] == "Capital of France?"
    assert responded["response_model"] == "gpt-4o-mini-2024-07-18"
    assert responded["usage"]["input_tokens"] == 25
    assert responded["usage"]["output_tokens"] == 2
    assert responded["usage"]["cache_read_tokens"] == 16
    assert responded["response"][0]["parts"][0]["content"] == "Paris."
    assert (await verify_session(info.session_id, store=receiver.store)).ok


async def test_older_attribute_names(receiver: Receiver) -> None:
    """What OpenLLMetry and others wrote before the GenAI message attributes existed."""
    provider = provider_for(receiver)
    tracer = provider.get_tracer("old")
    with tracer.start_as_current_span(
        "workflow", attributes={"traceloop.span.kind": "workflow", "session.id": "old-1"}
    ):
        with tracer.start_as_current_span(
            "openai.chat",
            attributes={
                "llm.request.type": "chat",
                "gen_ai.system": "OpenAI",
                "gen_ai.request.model": "gpt-4",
                "gen_ai.prompt.0.role": "user",
                "gen_ai.prompt.0.content": "Weather in Paris?",
                "gen_ai.completion.0.role": "assistant",
                "gen_ai.completion.0.finish_reason": "tool_calls",
                "gen_ai.completion.0.tool_calls.0.id": "call_1",
                "gen_ai.completion.0.tool_calls.0.name": "weather",
                "gen_ai.completion.0.tool_calls.0.arguments": '{"city": "Paris"}',
                "gen_ai.usage.prompt_tokens": 12,
                "gen_ai.usage.completion_tokens": 7,
                "llm.usage.total_tokens": 19,
            },
        ):
            pass
        with tracer.start_as_current_span(
            "weather.tool",
            attributes={
                "traceloop.span.kind": "tool",
                "traceloop.entity.name": "weather",
                "traceloop.entity.input": '{"inputs": {"city": "Paris"}}',
                "traceloop.entity.output": '{"output": "sunny"}',
            },
        ):
            pass
    await asyncio.to_thread(provider.shutdown)
    events = await receiver.store.get_events("old-1")
    by_type = {e.event_type: e.payload for e in events}
    assert by_type["llm_started"]["args"]["messages"] == [
        {"role": "user", "parts": [{"type": "text", "content": "Weather in Paris?"}]}
    ]
    assert by_type["llm_responded"]["response"] == [
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
            "finish_reason": "tool_calls",
        }
    ]
    assert by_type["llm_responded"]["usage"] == {
        "input_tokens": 12,
        "output_tokens": 7,
        "total_tokens": 19,
    }
    assert by_type["llm_responded"]["provider"] == "openai"
    assert by_type["tool_started"] == {
        "tool": "weather",
        "args": {"city": "Paris"},
        "otel": by_type["tool_started"]["otel"],
    }
    assert by_type["tool_executed"]["result"] == "sunny"
    assert by_type["agent_started"]["agent"] == "workflow"


async def test_an_agent_trace_export_ingests_back_as_the_same_calls(memory_store, tmp_path) -> None:
    from agent_trace.otel import session_to_otlp_json

    @at.record_tool
    def lookup(key: str) -> str:
        return key.upper()

    @at.record_llm(model="gpt-4o")
    def ask(prompt: str) -> dict:
        return {"content": "ok", "usage": {"input_tokens": 9, "output_tokens": 1}}

    with at.session() as s:
        lookup("a")
        ask("hello?")
    at.flush_sync(timeout=10)
    doc = session_to_otlp_json(await at.get_events(s.id, store=memory_store), capture_content=True)
    body = orjson.dumps(doc)
    other = SQLiteStore(tmp_path / "other.db")
    try:
        written = await ingest_otlp(body, "application/json; charset=utf-8", other)
        assert written == 8
        assert await ingest_otlp(gzip.compress(body), "application/json", other) == 0
        events = await other.get_events(s.id)
        assert [e.event_type for e in events] == [
            "session_started",
            "agent_started",
            "tool_started",
            "tool_executed",
            "llm_started",
            "llm_responded",
            "agent_finished",
            "session_ended",
        ]
        assert events[3].payload["result"] == "A"
        assert events[5].payload["usage"]["output_tokens"] == 1
        assert (await verify_session(s.id, store=other)).ok
    finally:
        await other.close()


@pytest.mark.parametrize(
    ("body", "ctype", "message"),
    [
        (b"{}", "text/plain", "unsupported content type"),
        (b"not json", "application/json", "not valid JSON"),
        (b"[1, 2]", "application/json", "resourceSpans"),
        (b'{"resourceSpans": [{"scopeSpans": 3}]}', "application/json", "ExportTraceService"),
        (b"\xff\xff\xff", "application/x-protobuf", "protobuf"),
        (b"\x1f\x8b\x08junk", "application/x-protobuf", "gzipped"),
        (
            b'{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"zz","spanId":"01"}]}]}]}',
            "application/json",
            "not hex",
        ),
        (
            b'{"resourceSpans":[{"scopeSpans":[{"spans":[{"name":"x","traceId":"0102",'
            b'"spanId":"0102030405060708"}]}]}]}',
            "application/json",
            "trace id must be 16",
        ),
    ],
)
def test_a_bad_body_is_a_clear_value_error(body: bytes, ctype: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        otlp_to_events(body, ctype)


async def test_a_bad_body_writes_nothing(receiver: Receiver) -> None:
    async with httpx.AsyncClient() as client:
        response = await client.post(
            receiver.url, content=b"not json", headers={"Content-Type": "application/json"}
        )
    assert response.status_code == 400 and b"not valid JSON" in response.content
    assert await receiver.store.list_sessions() == []


def test_an_empty_request_is_nothing() -> None:
    batch = otlp_to_events(b"", "application/x-protobuf")
    assert batch.events == [] and batch.spans == batch.ignored == 0
