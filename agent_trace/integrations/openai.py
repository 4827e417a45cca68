"""Record and replay the OpenAI SDK (``pip install 'agent-trace[openai]'``).

``agent_trace.instrument_openai(client=None)``: chat completions (``create``,
``parse``, streamed or not), the Responses API (``create``, ``parse``,
streamed or not), embeddings, each also through ``with_raw_response``; sync
and async clients (Azure ones included). See ``_sdk`` for how.
"""

from __future__ import annotations

from typing import Any

import orjson

from agent_trace.integrations._sdk import SDK, Instrumentation, Target, instrument
from agent_trace.integrations._text import pieces
from agent_trace.llm import ChatStreamAssembler, ResponsesStreamAssembler
from agent_trace.streams import Assembler

try:
    import openai
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise ImportError(
        "agent_trace.instrument_openai() needs the OpenAI SDK: pip install 'agent-trace[openai]'"
    ) from exc

__all__ = ["instrument_openai"]

_CHAT = "openai.resources.chat.completions.completions"
_RESPONSES = "openai.resources.responses.responses"
_EMBEDDINGS = "openai.resources.embeddings"


def _targets() -> tuple[Target, ...]:
    out = []
    for is_async, prefix in ((False, ""), (True, "Async")):
        out += [
            Target(_CHAT, f"{prefix}Completions", "create", "openai.chat.completions.create",
                   ("chat", "completions"), is_async, "chat"),
            Target(_CHAT, f"{prefix}Completions", "parse", "openai.chat.completions.parse",
                   ("chat", "completions"), is_async, "chat"),
            Target(_RESPONSES, f"{prefix}Responses", "create", "openai.responses.create",
                   ("responses",), is_async, "responses"),
            Target(_RESPONSES, f"{prefix}Responses", "parse", "openai.responses.parse",
                   ("responses",), is_async, "responses"),
            Target(_EMBEDDINGS, f"{prefix}Embeddings", "create", "openai.embeddings.create",
                   ("embeddings",), is_async, "embeddings"),
        ]  # fmt: skip
    return tuple(out)


class OpenAISDK(SDK):
    provider = "openai"
    targets = _targets()
    module = openai
    sync_client, async_client = "OpenAI", "AsyncOpenAI"
    replay_url = "http://agent-trace.replay/v1"

    def assembler(self, shape: str) -> Assembler:
        return ResponsesStreamAssembler() if shape == "responses" else ChatStreamAssembler()

    def sse(self, shape: str, response: Any, chunks: int | None) -> bytes:
        if not isinstance(response, dict):
            response = {}
        if shape == "responses":
            events = _responses_events(response, chunks)
            return b"".join(
                b"event: " + e["type"].encode() + b"\ndata: " + orjson.dumps(e) + b"\n\n"
                for e in events
            )
        out = [b"data: " + orjson.dumps(c) + b"\n\n" for c in _chat_chunks(response, chunks)]
        out.append(b"data: [DONE]\n\n")
        return b"".join(out)


def _chat_chunks(response: dict[str, Any], chunks: int | None) -> list[dict[str, Any]]:
    """``chat.completion.chunk`` dicts whose deltas join back into ``response``."""
    head = {
        "id": response.get("id") or "chatcmpl-replay",
        "object": "chat.completion.chunk",
        "created": response.get("created") or 0,
        "model": response.get("model") or "",
    }
    for key in ("system_fingerprint", "service_tier"):
        if response.get(key) is not None:
            head[key] = response[key]
    out: list[dict[str, Any]] = []

    def chunk(index: int, delta: dict[str, Any], finish: Any = None) -> None:
        choice = {"index": index, "delta": delta, "finish_reason": finish, "logprobs": None}
        out.append({**head, "choices": [choice]})

    choices = response.get("choices") or []
    # Spread the recorded chunk count over the text: role, text pieces, the end, usage.
    text_chunks = max(1, (chunks or 0) - 2 - (1 if response.get("usage") else 0))
    for choice in choices:
        index = choice.get("index") or 0
        message = choice.get("message") or {}
        chunk(index, {"role": message.get("role") or "assistant", "content": ""})
        for key in ("content", "refusal"):
            text = message.get(key)
            if isinstance(text, str) and text:
                for piece in pieces(text, text_chunks):
                    chunk(index, {key: piece})
        for i, call in enumerate(message.get("tool_calls") or []):
            fn = call.get("function") or {}
            delta = {
                "index": i,
                "id": call.get("id"),
                "type": call.get("type") or "function",
                "function": {"name": fn.get("name") or "", "arguments": fn.get("arguments") or ""},
            }
            chunk(index, {"tool_calls": [delta]})
        chunk(index, {}, choice.get("finish_reason") or "stop")
    if response.get("usage"):
        out.append({**head, "choices": [], "usage": response["usage"]})
    return out


def _responses_events(response: dict[str, Any], chunks: int | None) -> list[dict[str, Any]]:
    """Responses API stream events, in the API's order, that rebuild ``response``."""
    started = {**response, "status": "in_progress", "output": [], "usage": None}
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": started},
        {"type": "response.in_progress", "response": started},
    ]
    output = [item for item in response.get("output") or [] if isinstance(item, dict)]
    texts = sum(
        1
        for item in output
        if item.get("type") == "message"
        for part in item.get("content") or []
        if isinstance(part, dict) and isinstance(part.get("text"), str)
    )
    per_text = max(1, ((chunks or 0) - 4 - 6 * texts) // max(1, texts))
    for index, item in enumerate(output):
        if item.get("type") != "message":  # tool calls, reasoning ...: whole, added then done
            events.append(
                {"type": "response.output_item.added", "output_index": index, "item": item}
            )
            events.append(
                {"type": "response.output_item.done", "output_index": index, "item": item}
            )
            continue
        item_id = str(item.get("id") or "")
        opened = {**item, "status": "in_progress", "content": []}
        events.append({"type": "response.output_item.added", "output_index": index, "item": opened})
        for c, part in enumerate(item.get("content") or []):
            if not isinstance(part, dict):
                continue
            where = {"item_id": item_id, "output_index": index, "content_index": c}
            text = part.get("text")
            empty = {**part, "text": ""} if isinstance(text, str) else part
            events.append({"type": "response.content_part.added", **where, "part": empty})
            if isinstance(text, str):
                for piece in pieces(text, per_text):
                    delta = {"type": "response.output_text.delta", **where, "delta": piece}
                    events.append({**delta, "logprobs": []})
                done = {"type": "response.output_text.done", **where, "text": text}
                events.append({**done, "logprobs": []})
            events.append({"type": "response.content_part.done", **where, "part": part})
        events.append({"type": "response.output_item.done", "output_index": index, "item": item})
    status = response.get("status")
    end = {"incomplete": "response.incomplete", "failed": "response.failed"}.get(
        status if isinstance(status, str) else "", "response.completed"
    )
    events.append({"type": end, "response": response})
    for n, event in enumerate(events):
        event["sequence_number"] = n
    return events


_SDK = OpenAISDK()


def instrument_openai(client: Any = None) -> Instrumentation:
    """Record the OpenAI SDK's LLM calls, for every client or for ``client`` only."""
    return instrument(_SDK, client)
