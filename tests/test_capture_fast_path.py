"""The capture fast path writes exactly the bytes of the full walk (SPEC 4)."""

from __future__ import annotations

import math
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_trace.capture import REDACTED, CaptureOptions, _slow, capture

SECRETS = [
    "Bearer abcdefghijklmnop",
    "basic dXNlcjpwYXNzd29yZA==",
    "BEARER\tqwertyuiop123",
    "sk-proj-abcdefghijklmnopqrstuvwx",
    "sk-ant-api03-abcdefghijklmnopqrst",
    "AKIAABCDEFGHIJKLMNOP",
    "ghp_" + "a1" * 20,
    "https://user:hunter2@example.com/x",
    "https://example.com/cb?api_key=abc123&x=1",
    "see https://h/x;token=zz",
    "xoxb-1234567890-abc",
    "AIza" + "B" * 35,
]
SECRET_KEYS = ["api_key", "apiKey", "Authorization", "x-api-key", "client_secret", "password"]
PLAIN_KEYS = ["max_tokens", "tokens", "keyword", "content", "role", "id", "b", "sk"]

text = st.one_of(
    st.text(max_size=40),
    st.text(alphabet="abBsk-_AKIS:/@?&;=e r\t", max_size=30),
    st.sampled_from(SECRETS),
    st.builds(
        lambda a, s, b: f"{a}{s}{b}",
        st.text(max_size=10),
        st.sampled_from(SECRETS),
        st.text(max_size=10),
    ),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    text,
)
keys = st.one_of(st.sampled_from(SECRET_KEYS + PLAIN_KEYS), st.text(max_size=12))
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.tuples(st.sampled_from(SECRET_KEYS + PLAIN_KEYS), children),
        st.dictionaries(keys, children, max_size=5),
    ),
    max_leaves=30,
)


@settings(max_examples=400, deadline=None)
@given(values)
def test_fast_path_and_walk_write_the_same_bytes(value: Any) -> None:
    assert capture(value) == _slow(value, CaptureOptions())


@settings(max_examples=150, deadline=None)
@given(values)
def test_same_bytes_with_extra_redact_keys_and_a_small_depth(value: Any) -> None:
    options = CaptureOptions(max_depth=3).with_redact({"content", "b"})
    assert capture(value, options) == _slow(value, options)


def test_the_fast_path_is_taken_for_a_plain_response() -> None:
    value = {"choices": [{"message": {"content": "hello", "refusal": None}}], "n": 1.5}
    assert capture(value) == orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def test_what_the_scan_must_send_to_the_walk() -> None:
    assert orjson.loads(capture({"a": [{"api_key": "x"}]})) == {"a": [{"api_key": REDACTED}]}
    assert orjson.loads(capture({"h": [("Authorization", "x")]})) == {
        "h": [["Authorization", REDACTED]]
    }
    assert orjson.loads(capture({"x": [None, math.nan]})) == {"x": [None, "NaN"]}
    assert orjson.loads(capture({"u": "Bearer abcdefgh"})) == {"u": f"Bearer {REDACTED}"}
    deep: Any = "leaf"
    for _ in range(40):
        deep = [deep]
    assert b"max depth" in capture(deep)
