"""A LangGraph ReAct agent recorded with one call, then replayed from the recording.

``at.instrument_langchain()`` records every chat model call (messages, model,
``usage_metadata`` tokens, the ``AIMessage``), every tool call with the
tool's own arguments (injected graph state left out) and each graph run
(``agent_started``/``agent_finished``), for ``invoke``, ``stream``,
``astream`` and ``astream_events`` alike. Under replay the recorded
``AIMessage`` answers through LangChain's LLM cache and the recorded tool
output stands in for the tool; fresh message ids and run ids do not count
as divergence.

The chat model is a ``GenericFakeChatModel``: offline, deterministic.

    python examples/langgraph_agent.py
"""

from __future__ import annotations

import asyncio
import warnings
from typing import Annotated, Any

from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage
from langchain_core.tools import tool
from langgraph.prebuilt import InjectedState

import agent_trace as at
from agent_trace.replay import replay

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # LangGraph points to langchain.agents.create_agent
    from langgraph.prebuilt import create_react_agent

TOOL_RUNS: list[str] = []


class FakeChat(GenericFakeChatModel):
    """The fake chat model, able to take tools like a real one."""

    def bind_tools(self, tools: Any, **kwargs: Any) -> FakeChat:
        return self


def fake_llm() -> FakeChat:
    return FakeChat(
        messages=iter(
            [
                AIMessage(
                    "",
                    tool_calls=[{"name": "forecast", "args": {"city": "Paris"}, "id": "call_1"}],
                    usage_metadata={
                        "input_tokens": 95,
                        "output_tokens": 11,
                        "total_tokens": 106,
                        "input_token_details": {"cache_read": 64},
                    },
                ),
                AIMessage("Paris is sunny today."),
            ]
        )
    )


@tool
def forecast(city: str, state: Annotated[dict, InjectedState]) -> str:
    """The weather forecast for a city."""
    TOOL_RUNS.append(city)
    return "sunny"


def build_agent(model: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return create_react_agent(model, [forecast], name="weather_agent")


async def main() -> None:
    at.configure(store="memory://")
    handle = at.instrument_langchain()
    question = {"messages": [("user", "What's the weather in Paris?")]}

    async with at.session("graph-1"):
        async for update in build_agent(fake_llm()).astream(question, stream_mode="updates"):
            for node, state in update.items():
                print(f"{node}: {state['messages'][-1].content or '(tool call)'}")
    for ev in await at.get_events("graph-1"):
        p = ev.payload
        detail = p.get("agent") or p.get("tool") or p.get("name") or ""
        if ev.event_type == "tool_started":
            detail += f" {p['args']}"
        if ev.event_type == "llm_responded":
            detail += f" tokens={p['usage']}"
        print(f"  {ev.event_type:15} {detail}")

    # A model with nothing to say: every answer must come from the recording.
    async with replay("graph-1", mock=("llm", "tool")) as r:
        state = await build_agent(FakeChat(messages=iter([]))).ainvoke(question)
    print("replayed:", state["messages"][-1].content, f"(served {r.served} calls)")
    print("the tool ran", len(TOOL_RUNS), "time(s)")
    handle.uninstrument()


if __name__ == "__main__":
    asyncio.run(main())
