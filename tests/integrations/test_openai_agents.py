"""OpenAI Agents SDK runs recorded and replayed, offline (the SDK's ScriptedModel)."""

from __future__ import annotations

from typing import Any

import agents
import pytest
from agent_helpers import assert_calls_keep_their_own_events, events_of, without_package
from agents import (
    Agent,
    GuardrailFunctionOutput,
    InputGuardrailTripwireTriggered,
    Runner,
    RunResult,
    Usage,
    function_tool,
    input_guardrail,
    output_guardrail,
)
from agents.testing import ModelStep, ScriptedModel, assistant_message, function_call
from openai.types.responses.response_usage import InputTokensDetails, OutputTokensDetails

import agent_trace as at
from agent_trace.replay import ReplayDivergence, replay

TOOL_RUNS: list[str] = []


@pytest.fixture(autouse=True, scope="module")
def no_trace_export():
    """The SDK's default processor exports to OpenAI: offline tests keep only ours.

    Before anything is instrumented: set_trace_processors replaces every processor.
    """
    agents.set_trace_processors([])
    yield


@pytest.fixture
def instrumented(memory_store):
    TOOL_RUNS.clear()
    handle = at.instrument_openai_agents()
    yield handle
    handle.uninstrument()


def usage(inp: int, out: int, cached: int = 0, reasoning: int = 0) -> Usage:
    return Usage(
        requests=1,
        input_tokens=inp,
        output_tokens=out,
        total_tokens=inp + out,
        input_tokens_details=InputTokensDetails.model_validate(
            {"cached_tokens": cached, "cache_write_tokens": 0}
        ),
        output_tokens_details=OutputTokensDetails(reasoning_tokens=reasoning),
    )


@function_tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    TOOL_RUNS.append(city)
    return f"sunny in {city}"


@input_guardrail
async def on_topic(ctx: Any, agent: Agent, user_input: Any) -> GuardrailFunctionOutput:
    return GuardrailFunctionOutput(output_info=None, tripwire_triggered="stocks" in str(user_input))


@output_guardrail
async def short_answer(ctx: Any, agent: Agent, output: Any) -> GuardrailFunctionOutput:
    return GuardrailFunctionOutput(output_info=None, tripwire_triggered=len(str(output)) > 200)


def triage(*, empty: bool = False) -> Agent:
    """A triage agent handing off to a weather agent that calls a tool."""
    weather_steps = [
        ModelStep(
            output=[function_call("get_weather", {"city": "Paris"}, call_id="c1")],
            usage=usage(120, 10, cached=100, reasoning=4),
        ),
        ModelStep(output=[assistant_message("Sunny in Paris.")], usage=usage(150, 6)),
    ]
    triage_steps = [
        ModelStep(
            output=[function_call("transfer_to_weather_agent", {}, call_id="h1")],
            usage=usage(60, 3),
        )
    ]
    weather = Agent(
        name="weather_agent",
        instructions="Answer weather questions.",
        tools=[get_weather],
        output_guardrails=[short_answer],
        model=ScriptedModel([] if empty else weather_steps),
    )
    return Agent(
        name="triage",
        instructions="Route the question.",
        handoffs=[weather],
        input_guardrails=[on_topic],
        model=ScriptedModel([] if empty else triage_steps),
    )


async def test_run_records_agents_handoffs_guardrails_tools_and_model_calls(instrumented) -> None:
    async with at.session("oa-run"):
        result = await Runner.run(triage(), "Weather in Paris?")
    assert result.final_output == "Sunny in Paris."
    events = await events_of("oa-run")
    types = [e.event_type for e in events]
    assert types == [
        "session_started",
        "agent_started",
        "guardrail_checked",
        "llm_started",
        "llm_responded",
        "agent_handoff",
        "agent_finished",
        "agent_started",
        "llm_started",
        "llm_responded",
        "tool_started",
        "tool_executed",
        "llm_started",
        "llm_responded",
        "guardrail_checked",
        "agent_finished",
        "session_ended",
    ]
    started = {e.payload["agent"]: e for e in events if e.event_type == "agent_started"}
    assert list(started) == ["triage", "weather_agent"]
    handoff = next(e for e in events if e.event_type == "agent_handoff")
    assert handoff.payload == {"from_agent": "triage", "to_agent": "weather_agent"}
    assert handoff.span_id == started["triage"].span_id
    guardrails = [e.payload for e in events if e.event_type == "guardrail_checked"]
    assert guardrails == [
        {"name": "on_topic", "triggered": False},
        {"name": "short_answer", "triggered": False},
    ]
    llm = [e for e in events if e.event_type == "llm_responded"]
    assert [e.payload["agent"] for e in llm] == ["triage", "weather_agent", "weather_agent"]
    assert llm[1].payload["name"] == "openai_agents.model_request"
    assert llm[1].payload["usage"] == {
        "input_tokens": 120,
        "output_tokens": 10,
        "total_tokens": 130,
        "cache_read_tokens": 100,
        "cache_write_tokens": 0,
        "reasoning_tokens": 4,
    }
    assert llm[1].parent_span_id == started["weather_agent"].span_id
    tool = next(e for e in events if e.event_type == "tool_started")
    assert tool.payload == {"tool": "get_weather", "args": {"city": "Paris"}}
    assert tool.parent_span_id == started["weather_agent"].span_id
    first_request = next(e for e in events if e.event_type == "llm_started").payload["args"]
    assert first_request["handoffs"] == ["transfer_to_weather_agent"]
    assert first_request["input"] == [{"content": "Weather in Paris?", "role": "user"}]
    finished = [e.payload for e in events if e.event_type == "agent_finished"]
    assert [f["status"] for f in finished] == ["ok", "ok"]
    assert finished[1]["tools"] == ["get_weather"]


async def test_agent_events_stay_out_of_call_sequences(instrumented) -> None:
    async with at.session("oa-seq"):
        await Runner.run(triage(), "Weather in Paris?")
    assert_calls_keep_their_own_events(await events_of("oa-seq"), llm_calls=3, tool_calls=1)


async def test_replay_reaches_the_same_output_without_model_or_tools(instrumented) -> None:
    async with at.session("oa-replay"):
        first = await Runner.run(triage(), "Weather in Paris?")
    assert TOOL_RUNS == ["Paris"]
    # Scripted models with no steps left: any real model call would fail.
    async with replay("oa-replay", mock=("llm", "tool")) as r:
        again = await Runner.run(triage(empty=True), "Weather in Paris?")
    assert again.final_output == first.final_output == "Sunny in Paris."
    assert TOOL_RUNS == ["Paris"] and r.served == 4 and not r.divergences
    assert again.context_wrapper.usage.input_tokens == first.context_wrapper.usage.input_tokens

    with pytest.raises(ReplayDivergence, match="Weather in Rome"):
        async with replay("oa-replay", mock=("llm", "tool")):
            await Runner.run(triage(empty=True), "Weather in Rome?")


async def test_run_streamed_is_recorded_and_replays_as_a_stream(instrumented) -> None:
    async with at.session("oa-stream"):
        streamed = Runner.run_streamed(triage(), "Weather in Paris?")
        kinds = [ev.type async for ev in streamed.stream_events()]
    assert streamed.final_output == "Sunny in Paris."
    assert "raw_response_event" in kinds and "agent_updated_stream_event" in kinds
    events = await events_of("oa-stream")
    responded = [e.payload for e in events if e.event_type == "llm_responded"]
    assert all(r["stream"] and r["status"] == "complete" for r in responded)
    assert all(r["chunks"] > 0 and r["time_to_first_chunk_ms"] is not None for r in responded)
    assert responded[1]["usage"]["cache_read_tokens"] == 100
    assert responded[2]["response"]["output"][0]["content"][0]["text"] == "Sunny in Paris."
    assert [e.event_type for e in events].count("agent_handoff") == 1

    async with replay("oa-stream", mock=("llm", "tool")) as r:
        again = Runner.run_streamed(triage(empty=True), "Weather in Paris?")
        deltas = [
            ev.data.delta
            async for ev in again.stream_events()
            if ev.type == "raw_response_event" and ev.data.type == "response.output_text.delta"
        ]
    assert again.final_output == "Sunny in Paris." and "".join(deltas) == "Sunny in Paris."
    assert TOOL_RUNS == ["Paris"] and r.served == 4


def test_run_sync_is_recorded(instrumented) -> None:
    with at.session("oa-sync"):
        result: RunResult = Runner.run_sync(triage(), "Weather in Paris?")
    assert result.final_output == "Sunny in Paris."
    at.flush_sync()
    types = [e.event_type for e in at.get_events_sync("oa-sync")]
    assert types.count("agent_started") == 2 and types.count("llm_responded") == 3
    assert types.count("tool_executed") == 1 and types.count("agent_handoff") == 1
    with replay("oa-sync", mock=("llm", "tool")) as r:
        assert Runner.run_sync(triage(empty=True), "Weather in Paris?").final_output == (
            "Sunny in Paris."
        )
    assert r.served == 4


async def test_a_triggered_guardrail_and_a_failure_are_recorded(instrumented) -> None:
    with pytest.raises(InputGuardrailTripwireTriggered):
        async with at.session("oa-guard"):
            await Runner.run(triage(), "Buy stocks?")
    events = await events_of("oa-guard")
    assert {"name": "on_topic", "triggered": True} in [
        e.payload for e in events if e.event_type == "guardrail_checked"
    ]
    finished = next(e.payload for e in events if e.event_type == "agent_finished")
    assert finished["status"] == "error"
    assert finished["error_type"] == "GuardrailTripwireTriggered"
    assert "on_topic" in finished["error"]

    broken = Agent(
        name="broken",
        model=ScriptedModel([ModelStep.raise_error(ConnectionError("model endpoint down"))]),
    )
    with pytest.raises(ConnectionError):
        async with at.session("oa-fail"):
            await Runner.run(broken, "hi")
    events = await events_of("oa-fail")
    failed = next(e.payload for e in events if e.event_type == "llm_failed")
    assert failed["error_type"] == "ConnectionError" and failed["agent"] == "broken"
    assert next(e.payload for e in events if e.event_type == "agent_finished")["status"] == "error"
    with pytest.raises(ConnectionError, match="model endpoint down"):
        async with replay("oa-fail", mock=("llm",)):
            await Runner.run(Agent(name="broken", model=ScriptedModel([])), "hi")


async def test_instrumenting_twice_records_once_and_uninstrument_stops(memory_store) -> None:
    first = at.instrument_openai_agents()
    second = at.instrument_openai_agents()
    async with at.session("oa-twice"):
        await Runner.run(triage(), "Weather in Paris?")
    types = [e.event_type for e in await events_of("oa-twice")]
    assert types.count("llm_started") == 3 and types.count("agent_started") == 2
    assert types.count("tool_started") == 1
    first.uninstrument()
    second.uninstrument()
    async with at.session("oa-off"):
        assert (await Runner.run(triage(), "Weather in Paris?")).final_output == "Sunny in Paris."
    assert [e.event_type for e in await events_of("oa-off")] == [
        "session_started",
        "session_ended",
    ]
    # The tool objects are handed back their own on_invoke_tool.
    assert not type(get_weather.on_invoke_tool).__name__.startswith("_Recorded")


def test_missing_framework_raises_import_error_naming_the_extra(monkeypatch) -> None:
    without_package(monkeypatch, "agents", "openai_agents")
    with pytest.raises(ImportError, match=r"agent-trace\[openai-agents\]"):
        at.instrument_openai_agents()


async def test_a_model_calling_another_is_recorded_once(instrumented) -> None:
    class Logged(ScriptedModel):
        """A subclass whose methods call the parent class's."""

        async def get_response(self, *args: Any, **kwargs: Any) -> Any:
            return await super().get_response(*args, **kwargs)

        async def stream_response(self, *args: Any, **kwargs: Any) -> Any:
            async for event in super().stream_response(*args, **kwargs):
                yield event

    def agent() -> Agent:
        return Agent(name="solo", model=Logged([[assistant_message("hi")]]))

    at.instrument_openai_agents().uninstrument()  # Logged is picked up by the next run too
    async with at.session("oa-nested"):
        assert (await Runner.run(agent(), "x")).final_output == "hi"
        streamed = Runner.run_streamed(agent(), "x")
        async for _ in streamed.stream_events():
            pass
    types = [e.event_type for e in await events_of("oa-nested")]
    assert types.count("llm_started") == 2 and types.count("llm_responded") == 2


async def test_otel_export_nests_calls_under_their_agent_run(instrumented) -> None:
    from agent_trace.otel import build_spans

    async with at.session("oa-otel"):
        await Runner.run(triage(), "Weather in Paris?")
    spans = build_spans(await events_of("oa-otel"))
    by_id = {s.span_id: s for s in spans}
    agents_ = {
        s.attributes.get("gen_ai.agent.name"): s
        for s in spans
        if s.name.startswith("invoke_agent ")
    }
    assert set(agents_) == {"triage", "weather_agent"}
    calls = [s for s in spans if s.name.startswith(("chat ", "execute_tool "))]
    assert len(calls) == 4
    for span in calls:  # every call's parent is an exported agent span
        assert by_id[span.parent_span_id].name.startswith("invoke_agent ")
    handoff = agents_["triage"].events
    assert [name for name, _, _ in handoff] == ["guardrail_checked", "agent_handoff"]

    with pytest.raises(InputGuardrailTripwireTriggered):
        async with at.session("oa-otel-fail"):
            await Runner.run(triage(), "Buy stocks?")
    spans = build_spans(await events_of("oa-otel-fail"))
    (triage_span,) = [s for s in spans if s.name == "invoke_agent triage"]
    assert triage_span.failed
    assert triage_span.attributes["error.type"] == "GuardrailTripwireTriggered"
