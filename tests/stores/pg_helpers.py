"""The PostgreSQL server the tests use, and one schema per test.

``AGENT_TRACE_TEST_PG_DSN`` names the server (default: the local trust-auth
one). When it cannot be reached the PostgreSQL tests skip, saying why, unless
``AGENT_TRACE_REQUIRE_PG=1`` (CI), when they run and fail loudly instead.
Each store directory a test uses maps to its own schema, dropped after the
test, so tests are isolated and runs can repeat (and overlap).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import uuid
from pathlib import Path

import pytest

from agent_trace.stores.base import mask_url

PG_DSN = os.environ.get("AGENT_TRACE_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
REQUIRE_PG = os.environ.get("AGENT_TRACE_REQUIRE_PG") == "1"

# Per pytest process, so two runs at once never share a schema.
_RUN = uuid.uuid4().hex[:8]
_created: set[str] = set()
_created_lock = threading.Lock()


def _in_thread(coro_fn, *args):
    """Run ``coro_fn(*args)`` on a fresh loop in a thread (safe inside a running loop)."""
    box: dict[str, object] = {}

    def main() -> None:
        try:
            box["result"] = asyncio.run(coro_fn(*args))
        except BaseException as exc:
            box["error"] = exc

    t = threading.Thread(target=main)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box.get("result")


async def _probe(dsn: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn, timeout=3)
    await conn.close()


def _unavailable_reason() -> str | None:
    try:
        import asyncpg  # noqa: F401
    except ImportError:
        return "asyncpg is not installed (pip install 'agent-trace[postgres]')"
    try:
        _in_thread(_probe, PG_DSN)
    except Exception as exc:
        return f"PostgreSQL at {mask_url(PG_DSN)} is unreachable ({type(exc).__name__}: {exc})"
    return None


PG_UNAVAILABLE = _unavailable_reason()

#: Marks for every PostgreSQL test: skip when the server is missing, except in CI.
PG_MARKS = (
    pytest.mark.postgres,
    pytest.mark.skipif(
        PG_UNAVAILABLE is not None and not REQUIRE_PG,
        reason=f"{PG_UNAVAILABLE}; set AGENT_TRACE_TEST_PG_DSN, or AGENT_TRACE_REQUIRE_PG=1 "
        "to fail instead of skipping",
    ),
)


def pg_schema(where: Path | str) -> str:
    """The schema for one store directory (the same name every call); dropped after the test."""
    digest = hashlib.sha256(str(where).encode()).hexdigest()[:12]
    name = f"at_test_{_RUN}_{digest}"
    with _created_lock:
        _created.add(name)
    return name


def pg_url(where: Path | str) -> str:
    sep = "&" if "?" in PG_DSN else "?"
    return f"{PG_DSN}{sep}schema={pg_schema(where)}"


async def _drop(names: list[str]) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_DSN, timeout=10)
    try:
        for name in names:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    finally:
        await conn.close()


def drop_test_schemas() -> None:
    """Drop every schema handed out since the last call."""
    with _created_lock:
        names = sorted(_created)
        _created.clear()
    if names and PG_UNAVAILABLE is None:
        _in_thread(_drop, names)
