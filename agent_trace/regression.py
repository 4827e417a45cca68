"""Regression tests from recorded sessions: the engine of ``agent-trace test`` and of
the pytest plugin (``agent_trace.testing``).

A run has three steps. Select recorded sessions (``parse_selection``,
``select_recordings``; replays, which carry ``replay_of``, and sessions still
open are left out unless asked for). Replay each one through the agent's entry
point, called with its ``RecordedSession``, with tools and LLM answered from the
recording (``replay``, strict: the first call that differs stops the run).
Judge each replay against its recording (``judge``): the first divergent call
as the replayer saw it, else an exception the recording did not have, else the
first decision, tool call or final answer that changed (``decision_points``;
LLM outputs are left out because with a live LLM their wording always
changes, and what they lead to is compared), else another ending. Tokens, cost
and duration before and after come from both sessions' events.

Reads the recordings through the store protocol and never writes to them; the
replays are recorded wherever the recorder is configured. Never prints: the
CLI and the pytest plugin present the results.
"""

from __future__ import annotations

import asyncio
import difflib
import fnmatch
import importlib
import importlib.util
import inspect
import os
import random
import re
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent_trace.projections import build_session_summary, llm_cost
from agent_trace.reading import _with_store
from agent_trace.replay import (
    _ABSENT,
    KINDS,
    CallDivergence,
    DecisionPoint,
    RecordedSession,
    ReplayDivergence,
    _diff,
    _first_difference,
    _mock_kinds,
    _ms_text,
    _same,
    _short,
    decision_points,
    replay,
)

if TYPE_CHECKING:
    from agent_trace.events import AgentEvent
    from agent_trace.stores.base import EventStore, SessionInfo

__all__ = [
    "Divergence",
    "ModelStats",
    "RegressionReport",
    "RunStats",
    "SessionResult",
    "Selection",
    "judge",
    "load_target",
    "parse_mock",
    "parse_selection",
    "parse_when",
    "replay_and_judge",
    "run_regression",
    "select_recordings",
    "summary_lines",
    "table",
    "text_diff",
    "write_junit_xml",
]

Target = Callable[[RecordedSession], Any]

# --- which sessions ---------------------------------------------------------------

_STATUSES = ("ok", "error", "cancelled", "open", "any")
_REPLAYS = ("exclude", "include", "only")
_KEYS = (
    "tool",
    "model",
    "status",
    "since",
    "until",
    "session",
    "limit",
    "sample",
    "seed",
    "replays",
    "metadata.KEY",
)


@dataclass(frozen=True)
class Selection:
    """Which recorded sessions to replay; every filter given must hold.

    ``status`` None means any session that ended (ok, error or cancelled).
    ``limit`` keeps the newest N that match; ``sample`` then picks N of them
    at random, the same N on every run (``seed`` picks another N).
    """

    tool: str | None = None
    model: str | None = None
    status: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    session: str | None = None  # an id or a glob such as ``checkout-*``
    metadata: tuple[tuple[str, str], ...] = ()
    limit: int | None = None
    sample: int | None = None
    seed: int = 0
    replays: str = "exclude"
    text: str = ""  # as given, for messages

    def __str__(self) -> str:
        return self.text or "(all sessions)"


def parse_when(text: str) -> datetime:
    """``30m``, ``2h``, ``7d``, ``1w`` ago, or an ISO date/datetime (UTC unless it says so)."""
    m = re.fullmatch(r"(\d+)\s*([smhdw])", text.strip())
    if m:
        unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
        return datetime.now(timezone.utc) - timedelta(**{unit[m.group(2)]: int(m.group(1))})
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"{text!r} is not a time: use a duration (30m, 2h, 7d) or an ISO date (2024-05-01)"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def parse_selection(
    spec: str | Sequence[str] | Mapping[str, Any] | Selection | None = None,
) -> Selection:
    """A :class:`Selection` from ``"tool=search,status=error,since=7d,limit=50"``, several
    such strings, or a mapping; ``ValueError`` names a bad filter."""
    if isinstance(spec, Selection):
        return spec
    if spec is None:
        return Selection()
    if isinstance(spec, Mapping):
        pairs = [(str(k), "" if v is None else str(v)) for k, v in spec.items()]
    else:
        parts = [spec] if isinstance(spec, str) else list(spec)
        pairs = []
        for part in (p.strip() for text in parts for p in text.split(",")):
            if not part:
                continue
            key, sep, value = part.partition("=")
            if not sep:
                raise ValueError(f"select filter {part!r} needs a value: key=value")
            pairs.append((key.strip(), value.strip()))
    fields: dict[str, Any] = {}
    metadata: list[tuple[str, str]] = []
    for key, value in pairs:
        if key in fields or any(key == f"metadata.{k}" for k, _ in metadata):
            raise ValueError(f"select filter {key!r} is given twice")
        if key.startswith("metadata.") and len(key) > len("metadata."):
            metadata.append((key[len("metadata.") :], value))
        elif key in ("tool", "model", "session"):
            fields[key] = value
        elif key in ("since", "until"):
            try:
                fields[key] = parse_when(value)
            except ValueError as exc:
                raise ValueError(f"select filter {key}: {exc}") from None
        elif key in ("limit", "sample", "seed"):
            fields[key] = _int_filter(key, value)
        elif key == "status":
            if value not in _STATUSES:
                raise ValueError(f"select filter status={value!r}: use one of {_STATUSES}")
            fields[key] = value
        elif key == "replays":
            if value not in _REPLAYS:
                raise ValueError(f"select filter replays={value!r}: use one of {_REPLAYS}")
            fields[key] = value
        else:
            raise ValueError(f"unknown select filter {key!r}; known: {', '.join(_KEYS)}")
    text = ",".join(f"{k}={v}" for k, v in pairs)
    return Selection(metadata=tuple(metadata), text=text, **fields)


def _int_filter(key: str, value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise ValueError(f"select filter {key}={value!r} is not an integer") from None
    if key != "seed" and n < 1:
        raise ValueError(f"select filter {key}={value!r} must be >= 1")
    return n


def _info_matches(info: SessionInfo, sel: Selection) -> bool:
    """The filters answered by ``list_sessions`` alone (no events read)."""
    is_replay = "replay_of" in info.metadata
    if (sel.replays == "exclude" and is_replay) or (sel.replays == "only" and not is_replay):
        return False
    if sel.session is not None and not fnmatch.fnmatchcase(info.session_id, sel.session):
        return False
    started = datetime.fromisoformat(info.started_at)
    if (sel.since is not None and started < sel.since) or (
        sel.until is not None and started > sel.until
    ):
        return False
    return all(str(info.metadata.get(k)) == v for k, v in sel.metadata)


def _events_match(events: list[AgentEvent], sel: Selection) -> bool:
    status = "open"
    tool = sel.tool is None
    model = sel.model is None
    for ev in events:
        t, p = ev.event_type, ev.payload
        if t == "session_ended":
            status = str(p.get("status"))
        elif t == "session_started":
            status = "open"
        elif not tool and t in ("tool_started", "tool_executed", "tool_failed"):
            tool = p.get("tool") == sel.tool
        elif not model and t in ("llm_started", "llm_responded", "llm_failed"):
            model = sel.model in (p.get("model"), p.get("response_model"))
    wanted = status != "open" if sel.status is None else sel.status in (status, "any")
    return wanted and tool and model


async def select_recordings(
    store: EventStore | str | None, selection: Selection | str | None = None
) -> list[RecordedSession]:
    """The recorded sessions a selection picks, oldest first, read from ``store``."""
    sel = parse_selection(selection)

    async def pick(s: EventStore) -> list[RecordedSession]:
        infos = [i for i in await s.list_sessions() if _info_matches(i, sel)]  # newest first
        chosen: list[RecordedSession] = []
        for info in infos:
            if sel.limit is not None and len(chosen) >= sel.limit:
                break
            events = await s.get_events(info.session_id)
            if events and _events_match(events, sel):
                chosen.append(RecordedSession(info.session_id, events))
        if sel.sample is not None and len(chosen) > sel.sample:
            chosen = random.Random(sel.seed).sample(chosen, sel.sample)
        return sorted(chosen, key=lambda r: (r.events[0].timestamp, r.session_id))

    return await _with_store(store, pick)


# --- the agent's entry point --------------------------------------------------------


def load_target(spec: str) -> Target:
    """The agent entry point ``module:function`` (or ``path/to/file.py:function``; the
    function may be ``Class.attribute``). ``ValueError`` says what is wrong."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"TARGET must be module:function, got {spec!r}")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # as ``python -m`` does: the project's own modules
    try:
        if module_name.endswith(".py"):
            path = Path(module_name).resolve()
            if not path.is_file():
                raise ValueError(f"TARGET {spec!r}: no such file {path}")
            name = f"agent_trace_target_{path.stem}"
            loader = importlib.util.spec_from_file_location(name, path)
            assert loader is not None and loader.loader is not None
            module = importlib.util.module_from_spec(loader)
            sys.modules[name] = module  # dataclasses look their module up by name
            loader.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except ValueError:
        raise
    except Exception as exc:
        raise ValueError(
            f"TARGET {spec!r}: cannot import {module_name}: {type(exc).__name__}: {exc}"
        ) from None
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(f"TARGET {spec!r}: {module_name} has no attribute {attr!r}") from None
    if not callable(obj):
        raise ValueError(f"TARGET {spec!r} is not callable ({type(obj).__name__})")
    return obj  # type: ignore[no-any-return]


def parse_mock(spec: str | Iterable[str]) -> frozenset[str]:
    """``"tool,llm"`` (or ``"none"``) as the set of kinds a replay serves."""
    if isinstance(spec, str):
        spec = [] if spec.strip() == "none" else [k.strip() for k in spec.split(",") if k.strip()]
    try:
        return _mock_kinds(spec)
    except ValueError:
        raise ValueError(
            f"--mock takes kinds from {', '.join(KINDS)} (or none), got {spec}"
        ) from None


async def _call(target: Target, recording: RecordedSession) -> Any:
    """Run the entry point: a coroutine function in the loop, anything else in a thread
    (it may block, or run its own loop); an awaitable it returns is awaited."""
    if inspect.iscoroutinefunction(target):
        return await target(recording)
    result = await asyncio.to_thread(target, recording)  # copies the replay's context
    return await result if inspect.isawaitable(result) else result


# --- judging one replay ---------------------------------------------------------------


@dataclass(frozen=True)
class ModelStats:
    """One model's LLM calls in one run."""

    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    cost_usd: float | None = None


@dataclass(frozen=True)
class RunStats:
    """Tokens, cost, duration and ending of one run (a recording or its replay)."""

    total_tokens: int
    input_tokens: int
    output_tokens: int
    cost_usd: float | None
    duration_ms: float | None
    status: str
    error: str | None
    models: dict[str, ModelStats] = field(default_factory=dict)

    @classmethod
    def of(cls, events: Sequence[AgentEvent]) -> RunStats:
        summary = build_session_summary(events, events[0].session_id if events else "")
        error = None
        models: dict[str, ModelStats] = {}
        for ev in events:
            p = ev.payload
            if ev.event_type == "session_ended":
                error = f"{p['error_type']}: {p.get('error')}" if p.get("error_type") else None
            elif ev.event_type == "llm_responded":
                model, usage = p.get("model"), p.get("usage")
                name = model if isinstance(model, str) else "unknown"
                usage = usage if isinstance(usage, dict) else {}
                inp, out = _count(usage.get("input_tokens")), _count(usage.get("output_tokens"))
                total = _count(usage.get("total_tokens")) or inp + out
                m = models.get(name, ModelStats())
                models[name] = ModelStats(
                    m.calls + 1,
                    m.input_tokens + inp,
                    m.output_tokens + out,
                    m.total_tokens + total,
                    _add_cost(m.cost_usd, llm_cost(ev)),
                )
        return cls(
            summary.total_tokens,
            summary.input_tokens,
            summary.output_tokens,
            summary.cost_usd,
            summary.duration_ms,
            summary.status,
            error,
            models,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "total_tokens": self.total_tokens,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cost_usd": self.cost_usd,
            "duration_ms": self.duration_ms,
            "status": self.status,
            "error": self.error,
            "models": {k: _model_dict(m) for k, m in self.models.items()},
        }


def _model_dict(m: ModelStats) -> dict[str, Any]:
    return {
        "calls": m.calls,
        "input_tokens": m.input_tokens,
        "output_tokens": m.output_tokens,
        "total_tokens": m.total_tokens,
        "cost_usd": m.cost_usd,
    }


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _add_cost(total: float | None, cost: float | None) -> float | None:
    if cost is None:
        return total
    return cost if total is None else total + cost


_NOTHING = "(nothing)"


@dataclass(frozen=True)
class Divergence:
    """Where a replay first stopped matching its recording.

    ``step`` is the recorded version of the expected call (None: after the
    recording's last call). ``kind``: tool / llm / decision / response /
    session. ``reason``: ``args_differ``, ``unexpected_call``, ``not_called``
    (from the replayer), ``error`` (the agent raised), ``different choice`` /
    ``different args`` / ``different response`` / ``a different call``
    (a decision point changed), ``stops early`` / ``goes on``, ``ending``.
    """

    step: int | None
    kind: str
    name: str
    reason: str
    expected: Any
    actual: Any
    field: str = "args"  # what expected/actual are: args, choice, response, error, status

    @property
    def expected_text(self) -> str:
        if self.reason == "unexpected_call":
            return "(no such call left in the recording)"
        return _point_text(self.kind, self.name, self.field, self.expected)

    @property
    def actual_text(self) -> str:
        if self.reason == "error":
            return f"raised {self.actual}"
        if self.reason == "not_called":
            return "(never called)"
        return _point_text(self.kind, self.name, self.field, self.actual)

    def cells(self) -> tuple[str, str, str]:
        """(where, expected, actual) for a table: the call and the part of it that differs."""
        where = f"{self.kind} {self.name}" if self.kind != "session" else "end"
        e, a = self.expected, self.actual
        if self.reason == "error" or e is _NOTHING or a is _NOTHING or _same(e, a):
            return where, _cut(self.expected_text, 40), _cut(self.actual_text, 40)
        path, e, a = _first_difference(e, a, self.field)
        if e is _ABSENT or a is _ABSENT:
            e, a = (
                ("(absent)" if e is _ABSENT else _short(e, 40)),
                ("(absent)" if a is _ABSENT else _short(a, 40)),
            )
        elif isinstance(e, list) and isinstance(a, list) and len(e) != len(a):
            e, a = f"{len(e)} items", f"{len(a)} items"
        elif isinstance(e, str) and isinstance(a, str):
            e, a = _around(e, a)
        else:
            e, a = _short(e, 40), _short(a, 40)
        return f"{where} {path}", _cut(e, 40), _cut(a, 40)

    def headline(self) -> str:
        where = f"step {self.step}" if self.step is not None else "the end of the recording"
        what = f" ({self.kind} {self.name!r})" if self.kind != "session" else ""
        why = {
            "args_differ": "called with other arguments",
            "unexpected_call": "a call the recording does not have",
            "not_called": "the recorded call was never made",
            "error": "the agent raised an exception",
            "ending": "the run ended differently",
        }.get(self.reason, self.reason)
        return f"diverged at {where}{what}: {why}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "kind": self.kind,
            "name": self.name,
            "reason": self.reason,
            "field": self.field,
            "expected": None if self.expected is _NOTHING else self.expected,
            "actual": None if self.actual is _NOTHING else self.actual,
            "expected_text": self.expected_text,
            "actual_text": self.actual_text,
        }


def _point_text(kind: str, name: str, field: str, value: Any, width: int = 160) -> str:
    """A recorded or replayed call in one line: ``tool search(query='x', page=2)``."""
    if value is _NOTHING:
        return str(value)
    if field == "args":
        if isinstance(value, dict):
            inner = ", ".join(f"{k}={_arg_text(v)}" for k, v in value.items())
        else:
            inner = _short(value, width)
        return _cut(f"{kind} {name}({inner})", width)
    if field == "choice":
        return _cut(f"decision {name} -> {_short(value, width)}", width)
    if field == "response":
        if kind == "response":
            return _cut(f"final answer {_short(value, width)!r}", width)
        return _cut(f"{kind} {name} -> {_short(value, width)}", width)
    if field == "error":
        return _cut(f"{kind} {name} failed: {value}", width)
    return _cut(f"{name} {value}", width)


def _around(expected: str, actual: str, before: int = 12, width: int = 36) -> tuple[str, str]:
    """Both texts cut to a window starting just before their first difference."""
    n = 0
    for x, y in zip(expected, actual, strict=False):
        if x != y:
            break
        n += 1
    start = max(n - before, 0)

    def window(text: str) -> str:
        cut = text[start : start + width]
        return ("…" if start else "") + cut + ("…" if start + width < len(text) else "")

    return window(expected), window(actual)


def _arg_text(value: Any) -> str:
    return repr(_short(value, 60)) if isinstance(value, str) else _short(value, 60)


def _cut(text: str, width: int) -> str:
    text = text.replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


@dataclass
class SessionResult:
    """One recorded session replayed and judged."""

    session_id: str
    replay_id: str | None
    before: RunStats
    after: RunStats | None
    divergence: Divergence | None = None
    first_decision: bool = False  # the recording's first decision point changed
    tool_choice: bool = False  # other tools (or args) were called, or recorded ones skipped
    final_answer: bool = False  # the run ended with another final response (or none)
    output: Any = None  # what the entry point returned
    elapsed_ms: float = 0.0

    @property
    def diverged(self) -> bool:
        return self.divergence is not None

    @property
    def ok(self) -> bool:
        return self.divergence is None

    def explain(self, store_hint: str = "") -> str:
        """What diverged, for a person: the step, the recorded and the new call, a text diff."""
        if self.divergence is None:
            return f"session {self.session_id}: same (replayed as {self.replay_id})"
        d = self.divergence
        lines = [f"session {self.session_id} {d.headline()}"]
        lines.append(f"  expected: {d.expected_text}")
        lines.append(f"  actual:   {d.actual_text}")
        if (
            d.expected is not _NOTHING
            and d.actual is not _NOTHING
            and d.reason != "error"
            and not _same(d.expected, d.actual)
        ):
            path, e, a = _first_difference(d.expected, d.actual, d.field)
            lines.extend(_explain_difference(path, e, a))
        if self.replay_id:
            lines.append(
                f"  replayed as {self.replay_id}"
                + (f" (agent-trace{store_hint} show {self.replay_id})" if store_hint else "")
            )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "replay_id": self.replay_id,
            "result": "diverged" if self.diverged else "same",
            "divergence": self.divergence.to_dict() if self.divergence else None,
            "first_decision_changed": self.first_decision,
            "tool_choice_changed": self.tool_choice,
            "final_answer_changed": self.final_answer,
            "before": self.before.to_dict(),
            "after": self.after.to_dict() if self.after else None,
            "replay_ms": self.elapsed_ms,
        }


def _explain_difference(path: str, expected: Any, actual: Any) -> list[str]:
    if expected is _ABSENT:
        return [f"  at {path}: not in the recording, now {_short(actual, 100)}"]
    if actual is _ABSENT:
        return [f"  at {path}: missing now, recorded {_short(expected, 100)}"]
    if (
        isinstance(expected, str)
        and isinstance(actual, str)
        and (max(len(expected), len(actual)) > 60 or "\n" in expected + actual)
    ):
        return [
            f"  at {path} (text diff):",
            *("    " + line for line in text_diff(expected, actual)),
        ]
    if isinstance(expected, list) and isinstance(actual, list) and len(expected) != len(actual):
        # The shorter list matches the longer one's start: show what one has on top.
        longer, side = (expected, "recorded") if len(expected) > len(actual) else (actual, "new")
        extra = longer[min(len(expected), len(actual)) :]
        return [
            f"  at {path}: {len(expected)} items recorded, {len(actual)} now; {side} also:",
            *(f"    {_short(item, 150)}" for item in extra[:3]),
            *([f"    (and {len(extra) - 3} more)"] if len(extra) > 3 else []),
        ]
    return [f"  at {path}: recorded {_short(expected, 100)}, now {_short(actual, 100)}"]


def text_diff(expected: str, actual: str, context: int = 6, hunks: int = 3) -> list[str]:
    """A short word diff of two long texts: ``…words [-old-]{+new+} words…`` per change."""
    a, b = re.split(r"(\s+)", expected), re.split(r"(\s+)", actual)
    matcher = difflib.SequenceMatcher(None, a, b, autojunk=False)
    out = []
    for group in matcher.get_grouped_opcodes(context * 2):  # words and the spaces between
        pieces = []
        for tag, i1, i2, j1, j2 in group:
            if tag == "equal":
                pieces.append("".join(a[i1:i2]))
                continue
            if i2 > i1:
                pieces.append("[-" + "".join(a[i1:i2]) + "-]")
            if j2 > j1:
                pieces.append("{+" + "".join(b[j1:j2]) + "+}")
        first, last = group[0], group[-1]
        head = "…" if first[1] > 0 else ""
        tail = "…" if last[2] < len(a) else ""
        out.append(_cut(head + "".join(pieces).replace("\n", "⏎") + tail, 300))
        if len(out) == hunks:
            remaining = len(list(matcher.get_grouped_opcodes(context * 2))) - hunks
            if remaining > 0:
                out.append(f"(and {remaining} more changes)")
            break
    return out


def _ending(stats: RunStats) -> str:
    return f"status {stats.status}" + (f" ({stats.error})" if stats.error else "")


def _behaviour(events: Sequence[AgentEvent]) -> list[DecisionPoint]:
    return [p for p in decision_points(events) if p.kind != "llm"]


def _final(points: list[DecisionPoint]) -> Any:
    for p in reversed(points):
        if p.kind == "response":
            return p.value
    return None


def judge(
    recording: RecordedSession,
    replay_events: Sequence[AgentEvent],
    *,
    replay_id: str | None = None,
    divergences: Sequence[CallDivergence] = (),
    error: BaseException | None = None,
    output: Any = None,
    elapsed_ms: float = 0.0,
) -> SessionResult:
    """Compare a replay with its recording (see the module docstring for the order)."""
    before, after = RunStats.of(recording.events), RunStats.of(replay_events)
    expected, actual = _behaviour(recording.events), _behaviour(replay_events)
    diff = _diff(recording.session_id, replay_id or "", expected, actual)
    divergence: Divergence | None = None
    if divergences:
        d = divergences[0]
        divergence = Divergence(
            d.step,
            d.kind,
            d.name,
            d.reason,
            _NOTHING if d.reason == "unexpected_call" else d.expected,
            _NOTHING if d.reason == "not_called" else d.actual,
        )
    elif error is not None and not isinstance(error, ReplayDivergence):
        raised = f"{type(error).__name__}: {error}"
        if not (before.status == "error" and before.error == raised):
            e = diff.expected if diff else None
            divergence = Divergence(
                e.version if e else None,
                e.kind if e else "session",
                e.name if e else "end",
                "error",
                e.value if e else _ending(before),
                raised,
                e.field if e else "status",
            )
    if divergence is None and diff:
        e, x = diff.expected, diff.actual
        point = e or x
        assert point is not None
        reason = diff.reason or "different"
        if x is None:
            reason = "stops early: the replay has no such step"
        elif e is None:
            reason = "goes on past the end of the recording"
        divergence = Divergence(
            e.version if e else None,
            point.kind,
            point.name,
            reason,
            e.value if e else _NOTHING,
            x.value if x else _NOTHING,
            point.field,
        )
    if divergence is None and (before.status, before.error) != (after.status, after.error):
        divergence = Divergence(
            None,
            "session",
            "end",
            "ending",
            _ending(before),
            _ending(after),
            "status",
        )

    first = False
    if expected and divergence is not None:
        first = (diff and diff.index == 0) or (
            divergence.step is not None and divergence.step <= expected[0].version
        )
    tools_e = [(p.name, p.value) for p in expected if p.kind == "tool"]
    tools_a = [(p.name, p.value) for p in actual if p.kind == "tool"]
    tool_choice = any(
        n1 != n2 or not _same(a1, a2) for (n1, a1), (n2, a2) in zip(tools_e, tools_a, strict=False)
    )
    stopped = bool(divergences) or error is not None
    tool_choice = tool_choice or (not stopped and len(tools_e) != len(tools_a))
    tool_choice = tool_choice or (bool(divergences) and divergences[0].kind == "tool")
    if divergence is not None and divergence.step is not None:  # recorded tools skipped
        tool_choice = tool_choice or len(tools_a) < sum(
            p.kind == "tool" and p.version < divergence.step for p in expected
        )
    final_e, final_a = _final(expected), _final(actual)
    # A run stopped by a divergence or an exception has no answer to compare.
    final_answer = (final_a is not None or not stopped) and not _same(final_e, final_a)
    return SessionResult(
        recording.session_id,
        replay_id,
        before,
        after,
        divergence,
        bool(first),
        tool_choice,
        final_answer,
        output,
        elapsed_ms,
    )


# --- running ------------------------------------------------------------------------------


@dataclass
class _Replayed:
    recording: RecordedSession
    replay_id: str
    output: Any
    error: BaseException | None
    divergences: list[CallDivergence]
    elapsed_ms: float


async def _replay_one(
    target: Target, recording: RecordedSession, kinds: frozenset[str]
) -> _Replayed:
    run = replay(recording, mock=kinds, strict=True)
    output: Any = None
    error: BaseException | None = None
    t0 = time.perf_counter()
    try:
        async with run:
            output = await _call(target, recording)
    except Exception as exc:  # a divergence or the agent's own failure: judged below
        error = exc
    return _Replayed(
        recording, run.id, output, error, run.divergences, (time.perf_counter() - t0) * 1000
    )


def _judged(r: _Replayed, events: Sequence[AgentEvent]) -> SessionResult:
    return judge(
        r.recording,
        events,
        replay_id=r.replay_id,
        divergences=r.divergences,
        error=r.error,
        output=r.output,
        elapsed_ms=r.elapsed_ms,
    )


async def replay_and_judge(
    target: Target, recording: RecordedSession, mock: str | Iterable[str] = ("tool", "llm")
) -> SessionResult:
    """Replay one recording through ``target`` and judge it (the pytest plugin's step)."""
    replayed = await _replay_one(target, recording, parse_mock(mock))
    events = await _with_store(None, lambda s: s.get_events(replayed.replay_id))
    return _judged(replayed, events)


@dataclass
class RegressionReport:
    """Every session of a run, in selection order, and what changed overall."""

    target: str
    mock: tuple[str, ...]
    results: list[SessionResult]
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    @property
    def diverged(self) -> list[SessionResult]:
        return [r for r in self.results if r.diverged]

    def models(self) -> dict[str, tuple[ModelStats, ModelStats]]:
        """Per model: (before, after) totals across all sessions."""
        out: dict[str, tuple[ModelStats, ModelStats]] = {}
        for r in self.results:
            for side, stats in ((0, r.before), (1, r.after)):
                if stats is None:
                    continue
                for name, m in stats.models.items():
                    pair = list(out.get(name, (ModelStats(), ModelStats())))
                    pair[side] = _sum_models(pair[side], m)
                    out[name] = (pair[0], pair[1])
        return dict(sorted(out.items()))

    def summary(self) -> dict[str, Any]:
        def total(attr: str, side: str) -> Any:
            values = [getattr(getattr(r, side), attr) for r in self.results if getattr(r, side)]
            if attr == "cost_usd":
                cost = None
                for v in values:
                    cost = _add_cost(cost, v)
                return cost
            return sum(v or 0 for v in values)

        return {
            "sessions": len(self.results),
            "same": len(self.results) - len(self.diverged),
            "diverged": len(self.diverged),
            "first_decision_changed": sum(r.first_decision for r in self.results),
            "tool_choice_changed": sum(r.tool_choice for r in self.results),
            "final_answer_changed": sum(r.final_answer for r in self.results),
            "before": {
                "total_tokens": total("total_tokens", "before"),
                "cost_usd": total("cost_usd", "before"),
                "duration_ms": total("duration_ms", "before"),
            },
            "after": {
                "total_tokens": total("total_tokens", "after"),
                "cost_usd": total("cost_usd", "after"),
                "duration_ms": total("duration_ms", "after"),
            },
            "models": {
                name: {"before": _model_dict(b), "after": _model_dict(a)}
                for name, (b, a) in self.models().items()
            },
            "elapsed_s": self.elapsed_s,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "mock": list(self.mock),
            "ok": self.ok,
            "summary": self.summary(),
            "sessions": [r.to_dict() for r in self.results],
        }


def _sum_models(a: ModelStats, b: ModelStats) -> ModelStats:
    return ModelStats(
        a.calls + b.calls,
        a.input_tokens + b.input_tokens,
        a.output_tokens + b.output_tokens,
        a.total_tokens + b.total_tokens,
        _add_cost(a.cost_usd, b.cost_usd),
    )


async def run_regression(
    target: Target,
    recordings: Sequence[RecordedSession],
    *,
    mock: str | Iterable[str] = ("tool", "llm"),
    concurrency: int = 1,
    on_result: Callable[[], None] | None = None,
    name: str | None = None,
) -> RegressionReport:
    """Replay every recording through ``target`` and judge each; nothing is raised
    for a divergence (see ``RegressionReport.ok``). The replays are recorded into
    the configured store; they are read back once all have run (one flush)."""
    kinds = parse_mock(mock)
    started = time.perf_counter()
    replayed: list[_Replayed | None] = [None] * len(recordings)
    gate = asyncio.Semaphore(max(1, concurrency))

    async def one(i: int) -> None:
        async with gate:
            replayed[i] = await _replay_one(target, recordings[i], kinds)
        if on_result is not None:
            on_result()

    if concurrency <= 1:
        for i in range(len(recordings)):
            await one(i)
    else:
        await asyncio.gather(*(one(i) for i in range(len(recordings))))

    async def read_back(store: EventStore) -> list[SessionResult]:
        done = [r for r in replayed if r is not None]
        return [_judged(r, await store.get_events(r.replay_id)) for r in done]

    results = await _with_store(None, read_back)  # flushes the replays first
    label = name or getattr(target, "__qualname__", None) or repr(target)
    return RegressionReport(label, tuple(sorted(kinds)), results, time.perf_counter() - started)


# --- reports ------------------------------------------------------------------------------------

TABLE_COLUMNS = [
    "session",
    "result",
    "step",
    "call",
    "expected",
    "actual",
    "tokens",
    "cost",
    "duration",
]


_DIVERGENCE_COLUMNS = ("step", "call", "expected", "actual")


def _arrow(before: str, after: str) -> str:
    return before if before == after else f"{before} -> {after}"


def _money(value: float | None) -> str:
    """As the other commands show cost: ``$0.0123``; ``-`` when no call could be priced."""
    if value is None:
        return "-"
    return f"${value:,.2f}" if value >= 100 else f"${value:.4f}"


def table(report: RegressionReport) -> tuple[list[str], list[list[str]]]:
    """Columns and one row per session (before -> after where they differ); the
    divergence columns only when a session diverged."""
    rows = []
    for r in report.results:
        d, a = r.divergence, r.after
        where, expected, actual = ("", "", "") if d is None else d.cells()
        rows.append(
            [
                r.session_id,
                "diverged" if d else "same",
                "" if d is None else ("end" if d.step is None else str(d.step)),
                where,
                expected,
                actual,
                _arrow(f"{r.before.total_tokens:,}", f"{a.total_tokens:,}" if a else "-"),
                _arrow(_money(r.before.cost_usd), _money(a.cost_usd) if a else "-"),
                _arrow(_ms_text(r.before.duration_ms), _ms_text(a.duration_ms) if a else "-"),
            ]
        )
    if report.ok:
        keep = [i for i, c in enumerate(TABLE_COLUMNS) if c not in _DIVERGENCE_COLUMNS]
        return [TABLE_COLUMNS[i] for i in keep], [[row[i] for i in keep] for row in rows]
    return list(TABLE_COLUMNS), rows


def summary_lines(report: RegressionReport) -> list[str]:
    """How behaviour changed across all sessions, then tokens and cost per model."""
    s = report.summary()
    n = s["sessions"]
    lines = [
        f"{s['same']} of {n} sessions same, {s['diverged']} diverged"
        + (
            f": {s['first_decision_changed']} at the first decision, "
            f"{s['tool_choice_changed']} with a different tool choice, "
            f"{s['final_answer_changed']} with a different final answer"
            if s["diverged"]
            else ""
        )
        + f" ({report.elapsed_s:.2f} s, mock={','.join(report.mock) or 'none'})"
    ]
    lines.append("before -> after: " + _totals(s["before"], s["after"]))
    for model, pair in s["models"].items():
        mb, ma = pair["before"], pair["after"]
        calls = _arrow(str(mb["calls"]), str(ma["calls"]))
        lines.append(f"  {model}: calls {calls}, " + _totals(mb, ma))
    return lines


def _totals(before: dict[str, Any], after: dict[str, Any]) -> str:
    tokens = _arrow(f"{before['total_tokens']:,}", f"{after['total_tokens']:,}")
    return f"tokens {tokens}, cost {_arrow(_money(before['cost_usd']), _money(after['cost_usd']))}"


def write_junit_xml(report: RegressionReport, path: str | os.PathLike[str]) -> None:
    """A JUnit XML file with one test case per session (name = session id)."""
    failures = len(report.diverged)
    suites = ET.Element("testsuites", tests=str(len(report.results)), failures=str(failures))
    suite = ET.SubElement(
        suites,
        "testsuite",
        name=f"agent-trace test {report.target}",
        tests=str(len(report.results)),
        failures=str(failures),
        errors="0",
        skipped="0",
        time=f"{report.elapsed_s:.3f}",
    )
    for r in report.results:
        case = ET.SubElement(
            suite,
            "testcase",
            classname=f"agent_trace.replay.{report.target}",
            name=r.session_id,
            time=f"{r.elapsed_ms / 1000:.3f}",
        )
        if r.divergence is not None:
            failure = ET.SubElement(
                case, "failure", message=r.divergence.headline(), type=r.divergence.reason
            )
            failure.text = r.explain()
        out = ET.SubElement(case, "system-out")
        a = r.after
        out.text = (
            f"replayed as {r.replay_id}; tokens {r.before.total_tokens} -> "
            f"{a.total_tokens if a else '-'}; cost {_money(r.before.cost_usd)} -> "
            f"{_money(a.cost_usd) if a else '-'}; duration {_ms_text(r.before.duration_ms)} -> "
            f"{_ms_text(a.duration_ms) if a else '-'}"
        )
    ET.indent(suites)
    Path(path).write_bytes(ET.tostring(suites, encoding="utf-8", xml_declaration=True) + b"\n")
