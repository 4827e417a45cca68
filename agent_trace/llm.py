"""What an LLM response says: usage, returned model, finish reasons; streams assembled.

Shared by ``@record_llm`` and the SDK integrations, and imports no SDK: it
reads OpenAI and Anthropic response objects (pydantic models) and their JSON
alike, by attribute or key. Token counts follow one convention whatever the
provider:

- ``input_tokens`` counts every prompt token, cached ones included (OpenAI's
  ``prompt_tokens`` already do; Anthropic's ``input_tokens`` exclude cache
  reads and writes, so those are added);
- ``output_tokens`` counts every generated token, reasoning included;
- ``cache_read_tokens``, ``cache_write_tokens``, ``reasoning_tokens`` appear
  when the provider reports them.

Stream assemblers turn chunks back into the non-streaming response shape
(joined content, merged tool calls), which is what an event records and what
replay serves. They never raise into agent code: a chunk they do not
understand is skipped.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

__all__ = [
    "AnthropicStreamAssembler",
    "ChatStreamAssembler",
    "ResponsesStreamAssembler",
    "finish_reasons_of",
    "response_fields",
    "response_model_of",
    "token_counts",
    "usage_of",
]


def _get(obj: Any, key: str) -> Any:
    if type(obj) is dict:  # the common case (a dumped response): no ABC check
        return obj.get(key)
    if obj is None:
        return None
    if isinstance(obj, Mapping):
        return obj.get(key)
    return getattr(obj, key, None)


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def usage_of(response: Any) -> dict[str, int]:
    """Normalized token usage of a response (or of a ``usage`` object itself)."""
    usage = _get(response, "usage")
    if usage is None:
        if _get(response, "prompt_tokens") is None and _get(response, "input_tokens") is None:
            return {}
        usage = response
    return normalize_usage(usage)


def normalize_usage(usage: Any) -> dict[str, int]:
    """The convention of the module docstring, from any provider's usage object."""
    out: dict[str, int] = {}
    cache_read = _int(_get(usage, "cache_read_input_tokens"))
    cache_write = _int(_get(usage, "cache_creation_input_tokens"))
    anthropic = cache_read is not None or cache_write is not None
    prompt = _int(_get(usage, "prompt_tokens"))
    inp = prompt if prompt is not None else _int(_get(usage, "input_tokens"))
    out_tokens = _int(_get(usage, "completion_tokens"))
    if out_tokens is None:
        out_tokens = _int(_get(usage, "output_tokens"))
    if anthropic:
        # Anthropic's input_tokens leave out what was read from or written to the cache.
        inp = (inp or 0) + (cache_read or 0) + (cache_write or 0)
    else:
        details = _get(usage, "prompt_tokens_details") or _get(usage, "input_tokens_details")
        cache_read = _int(_get(details, "cached_tokens"))
        cache_write = _int(_get(details, "cache_write_tokens"))
    out_details = _get(usage, "completion_tokens_details") or _get(usage, "output_tokens_details")
    reasoning = _int(_get(out_details, "reasoning_tokens"))
    total = _int(_get(usage, "total_tokens"))
    if total is None and inp is not None and out_tokens is not None:
        total = inp + out_tokens
    for key, value in (
        ("input_tokens", inp),
        ("output_tokens", out_tokens),
        ("total_tokens", total),
        ("cache_read_tokens", cache_read),
        ("cache_write_tokens", cache_write),
        ("reasoning_tokens", reasoning),
    ):
        if value is not None:
            out[key] = value
    return out


def token_counts(usage: Mapping[str, Any]) -> tuple[int, int, int]:
    """(input, output, total) tokens of a recorded ``usage`` dict; total = in + out if absent."""
    inp, out = _int(usage.get("input_tokens")) or 0, _int(usage.get("output_tokens")) or 0
    raw = usage.get("total_tokens")
    return inp, out, inp + out if raw is None else (_int(raw) or 0)


def response_model_of(response: Any) -> str | None:
    """The model the provider says answered (e.g. ``gpt-4o-2024-08-06``)."""
    model = _get(response, "model")
    return model if isinstance(model, str) else None


def finish_reasons_of(response: Any) -> list[str]:
    """Why generation stopped, one entry per choice (OpenAI) or message (Anthropic)."""
    choices = _get(response, "choices")
    if isinstance(choices, list):
        reasons = [_get(c, "finish_reason") for c in choices]
        return [r for r in reasons if isinstance(r, str)]
    stop = _get(response, "stop_reason")
    if isinstance(stop, str):
        return [stop]
    status = _get(response, "status")  # the Responses API
    if isinstance(status, str) and _get(response, "output") is not None:
        reason = _get(_get(response, "incomplete_details"), "reason")
        return [reason if isinstance(reason, str) else status]
    return []


def response_fields(response: Any) -> dict[str, Any]:
    """``response_model``, ``finish_reasons`` and ``usage`` of one response."""
    fields: dict[str, Any] = {"usage": usage_of(response)}
    model = response_model_of(response)
    if model is not None:
        fields["response_model"] = model
    reasons = finish_reasons_of(response)
    if reasons:
        fields["finish_reasons"] = reasons
    return fields


def _dump(obj: Any) -> Any:
    dump = getattr(obj, "model_dump", None)
    if callable(dump) and not isinstance(obj, type):
        return dump(mode="json", exclude_unset=True)
    return obj


class ChatStreamAssembler:
    """OpenAI ``chat.completion.chunk`` objects -> one ``chat.completion`` dict."""

    def __init__(self) -> None:
        self.head: dict[str, Any] = {}
        self.choices: dict[int, dict[str, Any]] = {}
        self.usage: Any = None

    def add(self, chunk: Any) -> None:
        if not self.head:
            for key in ("id", "created", "model", "system_fingerprint", "service_tier"):
                value = _get(chunk, key)
                if value is not None:
                    self.head[key] = value
        usage = _get(chunk, "usage")
        if usage is not None:
            self.usage = usage
        for delta_choice in _get(chunk, "choices") or ():
            index = _get(delta_choice, "index") or 0
            choice = self.choices.get(index)
            if choice is None:
                choice = self.choices[index] = {
                    "index": index,
                    "message": {"role": "assistant", "content": None},
                    "finish_reason": None,
                    "logprobs": None,
                }
            delta = _get(delta_choice, "delta")
            message = choice["message"]
            role = _get(delta, "role")
            if isinstance(role, str):
                message["role"] = role
            for key in ("content", "refusal", "reasoning_content"):
                piece = _get(delta, key)
                if isinstance(piece, str):
                    message[key] = (message.get(key) or "") + piece
            for tc in _get(delta, "tool_calls") or ():
                self._tool_call(message, tc)
            reason = _get(delta_choice, "finish_reason")
            if reason is not None:
                choice["finish_reason"] = reason

    @staticmethod
    def _tool_call(message: dict[str, Any], tc: Any) -> None:
        calls = message.setdefault("tool_calls", [])
        index = _get(tc, "index") or 0
        while len(calls) <= index:
            calls.append(
                {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
            )
        call = calls[index]
        if _get(tc, "id"):
            call["id"] = _get(tc, "id")
        if _get(tc, "type"):
            call["type"] = _get(tc, "type")
        fn = _get(tc, "function")
        for key in ("name", "arguments"):
            piece = _get(fn, key)
            if isinstance(piece, str):
                call["function"][key] += piece

    def response(self) -> dict[str, Any]:
        out: dict[str, Any] = {"object": "chat.completion", **self.head}
        out["choices"] = [self.choices[i] for i in sorted(self.choices)]
        if self.usage is not None:
            out["usage"] = _dump(self.usage)
        return out


class ResponsesStreamAssembler:
    """OpenAI Responses API stream events -> the final ``response`` object."""

    def __init__(self) -> None:
        self.final: Any = None
        self.text: list[str] = []

    def add(self, event: Any) -> None:
        kind = _get(event, "type")
        ends = kind in ("response.completed", "response.incomplete", "response.failed")
        if ends or (kind == "response.created" and self.final is None):
            self.final = _get(event, "response")
        elif kind == "response.output_text.delta":
            delta = _get(event, "delta")
            if isinstance(delta, str):
                self.text.append(delta)

    def response(self) -> Any:
        final = _dump(self.final)
        if isinstance(final, dict) and final.get("status") == "in_progress" and self.text:
            # Stopped early: keep what arrived as the output text.
            final = {**final, "output_text": "".join(self.text)}
        return final


class AnthropicStreamAssembler:
    """Anthropic raw stream events -> one ``Message`` dict."""

    def __init__(self) -> None:
        self.message: dict[str, Any] | None = None
        self.blocks: dict[int, dict[str, Any]] = {}
        self.json_parts: dict[int, list[str]] = {}

    def add(self, event: Any) -> None:
        kind = _get(event, "type")
        if kind == "message_start":
            message = _dump(_get(event, "message"))
            self.message = dict(message) if isinstance(message, dict) else {}
            self.message["content"] = []
        elif kind == "content_block_start":
            block = _dump(_get(event, "content_block"))
            if isinstance(block, dict):
                self.blocks[_get(event, "index") or 0] = dict(block)
        elif kind == "content_block_delta":
            self._delta(_get(event, "index") or 0, _get(event, "delta"))
        elif kind == "message_delta" and self.message is not None:
            delta = _get(event, "delta")
            for key in ("stop_reason", "stop_sequence"):
                value = _get(delta, key)
                if value is not None:
                    self.message[key] = value
            usage = _dump(_get(event, "usage"))
            if isinstance(usage, dict):
                merged = dict(self.message.get("usage") or {})
                merged.update({k: v for k, v in usage.items() if v is not None})
                self.message["usage"] = merged

    def _delta(self, index: int, delta: Any) -> None:
        block = self.blocks.setdefault(index, {"type": "text", "text": ""})
        kind = _get(delta, "type")
        if kind == "text_delta":
            block["text"] = (block.get("text") or "") + (_get(delta, "text") or "")
        elif kind == "input_json_delta":
            self.json_parts.setdefault(index, []).append(_get(delta, "partial_json") or "")
        elif kind == "thinking_delta":
            block["thinking"] = (block.get("thinking") or "") + (_get(delta, "thinking") or "")
        elif kind == "signature_delta":
            block["signature"] = _get(delta, "signature")

    def response(self) -> dict[str, Any] | None:
        if self.message is None:
            return None
        for index, parts in self.json_parts.items():
            text = "".join(parts)
            try:
                self.blocks[index]["input"] = orjson.loads(text) if text else {}
            except orjson.JSONDecodeError:  # cut off mid-stream: keep the text
                self.blocks[index]["input"] = text
        return {**self.message, "content": [self.blocks[i] for i in sorted(self.blocks)]}
