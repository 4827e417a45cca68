"""LangChain / LangGraph recorded and replayed, offline (fake chat models, real graphs)."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Annotated, Any

import pytest
from agent_helpers import assert_calls_keep_their_own_events, events_of, without_package
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, ToolMessage
from langchain_core.outputs import ChatGenerationChunk
from langchain_core.tools import tool
from langgraph.prebuilt import InjectedState

import agent_trace as at
from agent_trace.replay import ReplayDivergence, replay

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # create_react_agent's deprecation notice
    from langgraph.prebuilt import create_react_agent


class ToolCallingFake(GenericFakeChatModel):
    """GenericFakeChatModel that takes tools and streams tool calls and usage too."""

    def bind_tools(self, tools: Any, **kwargs: Any) -> ToolCallingFake:
        return self

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        message = self._generate(messages, stop=stop, **kwargs).generations[0].message
        assert isinstance(message, AIMessage)
        words = str(message.content).split(" ") if message.content else []
        for i, word in enumerate(words):
            yield ChatGenerationChunk(
                message=AIMessageChunk(content=word if i == 0 else " " + word)
            )
        yield ChatGenerationChunk(
            message=AIMessageChunk(
                content="",
                tool_call_chunks=[
                    {"name": tc["name"], "args": _json(tc["args"]), "id": tc["id"], "index": i}
                    for i, tc in enumerate(message.tool_calls)
                ],
                usage_metadata=message.usage_metadata,
            )
        )


def _json(value: Any) -> str:
    import json

    return json.dumps(value)


def fake_model() -> ToolCallingFake:
    return ToolCallingFake(
        messages=iter(
            [
                AIMessage(
                    "",
                    tool_calls=[{"name": "get_weather", "args": {"city": "Paris"}, "id": "call_1"}],
                    usage_metadata={
                        "input_tokens": 120,
                        "output_tokens": 12,
                        "total_tokens": 132,
                        "input_token_details": {"cache_read": 100},
                        "output_token_details": {"reasoning": 5},
                    },
                    response_metadata={"model_name": "fake-gpt-1", "finish_reason": "tool_calls"},
                ),
                AIMessage("It is sunny in Paris."),
            ]
        )
    )


TOOL_RUNS: list[str] = []


@tool
def get_weather(city: str, state: Annotated[dict, InjectedState]) -> str:
    """The weather in a city."""
    TOOL_RUNS.append(city)
    assert state["messages"]  # the tool does get the graph state...
    return f"sunny in {city}"


def agent(model: Any = None) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecated in favour of langchain.agents.create_agent
        return create_react_agent(model or fake_model(), [get_weather], name="weather_agent")


QUESTION = {"messages": [("user", "Weather in Paris?")]}


@pytest.fixture
def instrumented(memory_store):
    TOOL_RUNS.clear()
    handle = at.instrument_langchain()
    yield handle
    handle.uninstrument()


async def test_react_agent_run_is_recorded(instrumented) -> None:
    async with at.session("lc-run"):
        out = await agent().ainvoke(QUESTION)
    assert out["messages"][-1].content == "It is sunny in Paris."
    events = await events_of("lc-run")
    assert [e.event_type for e in events] == [
        "session_started",
        "agent_started",
        "llm_started",
        "llm_responded",
        "tool_started",
        "tool_executed",
        "llm_started",
        "llm_responded",
        "agent_finished",
        "session_ended",
    ]
    started = events[1]
    assert started.payload == {"agent": "weather_agent"}
    for ev in events[2:-2]:
        assert ev.parent_span_id == started.span_id
    llm = events[3].payload
    assert llm["name"] == "ToolCallingFake" and llm["provider"] == "toolcallingfake"
    assert llm["node"] == "agent"
    assert llm["usage"] == {
        "input_tokens": 120,
        "output_tokens": 12,
        "total_tokens": 132,
        "cache_read_tokens": 100,
        "reasoning_tokens": 5,
    }
    assert llm["response_model"] == "fake-gpt-1" and llm["finish_reasons"] == ["tool_calls"]
    assert llm["response"]["tool_calls"][0]["args"] == {"city": "Paris"}
    # The LLM's args are its messages, not the graph state.
    assert events[2].payload["args"]["messages"][0]["content"] == "Weather in Paris?"
    assert set(events[2].payload["args"]) <= {"messages", "params", "tools"}
    # The tool's own argument; the injected state is left out.
    assert events[4].payload == {"tool": "get_weather", "args": {"city": "Paris"}}
    assert events[5].payload["result"] == "sunny in Paris"
    finished = events[-2].payload
    assert finished["status"] == "ok" and finished["output"] == "It is sunny in Paris."


async def test_tool_call_ids_are_recorded(instrumented) -> None:
    async with at.session("lc-ids"):
        await agent().ainvoke(QUESTION)
    events = await events_of("lc-ids")
    second = [e for e in events if e.event_type == "llm_started"][1].payload["args"]["messages"]
    tool_message = next(m for m in second if m["type"] == "tool")
    assert tool_message["tool_call_id"] == "call_1"  # recorded, not blanked


async def test_replay_runs_the_graph_from_the_recording(instrumented) -> None:
    async with at.session("lc-replay"):
        first = await agent().ainvoke(QUESTION)
    assert TOOL_RUNS == ["Paris"]
    # A model with nothing left to say: any real call would fail.
    async with replay("lc-replay", mock=("llm", "tool")) as r:
        again = await agent(ToolCallingFake(messages=iter([]))).ainvoke(QUESTION)
    assert again["messages"][-1].content == first["messages"][-1].content
    assert TOOL_RUNS == ["Paris"]  # the tool did not run
    assert r.served == 3 and not r.divergences
    tool_message = next(m for m in again["messages"] if isinstance(m, ToolMessage))
    assert tool_message.content == "sunny in Paris" and tool_message.tool_call_id == "call_1"

    with pytest.raises(ReplayDivergence, match="Weather in Rome"):
        async with replay("lc-replay", mock=("llm", "tool")):
            await agent(ToolCallingFake(messages=iter([]))).ainvoke(
                {"messages": [("user", "Weather in Rome?")]}
            )


def test_sync_invoke_and_stream_are_recorded_and_replayed(instrumented) -> None:
    with at.session("lc-sync"):
        out = agent().invoke(QUESTION)
    assert out["messages"][-1].content == "It is sunny in Paris."
    with at.session("lc-sync-stream"):
        updates = list(agent().stream(QUESTION, stream_mode="updates"))
    assert len(updates) == 3
    at.flush_sync()
    for sid in ("lc-sync", "lc-sync-stream"):
        types = [e.event_type for e in at.get_events_sync(sid)]
        assert types.count("llm_responded") == 2 and types.count("tool_executed") == 1
        assert types[1] == "agent_started" and types[-2] == "agent_finished"
    with replay("lc-sync-stream", mock=("llm", "tool")) as r:
        again = list(agent(ToolCallingFake(messages=iter([]))).stream(QUESTION))
    assert len(again) == 3 and r.served == 3
    assert TOOL_RUNS == ["Paris", "Paris"]


async def test_astream_messages_records_the_stream(instrumented) -> None:
    async with at.session("lc-astream"):
        tokens = [
            chunk.content
            async for chunk, meta in agent().astream(QUESTION, stream_mode="messages")
            if isinstance(chunk, AIMessageChunk)
        ]
    assert "".join(tokens) == "It is sunny in Paris."
    events = await events_of("lc-astream")
    responded = [e.payload for e in events if e.event_type == "llm_responded"]
    assert [r["stream"] for r in responded] == [True, True]
    assert responded[1]["chunks"] >= 5
    assert responded[1]["time_to_first_chunk_ms"] is not None
    assert responded[1]["response"]["content"] == "It is sunny in Paris."
    assert responded[0]["usage"]["input_tokens"] == 120  # usage from the streamed chunks
    assert responded[0]["response"]["tool_calls"][0]["name"] == "get_weather"

    # Replayed, the recorded answer arrives whole: LangChain does not re-stream
    # an answer that comes from its cache.
    async with replay("lc-astream", mock=("llm", "tool")) as r:
        streamed = [
            chunk.content
            async for chunk, meta in agent(ToolCallingFake(messages=iter([]))).astream(
                QUESTION, stream_mode="messages"
            )
            if isinstance(chunk, AIMessage) and meta["langgraph_node"] == "agent"
        ]
    assert "".join(streamed) == "It is sunny in Paris."
    assert r.served == 3


async def test_astream_events_is_recorded_and_replayed(instrumented) -> None:
    async with at.session("lc-events"):
        kinds = [ev["event"] async for ev in agent().astream_events(QUESTION, version="v2")]
    assert "on_chat_model_stream" in kinds and "on_tool_end" in kinds
    types = [e.event_type for e in await events_of("lc-events")]
    assert types.count("llm_responded") == 2 and types.count("tool_started") == 1
    assert types[1] == "agent_started" and types[-2] == "agent_finished"

    async with replay("lc-events", mock=("llm", "tool")) as r:
        final = None
        async for ev in agent(ToolCallingFake(messages=iter([]))).astream_events(
            QUESTION, version="v2"
        ):
            if ev["event"] == "on_chain_end" and ev["name"] == "weather_agent":
                final = ev["data"]["output"]["messages"][-1].content
    assert final == "It is sunny in Paris." and r.served == 3


async def test_failures_are_recorded(instrumented) -> None:
    class Broken(ToolCallingFake):
        def _generate(self, *args: Any, **kwargs: Any) -> Any:
            raise ConnectionError("model endpoint down")

    with pytest.raises(ConnectionError):
        async with at.session("lc-fail"):
            await agent(Broken(messages=iter([]))).ainvoke(QUESTION)
    events = await events_of("lc-fail")
    failed = next(e.payload for e in events if e.event_type == "llm_failed")
    assert failed["error_type"] == "ConnectionError"
    finished = next(e.payload for e in events if e.event_type == "agent_finished")
    assert finished["status"] == "error" and finished["error_type"] == "ConnectionError"
    with pytest.raises(ConnectionError, match="model endpoint down"):
        async with replay("lc-fail", mock=("llm",)):
            await agent(Broken(messages=iter([]))).ainvoke(QUESTION)


async def test_direct_model_and_tool_calls(instrumented) -> None:
    async with at.session("lc-direct"):
        reply = await fake_model().ainvoke("hi")
        assert reply.tool_calls
        assert await get_weather.ainvoke({"city": "Oslo", "state": {"messages": [1]}}) == (
            "sunny in Oslo"
        )
    types = [e.event_type for e in await events_of("lc-direct")]
    assert types == [
        "session_started",
        "llm_started",
        "llm_responded",
        "tool_started",
        "tool_executed",
        "session_ended",
    ]


async def test_agent_events_stay_out_of_call_sequences(instrumented) -> None:
    async with at.session("lc-seq"):
        await agent().ainvoke(QUESTION)
    assert_calls_keep_their_own_events(await events_of("lc-seq"), llm_calls=2, tool_calls=1)


async def test_instrumenting_twice_records_once_and_uninstrument_stops(memory_store) -> None:
    first = at.instrument_langchain()
    second = at.instrument_langchain()
    async with at.session("lc-twice"):
        await agent().ainvoke(QUESTION)
    types = [e.event_type for e in await events_of("lc-twice")]
    assert types.count("llm_started") == 2 and types.count("tool_started") == 1
    first.uninstrument()
    second.uninstrument()
    async with at.session("lc-off"):
        await agent().ainvoke(QUESTION)
    assert [e.event_type for e in await events_of("lc-off")] == [
        "session_started",
        "session_ended",
    ]


def test_missing_framework_raises_import_error_naming_the_extra(monkeypatch) -> None:
    without_package(monkeypatch, "langchain_core", "langchain")
    with pytest.raises(ImportError, match=r"agent-trace\[langchain\]"):
        at.instrument_langchain()


async def test_a_cache_set_before_stays_behind_ours(memory_store) -> None:
    from langchain_core.caches import InMemoryCache
    from langchain_core.globals import get_llm_cache, set_llm_cache

    theirs = InMemoryCache()
    set_llm_cache(theirs)
    try:
        handle = at.instrument_langchain()
        async with at.session("lc-cache"):
            await agent().ainvoke(QUESTION)
        assert get_llm_cache() is theirs  # recording alone leaves the cache alone
        async with replay("lc-cache", mock=("llm", "tool")) as r:
            out = await agent(ToolCallingFake(messages=iter([]))).ainvoke(QUESTION)
        assert out["messages"][-1].content == "It is sunny in Paris." and r.served == 3
        assert get_llm_cache() is not theirs
        handle.uninstrument()
        assert get_llm_cache() is theirs
    finally:
        set_llm_cache(None)


async def test_create_agent_is_recorded_and_replayed(instrumented) -> None:
    from langchain.agents import create_agent

    async with at.session("lc-create-agent"):
        first = await create_agent(fake_model(), [get_weather], name="weather").ainvoke(QUESTION)
    events = await events_of("lc-create-agent")
    assert [e.event_type for e in events] == [
        "session_started",
        "agent_started",
        "llm_started",
        "llm_responded",
        "tool_started",
        "tool_executed",
        "llm_started",
        "llm_responded",
        "agent_finished",
        "session_ended",
    ]
    assert events[1].payload == {"agent": "weather"}
    assert events[4].payload["args"] == {"city": "Paris"}
    async with replay("lc-create-agent", mock=("llm", "tool")) as r:
        again = await create_agent(
            ToolCallingFake(messages=iter([])), [get_weather], name="weather"
        ).ainvoke(QUESTION)
    assert again["messages"][-1].content == first["messages"][-1].content
    assert r.served == 3 and TOOL_RUNS == ["Paris"]
