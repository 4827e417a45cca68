"""examples/replay_regression_test.py passes under pytest; benchmarks/bench_replay.py runs."""

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
        [sys.executable, str(REPO / "benchmarks" / "bench_replay.py"), "--repeats", "1"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [line.split()[0] for line in proc.stdout.splitlines()[1:]]
    assert rows == ["memory", "sqlite"]
    assert list(tmp_path.iterdir()) == []
