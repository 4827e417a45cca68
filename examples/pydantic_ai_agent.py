"""A pydantic-ai agent recorded with one call, then replayed without model or tools.

``at.instrument_pydantic_ai()`` records every ``Agent`` run: the run itself
(``agent_started``/``agent_finished``), each model request (messages, model,
usage, the ``ModelResponse``) and each tool call with the tool's own
arguments — never ``RunContext`` or the deps (here a database password).
Replay serves the recorded ``ModelResponse`` objects and tool results, so
the same agent code reaches the same output while nothing real runs.

The model is pydantic-ai's ``FunctionModel``: offline, deterministic.

    python examples/pydantic_ai_agent.py
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from pydantic_ai import Agent, RunContext
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.usage import RequestUsage

import agent_trace as at
from agent_trace.replay import replay

TOOL_RUNS: list[str] = []


@dataclass
class Deps:
    db_password: str  # must never reach the record


def fake_llm(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """Ask for the forecast first, then answer from the tool's result."""
    if len(messages) == 1:
        return ModelResponse(
            parts=[ToolCallPart("forecast", {"city": "Paris"})],
            usage=RequestUsage(input_tokens=52, output_tokens=8, cache_read_tokens=40),
            model_name="fake-forecaster",
        )
    sky = messages[-1].parts[0].content  # type: ignore[union-attr]
    return ModelResponse(
        parts=[TextPart(f"Paris is {sky} today.")],
        usage=RequestUsage(input_tokens=70, output_tokens=7),
        model_name="fake-forecaster",
    )


agent = Agent(FunctionModel(fake_llm), name="weather", deps_type=Deps)


@agent.tool
def forecast(ctx: RunContext[Deps], city: str) -> str:
    TOOL_RUNS.append(city)
    return "sunny"


async def main() -> None:
    at.configure(store="memory://")
    handle = at.instrument_pydantic_ai()
    deps = Deps(db_password="hunter2")

    async with at.session("weather-1"):
        result = await agent.run("What's the weather in Paris?", deps=deps)
    print("answer:", result.output)
    for ev in await at.get_events("weather-1"):
        p = ev.payload
        detail = p.get("agent") or p.get("tool") or ""
        if ev.event_type == "tool_started":
            detail += f" {p['args']}"
        if ev.event_type == "llm_responded":
            detail = f"{p['name']} tokens={p['usage']}"
        print(f"  {ev.event_type:15} {detail}")

    async with replay("weather-1", mock=("llm", "tool")) as r:
        again = await agent.run("What's the weather in Paris?", deps=deps)
    print("replayed:", again.output, f"(served {r.served} calls; the tool ran {len(TOOL_RUNS)}x)")
    handle.uninstrument()


if __name__ == "__main__":
    asyncio.run(main())
