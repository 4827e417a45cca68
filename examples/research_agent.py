"""A research agent instrumented with agent_trace.

The agent answers a question in a loop: an LLM picks the next tool, the tool
runs, its result goes back into the conversation, and when the LLM has enough
it streams the final answer. Instrumenting it takes one decorator per function
the agent already has, plus one ``session`` per request:

    @at.record_tool                  every tool call -> tool_started / tool_executed / tool_failed
    @at.record_llm(model=...)        every LLM call  -> llm_started / llm_responded (with usage)
    @at.record_decision              each planning step -> decision_made
    async with at.session(...):      one event stream per request

The LLM is a deterministic fake (no network, no API key): the same messages
always produce the same response, so every run records the same story.

    python examples/research_agent.py                    # 20 sessions into ./agent_trace.db
    python examples/research_agent.py --store memory://  # nothing on disk
    python examples/research_agent.py --sessions 5 --quiet

Importing this module has no side effects: nothing is configured or written
until ``main()`` runs.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import json
import operator
import os
import re
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import agent_trace as at
from agent_trace.replay import RecordedSession, iter_steps

MODEL = "fake-gpt-4o-mini"

# --- a tiny fake world: a search index, web pages and the team's notes ------

SEARCH_INDEX: dict[str, list[dict[str, str]]] = {
    "solar": [
        {
            "title": "Renewables 2024: global solar capacity",
            "url": "https://energy.example.org/solar-2024",
            "snippet": "Installed solar PV capacity reached 1419 GW in 2023.",
        },
        {
            "title": "Solar statistics archive",
            "url": "https://archive.unreachable.invalid/solar",
            "snippet": "Historical capacity tables since 2000.",
        },
    ],
    "battery": [
        {
            "title": "Battery pack prices fall again",
            "url": "https://news.example.com/battery-prices",
            "snippet": "Lithium-ion pack prices fell to 139 USD/kWh in 2023.",
        },
    ],
    "nile": [
        {
            "title": "The longest rivers of the world",
            "url": "https://geo.example.net/rivers",
            "snippet": "The Nile and the Amazon are both over 6400 km long.",
        },
    ],
    "heat pump": [
        {
            "title": "Heat pump sales in Europe",
            "url": "https://stats.unreachable.invalid/heat-pumps",
            "snippet": "Sales figures by country.",
        },
        {
            "title": "Heat pumps explained",
            "url": "https://energy.example.org/heat-pumps",
            "snippet": "Sales grew from 1.9 million units in 2020 to 3.0 million units in 2022.",
        },
    ],
    "coral": [
        {
            "title": "Reef monitoring report",
            "url": "https://ocean.example.org/reefs",
            "snippet": "Hard coral cover averaged 33.5 percent in 2021 and 36.9 percent in 2022.",
        },
    ],
}

PAGES: dict[str, str] = {
    "https://energy.example.org/solar-2024": (
        "Global installed solar PV capacity was 227 GW in 2015 and 1419 GW in 2023, "
        "led by China, the European Union and the United States."
    ),
    "https://news.example.com/battery-prices": (
        "Volume-weighted lithium-ion battery pack prices were 780 USD/kWh in 2013 "
        "and 139 USD/kWh in 2023, a record low."
    ),
    "https://geo.example.net/rivers": (
        "The Amazon is about 6400 km long and the Nile about 6650 km; measurements "
        "differ because river sources are hard to pin down."
    ),
    "https://energy.example.org/heat-pumps": (
        "European heat pump sales were 1.9 million units in 2020 and 3.0 million units "
        "in 2022, before slowing in 2023."
    ),
    "https://ocean.example.org/reefs": (
        "Hard coral cover on the Great Barrier Reef was 33.5 percent in 2021 and "
        "36.9 percent in 2022, the highest in 36 years of monitoring."
    ),
}

NOTES: dict[str, str] = {
    "solar": "Use installed capacity (GW), not generation. Cite the year.",
    "battery": "Prices are per kWh at pack level, nominal USD.",
    "heat pump": "Client cares about Europe only.",
}

QUESTIONS: list[tuple[str, str]] = [
    ("solar", "How much did global solar capacity grow between 2015 and 2023?"),
    ("batteries", "By how much did lithium-ion battery prices drop since 2013?"),
    ("rivers", "How much longer is the Nile than the Amazon river?"),
    ("heat pumps", "How fast did heat pump sales grow in Europe from 2020 to 2022?"),
    ("coral reefs", "How did coral cover on the Great Barrier Reef change in 2022?"),
]

# A number followed by a unit: the "facts" the LLM looks for in fetched pages.
_FIGURE = re.compile(r"(\d+(?:\.\d+)?) (GW|USD/kWh|km|million units|percent)")


# --- tools: plain async functions, decorated --------------------------------


@at.record_tool
async def web_search(query: str, max_results: int = 3) -> list[dict[str, str]]:
    """Search the (fake) web; returns title, url and snippet per hit."""
    await asyncio.sleep(0.003)
    q = query.lower()
    hits = [hit for keyword, results in SEARCH_INDEX.items() if keyword in q for hit in results]
    return hits[:max_results]


@at.record_tool
async def fetch_page(url: str, timeout: float = 2.0) -> dict[str, str]:
    """Download a page's text. Hosts under ``.invalid`` never answer."""
    await asyncio.sleep(0.004)
    if ".invalid/" in url:
        raise TimeoutError(f"no response from {url} after {timeout:.1f}s")
    return {"url": url, "text": PAGES[url]}


@at.record_tool
async def calculator(expression: str) -> float:
    """Evaluate an arithmetic expression (numbers, + - * / and parentheses)."""
    await asyncio.sleep(0.001)
    return round(_evaluate(ast.parse(expression, mode="eval").body), 2)


@at.record_tool
async def read_notes(topic: str) -> str | None:
    """The team's notes on a topic, if any."""
    await asyncio.sleep(0.002)
    return NOTES.get(topic)


TOOLS = {tool.__name__: tool for tool in (web_search, fetch_page, calculator, read_notes)}

_OPERATORS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.USub: operator.neg,
}


def _evaluate(node: ast.AST) -> float:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        return _OPERATORS[type(node.op)](_evaluate(node.left), _evaluate(node.right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _OPERATORS:
        return _OPERATORS[type(node.op)](_evaluate(node.operand))
    raise ValueError(f"unsupported expression: {ast.unparse(node)}")


# --- the LLM: a deterministic fake with an OpenAI-like response shape --------


@dataclass
class Usage:
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


@dataclass
class Message:
    role: str
    content: str


@dataclass
class Choice:
    index: int
    message: Message
    finish_reason: str = "stop"


@dataclass
class ChatCompletion:
    id: str
    model: str
    choices: list[Choice]
    usage: Usage
    object: str = "chat.completion"


def count_tokens(text: str) -> int:
    """Rough token count (about four characters per token)."""
    return max(1, len(text) // 4)


class FakeLLM:
    """Plans the next step from the conversation and writes the answer.

    A pure function of its input messages, so runs are reproducible.
    """

    model = MODEL

    @at.record_llm(model=MODEL)
    async def complete(self, messages: list[dict[str, Any]]) -> ChatCompletion:
        """Return the next action as JSON in the message content."""
        await asyncio.sleep(0.002)
        content = json.dumps(_plan(messages))
        prompt_tokens = sum(count_tokens(m["content"]) for m in messages)
        completion_tokens = count_tokens(content)
        return ChatCompletion(
            id=f"chatcmpl-{len(messages):04d}",
            model=self.model,
            choices=[Choice(index=0, message=Message(role="assistant", content=content))],
            usage=Usage(prompt_tokens, completion_tokens, prompt_tokens + completion_tokens),
        )

    @at.record_llm(model=MODEL)
    async def stream_answer(self, messages: list[dict[str, Any]]):
        """Stream the final answer word by word."""
        words = _write_answer(messages).split(" ")
        for i, word in enumerate(words):
            await asyncio.sleep(0)
            yield word if i == 0 else " " + word


def _plan(messages: list[dict[str, Any]]) -> dict[str, Any]:
    """The fake model's policy: notes, search, read pages, compute, answer."""
    question = next(m["content"] for m in messages if m["role"] == "user")
    keyword = next((k for k in SEARCH_INDEX if k in question.lower()), question)
    calls = [m for m in messages if m["role"] == "tool"]
    used = {m["name"] for m in calls}
    tried_urls = {m["url"] for m in calls if m["name"] == "fetch_page"}
    pages = [m["content"] for m in calls if m["name"] == "fetch_page" and m["ok"]]

    if "read_notes" not in used:
        return _action("read_notes", {"topic": keyword}, "Check the team's notes first.")
    if "web_search" not in used:
        return _action("web_search", {"query": question}, "Find sources for the question.")
    if not pages:
        hits = json.loads(next(m["content"] for m in calls if m["name"] == "web_search"))
        for hit in hits:
            if hit["url"] not in tried_urls:
                return _action(
                    "fetch_page", {"url": hit["url"]}, f"Read '{hit['title']}' for figures."
                )
    figures = [float(n) for page in pages for n, _unit in _FIGURE.findall(page)]
    if "calculator" not in used and len(figures) >= 2:
        old, new = figures[0], figures[1]
        return _action(
            "calculator",
            {"expression": f"({new} - {old}) / {old} * 100"},
            "Compute the relative change between the two figures.",
        )
    return {"final": True, "reasoning": "Enough information to answer."}


def _action(tool: str, args: dict[str, Any], reasoning: str) -> dict[str, Any]:
    return {"tool": tool, "args": args, "reasoning": reasoning}


def _write_answer(messages: list[dict[str, Any]]) -> str:
    calls = [m for m in messages if m["role"] == "tool"]
    pages = [m for m in calls if m["name"] == "fetch_page" and m["ok"]]
    failed = [m for m in calls if not m["ok"]]
    parts = []
    if pages:
        parts.append(f"According to {pages[0]['url']}: {pages[0]['content']}")
    else:
        parts.append("I could not find a reliable source for this question.")
    for m in calls:
        if m["name"] == "calculator" and m["ok"]:
            parts.append(f"That is a change of {float(m['content']):+.1f}%.")
    for m in failed:
        parts.append(f"(Could not reach {m['url'] or m['name']}.)")
    return " ".join(parts)


# --- the agent ---------------------------------------------------------------


@dataclass
class ResearchAgent:
    """Answers one question per call to :meth:`answer`; safe to share across tasks."""

    llm: FakeLLM = field(default_factory=FakeLLM)
    max_steps: int = 8

    @at.record_decision
    async def choose_next_action(self, messages: list[dict[str, Any]]) -> dict[str, Any]:
        """Ask the LLM for the next step: ``{"tool", "args", "reasoning"}`` or ``{"final"}``."""
        response = await self.llm.complete(messages)
        return json.loads(response.choices[0].message.content)

    async def answer(self, question: str) -> str:
        """Research ``question`` with the tools and return the final answer."""
        at.emit("user_message_received", {"message": question})
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": "You are a careful research assistant."},
            {"role": "user", "content": question},
        ]
        for _ in range(self.max_steps):
            action = await self.choose_next_action(messages)
            if action.get("final"):
                break
            messages.append(await self._run_tool(action["tool"], action["args"]))

        chunks = [chunk async for chunk in self.llm.stream_answer(messages)]
        response = "".join(chunks)
        at.emit("response_generated", {"response": response, "tokens_used": count_tokens(response)})
        return response

    async def _run_tool(self, name: str, args: dict[str, Any]) -> dict[str, Any]:
        """Run a tool and turn its outcome, success or failure, into a tool message."""
        message = {"role": "tool", "name": name, "url": args.get("url")}
        try:
            result = await TOOLS[name](**args)
        except (TimeoutError, ConnectionError) as exc:
            # An unreachable source is part of research: note it and move on.
            return {**message, "ok": False, "content": f"{type(exc).__name__}: {exc}"}
        content = result["text"] if name == "fetch_page" else json.dumps(result)
        return {**message, "ok": True, "content": content}


# --- running it: many concurrent requests, then read back what was recorded --


async def handle_request(agent: ResearchAgent, i: int) -> str:
    """One user request = one session."""
    topic, question = QUESTIONS[i % len(QUESTIONS)]
    async with at.session(f"research-{i:02d}", user_id=f"user-{i % 7}", topic=topic):
        return await agent.answer(question)


async def run_sessions(n: int) -> list[str]:
    """Serve ``n`` requests concurrently; returns their session ids."""
    agent = ResearchAgent()
    await asyncio.gather(*(handle_request(agent, i) for i in range(n)))
    await at.flush()
    return [f"research-{i:02d}" for i in range(n)]


async def answer_again(session: RecordedSession) -> str:
    """The entry point for ``agent-trace test``: answer a recorded question again."""
    return await ResearchAgent().answer(session.user_message)


def summarize(events: list[at.AgentEvent]) -> dict[str, Any]:
    """Fold one session's events into the numbers shown in the table."""
    summary: dict[str, Any] = {
        "topic": "",
        "events": len(events),
        "tools": [],
        "llm_calls": 0,
        "tokens": 0,
        "errors": 0,
        "status": "open",
    }
    for ev in events:
        p = ev.payload
        if ev.event_type == "session_started":
            summary["topic"] = p.get("metadata", {}).get("topic", "")
        elif ev.event_type == "tool_executed":
            summary["tools"].append(p["tool"])
        elif ev.event_type == "llm_responded":
            summary["llm_calls"] += 1
            summary["tokens"] += (p.get("usage") or {}).get("total_tokens", 0)
        elif ev.event_type == "response_generated":
            summary["tokens"] += p.get("tokens_used", 0)
        elif ev.event_type.endswith("_failed"):
            summary["errors"] += 1
        elif ev.event_type == "session_ended":
            summary["status"] = p.get("status", "?")
    return summary


def this_run(events: list[at.AgentEvent]) -> list[at.AgentEvent]:
    """The events from the last ``session_started`` on (a rerun appends to a session)."""
    starts = [i for i, ev in enumerate(events) if ev.event_type == "session_started"]
    return events[starts[-1] :] if starts else events


def print_steps(events: list[at.AgentEvent]) -> None:
    """Print a session step by step, indented by span nesting."""
    for step in iter_steps(events):
        clock = step.event.timestamp[11:26]  # HH:MM:SS.ffffff
        label = "  " * step.depth + step.event.event_type
        print(f"  {step.version:>3}  {clock}  {label:<26} {step.summary}")


def store_location(store_url: str | None) -> str:
    """Where the recorded events live, for humans."""
    url = store_url or os.environ.get("AGENT_TRACE_STORE") or "sqlite:///agent_trace.db"
    scheme, sep, path = url.partition(":///")
    if sep and scheme in ("sqlite", "jsonl"):  # file-backed: show the absolute path
        kind = "file" if scheme == "sqlite" else "directory"
        return f"{url}  ({kind} {os.path.abspath(path)})"
    return url


async def report(session_ids: list[str], elapsed: float, store_url: str | None) -> None:
    """Read every session back from the store and print what was recorded."""
    stored = {sid: await at.get_events(sid) for sid in session_ids}
    runs = {sid: this_run(events) for sid, events in stored.items()}
    summaries = {sid: summarize(events) for sid, events in runs.items()}
    continued = sum(len(stored[sid]) > len(runs[sid]) for sid in session_ids)
    if continued:
        print(f"({continued} sessions continue earlier runs in this store: showing this run)\n")

    print(f"{'session':<13} {'topic':<12} {'events':>6} {'tokens':>6} {'errors':>6}  status  tools")
    for sid, s in summaries.items():
        print(
            f"{sid:<13} {s['topic']:<12} {s['events']:>6} {s['tokens']:>6} {s['errors']:>6}"
            f"  {s['status']:<6}  {', '.join(s['tools'])}"
        )
    totals = {key: sum(s[key] for s in summaries.values()) for key in ("events", "tokens")}
    tool_calls = sum(len(s["tools"]) for s in summaries.values())
    errors = sum(s["errors"] for s in summaries.values())
    llm_calls = sum(s["llm_calls"] for s in summaries.values())
    print(
        f"\ntotal: {len(summaries)} sessions, {totals['events']} events, "
        f"{tool_calls + errors} tool calls ({errors} failed), {llm_calls} LLM calls, "
        f"{totals['tokens']} tokens, in {elapsed:.2f}s"
    )

    example = next((sid for sid, s in summaries.items() if s["errors"]), session_ids[0])
    print(f"\nsteps of {example}:")
    print_steps(runs[example])

    print(f"\nevents stored in: {store_location(store_url)}")
    print("recorder stats:", " ".join(f"{k}={v}" for k, v in at.stats().items()))


async def amain(args: argparse.Namespace) -> None:
    if args.store:
        at.configure(store=args.store)
    started = time.perf_counter()
    session_ids = await run_sessions(args.sessions)
    elapsed = time.perf_counter() - started
    if args.quiet:
        where = store_location(args.store)
        print(f"recorded {len(session_ids)} sessions in {elapsed:.2f}s -> {where}")
        return
    await report(session_ids, elapsed, args.store)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", help="store URL (default: the agent_trace default store)")
    parser.add_argument("--sessions", type=int, default=20, help="concurrent sessions to run")
    parser.add_argument("--quiet", action="store_true", help="print one line only")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    asyncio.run(amain(parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
