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
