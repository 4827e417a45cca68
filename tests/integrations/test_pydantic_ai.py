"""pydantic-ai agents recorded and replayed, offline (TestModel / FunctionModel)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from agent_helpers import assert_calls_keep_their_own_events, events_of, without_package
from pydantic_ai import Agent, ModelRetry, RunContext
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, DeltaToolCall, FunctionModel
from pydantic_ai.models.test import TestModel
from pydantic_ai.usage import RequestUsage

import agent_trace as at
from agent_trace.replay import ReplayDivergence, replay


@pytest.fixture
def instrumented(memory_store):
    handle = at.instrument_pydantic_ai()
    yield handle
    handle.uninstrument()


class Deps:
    """Deps holding a secret: it must never reach the record."""

    api_password = "hunter2-deps-secret"


def weather_agent(tool_calls: list[str]) -> Agent[Deps, str]:
    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        # First turn: ask for the tool; then answer from its result.
        if len(messages) == 1:
            return ModelResponse(
                parts=[ToolCallPart("temperature", {"city": "Paris"}, tool_call_id="c1")],
                usage=RequestUsage(input_tokens=40, output_tokens=6, cache_read_tokens=30),
                model_name="fake-1",
            )
        result = messages[-1].parts[0].content  # type: ignore[union-attr]
        return ModelResponse(
            parts=[TextPart(f"It is {result} C in Paris.")],
            usage=RequestUsage(input_tokens=60, output_tokens=9),
            model_name="fake-1",
        )

    async def stream(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[Any]:
        if len(messages) == 1:
            yield {0: DeltaToolCall("temperature", '{"city": "Paris"}', tool_call_id="c1")}
            return
        result = messages[-1].parts[0].content  # type: ignore[union-attr]
        for piece in ("It is ", f"{result} C", " in Paris."):
            yield piece

    agent = Agent(FunctionModel(model, stream_function=stream), name="weather", deps_type=Deps)

    @agent.tool
    def temperature(ctx: RunContext[Deps], city: str) -> float:
        tool_calls.append(city)
        return 21.5

    return agent


async def test_run_records_agent_model_requests_and_tools(instrumented) -> None:
    calls: list[str] = []
    agent = weather_agent(calls)
    async with at.session("pa-run"):
        result = await agent.run("Weather in Paris?", deps=Deps())
    assert result.output == "It is 21.5 C in Paris."
    events = await events_of("pa-run")
    types = [e.event_type for e in events]
    assert types == [
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
    started, finished = events[1], events[-2]
    assert started.payload == {
        "agent": "weather",
        "input": "Weather in Paris?",
        "model": "function:model:stream",
    }
    assert finished.payload["status"] == "ok"
    assert finished.payload["output"] == "It is 21.5 C in Paris."
    assert finished.payload["duration_ms"] > 0
    # The run parents its calls.
    for ev in events[2:-2]:
        assert ev.parent_span_id == started.span_id
    llm = events[3].payload
    assert llm["name"] == "pydantic_ai.model_request"
    assert llm["agent"] == "weather"
    assert llm["response_model"] == "function:model:stream"
    assert llm["usage"] == {
        "input_tokens": 40,
        "output_tokens": 6,
        "total_tokens": 46,
        "cache_read_tokens": 30,
    }
    assert llm["response"]["parts"][0]["tool_name"] == "temperature"
    assert events[2].payload["args"]["tools"] == ["temperature"]
    assert events[2].payload["args"]["messages"] == [
        {"kind": "request", "parts": [{"content": "Weather in Paris?", "part_kind": "user-prompt"}]}
    ]
    assert events[4].payload == {"tool": "temperature", "args": {"city": "Paris"}}
    assert events[5].payload["result"] == 21.5
    # Neither RunContext nor deps are captured anywhere.
    text = str([e.payload for e in events])
    assert "hunter2" not in text and "RunContext" not in text


async def test_agent_events_stay_out_of_call_sequences(instrumented) -> None:
    agent = weather_agent([])
    async with at.session("pa-seq"):
        await agent.run("Weather?", deps=Deps())
    assert_calls_keep_their_own_events(await events_of("pa-seq"), llm_calls=2, tool_calls=1)


async def test_run_stream_is_recorded_and_replays_as_a_stream(instrumented) -> None:
    calls: list[str] = []
    agent = weather_agent(calls)
    async with at.session("pa-stream"), agent.run_stream("Weather?", deps=Deps()) as stream:
        chunks = [c async for c in stream.stream_text(delta=True)]
    assert "".join(chunks) == "It is 21.5 C in Paris."
    events = await events_of("pa-stream")
    responded = [e.payload for e in events if e.event_type == "llm_responded"]
    assert [r["stream"] for r in responded] == [True, True]
    for r in responded:  # time to the first streamed event, within the request's duration
        assert 0 < r["time_to_first_chunk_ms"] <= r["duration_ms"]
        assert r["chunks"] >= 1
    assert responded[1]["response"]["parts"][0]["content"] == "It is 21.5 C in Paris."
    assert responded[1]["usage"]["output_tokens"] > 0
    assert [e.event_type for e in events][-2] == "agent_finished"

    r = replay("pa-stream", mock=("llm", "tool"))
    async with r, agent.run_stream("Weather?", deps=Deps()) as stream:
        again = [c async for c in stream.stream_text(delta=True)]
    assert "".join(again) == "It is 21.5 C in Paris."
    assert calls == ["Paris"]  # the tool ran once: when recorded
    assert r.served == 3


async def test_iter_is_recorded(instrumented) -> None:
    agent = weather_agent([])
    async with at.session("pa-iter"), agent.iter("Weather?", deps=Deps()) as run:
        nodes = [node async for node in run]
    assert nodes and run.result is not None
    types = [e.event_type for e in await events_of("pa-iter")]
    assert types.count("llm_responded") == 2 and "agent_finished" in types


def test_run_sync_is_recorded(instrumented) -> None:
    agent = Agent(TestModel(custom_output_text="done"), name="sync-agent")
    with at.session("pa-sync"):
        assert agent.run_sync("go").output == "done"
    at.flush_sync()
    events = at.get_events_sync("pa-sync")
    types = [e.event_type for e in events]
    assert types == [
        "session_started",
        "agent_started",
        "llm_started",
        "llm_responded",
        "agent_finished",
        "session_ended",
    ]
    assert events[2].parent_span_id == events[1].span_id


async def test_replay_reaches_the_same_output_without_model_or_tools(instrumented) -> None:
    calls: list[str] = []
    model_calls = 0

    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        nonlocal model_calls
        model_calls += 1
        if len(messages) == 1:
            return ModelResponse(parts=[ToolCallPart("temperature", {"city": "Oslo"})])
        return ModelResponse(parts=[TextPart(f"{messages[-1].parts[0].content} C")])  # type: ignore[union-attr]

    agent = Agent(FunctionModel(model), name="w", deps_type=Deps)

    @agent.tool
    def temperature(ctx: RunContext[Deps], city: str) -> float:
        calls.append(city)
        return -3.0

    async with at.session("pa-replay"):
        recorded = await agent.run("Oslo?", deps=Deps())
    assert (model_calls, calls) == (2, ["Oslo"])

    async with replay("pa-replay", mock=("llm", "tool")) as r:
        replayed = await agent.run("Oslo?", deps=Deps())
    assert replayed.output == recorded.output == "-3.0 C"
    assert (model_calls, calls) == (2, ["Oslo"])  # neither ran again
    assert r.served == 3 and not r.divergences
    served = [m for m in replayed.all_messages() if isinstance(m, ModelResponse)]
    assert isinstance(served[0].parts[0], ToolCallPart)  # real ModelResponse objects

    # Another question is a divergence, reported at the model request.
    with pytest.raises(ReplayDivergence, match=r"args differ at args\.messages"):
        async with replay("pa-replay", mock=("llm", "tool")):
            await agent.run("Bergen?", deps=Deps())


async def test_failures_are_recorded_and_replayed(instrumented) -> None:
    def broken(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        raise ConnectionError("model endpoint down")

    agent = Agent(FunctionModel(broken), name="broken")
    with pytest.raises(ConnectionError):
        async with at.session("pa-fail"):
            await agent.run("hi")
    events = await events_of("pa-fail")
    failed = next(e.payload for e in events if e.event_type == "llm_failed")
    assert failed["error_type"] == "ConnectionError"
    finished = next(e.payload for e in events if e.event_type == "agent_finished")
    assert finished["status"] == "error" and finished["error_type"] == "ConnectionError"

    with pytest.raises(ConnectionError, match="model endpoint down"):
        async with replay("pa-fail", mock=("llm",)):
            await agent.run("hi")


async def test_tool_model_retry_replays_as_model_retry(instrumented) -> None:
    tries: list[int] = []

    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        n = sum(1 for m in messages for p in m.parts if p.part_kind == "tool-call")
        if n == 2:  # the second call succeeded
            return ModelResponse(parts=[TextPart(f"got {messages[-1].parts[-1].content}")])
        return ModelResponse(parts=[ToolCallPart("lookup", {"n": n})])

    agent = Agent(FunctionModel(model), name="retrying")

    @agent.tool_plain
    def lookup(n: int) -> int:
        tries.append(n)
        if n == 0:
            raise ModelRetry("try a larger n")
        return n * 10

    async with at.session("pa-retry"):
        assert (await agent.run("go")).output == "got 10"
    async with replay("pa-retry", mock=("llm", "tool")) as r:
        assert (await agent.run("go")).output == "got 10"
    assert tries == [0, 1] and not r.divergences


async def test_instrumenting_twice_records_once_and_uninstrument_stops(memory_store) -> None:
    agent = Agent(TestModel(custom_output_text="ok"), name="a")
    first = at.instrument_pydantic_ai()
    second = at.instrument_pydantic_ai()
    async with at.session("pa-twice"):
        await agent.run("x")
    types = [e.event_type for e in await events_of("pa-twice")]
    assert types.count("llm_started") == 1 and types.count("agent_started") == 1
    first.uninstrument()
    second.uninstrument()
    second.uninstrument()  # idempotent
    async with at.session("pa-off"):
        await agent.run("x")
    types = [e.event_type for e in await events_of("pa-off")]
    assert types == ["session_started", "session_ended"]


async def test_one_agent_only(memory_store) -> None:
    watched = Agent(TestModel(custom_output_text="w"), name="watched")
    other = Agent(TestModel(custom_output_text="o"), name="other")
    with at.instrument_pydantic_ai(watched):
        async with at.session("pa-one"):
            await watched.run("x")
            await other.run("x")
    started = [
        e.payload["agent"] for e in await events_of("pa-one") if e.event_type == "agent_started"
    ]
    assert started == ["watched"]
    with pytest.raises(TypeError, match=r"pydantic_ai\.Agent"):
        at.instrument_pydantic_ai("not an agent")


async def test_outside_a_session_nothing_is_recorded(instrumented, memory_store) -> None:
    agent = Agent(TestModel(custom_output_text="ok"), name="a")
    assert (await agent.run("x")).output == "ok"
    await at.flush()
    assert await at.list_sessions() == []


async def test_agent_inside_a_recorded_tool_is_its_child(instrumented) -> None:
    inner = Agent(TestModel(custom_output_text="inner answer"), name="inner")

    @at.record_tool
    async def ask_inner(question: str) -> str:
        return (await inner.run(question)).output

    async with at.session("pa-nested"):
        assert await ask_inner("q") == "inner answer"
    events = await events_of("pa-nested")
    tool = next(e for e in events if e.event_type == "tool_started")
    started = next(e for e in events if e.event_type == "agent_started")
    assert started.parent_span_id == tool.span_id
    # The tool's own sequence is untouched.
    assert [e.event_type for e in events if e.span_id == tool.span_id] == [
        "tool_started",
        "tool_executed",
    ]


def test_missing_framework_raises_import_error_naming_the_extra(monkeypatch) -> None:
    without_package(monkeypatch, "pydantic_ai", "pydantic_ai")
    with pytest.raises(ImportError, match=r"agent-trace\[pydantic-ai\]"):
        at.instrument_pydantic_ai()


async def test_the_span_tree_shows_the_agent_run_over_its_calls(instrumented) -> None:
    from agent_trace.projections import build_span_tree

    async with at.session("pa-tree"):
        await weather_agent([]).run("Weather?", deps=Deps())
    (root,) = build_span_tree(await events_of("pa-tree"))
    assert (root.kind, root.name, root.status) == ("agent", "weather", "ok")
    assert [(c.kind, c.name) for c in root.children] == [
        ("llm", "pydantic_ai.model_request"),
        ("tool", "temperature"),
        ("llm", "pydantic_ai.model_request"),
    ]
    assert root.duration_ms is not None and root.duration_ms >= sum(
        c.duration_ms or 0 for c in root.children
    )

    def broken(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        raise ConnectionError("down")

    with pytest.raises(ConnectionError):
        async with at.session("pa-tree-fail"):
            await Agent(FunctionModel(broken), name="broken").run("hi")
    (root,) = build_span_tree(await events_of("pa-tree-fail"))
    assert (root.kind, root.status, root.error) == ("agent", "error", "down")
