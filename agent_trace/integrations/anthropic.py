"""Record and replay the Anthropic SDK (``pip install 'agent-trace[anthropic]'``).

``agent_trace.instrument_anthropic(client=None)``: ``messages.create``
(streamed or not), ``messages.parse`` and the ``messages.stream(...)``
helper (its events, ``text_stream``, ``get_final_message()``), each also
through ``with_raw_response``; sync and async clients. See ``_sdk`` for how.
"""

from __future__ import annotations

from typing import Any

import orjson

from agent_trace.integrations._sdk import SDK, Instrumentation, Target, instrument
from agent_trace.integrations._text import pieces
from agent_trace.llm import AnthropicStreamAssembler
from agent_trace.streams import Assembler

try:
    import anthropic
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise ImportError(
        "agent_trace.instrument_anthropic() needs the Anthropic SDK: "
        "pip install 'agent-trace[anthropic]'"
    ) from exc

__all__ = ["instrument_anthropic"]

_MESSAGES = "anthropic.resources.messages.messages"


def _targets() -> tuple[Target, ...]:
    out = []
    for is_async, prefix in ((False, ""), (True, "Async")):
        out += [
            Target(_MESSAGES, f"{prefix}Messages", "create", "anthropic.messages.create",
                   ("messages",), is_async, "messages"),
            Target(_MESSAGES, f"{prefix}Messages", "parse", "anthropic.messages.parse",
                   ("messages",), is_async, "messages"),
            Target(_MESSAGES, f"{prefix}Messages", "stream", "anthropic.messages.stream",
                   ("messages",), is_async, "message_stream"),
        ]  # fmt: skip
    return tuple(out)


class AnthropicSDK(SDK):
    provider = "anthropic"
    targets = _targets()
    module = anthropic
    sync_client, async_client = "Anthropic", "AsyncAnthropic"
    replay_url = "http://agent-trace.replay"

    def assembler(self, shape: str) -> Assembler:
        return AnthropicStreamAssembler()

    def sse(self, shape: str, response: Any, chunks: int | None) -> bytes:
        events = _message_events(response if isinstance(response, dict) else {}, chunks)
        return b"".join(
            b"event: " + e["type"].encode() + b"\ndata: " + orjson.dumps(e) + b"\n\n"
            for e in events
        )


def _message_events(message: dict[str, Any], chunks: int | None) -> list[dict[str, Any]]:
    """Raw stream events that the SDK accumulates back into ``message``."""
    usage = dict(message.get("usage") or {})
    start_usage = {**usage, "output_tokens": 1 if usage.get("output_tokens") else 0}
    started = {
        **message,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": start_usage,
    }
    events: list[dict[str, Any]] = [{"type": "message_start", "message": started}]
    blocks = [b for b in message.get("content") or [] if isinstance(b, dict)]
    texts = sum(1 for b in blocks if b.get("type") == "text")
    per_text = max(1, ((chunks or 0) - 3 - 2 * len(blocks)) // max(1, texts))
    for index, block in enumerate(blocks):
        kind = block.get("type")
        if kind == "text":
            start: dict[str, Any] = {**block, "text": ""}
            text = block.get("text") or ""
            deltas = [{"type": "text_delta", "text": p} for p in pieces(text, per_text)]
        elif kind in ("tool_use", "server_tool_use"):
            start = {**block, "input": {}}
            partial = orjson.dumps(block.get("input") or {}).decode()
            deltas = [{"type": "input_json_delta", "partial_json": partial}]
        elif kind == "thinking":
            start = {**block, "thinking": "", "signature": ""}
            deltas = [{"type": "thinking_delta", "thinking": block.get("thinking") or ""}]
            if block.get("signature"):
                deltas.append({"type": "signature_delta", "signature": block["signature"]})
        else:  # redacted thinking, server results ...: whole in the start event
            start, deltas = block, []
        events.append({"type": "content_block_start", "index": index, "content_block": start})
        for delta in deltas:
            events.append({"type": "content_block_delta", "index": index, "delta": delta})
        events.append({"type": "content_block_stop", "index": index})
    end_usage = {"output_tokens": usage.get("output_tokens") or 0}
    for key in ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens"):
        if usage.get(key) is not None:
            end_usage[key] = usage[key]
    events.append(
        {
            "type": "message_delta",
            "delta": {
                "stop_reason": message.get("stop_reason"),
                "stop_sequence": message.get("stop_sequence"),
            },
            "usage": end_usage,
        }
    )
    events.append({"type": "message_stop"})
    return events


_SDK = AnthropicSDK()


def instrument_anthropic(client: Any = None) -> Instrumentation:
    """Record the Anthropic SDK's LLM calls, for every client or for ``client`` only."""
    return instrument(_SDK, client)
