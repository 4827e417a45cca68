"""Sessions and spans bound to the current context.

The bound session and the innermost recorded call live in ``ContextVar``s,
so asyncio tasks inherit them by copy and concurrent requests never see each
other's session. Threads do not inherit context: ``ContextExecutor`` (or
``copy_context().run``) carries it into a pool. Nothing here is a global.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeVar

from agent_trace.capture import capture
from agent_trace.events import uuid7, validate_event_type, validate_session_id
from agent_trace.recorder import get_recorder

__all__ = ["ContextExecutor", "Session", "current_session", "emit", "session"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Session:
    """A bound session: its id (the event stream) and the metadata it was opened with."""

    id: str
    metadata: dict[str, Any] = field(default_factory=dict)


# The innermost recorded call as (span_id, parent_span_id), or None.
Span = tuple[str, "str | None"]

_session: contextvars.ContextVar[Session | None] = contextvars.ContextVar(
    "agent_trace.session", default=None
)
_span: contextvars.ContextVar[Span | None] = contextvars.ContextVar(
    "agent_trace.span", default=None
)
# The active replay (agent_trace.replay), consulted by every recorded call:
# an object with ``lookup(kind, name, args) -> mock or None`` (None: run live).
_replay: contextvars.ContextVar[Any] = contextvars.ContextVar("agent_trace.replay", default=None)


# Event types already validated: emit() is on the hot path, the regex is not free.
_valid_types: set[str] = set()


def current_session() -> Session | None:
    """The session bound in this context, or None."""
    return _session.get()


def emit(event_type: str, payload: dict[str, Any] | None = None) -> None:
    """Append a custom event to the bound session.

    The payload is captured now (a later mutation does not change the
    record). Raises ``RuntimeError`` when no session is bound.
    """
    sess = _session.get()
    if sess is None:
        raise RuntimeError(
            f"agent_trace.emit({event_type!r}) needs a session: call it inside "
            "`with agent_trace.session(...)` / `async with agent_trace.session(...)`"
        )
    if type(event_type) is not str or event_type not in _valid_types:
        validate_event_type(event_type)
        if len(_valid_types) < 10_000:  # an app has few types; don't grow without bound
            _valid_types.add(event_type)
    if payload is not None and not isinstance(payload, dict):
        raise TypeError(f"emit() payload must be a dict, got {type(payload).__name__}")
    rec = get_recorder()
    span = _span.get()
    span_id, parent = span if span is not None else (None, None)
    payload_json = capture(payload or {}, rec.capture_options)
    if rec.immediate:
        rec.wait_sync(rec.emit(sess.id, event_type, payload_json, span_id, parent))
    else:
        rec.enqueue(sess.id, event_type, payload_json, span_id, parent)


class session:
    """Bind a session for the enclosed code; sync and async context manager.

    ``session_id`` defaults to a new UUIDv7; re-entering an existing id
    appends to that session. Emits ``session_started`` (with ``metadata``) on
    enter and ``session_ended`` (``status`` ok/error/cancelled, ``error``,
    ``duration_ms``) on exit, then flushes unless ``flush_on_session_end`` is off.
    """

    __slots__ = ("_n", "_session", "_start", "_token")

    def __init__(self, session_id: str | None = None, **metadata: Any) -> None:
        sid = uuid7() if session_id is None else validate_session_id(session_id)
        self._session = Session(sid, metadata)
        self._token: contextvars.Token[Session | None] | None = None
        self._start = 0.0

    @property
    def id(self) -> str:
        return self._session.id

    def _enter(self) -> Session:
        if self._token is not None:
            raise RuntimeError("this session() object is already entered; create a new one")
        rec = get_recorder()
        sess = self._session
        self._token = _session.set(sess)
        self._start = time.perf_counter()
        payload = capture({"metadata": sess.metadata}, rec.settings.capture)
        self._n = rec.emit(sess.id, "session_started", payload)
        return sess

    def _exit(self, exc: BaseException | None) -> int:
        rec = get_recorder()
        body: dict[str, Any] = {"duration_ms": (time.perf_counter() - self._start) * 1000}
        if exc is None:
            body["status"] = "ok"
        elif isinstance(exc, (asyncio.CancelledError, KeyboardInterrupt, GeneratorExit)):
            body["status"] = "cancelled"
        else:
            body["status"] = "error"
            body["error_type"] = type(exc).__name__
            body["error"] = _error_text(exc)
        n = rec.emit(self._session.id, "session_ended", capture(body, rec.settings.capture))
        if self._token is not None:
            _session.reset(self._token)
            self._token = None
        return n

    def __enter__(self) -> Session:
        sess = self._enter()
        if get_recorder().settings.durability == "immediate":
            get_recorder().wait_sync(self._n)
        return sess

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        n = self._exit(exc)
        rec = get_recorder()
        if rec.settings.flush_on_session_end or rec.settings.durability == "immediate":
            rec.wait_sync(n, rec.settings.flush_timeout)

    async def __aenter__(self) -> Session:
        sess = self._enter()
        rec = get_recorder()
        if rec.settings.durability == "immediate":
            await rec.wait(self._n)
        return sess

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        n = self._exit(exc)
        rec = get_recorder()
        if rec.settings.flush_on_session_end or rec.settings.durability == "immediate":
            await rec.wait(n, rec.settings.flush_timeout)


def _error_text(exc: BaseException) -> str:
    try:
        text = str(exc)
    except Exception:
        text = "<str() failed>"
    return text[:2000]


class ContextExecutor(concurrent.futures.ThreadPoolExecutor):
    """A thread pool whose tasks run in the submitter's context.

    ``loop.run_in_executor(ContextExecutor(), fn)`` or ``pool.submit(fn)``
    records ``fn``'s calls in the session (and under the span) that was
    bound where it was submitted. ``asyncio.to_thread`` already does this.
    """

    def submit(
        self, fn: Callable[..., T], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[T]:
        ctx = contextvars.copy_context()
        return super().submit(ctx.run, fn, *args, **kwargs)
