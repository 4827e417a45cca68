"""``exclude_args=`` (not captured, not compared) and ``replay(ignore=...)``."""

from __future__ import annotations

import pytest

import agent_trace as at
from agent_trace.replay import ReplayDivergence, replay


class Client:
    """Something an agent passes around that has no business in the record."""

    secret = "conn-string-with-password"


async def test_excluded_args_are_not_recorded(memory_store) -> None:
    @at.record_tool(exclude_args=("client", "trace_ctx"))
    async def search(query: str, client: Client, **trace_ctx: object) -> str:
        return f"results for {query}"

    @at.record_llm(exclude_args=("client",))
    def complete(prompt: str, client: Client) -> str:
        return "answer"

    @at.record_decision(exclude_args=("client",))
    def route(question: str, client: Client) -> str:
        return "search"

    async with at.session("ex-1"):
        await search("cats", Client(), request_id="r-1")
        complete("hi", client=Client())
        route("q", Client())
    events = await at.get_events("ex-1")
    started = next(e for e in events if e.event_type == "tool_started")
    assert started.payload["args"] == {"query": "cats"}
    llm = next(e for e in events if e.event_type == "llm_started")
    assert llm.payload["args"] == {"prompt": "hi"}
    decision = next(e for e in events if e.event_type == "decision_made")
    assert decision.payload["args"] == {"question": "q"}
    assert "conn-string" not in str([e.payload for e in events])


async def test_excluded_args_are_not_compared_in_replay(memory_store) -> None:
    runs: list[str] = []

    @at.record_tool(exclude_args=("request_id",))
    async def lookup(key: str, request_id: str) -> str:
        runs.append(key)
        return key.upper()

    async with at.session("ex-2"):
        assert await lookup("a", request_id="r-1") == "A"
    async with replay("ex-2", mock=("tool",)) as r:
        assert await lookup("a", request_id="r-2") == "A"  # a fresh id: no divergence
    assert runs == ["a"] and r.served == 1
    with pytest.raises(ReplayDivergence):
        async with replay("ex-2", mock=("tool",)):
            await lookup("b", request_id="r-3")  # a real argument still counts


async def test_replay_ignore_keys_at_any_depth(memory_store) -> None:
    @at.record_llm
    async def chat(messages: list[dict[str, str]]) -> str:
        return "hello"

    async with at.session("ig-1"):
        await chat([{"id": "m-1", "role": "user", "content": "hi"}])
    with pytest.raises(ReplayDivergence, match=r"args\.messages\[0\]\.id"):
        async with replay("ig-1", mock=("llm",)):
            await chat([{"id": "m-2", "role": "user", "content": "hi"}])
    async with replay("ig-1", mock=("llm",), ignore=("id",)) as r:
        assert await chat([{"id": "m-3", "role": "user", "content": "hi"}]) == "hello"
    assert r.served == 1
    # Other keys still count, and the report says where.
    with pytest.raises(ReplayDivergence, match=r"args\.messages\[0\]\.content"):
        async with replay("ig-1", mock=("llm",), ignore=("id",)):
            await chat([{"id": "m-4", "role": "user", "content": "bye"}])


def test_bad_option_types_are_clear_errors() -> None:
    with pytest.raises(TypeError, match="exclude_args"):

        @at.record_tool(exclude_args="client")
        def f(client: object) -> None: ...

    with pytest.raises(TypeError, match="ignore"):
        replay("x", ignore="id")
