"""Security: secrets never reach disk, identifiers are validated, store URLs are masked."""

from __future__ import annotations

from pathlib import Path

import pytest

import agent_trace as at
from agent_trace.stores import JSONLStore, SQLiteStore, open_store
from agent_trace.stores.base import mask_url

SECRETS = [
    "hunter2-PASSWORD-zz9",
    "sk-APIKEY-0123456789",
    "Bearer-AUTH-abcdef",
    "COOKIE-session-777",
    "custom-SSN-123-45-6789",
    "REFRESH-tok-xyz",
]


def _record_secrets() -> None:
    @at.record_tool(redact=["ssn"])
    def login(user: str, password: str, config: dict) -> dict:
        return {"ok": True, "access_token": "sk-APIKEY-0123456789", "refresh_token": SECRETS[5]}

    @at.record_llm(model="m")
    def call(prompt: str, api_key: str) -> str:
        return "fine"

    with at.session("secrets", password=SECRETS[0]):
        login(
            "alice",
            SECRETS[0],
            {"headers": {"Authorization": SECRETS[2]}, "nested": [{"Cookie": SECRETS[3]}]},
        )
        call("hi", api_key=SECRETS[1])
        at.emit(
            "profile", {"user": {"SSN": "no: only tool redaction adds ssn", "secret": SECRETS[4]}}
        )
    at.flush_sync()


def _grep(directory: Path) -> list[tuple[str, str]]:
    hits = []
    for path in directory.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            hits += [(path.name, s) for s in SECRETS if s.encode() in data]
    return hits


@pytest.mark.parametrize("kind", ["sqlite", "jsonl"])
async def test_no_secret_reaches_the_store_files(tmp_path, kind):
    (tmp_path / "db").mkdir()
    store = (
        SQLiteStore(tmp_path / "db" / "events.db")
        if kind == "sqlite"
        else JSONLStore(tmp_path / "db")
    )
    at.configure(store=store, durability="batched")
    try:
        _record_secrets()
        events = await store.get_events("secrets")
        assert len(events) == 7
        assert events[0].payload["metadata"]["password"] == "[REDACTED]"
        # the WAL file (and the database once checkpointed) are both checked
        assert _grep(tmp_path / "db") == []
        await store.close()
        assert _grep(tmp_path / "db") == []
    finally:
        at.configure(store="memory://")


def test_session_ids_and_event_types_are_validated(memory_store):
    for bad in ("", "has space", "quote'", 'dq"', "semi;colon", "x" * 257, "new\nline", "é"):
        with pytest.raises(ValueError, match="invalid session_id"):
            at.session(bad)
    with pytest.raises(TypeError, match="session_id must be a str"):
        at.session(42)
    with at.session("ok-id_1.2:3@x/y+z=w"):
        for bad in ("", "1starts_with_digit", "has space", "drop'table", "x" * 200):
            with pytest.raises(ValueError, match="invalid event_type"):
                at.emit(bad, {})


async def test_sql_looking_values_are_stored_as_data(sqlite_store):
    text = "'); DROP TABLE events; --"
    with at.session("sql-data"):
        at.emit("user_message_received", {"message": text, text: text})
    events = await at.get_events("sql-data")
    assert events[1].payload == {"message": text, text: text}
    assert (await at.verify_store()).ok


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql://u:pw@h/db", "postgresql://u:***@h/db"),
        ("postgresql://u:p@ss@h:5432/db", "postgresql://u:***@h:5432/db"),
        (
            "postgresql://u@h/db?password=hunter2&sslmode=require",
            "postgresql://u@h/db?password=***&sslmode=require",
        ),
        (
            "postgresql://h/db?sslpassword=k&PASSWORD=x",
            "postgresql://h/db?sslpassword=***&PASSWORD=***",
        ),
        ("postgresql://u:pw@h/db?password=x", "postgresql://u:***@h/db?password=***"),
        ("postgresql://h/db?application_name=a@b", "postgresql://h/db?application_name=a@b"),
        ("sqlite:///a.db", "sqlite:///a.db"),
        ("memory://", "memory://"),
    ],
)
def test_mask_url(url, masked):
    assert mask_url(url) == masked


@pytest.mark.parametrize(
    "url",
    [
        "nosuch://user:hunter2@host/db",
        "nosuch://host/db?password=hunter2",
        "sqlite:///x.db?password=hunter2",
        "jsonl:///dir?password=hunter2",
        "sqlite://host:hunter2@x/y.db",
    ],
)
def test_store_url_errors_never_show_the_password(url):
    with pytest.raises(ValueError) as info:
        open_store(url)
    assert "hunter2" not in str(info.value)
