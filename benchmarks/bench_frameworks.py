"""What recording costs an agent framework's run, measured side by side.

For pydantic-ai, LangGraph (prebuilt ReAct agent) and the OpenAI Agents SDK,
one small agent (two model calls, one tool call, fake offline models) runs
alternately uninstrumented and instrumented inside a session (memory store),
so both see the same machine state. Printed per framework: the median time
of a plain run, of a recorded run, their ratio, what recording adds per run,
and a replayed run (model and tool served from the recording).

    python benchmarks/bench_frameworks.py            # 200 runs each
    python benchmarks/bench_frameworks.py --quick    # 20 runs each (CI smoke)
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import warnings
from collections.abc import Awaitable, Callable
from typing import Any

import agent_trace as at
from agent_trace.replay import replay

Run = Callable[[], Awaitable[Any]]


def pydantic_ai_agent() -> tuple[Run, Callable[[], Any]]:
    from pydantic_ai import Agent
    from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
    from pydantic_ai.models.function import AgentInfo, FunctionModel

    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if len(messages) == 1:
            return ModelResponse(parts=[ToolCallPart("forecast", {"city": "Paris"})])
        return ModelResponse(parts=[TextPart("Paris is sunny.")])

    agent = Agent(FunctionModel(model), name="weather")

    @agent.tool_plain
    def forecast(city: str) -> str:
        return "sunny"

    async def run() -> Any:
        return (await agent.run("Weather in Paris?")).output

    return run, at.instrument_pydantic_ai


def langgraph_agent() -> tuple[Run, Callable[[], Any]]:
    from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
    from langchain_core.messages import AIMessage
    from langchain_core.tools import tool

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from langgraph.prebuilt import create_react_agent

    class FakeChat(GenericFakeChatModel):
        def bind_tools(self, tools: Any, **kwargs: Any) -> FakeChat:
            return self

    @tool
    def forecast(city: str) -> str:
        """The forecast for a city."""
        return "sunny"

    call = {"name": "forecast", "args": {"city": "Paris"}, "id": "c1"}

    async def run() -> Any:
        answers = iter([AIMessage("", tool_calls=[call]), AIMessage("Paris is sunny.")])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            graph = create_react_agent(FakeChat(messages=answers), [forecast], name="weather")
        state = await graph.ainvoke({"messages": [("user", "Weather in Paris?")]})
        return state["messages"][-1].content

    return run, at.instrument_langchain


def openai_agents_agent() -> tuple[Run, Callable[[], Any]]:
    import agents
    from agents import Agent, Runner, function_tool
    from agents.testing import ScriptedModel, assistant_message, function_call

    agents.set_trace_processors([])  # no export to OpenAI

    @function_tool
    def forecast(city: str) -> str:
        """The forecast for a city."""
        return "sunny"

    async def run() -> Any:
        model = ScriptedModel(
            [
                [function_call("forecast", {"city": "Paris"}, call_id="c1")],
                [assistant_message("Paris is sunny.")],
            ]
        )
        agent = Agent(name="weather", tools=[forecast], model=model)
        return (await Runner.run(agent, "Weather in Paris?")).final_output

    return run, at.instrument_openai_agents


FRAMEWORKS = {
    "pydantic-ai": pydantic_ai_agent,
    "langgraph": langgraph_agent,
    "openai-agents": openai_agents_agent,
}


async def measure(name: str, runs: int) -> list[str]:
    run, instrument = FRAMEWORKS[name]()
    for _ in range(3):  # warm caches and lazy imports
        await run()
    handle = instrument()
    plain: list[float] = []
    recorded: list[float] = []
    try:
        for i in range(runs):
            # Alternate: both sides see the same machine state.
            handle.uninstrument()
            t0 = time.perf_counter()
            await run()
            plain.append(time.perf_counter() - t0)
            handle = instrument()
            async with at.session(f"{name}-{i}"):
                t0 = time.perf_counter()
                await run()
                recorded.append(time.perf_counter() - t0)
        await at.flush()
        replayed: list[float] = []
        for i in range(min(runs, 50)):
            async with replay(f"{name}-{i}", mock=("llm", "tool")):
                t0 = time.perf_counter()
                await run()
                replayed.append(time.perf_counter() - t0)
    finally:
        handle.uninstrument()
    p, r, rp = (statistics.median(x) * 1e6 for x in (plain, recorded, replayed))
    return [
        f"{name + ':':16} {p:10.0f} {r:10.0f} {r / p:7.2f}x {r - p:10.0f} {rp:10.0f}",
    ]


async def main(runs: int) -> None:
    at.configure(store="memory://")
    print(f"{runs} runs each (2 model calls + 1 tool call per run); medians in us")
    head = ("plain", 10), ("recorded", 10), ("ratio", 8), ("added", 10), ("replayed", 10)
    print(f"{'framework':16} " + " ".join(f"{name:>{width}}" for name, width in head))
    for name in FRAMEWORKS:
        for line in await measure(name, runs):
            print(line)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="20 runs each")
    args = parser.parse_args()
    asyncio.run(main(20 if args.quick else args.runs))
