"""``open_store(url)``: every URL form, clear errors, and lazy optional drivers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import agent_trace.stores as stores
from agent_trace.stores import JSONLStore, MemoryStore, SQLiteStore, open_store


def test_memory() -> None:
    assert isinstance(open_store("memory://"), MemoryStore)
    assert open_store("memory://") is not open_store("memory://")


def test_sqlite_three_slashes_is_relative_to_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = open_store("sqlite:///relative.db")
    assert isinstance(store, SQLiteStore)
    assert store.path == str(tmp_path / "relative.db")
    (tmp_path / "sub" / "dir").mkdir(parents=True)
    assert open_store("sqlite:///sub/dir/x.db").path == str(tmp_path / "sub" / "dir" / "x.db")


def test_sqlite_four_slashes_is_absolute(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/abs.db")  # tmp_path starts with "/"
    assert store.path == str(tmp_path / "abs.db")
    assert open_store("sqlite:////tmp/agent.db").path == "/tmp/agent.db"


def test_sqlite_in_memory_and_options() -> None:
    assert open_store("sqlite://").path == ":memory:"
    assert open_store("sqlite:///:memory:").path == ":memory:"
    store = open_store("sqlite:////tmp/x.db?synchronous=full&busy_timeout_ms=5000")
    assert (store.path, store.synchronous, store.busy_timeout_ms) == ("/tmp/x.db", "FULL", 5000)
    assert open_store("SQLite:////tmp/x.db").path == "/tmp/x.db"
    with pytest.raises(ValueError, match="unsupported option"):
        open_store("sqlite:////tmp/x.db?journal=off")
    with pytest.raises(ValueError, match="synchronous"):
        open_store("sqlite:////tmp/x.db?synchronous=sometimes")
    with pytest.raises(ValueError, match="names a host"):
        open_store("sqlite://host/x.db")


def test_sqlite_in_a_missing_directory_fails_where_it_is_configured(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "x.db"
    with pytest.raises(ConnectionError, match=str(missing)):
        open_store(f"sqlite:///{missing}")
    assert not (tmp_path / "no").exists()


def test_jsonl_relative_and_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    store = open_store("jsonl:///traces")
    assert isinstance(store, JSONLStore)
    assert store.directory == str(tmp_path / "traces")
    assert open_store("jsonl:////var/traces").directory == "/var/traces"
    with pytest.raises(ValueError, match="directory"):
        open_store("jsonl://")


@pytest.mark.parametrize("name", ["agent.db", "agent.sqlite", "agent.sqlite3", "AGENT.DB"])
def test_bare_sqlite_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.chdir(tmp_path)
    store = open_store(name)
    assert isinstance(store, SQLiteStore)
    assert store.path == str(tmp_path / name)
    assert open_store(tmp_path / "p.db").path == str(tmp_path / "p.db")  # a Path works too


@pytest.mark.parametrize(
    "url",
    ["redis://admin:hunter2@cache:6379/0", "mysql://root:hunter2@db/app", "notes.txt"],
)
def test_unknown_url_is_a_clear_error_with_the_password_masked(url: str) -> None:
    with pytest.raises(ValueError) as info:
        open_store(url)
    message = str(info.value)
    assert "hunter2" not in message
    assert url.split("://")[0] in message
    for supported in ("memory://", "sqlite:///", "jsonl:///", "postgresql://", ".db"):
        assert supported in message


def test_memory_url_with_a_path_is_refused() -> None:
    with pytest.raises(ValueError, match="memory://"):
        open_store("memory://somewhere")


def test_postgres_without_its_driver_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    # As if asyncpg (and so the postgres module) could not be imported.
    monkeypatch.setitem(sys.modules, "agent_trace.stores.postgres", None)
    for url in ("postgresql://u:secret@db/app", "postgres://u@db/app"):
        with pytest.raises(ImportError, match=r"pip install 'agent-trace\[postgres\]'"):
            open_store(url)
    with pytest.raises(ImportError, match="agent-trace"):
        stores.PostgresStore  # noqa: B018 - the lazy attribute is the thing under test
    with pytest.raises(AttributeError):
        stores.NoSuchStore  # noqa: B018
    assert "PostgresStore" in dir(stores)


def test_other_schemes_never_import_asyncpg(subprocess_env: dict[str, str]) -> None:
    code = (
        "import sys\n"
        "from agent_trace.stores import open_store\n"
        "import agent_trace.stores as s\n"
        "for url in ('memory://', 'sqlite:///x.db', 'jsonl:///d', 'y.sqlite3'):\n"
        "    open_store(url)\n"
        "from agent_trace.stores import *\n"
        "assert 'asyncpg' not in sys.modules, 'asyncpg was imported'\n"
        "assert 'agent_trace.stores.postgres' not in sys.modules\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], env=subprocess_env, capture_output=True, timeout=60
    )
    assert result.returncode == 0, result.stderr.decode()


def test_exports() -> None:
    assert set(stores.__all__) == {
        "EventStore",
        "SessionInfo",
        "StoreError",
        "MemoryStore",
        "SQLiteStore",
        "JSONLStore",
        "open_store",
    }
