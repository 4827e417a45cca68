"""docs/hashing.md's golden vectors: agent_trace and a standard-library reimplementation agree."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from agent_trace.events import AgentEvent, canonical_bytes, compute_hash, store_link

VECTORS = json.loads(
    (Path(__file__).resolve().parents[1] / "docs" / "hash_vectors.json").read_text("utf-8")
)
FIELDS = (
    "event_id",
    "event_type",
    "parent_span_id",
    "payload",
    "prev_hash",
    "schema_version",
    "session_id",
    "span_id",
    "timestamp",
    "version",
)


def _stdlib_canonical(value: Any) -> str:
    """docs/hashing.md's canonical JSON with the standard library only (no floats
    beyond what repr() writes the same way; the vectors use 12.5 and 0.1)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def test_agent_trace_reproduces_the_vectors() -> None:
    for v in VECTORS["vectors"]:
        ev = AgentEvent(**v["event"])
        assert canonical_bytes(ev).decode() == v["canonical"]
        assert compute_hash(ev) == v["hash"]


def test_the_written_rules_alone_reproduce_the_vectors() -> None:
    store = VECTORS["genesis"]
    heads: dict[str, str] = {}
    for v in VECTORS["vectors"]:
        event = v["event"]
        assert event["prev_hash"] == heads.get(event["session_id"], VECTORS["genesis"])
        assert _stdlib_canonical(event["payload"]) == v["payload_text"]
        canonical = _stdlib_canonical({k: event[k] for k in FIELDS})
        assert canonical == v["canonical"]
        digest = hashlib.sha256((event["prev_hash"] + canonical).encode()).hexdigest()
        assert digest == v["hash"]
        store = hashlib.sha256(f"{store}{event['position']}:{digest}".encode()).hexdigest()
        assert store == v["store_hash"] == store_link_again(v)
        heads[event["session_id"]] = digest


def store_link_again(v: dict[str, Any]) -> str:
    index = VECTORS["vectors"].index(v)
    prev = VECTORS["genesis"] if index == 0 else VECTORS["vectors"][index - 1]["store_hash"]
    return store_link(prev, v["event"]["position"], v["hash"])
