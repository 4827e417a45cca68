"""examples/custom_projection.py and benchmarks/bench_projections.py run as users run them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def run(cwd: Path, script: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "AGENT_TRACE_STORE"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, str(script), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.mark.parametrize("store", ["memory://", "sqlite:///demo.db", "jsonl:///demo"])
def test_custom_projection_example(tmp_path: Path, store: str) -> None:
    out = run(tmp_path, REPO / "examples" / "custom_projection.py", "--store", store).stdout
    lines = out.splitlines()
    caught_up = next(line for line in lines if line.startswith("caught up"))
    applied_first = int(caught_up.split()[3])
    assert caught_up.endswith(f"checkpoint {applied_first}")
    more = next(line for line in lines if line.startswith("after 5 more sessions"))
    assert 0 < int(more.split()[-3]) < applied_first  # only the new events
    assert "solar          3 sessions" in out
    assert "unreachable: stats.unreachable.invalid (3 failed fetches)" in out
    assert "fetch_page  calls=18  failures=3" in out
    assert "tool fetch_page error" in out
    if store == "memory://":
        assert list(tmp_path.iterdir()) == []


def test_benchmark_quick_prints_its_table(tmp_path: Path) -> None:
    out = run(tmp_path, REPO / "benchmarks" / "bench_projections.py", "--quick").stdout
    header = next(line for line in out.splitlines() if line.startswith("metric"))
    assert header.split() == ["metric", "value", "reference", "ratio", "target", "result"]
    for label in ("read limit", "rebuild: summaries + tool_stats", "session_summary"):
        assert label in out
    assert list(tmp_path.iterdir()) == []  # the scratch store was removed
