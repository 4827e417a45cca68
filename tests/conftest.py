"""Shared fixtures. ``recording`` gives each test its own store as the default."""

from __future__ import annotations

import pytest

import agent_trace as at


@pytest.fixture
def memory_store():
    """A fresh MemoryStore configured as the process default for one test."""
    from agent_trace.stores import MemoryStore

    store = MemoryStore()
    at.configure(store=store, durability="batched", auto_session=False)
    yield store
    at.flush_sync(timeout=10)


@pytest.fixture
def sqlite_store(tmp_path):
    """A fresh SQLite file configured as the process default for one test."""
    from agent_trace.stores import SQLiteStore

    store = SQLiteStore(tmp_path / "events.db")
    at.configure(store=store, durability="batched", auto_session=False)
    yield store
    at.flush_sync(timeout=10)
