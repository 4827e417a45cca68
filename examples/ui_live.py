"""Watch an agent's sessions arrive in the web UI, served from the agent's own process.

    python examples/ui_live.py                 # http://127.0.0.1:6006, a session every 2 s
    python examples/ui_live.py --sessions 3 --port 0 --interval 0   # record 3, print, exit

The store here is in memory, so nothing reaches the disk and only a UI in this
same process can see it: the UI's ASGI app (``agent_trace.ui.create_app``)
runs on this event loop beside the agent, with uvicorn. With a SQLite store
you would rather run ``agent-trace ui`` in another terminal. Needs
``pip install 'agent-trace[ui]'``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import urllib.request

import uvicorn

import agent_trace as at
from agent_trace.stores import MemoryStore
from agent_trace.ui import bind, create_app

CITIES = ("Lisbon", "Oslo", "Nairobi", "Lima", "Hanoi")


@at.record_tool
async def lookup_weather(city: str) -> dict:
    return {"city": city, "temp_c": 14 + len(city), "sky": "clear"}


@at.record_llm(model="gpt-4o-mini")
async def write_answer(question: str, facts: dict) -> dict:
    text = f"It is {facts['temp_c']} °C and {facts['sky']} in {facts['city']}."
    return {"text": text, "usage": {"prompt_tokens": 40, "completion_tokens": 12}}


async def one_session(i: int) -> None:
    city = CITIES[i % len(CITIES)]
    question = f"What is the weather in {city}?"
    async with at.session(f"weather-{i:02d}", user_id="ada"):
        at.emit("user_message_received", {"message": question})
        facts = await lookup_weather(city)
        reply = await write_answer(question, facts)
        at.emit("response_generated", {"response": reply["text"]})


def fetch_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=6006, help="0: any free port")
    parser.add_argument("--sessions", type=int, default=0, help="stop after N (0: until Ctrl-C)")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between sessions")
    args = parser.parse_args()

    store = MemoryStore()
    at.configure(store=store)
    sock = bind("127.0.0.1", args.port)
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    config = uvicorn.Config(create_app(store, poll_interval=0.2), log_level="warning")
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    print(f"UI at {base}/ ; recording a session every {args.interval:g} s", flush=True)

    try:
        runs = range(args.sessions) if args.sessions else itertools.count()
        for i in runs:
            await one_session(i)
            await asyncio.sleep(args.interval)
        # What the UI lists now (it picks new events up within its poll interval).
        while True:
            listed = await asyncio.to_thread(fetch_json, base + "/api/sessions")
            if listed["total"] == args.sessions:
                break
            await asyncio.sleep(0.1)
        for row in listed["sessions"]:
            print(f"{row['session_id']}  {row['status']}  {row['tokens']} tokens  {row['tools']}")
    finally:
        server.should_exit = True
        await serving


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C: uvicorn stops, then so do we
        asyncio.run(main())
