"""Agent entry points for ``agent-trace test`` in tests/test_regression.py.

The research agent of ``examples/research_agent.py`` as it was recorded, and
changed in the ways a team changes an agent: other tool arguments, a new
model that plans differently, a bug.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import agent_trace as at

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
import research_agent as ra

from agent_trace.replay import RecordedSession


async def unchanged(session: RecordedSession) -> str:
    return await ra.ResearchAgent().answer(session.user_message)


def unchanged_sync(session: RecordedSession) -> str:
    """A blocking entry point that runs its own event loop."""
    return asyncio.run(ra.ResearchAgent().answer(session.user_message))


class PatientAgent(ra.ResearchAgent):
    """Waits longer for energy.example.org pages: those fetch_page calls get other args."""

    async def _run_tool(self, name: str, args: dict[str, Any]) -> dict[str, Any]:
        if name == "fetch_page" and "energy.example.org" in args["url"]:
            args = {**args, "timeout": 5.0}
        return await super()._run_tool(name, args)


async def patient(session: RecordedSession) -> str:
    return await PatientAgent().answer(session.user_message)


class NewModel(ra.FakeLLM):
    """A new model that never reads the team's notes (and says so in its usage)."""

    model = "fake-gpt-5-mini"

    @at.record_llm(model="fake-gpt-5-mini")
    async def complete(self, messages: list[dict[str, Any]]) -> ra.ChatCompletion:
        notes_read = {"role": "tool", "name": "read_notes", "url": None, "ok": True}
        content = json.dumps(ra._plan([*messages, {**notes_read, "content": "null"}]))
        tokens = sum(ra.count_tokens(m["content"]) for m in messages)
        return ra.ChatCompletion(
            id="chatcmpl-new",
            model=self.model,
            choices=[ra.Choice(0, ra.Message("assistant", content))],
            usage=ra.Usage(tokens, ra.count_tokens(content), tokens + ra.count_tokens(content)),
        )


async def new_model(session: RecordedSession) -> str:
    return await ra.ResearchAgent(llm=NewModel()).answer(session.user_message)


async def broken(session: RecordedSession) -> str:
    """A bug: crashes on the battery question before doing anything."""
    if "batter" in session.user_message:
        raise RuntimeError("prompt template missing {question}")
    return await unchanged(session)


not_callable = 42
