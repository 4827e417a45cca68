"""agent_trace: event sourcing for AI agents.

Decorate the agent's functions, bind a session per request, and every
decision, tool call and LLM call becomes an immutable, ordered, verifiable
event in a store::

    import agent_trace as at

    @at.record_tool
    async def search(query: str) -> list[str]: ...

    async with at.session("conv-42", user_id="u1"):
        await search("event sourcing")

    events = await at.get_events("conv-42")

Importing this package imports only wrapt, orjson and aiosqlite.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agent_trace._version import __version__
from agent_trace.capture import CaptureOptions
from agent_trace.config import Settings, configure
from agent_trace.context import ContextExecutor, Session, current_session, emit, session
from agent_trace.decorators import extract_usage, record_decision, record_llm, record_tool
from agent_trace.events import AgentEvent, uuid7
from agent_trace.integrity import (
    SessionHead,
    VerificationResult,
    session_head,
    verify_session,
    verify_store,
)
from agent_trace.reading import (
    get_events,
    get_events_sync,
    list_sessions,
    list_sessions_sync,
    read_all,
    read_all_sync,
)
from agent_trace.recorder import flush, flush_sync, stats
from agent_trace.spill import ingest, ingest_sync
from agent_trace.stores import open_store
from agent_trace.upcasting import register_upcaster

if TYPE_CHECKING:
    from agent_trace.integrations._agents import Instrumentation as FrameworkInstrumentation
    from agent_trace.integrations._sdk import Instrumentation


def instrument_openai(client: Any = None) -> Instrumentation:
    """Record every OpenAI SDK client's LLM calls (or ``client``'s only); extra ``openai``."""
    from agent_trace.integrations.openai import instrument_openai as instrument

    return instrument(client)


def instrument_anthropic(client: Any = None) -> Instrumentation:
    """Record every Anthropic SDK client's LLM calls (or ``client``'s only); extra ``anthropic``."""
    from agent_trace.integrations.anthropic import instrument_anthropic as instrument

    return instrument(client)


__all__ = [
    "AgentEvent",
    "CaptureOptions",
    "ContextExecutor",
    "Session",
    "SessionHead",
    "Settings",
    "VerificationResult",
    "__version__",
    "configure",
    "current_session",
    "emit",
    "extract_usage",
    "flush",
    "flush_sync",
    "get_events",
    "get_events_sync",
    "ingest",
    "instrument_langchain",
    "instrument_openai_agents",
    "instrument_pydantic_ai",
    "ingest_sync",
    "instrument_anthropic",
    "instrument_openai",
    "list_sessions",
    "list_sessions_sync",
    "open_store",
    "read_all",
    "read_all_sync",
    "record_decision",
    "record_llm",
    "record_tool",
    "register_upcaster",
    "session",
    "session_head",
    "stats",
    "uuid7",
    "verify_session",
    "verify_store",
]


# --- agent frameworks: each integration is imported only when asked for ---------------


def instrument_pydantic_ai(agent: Any = None) -> FrameworkInstrumentation:
    """Record every pydantic-ai ``Agent`` run (or ``agent``'s): model requests, tools, runs.

    Returns a handle with ``.uninstrument()``. Needs the ``pydantic-ai`` extra.
    """
    from agent_trace.integrations._agents import missing_extra

    try:
        from agent_trace.integrations import pydantic_ai
    except ImportError as exc:
        raise missing_extra("pydantic-ai", "pydantic-ai", exc) from exc
    return pydantic_ai.instrument(agent)


def instrument_langchain() -> FrameworkInstrumentation:
    """Record LangChain/LangGraph chat model calls, tool calls and graph runs.

    Returns a handle with ``.uninstrument()``. Needs the ``langchain`` extra.
    """
    from agent_trace.integrations._agents import missing_extra

    try:
        from agent_trace.integrations import langchain
    except ImportError as exc:
        raise missing_extra("langchain-core and langgraph", "langchain", exc) from exc
    return langchain.instrument()


def instrument_openai_agents() -> FrameworkInstrumentation:
    """Record OpenAI Agents SDK runs: agents, handoffs, guardrails, tools, model calls.

    Returns a handle with ``.uninstrument()``. Needs the ``openai-agents`` extra.
    """
    from agent_trace.integrations._agents import missing_extra

    try:
        from agent_trace.integrations import openai_agents
    except ImportError as exc:
        raise missing_extra("the OpenAI Agents SDK", "openai-agents", exc) from exc
    return openai_agents.instrument()
