"""Bad input never reaches the agent as an exception; it is recorded readably."""

from __future__ import annotations

import dataclasses
import enum
import math
import socket
import threading
import uuid
from datetime import datetime, timezone

import orjson
import pytest

import agent_trace as at
from agent_trace.capture import CaptureOptions, capture


class BrokenRepr:
    def __repr__(self) -> str:
        raise RuntimeError("repr exploded")


class Colour(enum.Enum):
    RED = "red"


@dataclasses.dataclass
class Point:
    x: int
    y: float
    password: str = "pw"


def _loads(value, **opts):
    return orjson.loads(capture(value, CaptureOptions(**opts)))


def test_native_types_fast_path():
    ts = datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=timezone.utc)
    uid = uuid.UUID("12345678-1234-5678-1234-567812345678")
    out = _loads({"t": ts, "u": uid, "e": Colour.RED, "tuple": (1, 2), "s": {3, 1, 2}})
    assert out == {
        "t": "2026-01-02T03:04:05.000006+00:00",
        "u": str(uid),
        "e": "red",
        "tuple": [1, 2],
        "s": [1, 2, 3],
    }


def test_sorted_keys_are_canonical():
    assert capture({"b": 1, "a": {"d": 2, "c": 3}}) == b'{"a":{"c":3,"d":2},"b":1}'


@pytest.mark.parametrize(
    "value, check",
    [
        (threading.Lock(), lambda s: "lock" in s),
        (BrokenRepr(), lambda s: s.startswith("<unrepresentable BrokenRepr")),
        ((i for i in range(3)), lambda s: "generator" in s),
        (object(), lambda s: s.startswith("<object object")),
    ],
)
def test_unserializable_objects_become_readable_strings(value, check):
    out = _loads({"v": value})
    assert isinstance(out["v"], str) and check(out["v"])


def test_socket_is_described():
    with socket.socket() as sock:
        assert "socket" in _loads([sock])[0]


def test_cycles_are_cut_visibly():
    d: dict = {"name": "root"}
    d["self"] = d
    lst: list = [1]
    lst.append(lst)
    out = _loads({"d": d, "l": lst})
    assert out["d"] == {"name": "root", "self": "<cycle: dict>"}
    assert out["l"] == [1, "<cycle: list>"]


def test_shared_references_are_not_cycles():
    shared = {"k": 1}
    assert _loads([shared, shared]) == [{"k": 1}, {"k": 1}]


def test_huge_strings_are_truncated_with_a_marker():
    out = _loads({"big": "x" * 10_000_000})
    assert len(out["big"]) < 20_100
    assert out["big"].startswith("x" * 100)
    assert out["big"].endswith("…[truncated 9980000 chars]")


def test_non_string_keys_nan_inf_bytes_bigints():
    out = _loads({1: "one", None: "none", (1, 2): "tuple", "nums": [math.nan, -math.inf, 2**70]})
    assert out["1"] == "one" and out["null"] == "none" and out["(1, 2)"] == "tuple"
    assert out["nums"] == ["NaN", "-Infinity", str(2**70)]
    assert _loads({"b": b"\x00\x01\x02", "ba": bytearray(5)}) == {
        "b": {"$bytes": 3},
        "ba": {"$bytes": 5},
    }


def test_colliding_keys_are_both_kept():
    out = _loads({1: "int", "1": "str"})
    assert sorted(out.values()) == ["int", "str"]


def test_deep_nesting_is_bounded():
    deep: list = []
    cur = deep
    for _ in range(1000):
        nxt: list = []
        cur.append(nxt)
        cur = nxt
    out = _loads(deep, max_depth=10)
    depth = 0
    while isinstance(out, list):
        out = out[0]
        depth += 1
    assert out == "<max depth 10 reached: list>"
    assert depth == 10


def test_long_containers_are_bounded():
    # Bounds apply once the value is too big to keep whole (> max_value_chars).
    out = _loads(list(range(50_000)), max_items=10)
    assert out[:10] == list(range(10)) and out[10] == "<49990 more items>"
    assert _loads(list(range(50)), max_items=10) == list(range(50))


def test_lone_surrogates_are_kept_visible():
    assert _loads({"s": "a\ud800b"}) == {"s": "a\\ud800b"}


def test_dataclass_fields_are_redacted():
    assert _loads({"p": Point(1, 2.5)}) == {"p": {"x": 1, "y": 2.5, "password": "[REDACTED]"}}


def test_redaction_is_case_insensitive_at_any_depth():
    value = {"outer": [{"Api_Key": "k", "inner": {"COOKIE": "c", "ok": 1}}], "secretive": "kept"}
    assert _loads(value) == {
        "outer": [{"Api_Key": "[REDACTED]", "inner": {"COOKIE": "[REDACTED]", "ok": 1}}],
        "secretive": "kept",
    }


def test_pydantic_models_are_dumped():
    pydantic = pytest.importorskip("pydantic")

    class Model(pydantic.BaseModel):
        name: str
        token_count: int

    assert _loads({"m": Model(name="n", token_count=3)}) == {"m": {"name": "n", "token_count": 3}}


async def test_bad_values_through_a_recorded_tool_never_raise(memory_store):
    cyclic: dict = {}
    cyclic["me"] = cyclic

    @at.record_tool
    async def odd(lock, sock, gen, broken, cyc, big, keys, floats, data, deep):
        return {"ok": True, "lock": lock}

    deep: list = []
    cur = deep
    for _ in range(300):
        cur.append([])
        cur = cur[0]
    with socket.socket() as sock:
        async with at.session("s-bad-input"):
            result = await odd(
                threading.Lock(),
                sock,
                (x for x in "ab"),
                BrokenRepr(),
                cyclic,
                "y" * 10_000_000,
                {1: "a", 2.5: "b"},
                [math.nan, math.inf],
                b"\xff" * 10,
                deep,
            )
    assert result["ok"] is True
    events = await at.get_events("s-bad-input")
    args = events[1].payload["args"]
    assert "lock" in args["lock"]
    assert args["broken"].startswith("<unrepresentable BrokenRepr")
    assert args["cyc"] == {"me": "<cycle: dict>"}
    assert len(args["big"]) < 20_100
    assert args["keys"] == {"1": "a", "2.5": "b"}
    assert args["floats"] == ["NaN", "Infinity"]
    assert args["data"] == {"$bytes": 10}
    assert "lock" in events[2].payload["result"]["lock"]


def test_to_jsonable_is_the_slow_path_copy():
    from agent_trace.capture import to_jsonable

    cyclic: dict = {"k": b"xy"}
    cyclic["me"] = cyclic
    assert to_jsonable(cyclic) == {"k": {"$bytes": 2}, "me": "<cycle: dict>"}
    assert orjson.loads(capture(cyclic)) == to_jsonable(cyclic)


@dataclasses.dataclass
class _Unsorted:
    zebra: int
    apple: dict


def test_captured_bytes_are_canonical():
    # Stores hash and keep captured bytes as they are, so they must equal the
    # canonical form (sorted keys at every level, dataclasses included).
    values = [
        {"b": 1, "a": [_Unsorted(1, {"y": 2, "x": 1})]},
        _Unsorted(2, {"k": {"d": 1, "c": Point(1, 2.0)}}),
        {"t": (3, {"z": 0, "a": 1}), "s": {2, 1}},
    ]
    for value in values:
        out = capture(value)
        assert out == orjson.dumps(orjson.loads(out), option=orjson.OPT_SORT_KEYS)


@pytest.mark.parametrize(
    "redact", [None, frozenset({"k", "ab"}), frozenset({'a"b', "x"}), frozenset({"a:b"})]
)
def test_known_keys_check_agrees_with_the_scan(redact):
    # Recorded calls pass the payload's keys so capture() can skip scanning the
    # output; the bytes must be exactly those of the scan, tricky keys included.
    opts = CaptureOptions() if redact is None else CaptureOptions(redact_keys=redact)
    keys = ["", "x", "k", "K", "ab", "aB", 'a"b', '"k', 'x"k', "k\\", "a:b", "é", "Api_Key"]
    keys += ["password", "PASSWORD", 'x"secret', "cookie\n", '"password":']
    values = [1, "k", '"k":', "password", None, 1.5, True, math.nan, "x" * 30_000]
    for i, key in enumerate(keys):
        for j, value in enumerate(values):
            other = keys[(i + j) % len(keys)]
            body = {"tool": "t", "args": {key: value, other: values[(j + 1) % len(values)]}}
            shape = ("tool", "args", key, other)
            assert capture(body, opts, shape) == capture(body, opts), body
            result = {"tool": key, "result": value, "duration_ms": 0.5}
            shape = ("tool", "result", "duration_ms")
            assert capture(result, opts, shape) == capture(result, opts), result
