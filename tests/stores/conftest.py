"""The backends the store conformance suite runs against.

Every test in ``test_store_conformance.py`` takes the ``store`` fixture and so
runs once per entry of ``STORE_KINDS``. Adding a backend is adding one
``StoreKind`` there (PostgreSQL: build it from ``AGENT_TRACE_TEST_PG_DSN`` and
skip when that is unset); it is done when the whole suite passes.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from pg_helpers import PG_MARKS, drop_test_schemas, pg_url

from agent_trace.stores import EventStore, JSONLStore, MemoryStore, SQLiteStore


@dataclass(frozen=True)
class StoreKind:
    """How the suite gets a store of one backend."""

    name: str
    #: A new, empty store for one test. Called again with the same directory it
    #: must return a second object on the same storage (to test reopening).
    make: Callable[[Path], EventStore]
    #: An ``open_store`` URL for that same storage, for tests that write from
    #: other OS processes; None for stores that live inside one process.
    url: Callable[[Path], str] | None = None
    #: pytest marks for every test of this kind (e.g. ``pytest.mark.postgres``).
    marks: tuple[Any, ...] = field(default_factory=tuple)

    @property
    def persistent(self) -> bool:
        return self.url is not None


STORE_KINDS: list[StoreKind] = [
    StoreKind("memory", lambda tmp: MemoryStore()),
    StoreKind(
        "sqlite",
        lambda tmp: SQLiteStore(tmp / "events.db"),
        url=lambda tmp: f"sqlite:///{tmp / 'events.db'}",
    ),
    StoreKind(
        "jsonl",
        lambda tmp: JSONLStore(tmp / "jsonl"),
        url=lambda tmp: f"jsonl:///{tmp / 'jsonl'}",
    ),
    # One schema per store directory (see pg_helpers); skipped without a server.
    StoreKind("postgres", lambda tmp: _postgres_store(tmp), url=pg_url, marks=PG_MARKS),
]


def _postgres_store(tmp: Path) -> EventStore:
    from agent_trace.stores.postgres import PostgresStore

    return PostgresStore(pg_url(tmp))


@pytest.fixture(autouse=True)
def _drop_postgres_schemas() -> Iterator[None]:
    yield
    drop_test_schemas()


def _params(kinds: list[StoreKind]) -> list[Any]:
    return [pytest.param(k, id=k.name, marks=k.marks) for k in kinds]


@pytest.fixture(params=_params(STORE_KINDS))
def store_kind(request: pytest.FixtureRequest) -> StoreKind:
    return request.param


@pytest.fixture(params=_params([k for k in STORE_KINDS if k.persistent]))
def persistent_kind(request: pytest.FixtureRequest) -> StoreKind:
    """Only the kinds whose data outlives the store object and the process."""
    return request.param


@pytest_asyncio.fixture
async def store(store_kind: StoreKind, tmp_path: Path) -> AsyncIterator[EventStore]:
    s = store_kind.make(tmp_path)
    yield s
    await s.close()


@pytest.fixture
def subprocess_env() -> dict[str, str]:
    """Environment for child Pythons that must import this checkout's agent_trace."""
    import agent_trace.stores

    root = str(Path(agent_trace.stores.__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env
