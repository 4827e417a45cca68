"""The framework examples run as users run them, offline, and say what they record."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run(name: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "pydantic_ai_agent.py",
            [
                "answer: Paris is sunny today.",
                "tool_started    forecast {'city': 'Paris'}",
                "'cache_read_tokens': 40",
                "replayed: Paris is sunny today. (served 3 calls; the tool ran 1x)",
            ],
        ),
        (
            "langgraph_agent.py",
            [
                "agent: Paris is sunny today.",
                "agent_started   weather_agent",
                "tool_started    forecast {'city': 'Paris'}",
                "'cache_read_tokens': 64",
                "replayed: Paris is sunny today. (served 3 calls)",
                "the tool ran 1 time(s)",
            ],
        ),
        (
            "openai_agents_handoff.py",
            [
                "answer: Paris is sunny today.",
                "agent_handoff     triage -> weather_agent",
                "guardrail_checked on_topic triggered=False",
                "tool_started      forecast {'city': 'Paris'}",
                "'cache_read_tokens': 128",
                "replayed: Paris is sunny today. (served 4 calls)",
                "the tool ran 1 time(s)",
            ],
        ),
    ],
)
def test_example_runs_and_records(name: str, expected: list[str]) -> None:
    out = run(name)
    for line in expected:
        assert line in out
    assert "hunter2" not in out


def test_framework_benchmark_runs_quick() -> None:
    bench = EXAMPLES.parent / "benchmarks" / "bench_frameworks.py"
    proc = subprocess.run(
        [sys.executable, str(bench), "--quick"], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    for name in ("pydantic-ai:", "langgraph:", "openai-agents:"):
        assert name in proc.stdout
