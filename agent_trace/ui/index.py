"""The UI's in-memory index of every session, kept current by following the global log.

``SessionIndex.add(events)`` folds events in ``position`` order into one row
per session (its ``SessionSummary`` fields, tools, models, cost, a bounded
search text) and into cross-session stats (tools, models, days). ``follow``
reads ``read_all(after_position=...)`` pages forever, so the index catches up
once at start and then picks up new events within a poll interval; queries
(``sessions``, ``stats``) answer from memory, never from the store.

Reads only through the store protocol; never writes. The summary semantics
are those of ``agent_trace.projections`` (the same fold), so the list shows
what ``agent-trace sessions`` shows.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import orjson

from agent_trace import projections
from agent_trace.events import AgentEvent
from agent_trace.llm import token_counts
from agent_trace.projections import _apply_summary, _finish_summary, _new_summary, _percentile

if TYPE_CHECKING:
    from agent_trace.stores.base import EventStore

__all__ = ["Query", "SessionIndex", "SessionRow", "SORT_KEYS"]

log = logging.getLogger("agent_trace.ui")

#: Characters of searchable text kept per session (metadata, user messages,
#: final responses, errors): enough for what people search, bounded memory.
TEXT_LIMIT = 2000
PER_PAGE = 50
MAX_PER_PAGE = 500


@dataclass(slots=True)
class SessionRow:
    """One session as the list shows it."""

    session_id: str
    first_position: int
    summary: dict[str, Any]  # projections' summary dict, folded event by event
    events: int = 0
    tool_calls: int = 0
    tools: dict[str, None] = field(default_factory=dict)
    models: dict[str, None] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    text: str = ""

    @property
    def started_at(self) -> str:
        return self.summary["started_at"] or ""

    @property
    def cost(self) -> float | None:
        """USD, derived from the prices known now; None when no call could be priced."""
        cost = self.summary.get("cost_usd")
        return cost if isinstance(cost, (int, float)) else None

    @property
    def failures(self) -> int:
        return len(self.summary["errors"])

    @property
    def status(self) -> str:
        return str(self.summary["status"])

    @property
    def failed(self) -> bool:
        return self.status in ("error", "cancelled") or bool(self.summary["errors"])

    @property
    def duration_ms(self) -> float | None:
        d = self.summary["duration_ms"]
        if d is None and self.summary["started_at"] is not None:
            d = _finish_summary(self.summary).duration_ms  # still open: first to last event
        return d if isinstance(d, (int, float)) else None

    def to_dict(self) -> dict[str, Any]:
        """The row as ``agent-trace sessions --json`` shows a session, plus models and cost."""
        s = self.summary
        return {
            "session_id": self.session_id,
            "started_at": s["started_at"],
            "last_activity": s["last_activity"],
            "duration_ms": self.duration_ms,
            "events": self.events,
            "tool_calls": self.tool_calls,
            "tools": sorted(self.tools),
            "models": sorted(self.models),
            "llm_calls": s["llm_calls"],
            "tokens": s["total_tokens"],
            "input_tokens": s["input_tokens"],
            "output_tokens": s["output_tokens"],
            "cost_usd": self.cost,
            "failures": self.failures,
            "status": self.status,
            "metadata": self.metadata,
        }


def _none_last(value: Any) -> tuple[bool, Any]:
    return (value is None, value)


#: Sort keys of the list (``?sort=``): what each column sorts by.
SORT_KEYS: dict[str, Callable[[SessionRow], Any]] = {
    "started": lambda r: (r.started_at, r.first_position),
    "session": lambda r: r.session_id,
    "duration": lambda r: r.duration_ms or 0.0,
    "events": lambda r: r.events,
    "tools": lambda r: r.tool_calls,
    "tokens": lambda r: r.summary["total_tokens"],
    "cost": lambda r: r.cost if r.cost is not None else -1.0,
    "failures": lambda r: r.failures,
    "status": lambda r: r.status,
}


@dataclass(frozen=True, slots=True)
class Query:
    """A search of the session list, as it appears in the page's URL."""

    q: str = ""
    tool: str = ""
    model: str = ""
    status: str = ""  # ok, error, cancelled, open, failed (any failure)
    since: str = ""  # YYYY-MM-DD (or an ISO datetime): started on or after
    until: str = ""  # YYYY-MM-DD (or an ISO datetime): started on or before (that day included)
    sort: str = "started"
    order: str = "desc"
    page: int = 1
    per_page: int = PER_PAGE

    @classmethod
    def from_params(cls, params: Any) -> Query:
        """From URL query parameters; a bad value raises ``ValueError`` naming it."""
        get = params.get
        sort = get("sort") or "started"
        if sort not in SORT_KEYS:
            raise ValueError(f"sort={sort!r}: use one of {', '.join(SORT_KEYS)}")
        order = get("order") or ("asc" if sort in ("session", "status") else "desc")
        if order not in ("asc", "desc"):
            raise ValueError(f"order={order!r}: use asc or desc")
        status = (get("status") or "").strip().lower()
        if status and status not in ("ok", "error", "cancelled", "open", "failed"):
            raise ValueError(f"status={status!r}: use ok, error, cancelled, open or failed")
        since, until = (get("since") or "").strip(), (get("until") or "").strip()
        for name, value in (("since", since), ("until", until)):
            if value and not _looks_like_date(value):
                raise ValueError(f"{name}={value!r}: use a date such as 2026-11-26")
        return cls(
            q=(get("q") or "").strip(),
            tool=(get("tool") or "").strip(),
            model=(get("model") or "").strip(),
            status=status,
            since=since,
            until=until,
            sort=sort,
            order=order,
            page=_int_param(get("page"), "page", 1, 1, 10**9),
            per_page=_int_param(get("per_page"), "per_page", PER_PAGE, 1, MAX_PER_PAGE),
        )

    def params(self, **changes: Any) -> dict[str, str]:
        """The URL parameters of this query (defaults left out), with ``changes``."""
        values = {
            "q": self.q,
            "tool": self.tool,
            "model": self.model,
            "status": self.status,
            "since": self.since,
            "until": self.until,
            "sort": self.sort,
            "order": self.order,
            "page": self.page,
            "per_page": self.per_page,
        }
        values.update(changes)
        defaults = Query()
        out = {}
        for k, v in values.items():
            default = getattr(defaults, k)
            if k == "order" and v == ("asc" if values["sort"] in ("session", "status") else "desc"):
                continue
            if v != default and v not in ("", None):
                out[k] = str(v)
        return out

    @property
    def filtered(self) -> bool:
        return any((self.q, self.tool, self.model, self.status, self.since, self.until))


def _looks_like_date(text: str) -> bool:
    from datetime import datetime

    try:
        datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


def _int_param(text: str | None, name: str, default: int, lo: int, hi: int) -> int:
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{name}={text!r}: not a whole number") from None
    if not lo <= value <= hi:
        raise ValueError(f"{name}={value}: must be between {lo} and {hi}")
    return value


class SessionIndex:
    """Sessions and cross-session stats, folded from the global log in position order."""

    def __init__(self) -> None:
        self.rows: dict[str, SessionRow] = {}
        self.position = 0  # the last position folded
        self.event_count = 0
        self.caught_up = False  # True once the log was read to its end at least once
        self.caught_up_after: float | None = None  # seconds from follow() start
        self.error: str | None = None  # the store's last read error, while it lasts
        self.tools: dict[str, dict[str, Any]] = {}
        self.models: dict[str, dict[str, Any]] = {}
        self.days: dict[str, dict[str, Any]] = {}
        self._results: dict[Query, tuple[int, list[SessionRow]]] = {}
        self._stats: tuple[int, dict[str, Any]] | None = None

    # --- folding -------------------------------------------------------------

    def add(self, events: Iterable[AgentEvent]) -> None:
        """Fold events that follow ``position`` (a ``read_all`` page)."""
        rows = self.rows
        for ev in events:
            if ev.position <= self.position:
                continue  # already folded (a re-read page)
            self.position = ev.position
            self.event_count += 1
            row = rows.get(ev.session_id)
            if row is None:
                row = rows[ev.session_id] = SessionRow(
                    ev.session_id, ev.position, _new_summary(ev.session_id)
                )
                row.text = ev.session_id.lower()
                self._day(ev.timestamp)["sessions"] += 1
            summary = row.summary
            errors_before = len(summary["errors"])
            cost_before = summary.get("cost_usd")
            _apply_summary(summary, ev)
            row.events += 1
            day = self._day(ev.timestamp)
            day["events"] += 1
            t, p = ev.event_type, ev.payload
            if len(summary["errors"]) > errors_before:
                day["failures"] += 1
                self._add_text(row, summary["errors"][-1])
            if t == "tool_executed" or t == "tool_failed":
                self._tool(row, t, p)
            elif t == "llm_responded" or t == "llm_failed":
                # The summary priced the call (projections.llm_cost): its cost is what
                # the session's total grew by (a $0 call after priced ones reads as unknown).
                cost_after = summary.get("cost_usd")
                cost = None
                if cost_after is not None and cost_after != cost_before:
                    cost = cost_after - (cost_before or 0.0)
                self._llm(row, ev, day, cost)
            elif t == "session_started":
                meta = p.get("metadata")
                if isinstance(meta, dict) and not row.metadata:
                    row.metadata = meta
                    self._add_text(row, orjson.dumps(meta, default=str).decode())
            elif t == "user_message_received":
                self._add_text(row, p.get("message"))
            elif t == "response_generated":
                self._add_text(row, p.get("response"))

    def _tool(self, row: SessionRow, t: str, p: dict[str, Any]) -> None:
        name = p.get("tool")
        name = name if isinstance(name, str) else "?"
        row.tool_calls += 1
        row.tools[name] = None
        s = self.tools.get(name)
        if s is None:
            s = self.tools[name] = {"calls": 0, "failures": 0, "durations": []}
        s["calls"] += 1
        if t == "tool_failed":
            s["failures"] += 1
        d = p.get("duration_ms")
        if isinstance(d, (int, float)) and not isinstance(d, bool):
            s["durations"].append(d)

    def _llm(
        self, row: SessionRow, ev: AgentEvent, day: dict[str, Any], cost: float | None
    ) -> None:
        p = ev.payload
        model = p.get("response_model") or p.get("model")
        model = model if isinstance(model, str) else "unknown"
        row.models[model] = None
        m = self.models.get(model)
        if m is None:
            m = self.models[model] = {
                "calls": 0,
                "failures": 0,
                "input_tokens": 0,
                "output_tokens": 0,
                "total_tokens": 0,
                "cost_usd": None,
            }
        m["calls"] += 1
        day["llm_calls"] += 1
        if ev.event_type == "llm_failed":
            m["failures"] += 1
            return
        usage = p.get("usage")
        if isinstance(usage, dict):
            inp, out, total = token_counts(usage)
            m["input_tokens"] += inp
            m["output_tokens"] += out
            m["total_tokens"] += total
            day["tokens"] += total
        if cost is not None:
            m["cost_usd"] = (m["cost_usd"] or 0.0) + cost
            day["cost_usd"] = (day["cost_usd"] or 0.0) + cost

    def _day(self, timestamp: str) -> dict[str, Any]:
        d = timestamp[:10]
        day = self.days.get(d)
        if day is None:
            day = self.days[d] = {
                "sessions": 0,
                "events": 0,
                "llm_calls": 0,
                "tokens": 0,
                "cost_usd": None,
                "failures": 0,
            }
        return day

    @staticmethod
    def _add_text(row: SessionRow, value: Any) -> None:
        room = TEXT_LIMIT - len(row.text)
        if room <= 0 or value is None:
            return
        text = value if isinstance(value, str) else orjson.dumps(value, default=str).decode()
        row.text += "\n" + text[:room].lower()

    # --- following the store ------------------------------------------------

    async def follow(
        self,
        store: EventStore,
        stop: asyncio.Event,
        poll_interval: float = 0.5,
        *,
        wake: asyncio.Event | None = None,
    ) -> None:
        """Catch up with the store, then keep folding new events until ``stop`` is set.

        Between polls it waits ``poll_interval`` seconds, or until ``wake`` is
        set (by a route that just wrote). A read error is kept in ``error``
        (shown by the UI) and retried with backoff; the index keeps what it has.
        """
        started = time.perf_counter()
        wait_for_events = getattr(store, "wait_for_events", None)
        backoff = poll_interval
        while not stop.is_set():
            try:
                with projections._fewer_gc_passes():
                    async for page in projections._scan(store, self.position):
                        self.add(page)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.error = f"{type(exc).__name__}: {exc}"
                log.warning("agent-trace ui: cannot read the store: %s", self.error)
                await _wait(stop, backoff, wake)
                backoff = min(backoff * 2, 10.0)
                continue
            self.error = None
            backoff = poll_interval
            if not self.caught_up:
                self.caught_up = True
                self.caught_up_after = time.perf_counter() - started
            if wait_for_events is not None:
                with contextlib.suppress(Exception):
                    await wait_for_events(self.position, poll_interval)
                    continue
            await _wait(stop, poll_interval, wake)

    # --- queries ---------------------------------------------------------------

    def sessions(self, query: Query) -> tuple[int, list[SessionRow]]:
        """``(total matching, the rows of the query's page)``.

        The matching rows are kept (until the index moves) per search and
        sort, so paging through one result costs a slice.
        """
        key = replace(query, page=1, per_page=PER_PAGE)
        cached = self._results.get(key)
        if cached is None or cached[0] != self.position:
            matched = [r for r in self.rows.values() if _matches(r, query)]
            matched.sort(key=SORT_KEYS[query.sort], reverse=query.order == "desc")
            if len(self._results) > 64:
                self._results.clear()
            cached = self._results[key] = (self.position, matched)
        matched = cached[1]
        start = (query.page - 1) * query.per_page
        return len(matched), matched[start : start + query.per_page]

    def near(self, session_id: str, n: int = 5) -> list[str]:
        """Session ids like ``session_id`` (prefix or close spelling), for a 404 page."""
        ids = list(self.rows)
        near = [i for i in ids if session_id and (i.startswith(session_id) or session_id in i)]
        near = near[:n]
        if len(ids) <= 20_000:  # difflib compares with every id: skip it on big stores
            near += [i for i in difflib.get_close_matches(session_id, ids, n=n) if i not in near]
        return near[:n]

    def stats(self) -> dict[str, Any]:
        """Tools, models, tokens, cost and per-day totals (cached per position)."""
        if self._stats is not None and self._stats[0] == self.position:
            return self._stats[1]
        tools = {}
        for name in sorted(self.tools):
            t = self.tools[name]
            ds = sorted(t["durations"])
            tools[name] = {
                "calls": t["calls"],
                "failures": t["failures"],
                "failure_rate": t["failures"] / t["calls"] if t["calls"] else 0.0,
                "p50_ms": _percentile(ds, 50),
                "p95_ms": _percentile(ds, 95),
                "mean_ms": sum(ds) / len(ds) if ds else None,
            }
        models = {name: dict(self.models[name]) for name in sorted(self.models)}
        costs = [m["cost_usd"] for m in models.values() if m["cost_usd"] is not None]
        rows = self.rows.values()
        out = {
            "sessions": len(self.rows),
            "events": self.event_count,
            "failed_sessions": sum(1 for r in rows if r.failed),
            "llm_calls": sum(m["calls"] for m in models.values()),
            "input_tokens": sum(m["input_tokens"] for m in models.values()),
            "output_tokens": sum(m["output_tokens"] for m in models.values()),
            "total_tokens": sum(m["total_tokens"] for m in models.values()),
            "cost_usd": sum(costs) if costs else None,
            "tools": tools,
            "models": models,
            "days": {d: dict(self.days[d]) for d in sorted(self.days)},
            "position": self.position,
        }
        self._stats = (self.position, out)
        return out

    def status(self) -> dict[str, Any]:
        """Where the index stands (for live updates and the pages' banner)."""
        return {
            "position": self.position,
            "sessions": len(self.rows),
            "events": self.event_count,
            "caught_up": self.caught_up,
            "error": self.error,
        }


def _matches(row: SessionRow, q: Query) -> bool:
    if q.tool and q.tool not in row.tools:
        return False
    if q.model and q.model not in row.models:
        return False
    if q.status:
        if q.status == "failed":
            if not row.failed:
                return False
        elif row.status != q.status:
            return False
    started = row.started_at
    if q.since and started < q.since:
        return False
    # A bare date includes that whole day: compare on the date's own length.
    if q.until and started[: len(q.until)] > q.until:
        return False
    if q.q:
        text = row.text
        return all(word in text for word in q.q.lower().split())
    return True


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


async def _wait(stop: asyncio.Event, seconds: float, wake: asyncio.Event | None) -> None:
    """Sleep ``seconds``, or less if ``stop`` or ``wake`` is set (``wake`` is then cleared)."""
    waiters = [asyncio.ensure_future(stop.wait())]
    if wake is not None:
        waiters.append(asyncio.ensure_future(wake.wait()))
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
        if wake is not None:
            wake.clear()
