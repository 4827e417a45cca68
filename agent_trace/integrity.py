"""Verify the per-session hash chain: is the stored history what was written?

Each stored event carries ``prev_hash`` (the previous event's hash, 64 zeros
for version 1) and ``hash = sha256(prev_hash + canonical(event))`` (SPEC 8),
computed by the store inside the append transaction. Verification reads the
stored form (``raw=True``: no upcasting) and recomputes the chain, so any
edited field, deleted, reordered or inserted event, or forged hash shows up
as the first version where the chain breaks.

What the chain cannot show by itself is a cut-off tail: a session truncated
after version n is a valid chain of n events. ``session_head()`` returns the
latest (version, hash); keep it somewhere the store's writers cannot change
(another database, a signed log, a ticket) and pass it back as
``expected_head`` to detect truncation or a rewritten chain.

Read-only: never appends, never repairs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agent_trace.events import GENESIS_HASH, AgentEvent, compute_hash

if TYPE_CHECKING:
    from agent_trace.stores.base import EventStore

__all__ = [
    "SessionHead",
    "StoreVerification",
    "VerificationResult",
    "check_chain",
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
    """What ``verify_store`` found: every session checked, every failure listed."""

    ok: bool
    sessions_checked: int
    events_checked: int
    failures: list[VerificationResult] = field(default_factory=list)

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


def _break(session_id: str, ev: AgentEvent, expected: int, prev: str) -> str | None:
    """Why ``ev`` does not extend the chain at version ``expected``, or None if it does."""
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
        actual = compute_hash(ev)
    except TypeError as exc:
        return f"event cannot be canonicalized: {exc}"
    if actual != ev.hash:
        return (
            "hash does not match the event's content "
            "(payload, type, timestamp, ids or schema version were edited)"
        )
    return None


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


async def verify_session(
    session_id: str,
    store: EventStore | str | None = None,
    *,
    expected_head: SessionHead | tuple[int, str] | Mapping[str, Any] | None = None,
) -> VerificationResult:
    """Recompute ``session_id``'s hash chain from the stored events.

    ``expected_head`` (from :func:`session_head`, kept elsewhere) also detects
    a truncated tail or a chain rewritten from some version on.
    """
    from agent_trace.reading import _with_store
    from agent_trace.stores.base import StoreError

    try:
        events = await _with_store(store, lambda s: _raw_events(s, session_id))
    except StoreError as exc:
        # A store that checks structure while reading (JSONL) refuses a broken file.
        return VerificationResult(session_id, False, 0, None, f"the store refused to read: {exc}")
    return check_chain(session_id, events, expected_head)


async def verify_store(
    store: EventStore | str | None = None,
    *,
    expected_heads: Mapping[str, Any] | Iterable[SessionHead] | None = None,
) -> StoreVerification:
    """Verify every session in the store and report all failures (not just the first).

    ``expected_heads`` (session id -> head, or a list of ``SessionHead``) also
    flags truncated sessions and sessions that disappeared altogether.
    """
    from agent_trace.reading import _with_store
    from agent_trace.stores.base import StoreError

    anchors = _anchors(expected_heads)

    async def run(s: EventStore) -> StoreVerification:
        try:
            infos = await s.list_sessions()
        except StoreError as exc:
            failure = VerificationResult("*", False, 0, None, f"the store refused to read: {exc}")
            return StoreVerification(False, 0, 0, [failure])
        failures: list[VerificationResult] = []
        events_checked = 0
        seen = set()
        for info in infos:
            sid = info.session_id
            seen.add(sid)
            try:
                result = check_chain(sid, await _raw_events(s, sid), anchors.get(sid))
            except StoreError as exc:
                result = VerificationResult(
                    sid, False, 0, None, f"the store refused to read: {exc}"
                )
            events_checked += result.events_checked
            if not result.ok:
                failures.append(result)
        for sid, anchor in anchors.items():
            if sid not in seen and anchor.version > 0:
                failures.append(
                    VerificationResult(
                        sid, False, 0, 1, f"missing: the anchored head is version {anchor.version}"
                    )
                )
        return StoreVerification(not failures, len(infos), events_checked, failures)

    return await _with_store(store, run)


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
