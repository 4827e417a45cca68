"""instrument_openai() against the real openai SDK, offline (a MockTransport fake server)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json

import openai
import pydantic
import pytest
from fake_llm import (
    API_KEY,
    CHAT_RESPONSE,
    USER,
    AsyncFakeServer,
    FakeServer,
    openai_client,
)

import agent_trace as at
from agent_trace.replay import replay


@pytest.fixture
def instrumented(memory_store):
    handle = at.instrument_openai()
    yield memory_store
    handle.uninstrument()


def events_of(session_id: str):
    at.flush_sync()
    return at.get_events_sync(session_id)


async def aevents_of(session_id: str):
    await at.flush()
    return await at.get_events(session_id)


def of_type(events, event_type):
    return [e for e in events if e.event_type == event_type]


# --- non-streamed calls -------------------------------------------------------------


def test_chat_completion_recorded_with_full_usage(instrumented):
    server = FakeServer()
    client = openai_client(server)
    with at.session("chat-1"):
        resp = client.chat.completions.create(model="gpt-4o", messages=USER, temperature=0.2)
    assert type(resp) is openai.types.chat.ChatCompletion
    assert resp.choices[0].message.content == "Paris is the capital of France."
    events = events_of("chat-1")
    assert [e.event_type for e in events] == [
        "session_started",
        "llm_started",
        "llm_responded",
        "session_ended",
    ]
    started, responded = events[1], events[2]
    assert started.payload == {
        "name": "openai.chat.completions.create",
        "provider": "openai",
        "model": "gpt-4o",
        "args": {"model": "gpt-4o", "messages": USER, "temperature": 0.2},
    }
    p = responded.payload
    assert p["model"] == "gpt-4o" and p["response_model"] == "gpt-4o-2024-08-06"
    assert p["provider"] == "openai" and p["finish_reasons"] == ["stop"]
    assert p["usage"] == {
        "input_tokens": 1200,
        "output_tokens": 300,
        "total_tokens": 1500,
        "cache_read_tokens": 1000,
        "reasoning_tokens": 120,
    }
    assert p["response"]["choices"][0]["message"]["content"] == "Paris is the capital of France."
    assert p["duration_ms"] >= 0
    assert responded.span_id == started.span_id


def test_same_object_as_without_instrumentation(memory_store):
    server = FakeServer()
    client = openai_client(server)
    with at.session("plain"):
        plain = client.chat.completions.create(model="gpt-4o", messages=USER)
    handle = at.instrument_openai()
    try:
        with at.session("recorded"):
            recorded = client.chat.completions.create(model="gpt-4o", messages=USER)
    finally:
        handle.uninstrument()
    assert type(recorded) is type(plain)
    assert recorded.model_dump() == plain.model_dump()
    assert [e.event_type for e in events_of("plain")] == ["session_started", "session_ended"]


def test_api_key_and_auth_headers_never_recorded(instrumented):
    server = FakeServer()
    client = openai_client(server)
    with at.session("secrets"):
        client.chat.completions.create(
            model="gpt-4o",
            messages=USER,
            extra_headers={"Authorization": f"Bearer {API_KEY}", "X-Trace": "1"},
        )
    assert server.requests[0].headers["authorization"] == f"Bearer {API_KEY}"
    blob = b"".join(e.payload.__repr__().encode() for e in events_of("secrets"))
    assert API_KEY.encode() not in blob and b"Bearer" not in blob


def test_parse_returns_parsed_model(instrumented):
    class City(pydantic.BaseModel):
        city: str
        country: str

    server = FakeServer()
    client = openai_client(server)
    with at.session("parse"):
        resp = client.chat.completions.parse(model="gpt-4o", messages=USER, response_format=City)
    assert resp.choices[0].message.parsed == City(city="Paris", country="France")
    started = of_type(events_of("parse"), "llm_started")[0]
    assert started.payload["name"] == "openai.chat.completions.parse"
    assert started.payload["args"]["response_format"].endswith("City")


def test_responses_api_and_embeddings(instrumented):
    server = FakeServer()
    client = openai_client(server)
    with at.session("resp"):
        r = client.responses.create(model="gpt-4.1", input="Say hello")
        e = client.embeddings.create(model="text-embedding-3-small", input="hello")
    assert r.output_text == "Hello from the Responses API."
    assert e.data[0].embedding == [0.1, -0.2, 0.3]
    responded = of_type(events_of("resp"), "llm_responded")
    assert [x.payload["name"] for x in responded] == [
        "openai.responses.create",
        "openai.embeddings.create",
    ]
    assert responded[0].payload["usage"] == {
        "input_tokens": 50,
        "output_tokens": 10,
        "total_tokens": 60,
        "cache_read_tokens": 20,
        "reasoning_tokens": 4,
    }
    assert responded[0].payload["finish_reasons"] == ["completed"]
    assert responded[1].payload["usage"] == {"input_tokens": 8, "total_tokens": 8}
    assert responded[1].payload["response_model"] == "text-embedding-3-small"


def test_with_raw_response(instrumented):
    server = FakeServer()
    client = openai_client(server)
    with at.session("raw"):
        raw = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=USER)
        assert raw.headers["content-type"] == "application/json"
        first = raw.parse()
        assert raw.parse() is first  # the SDK's cache, untouched by recording
    assert first.id == "chatcmpl-abc123"
    responded = of_type(events_of("raw"), "llm_responded")[0]
    assert responded.payload["response"]["id"] == "chatcmpl-abc123"


def test_with_streaming_response_passes_through(instrumented):
    server = FakeServer()
    client = openai_client(server)
    with (
        at.session("streaming-response"),
        client.chat.completions.with_streaming_response.create(
            model="gpt-4o", messages=USER
        ) as response,
    ):
        assert response.parse().id == "chatcmpl-abc123"
    assert not of_type(events_of("streaming-response"), "llm_started")


# --- errors, retries ------------------------------------------------------------------


def test_rate_limit_error_reaches_caller_and_is_recorded(instrumented):
    server = FakeServer()
    server.errors["slow"] = (429, {"error": {"message": "Rate limit reached", "type": "tokens"}})
    client = openai_client(server)
    with at.session("429"), pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "slow"}]
        )
    assert info.value.status_code == 429
    failed = of_type(events_of("429"), "llm_failed")[0].payload
    assert failed["error_type"] == "RateLimitError" and failed["status_code"] == 429
    assert failed["provider"] == "openai" and failed["model"] == "gpt-4o"
    assert "Rate limit reached" in failed["error"]


def test_retries_happen_inside_one_recorded_call(instrumented):
    server = FakeServer()
    server.fail_first = 2
    client = openai_client(server, max_retries=2)
    client = client.with_options(timeout=5.0)
    with at.session("retry"):
        resp = client.chat.completions.create(model="gpt-4o", messages=USER, timeout=3.0)
    assert resp.id == "chatcmpl-abc123"
    assert len(server.requests) == 3
    events = events_of("retry")
    assert [e.event_type for e in events[1:-1]] == ["llm_started", "llm_responded"]
    assert "timeout" not in events[1].payload["args"]


def test_outside_a_session_nothing_is_recorded(instrumented):
    client = openai_client(FakeServer())
    client.chat.completions.create(model="gpt-4o", messages=USER)
    at.flush_sync()
    assert at.list_sessions_sync() == []


# --- streams --------------------------------------------------------------------------


def test_stream_is_the_sdk_stream_and_recorded_when_consumed(instrumented):
    server = FakeServer()
    client = openai_client(server)
    with at.session("stream"):
        stream = client.chat.completions.create(model="gpt-4o", messages=USER, stream=True)
        assert isinstance(stream, openai.Stream)
        seen = []
        for chunk in stream:
            # Each chunk is handed on as it arrives: the server is at most one event ahead.
            assert server.produced <= len(seen) + 2
            seen.append(chunk)
    assert all(type(c) is openai.types.chat.ChatCompletionChunk for c in seen)
    events = events_of("stream")
    p = of_type(events, "llm_responded")[0].payload
    assert p["stream"] is True and p["status"] == "complete" and p["chunks"] == len(seen)
    assert p["time_to_first_chunk_ms"] <= p["duration_ms"]
    message = p["response"]["choices"][0]["message"]
    assert message["content"] == "Paris is the capital"
    assert message["tool_calls"] == [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        }
    ]
    assert p["finish_reasons"] == ["tool_calls"]
    assert p["usage"] == {
        "input_tokens": 30,
        "output_tokens": 12,
        "total_tokens": 42,
        "cache_read_tokens": 10,
    }
    assert p["response_model"] == "gpt-4o-2024-08-06"


@pytest.mark.parametrize("stop", ["break", "close", "with"])
def test_stream_stopped_early_is_incomplete(instrumented, stop):
    client = openai_client(FakeServer())
    with at.session(f"early-{stop}"):
        stream = client.chat.completions.create(model="gpt-4o", messages=USER, stream=True)
        if stop == "with":
            with stream as s:
                next(iter(s))
        else:
            for _ in stream:
                break
            if stop == "close":
                stream.close()
            else:
                del stream
                gc.collect()
    p = of_type(events_of(f"early-{stop}"), "llm_responded")[0].payload
    assert p["status"] == "incomplete" and p["chunks"] == 1


async def test_async_client_create_and_stream(instrumented):
    server = AsyncFakeServer()
    client = openai_client(server, is_async=True)
    async with at.session("async"):
        resp = await client.chat.completions.create(model="gpt-4o", messages=USER)
        stream = await client.chat.completions.create(model="gpt-4o", messages=USER, stream=True)
        assert isinstance(stream, openai.AsyncStream)
        text = ""
        async with stream as s:
            async for chunk in s:
                if chunk.choices and chunk.choices[0].delta.content:
                    text += chunk.choices[0].delta.content
        rstream = await client.responses.create(model="gpt-4.1", input="hi", stream=True)
        kinds = [event.type async for event in rstream]
    assert resp.usage.total_tokens == 1500 and text == "Paris is the capital"
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    responded = of_type(await aevents_of("async"), "llm_responded")
    assert [r.payload.get("status") for r in responded] == [None, "complete", "complete"]
    assert responded[2].payload["response"]["output"][0]["content"][0]["text"] == "Streamed hello"
    assert responded[2].payload["usage"]["input_tokens"] == 50


async def test_concurrent_sessions_keep_their_calls(instrumented):
    client = openai_client(AsyncFakeServer(), is_async=True)

    async def one(i: int) -> None:
        async with at.session(f"conc-{i}"):
            stream = await client.chat.completions.create(
                model="gpt-4o", messages=USER, stream=True
            )
            async for _ in stream:
                await asyncio.sleep(0)

    await asyncio.gather(*(one(i) for i in range(20)))
    for i in range(20):
        types = [e.event_type for e in await aevents_of(f"conc-{i}")]
        assert types == ["session_started", "llm_started", "llm_responded", "session_ended"]


def test_stream_error_mid_way_is_recorded_and_raised(instrumented):
    server = FakeServer()
    client = openai_client(server)

    def broken(request):
        def body():
            chunk = {"id": "x", "object": "chat.completion.chunk", "created": 1, "model": "m"}
            yield b"data: " + json.dumps({**chunk, "choices": []}).encode() + b"\n\n"
            yield b'data: {"error": {"message": "overloaded mid-stream"}}\n\n'

        import httpx2

        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=body())

    import httpx2

    client = openai.OpenAI(
        api_key=API_KEY,
        base_url="http://fake-openai.test/v1",
        http_client=httpx2.Client(transport=httpx2.MockTransport(broken)),
        max_retries=0,
    )
    with at.session("mid-error"):
        stream = client.chat.completions.create(model="gpt-4o", messages=USER, stream=True)
        with pytest.raises(openai.APIError, match="overloaded mid-stream"):
            list(stream)
    failed = of_type(events_of("mid-error"), "llm_failed")[0].payload
    assert failed["error_type"] == "APIError"


# --- scope: one client, twice, nesting, uninstrument ------------------------------------


def test_one_client_only(memory_store):
    server = FakeServer()
    mine, other = openai_client(server), openai_client(server)
    handle = at.instrument_openai(mine)
    try:
        with at.session("one-client"):
            mine.chat.completions.create(model="gpt-4o", messages=USER)
            other.chat.completions.create(model="gpt-4o", messages=USER)
            mine.chat.completions.with_raw_response.create(model="gpt-4o", messages=USER)
    finally:
        handle.uninstrument()
    assert len(of_type(events_of("one-client"), "llm_started")) == 2
    with at.session("after"):
        mine.chat.completions.create(model="gpt-4o", messages=USER)
    assert not of_type(events_of("after"), "llm_started")


def test_instrumenting_twice_records_once(memory_store):
    client = openai_client(FakeServer())
    a = at.instrument_openai()
    b = at.instrument_openai()
    c = at.instrument_openai(client)
    try:
        assert a is b
        with at.session("twice"):
            client.chat.completions.create(model="gpt-4o", messages=USER)
    finally:
        c.uninstrument()
        a.uninstrument()
    assert len(of_type(events_of("twice"), "llm_started")) == 1
    assert "uninstrumented" in repr(a)


def test_call_inside_a_tool_is_its_child(instrumented):
    client = openai_client(FakeServer())

    @at.record_tool
    def summarize(text: str) -> str:
        r = client.chat.completions.create(model="gpt-4o", messages=USER)
        return r.choices[0].message.content

    with at.session("nested"):
        summarize("long text")
    events = events_of("nested")
    tool = of_type(events, "tool_started")[0]
    llm = of_type(events, "llm_started")[0]
    assert llm.parent_span_id == tool.span_id


def test_immediate_durability_for_streams(memory_store):
    at.configure(store=memory_store, durability="immediate")
    handle = at.instrument_openai()
    try:
        client = openai_client(FakeServer())
        with at.session("immediate"):
            for _ in client.chat.completions.create(model="gpt-4o", messages=USER, stream=True):
                pass
            stored = asyncio.run(memory_store.get_events("immediate"))
            assert [e.event_type for e in stored][-1] == "llm_responded"
    finally:
        handle.uninstrument()
        at.configure(store=memory_store, durability="batched")


# --- @record_llm around a function returning an SDK stream -------------------------------


def test_record_llm_on_a_function_returning_a_stream(memory_store):
    client = openai_client(FakeServer())

    @at.record_llm
    def ask(question: str, model: str = "gpt-4o"):
        return client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": question}], stream=True
        )

    with at.session("decorated-stream"):
        stream = ask("capital?")
        assert isinstance(stream, openai.Stream)
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "Paris is the capital"
    p = of_type(events_of("decorated-stream"), "llm_responded")[0].payload
    assert "Stream object" not in str(p["response"])
    assert p["response"]["choices"][0]["message"]["content"] == text
    assert p["usage"]["total_tokens"] == 42 and p["chunks"] > 1
    assert p["response_model"] == "gpt-4o-2024-08-06"


def test_record_llm_fills_response_model_and_cache_usage(memory_store):
    client = openai_client(FakeServer())

    @at.record_llm
    def ask(model: str):
        return client.chat.completions.create(model=model, messages=USER)

    with at.session("decorated"):
        ask("gpt-4o")
    p = of_type(events_of("decorated"), "llm_responded")[0].payload
    assert p["response_model"] == "gpt-4o-2024-08-06"
    assert p["finish_reasons"] == ["stop"]
    assert p["usage"]["cache_read_tokens"] == 1000 and p["usage"]["reasoning_tokens"] == 120


# --- replay ------------------------------------------------------------------------------


def record_everything(client) -> None:
    client.chat.completions.create(model="gpt-4o", messages=USER)
    for _ in client.chat.completions.create(model="gpt-4o", messages=USER, stream=True):
        pass
    client.responses.create(model="gpt-4.1", input="Say hello")
    client.embeddings.create(model="text-embedding-3-small", input="hello")
    with contextlib.suppress(openai.RateLimitError):
        client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "slow"}]
        )


def test_replay_serves_sdk_objects_and_streams_without_requests(instrumented):
    server = FakeServer()
    server.errors["slow"] = (429, {"error": {"message": "Rate limit reached", "type": "tokens"}})
    client = openai_client(server)
    with at.session("to-replay"):
        record_everything(client)
    at.flush_sync()
    sent = len(server.requests)

    with replay("to-replay", mock=("llm",)) as r:
        chat = client.chat.completions.create(model="gpt-4o", messages=USER)
        stream = client.chat.completions.create(model="gpt-4o", messages=USER, stream=True)
        chunks = list(stream)
        resp = client.responses.create(model="gpt-4.1", input="Say hello")
        emb = client.embeddings.create(model="text-embedding-3-small", input="hello")
        with pytest.raises(openai.RateLimitError) as info:
            client.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "slow"}]
            )
    assert len(server.requests) == sent  # nothing went to the provider
    assert r.served == 5
    assert type(chat) is openai.types.chat.ChatCompletion
    assert (
        chat.model_dump()["choices"][0]["message"]["content"]
        == CHAT_RESPONSE["choices"][0]["message"]["content"]
    )
    assert chat.usage.prompt_tokens_details.cached_tokens == 1000
    assert isinstance(stream, openai.Stream)
    assert all(type(c) is openai.types.chat.ChatCompletionChunk for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Paris is the capital"
    assert chunks[-1].usage.total_tokens == 42
    args = [
        tc.function.arguments
        for c in chunks
        if c.choices
        for tc in c.choices[0].delta.tool_calls or []
    ]
    assert "".join(args) == '{"city": "Paris"}'
    assert resp.output_text == "Hello from the Responses API."
    assert emb.data[0].embedding == [0.1, -0.2, 0.3]
    assert info.value.status_code == 429
    # The replay recorded the same story.
    original = [e.event_type for e in events_of("to-replay")]
    again = [e.event_type for e in events_of(r.id)]
    assert again == original


async def test_async_replay_of_a_stream(instrumented):
    server = AsyncFakeServer()
    client = openai_client(server, is_async=True)
    async with at.session("async-replay"):
        stream = await client.chat.completions.create(model="gpt-4o", messages=USER, stream=True)
        async for _ in stream:
            pass
    sent = len(server.requests)
    async with replay("async-replay", mock=("llm",)):
        stream = await client.chat.completions.create(model="gpt-4o", messages=USER, stream=True)
        assert isinstance(stream, openai.AsyncStream)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "Paris is the capital" and len(server.requests) == sent


def test_replay_divergence_on_changed_args(instrumented):
    from agent_trace.replay import ReplayDivergence

    client = openai_client(FakeServer())
    with at.session("diverge"):
        client.chat.completions.create(model="gpt-4o", messages=USER)
    with pytest.raises(ReplayDivergence, match="args differ"), replay("diverge", mock=("llm",)):
        client.chat.completions.create(model="gpt-4o-mini", messages=USER)


def test_record_llm_stream_replays_as_an_sdk_stream(memory_store):
    server = FakeServer()
    client = openai_client(server)

    @at.record_llm
    def ask(question: str):
        return client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": question}], stream=True
        )

    def agent() -> str:
        stream = ask("capital?")
        return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    with at.session("decorated-replay"):
        recorded = agent()
    sent = len(server.requests)
    with replay("decorated-replay", mock=("llm",)) as r:
        stream = ask("capital?")
        assert isinstance(stream, openai.Stream)
        replayed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert replayed == recorded and len(server.requests) == sent
    p = of_type(events_of(r.id), "llm_responded")[0].payload
    assert p["response"]["choices"][0]["message"]["content"] == recorded


def test_timeout_is_the_sdk_error_recorded_and_replayed(instrumented):
    import httpx2

    def hangs(request):
        raise httpx2.ReadTimeout("timed out", request=request)

    client = openai.OpenAI(
        api_key=API_KEY,
        base_url="http://fake-openai.test/v1",
        http_client=httpx2.Client(transport=httpx2.MockTransport(hangs)),
        max_retries=0,
    )
    with at.session("timeout"), pytest.raises(openai.APITimeoutError):
        client.chat.completions.create(model="gpt-4o", messages=USER, timeout=0.5)
    failed = of_type(events_of("timeout"), "llm_failed")[0].payload
    assert failed["error_type"] == "APITimeoutError" and "status_code" not in failed
    with replay("timeout", mock=("llm",)), pytest.raises(openai.APITimeoutError):
        client.chat.completions.create(model="gpt-4o", messages=USER, timeout=0.5)


def test_without_the_sdk_the_error_names_the_extra(tmp_path):
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['openai'] = None\n"
        "import agent_trace as at\n"
        "try:\n    at.instrument_openai()\n"
        "except ImportError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert "pip install 'agent-trace[openai]'" in out.stdout, out.stderr


def test_stream_helpers_record_the_create_call_they_make(instrumented):
    client = openai_client(FakeServer())
    with at.session("helpers"):
        with client.chat.completions.stream(model="gpt-4o", messages=USER) as stream:
            final = stream.get_final_completion()
        with client.responses.stream(model="gpt-4.1", input="hi") as rstream:
            response = rstream.get_final_response()
    assert final.choices[0].message.content == "Paris is the capital"
    assert response.output_text == "Streamed hello"
    responded = of_type(events_of("helpers"), "llm_responded")
    assert [r.payload["name"] for r in responded] == [
        "openai.chat.completions.create",
        "openai.responses.create",
    ]
    assert all(r.payload["status"] == "complete" for r in responded)


def test_stream_helpers_work_under_replay(instrumented):
    server = FakeServer()
    client = openai_client(server)
    with at.session("helpers-replay"):
        with client.chat.completions.stream(model="gpt-4o", messages=USER) as stream:
            stream.until_done()
        with client.responses.stream(model="gpt-4.1", input="hi") as rstream:
            rstream.until_done()
    sent = len(server.requests)
    with replay("helpers-replay", mock=("llm",)):
        with client.chat.completions.stream(model="gpt-4o", messages=USER) as stream:
            final = stream.get_final_completion()
        with client.responses.stream(model="gpt-4.1", input="hi") as rstream:
            text = "".join(e.delta for e in rstream if e.type == "response.output_text.delta")
            response = rstream.get_final_response()
    assert len(server.requests) == sent
    assert final.choices[0].message.content == "Paris is the capital"
    assert text == "Streamed hello" and response.output_text == "Streamed hello"
