"""Projections: views derived by folding events, rebuilt from history at will.

A projection is ``initial()`` (the empty view) plus ``apply(state, event)``
(the view after one more event). Folding a session's events gives its
summary; folding the global log gives cross-session views. Nothing here
stores current state as truth: every view can be thrown away and rebuilt
from the events.

``ProjectionRunner`` keeps a view up to date incrementally: it reads the
global log in ``position`` order after its checkpoint and saves the new
state together with the new checkpoint in one transaction of the event
store itself (``stores.base.ProjectionStore``), with a compare-and-set on
the checkpoint. So a crash never applies an event twice nor skips one, and
two runners with the same name cannot both advance: the second gets
``ProjectionConflict``. A reader never skips an event that commits late
with a lower position because every store makes positions visible in
order (see ``ProjectionStore``'s docstring for how, and what PostgreSQL must
do).

Reads go only through the store protocol (``read_all``, ``get_events``), so
every view works on every store. Never write events. An ``apply`` must be
a pure fold without side effects: work not yet saved is redone after a
crash or a conflict.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import gc
import math
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import orjson

from agent_trace.events import AgentEvent
from agent_trace.llm import token_counts
from agent_trace.prices import ModelPrices, llm_cost
from agent_trace.stores.base import ProjectionConflict, ProjectionStore, check_projection_name

if TYPE_CHECKING:
    from agent_trace.stores.base import EventStore

__all__ = [
    "CostPerModel",
    "KeyedProjection",
    "ModelUsage",
    "Projection",
    "ProjectionConflict",
    "ProjectionError",
    "ProjectionRunner",
    "SessionSummary",
    "SessionSummaries",
    "SpanNode",
    "SpanTree",
    "ToolStats",
    "ToolStatsProjection",
    "average_tokens_per_session",
    "build_session_summary",
    "build_span_tree",
    "fold",
    "llm_cost",
    "rebuild",
    "rebuild_many",
    "session_summaries",
    "session_summary",
    "sessions_using_tool",
    "span_tree",
    "tool_stats",
]

S = TypeVar("S")
T = TypeVar("T")

#: Events per ``read_all`` page when scanning the global log. Measured on a
#: 1M-event SQLite store: 3,000 or 10,000 per page scan ~20% slower than 1,000
#: (a page no longer stays in cache on its way from the store's thread to the
#: fold); 300 pays more per-call overhead.
BATCH_SIZE = 1000


class ProjectionError(RuntimeError):
    """A view's ``apply`` raised; names the event it failed on."""

    def __init__(self, name: str, event: AgentEvent, cause: BaseException) -> None:
        self.event = event
        self.position = event.position
        super().__init__(
            f"projection {name!r} failed on event at position {event.position} "
            f"(session {event.session_id!r}, version {event.version}, type "
            f"{event.event_type!r}): {type(cause).__name__}: {cause}. Its checkpoint "
            "stays before this event"
        )


# --- the projection base -----------------------------------------------------


class Projection(Generic[S]):
    """A view folded from events: define ``initial()`` and ``apply(state, event)``.

    Handler sugar: instead of ``apply``, define ``on_<event_type>(state, event)``
    methods (e.g. ``on_tool_executed``; ``.``, ``:`` and ``-`` in a type read
    as ``_``); events without a handler leave the state unchanged. States
    kept by a ``ProjectionRunner`` must be JSON data (dicts with string keys,
    lists, numbers, strings, booleans, None).
    """

    def initial(self) -> S:
        """The view before any event."""
        return {}  # type: ignore[return-value]

    def apply(self, state: S, event: AgentEvent) -> S:
        """The view after ``event``; may mutate ``state`` and return it."""
        handler = _handler(type(self), event.event_type)
        if handler is None:
            return state
        return handler(self, state, event)


_handlers: dict[tuple[type, str], Callable[..., Any] | None] = {}


def _handler(cls: type, event_type: str) -> Callable[..., Any] | None:
    """``cls.on_<event_type>`` (``.``, ``:`` and ``-`` read as ``_``), looked up once."""
    key = (cls, event_type)
    try:
        return _handlers[key]
    except KeyError:
        name = "on_" + event_type.replace(".", "_").replace(":", "_").replace("-", "_")
        found = _handlers[key] = getattr(cls, name, None)
        return found


class KeyedProjection(Projection[dict[str, Any]], abc.ABC):
    """A view made of independent entries, one per key: a session, a tool, a model.

    Define ``key(event)`` (the entry the event changes, a string; None: no
    entry) and ``apply_entry(entry, event)`` (the entry after the event;
    ``entry`` is None for a new key; return None to remove it). The state is
    ``{key: entry}`` and ``apply`` is derived from the two, so ``fold`` and
    ``rebuild`` work as for any view. A ``ProjectionRunner`` saves only the
    entries its events touched since its last save (on stores with
    ``save_projection_entries``), so a checkpoint costs what changed, not the
    whole view. Entries must be JSON data, like any runner's state.
    """

    def initial(self) -> dict[str, Any]:
        return {}

    @abc.abstractmethod
    def key(self, event: AgentEvent) -> str | None:
        """The key of the entry ``event`` changes, or None if it changes none."""

    @abc.abstractmethod
    def apply_entry(self, entry: Any, event: AgentEvent) -> Any:
        """The entry after ``event`` (``entry`` None: a new key); None removes it."""

    def apply(self, state: dict[str, Any], event: AgentEvent) -> dict[str, Any]:
        """``state`` with the entry of ``key(event)`` replaced by ``apply_entry``."""
        key = self.key(event)
        if key is None:
            return state
        entry = self.apply_entry(state.get(key), event)
        if entry is None:
            state.pop(key, None)
        else:
            state[key] = entry
        return state


def fold(projection: Projection[S], events: Iterable[AgentEvent], state: Any = None) -> S:
    """Apply ``events`` in order, from ``state`` or ``projection.initial()``."""
    if state is None:
        state = projection.initial()
    apply = projection.apply
    for ev in events:
        state = apply(state, ev)
    return state


async def _scan(store: EventStore, after_position: int = 0) -> AsyncIterator[list[AgentEvent]]:
    """The global log after ``after_position`` in pages, in position order."""
    # Pages are read one after the other, not prefetched: the stores decode
    # events in their own thread, and overlapping that with the fold only
    # makes the two fight over the GIL (measured: slower). A store that can
    # read on this thread (SQLite's read_all_inline) skips that thread's
    # round trip per page; the first page is awaited, which opens the store.
    inline = getattr(store, "read_all_inline", None)
    page = await store.read_all(after_position, BATCH_SIZE)
    while page:
        yield page
        after_position = page[-1].position
        next_page = inline(after_position, BATCH_SIZE) if inline is not None else None
        if next_page is None:
            next_page = await store.read_all(after_position, BATCH_SIZE)
        else:
            await asyncio.sleep(0)  # an inline read never yields: let other tasks run
        page = next_page


# A page of events is a few thousand containers that live until the page is
# folded, then die by reference counting. At the collector's default first
# threshold (700) it runs several times per page, finds nothing to free, and
# promotes each page to the oldest generation, which then triggers full passes
# over the ever larger view: ~11% of a 1M-event rebuild, for no garbage. So a
# scan raises that threshold while it runs: cyclic garbage is still collected,
# only less often. Overlapping scans (tasks, threads) share one raise: the
# first to start saves the thresholds, the last to finish restores them.
_SCAN_GC_THRESHOLD = 50_000
_scans = 0
_scans_lock = threading.Lock()
_saved_threshold: tuple[int, ...] = ()


@contextlib.contextmanager
def _fewer_gc_passes() -> Iterator[None]:
    """Raise the garbage collector's first threshold while a scan runs; restore it after."""
    global _scans, _saved_threshold
    with _scans_lock:
        if _scans == 0:
            _saved_threshold = gc.get_threshold()
            if 0 < _saved_threshold[0] < _SCAN_GC_THRESHOLD:  # 0: collection is off
                gc.set_threshold(_SCAN_GC_THRESHOLD, *_saved_threshold[1:])
        _scans += 1
    try:
        yield
    finally:
        with _scans_lock:
            _scans -= 1
            if _scans == 0:
                gc.set_threshold(*_saved_threshold)


async def rebuild(projection: Projection[S], store: EventStore | str | None = None) -> S:
    """Fold the whole global log from scratch (no checkpoint, nothing saved)."""

    async def go(s: EventStore) -> S:
        state = projection.initial()
        apply = projection.apply
        with _fewer_gc_passes():
            async for page in _scan(s):
                for ev in page:
                    state = apply(state, ev)
        return state

    return await _with_store(store, go)


async def rebuild_many(
    projections: Iterable[Projection[Any]], store: EventStore | str | None = None
) -> list[Any]:
    """Fold several projections in ONE scan of the global log; their states, in order."""
    views = list(projections)

    async def go(s: EventStore) -> list[Any]:
        states = [p.initial() for p in views]
        applies = [p.apply for p in views]
        pairs = range(len(views))
        with _fewer_gc_passes():
            async for page in _scan(s):
                for i in pairs:
                    state, apply = states[i], applies[i]
                    for ev in page:
                        state = apply(state, ev)
                    states[i] = state
        return states

    return await _with_store(store, go)


async def _with_store(store: Any, fn: Callable[[EventStore], Awaitable[T]]) -> T:
    from agent_trace.reading import _with_store as with_store

    return await with_store(store, fn)


# --- session summary ---------------------------------------------------------


@dataclass
class SessionSummary:
    """What happened in one session, folded from its events.

    ``errors`` holds the message of each ``error_occurred`` and ``*_failed``
    event; ``duration_ms`` comes from ``session_ended`` (else from the first
    and last timestamps); ``status`` is ``open`` until the session ends.
    """

    session_id: str
    total_messages: int = 0
    tools_used: list[str] = field(default_factory=list)
    total_tokens: int = 0
    errors: list[str] = field(default_factory=list)
    started_at: str | None = None
    last_activity: str | None = None
    llm_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    decisions: int = 0
    duration_ms: float | None = None
    status: str = "open"
    #: USD, derived from current prices when read (None: no call could be priced).
    cost_usd: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The summary as JSON-ready data."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SessionSummary:
        """Inverse of :meth:`to_dict` (states saved before ``cost_usd`` existed load too)."""
        return cls(**d)


def _new_summary(session_id: str) -> dict[str, Any]:
    return {
        "session_id": session_id,
        "total_messages": 0,
        "tools_used": [],
        "total_tokens": 0,
        "errors": [],
        "started_at": None,
        "last_activity": None,
        "llm_calls": 0,
        "input_tokens": 0,
        "output_tokens": 0,
        "decisions": 0,
        "duration_ms": None,
        "status": "open",
        "cost_usd": None,
    }


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


# What an event type does to a summary. Looked up once per event instead of
# comparing its type against each case in turn: half the events of a typical
# session (``*_started``, observations) change nothing but the timestamps.
_NOTHING, _TOOL, _LLM, _LLM_FAILED, _MESSAGE, _DECISION, _RESPONSE, _ENDED, _ERROR = range(9)
_summary_kinds: dict[str, int] = {
    "tool_executed": _TOOL,
    "llm_responded": _LLM,
    "llm_failed": _LLM_FAILED,
    "user_message_received": _MESSAGE,
    "decision_made": _DECISION,
    "response_generated": _RESPONSE,
    "session_ended": _ENDED,
    "error_occurred": _ERROR,
}


def _summary_kind(event_type: str) -> int:
    """The ``_summary_kinds`` entry of ``event_type``, cached (any ``*_failed`` is an error)."""
    kind = _ERROR if event_type.endswith("_failed") else _NOTHING
    if len(_summary_kinds) < 10_000:  # a bound, should types be unbounded
        _summary_kinds[event_type] = kind
    return kind


def _apply_summary(s: dict[str, Any], ev: AgentEvent) -> None:
    """Fold one event into a summary dict (the one place the semantics live)."""
    ts = ev.timestamp
    # started_at <= last_activity always (both set by the first event), so an
    # event after the last one (the usual case) cannot be before the first.
    last = s["last_activity"]
    if last is None:
        s["started_at"] = s["last_activity"] = ts
    elif ts > last:
        s["last_activity"] = ts
    elif ts < s["started_at"]:
        s["started_at"] = ts
    t = ev.event_type
    kind = _summary_kinds.get(t)
    if kind is None:
        kind = _summary_kind(t)
    if kind == _NOTHING:
        return
    p = ev.payload
    if kind == _LLM:
        s["llm_calls"] += 1
        usage = p.get("usage")
        if isinstance(usage, dict):
            inp, out, total = token_counts(usage)
            s["input_tokens"] += inp
            s["output_tokens"] += out
            s["total_tokens"] += total
        cost = llm_cost(ev)
        if cost is not None:
            s["cost_usd"] = (s.get("cost_usd") or 0.0) + cost
    elif kind == _TOOL:
        s["tools_used"].append(p.get("tool"))
    elif kind == _DECISION:
        s["decisions"] += 1
    elif kind == _MESSAGE:
        s["total_messages"] += 1
    elif kind == _RESPONSE:
        s["total_tokens"] += _int(p.get("tokens_used"))
    elif kind == _ENDED:
        s["status"] = p.get("status", "ok")
        if isinstance(p.get("duration_ms"), (int, float)):
            s["duration_ms"] = p["duration_ms"]
    else:  # _ERROR, _LLM_FAILED
        if kind == _LLM_FAILED:
            s["llm_calls"] += 1
        s["errors"].append(_error_text(t, p))


def _error_text(event_type: str, payload: dict[str, Any]) -> str:
    for key in ("error", "message"):
        value = payload.get(key)
        if value is not None:
            return value if isinstance(value, str) else str(value)
    return event_type


def _finish_summary(s: dict[str, Any]) -> SessionSummary:
    d = dict(s)
    if d["duration_ms"] is None and d["started_at"] is not None:
        d["duration_ms"] = _elapsed_ms(d["started_at"], d["last_activity"])
    return SessionSummary(**d)


def _elapsed_ms(start: str, end: str) -> float:
    from datetime import datetime

    delta = datetime.fromisoformat(end) - datetime.fromisoformat(start)
    return delta.total_seconds() * 1000


def build_session_summary(
    events: Iterable[AgentEvent], session_id: str | None = None
) -> SessionSummary:
    """Fold one session's events (in version order) into its ``SessionSummary``."""
    s: dict[str, Any] | None = None if session_id is None else _new_summary(session_id)
    for ev in events:
        if s is None:
            s = _new_summary(ev.session_id)
        _apply_summary(s, ev)
    return _finish_summary(s if s is not None else _new_summary(""))


async def session_summary(session_id: str, store: EventStore | str | None = None) -> SessionSummary:
    """The summary of one session, read by session (an index lookup, not a scan)."""
    events = await _with_store(store, lambda s: s.get_events(session_id))
    return build_session_summary(events, session_id)


class SessionSummaries(KeyedProjection):
    """Every session's summary as a dict keyed by session id (runner-friendly JSON).

    Read a value back with ``SessionSummary.from_dict(state[session_id])``
    (``duration_ms`` stays None until the session ends), or use
    :func:`session_summaries`. One entry per session: a runner saves only
    the sessions that changed.
    """

    def key(self, event: AgentEvent) -> str:
        return event.session_id

    def apply_entry(self, entry: dict[str, Any] | None, event: AgentEvent) -> dict[str, Any]:
        if entry is None:
            entry = _new_summary(event.session_id)
        _apply_summary(entry, event)
        return entry

    def apply(self, state: dict[str, Any], event: AgentEvent) -> dict[str, Any]:
        # key + apply_entry inlined: this fold runs over every event of a rebuild.
        s = state.get(event.session_id)
        if s is None:
            s = state[event.session_id] = _new_summary(event.session_id)
        _apply_summary(s, event)
        return state


async def session_summaries(store: EventStore | str | None = None) -> dict[str, SessionSummary]:
    """Every session's summary in one scan of the global log."""
    state = await rebuild(SessionSummaries(), store)
    return {sid: _finish_summary(s) for sid, s in state.items()}


# --- cross-session queries ---------------------------------------------------


async def sessions_using_tool(tool: str, store: EventStore | str | None = None) -> list[str]:
    """Ids of the sessions that ran ``tool`` successfully, in order of first use."""

    async def go(s: EventStore) -> list[str]:
        found: dict[str, None] = {}
        with _fewer_gc_passes():
            async for page in _scan(s):
                for ev in page:
                    if (
                        ev.event_type == "tool_executed"
                        and ev.payload.get("tool") == tool
                        and ev.session_id not in found
                    ):
                        found[ev.session_id] = None
        return list(found)

    return await _with_store(store, go)


async def average_tokens_per_session(store: EventStore | str | None = None) -> float:
    """Mean ``SessionSummary.total_tokens`` over every session in the store (0.0 if none)."""
    summaries = await session_summaries(store)
    if not summaries:
        return 0.0
    return sum(s.total_tokens for s in summaries.values()) / len(summaries)


@dataclass(frozen=True)
class ToolStats:
    """One tool's calls across sessions; percentiles over finished calls' ``duration_ms``."""

    tool: str
    calls: int
    failures: int
    p50_ms: float | None
    p95_ms: float | None
    mean_ms: float | None

    @property
    def failure_rate(self) -> float:
        return self.failures / self.calls if self.calls else 0.0


class ToolStatsProjection(KeyedProjection):
    """Per tool: ``{"calls", "failures", "durations"}`` from ``tool_executed``/``tool_failed``."""

    def key(self, event: AgentEvent) -> str | None:
        t = event.event_type
        if t != "tool_executed" and t != "tool_failed":
            return None
        name = event.payload.get("tool")
        return name if isinstance(name, str) else "?"

    def apply_entry(self, entry: dict[str, Any] | None, event: AgentEvent) -> dict[str, Any]:
        if entry is None:
            entry = {"calls": 0, "failures": 0, "durations": []}
        entry["calls"] += 1
        if event.event_type == "tool_failed":
            entry["failures"] += 1
        d = event.payload.get("duration_ms")
        if isinstance(d, (int, float)) and not isinstance(d, bool):
            entry["durations"].append(d)
        return entry

    @staticmethod
    def stats(state: dict[str, Any]) -> dict[str, ToolStats]:
        """The state as ``ToolStats`` per tool, sorted by tool name."""
        out = {}
        for name in sorted(state):
            s = state[name]
            ds = sorted(s["durations"])
            out[name] = ToolStats(
                tool=name,
                calls=s["calls"],
                failures=s["failures"],
                p50_ms=_percentile(ds, 50),
                p95_ms=_percentile(ds, 95),
                mean_ms=sum(ds) / len(ds) if ds else None,
            )
        return out


def _percentile(ordered: list[float], pct: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default; Excel PERCENTILE.INC)."""
    if not ordered:
        return None
    k = (len(ordered) - 1) * pct / 100
    lo = math.floor(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


async def tool_stats(store: EventStore | str | None = None) -> dict[str, ToolStats]:
    """Per tool: calls, failures and p50/p95/mean duration in ms, across all sessions."""
    return ToolStatsProjection.stats(await rebuild(ToolStatsProjection(), store))


# --- cost and tokens per model ------------------------------------------------


@dataclass(frozen=True)
class ModelUsage:
    """One model's LLM calls and tokens; ``cost`` in USD (None: no call could be priced)."""

    model: str
    calls: int
    failures: int
    input_tokens: int
    output_tokens: int
    total_tokens: int
    cost: float | None
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0


class CostPerModel(KeyedProjection):
    """LLM calls, tokens and cost per model, from ``llm_responded``/``llm_failed``.

    The model is the one that answered (``response_model``), else the one
    requested. Cost comes from :func:`llm_cost` (``configure(prices=...)``,
    then genai-prices); ``prices`` here maps a model to ``(input, output)``
    USD per million tokens and takes precedence (kept for older callers).
    """

    def __init__(self, prices: dict[str, tuple[float, float]] | None = None) -> None:
        self.prices = {
            model: ModelPrices(float(p[0]), float(p[1])) for model, p in (prices or {}).items()
        }

    def key(self, event: AgentEvent) -> str | None:
        t = event.event_type
        if t != "llm_responded" and t != "llm_failed":
            return None
        p = event.payload
        model = p.get("response_model") or p.get("model")
        return model if isinstance(model, str) else "unknown"

    def apply_entry(self, entry: dict[str, Any] | None, event: AgentEvent) -> dict[str, Any]:
        m = entry
        if m is None:
            m = {
                "calls": 0,
                "failures": 0,
                "input_tokens": 0,
                "output_tokens": 0,
                "total_tokens": 0,
                "cache_read_tokens": 0,
                "cache_write_tokens": 0,
                "reasoning_tokens": 0,
                "cost": None,
            }
        m["calls"] += 1
        if event.event_type == "llm_failed":
            m["failures"] += 1
            return m
        p = event.payload
        usage = p.get("usage")
        if isinstance(usage, dict):
            inp, out, total = token_counts(usage)
            m["input_tokens"] += inp
            m["output_tokens"] += out
            m["total_tokens"] += total
            for key in ("cache_read_tokens", "cache_write_tokens", "reasoning_tokens"):
                m[key] = m.get(key, 0) + _int(usage.get(key))
            own = self.prices.get(self.key(event) or "unknown")
            cost = own.cost(usage) if own is not None else llm_cost(event)
            if cost is not None:
                m["cost"] = (m.get("cost") or 0.0) + cost
        return m

    def usage(self, state: dict[str, Any]) -> dict[str, ModelUsage]:
        """The state as ``ModelUsage`` per model."""
        return {model: ModelUsage(model=model, **state[model]) for model in sorted(state)}


# --- span tree -----------------------------------------------------------------

_SPAN_KINDS = {
    "tool_started": "tool",
    "tool_executed": "tool",
    "tool_failed": "tool",
    "llm_started": "llm",
    "llm_responded": "llm",
    "llm_failed": "llm",
    "decision_made": "decision",
    "decision_failed": "decision",
    # An agent framework's run (agent_trace.integrations): the parent of its calls.
    "agent_started": "agent",
    "agent_finished": "agent",
}
_NAME_KEYS = {"tool": "tool", "llm": "name", "decision": "decision", "agent": "agent"}


@dataclass
class SpanNode:
    """One recorded call: its kind, name, timing, outcome and nested calls."""

    span_id: str
    parent_span_id: str | None
    kind: str | None = None  # tool, llm, decision, agent; None if only seen as a parent
    name: str | None = None
    status: str = "running"  # running, ok, error
    started_at: str | None = None
    ended_at: str | None = None
    duration_ms: float | None = None
    error: str | None = None
    first_version: int = 0
    children: list[SpanNode] = field(default_factory=list)

    def walk(self, depth: int = 0) -> Iterable[tuple[int, SpanNode]]:
        """This span and its descendants, depth first, with their depth."""
        yield depth, self
        for child in self.children:
            yield from child.walk(depth + 1)


class SpanTree(Projection[dict[str, Any]]):
    """One session's recorded calls as ``{span_id: span dict}`` (a JSON state).

    Use it on a single session's events; :func:`build_span_tree` turns the
    state into linked ``SpanNode`` roots.
    """

    def initial(self) -> dict[str, Any]:
        return {}

    def apply(self, state: dict[str, Any], event: AgentEvent) -> dict[str, Any]:
        span_id, parent = event.span_id, event.parent_span_id
        if parent is not None and parent not in state:
            # A decision is one event, emitted after the calls nested in it.
            state[parent] = _new_span(parent, None, event.version)
        kind = _SPAN_KINDS.get(event.event_type)
        if kind is None or span_id is None:
            return state
        s = state.get(span_id)
        if s is None:
            s = state[span_id] = _new_span(span_id, parent, event.version)
        if parent is not None:
            s["parent_span_id"] = parent
        p = event.payload
        s["kind"] = kind
        name = p.get(_NAME_KEYS[kind])
        if isinstance(name, str):
            s["name"] = name
        t = event.event_type
        if t.endswith("_started"):
            s["started_at"] = event.timestamp
            return state
        s["ended_at"] = event.timestamp
        d = p.get("duration_ms")
        if isinstance(d, (int, float)) and not isinstance(d, bool):
            s["duration_ms"] = d
        if t.endswith("_failed") or (kind == "agent" and p.get("status") not in (None, "ok")):
            s["status"] = "error"
            s["error"] = _error_text(t, p)
        else:
            s["status"] = "ok"
        return state


def _new_span(span_id: str, parent: str | None, version: int) -> dict[str, Any]:
    return {
        "span_id": span_id,
        "parent_span_id": parent,
        "kind": None,
        "name": None,
        "status": "running",
        "started_at": None,
        "ended_at": None,
        "duration_ms": None,
        "error": None,
        "first_version": version,
    }


def build_span_tree(events: Iterable[AgentEvent]) -> list[SpanNode]:
    """The root calls of one session, children nested, each level in start order."""
    state = fold(SpanTree(), events)
    nodes = {sid: SpanNode(**s) for sid, s in state.items()}
    roots = []
    for node in sorted(nodes.values(), key=lambda n: n.first_version):
        parent = nodes.get(node.parent_span_id) if node.parent_span_id else None
        (parent.children if parent is not None else roots).append(node)
    return roots


async def span_tree(session_id: str, store: EventStore | str | None = None) -> list[SpanNode]:
    """:func:`build_span_tree` of a stored session."""
    events = await _with_store(store, lambda s: s.get_events(session_id))
    return build_span_tree(events)


# --- the runner ----------------------------------------------------------------


class ProjectionRunner(Generic[S]):
    """Keeps one named view up to date, exactly once, in the event store itself.

    Each page of events after the checkpoint is folded in memory and saved
    with its last position in one transaction, compare-and-set on the
    checkpoint the runner started from. A crash loses only unsaved pages
    (redone from the saved checkpoint); a second runner with the same name
    that saves first makes this one raise ``ProjectionConflict``.

    A ``KeyedProjection`` on a store with ``save_projection_entries`` (every
    bundled store) saves only the entries the page touched, so
    a page costs the same whatever the view's size: the run is linear in
    events. Any other view (or store) saves its whole state per page.
    """

    def __init__(
        self,
        store: EventStore,
        projection: Projection[S],
        name: str,
        *,
        batch_size: int = 1000,
    ) -> None:
        if not isinstance(store, ProjectionStore):
            raise TypeError(
                f"{store!r} cannot host a ProjectionRunner: it lacks load_projection/"
                "save_projection (see agent_trace.stores.base.ProjectionStore); use "
                "rebuild(projection, store) to fold it without a checkpoint"
            )
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        self.store = store
        self.projection = projection
        self.name = check_projection_name(name)
        self.batch_size = batch_size
        self._lock = asyncio.Lock()
        # The last saved (state, checkpoint) as this runner knows it; None: reload.
        self._cached: tuple[Any, int] | None = None

    def __repr__(self) -> str:
        return f"ProjectionRunner({self.name!r}, {type(self.projection).__name__}, {self.store!r})"

    async def _load(self) -> tuple[Any, int]:
        state_json, checkpoint = await self.store.load_projection(self.name)
        state = self.projection.initial() if state_json is None else orjson.loads(state_json)
        if isinstance(self.projection, KeyedProjection) and not isinstance(state, dict):
            raise TypeError(
                f"projection {self.name!r} holds a saved {type(state).__name__}, not the JSON "
                f"object a {type(self.projection).__name__} keeps: was the name used by "
                "another view?"
            )
        return state, checkpoint

    async def state(self) -> S:
        """The persisted state (``initial()`` if nothing was saved yet)."""
        return (await self._load())[0]

    async def checkpoint(self) -> int:
        """The position of the last event folded into the persisted state (0: none)."""
        return (await self.store.load_projection(self.name))[1]

    async def run_once(self) -> int:
        """Fold and save every event after the checkpoint; return how many were applied."""
        async with self._lock:
            if self._cached is None:
                self._cached = await self._load()
            state, checkpoint = self._cached
            applied = 0
            keyed = isinstance(self.projection, KeyedProjection)
            save_entries = getattr(self.store, "save_projection_entries", None) if keyed else None
            try:
                with _fewer_gc_passes():
                    while True:
                        page = await self.store.read_all(checkpoint, self.batch_size)
                        if not page:
                            break
                        last = page[-1].position
                        if save_entries is not None:
                            changed = self._fold_entries(state, page)
                            await save_entries(self.name, changed, last, checkpoint)
                        else:
                            state = self._fold(state, page)
                            state_json = orjson.dumps(state).decode()
                            await self.store.save_projection(
                                self.name, state_json, last, checkpoint
                            )
                        checkpoint = last
                        self._cached = (state, checkpoint)
                        applied += len(page)
            except BaseException:
                # The in-memory state may hold part of an unsaved page (or a save
                # may have landed before a cancellation): trust only the store.
                self._cached = None
                raise
            return applied

    def _fold(self, state: Any, page: list[AgentEvent]) -> Any:
        apply = self.projection.apply
        for ev in page:
            try:
                state = apply(state, ev)
            except Exception as exc:
                raise ProjectionError(self.name, ev, exc) from exc
        return state

    def _fold_entries(self, state: dict[str, Any], page: list[AgentEvent]) -> dict[str, str | None]:
        """Fold ``page`` into ``state`` entry by entry; the touched entries as JSON (None: gone)."""
        projection = self.projection
        assert isinstance(projection, KeyedProjection)
        key_of, apply_entry = projection.key, projection.apply_entry
        touched: set[str] = set()
        for ev in page:
            try:
                key = key_of(ev)
                if key is None:
                    continue
                if type(key) is not str:
                    raise TypeError(f"key() returned {key!r}, not a str")
                entry = apply_entry(state.get(key), ev)
            except Exception as exc:
                raise ProjectionError(self.name, ev, exc) from exc
            if entry is None:
                state.pop(key, None)
            else:
                state[key] = entry
            touched.add(key)
        dumps = orjson.dumps
        return {k: dumps(state[k]).decode() if k in state else None for k in touched}

    async def run_forever(
        self, poll_interval: float = 0.5, *, stop: asyncio.Event | None = None
    ) -> None:
        """Keep catching up, polling every ``poll_interval`` s when idle, until ``stop`` is set.

        A store with ``wait_for_events(after_position, timeout)`` (PostgreSQL
        LISTEN/NOTIFY) is waited on instead of sleeping; the poll still bounds
        the wait. Errors (``ProjectionError``, ``ProjectionConflict``) end it.
        """
        if poll_interval <= 0:
            raise ValueError(f"poll_interval must be > 0, got {poll_interval!r}")
        wait_for_events = getattr(self.store, "wait_for_events", None)
        while stop is None or not stop.is_set():
            if await self.run_once():
                continue
            if wait_for_events is not None:
                checkpoint = self._cached[1] if self._cached else await self.checkpoint()
                await wait_for_events(checkpoint, poll_interval)
            elif stop is None:
                await asyncio.sleep(poll_interval)
            else:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), poll_interval)
