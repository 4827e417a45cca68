"""An OpenAI Agents SDK triage agent handing off to a specialist, recorded and replayed.

``at.instrument_openai_agents()`` records each agent run
(``agent_started``/``agent_finished``), the handoff between them
(``agent_handoff``), every guardrail check (``guardrail_checked``), every
model call with its usage (cached and reasoning tokens included) and every
function tool call, for ``Runner.run``, ``run_sync`` and ``run_streamed``.
Replay serves the recorded model responses and tool outputs, so the same
agents reach the same answer with no model and no tool running.

The models are the SDK's own ``ScriptedModel``: offline, deterministic. The
SDK's default trace exporter (to OpenAI) is switched off first.

    python examples/openai_agents_handoff.py
"""

from __future__ import annotations

import asyncio
from typing import Any

import agents
from agents import Agent, GuardrailFunctionOutput, Runner, Usage, function_tool, input_guardrail
from agents.testing import ModelStep, ScriptedModel, assistant_message, function_call
from openai.types.responses.response_usage import InputTokensDetails, OutputTokensDetails

import agent_trace as at
from agent_trace.replay import replay

TOOL_RUNS: list[str] = []


def usage(inp: int, out: int, cached: int = 0) -> Usage:
    return Usage(
        requests=1,
        input_tokens=inp,
        output_tokens=out,
        total_tokens=inp + out,
        input_tokens_details=InputTokensDetails.model_validate(
            {"cached_tokens": cached, "cache_write_tokens": 0}
        ),
        output_tokens_details=OutputTokensDetails(reasoning_tokens=0),
    )


@function_tool
def forecast(city: str) -> str:
    """The weather forecast for a city."""
    TOOL_RUNS.append(city)
    return "sunny"


@input_guardrail
async def on_topic(ctx: Any, agent: Agent, user_input: Any) -> GuardrailFunctionOutput:
    return GuardrailFunctionOutput(output_info=None, tripwire_triggered="stocks" in str(user_input))


def build(scripted: bool = True) -> Agent:
    """Triage -> weather specialist. ``scripted=False``: models with nothing to say."""
    weather = Agent(
        name="weather_agent",
        instructions="Answer weather questions with the forecast tool.",
        tools=[forecast],
        model=ScriptedModel(
            [
                ModelStep(
                    output=[function_call("forecast", {"city": "Paris"}, call_id="c1")],
                    usage=usage(180, 12, cached=128),
                ),
                ModelStep(output=[assistant_message("Paris is sunny today.")], usage=usage(210, 7)),
            ]
            if scripted
            else []
        ),
    )
    return Agent(
        name="triage",
        instructions="Hand weather questions to the weather agent.",
        handoffs=[weather],
        input_guardrails=[on_topic],
        model=ScriptedModel(
            [ModelStep(output=[function_call("transfer_to_weather_agent", {}, call_id="h1")])]
            if scripted
            else []
        ),
    )


async def main() -> None:
    agents.set_trace_processors([])  # offline: no export to OpenAI (before instrumenting)
    at.configure(store="memory://")
    handle = at.instrument_openai_agents()

    async with at.session("triage-1"):
        result = await Runner.run(build(), "What's the weather in Paris?")
    print("answer:", result.final_output)
    for ev in await at.get_events("triage-1"):
        p = ev.payload
        detail = p.get("agent") or p.get("tool") or p.get("name") or ""
        if ev.event_type == "agent_handoff":
            detail = f"{p['from_agent']} -> {p['to_agent']}"
        if ev.event_type == "guardrail_checked":
            detail += f" triggered={p['triggered']}"
        if ev.event_type == "tool_started":
            detail += f" {p['args']}"
        if ev.event_type == "llm_responded":
            detail += f" tokens={p['usage']}"
        print(f"  {ev.event_type:17} {detail}")

    async with replay("triage-1", mock=("llm", "tool")) as r:
        streamed = Runner.run_streamed(build(scripted=False), "What's the weather in Paris?")
        async for _ in streamed.stream_events():
            pass
    print("replayed:", streamed.final_output, f"(served {r.served} calls)")
    print("the tool ran", len(TOOL_RUNS), "time(s)")
    handle.uninstrument()


if __name__ == "__main__":
    asyncio.run(main())
