"""examples/openai_agent.py (the README's main example) runs as users run it."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import agent_trace as at

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "openai_agent.py"


def test_main_example_records_prices_and_replays(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_TRACE_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, str(EXAMPLE), "--sessions", "4"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "same decisions, tool calls and answer: True" in out
    assert "4 LLM calls served from the recording" in out
    assert "answer: Tokyo: 72.5 F, clear." in out
    rows = [line.split() for line in out.splitlines() if line.startswith("weather-")]
    assert len(rows) == 4 and all(row[-1].startswith("$0.000") for row in rows)

    store = at.open_store(f"sqlite:///{tmp_path / 'agent_trace.db'}")

    async def check() -> None:
        try:
            sessions = await store.list_sessions()
            assert len(sessions) == 5  # 4 conversations + the replay
            result = await at.verify_store(store=store)
            assert result.ok
            events = await store.get_events("weather-01")
            llm = [e for e in events if e.event_type == "llm_responded"]
            assert [e.payload["response_model"] for e in llm] == ["gpt-4o-mini-2024-07-18"] * 4
            assert llm[-1].payload["stream"] is True
            assert llm[1].payload["usage"]["cache_read_tokens"] > 0
        finally:
            await store.close()

    asyncio.run(check())
