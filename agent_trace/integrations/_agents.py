"""What the agent-framework integrations share: agent runs and their events.

An agent run is a span of its own: ``agent_started`` opens it and
``agent_finished`` (``agent``, ``status``, ``duration_ms``) closes it, and the
LLM and tool calls made during the run are its children. ``agent_handoff``
and ``guardrail_checked`` belong to the run's span too, never to a tool,
LLM or decision call (whose event sequences stay exactly as section 2 of
the spec lists them).

``run_call``/``run_call_sync``: one recorded LLM or tool call around the
framework's own call, or the recording served in its place under replay.

Nothing here raises into agent code: a failure to record is swallowed.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from agent_trace.capture import capture
from agent_trace.context import Span, _session, _span
from agent_trace.events import new_span_id
from agent_trace.recorder import get_recorder

if TYPE_CHECKING:
    from agent_trace.decorators import _Call

__all__ = [
    "AgentRun",
    "Instrumentation",
    "emit_event",
    "missing_extra",
    "restore",
    "run_call",
    "run_call_sync",
]

_log = logging.getLogger("agent_trace")
_perf = time.perf_counter


def missing_extra(framework: str, extra: str, exc: ImportError) -> ImportError:
    """The ImportError an ``instrument_*`` function raises without its framework."""
    return ImportError(
        f"agent_trace.instrument_{extra.replace('-', '_')}() needs {framework}: "
        f"pip install 'agent-trace[{extra}]' ({exc})"
    )


def emit_event(span: Span | None, event_type: str, payload: dict[str, Any]) -> None:
    """Append one event in ``span`` (``(span_id, parent)``) to the bound session, if any."""
    sess = _session.get()
    if sess is None:
        return
    try:
        rec = get_recorder()
        span_id, parent = span if span is not None else (None, None)
        n = rec.emit(sess.id, event_type, capture(payload, rec.capture_options), span_id, parent)
        if rec.immediate:
            rec.wait_sync(n)
    except Exception:  # recording never raises into agent code
        _log.exception("agent_trace: could not record %s", event_type)


class AgentRun:
    """One agent run: ``agent_started`` now, ``agent_finished`` at ``finish()``.

    ``enter()`` makes the run the current span, so calls recorded during the
    run are its children; ``exit()`` restores the previous span. None of it
    records anything outside a session.
    """

    __slots__ = ("active", "agent", "span", "t0", "token")

    def __init__(self, agent: str, fields: dict[str, Any] | None = None) -> None:
        self.agent = agent
        self.active = _session.get() is not None
        outer = _span.get()
        self.span: Span = (new_span_id(), outer[0] if outer is not None else None)
        self.token: contextvars.Token[Span | None] | None = None
        self.t0 = _perf()
        if self.active:
            emit_event(self.span, "agent_started", {"agent": agent, **(fields or {})})

    def enter(self) -> None:
        if self.active:
            self.token = _span.set(self.span)

    def exit(self) -> None:
        token, self.token = self.token, None
        if token is None:
            return
        # ValueError: ended from another context than it began in.
        with contextlib.suppress(ValueError):
            _span.reset(token)

    def emit(self, event_type: str, payload: dict[str, Any]) -> None:
        """An event of this run (a handoff, a guardrail), in the run's span."""
        if self.active:
            emit_event(self.span, event_type, payload)

    def finish(self, error: BaseException | None = None, **fields: Any) -> None:
        """Emit ``agent_finished``: ``ok``, ``error`` (with the error) or ``cancelled``."""
        self.exit()
        if not self.active:
            return
        self.active = False
        body: dict[str, Any] = {"agent": self.agent}
        if error is None:
            body["status"] = "ok"
        elif isinstance(error, Exception):
            body["status"] = "error"
            body["error_type"] = type(error).__name__
            body["error"] = _text(error)
        else:
            body["status"] = "cancelled"
        body.update(fields)
        body["duration_ms"] = (_perf() - self.t0) * 1000
        emit_event(self.span, "agent_finished", body)


def _text(exc: BaseException) -> str:
    try:
        return str(exc)[:2000]
    except Exception:
        return "<str() failed>"


class Instrumentation:
    """What ``instrument_*`` returns: ``uninstrument()`` undoes it.

    Instrumenting twice records once: each integration keeps one installed
    hook and counts the handles that want it; the hook goes when the last
    handle is uninstrumented.
    """

    _lock = threading.Lock()

    def __init__(self, name: str, remove: Callable[[], None]) -> None:
        self.name = name
        self._remove: Callable[[], None] | None = remove

    @property
    def active(self) -> bool:
        return self._remove is not None

    def uninstrument(self) -> None:
        """Stop recording through this handle (idempotent)."""
        with self._lock:
            remove, self._remove = self._remove, None
        if remove is not None:
            remove()

    def __enter__(self) -> Instrumentation:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.uninstrument()

    def __repr__(self) -> str:
        state = "active" if self.active else "uninstrumented"
        return f"<agent_trace {self.name} instrumentation ({state})>"


# --- one recorded call around the framework's own call ----------------------------------

Outcome = Callable[[Any], tuple[Any, "dict[str, Any] | None"]]


def _outcome(outcome: Outcome | None, result: Any) -> tuple[Any, dict[str, Any] | None]:
    """What the success event records of ``result``: (value, extra fields)."""
    if outcome is None:
        return result, None
    try:
        return outcome(result)
    except Exception:  # recording never raises into agent code
        return repr(result), None


async def run_call(
    call: _Call,
    run: Callable[[], Awaitable[Any]],
    serve: Callable[[_Call], Any],
    outcome: Outcome | None = None,
) -> Any:
    """The call's events around ``await run()``, or ``serve(call)`` under replay.

    The call's span is current while it runs; the result or the exception is
    the framework's own, passed on unchanged.
    """
    await call.await_durable(call.start())
    token = _span.set(call.span)
    try:
        result = serve(call) if call.mock is not None else await run()
    except BaseException as exc:
        _span.reset(token)
        n = call.fail(exc)
        if isinstance(exc, Exception):  # cancelled: not awaited again inside the cancellation
            await call.await_durable(n)
        raise
    _span.reset(token)
    value, extra = _outcome(outcome, result)
    await call.await_durable(call.succeed(value, extra))
    return result


def run_call_sync(
    call: _Call,
    run: Callable[[], Any],
    serve: Callable[[_Call], Any],
    outcome: Outcome | None = None,
) -> Any:
    """:func:`run_call` for a synchronous framework call."""
    call.wait(call.start())
    token = _span.set(call.span)
    try:
        result = serve(call) if call.mock is not None else run()
    except BaseException as exc:
        _span.reset(token)
        call.wait(call.fail(exc))
        raise
    _span.reset(token)
    value, extra = _outcome(outcome, result)
    call.wait(call.succeed(value, extra))
    return result


def restore(owner: type, name: str, hook: Any) -> None:
    """Put back what ``hook`` (a ``wrapt`` wrapper we installed on ``owner``) wraps.

    Left in place, and inert, when someone wrapped the attribute again after us:
    taking ours out would take theirs out too.
    """
    original = hook.__wrapped__
    if owner.__dict__.get(name) is hook:
        setattr(owner, name, original)
