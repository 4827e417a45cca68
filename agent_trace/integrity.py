"""Verify the per-session hash chain: is the stored history what was written?

Each stored event carries ``prev_hash`` (the previous event's hash, 64 zeros
for version 1) and ``hash = sha256(prev_hash + canonical(event))`` (SPEC 8),
computed by the store inside the append transaction. Verification reads the
stored form (``raw=True``: no upcasting) and recomputes the chain, so any
edited field, deleted, reordered or inserted event, or forged hash shows up
as the first version where the chain breaks.

Byte for byte: a store that offers ``stored_rows`` (all built-in stores)
hands over the payload text as stored, and a text that is not exactly the
canonical JSON of what it parses to (a duplicate key, other whitespace,
another spelling of a number) fails, so no JSON reader can see a value the
hash did not cover. ``verify_store`` also walks the store chain, a second
chain over every event in position order (``store_hash = sha256(prev +
position + ":" + hash)``), which the per-session chains cannot see: it
detects positions swapped, removed or inserted across sessions. Rows written
by releases before the store chain carry no link (NULL); the chain starts
after them. ``docs/hashing.md`` writes the scheme down with test vectors.

What the chain cannot show by itself is a cut-off tail: a session truncated
after version n is a valid chain of n events. ``session_head()`` returns the
latest (version, hash); keep it somewhere the store's writers cannot change
(another database, a signed log, a ticket) and pass it back as
``expected_head`` to detect truncation or a rewritten chain.

Read-only: never appends, never repairs.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from agent_trace.events import (
    GENESIS_HASH,
    AgentEvent,
    EventFieldError,
    check_event,
    compute_hash,
    event_from_values,
    store_link,
)

if TYPE_CHECKING:
    from agent_trace.stores.base import EventStore

__all__ = [
    "SessionHead",
    "StoreVerification",
    "VerificationResult",
    "check_chain",
    "check_rows",
    "row_problem",
    "session_head",
    "verify_session",
    "verify_store",
]

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True, slots=True)
class SessionHead:
    """A session's last version and hash: an anchor to keep outside the store."""

    session_id: str
    version: int
    hash: str

    def to_dict(self) -> dict[str, Any]:
        return {"session_id": self.session_id, "version": self.version, "hash": self.hash}

    @classmethod
    def from_value(cls, value: Any, session_id: str = "") -> SessionHead:
        """A head from a ``SessionHead``, a ``(version, hash)`` pair or a dict."""
        if isinstance(value, SessionHead):
            return value
        if isinstance(value, Mapping):
            return cls(
                str(value.get("session_id", session_id)), int(value["version"]), value["hash"]
            )
        if isinstance(value, (tuple, list)) and len(value) == 2:
            return cls(session_id, int(value[0]), str(value[1]))
        raise TypeError(
            f"expected_head must be a SessionHead, a (version, hash) pair or a dict, got {value!r}"
        )


@dataclass(frozen=True, slots=True)
class VerificationResult:
    """What ``verify_session`` found. Truthy when the chain is intact."""

    session_id: str
    ok: bool
    events_checked: int
    first_bad_version: int | None = None
    reason: str | None = None
    #: The last verified (version, hash); None for an empty session.
    head: SessionHead | None = None

    def __bool__(self) -> bool:
        return self.ok

    def __str__(self) -> str:
        if self.ok:
            return f"session {self.session_id!r}: ok, {self.events_checked} events"
        return (
            f"session {self.session_id!r}: FAILED at version {self.first_bad_version}: "
            f"{self.reason} ({self.events_checked} events checked)"
        )


@dataclass(frozen=True, slots=True)
class StoreVerification:
    """What ``verify_store`` found: every session checked, every failure listed.

    A break in the global order (the store chain) is listed as a failure with
    session id ``"*"``; ``store_head`` is the last (position, store hash),
    an anchor for ``expected_store_head`` like :class:`SessionHead`.
    """

    ok: bool
    sessions_checked: int
    events_checked: int
    failures: list[VerificationResult] = field(default_factory=list)
    store_head: tuple[int, str] | None = None
    #: Incremental run: the position of the head verified by an earlier run,
    #: after which this run read the events (None: a full run, every event read).
    #: ``events_checked`` counts the events before it too.
    resumed_after: int | None = None

    def __bool__(self) -> bool:
        return self.ok

    def __str__(self) -> str:
        head = (
            f"{self.sessions_checked} sessions, {self.events_checked} events: "
            f"{'ok' if self.ok else f'{len(self.failures)} FAILED'}"
        )
        return "\n".join([head, *(str(f) for f in self.failures)])


def check_chain(
    session_id: str,
    events: Sequence[AgentEvent],
    expected_head: SessionHead | tuple[int, str] | Mapping[str, Any] | None = None,
) -> VerificationResult:
    """Verify one session's stored events (as read with ``raw=True``), in version order.

    Pure: no I/O. Stops at the first break, since every later hash depends on it.
    """
    prev = GENESIS_HASH
    hashes: list[str] = []
    for i, ev in enumerate(events, start=1):
        reason = _break(session_id, ev, i, prev)
        if reason is not None:
            return VerificationResult(
                session_id, False, i - 1, i, reason, _head(session_id, i - 1, prev)
            )
        prev = ev.hash
        hashes.append(prev)
    n = len(events)
    head = _head(session_id, n, prev)
    if expected_head is not None:
        anchor = SessionHead.from_value(expected_head, session_id)
        if anchor.version > n:
            return VerificationResult(
                session_id,
                False,
                n,
                n + 1,
                f"truncated: the store ends at version {n} but the anchored head is version "
                f"{anchor.version}",
                head,
            )
        stored = hashes[anchor.version - 1] if anchor.version > 0 else GENESIS_HASH
        if stored != anchor.hash:
            return VerificationResult(
                session_id,
                False,
                n,
                max(anchor.version, 1),
                f"rewritten: the hash at version {anchor.version} is {stored[:12]}…, the anchored "
                f"head says {anchor.hash[:12]}…",
                head,
            )
    return VerificationResult(session_id, True, n, None, None, head)


def _break(
    session_id: str, ev: AgentEvent, expected: int, prev: str, payload_json: bytes | None = None
) -> str | None:
    """Why ``ev`` does not extend the chain at version ``expected``, or None if it does.

    ``payload_json``: the payload's canonical bytes, when already at hand.
    """
    if ev.session_id != session_id:
        return f"event {ev.event_id} belongs to session {ev.session_id!r}"
    if ev.version != expected:
        if ev.version > expected:
            return (
                f"version gap: expected version {expected}, found {ev.version} "
                "(an event was deleted)"
            )
        return (
            f"version {ev.version} out of order where {expected} was expected "
            "(events reordered or inserted)"
        )
    if ev.prev_hash != prev:
        return (
            f"prev_hash does not match the hash of version {expected - 1} "
            "(an event was deleted, inserted or reordered, or a hash was forged)"
        )
    if not isinstance(ev.hash, str) or not _HEX64.match(ev.hash):
        return f"hash {ev.hash!r} is not 64 lowercase hex digits"
    try:
        actual = compute_hash(ev, payload_json=payload_json)
    except TypeError as exc:
        return f"event cannot be canonicalized: {exc}"
    if actual != ev.hash:
        return (
            "hash does not match the event's content "
            "(payload, type, timestamp, ids or schema version were edited)"
        )
    return None


def check_rows(
    session_id: str,
    rows: Sequence[Sequence[Any]],
    expected_head: SessionHead | tuple[int, str] | Mapping[str, Any] | None = None,
) -> VerificationResult:
    """Verify one session's rows exactly as stored (``stored_rows``), in version order.

    Besides the hash chain (:func:`check_chain`), every stored value must have
    its type and shape and the payload text must be canonical, byte for byte.
    """
    events: list[AgentEvent] = []
    for i, row in enumerate(rows, start=1):
        problem, ev = row_problem(row)
        if ev is None:
            prefix = check_chain(session_id, events)
            if not prefix.ok:
                return prefix
            return VerificationResult(session_id, False, i - 1, i, problem, prefix.head)
        events.append(ev)
    return check_chain(session_id, events, expected_head)


_SORT = orjson.OPT_SORT_KEYS


def row_problem(row: Sequence[Any]) -> tuple[str | None, AgentEvent | None]:
    """``(None, event)`` for a row a valid append could have written, else
    ``(why not, None)``: a value of the wrong type or shape, or a payload
    text that is not the canonical text of what it parses to."""
    if len(row) < 12:
        return f"the row has {len(row)} columns, expected 12 or more", None
    text = row[4]
    if not isinstance(text, str):
        return "the stored payload is not UTF-8 text", None
    try:
        payload = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        return f"the stored payload is not JSON ({exc})", None
    if type(payload) is not dict:
        return "the stored payload is not a JSON object", None
    try:
        canonical = orjson.dumps(payload, option=_SORT)
    except TypeError as exc:
        return f"the stored payload cannot be canonicalized ({exc})", None
    if canonical != text.encode():
        return (
            "the stored payload text is not the canonical text of what it parses to (a "
            "duplicate key, other whitespace or another number spelling): a JSON reader "
            "could see values the hash does not cover"
        ), None
    ev = event_from_values(*row[:4], payload, *row[5:12])  # type: ignore[call-arg]
    try:
        check_event(ev)
    except EventFieldError as exc:
        return f"stored {exc}", None
    return None, ev


def _head(session_id: str, version: int, digest: str) -> SessionHead | None:
    return SessionHead(session_id, version, digest) if version > 0 else None


# --- reading the store ------------------------------------------------------


async def _raw_events(store: EventStore, session_id: str) -> list[AgentEvent]:
    """The session as stored (no upcasting); stores predating ``raw=`` read as usual."""
    try:
        return await store.get_events(session_id, raw=True)  # type: ignore[call-arg]
    except TypeError as exc:
        if "raw" not in str(exc):
            raise
        return await store.get_events(session_id)


# What a store that cannot be read raises: a corrupt SQLite file, a broken
# JSONL file, an unreadable or vanished file. Reported, never raised.
_UNREADABLE = (sqlite3.Error, OSError, UnicodeError, orjson.JSONDecodeError)


def _unreadable(session_id: str, exc: BaseException) -> VerificationResult:
    return VerificationResult(
        session_id, False, 0, None, f"the store cannot be read: {type(exc).__name__}: {exc}"
    )


async def _guarded(
    store: EventStore | str | None, fn: Callable[[EventStore], Awaitable[Any]]
) -> Any:
    from agent_trace.reading import _with_store
    from agent_trace.stores.base import StoreError

    try:
        return await _with_store(store, fn)
    except (StoreError, *_UNREADABLE) as exc:
        return exc


async def verify_session(
    session_id: str,
    store: EventStore | str | None = None,
    *,
    expected_head: SessionHead | tuple[int, str] | Mapping[str, Any] | None = None,
) -> VerificationResult:
    """Recompute ``session_id``'s hash chain from the stored events.

    ``expected_head`` (from :func:`session_head`, kept elsewhere) also detects
    a truncated tail or a chain rewritten from some version on. A store that
    cannot be read (a corrupt file) is a failed result with the reason.
    """

    async def run(s: EventStore) -> VerificationResult:
        rows_of = getattr(s, "stored_rows", None)
        if rows_of is not None:
            return check_rows(session_id, await rows_of(session_id), expected_head)
        return check_chain(session_id, await _raw_events(s, session_id), expected_head)

    result = await _guarded(store, run)
    if isinstance(result, BaseException):
        return _unreadable(session_id, result)
    return result  # type: ignore[no-any-return]


_PAGE = 10_000


async def verify_store(
    store: EventStore | str | None = None,
    *,
    expected_heads: Mapping[str, Any] | Iterable[SessionHead] | None = None,
    expected_store_head: tuple[int, str] | None = None,
    progress: Callable[[int], object] | None = None,
    incremental: bool = False,
) -> StoreVerification:
    """Verify every session and the global order; report all failures (not just the first).

    Every run reads every event (what SPEC 8 promises: an edit is found
    whenever it happened). A run that finds no failure also remembers, in the
    store itself (projection ``agent_trace.verified``, through the projection
    API every bundled store offers), the verified head of the global order
    and of each session, for ``incremental=True``: such a run first re-checks
    that the remembered head still matches the stored row at its position
    (same position, event hash and store chain link: a rewrite of earlier
    history that changes the head, a truncation or removal below it, is
    found), then checks only the events after it, continuing each session's
    chain and the store chain from the remembered heads. It does not re-read
    events before the head: an in-place edit of an already verified event
    that leaves the head row as it was is found by a full run only.

    ``expected_heads`` (session id -> head, or a list of ``SessionHead``) also
    flags truncated sessions and sessions that disappeared altogether;
    ``expected_store_head`` (a ``StoreVerification.store_head`` kept
    elsewhere) flags a store cut off after that position. A store that
    cannot be read is a failed verification with the reason. ``progress`` is
    called with the number of events checked so far, after each page.
    """
    anchors = _anchors(expected_heads)

    async def run(s: EventStore) -> StoreVerification:
        if getattr(s, "stored_rows", None) is None:
            return await _verify_sessions(s, anchors)
        memory = await _VerifiedHead.load(s)
        result, verified = await _verify_rows(
            s, anchors, expected_store_head, progress, memory if incremental else None
        )
        if verified is not None and (memory is None or verified != memory):
            await verified.save(s, memory)
        return result

    result = await _guarded(store, run)
    if isinstance(result, BaseException):
        return StoreVerification(False, 0, 0, [_unreadable("*", result)])
    return result  # type: ignore[no-any-return]


async def _verify_sessions(s: EventStore, anchors: dict[str, SessionHead]) -> StoreVerification:
    """A store without ``stored_rows``: each session's chain, from parsed events."""
    infos = await s.list_sessions()
    failures: list[VerificationResult] = []
    events_checked = 0
    seen = set()
    for info in infos:
        sid = info.session_id
        seen.add(sid)
        result = check_chain(sid, await _raw_events(s, sid), anchors.get(sid))
        events_checked += result.events_checked
        if not result.ok:
            failures.append(result)
    failures.extend(_missing(anchors, seen))
    return StoreVerification(not failures, len(infos), events_checked, failures)


#: The projection name under which verify_store remembers what it verified.
VERIFIED_PROJECTION = "agent_trace.verified"


@dataclass(slots=True)
class _VerifiedHead:
    """What an earlier ``verify_store`` run verified: the global order up to
    ``position`` (store chain ``link``, ``chained`` once a link was seen) and
    each session's (version, hash) at that point."""

    position: int
    link: str
    chained: bool
    heads: dict[str, tuple[int, str]]
    # The projection checkpoint it was loaded at (compare-and-set); not compared.
    checkpoint: int = field(default=0, compare=False)

    @property
    def store_head(self) -> tuple[int, str] | None:
        return (self.position, self.link) if self.chained else None

    @classmethod
    async def load(cls, s: Any) -> _VerifiedHead | None:
        load = getattr(s, "load_projection", None)
        if load is None:
            return None
        state_json, checkpoint = await load(VERIFIED_PROJECTION)
        if state_json is None:
            return None
        try:
            state = orjson.loads(state_json)
            heads = {sid: (int(v), str(h)) for sid, (v, h) in state["heads"].items()}
            return cls(
                int(state["position"]), str(state["link"]), bool(state["chained"]), heads,
                checkpoint,
            )  # fmt: skip
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
            return None  # not ours or damaged: verify everything, then rewrite it

    async def save(self, s: Any, memory: _VerifiedHead | None) -> None:
        save = getattr(s, "save_projection", None)
        if save is None or self.position <= 0:
            return
        state = orjson.dumps(
            {
                "position": self.position,
                "link": self.link,
                "chained": self.chained,
                "heads": self.heads,
            }
        ).decode()
        from agent_trace.stores.base import StoreError

        try:
            await save(
                VERIFIED_PROJECTION, state, self.position, memory.checkpoint if memory else 0
            )
        except (StoreError, *_UNREADABLE):
            # A read-only store, or another run saved first: the result stands;
            # the next run just checks more.
            pass


async def _verify_rows(
    s: Any,
    anchors: dict[str, SessionHead],
    expected_store_head: tuple[int, str] | None,
    progress: Callable[[int], object] | None = None,
    memory: _VerifiedHead | None = None,
) -> tuple[StoreVerification, _VerifiedHead | None]:
    """One pass over the stored rows in position order: the store chain, and
    every session's chain as its events come (a session's versions follow
    its positions), keeping only each session's head in memory. With
    ``memory``, the pass starts after the remembered head, once that head's
    row is found unchanged. Also returns what to remember (None on a failure)."""
    heads: dict[str, tuple[int, str]] = {}  # session -> (version, hash) verified so far
    broken: dict[str, VerificationResult] = {}
    order: VerificationResult | None = None
    link, chained, last_position, positions = GENESIS_HASH, False, 0, 0
    after = 0
    if memory is not None and memory.position > 0:
        problem = await _head_problem(s, memory)
        if problem is not None:
            failure = _order_failure(1, problem)
            return StoreVerification(False, 0, 0, [failure], None, memory.position), None
        heads = dict(memory.heads)
        link, chained = memory.link, memory.chained
        last_position = after = memory.position
    while True:
        rows = await s.stored_rows(None, after, _PAGE)
        if not rows:
            break
        for row in rows:
            positions += 1
            position = row[6] if len(row) > 6 else None
            sid = row[1] if len(row) > 1 and isinstance(row[1], str) else repr(row[1:2])
            if order is None:
                stored_link = row[12] if len(row) > 12 else None
                if type(position) is not int or position <= last_position:
                    order = _order_failure(positions, f"position {position!r} out of order")
                elif stored_link is None:
                    if chained:
                        order = _order_failure(
                            positions,
                            f"position {position} has no store chain link after the chain "
                            "began (an event was inserted)",
                        )
                elif stored_link != store_link(link, position, str(row[11])):
                    order = _order_failure(
                        positions,
                        f"the store chain breaks at position {position}: events were swapped, "
                        "removed or inserted in the global order, or a link was forged",
                    )
                else:
                    link, chained = stored_link, True
                last_position = position if type(position) is int else last_position
            if sid in broken:
                continue
            version, prev = heads.get(sid, (0, GENESIS_HASH))
            problem, ev = row_problem(row)
            if ev is not None:
                # row_problem checked that the stored text is the canonical payload.
                problem = _break(sid, ev, version + 1, prev, row[4].encode())
            if problem is not None:
                broken[sid] = VerificationResult(
                    sid, False, version, version + 1, problem, _head(sid, version, prev)
                )
                continue
            assert ev is not None
            heads[sid] = (version + 1, ev.hash)
        if progress is not None:
            progress(positions)
        last = rows[-1][6]
        if type(last) is not int or last <= after:
            break
        after = last
    failures = list(broken.values())
    # Events the result vouches for, as a full run counts them: on an incremental
    # run, those before the remembered head were checked by an earlier run.
    events_checked = sum(v for v, _ in heads.values()) + sum(r.events_checked for r in failures)
    for sid, anchor in anchors.items():
        if sid in heads and sid not in broken:
            result = check_rows(sid, await s.stored_rows(sid), anchor)
            if not result.ok:
                failures.append(result)
    failures.extend(_missing(anchors, set(heads) | set(broken)))
    store_head = (last_position, link) if chained else None
    if order is None and expected_store_head is not None:
        anchor_position, anchor_link = expected_store_head
        if anchor_position > last_position:
            order = _order_failure(
                positions,
                f"truncated: the store ends at position {last_position} but the anchored "
                f"store head is position {anchor_position}",
            )
        elif anchor_position == last_position and anchor_link != link:
            order = _order_failure(positions, "rewritten: the store head differs from the anchor")
    if order is not None:
        failures.insert(0, order)
    sessions = len(set(heads) | set(broken))
    result = StoreVerification(
        not failures,
        sessions,
        events_checked,
        failures,
        store_head,
        memory.position if memory is not None and memory.position > 0 else None,
    )
    if failures:
        return result, None
    return result, _VerifiedHead(last_position, link, chained, heads)


async def _head_problem(s: Any, memory: _VerifiedHead) -> str | None:
    """Why the remembered verified head no longer matches the store, or None."""
    rows = await s.stored_rows(None, memory.position - 1, 1)
    row = rows[0] if rows else None
    if row is None or (row[6] if len(row) > 6 else None) != memory.position:
        return (
            f"the verified head at position {memory.position} is gone (the store was "
            "truncated or events were removed); run a full verification"
        )
    sid = row[1]
    version, digest = memory.heads.get(sid, (None, None)) if isinstance(sid, str) else (None, None)
    stored_link = row[12] if len(row) > 12 else None
    if version != row[5] or digest != row[11] or (memory.chained and stored_link != memory.link):
        return (
            f"the verified head at position {memory.position} changed since it was "
            "verified (history was rewritten); run a full verification"
        )
    return None


def _order_failure(checked: int, reason: str) -> VerificationResult:
    return VerificationResult("*", False, checked - 1, None, f"global order: {reason}")


def _missing(anchors: dict[str, SessionHead], seen: set[str]) -> list[VerificationResult]:
    return [
        VerificationResult(
            sid, False, 0, 1, f"missing: the anchored head is version {anchor.version}"
        )
        for sid, anchor in anchors.items()
        if sid not in seen and anchor.version > 0
    ]


def _anchors(expected: Mapping[str, Any] | Iterable[SessionHead] | None) -> dict[str, SessionHead]:
    if expected is None:
        return {}
    if isinstance(expected, Mapping):
        return {sid: SessionHead.from_value(v, sid) for sid, v in expected.items()}
    return {h.session_id: h for h in (SessionHead.from_value(v) for v in expected)}


async def session_head(session_id: str, store: EventStore | str | None = None) -> SessionHead:
    """The session's last (version, hash), to store elsewhere as an anchor.

    An empty or unknown session has version 0 and the genesis hash.
    """
    from agent_trace.reading import _with_store

    events = await _with_store(store, lambda s: _raw_events(s, session_id))
    if not events:
        return SessionHead(session_id, 0, GENESIS_HASH)
    last = events[-1]
    return SessionHead(session_id, last.version, last.hash)
