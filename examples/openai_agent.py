"""A tool-calling agent on the OpenAI SDK, recorded with one line and replayed with none.

The agent is the loop most teams write: ask the model, run the tools it calls,
feed the results back, stream the final answer. agent_trace needs two lines:

    at.instrument_openai()            every OpenAI client call -> llm_started / llm_responded
    @at.record_tool                   every tool call          -> tool_started / tool_executed

The OpenAI API is played by a deterministic fake server behind the SDK's own
HTTP transport (no network, no API key): the SDK, its types, streams and
errors are the real ones. The run records 10 concurrent conversations into
the default store (./agent_trace.db), prints tokens and cost per session
(cost derived from the recorded usage, cached prompt tokens at their price),
one session step by step, then replays that session with every LLM call
served from the recording and checks the agent did the same.

    python examples/openai_agent.py                    # into ./agent_trace.db
    python examples/openai_agent.py --store memory://  # nothing on disk
    python examples/openai_agent.py --sessions 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

import httpx2  # the HTTP package of openai >= 3 (earlier versions use httpx)
import openai

import agent_trace as at
from agent_trace.projections import session_summary
from agent_trace.replay import diff_sessions, iter_steps, replay

MODEL = "gpt-4o-mini"
SERVED_MODEL = "gpt-4o-mini-2024-07-18"

CITIES = {"paris": (14.0, "light rain"), "tokyo": (22.5, "clear"), "lima": (19.0, "overcast")}
QUESTIONS = [
    "Should I pack an umbrella for Paris?",
    "Is it warm in Tokyo right now, in Fahrenheit?",
    "What's the weather like in Lima?",
]

TOOL_SPECS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current temperature (Celsius) and sky for a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "to_fahrenheit",
            "description": "Convert Celsius to Fahrenheit.",
            "parameters": {
                "type": "object",
                "properties": {"celsius": {"type": "number"}},
                "required": ["celsius"],
            },
        },
    },
]


# --- tools: plain functions, decorated ------------------------------------------


@at.record_tool
async def get_weather(city: str) -> dict[str, Any]:
    await asyncio.sleep(0.002)
    celsius, sky = CITIES[city.lower()]
    return {"city": city, "celsius": celsius, "sky": sky}


@at.record_tool
async def to_fahrenheit(celsius: float) -> float:
    return round(celsius * 9 / 5 + 32, 1)


TOOLS = {"get_weather": get_weather, "to_fahrenheit": to_fahrenheit}


# --- the agent: the usual loop ------------------------------------------------------


async def answer(client: openai.AsyncOpenAI, question: str) -> str:
    at.emit("user_message_received", {"message": question})
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "You answer weather questions using the tools."},
        {"role": "user", "content": question},
    ]
    for _ in range(5):
        response = await client.chat.completions.create(
            model=MODEL, messages=messages, tools=TOOL_SPECS
        )
        message = response.choices[0].message
        if not message.tool_calls:
            break
        messages.append(message.model_dump(exclude_none=True))
        for call in message.tool_calls:
            result = await TOOLS[call.function.name](**json.loads(call.function.arguments))
            messages.append(
                {"role": "tool", "tool_call_id": call.id, "content": json.dumps(result)}
            )
    stream = await client.chat.completions.create(
        model=MODEL, messages=messages, stream=True, stream_options={"include_usage": True}
    )
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    at.emit("response_generated", {"response": text})
    return text


# --- the fake OpenAI server -----------------------------------------------------------


def fake_openai(request: httpx2.Request) -> httpx2.Response:
    """A deterministic stand-in for the Chat Completions API."""
    body = json.loads(request.content)
    messages = body["messages"]
    question = next(m["content"] for m in messages if m["role"] == "user")
    results = [json.loads(m["content"]) for m in messages if m["role"] == "tool"]
    prompt = sum(len(json.dumps(m)) // 4 for m in messages) + 600  # + the tool specs
    usage = {
        "prompt_tokens": prompt,
        "completion_tokens": 0,
        "total_tokens": 0,
        # Repeated prefixes are cached by the provider, in blocks of 128 tokens.
        "prompt_tokens_details": {"cached_tokens": (prompt - 200) // 128 * 128 if results else 0},
    }
    weather = next((r for r in results if isinstance(r, dict)), None)
    fahrenheit = next((r for r in results if isinstance(r, float)), None)
    city = next((c for c in CITIES if c in question.lower()), "paris").title()
    message: dict[str, Any] = {"role": "assistant", "content": None}
    if weather is None:
        message["tool_calls"] = [_tool_call("call_w", "get_weather", {"city": city})]
    elif "fahrenheit" in question.lower() and fahrenheit is None:
        message["tool_calls"] = [
            _tool_call("call_f", "to_fahrenheit", {"celsius": weather["celsius"]})
        ]
    else:
        temp = f"{fahrenheit} F" if fahrenheit is not None else f"{weather['celsius']} C"
        umbrella = " Take an umbrella." if "rain" in weather["sky"] else ""
        message["content"] = f"{weather['city']}: {temp}, {weather['sky']}.{umbrella}"
    completion = len(json.dumps(message)) // 4
    usage["completion_tokens"] = completion
    usage["total_tokens"] = prompt + completion
    finish = "tool_calls" if message.get("tool_calls") else "stop"
    head = {"id": f"chatcmpl-{len(messages)}", "created": 1_764_000_000, "model": SERVED_MODEL}
    if not body.get("stream"):
        choice = {"index": 0, "message": message, "finish_reason": finish, "logprobs": None}
        completion_json = {**head, "object": "chat.completion", "choices": [choice], "usage": usage}
        return httpx2.Response(200, json=completion_json)
    words = (message["content"] or "").split(" ")
    deltas = [{"content": w if i == 0 else " " + w} for i, w in enumerate(words)]
    chunks = [
        {"index": 0, "delta": d, "finish_reason": None} for d in [{"role": "assistant"}, *deltas]
    ]
    chunks.append({"index": 0, "delta": {}, "finish_reason": finish})
    events = [{**head, "object": "chat.completion.chunk", "choices": [c]} for c in chunks]
    events.append({**head, "object": "chat.completion.chunk", "choices": [], "usage": usage})
    sse = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)
    return httpx2.Response(
        200, content=sse + b"data: [DONE]\n\n", headers={"content-type": "text/event-stream"}
    )


def _tool_call(call_id: str, name: str, args: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(args)},
    }


def make_client() -> openai.AsyncOpenAI:
    transport = httpx2.MockTransport(fake_openai)
    return openai.AsyncOpenAI(
        api_key="sk-not-a-real-key", http_client=httpx2.AsyncClient(transport=transport)
    )


# --- running it ---------------------------------------------------------------------------


async def amain(args: argparse.Namespace) -> int:
    if args.store:
        at.configure(store=args.store)
    instrumentation = at.instrument_openai()
    client = make_client()

    async def conversation(i: int) -> None:
        async with at.session(f"weather-{i:02d}", user_id=f"user-{i % 4}"):
            await answer(client, QUESTIONS[i % len(QUESTIONS)])

    await asyncio.gather(*(conversation(i) for i in range(args.sessions)))
    await at.flush()

    print(f"{'session':<12} {'LLM calls':>9} {'tools':>5} {'input':>6} {'output':>6} {'cost':>10}")
    total = 0.0
    for i in range(args.sessions):
        s = await session_summary(f"weather-{i:02d}")
        total += s.cost_usd or 0.0
        cost = f"${s.cost_usd:.6f}" if s.cost_usd is not None else "-"
        print(
            f"{s.session_id:<12} {s.llm_calls:>9} {len(s.tools_used):>5} "
            f"{s.input_tokens:>6} {s.output_tokens:>6} {cost:>10}"
        )
    print(f"total cost: ${total:.6f} ({SERVED_MODEL}, cached prompt tokens at the cached rate)")

    example = "weather-01"
    print(f"\nsteps of {example}:")
    async for step in iter_steps(example):
        print(f"  {step.version:>3}  {'  ' * step.depth}{step.event_type:<22} {step.summary}")

    # Replay: the same agent code, every LLM call answered from the recording.
    original = await at.get_events(example)
    question = next(e.payload["message"] for e in original if e.payload.get("message"))
    async with replay(example, mock=("llm",)) as r:
        replayed = await answer(client, question)
    diff = await diff_sessions(example, r.id)
    print(f"\nreplayed {example} as {r.id}: {r.served} LLM calls served from the recording")
    print(f"answer: {replayed}")
    print("same decisions, tool calls and answer:", not diff)
    instrumentation.uninstrument()
    return 0 if not diff else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", help="store URL (default: the agent_trace default store)")
    parser.add_argument("--sessions", type=int, default=10, help="concurrent conversations")
    return asyncio.run(amain(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
