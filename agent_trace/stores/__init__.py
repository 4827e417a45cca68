"""Event stores behind one protocol, and ``open_store(url)`` to pick one.

``open_store`` parses the URL and builds the store object: no file, socket
or database is opened or created until the store is first used (SQLite only
checks that the file's directory exists), and optional drivers (asyncpg for
PostgreSQL) are imported only for their own URLs, never by
``import agent_trace``.

URLs (SQLAlchemy convention: three slashes then a relative path, four for
an absolute one)::

    memory://
    sqlite:///relative.db        sqlite:////abs/path.db      sqlite://  (in memory)
    sqlite:///app.db?synchronous=FULL&busy_timeout_ms=5000
    jsonl:///relative/dir        jsonl:////abs/dir
    postgresql://user:pass@host/db   (or postgres://; needs agent-trace[postgres])
    path/to/file.db  (also .sqlite, .sqlite3)
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import parse_qsl

from agent_trace.stores.base import EventStore, SessionInfo, StoreError, mask_url
from agent_trace.stores.jsonl import JSONLStore
from agent_trace.stores.memory import MemoryStore
from agent_trace.stores.sqlite import SQLiteStore

# PostgresStore is importable from here too, but lazily (module __getattr__),
# so it is left out of __all__: a star import must not pull in asyncpg.
__all__ = [
    "EventStore",
    "JSONLStore",
    "MemoryStore",
    "SQLiteStore",
    "SessionInfo",
    "StoreError",
    "open_store",
]

_SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")
_SUPPORTED = (
    "memory://, sqlite:///relative.db, sqlite:////abs/path.db, jsonl:///dir, "
    "postgresql://user@host/db, or a path ending in .db, .sqlite or .sqlite3"
)


def open_store(url: str | os.PathLike[str]) -> EventStore:
    """The store a URL names (see the module docstring); opens nothing yet.

    Raises ``ValueError`` naming the URL (password masked) if it is not
    understood, ``ConnectionError``/``PermissionError`` naming the path for a
    SQLite file in a missing or unwritable directory, and ``ImportError`` if
    the backend's driver is not installed.
    """
    url = os.fspath(url)
    if not isinstance(url, str):
        raise TypeError(f"store URL must be a str, got {type(url).__name__}")
    scheme, sep, rest = url.partition("://")
    if not sep:
        if url.lower().endswith(_SQLITE_SUFFIXES):
            return SQLiteStore(url)
        raise _unknown(url)
    scheme = scheme.lower()
    if scheme == "memory":
        if rest.strip("/"):
            raise ValueError(f"memory store URL takes no path: {mask_url(url)!r}; use memory://")
        return MemoryStore()
    if scheme == "sqlite":
        path, query = _local_path(url, rest)
        return SQLiteStore(path or ":memory:", **_sqlite_options(url, query))
    if scheme == "jsonl":
        path, query = _local_path(url, rest)
        if not path or query:
            raise ValueError(f"jsonl store URL needs a directory and no query: {mask_url(url)!r}")
        return JSONLStore(path)
    if scheme in ("postgresql", "postgres"):
        return _postgres_store_class()(url)
    raise _unknown(url)


def _unknown(url: str) -> ValueError:
    return ValueError(f"unknown store URL {mask_url(url)!r}: use {_SUPPORTED}")


def _local_path(url: str, rest: str) -> tuple[str, str]:
    """``(path, query)`` from what follows ``scheme://``; a host part is an error."""
    rest, _, query = rest.partition("?")
    if not rest:
        return "", query
    if not rest.startswith("/"):
        raise ValueError(
            f"store URL {mask_url(url)!r} names a host; local stores take three slashes for a "
            "relative path (sqlite:///app.db) or four for an absolute one (sqlite:////tmp/app.db)"
        )
    return rest[1:], query


def _sqlite_options(url: str, query: str) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for key, value in parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)):
        if key == "synchronous":
            options[key] = value
        elif key == "busy_timeout_ms" and value.isdigit():
            options[key] = int(value)
        else:
            raise ValueError(
                f"unsupported option {key!r} in store URL {mask_url(url)!r}: "
                "known are synchronous=OFF|NORMAL|FULL|EXTRA and busy_timeout_ms=<int>"
            )
    return options


def _postgres_store_class() -> type:
    try:
        from agent_trace.stores.postgres import PostgresStore
    except ImportError as exc:
        raise ImportError(
            f"the PostgreSQL store needs asyncpg: pip install 'agent-trace[postgres]' ({exc})"
        ) from exc
    return PostgresStore


def __getattr__(name: str) -> Any:
    if name == "PostgresStore":
        return _postgres_store_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return [*__all__, "PostgresStore"]
