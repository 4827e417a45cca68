"""The event record, its ids, timestamps and the per-session hash chain.

Pure data and pure functions: no I/O, no global state beyond a monotonic id
counter. Stores and the recorder build on this; nothing here imports them.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import orjson

__all__ = [
    "AgentEvent",
    "GENESIS_HASH",
    "canonical_bytes",
    "EventFieldError",
    "canonical_from_fields",
    "check_event",
    "compute_hash",
    "event_from_dict_checked",
    "event_from_values",
    "format_timestamp",
    "new_span_id",
    "payload_bytes",
    "store_link",
    "uuid7",
    "uuid7_many",
    "validate_event_type",
    "validate_session_id",
]

GENESIS_HASH = "0" * 64


@dataclass(frozen=True, slots=True)
class AgentEvent:
    """One immutable fact in a session's history.

    ``version``, ``position``, ``prev_hash`` and ``hash`` are assigned by the
    store at append; events built before that carry 0 and "".
    """

    event_id: str
    session_id: str
    event_type: str
    timestamp: str
    payload: dict[str, Any] = field(default_factory=dict)
    version: int = 0
    position: int = 0
    span_id: str | None = None
    parent_span_id: str | None = None
    schema_version: int = 1
    prev_hash: str = ""
    hash: str = ""

    def to_dict(self) -> dict[str, Any]:
        """All fields as a plain dict (the JSONL/export form)."""
        return {
            "event_id": self.event_id,
            "session_id": self.session_id,
            "event_type": self.event_type,
            "timestamp": self.timestamp,
            "payload": self.payload,
            "version": self.version,
            "position": self.position,
            "span_id": self.span_id,
            "parent_span_id": self.parent_span_id,
            "schema_version": self.schema_version,
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AgentEvent:
        """Inverse of :meth:`to_dict`; missing store-assigned fields default."""
        return cls(
            event_id=d["event_id"],
            session_id=d["session_id"],
            event_type=d["event_type"],
            timestamp=d["timestamp"],
            payload=d.get("payload") or {},
            version=d.get("version", 0),
            position=d.get("position", 0),
            span_id=d.get("span_id"),
            parent_span_id=d.get("parent_span_id"),
            schema_version=d.get("schema_version", 1),
            prev_hash=d.get("prev_hash", ""),
            hash=d.get("hash", ""),
        )


class _Unfrozen:
    """AgentEvent's exact slot layout, without the frozen ``__setattr__``."""

    __slots__ = AgentEvent.__slots__


_new = object.__new__


def event_from_values(
    event_id: str,
    session_id: str,
    event_type: str,
    timestamp: str,
    payload: dict[str, Any],
    version: int,
    position: int,
    span_id: str | None,
    parent_span_id: str | None,
    schema_version: int,
    prev_hash: str,
    hash: str,
) -> AgentEvent:
    """``AgentEvent(...)`` with every field given, for the read and write hot paths.

    Fills the slots of a twin class by plain attribute stores, then makes the
    object an AgentEvent: ~0.35 us against ~1.7 us for the frozen dataclass
    ``__init__`` (an ``object.__setattr__`` per field) and ~0.9 us for a slot
    descriptor call per field; the same resulting object. Python checks at the
    ``__class__`` switch that the two layouts match, so a change to AgentEvent
    that breaks this fails at once.
    """
    ev: Any = _new(_Unfrozen)
    ev.event_id = event_id
    ev.session_id = session_id
    ev.event_type = event_type
    ev.timestamp = timestamp
    ev.payload = payload
    ev.version = version
    ev.position = position
    ev.span_id = span_id
    ev.parent_span_id = parent_span_id
    ev.schema_version = schema_version
    ev.prev_hash = prev_hash
    ev.hash = hash
    ev.__class__ = AgentEvent
    return ev


# --- hash chain (SPEC 8) ---------------------------------------------------


def payload_bytes(payload: dict[str, Any]) -> bytes:
    """The canonical JSON of a payload: orjson, sorted keys."""
    return orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)


def canonical_bytes(event: AgentEvent, *, payload_json: bytes | None = None) -> bytes:
    """orjson with sorted keys over every field except ``position`` and ``hash``.

    ``payload_json`` lets a store that already serialized the payload (sorted
    keys) reuse those bytes instead of serializing twice.
    """
    return canonical_from_fields(
        event.event_id,
        event.event_type,
        event.parent_span_id,
        payload_bytes(event.payload) if payload_json is None else payload_json,
        event.prev_hash,
        event.schema_version,
        event.session_id,
        event.span_id,
        event.timestamp,
        event.version,
    )


def compute_hash(event: AgentEvent, *, payload_json: bytes | None = None) -> str:
    """``sha256(prev_hash + canonical(event))`` as 64 hex chars."""
    canonical = canonical_bytes(event, payload_json=payload_json)
    return hashlib.sha256(event.prev_hash.encode() + canonical).hexdigest()


def canonical_from_fields(
    event_id: str,
    event_type: str,
    parent_span_id: str | None,
    payload_json: bytes,
    prev_hash: str,
    schema_version: int,
    session_id: str,
    span_id: str | None,
    timestamp: str,
    version: int,
) -> bytes:
    """The canonical form (SPEC 8) from field values, ``payload_json`` already
    canonical. The one definition: ``canonical_bytes`` and the stores use it."""
    # Keys are written in sorted order, so orjson need not sort them.
    return orjson.dumps(
        {
            "event_id": event_id,
            "event_type": event_type,
            "parent_span_id": parent_span_id,
            "payload": orjson.Fragment(payload_json),
            "prev_hash": prev_hash,
            "schema_version": schema_version,
            "session_id": session_id,
            "span_id": span_id,
            "timestamp": timestamp,
            "version": version,
        }
    )


def store_link(prev_store_hash: str, position: int, event_hash: str) -> str:
    """One link of the store chain (the global order, SPEC 8):
    ``sha256(prev_store_hash + str(position) + ":" + event_hash)`` as 64 hex chars."""
    return hashlib.sha256(f"{prev_store_hash}{position}:{event_hash}".encode()).hexdigest()


# --- ids and timestamps ----------------------------------------------------

# Not os.urandom: it releases the GIL, and winning it back from the writer
# thread costs microseconds on the caller's path. Ids must be unique, not
# secret (OpenTelemetry's id generator makes the same choice). The random
# module reseeds itself in a forked child.
_rand = random.getrandbits
_uuid_lock = threading.Lock()
_last_ms = 0
_seq = 0
_prefix = ""


def uuid7(unix_ns: int | None = None) -> str:
    """A UUIDv7 string (RFC 9562), strictly increasing within this process.

    The 12-bit ``rand_a`` field is a counter within one millisecond (method 1
    of the RFC), so ids minted in the same millisecond still sort in order.
    """
    tail = f"{_rand(64):016x}"
    with _uuid_lock:
        return _next_uuid7(time.time_ns() if unix_ns is None else unix_ns, tail)


def uuid7_many(unix_ns: Iterable[int]) -> list[str]:
    """One :func:`uuid7` per timestamp, in order, under one lock acquisition."""
    stamps = list(unix_ns)
    n = len(stamps)
    # The random parts of the whole batch from one getrandbits call, cut into
    # 16-hex-char pieces in C: half the cost of two calls and a format per id.
    tails = _rand(64 * n).to_bytes(8 * n, "little").hex(" ", 8).split() if n else []
    with _uuid_lock:
        return [_next_uuid7(ns, tail) for ns, tail in zip(stamps, tails, strict=True)]


# The variant field: the first of the 16 random hex chars loses its top two
# bits to 0b10 (RFC 9562), leaving 62 random bits.
_VARIANT = {c: "89ab"[i & 3] for i, c in enumerate("0123456789abcdef")}


def _next_uuid7(unix_ns: int, tail: str) -> str:
    """The next id for ``unix_ns``; ``tail`` is 16 random lowercase hex chars."""
    global _last_ms, _seq, _prefix
    ms = unix_ns // 1_000_000
    if ms > _last_ms:
        _last_ms, _seq = ms, _rand(7)
        _prefix = f"{ms >> 16:08x}-{ms & 0xFFFF:04x}-"
    else:
        # Same (or an earlier, clock stepped back) millisecond: keep order.
        _seq += 1
        if _seq > 0xFFF:
            _last_ms += 1
            _seq = 0
            _prefix = f"{_last_ms >> 16:08x}-{_last_ms & 0xFFFF:04x}-"
    # version 7 | counter, then variant 0b10 | 62 random bits
    return f"{_prefix}{0x7000 | _seq:04x}-{_VARIANT[tail[0]]}{tail[1:4]}-{tail[4:]}"


def _fresh_state_in_child() -> None:
    # Another thread (the writer) may have held the lock at fork time; in the
    # child that thread does not exist and would never release it.
    global _uuid_lock, _span_ids
    _uuid_lock = threading.Lock()
    # The parent's unused span ids: the child would hand out the same ones.
    _span_ids = []


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_fresh_state_in_child)


# Every recorded call needs a span id. Cutting them from one large random
# number, a batch at a time, costs a list pop per call instead of a
# getrandbits and a formatting; list.pop is atomic, so threads never share one.
_SPAN_BATCH = 256
_span_ids: list[str] = []


def new_span_id() -> str:
    """A 64-bit random span id as 16 hex chars (the OpenTelemetry width)."""
    try:
        return _span_ids.pop()
    except IndexError:
        return _refill_span_ids()


def _refill_span_ids() -> str:
    global _span_ids
    # hex() with a separator every 8 bytes, then split(): all in C.
    ids = _rand(64 * _SPAN_BATCH).to_bytes(8 * _SPAN_BATCH, "little").hex(" ", 8).split()
    span_id = ids.pop()
    _span_ids = ids
    return span_id


_ts_cache: tuple[int, str] = (-1, "")


def format_timestamp(unix_ns: int) -> str:
    """ISO-8601 UTC with microseconds and a ``+00:00`` suffix."""
    global _ts_cache
    sec, rem = divmod(unix_ns, 1_000_000_000)
    cached_sec, prefix = _ts_cache
    if sec != cached_sec:
        # Formatting the date part costs ~1 µs; events arrive in bursts
        # within one second, so the prefix is computed once per second.
        prefix = datetime.fromtimestamp(sec, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
        _ts_cache = (sec, prefix)
    return "%s.%06d+00:00" % (prefix, rem // 1000)  # noqa: UP031 - faster than an f-string


# --- validation --------------------------------------------------------------

# fullmatch, not match with "$": "$" also matches before a final newline.
_SESSION_ID_RE = re.compile(r"[A-Za-z0-9._:@/+=-]{1,256}")
_EVENT_TYPE_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.:-]{0,127}")


def validate_session_id(session_id: object) -> str:
    """Return ``session_id`` or raise ``ValueError`` saying what is wrong with it."""
    if not isinstance(session_id, str):
        raise TypeError(f"session_id must be a str, got {type(session_id).__name__}")
    if not _SESSION_ID_RE.fullmatch(session_id):
        raise ValueError(
            f"invalid session_id {session_id[:80]!r}: use 1-256 characters from "
            "letters, digits and . _ : @ / + = -"
        )
    return session_id


def validate_event_type(event_type: object) -> str:
    """Return ``event_type`` or raise ``ValueError`` saying what is wrong with it."""
    if not isinstance(event_type, str):
        raise TypeError(f"event_type must be a str, got {type(event_type).__name__}")
    if not _EVENT_TYPE_RE.fullmatch(event_type):
        raise ValueError(
            f"invalid event_type {event_type[:80]!r}: start with a letter or _, then up to "
            "127 letters, digits or _ . : -"
        )
    return event_type


class EventFieldError(ValueError):
    """An event field has the wrong type or shape; ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"field {field!r}: {message}")
        self.field = field


_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_TIMESTAMP_RE = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?(Z|[+-][0-9]{2}:[0-9]{2})"
)
_HASH_RE = re.compile(r"[0-9a-f]{64}")


def _check_int(name: str, value: object, low: int) -> None:
    if type(value) is not int:
        raise EventFieldError(name, f"must be an int, got {type(value).__name__}")
    if value < low:
        raise EventFieldError(name, f"must be >= {low}, got {value}")


def _check_id(name: str, value: object, optional: bool) -> None:
    if value is None and optional:
        return
    if type(value) is not str:
        raise EventFieldError(name, f"must be a str, got {type(value).__name__}")
    if not _ID_RE.fullmatch(value):
        raise EventFieldError(name, f"{value[:80]!r} is not 1-128 letters, digits or . _ : -")


def check_event(ev: AgentEvent) -> AgentEvent:
    """Return ``ev`` if every field has the type and shape SPEC 2 gives it.

    Raises :class:`EventFieldError` naming the first bad field. Stores run this
    on events handed to ``append`` and ``ingest`` on every line, because a
    value a database converts after hashing (an int ``event_id`` stored as
    text) would make a valid session fail verification forever.
    """
    _check_id("event_id", ev.event_id, False)
    for name, check in (("session_id", validate_session_id), ("event_type", validate_event_type)):
        try:
            check(getattr(ev, name))
        except (TypeError, ValueError) as exc:
            raise EventFieldError(name, str(exc)) from None
    ts = ev.timestamp
    if type(ts) is not str:
        raise EventFieldError("timestamp", f"must be a str, got {type(ts).__name__}")
    if not _TIMESTAMP_RE.fullmatch(ts):
        raise EventFieldError("timestamp", f"{ts[:80]!r} is not ISO-8601 with a UTC offset")
    if type(ev.payload) is not dict:
        raise EventFieldError("payload", f"must be a dict, got {type(ev.payload).__name__}")
    _check_int("version", ev.version, 0)
    _check_int("position", ev.position, 0)
    _check_id("span_id", ev.span_id, True)
    _check_id("parent_span_id", ev.parent_span_id, True)
    _check_int("schema_version", ev.schema_version, 1)
    for name in ("prev_hash", "hash"):
        value = getattr(ev, name)
        if type(value) is not str or (value and not _HASH_RE.fullmatch(value)):
            raise EventFieldError(name, f"must be '' or 64 lowercase hex digits, got {value!r:.80}")
    return ev


_FIELDS = frozenset(AgentEvent.__slots__)
_REQUIRED = ("event_id", "session_id", "event_type", "timestamp")


def event_from_dict_checked(d: object) -> AgentEvent:
    """:meth:`AgentEvent.from_dict` for untrusted input (a spill or export line).

    Refuses anything but a JSON object with the required keys, no unknown
    keys, and every field valid (:func:`check_event`).
    """
    if not isinstance(d, dict):
        raise EventFieldError("<line>", f"expected a JSON object, got {type(d).__name__}")
    for name in _REQUIRED:
        if name not in d:
            raise EventFieldError(name, "is missing")
    unknown = set(d) - _FIELDS - {"store_hash"}
    if unknown:
        raise EventFieldError(sorted(unknown)[0], "is not an AgentEvent field")
    if "payload" in d and type(d["payload"]) is not dict:
        raise EventFieldError("payload", f"must be a dict, got {type(d['payload']).__name__}")
    return check_event(AgentEvent.from_dict(d))
