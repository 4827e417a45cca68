"""Top-level reading helpers: ``get_events``, ``list_sessions``, ``read_all``.

They read the configured store unless ``store=`` (a store or a URL) is
given. Reading the configured store first flushes what this process has
emitted, so a script sees its own events. Read-only: never appends.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

from agent_trace.events import AgentEvent
from agent_trace.recorder import get_recorder

if TYPE_CHECKING:
    from agent_trace.stores.base import EventStore, SessionInfo

__all__ = [
    "get_events",
    "get_events_sync",
    "list_sessions",
    "list_sessions_sync",
    "read_all",
    "read_all_sync",
]

T = TypeVar("T")


async def _with_store(store: Any, fn: Callable[[EventStore], Awaitable[T]]) -> T:
    if store is None:
        rec = get_recorder()
        await rec.flush(rec.settings.flush_timeout)
        return await fn(rec.store())
    if isinstance(store, str):
        from agent_trace.stores import open_store

        opened = open_store(store)
        try:
            return await fn(opened)
        finally:
            await opened.close()
    return await fn(store)


async def get_events(
    session_id: str,
    *,
    after_version: int = 0,
    event_types: Iterable[str] | None = None,
    store: EventStore | str | None = None,
) -> list[AgentEvent]:
    """A session's events in version order."""
    types = list(event_types) if event_types is not None else None
    return await _with_store(store, lambda s: s.get_events(session_id, after_version, types))


async def list_sessions(
    *, limit: int | None = None, store: EventStore | str | None = None
) -> list[SessionInfo]:
    """Sessions in the store, most recently started first."""
    return await _with_store(store, lambda s: s.list_sessions(limit))


async def read_all(
    *,
    after_position: int = 0,
    limit: int | None = None,
    store: EventStore | str | None = None,
) -> list[AgentEvent]:
    """Events of every session in global (position) order."""
    return await _with_store(store, lambda s: s.read_all(after_position, limit))


def _run(coro: Awaitable[T]) -> T:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)  # type: ignore[arg-type]
    coro.close()  # type: ignore[attr-defined]
    raise RuntimeError(
        "agent_trace *_sync readers cannot run inside a running event loop; "
        "use the async form (await agent_trace.get_events(...))"
    )


def get_events_sync(
    session_id: str,
    *,
    after_version: int = 0,
    event_types: Iterable[str] | None = None,
    store: EventStore | str | None = None,
) -> list[AgentEvent]:
    """Blocking :func:`get_events`, for scripts and notebooks without a running loop."""
    return _run(
        get_events(session_id, after_version=after_version, event_types=event_types, store=store)
    )


def list_sessions_sync(
    *, limit: int | None = None, store: EventStore | str | None = None
) -> list[SessionInfo]:
    """Blocking :func:`list_sessions`."""
    return _run(list_sessions(limit=limit, store=store))


def read_all_sync(
    *,
    after_position: int = 0,
    limit: int | None = None,
    store: EventStore | str | None = None,
) -> list[AgentEvent]:
    """Blocking :func:`read_all`."""
    return _run(read_all(after_position=after_position, limit=limit, store=store))
