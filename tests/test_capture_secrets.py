"""SPEC 4: redaction by key words, value masking, ``configure(mask=fn)``, ``max_event_bytes``.

Each secret the issue 13 audit found recorded in clear is captured here and
must not survive; the keys SPEC 4 lists as not secret must survive.
"""

from __future__ import annotations

import orjson
import pytest

import agent_trace as at
from agent_trace.capture import REDACTED, CaptureOptions, capture, key_words
from agent_trace.stores import MemoryStore

SECRET = "s3cr3t-VALUE-0042"

MUST_REDACT = [
    "api_key",
    "apiKey",
    "x-api-key",
    "api-key",
    "OPENAI_API_KEY",
    "Authorization",
    "proxy-authorization",
    "password",
    "passwd",
    "secret",
    "client_secret",
    "token",
    "access_token",
    "refresh_token",
    "id_token",
    "private_key",
    "cookie",
    "set-cookie",
    "credentials",
    "X-Api-Key",
    "APIKey",
    "clientSecret",
]
MUST_KEEP = [
    "max_tokens",
    "input_tokens",
    "output_tokens",
    "total_tokens",
    "token_count",
    "tokens",
    "keyword",
    "monkey",
]


def _captured(value: object, options: CaptureOptions | None = None) -> object:
    return orjson.loads(capture(value, options or CaptureOptions()))


@pytest.mark.parametrize("key", MUST_REDACT)
def test_keys_naming_secrets_are_redacted_at_any_depth(key: str) -> None:
    out = _captured({"outer": [{key: SECRET, "ok": 1}]})
    assert out == {"outer": [{key: REDACTED, "ok": 1}]}


@pytest.mark.parametrize("key", MUST_KEEP)
def test_keys_that_only_look_like_secrets_are_kept(key: str) -> None:
    assert _captured({key: 123, "nested": {key: "v"}}) == {key: 123, "nested": {key: "v"}}


def test_key_words_split_separators_and_camel_case() -> None:
    assert key_words("OPENAI_API_KEY") == ("openai", "api", "key")
    assert key_words("x-api-key") == ("x", "api", "key")
    assert key_words("apiKey") == ("api", "key")
    assert key_words("APIKey") == ("api", "key")
    assert key_words("proxy.authorization header") == ("proxy", "authorization", "header")


def test_the_known_keys_fast_path_redacts_the_same() -> None:
    opts = CaptureOptions()
    for key in MUST_REDACT + MUST_KEEP:
        body = {"tool": "t", "args": {key: SECRET}}
        assert capture(body, opts, ("tool", "args", key)) == capture(body, opts)


@pytest.mark.parametrize(
    "headers",
    [
        [("Authorization", f"Token {SECRET}"), ("Accept", "json")],
        [["x-api-key", SECRET], ["accept", "json"]],
        (("Cookie", SECRET),),
    ],
)
def test_header_lists_are_masked_by_header_name(headers: object) -> None:
    out = _captured({"headers": headers})
    assert SECRET not in orjson.dumps(out).decode()
    assert REDACTED in orjson.dumps(out).decode()
    assert "json" in orjson.dumps(out).decode() or len(out["headers"]) == 1  # others kept


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        (f"curl -H 'Authorization: Bearer {SECRET}' https://api.example.com", "curl -H"),
        (f"GET https://api.example.com/v1/items?limit=3&api_key={SECRET}&q=x", "limit=3"),
        (f"postgresql://admin:{SECRET}@db.internal:5432/prod", "admin:"),
        (f"https://user:{SECRET}@example.com/path", "https://user:"),
        ("key sk-abcdefghijklmnopqrstuvwxyz012345 in text", "key "),
        ("sk-ant-api03-abcdefghijklmnopqrstuvwxyz0123456789", ""),
        ("AKIAIOSFODNN7EXAMPLE was the access key", "access key"),
        ("token ghp_abcdefghijklmnopqrstuvwxyz0123456789", "token "),
    ],
)
def test_secrets_inside_strings_are_masked(text: str, kept: str) -> None:
    out = _captured({"note": text, "list": [text]})
    note = out["note"]
    assert REDACTED in note and kept in note, note
    for secret in (SECRET, "abcdefghijklmnop", "IOSFODNN7EXAMPLE"):
        assert secret not in note
    assert out["list"] == [note]


def test_ordinary_text_is_not_masked() -> None:
    value = {
        "message": "the bearer of good news asked about https://example.com/a?b=c",
        "email": "alice@example.com",
        "tokens": 12,
    }
    assert _captured(value) == value


def test_configure_mask_applies_to_every_string_and_a_failing_mask_redacts() -> None:
    def no_emails(s: str) -> str:
        return s.replace("alice@example.com", "<email>")

    opts = CaptureOptions(mask=no_emails)
    assert _captured({"to": ["alice@example.com"], "n": 1}, opts) == {"to": ["<email>"], "n": 1}

    def broken(s: str) -> str:
        if "boom" in s:
            raise RuntimeError("mask failed")
        return s

    opts = CaptureOptions(mask=broken)
    assert _captured({"a": "boom here", "b": "fine"}, opts) == {"a": REDACTED, "b": "fine"}


async def test_configure_mask_and_max_event_bytes_reach_recorded_events() -> None:
    store = MemoryStore()
    at.configure(
        store=store,
        mask=lambda s: s.replace("alice@example.com", "<email>"),
        max_event_bytes=50_000,
    )
    try:
        async with at.session("masked") as sess:
            at.emit("mail", {"to": "alice@example.com", "body": ["x" * 1000] * 200})
        events = await store.get_events(sess.id)
    finally:
        at.configure(mask=None, max_event_bytes=2_000_000)
    mail = next(e for e in events if e.event_type == "mail")
    assert mail.payload["to"] == "<email>"
    text = orjson.dumps(mail.payload)
    assert len(text) < 60_000 and b"max_event_bytes" in text  # cut, visibly


def test_max_event_bytes_cuts_with_a_marker_and_a_huge_value_costs_little() -> None:
    shared = [list(range(2000)) for _ in range(2000)]  # 4 million ints, 8+ MB as JSON
    opts = CaptureOptions()
    # The walk stops at the budget (its time: benchmarks/soak.py prints it).
    out = capture({"a": shared, "b": shared}, opts)
    assert len(out) <= 2 * opts.max_event_bytes
    assert b"max_event_bytes" in out

    many = {f"k{i}": "v" * 19_000 for i in range(200)}  # 3.8 MB of strings under the char cap
    out = capture(many, opts)
    assert len(out) <= 2 * opts.max_event_bytes and b"max_event_bytes" in out


@pytest.mark.parametrize("password", ["ab/cdSECRET", "ab?cdSECRET", "ab#cdSECRET", "abSECRET/x@y"])
def test_a_postgresql_url_error_never_shows_part_of_the_password(password: str) -> None:
    pytest.importorskip("asyncpg")
    from agent_trace.stores.postgres import PostgresStore

    url = f"postgresql://admin:{password}@db.internal:5432/prod"
    try:
        PostgresStore(url)
    except ValueError as exc:
        message = str(exc)
    else:
        return  # parsed (the password happened to be valid URL syntax): nothing shown
    for part in (password, password[:2], "cd", "SECRET"):
        assert part not in message, message
