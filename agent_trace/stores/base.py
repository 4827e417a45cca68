"""The store protocol: the one async interface every backend implements.

A store is the pluggable sink. It owns ordering and integrity: at ``append``
it assigns each event its per-session ``version``, the global ``position``
and the hash chain, atomically, so several writers (tasks, threads,
processes) never leave a gap or a duplicate. Projections, replay and the CLI
read only through this protocol.

What a backend must do for integrity and schema evolution (SPEC 8):

- store each event's payload as the canonical JSON that was hashed (the
  ``payload_json`` of :func:`seal_rows`) and never rewrite it; refuse UPDATE
  and DELETE on the events table at the database level (triggers);
- build every event it returns with :func:`event_from_row` (or pass it
  through ``agent_trace.upcasting.upcast``), so readers get the latest
  payload schema; with ``raw=True`` on ``get_events``/``read_all``, return
  the stored form untouched (``event_from_row(row, raw=True)``): that is what
  ``agent_trace.verify_session`` hashes.
"""

from __future__ import annotations

import hashlib
import heapq
import string
from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import orjson

from agent_trace import upcasting
from agent_trace.events import (
    GENESIS_HASH,
    AgentEvent,
    canonical_from_fields,
    event_from_values,
)

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
        *,
        raw: bool = False,
    ) -> list[AgentEvent]:
        """One session's events with ``version > after_version``, in version order.

        Payloads are upcast to the latest schema (``agent_trace.upcasting``);
        ``raw=True`` returns them exactly as stored, for hash verification.
        """
        ...

    async def read_all(
        self, after_position: int = 0, limit: int | None = None, *, raw: bool = False
    ) -> list[AgentEvent]:
        """Events of every session with ``position > after_position``, in position order.

        ``raw`` as for :meth:`get_events`.
        """
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
    """:func:`seal_rows` as sealed events, each with its canonical payload JSON.

    ``heads`` maps session id -> (last version, last hash) and is updated in
    place. For stores that keep events rather than rows.
    """
    rows = seal_rows(events, heads, first_position)
    return [(event_from_row(row, raw=True), row[4].encode()) for row in rows]


# Query parameters that carry credentials (libpq accepts ?password=..., and
# sslpassword for an encrypted client key).
_SECRET_PARAMS = frozenset(
    {"password", "pass", "pwd", "sslpassword", "secret", "token", "access_token", "api_key"}
)


def mask_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for errors and logs).

    Masks the password in ``user:password@host`` and the value of secret
    query parameters such as ``?password=...``.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    head, qsep, query = rest.partition("?")
    if "@" not in head and "@" in query:
        head, qsep, query = rest, "", ""  # the "?" is inside an unencoded password
    if "@" in head:
        creds, at, host = head.rpartition("@")
        if ":" in creds:
            creds = f"{creds.split(':', 1)[0]}:***"
        head = f"{creds}{at}{host}"
    if query:
        parts = []
        for part in query.split("&"):
            key, eq, _value = part.partition("=")
            parts.append(f"{key}=***" if eq and key.lower() in _SECRET_PARAMS else part)
        query = "&".join(parts)
    return f"{scheme}://{head}{qsep}{query}"


# --- helpers shared by the stores --------------------------------------------
# Not part of the public API (not in ``__all__``); every backend, including
# ones written later, should use these so all stores behave alike.
#
# A *row* is a stored event as a 12-tuple in ``AgentEvent`` field order with
# the payload as its canonical JSON text (what the hash covered):
#   (event_id, session_id, event_type, timestamp, payload_json, version,
#    position, span_id, parent_span_id, schema_version, prev_hash, hash)


# A *captured* event is what the recorder hands to a store that offers
# ``append_captured``: an 8-tuple whose payload is already canonical JSON bytes
# (sorted keys, as ``capture`` writes it), so no JSON is parsed or rewritten:
#   (event_id, session_id, event_type, timestamp, payload_json, span_id,
#    parent_span_id, schema_version)
Captured = tuple[str, str, str, str, bytes, "str | None", "str | None", int]


def captured_from_events(events: Iterable[AgentEvent]) -> list[Captured]:
    """Events as captured tuples (their payload serialized canonically)."""
    dumps, sort_keys = orjson.dumps, orjson.OPT_SORT_KEYS
    return [
        (
            ev.event_id,
            ev.session_id,
            ev.event_type,
            ev.timestamp,
            dumps(ev.payload, option=sort_keys),
            ev.span_id,
            ev.parent_span_id,
            ev.schema_version,
        )
        for ev in events
    ]


def events_from_captured(items: Iterable[Captured]) -> list[AgentEvent]:
    """Captured tuples as unsealed events (version, position and hashes not yet set)."""
    loads = orjson.loads
    return [
        event_from_values(eid, sid, etype, ts, loads(pj), 0, 0, span, parent, sv, "", "")
        for eid, sid, etype, ts, pj, span, parent, sv in items
    ]


def unique_captured(items: Iterable[Captured], stored: Container[str]) -> list[Captured]:
    """``items`` without those whose id is in ``stored`` or repeats earlier in the batch."""
    seen: set[str] = set()
    out = []
    for item in items:
        eid = item[0]
        if eid in stored or eid in seen:
            continue
        seen.add(eid)
        out.append(item)
    return out


def seal_rows(
    events: Iterable[AgentEvent],
    heads: dict[str, tuple[int, str]],
    first_position: int,
) -> list[tuple[Any, ...]]:
    """Give each event its version, position, prev_hash and hash, as table rows.

    ``heads`` maps session id -> (last version, last hash) as stored now and is
    updated in place. Rows are in column order (see ``event_from_row``); the
    payload is its canonical JSON text, exactly the bytes the hash covers.
    """
    return seal_captured(captured_from_events(events), heads, first_position)


ROW_WIDTH = 12  # values per sealed row


def seal_captured(
    items: Iterable[Captured],
    heads: dict[str, tuple[int, str]],
    first_position: int,
) -> list[tuple[Any, ...]]:
    """:func:`seal_rows` for captured tuples: the stores' hot path, no JSON work."""
    flat = seal_captured_flat(items, heads, first_position)
    # The same iterator ROW_WIDTH times: zip takes consecutive groups.
    return list(zip(*[iter(flat)] * ROW_WIDTH, strict=True))


def seal_captured_flat(
    items: Iterable[Captured],
    heads: dict[str, tuple[int, str]],
    first_position: int,
) -> list[Any]:
    """:func:`seal_captured`'s rows laid end to end, ``ROW_WIDTH`` values each:
    the parameters of a multi-row INSERT, with no per-row tuple to unpack again."""
    sha256 = hashlib.sha256
    get_head = heads.get
    genesis = (0, GENESIS_HASH)
    flat: list[Any] = []
    extend = flat.extend
    position = first_position
    for eid, sid, etype, ts, pj, span, parent, sv in items:
        version, prev = get_head(sid, genesis)
        version += 1
        canonical = canonical_from_fields(eid, etype, parent, pj, prev, sv, sid, span, ts, version)
        digest = sha256(prev.encode() + canonical).hexdigest()
        heads[sid] = (version, digest)
        extend(
            (eid, sid, etype, ts, pj.decode(), version, position, span, parent, sv, prev, digest)
        )
        position += 1
    return flat


def event_from_row(row: Sequence[Any], raw: bool = False) -> AgentEvent:
    """The event a row holds, its payload freshly decoded and upcast (unless ``raw``)."""
    ev = event_from_values(
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
    if raw or not upcasting._registry:
        return ev
    return upcasting.upcast(ev)


def events_from_rows(rows: Iterable[Sequence[Any]], raw: bool = False) -> list[AgentEvent]:
    """:func:`event_from_row` over many rows (a page of ``read_all``).

    With no upcaster registered (or ``raw``) the loop builds events inline: on
    a scan of a million events the call per row is a measurable share.
    """
    if not raw and upcasting._registry:
        return [event_from_row(r) for r in rows]
    loads, make = orjson.loads, event_from_values
    return [
        make(r[0], r[1], r[2], r[3], loads(r[4]), r[5], r[6], r[7], r[8], r[9], r[10], r[11])
        for r in rows
    ]


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

    def seal(self, items: Sequence[Captured]) -> list[tuple[Any, ...]]:
        """Rows for the batch's new events, following the index; the index is unchanged."""
        new = unique_captured(items, self.ids)
        if not new:
            return []
        # A copy of the touched heads: if sealing fails half way, nothing moved.
        heads = {}
        for item in new:
            sid = item[1]
            if sid not in heads and sid in self.heads:
                heads[sid] = self.heads[sid]
        return seal_captured(new, heads, self.last_position + 1)

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


# --- projection checkpoints: an optional extension of the protocol -----------


class ProjectionConflict(StoreError):
    """Another runner with the same projection name saved first (or holds it)."""


_PROJECTION_NAME_CHARS = frozenset(string.ascii_letters + string.digits + "._-")


def check_projection_name(name: object) -> str:
    """``name`` if it is 1-128 letters, digits, ``.``, ``_`` or ``-`` (it names files)."""
    if (
        not isinstance(name, str)
        or not 0 < len(name) <= 128
        or not set(name) <= _PROJECTION_NAME_CHARS
        or name.startswith(".")
    ):
        raise ValueError(
            f"invalid projection name {name!r}: use 1-128 letters, digits, '.', '_' or '-' "
            "(not starting with '.')"
        )
    return name


@runtime_checkable
class ProjectionStore(Protocol):
    """Where a ``ProjectionRunner`` keeps a view's state and checkpoint, in the event store.

    Optional: ``agent_trace.projections`` can fold any ``EventStore``, but
    only a store with these two methods can host a ``ProjectionRunner``.
    Memory, SQLite and JSONL stores implement it; a new backend (PostgreSQL)
    must provide exactly this:

    - ``load_projection(name)`` -> ``(state_json, checkpoint)``: the last saved
      state as JSON text and the position of the last event folded into it, or
      ``(None, 0)`` if nothing was ever saved under ``name``.
    - ``save_projection(name, state_json, checkpoint, expected_checkpoint)``:
      in ONE transaction, compare the stored checkpoint (0 when there is no
      row) with ``expected_checkpoint``; if they differ raise
      ``ProjectionConflict`` and change nothing, else store both state and
      checkpoint. State and checkpoint are never written separately, so a
      crash leaves the previous pair or the new one, never a mix: an event is
      never applied twice nor skipped. This compare-and-set is also what
      stops two runners with the same name from both advancing.

      PostgreSQL sketch: table ``agent_trace_projections(name text primary
      key, state text not null, position bigint not null, updated_at
      timestamptz)``; ``INSERT ... ON CONFLICT DO NOTHING`` when
      ``expected_checkpoint == 0``, otherwise ``UPDATE ... SET state=$2,
      position=$3 WHERE name=$1 AND position=$4``; zero rows affected ->
      ``ProjectionConflict``.

    Optional third hook: ``wait_for_events(after_position, timeout)`` returning
    when an event past ``after_position`` may exist or after ``timeout``
    seconds; ``run_forever`` uses it instead of sleeping (LISTEN/NOTIFY).

    No gaps behind a checkpoint. A runner reads ``read_all(after_position=
    checkpoint)`` and then moves its checkpoint to the last position it saw,
    so every store must guarantee that once ``read_all`` has returned an
    event at position ``p``, no event with a position below ``p`` can become
    visible later. Memory (one lock), SQLite (``BEGIN IMMEDIATE``: one writer
    at a time, positions taken as ``MAX(position) + 1`` inside the write
    transaction) and JSONL (exclusive ``flock`` around each append) assign
    positions and commit in one critical section, so positions become
    visible in order. PostgreSQL sequences do not: a transaction may take
    position 10, commit after another took 11 and committed, and a reader in
    between would skip 10 forever. ``PostgresStore`` must therefore either
    serialize position assignment until commit (e.g. ``pg_advisory_xact_lock``
    or a one-row counter updated in the append transaction) or make
    ``read_all`` stop before the first position whose transaction may still
    be in flight (a high-water mark from ``pg_snapshot_xmin``).
    """

    async def load_projection(self, name: str) -> tuple[str | None, int]:
        """``(state_json, checkpoint)`` as last saved, or ``(None, 0)``."""
        ...

    async def save_projection(
        self, name: str, state_json: str, checkpoint: int, expected_checkpoint: int
    ) -> None:
        """Store state and checkpoint atomically if the stored checkpoint is the expected one."""
        ...


@runtime_checkable
class ProjectionEntriesStore(ProjectionStore, Protocol):
    """A ``ProjectionStore`` that also saves a view entry by entry (optional).

    For views whose state is a JSON object of independent entries (one per
    session, tool or model: ``projections.KeyedProjection``), so a runner's
    save costs what changed, not the whole state:

    - ``save_projection_entries(name, entries, checkpoint, expected_checkpoint)``:
      in ONE transaction, the same compare-and-set on the checkpoint as
      ``save_projection``; then set each entry of ``entries`` (key -> the
      value's JSON text) or delete it (value ``None``), keeping the others.
      If ``name`` was last saved whole (``save_projection``), that state (a
      JSON object) is first split into entries (:func:`split_state`), in the
      same transaction: stored views switch over without a rebuild.
    - ``load_projection(name)`` returns such a view as one JSON object
      (:func:`entries_json`), and ``save_projection`` replaces it whole again
      (its entries are dropped in the same transaction).

    Every bundled store implements it: SQLite and PostgreSQL with a table
    ``projection_entries(name, key, value)`` beside ``projections``, JSONL
    with a log of changes beside each view's snapshot, folded into it when it
    outgrows it. A runner on a store without it saves the whole state.
    """

    async def save_projection_entries(
        self,
        name: str,
        entries: Mapping[str, str | None],
        checkpoint: int,
        expected_checkpoint: int,
    ) -> None:
        """Set or delete entries and move the checkpoint atomically, compare-and-set."""
        ...


#: What ``projections.state`` holds for a view saved entry by entry. A JSON
#: string, so an older agent_trace reading the row fails on it loudly
#: instead of folding on from an empty state.
ENTRIES_MARKER = (
    '"agent_trace: this view is saved entry by entry in projection_entries; '
    'upgrade agent_trace to read it"'
)


def entries_json(entries: Iterable[tuple[str, str]]) -> str:
    """The JSON object whose entries are ``(key, value JSON text)`` pairs."""
    dumps = orjson.dumps
    return "{" + ",".join(f"{dumps(key).decode()}:{value}" for key, value in entries) + "}"


def split_state(name: str, state_json: str) -> dict[str, str]:
    """A view saved whole, as entries (key -> value JSON text); it must be a JSON object."""
    state = orjson.loads(state_json)
    if not isinstance(state, dict):
        raise StoreError(
            f"projection {name!r} was saved whole as a JSON {type(state).__name__}, not an "
            "object: it cannot be saved entry by entry (was the name used by another view?)"
        )
    dumps = orjson.dumps
    return {key: dumps(value).decode() for key, value in state.items()}


def projection_conflict(name: str, expected: int, found: int) -> ProjectionConflict:
    """The error every store raises when a compare-and-set on a checkpoint fails."""
    return ProjectionConflict(
        f"projection {name!r} was advanced by another runner: expected checkpoint "
        f"{expected}, found {found}. Run one ProjectionRunner per name; this one's "
        "unsaved work was discarded"
    )
