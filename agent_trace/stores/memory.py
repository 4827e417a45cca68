"""An in-process store: for tests, notebooks and short scripts.

Events live in this process only and are gone when it exits. Payloads are
kept as their canonical JSON and decoded on every read, so a caller
can never change stored history by mutating an event it passed in or got
back, and values round-trip exactly as through the persistent stores.
The methods never await: each is one critical section under a
``threading.Lock``, so one store may be used from several threads and event
loops at once.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from agent_trace.events import AgentEvent
from agent_trace.stores.base import (
    ENTRIES_MARKER,
    Captured,
    EventIndex,
    SessionFilter,
    SessionInfo,
    check_limit,
    check_projection_name,
    checked_captured,
    entries_json,
    event_from_row,
    event_types_filter,
    projection_conflict,
    split_state,
)

__all__ = ["MemoryStore"]


class MemoryStore:
    """Events in a list in this process; thread-safe, usable from any event loop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._index = EventIndex()
        # Position p is at index p - 1; rows as base.seal_rows makes them.
        self._rows: list[tuple[Any, ...]] = []
        self._projections: dict[str, tuple[str, int]] = {}  # name -> (state JSON, checkpoint)
        # name -> {key: value JSON} for views saved entry by entry (their state: ENTRIES_MARKER)
        self._entries: dict[str, dict[str, str]] = {}

    def __repr__(self) -> str:
        return f"MemoryStore(<{len(self._rows)} events>)"

    async def append(self, events: Sequence[AgentEvent]) -> int:
        """Assign versions, positions and hashes; skip known event ids; return the count."""
        return await self.append_captured(checked_captured(events))

    async def append_captured(self, items: Sequence[Captured]) -> int:
        """:meth:`append` for the recorder's captured tuples (no JSON round trip)."""
        with self._lock:
            rows = self._index.seal(items)
            for row in rows:
                self._index.add(row)
            self._rows.extend(rows)
        return len(rows)

    async def get_events(
        self,
        session_id: str,
        after_version: int = 0,
        event_types: Iterable[str] | None = None,
        *,
        raw: bool = False,
    ) -> list[AgentEvent]:
        """One session's events with ``version > after_version``, in version order."""
        types = event_types_filter(event_types)
        with self._lock:
            rows = self._rows
            picked = [rows[p - 1] for p in self._index.positions(session_id, after_version)]
        if types is not None:
            picked = [r for r in picked if r[2] in types]
        return [event_from_row(r, raw) for r in picked]

    async def read_all(
        self, after_position: int = 0, limit: int | None = None, *, raw: bool = False
    ) -> list[AgentEvent]:
        """Events of every session with ``position > after_position``, in position order."""
        limit = check_limit(limit)
        start = max(after_position, 0)
        stop = None if limit is None else start + limit
        with self._lock:
            picked = self._rows[start:stop]
        return [event_from_row(r, raw) for r in picked]

    async def stored_rows(
        self, session_id: str | None = None, after_position: int = 0, limit: int | None = None
    ) -> list[tuple[Any, ...]]:
        """Rows exactly as stored, for verification (see ``SQLiteStore.stored_rows``)."""
        limit = check_limit(limit)
        with self._lock:
            if session_id is not None:
                return [self._rows[p - 1] for p in self._index.positions(session_id)]
            start = max(after_position, 0)
            return self._rows[start : None if limit is None else start + limit]

    async def list_sessions(self, limit: int | None = None) -> list[SessionInfo]:
        """Sessions, most recently started first."""
        limit = check_limit(limit)
        with self._lock:
            return self._index.session_infos(limit)

    async def query_sessions(
        self, limit: int | None = None, filter: SessionFilter | None = None
    ) -> list[SessionInfo]:
        """Sessions from the sessions index, newest-started first (``SessionIndexStore``)."""
        limit = check_limit(limit)
        with self._lock:
            return self._index.session_infos(limit, filter, full=True)

    async def session_totals(self) -> dict[str, Any]:
        """Counts over every session, from the sessions index."""
        with self._lock:
            return self._index.totals()

    async def close(self) -> None:
        """Nothing to release; the events stay readable."""

    # --- projection checkpoints (base.ProjectionStore) -------------------------

    async def load_projection(self, name: str) -> tuple[str | None, int]:
        """``(state_json, checkpoint)`` as last saved, or ``(None, 0)``."""
        with self._lock:
            name = check_projection_name(name)
            entries = self._entries.get(name)
            if entries is not None:
                return entries_json(entries.items()), self._projections[name][1]
            return self._projections.get(name, (None, 0))

    async def save_projection(
        self, name: str, state_json: str, checkpoint: int, expected_checkpoint: int
    ) -> None:
        """Store state and checkpoint together if the stored checkpoint is the expected one."""
        check_projection_name(name)
        with self._lock:
            found = self._projections.get(name, (None, 0))[1]
            if found != expected_checkpoint:
                raise projection_conflict(name, expected_checkpoint, found)
            self._entries.pop(name, None)
            self._projections[name] = (state_json, checkpoint)

    async def save_projection_entries(
        self,
        name: str,
        entries: Mapping[str, str | None],
        checkpoint: int,
        expected_checkpoint: int,
    ) -> None:
        """Set (or delete, ``None``) entries and move the checkpoint, compare-and-set."""
        check_projection_name(name)
        with self._lock:
            state, found = self._projections.get(name, (None, 0))
            if found != expected_checkpoint:
                raise projection_conflict(name, expected_checkpoint, found)
            stored = self._entries.get(name)
            if stored is None:
                stored = split_state(name, state) if state is not None else {}
            for key, value in entries.items():
                if value is None:
                    stored.pop(key, None)
                else:
                    stored[key] = value
            self._entries[name] = stored
            self._projections[name] = (ENTRIES_MARKER, checkpoint)
