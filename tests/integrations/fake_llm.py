"""Fake OpenAI and Anthropic servers behind the SDKs' own HTTP transport (offline).

``FakeServer`` is an ``httpx2.MockTransport`` handler: it answers what the
real APIs answer (JSON bodies, server-sent event streams, HTTP errors),
counts requests, and for streams counts how many events it has produced,
so a test can see that the SDK hands each chunk on as it arrives.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import httpx2
import openai

API_KEY = "sk-proj-SECRETSECRETSECRET0123456789"
ANTHROPIC_KEY = "sk-ant-api03-SECRETSECRETSECRET0123456789"

CHAT_RESPONSE: dict[str, Any] = {
    "id": "chatcmpl-abc123",
    "object": "chat.completion",
    "created": 1_764_000_000,
    "model": "gpt-4o-2024-08-06",
    "system_fingerprint": "fp_1",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Paris is the capital of France."},
            "finish_reason": "stop",
            "logprobs": None,
        }
    ],
    "usage": {
        "prompt_tokens": 1200,
        "completion_tokens": 300,
        "total_tokens": 1500,
        "prompt_tokens_details": {"cached_tokens": 1000},
        "completion_tokens_details": {"reasoning_tokens": 120},
    },
}

RESPONSES_RESPONSE: dict[str, Any] = {
    "id": "resp_1",
    "object": "response",
    "created_at": 1_764_000_000,
    "model": "gpt-4.1-2025-04-14",
    "status": "completed",
    "output": [
        {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "status": "completed",
            "content": [
                {"type": "output_text", "text": "Hello from the Responses API.", "annotations": []}
            ],
        }
    ],
    "parallel_tool_calls": True,
    "tool_choice": "auto",
    "tools": [],
    "usage": {
        "input_tokens": 50,
        "output_tokens": 10,
        "total_tokens": 60,
        "input_tokens_details": {"cached_tokens": 20},
        "output_tokens_details": {"reasoning_tokens": 4},
    },
}

EMBEDDING_RESPONSE: dict[str, Any] = {
    "object": "list",
    "model": "text-embedding-3-small",
    "data": [{"object": "embedding", "index": 0, "embedding": [0.1, -0.2, 0.3]}],
    "usage": {"prompt_tokens": 8, "total_tokens": 8},
}

MESSAGE_RESPONSE: dict[str, Any] = {
    "id": "msg_01",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-6-20260217",
    "content": [{"type": "text", "text": "Bonjour! Paris it is."}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 100,
        "output_tokens": 40,
        "cache_read_input_tokens": 2000,
        "cache_creation_input_tokens": 500,
    },
}


def chat_chunks(text: str = "Paris is the capital", with_tool: bool = True) -> list[dict[str, Any]]:
    """A streamed chat completion: role, text word by word, a tool call in 3 pieces, usage."""
    head = {
        "id": "chatcmpl-s1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-4o-2024-08-06",
    }
    deltas: list[dict[str, Any]] = [{"role": "assistant", "content": ""}]
    words = text.split(" ")
    deltas += [{"content": w if i == 0 else " " + w} for i, w in enumerate(words)]
    if with_tool:
        deltas += [
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": ""},
                    }
                ]
            },
            {"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]},
            {"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]},
        ]
    out = [{**head, "choices": [{"index": 0, "delta": d, "finish_reason": None}]} for d in deltas]
    out.append(
        {
            **head,
            "choices": [
                {"index": 0, "delta": {}, "finish_reason": "tool_calls" if with_tool else "stop"}
            ],
        }
    )
    out.append(
        {
            **head,
            "choices": [],
            "usage": {
                "prompt_tokens": 30,
                "completion_tokens": 12,
                "total_tokens": 42,
                "prompt_tokens_details": {"cached_tokens": 10},
            },
        }
    )
    return out


def responses_events(text: str = "Streamed hello") -> list[dict[str, Any]]:
    """A Responses API stream in the API's order: created, item, part, text deltas, completed."""
    item = RESPONSES_RESPONSE["output"][0]
    part = {"type": "output_text", "text": text, "annotations": []}
    final = {**RESPONSES_RESPONSE, "output": [{**item, "content": [part]}]}
    where = {"item_id": "msg_1", "output_index": 0, "content_index": 0}
    started = {**final, "status": "in_progress", "output": [], "usage": None}
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": started},
        {"type": "response.in_progress", "response": started},
        {"type": "response.output_item.added", "output_index": 0,
         "item": {**item, "status": "in_progress", "content": []}},
        {"type": "response.content_part.added", **where, "part": {**part, "text": ""}},
    ]  # fmt: skip
    for i, word in enumerate(text.split(" ")):
        delta = word if i == 0 else " " + word
        events.append(
            {"type": "response.output_text.delta", **where, "delta": delta, "logprobs": []}
        )
    events += [
        {"type": "response.output_text.done", **where, "text": text, "logprobs": []},
        {"type": "response.content_part.done", **where, "part": part},
        {"type": "response.output_item.done", "output_index": 0, "item": final["output"][0]},
        {"type": "response.completed", "response": final},
    ]
    for n, e in enumerate(events):
        e["sequence_number"] = n
    return events


def anthropic_events(text: str = "Bonjour from Claude", tool: bool = True) -> list[dict[str, Any]]:
    message = {
        "id": "msg_s1",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-6-20260217",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {
            "input_tokens": 25,
            "output_tokens": 1,
            "cache_read_input_tokens": 100,
            "cache_creation_input_tokens": 0,
        },
    }
    events: list[dict[str, Any]] = [{"type": "message_start", "message": message}]
    events.append(
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    )
    for i, word in enumerate(text.split(" ")):
        events.append(
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": word if i == 0 else " " + word},
            }
        )
    events.append({"type": "content_block_stop", "index": 0})
    if tool:
        events.append(
            {
                "type": "content_block_start",
                "index": 1,
                "content_block": {
                    "type": "tool_use",
                    "id": "toolu_1",
                    "name": "get_weather",
                    "input": {},
                },
            }
        )
        for part in ('{"city":', ' "Paris"}'):
            events.append(
                {
                    "type": "content_block_delta",
                    "index": 1,
                    "delta": {"type": "input_json_delta", "partial_json": part},
                }
            )
        events.append({"type": "content_block_stop", "index": 1})
    events.append(
        {
            "type": "message_delta",
            "delta": {"stop_reason": "tool_use" if tool else "end_turn", "stop_sequence": None},
            "usage": {"output_tokens": 33},
        }
    )
    events.append({"type": "message_stop"})
    return events


class FakeServer:
    """One fake provider. ``errors`` maps a user message text to (status, body)."""

    def __init__(self) -> None:
        self.requests: list[httpx2.Request] = []
        self.produced = 0  # stream events generated so far
        self.errors: dict[str, tuple[int, dict[str, Any]]] = {}
        self.fail_first: int = 0  # answer 500 to this many requests first (retries)

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        self.requests.append(request)
        if self.fail_first > 0:
            self.fail_first -= 1
            return httpx2.Response(
                500, json={"error": {"message": "internal error", "type": "server_error"}}
            )
        body = json.loads(request.content) if request.content else {}
        text = _last_user_text(body)
        if text in self.errors:
            status, err = self.errors[text]
            return httpx2.Response(status, json=err)
        path = request.url.path
        if path.endswith("/chat/completions"):
            if body.get("stream"):
                return self._sse([(None, c) for c in chat_chunks()], done=True)
            if "response_format" in body:
                parsed = {
                    **CHAT_RESPONSE,
                    "choices": [
                        {
                            **CHAT_RESPONSE["choices"][0],
                            "message": {
                                "role": "assistant",
                                "content": '{"city": "Paris", "country": "France"}',
                            },
                        }
                    ],
                }
                return httpx2.Response(200, json=parsed)
            return httpx2.Response(200, json=CHAT_RESPONSE)
        if path.endswith("/responses"):
            if body.get("stream"):
                return self._sse([(e["type"], e) for e in responses_events()])
            return httpx2.Response(200, json=RESPONSES_RESPONSE)
        if path.endswith("/embeddings"):
            return httpx2.Response(200, json=EMBEDDING_RESPONSE)
        if path.endswith("/v1/messages"):
            if body.get("stream"):
                return self._sse([(e["type"], e) for e in anthropic_events()])
            return httpx2.Response(200, json=MESSAGE_RESPONSE)
        return httpx2.Response(404, json={"error": {"message": f"no route {path}"}})

    def _sse(
        self, events: list[tuple[str | None, dict[str, Any]]], done: bool = False
    ) -> httpx2.Response:
        def body() -> Iterator[bytes]:
            for name, data in events:
                self.produced += 1
                head = f"event: {name}\n".encode() if name else b""
                yield head + b"data: " + json.dumps(data).encode() + b"\n\n"
            if done:
                yield b"data: [DONE]\n\n"

        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=body())


class AsyncFakeServer(FakeServer):
    """The same server for async clients (async byte streams)."""

    def _sse(
        self, events: list[tuple[str | None, dict[str, Any]]], done: bool = False
    ) -> httpx2.Response:
        async def body() -> Any:
            for name, data in events:
                self.produced += 1
                head = f"event: {name}\n".encode() if name else b""
                yield head + b"data: " + json.dumps(data).encode() + b"\n\n"
            if done:
                yield b"data: [DONE]\n\n"

        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=body())


def _last_user_text(body: dict[str, Any]) -> str | None:
    messages = body.get("messages") or []
    if messages and isinstance(messages[-1], dict):
        content = messages[-1].get("content")
        return content if isinstance(content, str) else None
    value = body.get("input")
    return value if isinstance(value, str) else None


def openai_client(server: FakeServer, *, is_async: bool = False, max_retries: int = 0) -> Any:
    if is_async:
        return openai.AsyncOpenAI(
            api_key=API_KEY,
            base_url="http://fake-openai.test/v1",
            http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(server)),
            max_retries=max_retries,
        )
    return openai.OpenAI(
        api_key=API_KEY,
        base_url="http://fake-openai.test/v1",
        http_client=httpx2.Client(transport=httpx2.MockTransport(server)),
        max_retries=max_retries,
    )


def anthropic_client(server: FakeServer, *, is_async: bool = False, max_retries: int = 0) -> Any:
    if is_async:
        return anthropic.AsyncAnthropic(
            api_key=ANTHROPIC_KEY,
            base_url="http://fake-anthropic.test",
            http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(server)),
            max_retries=max_retries,
        )
    return anthropic.Anthropic(
        api_key=ANTHROPIC_KEY,
        base_url="http://fake-anthropic.test",
        http_client=httpx2.Client(transport=httpx2.MockTransport(server)),
        max_retries=max_retries,
    )


USER = [{"role": "user", "content": "What is the capital of France?"}]
Factory = Callable[..., Any]
