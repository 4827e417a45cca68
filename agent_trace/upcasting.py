"""Schema evolution: upcasters turn an old stored payload into the latest schema.

``register_upcaster("tool_executed", 1, fn)`` says: a ``tool_executed``
payload of schema version 1 becomes version 2 by ``fn(payload)``. Upcasters
chain (v1 -> v2 -> v3). Every store applies :func:`upcast` to each event it
reads (``get_events``, ``read_all``, and so projections and replay), so
readers only ever see the latest schema.

Never: rewrite stored data. The hash chain covers the stored form, so an
upcasted event keeps its stored ``prev_hash``/``hash``, and verification reads
the stored form (``raw=True``) to check them. An event whose schema version
has no complete path to the latest is returned as stored.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from agent_trace.events import AgentEvent, validate_event_type

__all__ = ["UpcastError", "clear_upcasters", "latest_schema_version", "register_upcaster", "upcast"]

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]

# event_type -> {from_version: fn}. Read on every stored event, so kept as a
# plain dict that is replaced (never mutated) on registration: readers on
# other threads see either the old or the new mapping, whole.
_registry: dict[str, dict[int, Upcaster]] = {}
_lock = threading.Lock()


class UpcastError(ValueError):
    """An upcaster raised or returned something other than a dict."""


def register_upcaster(event_type: str, from_version: int, fn: Upcaster) -> None:
    """Register ``fn(payload) -> payload`` turning ``event_type`` v``from_version`` into v+1.

    Registering the same (type, version) again replaces the earlier function.
    """
    global _registry
    validate_event_type(event_type)
    if not isinstance(from_version, int) or isinstance(from_version, bool) or from_version < 1:
        raise ValueError(f"from_version must be an int >= 1, got {from_version!r}")
    if not callable(fn):
        raise TypeError(f"upcaster must be callable, got {type(fn).__name__}")
    with _lock:
        new = {k: dict(v) for k, v in _registry.items()}
        new.setdefault(event_type, {})[from_version] = fn
        _registry = new


def clear_upcasters(event_type: str | None = None) -> None:
    """Forget the upcasters of ``event_type`` (all of them when None); for tests."""
    global _registry
    with _lock:
        if event_type is None:
            _registry = {}
        else:
            _registry = {k: v for k, v in _registry.items() if k != event_type}


def latest_schema_version(event_type: str, default: int = 1) -> int:
    """The schema version readers get for ``event_type`` (``default`` if none registered)."""
    chain = _registry.get(event_type)
    return max(chain) + 1 if chain else default


def upcast(event: AgentEvent) -> AgentEvent:
    """``event`` in the latest schema of its type, or unchanged if no full path exists."""
    chain = _registry.get(event.event_type)
    if not chain:
        return event
    latest = max(chain) + 1
    version = event.schema_version
    if version >= latest:
        return event
    steps = []
    while version < latest:
        fn = chain.get(version)
        if fn is None:
            return event  # a gap in the chain: read as stored
        steps.append((version, fn))
        version += 1
    payload = event.payload
    for from_version, fn in steps:
        try:
            payload = fn(payload)
        except Exception as exc:
            raise UpcastError(
                f"upcaster {event.event_type!r} v{from_version}->v{from_version + 1} failed "
                f"on event {event.event_id}: {type(exc).__name__}: {exc}"
            ) from exc
        if not isinstance(payload, dict):
            raise UpcastError(
                f"upcaster {event.event_type!r} v{from_version}->v{from_version + 1} returned "
                f"{type(payload).__name__}, expected a dict payload"
            )
    return AgentEvent(
        event_id=event.event_id,
        session_id=event.session_id,
        event_type=event.event_type,
        timestamp=event.timestamp,
        payload=payload,
        version=event.version,
        position=event.position,
        span_id=event.span_id,
        parent_span_id=event.parent_span_id,
        schema_version=latest,
        prev_hash=event.prev_hash,
        hash=event.hash,
    )


def has_upcasters() -> bool:
    """True once any upcaster is registered (lets readers skip the lookup)."""
    return bool(_registry)
