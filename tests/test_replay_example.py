"""examples/replay_regression_test.py passes under pytest (the plugin's example);
benchmarks/bench_replay.py runs, agent-trace test table included."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "replay_regression_test.py"


def test_replay_regression_example_passes(tmp_path):
    env = dict(os.environ)
    env.pop("AGENT_TRACE_STORE", None)
    env.pop("REPLAY_STORE", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLE)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "12 passed" in proc.stdout
    assert list(tmp_path.iterdir()) == []  # recordings went to pytest's tmp dir


def test_replay_benchmark_runs(tmp_path):
    env = dict(os.environ)
    env.pop("AGENT_TRACE_STORE", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "bench_replay.py"),
            "--repeats",
            "1",
            "--sessions",
            "40",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    single, regression = proc.stdout.strip().split("\n\n")
    assert [line.split()[0] for line in single.splitlines()[1:]] == ["memory", "sqlite"]
    header, *rows = regression.splitlines()
    assert "sessions/s" in header
    assert [(r.split()[0], r.split()[1]) for r in rows] == [("memory", "40"), ("sqlite", "40")]
    assert list(tmp_path.iterdir()) == []
