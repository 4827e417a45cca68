"""The store protocol: the one async interface every backend implements.

A store is the pluggable sink. It owns ordering and integrity: at ``append``
it assigns each event its per-session ``version``, the global ``position``
and the hash chain, atomically, so several writers (tasks, threads,
processes) never leave a gap or a duplicate. Projections, replay and the CLI
read only through this protocol.
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Container, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import orjson

from agent_trace.events import GENESIS_HASH, AgentEvent, compute_hash, payload_bytes

__all__ = ["EventStore", "SessionInfo", "StoreError", "assign_chain", "mask_url"]


class StoreError(RuntimeError):
    """A store could not do what was asked (corrupt data, refused write)."""


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """One session as ``list_sessions`` reports it."""

    session_id: str
    started_at: str
    last_activity: str
    event_count: int
    last_version: int
    metadata: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class EventStore(Protocol):
    """What every store provides. All methods are coroutines."""

    async def append(self, events: Sequence[AgentEvent]) -> int:
        """Durably append; assign version, position and hashes.

        Idempotent by ``event_id``: events already stored (or repeated within
        the batch) are skipped. Returns how many events were newly written.
        """
        ...

    async def get_events(
        self,
        session_id: str,
        after_version: int = 0,
        event_types: Iterable[str] | None = None,
    ) -> list[AgentEvent]:
        """One session's events with ``version > after_version``, in version order."""
        ...

    async def read_all(self, after_position: int = 0, limit: int | None = None) -> list[AgentEvent]:
        """Events of every session with ``position > after_position``, in position order."""
        ...

    async def list_sessions(self, limit: int | None = None) -> list[SessionInfo]:
        """Sessions, most recently started first."""
        ...

    async def close(self) -> None:
        """Release connections and files. Safe to call twice."""
        ...


def assign_chain(
    events: Sequence[AgentEvent],
    heads: dict[str, tuple[int, str]],
    first_position: int,
) -> list[tuple[AgentEvent, bytes]]:
    """Give each event its version, position, prev_hash and hash.

    ``heads`` maps session id -> (last version, last hash) as stored now and is
    updated in place. Returns the sealed events with their canonical payload
    JSON, which stores persist as is (so verification hashes the same bytes).
    """
    out: list[tuple[AgentEvent, bytes]] = []
    position = first_position
    for ev in events:
        version, prev = heads.get(ev.session_id, (0, GENESIS_HASH))
        version += 1
        pj = payload_bytes(ev.payload)
        sealed = AgentEvent(
            event_id=ev.event_id,
            session_id=ev.session_id,
            event_type=ev.event_type,
            timestamp=ev.timestamp,
            payload=ev.payload,
            version=version,
            position=position,
            span_id=ev.span_id,
            parent_span_id=ev.parent_span_id,
            schema_version=ev.schema_version,
            prev_hash=prev,
        )
        digest = compute_hash(sealed, payload_json=pj)
        sealed = _with_hash(sealed, digest)
        heads[ev.session_id] = (version, digest)
        out.append((sealed, pj))
        position += 1
    return out


def _with_hash(ev: AgentEvent, digest: str) -> AgentEvent:
    # The event was built a line earlier and is not shared yet, so setting the
    # slot directly is safe and avoids building it a third time.
    object.__setattr__(ev, "hash", digest)
    return ev


def mask_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for errors and logs)."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    creds, at, host = rest.rpartition("@")
    if ":" in creds:
        user = creds.split(":", 1)[0]
        creds = f"{user}:***"
    return f"{scheme}://{creds}{at}{host}"


# --- helpers shared by the stores --------------------------------------------
# Not part of the public API (not in ``__all__``); every backend, including
# ones written later, should use these so all stores behave alike.
#
# A *row* is a stored event as a 12-tuple in ``AgentEvent`` field order with
# the payload as its canonical JSON text (what the hash covered):
#   (event_id, session_id, event_type, timestamp, payload_json, version,
#    position, span_id, parent_span_id, schema_version, prev_hash, hash)


def seal_rows(
    events: Iterable[AgentEvent],
    heads: dict[str, tuple[int, str]],
    first_position: int,
) -> list[tuple[Any, ...]]:
    """What :func:`assign_chain` does, returning rows instead of events.

    This is the stores' hot path (a few µs per event matter at 100k events/s),
    so it builds no intermediate ``AgentEvent`` and inlines
    :func:`~agent_trace.events.canonical_bytes`: same keys, written in sorted
    order so orjson need not sort them. The conformance tests check every
    stored hash against ``compute_hash``, so a drift between the two fails.
    """
    dumps, fragment, sha256 = orjson.dumps, orjson.Fragment, hashlib.sha256
    sort_keys = orjson.OPT_SORT_KEYS
    get_head = heads.get
    genesis = (0, GENESIS_HASH)
    rows = []
    position = first_position
    for ev in events:
        sid = ev.session_id
        version, prev = get_head(sid, genesis)
        version += 1
        pj = dumps(ev.payload, option=sort_keys)
        canonical = dumps(
            {
                "event_id": ev.event_id,
                "event_type": ev.event_type,
                "parent_span_id": ev.parent_span_id,
                "payload": fragment(pj),
                "prev_hash": prev,
                "schema_version": ev.schema_version,
                "session_id": sid,
                "span_id": ev.span_id,
                "timestamp": ev.timestamp,
                "version": version,
            }
        )
        digest = sha256(prev.encode() + canonical).hexdigest()
        heads[sid] = (version, digest)
        rows.append(
            (
                ev.event_id,
                sid,
                ev.event_type,
                ev.timestamp,
                pj.decode(),
                version,
                position,
                ev.span_id,
                ev.parent_span_id,
                ev.schema_version,
                prev,
                digest,
            )
        )
        position += 1
    return rows


def event_from_row(row: Sequence[Any]) -> AgentEvent:
    """The event a row holds, its payload freshly decoded."""
    return AgentEvent(
        row[0],
        row[1],
        row[2],
        row[3],
        orjson.loads(row[4]),
        row[5],
        row[6],
        row[7],
        row[8],
        row[9],
        row[10],
        row[11],
    )


def unique_new_events(events: Iterable[AgentEvent], stored: Container[str]) -> list[AgentEvent]:
    """``events`` without those whose id is in ``stored`` or repeats earlier in the batch."""
    seen: set[str] = set()
    out: list[AgentEvent] = []
    for ev in events:
        eid = ev.event_id
        if eid in seen or eid in stored:
            continue
        seen.add(eid)
        out.append(ev)
    return out


def event_types_filter(event_types: Iterable[str] | None) -> frozenset[str] | None:
    """``None`` (no filter) or the set of wanted types; an empty set matches nothing."""
    if event_types is None:
        return None
    if isinstance(event_types, str):
        return frozenset((event_types,))
    return frozenset(event_types)


def check_limit(limit: int | None) -> int | None:
    """``limit`` if it is ``None`` or an int >= 0; ``ValueError`` otherwise."""
    if limit is not None and (not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit must be None or an int >= 0, got {limit!r}")
    return limit


def session_metadata(payload: Any) -> dict[str, Any]:
    """``payload["metadata"]`` of a ``session_started`` event, or ``{}``."""
    meta = payload.get("metadata") if isinstance(payload, dict) else None
    return meta if isinstance(meta, dict) else {}


class EventIndex:
    """What an in-process store remembers about its events, payloads aside.

    MemoryStore and JSONLStore keep one (SQL stores ask their database): the
    ids seen, each session's head, version -> position, and what
    ``list_sessions`` reports. Not thread-safe: the owning store serializes
    access. ``add`` refuses a row that does not extend what is indexed, so a
    corrupt file is reported instead of silently indexed.
    """

    __slots__ = ("_sessions", "heads", "ids", "last_position", "session_positions")

    def __init__(self) -> None:
        self.ids: set[str] = set()
        self.heads: dict[str, tuple[int, str]] = {}
        #: session id -> positions of its events, index ``version - 1``.
        self.session_positions: dict[str, list[int]] = {}
        self.last_position = 0
        # session id -> [started_at, last_activity, first_position, metadata JSON or None]
        self._sessions: dict[str, list[Any]] = {}

    def seal(self, events: Sequence[AgentEvent]) -> list[tuple[Any, ...]]:
        """Rows for the batch's new events, following the index; the index is unchanged."""
        new = unique_new_events(events, self.ids)
        if not new:
            return []
        # A copy of the touched heads: if sealing fails half way, nothing moved.
        heads = {}
        for ev in new:
            sid = ev.session_id
            if sid not in heads and sid in self.heads:
                heads[sid] = self.heads[sid]
        return seal_rows(new, heads, self.last_position + 1)

    def add(self, row: Sequence[Any], payload: Any = None) -> None:
        """Index one stored row (``payload``: its decoded payload, if at hand).

        Raises ``StoreError`` if the row does not extend the index.
        """
        event_id, sid, position, version = row[0], row[1], row[6], row[5]
        head_version, head_hash = self.heads.get(sid, (0, GENESIS_HASH))
        if (
            position != self.last_position + 1
            or version != head_version + 1
            or row[10] != head_hash
            or event_id in self.ids
        ):
            raise StoreError(
                f"event {event_id} (session {sid!r}, version {version}, position {position}) "
                f"does not follow the stored history (expected version {head_version + 1} "
                f"after hash {head_hash[:12]}, position {self.last_position + 1})"
            )
        self.ids.add(event_id)
        self.heads[sid] = (version, row[11])
        self.last_position = position
        ts = row[3]
        info = self._sessions.get(sid)
        if info is None:
            info = self._sessions[sid] = [ts, ts, position, None]
            self.session_positions[sid] = [position]
        else:
            self.session_positions[sid].append(position)
            if ts < info[0]:
                info[0] = ts
            elif ts > info[1]:
                info[1] = ts
        if info[3] is None and row[2] == "session_started":
            if payload is None:
                payload = orjson.loads(row[4])
            info[3] = orjson.dumps(session_metadata(payload))

    def positions(self, session_id: str, after_version: int = 0) -> list[int]:
        """Positions of the session's events with ``version > after_version``."""
        return self.session_positions.get(session_id, [])[max(after_version, 0) :]

    def session_infos(self, limit: int | None = None) -> list[SessionInfo]:
        """Sessions newest-started first (ties: the later first position first)."""
        items = self._sessions.items()
        if limit is None:
            ordered = sorted(items, key=_started_key, reverse=True)
        else:
            ordered = heapq.nlargest(limit, items, key=_started_key)
        return [
            SessionInfo(
                session_id=sid,
                started_at=info[0],
                last_activity=info[1],
                event_count=len(self.session_positions[sid]),
                last_version=self.heads[sid][0],
                metadata=orjson.loads(info[3]) if info[3] is not None else {},
            )
            for sid, info in ordered
        ]


def _started_key(item: tuple[str, list[Any]]) -> tuple[str, int]:
    info = item[1]
    return (info[0], info[2])
