"""instrument_anthropic() against the real anthropic SDK, offline (a MockTransport fake server)."""

from __future__ import annotations

import anthropic
import pytest
from fake_llm import ANTHROPIC_KEY, USER, AsyncFakeServer, FakeServer, anthropic_client

import agent_trace as at
from agent_trace.replay import replay


@pytest.fixture
def instrumented(memory_store):
    handle = at.instrument_anthropic()
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


def test_messages_create_counts_cached_input(instrumented):
    client = anthropic_client(FakeServer())
    with at.session("msg"):
        msg = client.messages.create(model="claude-sonnet-4-6", max_tokens=100, messages=USER)
    assert type(msg) is anthropic.types.Message and msg.content[0].text == "Bonjour! Paris it is."
    events = events_of("msg")
    started = of_type(events, "llm_started")[0].payload
    assert started == {
        "name": "anthropic.messages.create",
        "provider": "anthropic",
        "model": "claude-sonnet-4-6",
        "args": {"model": "claude-sonnet-4-6", "max_tokens": 100, "messages": USER},
    }
    p = of_type(events, "llm_responded")[0].payload
    assert p["response_model"] == "claude-sonnet-4-6-20260217"
    assert p["finish_reasons"] == ["end_turn"]
    # Anthropic's input_tokens leave out the cache; ours count every prompt token.
    assert p["usage"] == {
        "input_tokens": 2600,
        "output_tokens": 40,
        "total_tokens": 2640,
        "cache_read_tokens": 2000,
        "cache_write_tokens": 500,
    }
    blob = repr([e.payload for e in events])
    assert ANTHROPIC_KEY not in blob


def test_create_stream_assembles_text_and_tool_input(instrumented):
    server = FakeServer()
    client = anthropic_client(server)
    with at.session("raw-stream"):
        stream = client.messages.create(
            model="claude-sonnet-4-6", max_tokens=100, messages=USER, stream=True
        )
        assert isinstance(stream, anthropic.Stream)
        kinds = []
        for event in stream:
            assert server.produced <= len(kinds) + 2  # handed on as it arrives
            kinds.append(event.type)
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    p = of_type(events_of("raw-stream"), "llm_responded")[0].payload
    assert p["stream"] is True and p["status"] == "complete" and p["chunks"] == len(kinds)
    content = p["response"]["content"]
    assert content[0] == {"type": "text", "text": "Bonjour from Claude"}
    assert content[1]["type"] == "tool_use" and content[1]["input"] == {"city": "Paris"}
    assert p["finish_reasons"] == ["tool_use"]
    assert p["usage"] == {
        "input_tokens": 125,
        "output_tokens": 33,
        "total_tokens": 158,
        "cache_read_tokens": 100,
        "cache_write_tokens": 0,
    }


def test_stream_helper_text_stream_and_final_message(instrumented):
    client = anthropic_client(FakeServer())
    with at.session("helper"):
        with client.messages.stream(
            model="claude-sonnet-4-6", max_tokens=100, messages=USER
        ) as stream:
            text = "".join(stream.text_stream)
            final = stream.get_final_message()
        assert text == "Bonjour from Claude"
        assert final.content[1].input == {"city": "Paris"}
    p = of_type(events_of("helper"), "llm_responded")[0].payload
    assert p["name"] == "anthropic.messages.stream" and p["status"] == "complete"
    assert p["response"]["content"][0]["text"] == "Bonjour from Claude"
    assert p["usage"]["output_tokens"] == 33 and p["usage"]["input_tokens"] == 125
    assert p["time_to_first_chunk_ms"] is not None


def test_stream_helper_left_early_is_incomplete(instrumented):
    client = anthropic_client(FakeServer())
    with (
        at.session("helper-early"),
        client.messages.stream(model="claude-sonnet-4-6", max_tokens=10, messages=USER) as s,
    ):
        next(iter(s))
    p = of_type(events_of("helper-early"), "llm_responded")[0].payload
    assert p["status"] == "incomplete" and p["chunks"] == 1


async def test_async_stream_helper_and_create(instrumented):
    client = anthropic_client(AsyncFakeServer(), is_async=True)
    async with at.session("async-helper"):
        msg = await client.messages.create(model="claude-sonnet-4-6", max_tokens=50, messages=USER)
        async with client.messages.stream(
            model="claude-sonnet-4-6", max_tokens=100, messages=USER
        ) as stream:
            text = "".join([t async for t in stream.text_stream])
            final = await stream.get_final_message()
    assert msg.usage.cache_read_input_tokens == 2000
    assert text == "Bonjour from Claude" and final.stop_reason == "tool_use"
    responded = of_type(await aevents_of("async-helper"), "llm_responded")
    assert [r.payload["name"] for r in responded] == [
        "anthropic.messages.create",
        "anthropic.messages.stream",
    ]


def test_overloaded_error_is_recorded_and_raised(instrumented):
    server = FakeServer()
    server.errors["busy"] = (
        529,
        {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
    )
    client = anthropic_client(server)
    with at.session("529"), pytest.raises(anthropic.APIStatusError) as info:
        client.messages.create(
            model="claude-sonnet-4-6", max_tokens=10, messages=[{"role": "user", "content": "busy"}]
        )
    assert info.value.status_code == 529
    failed = of_type(events_of("529"), "llm_failed")[0].payload
    assert failed["status_code"] == 529 and failed["provider"] == "anthropic"


def test_replay_returns_messages_and_streams(instrumented):
    server = FakeServer()
    server.errors["busy"] = (
        429,
        {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}},
    )
    client = anthropic_client(server)
    busy = [{"role": "user", "content": "busy"}]
    with at.session("anthropic-replay"):
        client.messages.create(model="claude-sonnet-4-6", max_tokens=100, messages=USER)
        for _ in client.messages.create(
            model="claude-sonnet-4-6", max_tokens=100, messages=USER, stream=True
        ):
            pass
        with client.messages.stream(model="claude-sonnet-4-6", max_tokens=100, messages=USER) as s:
            s.until_done()
        with pytest.raises(anthropic.RateLimitError):
            client.messages.create(model="claude-sonnet-4-6", max_tokens=100, messages=busy)
    sent = len(server.requests)
    with replay("anthropic-replay", mock=("llm",)) as r:
        msg = client.messages.create(model="claude-sonnet-4-6", max_tokens=100, messages=USER)
        raw = list(
            client.messages.create(
                model="claude-sonnet-4-6", max_tokens=100, messages=USER, stream=True
            )
        )
        with client.messages.stream(model="claude-sonnet-4-6", max_tokens=100, messages=USER) as s:
            text = "".join(s.text_stream)
            final = s.get_final_message()
        with pytest.raises(anthropic.RateLimitError):
            client.messages.create(model="claude-sonnet-4-6", max_tokens=100, messages=busy)
    assert len(server.requests) == sent and r.served == 4
    assert type(msg) is anthropic.types.Message
    assert msg.model_dump()["content"][0]["text"] == "Bonjour! Paris it is."
    assert msg.usage.cache_creation_input_tokens == 500
    assert raw[0].type == "message_start" and raw[-1].type == "message_stop"
    assert text == "Bonjour from Claude"
    assert final.content[1].input == {"city": "Paris"} and final.usage.output_tokens == 33
    assert [e.event_type for e in events_of(r.id)] == [
        e.event_type for e in events_of("anthropic-replay")
    ]
