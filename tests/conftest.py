"""Shared fixtures. ``recording`` gives each test its own store as the default."""

from __future__ import annotations

import os

import pytest

# Arize Phoenix (a test dependency) registers a pytest plugin that imports its
# whole server (~10 s) and adds warnings to the summary line. pyproject's addopts
# keep it out of this run; the pytest processes these tests start (examples, the
# replay plugin's own runs) inherit this instead.
if "no:phoenix" not in os.environ.get("PYTEST_ADDOPTS", ""):
    os.environ["PYTEST_ADDOPTS"] = f"{os.environ.get('PYTEST_ADDOPTS', '')} -p no:phoenix".strip()

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
