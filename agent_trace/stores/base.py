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
    check_event,
    event_from_values,
)
from agent_trace.llm import token_counts

__all__ = [
    "EventStore",
    "SessionFilter",
    "SessionIndexStore",
    "SessionInfo",
    "StoreError",
    "assign_chain",
    "mask_url",
]


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
    # From the sessions index: filled in by ``SessionIndexStore.query_sessions``;
    # ``list_sessions`` (every store alike) leaves the defaults.
    status: str = "open"
    duration_ms: float | None = None
    tool_calls: int = 0
    llm_calls: int = 0
    decisions: int = 0
    failures: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    #: model -> its calls, failures and tokens (``base.MODEL_FIELDS``)
    models: dict[str, dict[str, int]] = field(default_factory=dict)
    #: distinct tools called (executed or failed), sorted
    tools: list[str] = field(default_factory=list)
    agent: str | None = None
    first_position: int = 0
    last_position: int = 0


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
# A *row* is a stored event as a 13-tuple in ``AgentEvent`` field order with
# the payload as its canonical JSON text (what the hash covered), then the
# store chain's link (None in rows written before the store chain existed):
#   (event_id, session_id, event_type, timestamp, payload_json, version,
#    position, span_id, parent_span_id, schema_version, prev_hash, hash,
#    store_hash)


# A *captured* event is what the recorder hands to a store that offers
# ``append_captured``: an 8-tuple whose payload is already canonical JSON bytes
# (sorted keys, as ``capture`` writes it), so no JSON is parsed or rewritten:
#   (event_id, session_id, event_type, timestamp, payload_json, span_id,
#    parent_span_id, schema_version)
Captured = tuple[str, str, str, str, bytes, "str | None", "str | None", int]


def checked_captured(events: Iterable[AgentEvent]) -> list[Captured]:
    """:func:`captured_from_events` for a store's ``append``, after checking every
    field (``events.check_event``): a value of the wrong type would be
    converted by the database after it was hashed, and the valid session
    would fail verification from then on."""
    return captured_from_events([check_event(ev) for ev in events])


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
    store_head: str | None = None,
) -> list[tuple[Any, ...]]:
    """Give each event its version, position, prev_hash, hash and store chain link, as rows.

    ``heads`` maps session id -> (last version, last hash) as stored now and is
    updated in place. ``store_head`` is the store chain's last link (None: the
    store has none yet). Rows are in column order (see ``event_from_row``); the
    payload is its canonical JSON text, exactly the bytes the hash covers.
    """
    return seal_captured(captured_from_events(events), heads, first_position, store_head)


ROW_WIDTH = 13  # values per sealed row


def seal_captured(
    items: Iterable[Captured],
    heads: dict[str, tuple[int, str]],
    first_position: int,
    store_head: str | None = None,
) -> list[tuple[Any, ...]]:
    """:func:`seal_rows` for captured tuples: the stores' hot path, no JSON work."""
    flat = seal_captured_flat(items, heads, first_position, store_head)
    # The same iterator ROW_WIDTH times: zip takes consecutive groups.
    return list(zip(*[iter(flat)] * ROW_WIDTH, strict=True))


def seal_captured_flat(
    items: Iterable[Captured],
    heads: dict[str, tuple[int, str]],
    first_position: int,
    store_head: str | None = None,
) -> list[Any]:
    """:func:`seal_captured`'s rows laid end to end, ``ROW_WIDTH`` values each:
    the parameters of a multi-row INSERT, with no per-row tuple to unpack again."""
    sha256 = hashlib.sha256
    get_head = heads.get
    genesis = (0, GENESIS_HASH)
    flat: list[Any] = []
    extend = flat.extend
    position = first_position
    link = GENESIS_HASH if store_head is None else store_head
    for eid, sid, etype, ts, pj, span, parent, sv in items:
        version, prev = get_head(sid, genesis)
        version += 1
        canonical = canonical_from_fields(eid, etype, parent, pj, prev, sv, sid, span, ts, version)
        digest = sha256(prev.encode() + canonical).hexdigest()
        heads[sid] = (version, digest)
        # The store chain (the global order): inlined store_link.
        link = sha256(f"{link}{position}:{digest}".encode()).hexdigest()
        extend(
            (
                eid, sid, etype, ts, pj.decode(), version, position, span, parent, sv, prev,
                digest, link,
            )
        )  # fmt: skip
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

    __slots__ = (
        "heads", "ids", "last_position", "session_positions", "sessions", "store_head",
        "tools",
    )  # fmt: skip

    def __init__(self) -> None:
        self.ids: set[str] = set()
        self.heads: dict[str, tuple[int, str]] = {}
        #: session id -> positions of its events, index ``version - 1``.
        self.session_positions: dict[str, list[int]] = {}
        self.last_position = 0
        #: The store chain's last link (None before the first row that has one).
        self.store_head: str | None = None
        #: session id -> its sessions-index entry (``fold_index``)
        self.sessions: dict[str, dict[str, Any]] = {}
        #: tool -> {"calls", "failures", "durations"} over every session
        self.tools: dict[str, dict[str, Any]] = {}

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
        return seal_captured(new, heads, self.last_position + 1, self.store_head)

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
        if len(row) > 12 and row[12] is not None:
            self.store_head = row[12]
        self.last_position = position
        positions = self.session_positions.get(sid)
        if positions is None:
            self.session_positions[sid] = [position]
        else:
            positions.append(position)
        calls: list[tuple[str, int, float | None]] = []
        fold_index(self.sessions, sid, row[2], row[3], row[4], version, position, payload, calls)
        if calls:
            add_tool_calls(self.tools, calls)

    def positions(self, session_id: str, after_version: int = 0) -> list[int]:
        """Positions of the session's events with ``version > after_version``."""
        return self.session_positions.get(session_id, [])[max(after_version, 0) :]

    def session_infos(
        self, limit: int | None = None, filter: SessionFilter | None = None, full: bool = False
    ) -> list[SessionInfo]:
        """Sessions newest-started first (ties: the later first position first);
        ``full``: with every field of the index (``query_sessions``)."""
        entries: Iterable[dict[str, Any]] = self.sessions.values()
        if filter is not None:
            entries = [e for e in entries if filter.matches(e)]
        if limit is None:
            ordered = sorted(entries, key=_started_key, reverse=True)
        else:
            ordered = heapq.nlargest(limit, entries, key=_started_key)
        # Copies of the mutable fields: a caller changing what it got back
        # must not change the index.
        copy, dumps = orjson.loads, orjson.dumps
        return [info_from_entry(copy(dumps(e)), full) for e in ordered]

    def totals(self) -> dict[str, Any]:
        """``SessionIndexStore.session_totals`` over the indexed sessions."""
        return totals_of(self.sessions.values(), orjson.loads(orjson.dumps(self.tools)))


def _started_key(e: dict[str, Any]) -> tuple[str, int]:
    return (e["started_at"], e["first_position"])


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


# --- the sessions index: one summary row per session, kept at append ---------
#
# Every bundled store keeps it in its append transaction (SQLite and
# PostgreSQL: a ``sessions`` table written with the events; memory and JSONL:
# ``EventIndex``), so listing, filtering and counting sessions costs the page
# asked for, not a scan of the events. The fold below is the one place its
# semantics live; it matches ``projections.build_session_summary`` (counts,
# tokens, status) so the CLI's table reads the same from either.

#: What an event type contributes to its session's index entry.
_IX_STARTED, _IX_ENDED, _IX_TOOL, _IX_TOOL_FAILED, _IX_LLM, _IX_LLM_FAILED = range(6)
_IX_DECISION, _IX_RESPONSE, _IX_ERROR = range(6, 9)
_INDEX_KINDS: dict[str, int] = {
    "session_started": _IX_STARTED,
    "session_ended": _IX_ENDED,
    "tool_executed": _IX_TOOL,
    "tool_failed": _IX_TOOL_FAILED,
    "llm_responded": _IX_LLM,
    "llm_failed": _IX_LLM_FAILED,
    "decision_made": _IX_DECISION,
    "response_generated": _IX_RESPONSE,
    "error_occurred": _IX_ERROR,
}

#: The index entry's fields, in the column order of the SQL stores' ``sessions`` table.
INDEX_FIELDS = (
    "session_id", "started_at", "last_activity", "first_position", "last_position",
    "event_count", "last_version", "status", "duration_ms", "tool_calls", "llm_calls",
    "decisions", "failures", "input_tokens", "output_tokens", "total_tokens", "models",
    "tools", "agent", "metadata",
)  # fmt: skip
#: Fields held as JSON text in SQL.
INDEX_JSON_FIELDS = frozenset({"models", "tools", "metadata"})
#: Per model in an index entry (as ``projections.CostPerModel`` counts, cost aside).
MODEL_FIELDS = (
    "calls", "failures", "input_tokens", "output_tokens", "total_tokens",
    "cache_read_tokens", "cache_write_tokens", "reasoning_tokens",
)  # fmt: skip
_CACHE_FIELDS = ("cache_read_tokens", "cache_write_tokens", "reasoning_tokens")


def new_index_entry(session_id: str, timestamp: str, position: int) -> dict[str, Any]:
    """An empty index entry for a session whose first event is at ``position``."""
    return {
        "session_id": session_id,
        "started_at": timestamp,
        "last_activity": timestamp,
        "first_position": position,
        "last_position": position,
        "event_count": 0,
        "last_version": 0,
        "status": "open",
        "duration_ms": None,
        "tool_calls": 0,
        "llm_calls": 0,
        "decisions": 0,
        "failures": 0,
        "input_tokens": 0,
        "output_tokens": 0,
        "total_tokens": 0,
        "models": {},  # model (answering, else requested, else "unknown") -> MODEL_FIELDS
        "tools": [],  # distinct tool names, sorted
        "agent": None,
        "metadata": None,  # None until a session_started is seen
    }


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def fold_index(
    entries: dict[str, dict[str, Any]],
    sid: str,
    etype: str,
    ts: str,
    payload_json: str | bytes | None,
    version: int,
    position: int,
    payload: Any = None,
    tool_calls: list[tuple[str, int, float | None]] | None = None,
) -> None:
    """Fold one stored event into ``entries`` (session id -> index entry), in place.

    Only the payloads of the event types that count are decoded (unless
    ``payload``, already decoded, is given), so the cost at append is a dict
    lookup for most events. Each tool call is also added to ``tool_calls`` (if
    given) as ``(tool or "?", failed 0/1, duration_ms or None)``: the per-tool
    figures live outside the session's entry, which they would make grow with
    the session.
    """
    e = entries.get(sid)
    if e is None:
        e = entries[sid] = new_index_entry(sid, ts, position)
    e["event_count"] += 1
    e["last_version"] = version
    e["last_position"] = position
    if ts > e["last_activity"]:
        e["last_activity"] = ts
    elif ts < e["started_at"]:
        e["started_at"] = ts
    kind = _INDEX_KINDS.get(etype)
    if kind is None:
        if not etype.endswith("_failed"):
            return
        kind = _IX_ERROR
    p = payload if payload_json is None else orjson.loads(payload_json)
    if not isinstance(p, dict):
        p = {}
    if kind in (_IX_LLM, _IX_LLM_FAILED):
        e["llm_calls"] += 1
        model = p.get("response_model") or p.get("model")
        m = e["models"].get(model if isinstance(model, str) else "unknown")
        if m is None:
            m = e["models"][model if isinstance(model, str) else "unknown"] = dict.fromkeys(
                MODEL_FIELDS, 0
            )
        m["calls"] += 1
        if kind == _IX_LLM_FAILED:
            m["failures"] += 1
            e["failures"] += 1
            return
        usage = p.get("usage")
        if isinstance(usage, dict):
            inp, out, total = token_counts(usage)
            e["input_tokens"] += inp
            e["output_tokens"] += out
            e["total_tokens"] += total
            m["input_tokens"] += inp
            m["output_tokens"] += out
            m["total_tokens"] += total
            for key in _CACHE_FIELDS:
                m[key] += _count(usage.get(key))
    elif kind in (_IX_TOOL, _IX_TOOL_FAILED):
        e["tool_calls"] += 1
        tool = p.get("tool")
        if isinstance(tool, str) and tool not in e["tools"]:
            e["tools"] = sorted([*e["tools"], tool])
        failed = kind == _IX_TOOL_FAILED
        if failed:
            e["failures"] += 1
        if tool_calls is not None:
            d = p.get("duration_ms")
            duration = d if isinstance(d, (int, float)) and not isinstance(d, bool) else None
            tool_calls.append((tool if isinstance(tool, str) else "?", int(failed), duration))
    elif kind == _IX_DECISION:
        e["decisions"] += 1
    elif kind == _IX_RESPONSE:
        e["total_tokens"] += _count(p.get("tokens_used"))
    elif kind == _IX_ENDED:
        status = p.get("status", "ok")
        e["status"] = status if isinstance(status, str) else str(status)
        if isinstance(p.get("duration_ms"), (int, float)):
            e["duration_ms"] = p["duration_ms"]
    elif kind == _IX_STARTED:
        if e["metadata"] is None:
            meta = session_metadata(p)
            e["metadata"] = meta
            agent = meta.get("agent", p.get("agent"))
            if e["agent"] is None and isinstance(agent, str):
                e["agent"] = agent
    else:  # _IX_ERROR, any other *_failed
        e["failures"] += 1


def fold_index_flat(
    entries: dict[str, dict[str, Any]],
    flat: Sequence[Any],
    tool_calls: list[tuple[str, int, float | None]] | None = None,
) -> None:
    """:func:`fold_index` over rows laid end to end (``seal_captured_flat``);
    each entry also keeps its session's last hash (``last_hash``)."""
    fold = fold_index
    for i in range(0, len(flat), ROW_WIDTH):
        sid = flat[i + 1]
        fold(
            entries, sid, flat[i + 2], flat[i + 3], flat[i + 4], flat[i + 5], flat[i + 6],
            None, tool_calls,
        )  # fmt: skip
        entries[sid]["last_hash"] = flat[i + 11]


def add_tool_calls(
    tools: dict[str, dict[str, Any]], calls: Iterable[tuple[str, int, float | None]]
) -> None:
    """Add tool calls ``(tool, failed, duration_ms)`` to per-tool totals
    (``{"calls", "failures", "durations"}``, as ``projections.ToolStatsProjection``)."""
    for name, failed, duration in calls:
        t = tools.get(name)
        if t is None:
            t = tools[name] = {"calls": 0, "failures": 0, "durations": []}
        t["calls"] += 1
        t["failures"] += failed
        if duration is not None:
            t["durations"].append(duration)


@dataclass(frozen=True, slots=True)
class SessionFilter:
    """Which sessions ``query_sessions`` returns (every field optional, all must hold).

    ``failed``: ended with status error/cancelled or has a failure event;
    ``tool``: called this tool (executed or failed); ``model``: an LLM call
    answered by this model; ``status``: ``open``, ``ok``, ``error``,
    ``cancelled``...; ``since``: started at or after this ISO timestamp
    (compared as text, like every stored timestamp, so give it in UTC with
    ``+00:00``).
    """

    failed: bool = False
    tool: str | None = None
    model: str | None = None
    status: str | None = None
    since: str | None = None

    def matches(self, e: Mapping[str, Any]) -> bool:
        """Whether index entry ``e`` passes the filter."""
        if self.failed and not (e["status"] in ("error", "cancelled") or e["failures"]):
            return False
        if self.tool is not None and self.tool not in e["tools"]:
            return False
        if self.model is not None and self.model not in e["models"]:
            return False
        if self.status is not None and e["status"] != self.status:
            return False
        return self.since is None or e["started_at"] >= self.since


def info_from_entry(e: Mapping[str, Any], full: bool = True) -> SessionInfo:
    """The ``SessionInfo`` of an index entry; ``full=False``: only the fields
    every store's ``list_sessions`` reports (the others left at their defaults)."""
    metadata = e["metadata"] if e["metadata"] is not None else {}
    if not full:
        return SessionInfo(
            e["session_id"], e["started_at"], e["last_activity"], e["event_count"],
            e["last_version"], metadata,
        )  # fmt: skip
    return SessionInfo(
        session_id=e["session_id"],
        started_at=e["started_at"],
        last_activity=e["last_activity"],
        event_count=e["event_count"],
        last_version=e["last_version"],
        metadata=metadata,
        status=e["status"],
        duration_ms=e["duration_ms"],
        tool_calls=e["tool_calls"],
        llm_calls=e["llm_calls"],
        decisions=e["decisions"],
        failures=e["failures"],
        input_tokens=e["input_tokens"],
        output_tokens=e["output_tokens"],
        total_tokens=e["total_tokens"],
        models=e["models"],
        tools=list(e["tools"]),
        agent=e["agent"],
        first_position=e["first_position"],
        last_position=e["last_position"],
    )


@runtime_checkable
class SessionIndexStore(Protocol):
    """A store that keeps the sessions index (optional; every bundled store but
    PostgreSQL, for now, whose readers fall back to scanning).

    - ``query_sessions(limit, filter)``: index entries as ``SessionInfo``,
      newest-started first, at most ``limit``, those passing ``filter``;
    - ``session_totals()``: ``{"sessions", "events", "per_day": {day: n},
      "models": {model: {MODEL_FIELDS...}}, "tools": {tool: {"calls",
      "failures", "p50_ms", "p95_ms", "mean_ms"}}}`` over the whole index
      (``totals_of``).
    """

    async def query_sessions(
        self, limit: int | None = None, filter: SessionFilter | None = None
    ) -> list[SessionInfo]:
        """Sessions from the index, newest-started first."""
        ...

    async def session_totals(self) -> dict[str, Any]:
        """Counts over every session, from the index."""
        ...


def totals_of(
    entries: Iterable[Mapping[str, Any]], tools: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """:meth:`SessionIndexStore.session_totals` over index entries and per-tool totals."""
    sessions = events = 0
    per_day: dict[str, int] = {}
    models: dict[str, dict[str, int]] = {}
    for e in entries:
        sessions += 1
        events += e["event_count"]
        day = e["started_at"][:10]
        per_day[day] = per_day.get(day, 0) + 1
        add_models(models, e["models"])
    return {
        "sessions": sessions,
        "events": events,
        "per_day": dict(sorted(per_day.items())),
        "models": dict(sorted(models.items())),
        "tools": {
            name: tool_figures(t["calls"], t["failures"], sorted(t["durations"]))
            for name, t in sorted(tools.items())
        },
    }


def percentile_ranks(n: int, pct: float) -> tuple[int, int, float]:
    """Where the ``pct`` percentile of ``n`` sorted values lies: ``(lo, hi, weight)``,
    the value being ``v[lo] + (v[hi] - v[lo]) * weight`` (linear interpolation
    between closest ranks, as ``projections.ToolStats``)."""
    k = (n - 1) * pct / 100
    lo = int(k)
    return lo, min(lo + 1, n - 1), k - lo


def tool_figures(calls: int, failures: int, ordered: Sequence[float]) -> dict[str, Any]:
    """One tool's ``{"calls", "failures", "p50_ms", "p95_ms", "mean_ms"}`` from its
    sorted durations."""
    figures: dict[str, Any] = {"calls": calls, "failures": failures}
    for name, pct in (("p50_ms", 50), ("p95_ms", 95)):
        if ordered:
            lo, hi, w = percentile_ranks(len(ordered), pct)
            figures[name] = ordered[lo] + (ordered[hi] - ordered[lo]) * w
        else:
            figures[name] = None
    figures["mean_ms"] = sum(ordered) / len(ordered) if ordered else None
    return figures


def add_models(
    models: dict[str, dict[str, int]], entry_models: Mapping[str, Mapping[str, int]]
) -> None:
    """Add one index entry's per-model figures to running totals."""
    for name, m in entry_models.items():
        t = models.get(name)
        if t is None:
            t = models[name] = dict.fromkeys(MODEL_FIELDS, 0)
        for key in MODEL_FIELDS:
            t[key] += m.get(key, 0)
