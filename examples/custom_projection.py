"""A custom projection over the research agent's recordings, kept up to date.

The research agent (``research_agent.py``, beside this file) records its
sessions; nothing else is stored. Here a user-defined view, "which sources
did each topic read, and which hosts failed", is folded from those events by
a ``ProjectionRunner``: it catches up once, then applies only what is new
when more sessions are recorded, with its state and checkpoint saved in the
same store as the events. Built-in views (session summary, tool stats, cost
per model, a session's span tree) are read alongside.

    python examples/custom_projection.py                         # memory://, nothing on disk
    python examples/custom_projection.py --store sqlite:///demo.db
    python examples/custom_projection.py --sessions 10 --more 5
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import Any
from urllib.parse import urlsplit

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # for research_agent

import research_agent

import agent_trace as at
from agent_trace.projections import (
    CostPerModel,
    Projection,
    ProjectionRunner,
    session_summary,
    span_tree,
    tool_stats,
)


class SourcesPerTopic(Projection):
    """Per topic: the pages read and the number of sessions; per host: failed fetches.

    Handler methods ``on_<event_type>`` are called for their event type only.
    The state is plain JSON, so the runner can save it in the store.
    """

    def initial(self) -> dict[str, Any]:
        return {"topic_of": {}, "topics": {}, "unreachable_hosts": {}}

    def on_session_started(self, state: dict[str, Any], event: at.AgentEvent) -> dict[str, Any]:
        topic = event.payload.get("metadata", {}).get("topic", "?")
        state["topic_of"][event.session_id] = topic
        entry = state["topics"].setdefault(topic, {"sessions": 0, "pages": []})
        entry["sessions"] += 1
        return state

    def on_tool_executed(self, state: dict[str, Any], event: at.AgentEvent) -> dict[str, Any]:
        if event.payload.get("tool") == "fetch_page":
            topic = state["topic_of"].get(event.session_id, "?")
            pages = state["topics"].setdefault(topic, {"sessions": 0, "pages": []})["pages"]
            url = event.payload["result"]["url"]
            if url not in pages:
                pages.append(url)
        return state

    def on_tool_failed(self, state: dict[str, Any], event: at.AgentEvent) -> dict[str, Any]:
        # The error names the URL: "no response from https://host/... after 2.0s".
        words = [w for w in str(event.payload.get("error", "")).split() if "://" in w]
        host = urlsplit(words[0]).hostname if words else event.payload.get("tool", "?")
        hosts = state["unreachable_hosts"]
        hosts[host] = hosts.get(host, 0) + 1
        return state


async def record(first: int, count: int) -> None:
    """Run ``count`` research requests, session ids ``research-<first>`` onwards."""
    agent = research_agent.ResearchAgent()
    await asyncio.gather(
        *(research_agent.handle_request(agent, i) for i in range(first, first + count))
    )
    await at.flush()


def print_view(state: dict[str, Any]) -> None:
    for topic, entry in sorted(state["topics"].items()):
        pages = ", ".join(entry["pages"]) or "-"
        print(f"  {topic:<12} {entry['sessions']:>3} sessions  pages: {pages}")
    for host, n in sorted(state["unreachable_hosts"].items()):
        print(f"  unreachable: {host} ({n} failed fetches)")


async def main(args: argparse.Namespace) -> None:
    store = at.open_store(args.store)
    at.configure(store=store)
    try:
        await record(0, args.sessions)
        runner = ProjectionRunner(store, SourcesPerTopic(), name="sources-per-topic")
        applied = await runner.run_once()
        print(f"caught up: applied {applied} events, checkpoint {await runner.checkpoint()}")
        print_view(await runner.state())

        await record(args.sessions, args.more)
        applied = await runner.run_once()  # only the new events
        print(f"\nafter {args.more} more sessions: applied {applied} new events")
        print_view(await runner.state())

        cost = CostPerModel(prices={research_agent.MODEL: (0.15, 0.60)})  # USD per 1M tokens
        cost_runner = ProjectionRunner(store, cost, name="cost-per-model")
        await cost_runner.run_once()
        print("\nLLM usage per model:")
        for usage in cost.usage(await cost_runner.state()).values():
            print(
                f"  {usage.model}: {usage.calls} calls, {usage.total_tokens} tokens, "
                f"${usage.cost:.6f}"
            )

        print("\ntool stats:")
        for s in (await tool_stats(store=store)).values():
            print(
                f"  {s.tool:<11} calls={s.calls:<3} failures={s.failures:<3} "
                f"p50={s.p50_ms:.1f}ms p95={s.p95_ms:.1f}ms"
            )

        summary = await session_summary("research-03", store=store)
        print(
            f"\nresearch-03: {summary.total_messages} message, tools {summary.tools_used}, "
            f"{summary.total_tokens} tokens, errors {summary.errors}, status {summary.status}"
        )
        print("calls of research-03:")
        for root in await span_tree("research-03", store=store):
            for depth, span in root.walk():
                took = f"{span.duration_ms:.1f}ms" if span.duration_ms is not None else "?"
                print(f"  {'  ' * depth}{span.kind} {span.name} {span.status} {took}")
    finally:
        await store.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default="memory://", help="store URL (default memory://)")
    parser.add_argument("--sessions", type=int, default=10, help="sessions recorded first")
    parser.add_argument("--more", type=int, default=5, help="sessions recorded afterwards")
    asyncio.run(main(parser.parse_args()))
