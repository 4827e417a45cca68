"""Replay: step through a recorded session, re-run it deterministically, diff two runs.

- ``replay_session`` / ``iter_steps``: the recorded session step by step,
  indented by span depth (read-only).
- ``replay(session_id, mock=...)``: re-run the agent's own code in a NEW
  session (metadata ``replay_of``). Recorded calls of the mocked kinds do not
  run: the wrapping core asks the active replay (``context._replay``) for the
  recorded outcome, matched by kind, name and call order (and by args, so
  concurrent calls find their own recording). A call the recording does not
  have, or whose args differ, is a divergence: ``ReplayDivergence`` when
  ``strict``, else the real function runs and a ``replay_diverged`` event is
  recorded. ``until_version`` forks: recordings up to that version are
  served, the agent runs live after.
- ``diff_sessions(a, b)``: the first divergent decision point of two runs.
- ``replay_many``: replay many sessions, one result each (regression tests).

Matching: per kind and name, the next recorded call in order; a call
recorded concurrently with it (started before it ended, e.g. under
``asyncio.gather``) may be taken instead when its args match. Args compare
as captured JSON; a recorded ``[REDACTED]`` matches anything, the values of
keys given in ``ignore=`` (or by an integration for its volatile ids) match
anything, and strings holding JSON compare by value.

Served values are the recorded JSON, not the original objects: a mapping
comes back as a ``RecordedDict`` (a ``dict`` that also allows attribute
access, so ``response.choices[0].message.content`` keeps working), with its
keys in sorted order (the store keeps payloads canonical); a result recorded
with ``capture_result=False`` comes back as None. Pass ``decode=`` to rebuild
richer objects. A recorded failure re-raises the recorded builtin exception
type (``TimeoutError``, ``ValueError`` ...) with the recorded message; any
other type raises a ``ReplayedError`` subclass of the same name carrying
``error_type`` and ``message``. A streamed (generator) call yields the
recorded chunks: string chunks are cut back from the joined text with the
recorded ``chunk_lengths``.

A replay never modifies the recorded session; it only reads it.
"""

from __future__ import annotations

import ast
import asyncio
import builtins
import concurrent.futures
import contextlib
import contextvars
import inspect
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, TextIO, TypeVar

import orjson

from agent_trace.capture import REDACTED, capture
from agent_trace.context import _replay, emit, session
from agent_trace.events import AgentEvent, uuid7
from agent_trace.reading import get_events
from agent_trace.recorder import get_recorder

if TYPE_CHECKING:
    from agent_trace.stores.base import EventStore

__all__ = [
    "CallDivergence",
    "DecisionPoint",
    "RecordedCall",
    "RecordedDict",
    "RecordedSession",
    "Recording",
    "ReplayBatch",
    "ReplayDivergence",
    "ReplayResult",
    "ReplayedError",
    "SessionDiff",
    "Step",
    "Steps",
    "decision_points",
    "describe",
    "diff_sessions",
    "diff_sessions_sync",
    "iter_steps",
    "load_recording",
    "recorded_exception",
    "replay",
    "replay_many",
    "replay_session",
]

T = TypeVar("T")

KINDS = ("tool", "llm", "decision")
# event type -> (kind, payload key holding the call's name, role in the call)
_CALL_EVENTS: dict[str, tuple[str, str, str]] = {
    "tool_started": ("tool", "tool", "start"),
    "tool_executed": ("tool", "tool", "ok"),
    "tool_failed": ("tool", "tool", "error"),
    "llm_started": ("llm", "name", "start"),
    "llm_responded": ("llm", "name", "ok"),
    "llm_failed": ("llm", "name", "error"),
    "decision_made": ("decision", "decision", "ok"),
    "decision_failed": ("decision", "decision", "error"),
}
_RESULT_KEY = {"tool": "result", "llm": "response", "decision": "choice"}
_WIDTH = 200  # characters of a value shown per line by replay_session


# --- the recorded session ------------------------------------------------------


@dataclass(slots=True)
class RecordedCall:
    """One recorded tool / LLM / decision call, rebuilt from its events."""

    kind: str
    name: str
    span_id: str
    parent_span_id: str | None
    version: int  # the first version inside the call: the call order
    args: Any = None  # the captured args (None when not captured)
    end_version: int | None = None  # None: the recording has no outcome
    outcome: dict[str, Any] | None = None  # payload of the final event
    failed: bool = False

    @property
    def finished(self) -> bool:
        return self.outcome is not None

    @property
    def result(self) -> Any:
        """The recorded return value (tool result, LLM response, decision choice)."""
        return None if self.outcome is None else self.outcome.get(_RESULT_KEY[self.kind])

    @property
    def error_type(self) -> str | None:
        return self.outcome.get("error_type") if self.failed and self.outcome else None

    @property
    def error(self) -> str | None:
        return self.outcome.get("error") if self.failed and self.outcome else None


@dataclass(slots=True)
class Recording:
    """A recorded session loaded for replay: its events and the calls they describe.

    Also known as ``RecordedSession``: what ``agent-trace test`` and the pytest
    plugin hand the agent (``user_message``, ``metadata``, ``events``).
    """

    session_id: str
    events: list[AgentEvent]
    calls: list[RecordedCall] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.calls:
            self.calls = _calls_of(self.events)

    @property
    def metadata(self) -> dict[str, Any]:
        """The metadata of the (first) ``session_started`` event."""
        for ev in self.events:
            if ev.event_type == "session_started":
                return dict(ev.payload.get("metadata") or {})
        return {}

    @property
    def user_message(self) -> Any:
        """The first ``user_message_received`` message (the agent's input), or None."""
        for ev in self.events:
            if ev.event_type == "user_message_received":
                return ev.payload.get("message")
        return None

    @property
    def final_response(self) -> Any:
        """The last ``response_generated`` response, or None."""
        for ev in reversed(self.events):
            if ev.event_type == "response_generated":
                return ev.payload.get("response")
        return None


#: The name ``agent-trace test`` and the pytest plugin use for a recording.
RecordedSession = Recording


def _calls_of(events: Iterable[AgentEvent]) -> list[RecordedCall]:
    calls: dict[str, RecordedCall] = {}
    # The first version seen inside each span: where a call without a started
    # event (a decision, recorded when it returns) began.
    began: dict[str, int] = {}
    for ev in events:
        if ev.span_id is not None:
            began.setdefault(ev.span_id, ev.version)
        if ev.parent_span_id is not None:
            began.setdefault(ev.parent_span_id, ev.version)
        spec = _CALL_EVENTS.get(ev.event_type)
        if spec is None or ev.span_id is None:
            continue
        kind, name_key, role = spec
        call = calls.get(ev.span_id)
        if call is None:
            name = ev.payload.get(name_key)
            first = began.get(ev.span_id, ev.version)
            call = calls[ev.span_id] = RecordedCall(
                kind, str(name), ev.span_id, ev.parent_span_id, first
            )
        if role == "start":
            call.args = ev.payload.get("args")
            continue
        if kind == "decision":  # one fact: its args come with the outcome
            call.args = ev.payload.get("args")
        call.end_version = ev.version
        call.outcome = ev.payload
        call.failed = role == "error"
    # A decision begins where its first inner call does: the outer call goes first.
    unfinished = float("inf")
    return sorted(calls.values(), key=lambda c: (c.version, -(c.end_version or unfinished)))


async def load_recording(session_id: str, *, store: EventStore | str | None = None) -> Recording:
    """Read a session for replay; ``ValueError`` when the store has no such session."""
    events = await get_events(session_id, store=store)
    if not events:
        raise ValueError(f"no recorded session {session_id!r} in the store")
    return Recording(session_id, events)


# --- stepping through a session --------------------------------------------------


@dataclass(frozen=True, slots=True)
class Step:
    """One event of a session, with its nesting depth (0: not inside any recorded call)."""

    index: int
    event: AgentEvent
    depth: int

    @property
    def event_type(self) -> str:
        return self.event.event_type

    @property
    def version(self) -> int:
        return self.event.version

    @property
    def span_id(self) -> str | None:
        return self.event.span_id

    @property
    def kind(self) -> str | None:
        """``tool`` / ``llm`` / ``decision`` for a recorded call's own events, else None."""
        spec = _CALL_EVENTS.get(self.event.event_type)
        return spec[0] if spec else None

    @property
    def name(self) -> str | None:
        spec = _CALL_EVENTS.get(self.event.event_type)
        return None if spec is None else self.event.payload.get(spec[1])

    def lines(self) -> list[str]:
        """``[timestamp] event_type`` then the details worth reading, indented by depth."""
        pad = "  " * self.depth
        ev, p = self.event, self.event.payload
        out = [f"{pad}[{ev.timestamp}] {ev.event_type}"]
        detail = pad + "    "

        def line(label: str, value: Any) -> None:
            out.append(f"{detail}{label}: {_short(value)}")

        spec = _CALL_EVENTS.get(ev.event_type)
        if spec is not None:
            kind, name_key, role = spec
            line(
                kind, p.get(name_key) if not p.get("model") else f"{p.get(name_key)} ({p['model']})"
            )
            if role == "start" or (kind == "decision" and p.get("args")):
                line("args", p.get("args"))
            if kind == "decision" and role == "ok":
                if p.get("reasoning") is not None:
                    line("reasoning", p.get("reasoning"))
                line("choice", p.get("choice"))
            elif role == "ok":
                line("result" if kind == "tool" else "response", p.get(_RESULT_KEY[kind]))
            if role == "error":
                line("error", f"{p.get('error_type')}: {p.get('error')}")
        elif ev.event_type == "session_started":
            if p.get("metadata"):
                line("metadata", p.get("metadata"))
        elif ev.event_type == "session_ended":
            line("status", p.get("status"))
            if p.get("error_type") is not None:
                line("error", f"{p.get('error_type')}: {p.get('error')}")
        elif p:
            for key in ("message", "response", "reasoning", "error"):
                if key in p:
                    line(key, p[key])
            if not any(k in p for k in ("message", "response", "reasoning", "error")):
                line("payload", p)
        return out

    def render(self) -> str:
        return "\n".join(self.lines())

    @property
    def summary(self) -> str:
        """The event in one line (see :func:`describe`)."""
        return describe(self.event)


def _steps_of(events: list[AgentEvent]) -> list[Step]:
    # A call's events can come before its parent's (a decision is recorded when
    # it returns), so depths come from the whole span -> parent map.
    parent_of = {ev.span_id: ev.parent_span_id for ev in events if ev.span_id}
    depths: dict[str, int] = {}

    def depth_of(span: str) -> int:
        chain: list[str] = []
        s: str | None = span
        while s is not None and s not in depths and len(chain) < 10_000:  # bound: bad data
            chain.append(s)
            s = parent_of.get(s)
        d = depths.get(s, -1) if s is not None else -1
        for c in reversed(chain):
            d += 1
            depths[c] = d
        return depths.get(span, 0)

    steps = []
    for i, ev in enumerate(events):
        if ev.span_id is None:
            depth = 0
        elif ev.event_type in _CALL_EVENTS:
            depth = depth_of(ev.span_id)
        else:  # emitted inside a call: one level deeper than that call
            depth = depth_of(ev.span_id) + 1
        steps.append(Step(i, ev, depth))
    return steps


class Steps:
    """A session's steps: iterate with ``for`` (blocking) or ``async for``."""

    def __init__(
        self, session: str | Iterable[AgentEvent], store: EventStore | str | None = None
    ) -> None:
        self._session = session
        self._store = store

    async def _load(self) -> list[Step]:
        if isinstance(self._session, str):
            return _steps_of(await get_events(self._session, store=self._store))
        return _steps_of(list(self._session))

    def __iter__(self) -> Iterator[Step]:
        if not isinstance(self._session, str):
            return iter(_steps_of(list(self._session)))
        return iter(_run_sync(self._load))

    async def __aiter__(self) -> AsyncIterator[Step]:
        for step in await self._load():
            yield step


def iter_steps(
    session: str | Iterable[AgentEvent], *, store: EventStore | str | None = None
) -> Steps:
    """The steps (event, depth, span) of a session id or of a list of events."""
    return Steps(session, store)


def replay_session(
    session: str | Iterable[AgentEvent],
    *,
    store: EventStore | str | None = None,
    file: TextIO | None = None,
) -> int:
    """Print a session step by step, indented by span depth; returns the number of steps."""
    out = file if file is not None else sys.stdout
    n = 0
    for step in iter_steps(session, store=store):
        print(step.render(), file=out)
        n += 1
    return n


# --- serving recorded outcomes ------------------------------------------------------


class RecordedDict(dict):  # type: ignore[type-arg]
    """A recorded JSON object: a ``dict`` whose keys are also readable as attributes.

    Keys that shadow ``dict`` methods (``items``, ``keys`` ...) need ``[...]``.
    """

    __slots__ = ()

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None


def _attr_access(value: Any) -> Any:
    if isinstance(value, dict):
        return RecordedDict((k, _attr_access(v)) for k, v in value.items())
    if isinstance(value, list):
        return [_attr_access(v) for v in value]
    return value


class ReplayedError(Exception):
    """A recorded failure whose exception type is not a builtin.

    Raised as a subclass named after the recorded type (``type(e).__name__``
    is the recorded ``error_type``), so the replay records the same failure.
    """

    error_type: str = "ReplayedError"

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self.message = message


_replayed_types: dict[str, type[ReplayedError]] = {}
_NOT_REPLAYED = frozenset({"KeyboardInterrupt", "SystemExit", "GeneratorExit"})


def recorded_exception(error_type: str | None, message: str | None) -> BaseException:
    """The exception a recorded failure replays as (see the module docstring)."""
    name, text = error_type or "Exception", message or ""
    exc_type = getattr(builtins, name, None)
    if (
        isinstance(exc_type, type)
        and issubclass(exc_type, BaseException)
        and name not in _NOT_REPLAYED
    ):
        if issubclass(exc_type, KeyError):
            # str(KeyError(k)) is repr(k): recorded "'id'" replays as KeyError('id').
            with contextlib.suppress(ValueError, SyntaxError, MemoryError, RecursionError):
                return exc_type(ast.literal_eval(text))
        try:
            return exc_type(text)
        except Exception:  # e.g. UnicodeDecodeError wants five arguments
            pass
    if name == "CancelledError":
        return asyncio.CancelledError(text)
    cls = _replayed_types.get(name)
    if cls is None:
        cls = type(name, (ReplayedError,), {"error_type": name, "__module__": __name__})
        _replayed_types[name] = cls
    return cls(text)


class _Served:
    """A recorded call standing in for the function body (the wrapping core's mock)."""

    __slots__ = ("call", "decode")

    def __init__(self, call: RecordedCall, decode: Callable[[RecordedCall, Any], Any]) -> None:
        self.call = call
        self.decode = decode

    def play(self) -> Any:
        """The recorded result, or the recorded failure raised."""
        call = self.call
        if call.failed:
            raise recorded_exception(call.error_type, call.error)
        return self.decode(call, call.result)

    def chunks(self) -> Iterator[Any]:
        """The recorded items of a generator / stream, in order; then its failure, if any."""
        call = self.call
        if call.failed:
            raise recorded_exception(call.error_type, call.error)
        for chunk in _split_chunks(call.outcome or {}, call.result):
            yield self.decode(call, chunk)


def _split_chunks(outcome: dict[str, Any], joined: Any) -> list[Any]:
    if isinstance(joined, list):
        return joined
    if not isinstance(joined, str):
        return [] if joined is None else [joined]
    lengths = outcome.get("chunk_lengths")
    if isinstance(lengths, list) and sum(lengths) == len(joined):
        out, i = [], 0
        for n in lengths:
            out.append(joined[i : i + n])
            i += n
        return out
    # Recorded without chunk boundaries (or truncated): keep the count and the text.
    count = outcome.get("chunks")
    if not isinstance(count, int) or count <= 1 or not joined:
        return [joined] if joined else []
    words = joined.split(" ")
    if len(words) == count:  # the common word-by-word stream
        return [w if i == 0 else " " + w for i, w in enumerate(words)]
    size, extra = divmod(len(joined), count)
    out, i = [], 0
    for k in range(count):
        n = size + (1 if k < extra else 0)
        out.append(joined[i : i + n])
        i += n
    return out


def _same(expected: Any, actual: Any, ignore: frozenset[str] = frozenset()) -> bool:
    """Captured args equal; a recorded ``[REDACTED]`` matches anything, and so
    does the value of a key in ``ignore`` (at any depth).

    Strings holding JSON compare by value: the store keeps object keys sorted,
    so an agent that ``json.dumps`` a replayed result gets another key order.
    """
    if expected in (actual, REDACTED):
        return True
    if isinstance(expected, dict) and isinstance(actual, dict):
        return expected.keys() == actual.keys() and all(
            k in ignore or _same(v, actual[k], ignore) for k, v in expected.items()
        )
    if isinstance(expected, list) and isinstance(actual, list):
        return len(expected) == len(actual) and all(
            _same(e, a, ignore) for e, a in zip(expected, actual, strict=True)
        )
    if isinstance(expected, str) and isinstance(actual, str):
        e, a = _json_in(expected), _json_in(actual)
        return e is not _NO_JSON and a is not _NO_JSON and _same(e, a, ignore)
    return False


_NO_JSON = object()


def _json_in(text: str) -> Any:
    if len(text) < 2 or text[0] not in "[{" or text[-1] not in "]}":
        return _NO_JSON
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return _NO_JSON


_ABSENT = object()  # a key one side of a difference does not have


def _first_difference(
    expected: Any, actual: Any, path: str = "args", ignore: frozenset[str] = frozenset()
) -> tuple[str, Any, Any]:
    """Where two captured values first differ (e.g. ``args.messages[2].content``) and the
    values found there; a missing key's side is ``_ABSENT``. Keys in ``ignore`` never differ."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        for k in expected.keys() | actual.keys():
            if k not in actual:
                return f"{path}.{k}", expected[k], _ABSENT
            if k not in expected:
                return f"{path}.{k}", _ABSENT, actual[k]
        for k, v in expected.items():
            if k not in ignore and not _same(v, actual[k], ignore):
                return _first_difference(v, actual[k], f"{path}.{k}", ignore)
    if isinstance(expected, list) and isinstance(actual, list):
        for i, (e, a) in enumerate(zip(expected, actual, strict=False)):
            if not _same(e, a, ignore):
                return _first_difference(e, a, f"{path}[{i}]", ignore)
    return path, expected, actual


def _difference(
    expected: Any, actual: Any, path: str = "args", ignore: frozenset[str] = frozenset()
) -> str:
    """Where two arg values first differ, in words."""
    where, e, a = _first_difference(expected, actual, path, ignore)
    if a is _ABSENT:
        return f"{where}: missing (expected {_short(e, 80)})"
    if e is _ABSENT:
        return f"{where}: unexpected {_short(a, 80)}"
    if isinstance(e, list) and isinstance(a, list) and len(e) != len(a):
        return f"{where}: {len(e)} items expected, got {len(a)}"
    return f"{where}: expected {_short(e, 80)}, got {_short(a, 80)}"


@dataclass(frozen=True, slots=True)
class CallDivergence:
    """A recorded call the replay did not reproduce.

    ``reason``: ``args_differ`` (same kind and name, other args),
    ``unexpected_call`` (the recording has no such call left) or
    ``not_called`` (the recording has a call the replay never made).
    ``step`` is the recorded version of the expected call (None if none).
    """

    replay_of: str
    reason: str
    kind: str
    name: str
    step: int | None
    expected: Any
    actual: Any
    ignore: frozenset[str] = frozenset()  # keys whose values did not count

    def describe(self) -> str:
        where = f"step {self.step}" if self.step is not None else "the end of the recording"
        head = f"replay of {self.replay_of!r} diverged at {where} ({self.kind} {self.name!r})"
        if self.reason == "args_differ":
            return (
                f"{head}: args differ at "
                f"{_difference(self.expected, self.actual, ignore=self.ignore)}\n"
                f"  expected: {_short(self.expected)}\n  actual:   {_short(self.actual)}"
            )
        if self.reason == "unexpected_call":
            return (
                f"{head}: the recording has no further {self.kind} call {self.name!r}\n"
                f"  actual:   {_short(self.actual)}"
            )
        return f"{head}: the recorded call was never made\n  expected: {_short(self.expected)}"

    def payload(self) -> dict[str, Any]:
        return {
            "replay_of": self.replay_of,
            "reason": self.reason,
            "kind": self.kind,
            "name": self.name,
            "step": self.step,
            "expected": self.expected,
            "actual": self.actual,
        }


class ReplayDivergence(Exception):
    """The replayed run stopped matching its recording (see ``CallDivergence``)."""

    def __init__(self, divergence: CallDivergence) -> None:
        super().__init__(divergence.describe())
        self.divergence = divergence

    @property
    def step(self) -> int | None:
        return self.divergence.step

    @property
    def expected(self) -> Any:
        return self.divergence.expected

    @property
    def actual(self) -> Any:
        return self.divergence.actual


class _Replayer:
    """What ``context._replay`` holds during a replay: the wrapping core's ``lookup``."""

    def __init__(
        self,
        recording: Recording,
        mock: frozenset[str],
        strict: bool,
        until_version: int | None,
        decode: Callable[[RecordedCall, Any], Any],
        ignore: frozenset[str] = frozenset(),
    ) -> None:
        self.recording = recording
        self.ignore = ignore
        self.mock = mock
        self.strict = strict
        self.fork = until_version is not None
        self.decode = decode
        self.lock = threading.Lock()
        self.divergences: list[CallDivergence] = []
        self.served = 0
        self.queues: dict[tuple[str, str], list[RecordedCall]] = {}
        by_span = {c.span_id: c for c in recording.calls}
        serves: dict[str, bool] = {}

        def is_served(call: RecordedCall) -> bool:
            if call.span_id in serves:
                return serves[call.span_id]
            ok = call.kind in mock and (
                until_version is None
                or (call.end_version is not None and call.end_version <= until_version)
            )
            # A call inside a served call never runs: its body is not executed.
            parent = by_span.get(call.parent_span_id) if call.parent_span_id else None
            while ok and parent is not None:
                if is_served(parent):
                    ok = False
                parent = by_span.get(parent.parent_span_id) if parent.parent_span_id else None
            serves[call.span_id] = ok
            return ok

        for call in recording.calls:
            if is_served(call):
                self.queues.setdefault((call.kind, call.name), []).append(call)

    def lookup(
        self, kind: str, name: str, args: dict[str, Any], ignore: frozenset[str] = frozenset()
    ) -> _Served | None:
        """The recorded outcome for this call, or None to run it live.

        ``ignore``: keys whose values do not count for this call (an
        integration's volatile ids), on top of the replay's own ``ignore``.
        """
        if kind not in self.mock:
            return None
        ignore = self.ignore | ignore if ignore else self.ignore
        actual = orjson.loads(capture(args, get_recorder().capture_options))
        with self.lock:
            queue = self.queues.get((kind, name))
            if queue:
                # The next recorded call, or one recorded concurrently with it
                # (started before it ended): gathered calls may start in another order.
                head_end = queue[0].end_version
                for i, call in enumerate(queue):
                    if i and head_end is not None and call.version > head_end:
                        break
                    if call.args is None or _same(call.args, actual, ignore):
                        del queue[i]
                        if not call.finished:  # the recording stops inside this call
                            return None
                        self.served += 1
                        return _Served(call, self.decode)
                expected = queue[0]
                divergence = CallDivergence(
                    self.recording.session_id,
                    "args_differ",
                    kind,
                    name,
                    expected.version,
                    expected.args,
                    actual,
                    ignore,
                )
            elif self.fork:  # past the fork point: live
                return None
            else:
                divergence = CallDivergence(
                    self.recording.session_id, "unexpected_call", kind, name, None, None, actual
                )
        self.diverge(divergence)
        return None

    def diverge(self, divergence: CallDivergence) -> None:
        with self.lock:
            self.divergences.append(divergence)
        if self.strict:
            raise ReplayDivergence(divergence)
        emit("replay_diverged", divergence.payload())

    def unused(self) -> list[RecordedCall]:
        with self.lock:
            left = [c for q in self.queues.values() for c in q]
        return sorted(left, key=lambda c: c.version)


def _decoder(
    decode: Callable[[RecordedCall, Any], Any] | None,
) -> Callable[[RecordedCall, Any], Any]:
    if decode is None:
        return lambda call, value: _attr_access(value)
    return decode


def _mock_kinds(mock: str | Iterable[str]) -> frozenset[str]:
    kinds = frozenset((mock,) if isinstance(mock, str) else mock)
    unknown = kinds - set(KINDS)
    if unknown:
        raise ValueError(f"replay mock= takes kinds from {KINDS}, got {sorted(unknown)}")
    return kinds


class replay:
    """Re-run recorded agent code in a new session; sync and async context manager.

    ``async with replay("conv-42", mock=("tool", "llm")) as r:`` binds a new
    session ``r.id`` (metadata ``replay_of``) in which recorded calls of the
    ``mock`` kinds (``tool``, ``llm``, ``decision``) return their recorded
    outcome instead of running. ``strict`` (default): a divergence raises
    ``ReplayDivergence`` — at the call, or on exit for a recorded call never
    made or a divergence the agent swallowed. ``strict=False``: the call runs
    live and a ``replay_diverged`` event is recorded; ``r.divergences`` lists
    them. ``until_version=N`` serves calls recorded up to version N and runs
    live after (a fork). ``ignore=("id", ...)``: keys, at any depth of the
    args, whose values do not count as a divergence. ``store=`` is where the
    recording is read from (a ``Recording`` or a list of events may be given
    instead of an id); the replay records into the configured store.
    """

    def __init__(
        self,
        session_id: str | Recording | Iterable[AgentEvent],
        *,
        mock: str | Iterable[str] = ("tool", "llm"),
        strict: bool = True,
        store: EventStore | str | None = None,
        until_version: int | None = None,
        replay_id: str | None = None,
        decode: Callable[[RecordedCall, Any], Any] | None = None,
        ignore: Iterable[str] = (),
        **metadata: Any,
    ) -> None:
        self._given: Recording | None = None
        if isinstance(session_id, Recording):
            self._given = session_id
        elif not isinstance(session_id, str):
            events = list(session_id)
            if not events:
                raise ValueError("replay() needs a session id or a non-empty list of events")
            self._given = Recording(events[0].session_id, events)
        self.replay_of = session_id if isinstance(session_id, str) else self._given.session_id
        self.mock = _mock_kinds(mock)
        self.strict = strict
        self.until_version = until_version
        self.id = replay_id or uuid7()
        self._store = store
        self._decode = _decoder(decode)
        if isinstance(ignore, str):
            raise TypeError("replay(ignore=...) takes a list of keys, e.g. ignore=('id',)")
        self.ignore = frozenset(ignore)
        self._metadata = metadata
        self.recording: Recording | None = None
        self._replayer: _Replayer | None = None
        self._session: session | None = None
        self._token: contextvars.Token[Any] | None = None

    @property
    def divergences(self) -> list[CallDivergence]:
        return list(self._replayer.divergences) if self._replayer else []

    @property
    def served(self) -> int:
        """How many calls were answered from the recording."""
        return self._replayer.served if self._replayer else 0

    def unused(self) -> list[RecordedCall]:
        """Recorded calls (of the mocked kinds) the replay has not made (yet)."""
        return self._replayer.unused() if self._replayer else []

    def _begin(self, recording: Recording) -> session:
        if self._token is not None:
            raise RuntimeError("this replay() object is already entered; create a new one")
        self.recording = recording
        self._replayer = _Replayer(
            recording, self.mock, self.strict, self.until_version, self._decode, self.ignore
        )
        meta = {"replay_of": self.replay_of, **self._metadata}
        if self.until_version is not None:
            meta["until_version"] = self.until_version
        self._session = session(self.id, **meta)
        return self._session

    def _bind(self) -> None:
        self._token = _replay.set(self._replayer)

    def _end(self, exc: BaseException | None) -> BaseException | None:
        """Unbind; returns the divergence to raise on exit (strict), if any."""
        if self._token is not None:
            _replay.reset(self._token)
            self._token = None
        replayer = self._replayer
        assert replayer is not None
        if exc is not None and not isinstance(exc, Exception):
            return None  # cancelled / interrupted: not a verdict on the replay
        failure: BaseException | None = None
        if exc is None:
            for call in replayer.unused():
                if not call.finished:
                    continue
                d = CallDivergence(
                    self.replay_of,
                    "not_called",
                    call.kind,
                    call.name,
                    call.version,
                    call.args,
                    None,
                )
                try:
                    replayer.diverge(d)
                except ReplayDivergence as raised:
                    failure = failure or raised
            if failure is None and self.strict and replayer.divergences:
                failure = ReplayDivergence(replayer.divergences[0])  # swallowed by the agent
        elif self.strict and replayer.divergences and not isinstance(exc, ReplayDivergence):
            failure = ReplayDivergence(replayer.divergences[0])
        return failure

    async def __aenter__(self) -> replay:
        recording = self._given or await load_recording(self.replay_of, store=self._store)
        await self._begin(recording).__aenter__()
        self._bind()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        failure = self._end(exc)
        assert self._session is not None
        if failure is not None:
            await self._session.__aexit__(type(failure), failure, None)
            raise failure from exc
        await self._session.__aexit__(exc_type, exc, tb)

    def __enter__(self) -> replay:
        recording = self._given or _run_sync(
            lambda: load_recording(self.replay_of, store=self._store)
        )
        self._begin(recording).__enter__()
        self._bind()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        failure = self._end(exc)
        assert self._session is not None
        if failure is not None:
            self._session.__exit__(type(failure), failure, None)
            raise failure from exc
        self._session.__exit__(exc_type, exc, tb)


# --- comparing two runs ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DecisionPoint:
    """Something a run decided: a decision's choice, a tool call with its args,
    an LLM output, or the final response."""

    kind: str  # decision | tool | llm | response
    name: str
    field: str  # choice | args | response | error
    value: Any
    version: int

    def describe(self) -> str:
        return f"v{self.version} {self.kind} {self.name} {self.field}={_short(self.value)}"


def decision_points(events: Iterable[AgentEvent]) -> list[DecisionPoint]:
    """The decision points of a session, in version order."""
    points = []
    for ev in events:
        p, t = ev.payload, ev.event_type
        if t == "decision_made":
            points.append(
                DecisionPoint("decision", p.get("decision"), "choice", p.get("choice"), ev.version)
            )
        elif t == "tool_started":
            points.append(DecisionPoint("tool", p.get("tool"), "args", p.get("args"), ev.version))
        elif t == "llm_responded":
            points.append(
                DecisionPoint("llm", p.get("name"), "response", p.get("response"), ev.version)
            )
        elif t in ("decision_failed", "llm_failed"):
            kind = "decision" if t == "decision_failed" else "llm"
            name = p.get("decision") if kind == "decision" else p.get("name")
            error = f"{p.get('error_type')}: {p.get('error')}"
            points.append(DecisionPoint(kind, name, "error", error, ev.version))
        elif t == "response_generated":
            points.append(
                DecisionPoint("response", "final", "response", p.get("response"), ev.version)
            )
    return points


@dataclass(frozen=True, slots=True)
class SessionDiff:
    """How two runs compare. False when they agree on every decision point."""

    a: str
    b: str
    compared: int  # decision points compared (up to and including the first divergence)
    index: int | None = None  # 0-based index of the first divergent decision point
    expected: DecisionPoint | None = None  # a's point there (None: a has no more)
    actual: DecisionPoint | None = None  # b's point there (None: b has no more)

    def __bool__(self) -> bool:
        return self.index is not None

    @property
    def reason(self) -> str | None:
        if self.index is None:
            return None
        if self.actual is None:
            return f"{self.b} stops before this point"
        if self.expected is None:
            return f"{self.b} goes on past the end of {self.a}"
        e, x = self.expected, self.actual
        if (e.kind, e.name) != (x.kind, x.name):
            return "a different call"
        return f"different {x.field}" if e.field == x.field else f"{e.field} vs {x.field}"

    def render(self) -> str:
        if self.index is None:
            return f"{self.a} and {self.b} agree on all {self.compared} decision points"
        width = max(len(self.a), len(self.b))
        e = self.expected.describe() if self.expected else "(nothing)"
        x = self.actual.describe() if self.actual else "(nothing)"
        return (
            f"{self.a} and {self.b} diverge at decision point {self.index + 1}: {self.reason}\n"
            f"  {self.a:<{width}}  {e}\n  {self.b:<{width}}  {x}"
        )

    __str__ = render


def _diff(a: str, b: str, pa: list[DecisionPoint], pb: list[DecisionPoint]) -> SessionDiff:
    for i in range(max(len(pa), len(pb))):
        e = pa[i] if i < len(pa) else None
        x = pb[i] if i < len(pb) else None
        if e is None or x is None or (e.kind, e.name, e.field) != (x.kind, x.name, x.field):
            return SessionDiff(a, b, i + 1, i, e, x)
        if not _same(e.value, x.value):
            return SessionDiff(a, b, i + 1, i, e, x)
    return SessionDiff(a, b, len(pa))


async def _events_and_id(
    run: str | Iterable[AgentEvent], store: EventStore | str | None
) -> tuple[str, list[AgentEvent]]:
    if isinstance(run, str):
        return run, await get_events(run, store=store)
    events = list(run)
    return (events[0].session_id if events else "(empty)"), events


async def diff_sessions(
    a: str | Iterable[AgentEvent],
    b: str | Iterable[AgentEvent],
    *,
    store: EventStore | str | None = None,
) -> SessionDiff:
    """Compare the decision points of two runs (ids or event lists); the report is
    truthy when they diverge, with the first divergence and ``render()``."""
    id_a, events_a = await _events_and_id(a, store)
    id_b, events_b = await _events_and_id(b, store)
    return _diff(id_a, id_b, decision_points(events_a), decision_points(events_b))


def diff_sessions_sync(
    a: str | Iterable[AgentEvent],
    b: str | Iterable[AgentEvent],
    *,
    store: EventStore | str | None = None,
) -> SessionDiff:
    """Blocking :func:`diff_sessions`."""
    return _run_sync(lambda: diff_sessions(a, b, store=store))


# --- many sessions: "every recorded session still behaves" --------------------------------


@dataclass(slots=True)
class ReplayResult:
    """One session of :func:`replay_many`."""

    session_id: str
    replay_id: str | None
    output: Any = None
    error: BaseException | None = None
    divergences: list[CallDivergence] = field(default_factory=list)
    diff: SessionDiff | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and not self.divergences and not self.diff

    def render(self) -> str:
        if self.ok:
            return f"ok    {self.session_id} (replayed as {self.replay_id})"
        if self.error is not None:
            why = f"{type(self.error).__name__}: {self.error}"
        elif self.divergences:
            why = self.divergences[0].describe()
        else:
            why = self.diff.render() if self.diff else "?"
        return f"FAIL  {self.session_id} (replayed as {self.replay_id}): {why}"


@dataclass(slots=True)
class ReplayBatch:
    """The results of :func:`replay_many`, in the order the sessions were given."""

    results: list[ReplayResult]

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    @property
    def failures(self) -> list[ReplayResult]:
        return [r for r in self.results if not r.ok]

    def __iter__(self) -> Iterator[ReplayResult]:
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    def render(self) -> str:
        lines = [r.render() for r in self.results]
        lines.append(f"{len(self.results) - len(self.failures)}/{len(self.results)} sessions ok")
        return "\n".join(lines)


async def replay_many(
    session_ids: Iterable[str],
    agent_factory: Callable[[Recording], Any],
    *,
    mock: str | Iterable[str] = ("tool", "llm"),
    strict: bool = True,
    fail_fast: bool = False,
    compare: bool = True,
    concurrency: int = 1,
    store: EventStore | str | None = None,
) -> ReplayBatch:
    """Replay each session; one :class:`ReplayResult` per session, in the given order.

    ``agent_factory(recording)`` runs inside the replay and re-runs the agent
    on the recorded input, e.g. ``lambda rec: MyAgent().answer(rec.user_message)``
    (a coroutine is awaited). A result fails on an exception, a divergence, or
    (``compare``) a different decision point. ``fail_fast`` starts no session
    after the first failure; otherwise every session runs. ``concurrency``
    replays that many sessions at a time (each in its own task and session).
    """
    kinds = _mock_kinds(mock)
    ids = list(session_ids)
    results: list[ReplayResult | None] = [None] * len(ids)
    failed = False
    gate = asyncio.Semaphore(max(1, concurrency))

    async def one(i: int, sid: str) -> None:
        nonlocal failed
        async with gate:
            if fail_fast and failed:
                return
            result = results[i] = await _replay_one(
                sid, agent_factory, kinds, strict, compare, store
            )
            failed = failed or not result.ok

    if concurrency <= 1:
        for i, sid in enumerate(ids):
            await one(i, sid)
            if fail_fast and failed:
                break
    else:
        await asyncio.gather(*(one(i, sid) for i, sid in enumerate(ids)))
    return ReplayBatch([r for r in results if r is not None])


async def _replay_one(
    sid: str,
    agent_factory: Callable[[Recording], Any],
    kinds: frozenset[str],
    strict: bool,
    compare: bool,
    store: EventStore | str | None,
) -> ReplayResult:
    run = replay(sid, mock=kinds, strict=strict, store=store)
    result = ReplayResult(sid, None)
    try:
        async with run:
            result.replay_id = run.id
            output = agent_factory(run.recording)  # type: ignore[arg-type]
            if inspect.isawaitable(output):
                output = await output
            result.output = output
    except Exception as exc:
        result.error = exc
    result.divergences = run.divergences
    if compare and run.recording is not None and result.replay_id is not None:
        result.diff = await diff_sessions(run.recording.events, run.id)
    return result


# --- helpers ---------------------------------------------------------------------------


def describe(ev: AgentEvent) -> str:
    """The payload bits of one event worth a glance, in one line (``agent-trace tail``)."""
    p = ev.payload
    kind = ev.event_type
    if kind == "session_started":
        return " ".join(f"{k}={v}" for k, v in (p.get("metadata") or {}).items())
    if kind == "session_ended":
        extra = f" error={_line(p.get('error'), 60)}" if p.get("error") else ""
        return f"status={p.get('status')} duration={_ms_text(p.get('duration_ms'))}{extra}"
    if kind in ("tool_started", "llm_started"):
        args = p.get("args") or {}
        name = p.get("tool") or p.get("name")
        model = f" model={p['model']}" if p.get("model") else ""
        shown = ", ".join(f"{k}={v!r}" for k, v in args.items()) if isinstance(args, dict) else ""
        return f"{name}({_line(shown, 60)}){model}"
    if kind == "tool_executed":
        result = orjson.dumps(p.get("result"), default=str).decode()
        return f"{p.get('tool')} -> {_line(result, 60)} ({_ms_text(p.get('duration_ms'))})"
    if kind.endswith("_failed"):
        name = p.get("tool") or p.get("name") or p.get("decision")
        return f"{name} {p.get('error_type')}: {_line(p.get('error'), 60)}"
    if kind == "llm_responded":
        usage = p.get("usage") or {}
        tokens = ""
        if usage:
            tokens = f" tokens in={usage.get('input_tokens')} out={usage.get('output_tokens')}"
        if "chunks" in p:
            return f"{p.get('name')} streamed {p['chunks']} chunks{tokens}"
        return f"{p.get('name')}{tokens} ({_ms_text(p.get('duration_ms'))})"
    if kind == "decision_made":
        choice = p.get("choice")
        if isinstance(choice, dict) and "tool" in choice:
            choice = choice["tool"]
        elif isinstance(choice, dict) and choice.get("final"):
            choice = "final answer"
        reasoning = f": {_line(p.get('reasoning'), 50)}" if p.get("reasoning") else ""
        return f"{p.get('decision')} -> {_line(choice, 40)}{reasoning}"
    if kind == "user_message_received":
        return repr(_line(p.get("message"), 80))
    if kind == "response_generated":
        return f"{_line(p.get('response'), 60)!r} tokens={p.get('tokens_used')}"
    return _line(orjson.dumps(p, default=str).decode(), 80)


def _line(text: Any, width: int) -> str:
    text = "" if text is None else str(text).replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def _ms_text(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 1000:
        return f"{value / 1000:.2f} s"
    return f"{value:.1f} ms" if value < 10 else f"{value:.0f} ms"


def _short(value: Any, width: int = _WIDTH) -> str:
    if isinstance(value, str):
        text = value
    else:
        try:
            text = orjson.dumps(value, default=repr).decode()
        except Exception:
            text = repr(value)
    return text if len(text) <= width else text[:width] + f"… ({len(text)} chars)"


def _run_sync(factory: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to completion from sync code, also under a running loop (notebooks)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(factory())  # type: ignore[arg-type]
    ctx = contextvars.copy_context()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(ctx.run, lambda: asyncio.run(factory())).result()  # type: ignore[arg-type]
