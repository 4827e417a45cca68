"""benchmarks/soak.py still runs: a small soak through a failing store stores every event."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_quick_soak_passes(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("AGENT_TRACE_STORE", None)
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "soak.py"), "--quick", "--failure-rate", "0.3"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "RESULT: PASS" in proc.stdout
    rows = dict(line.strip().split("  ", 1) for line in proc.stdout.splitlines()[1:-1])
    assert rows["events emitted"].strip() == rows["events stored"].strip() == "3000"
    assert list(tmp_path.iterdir()) == []  # no spill or database left behind


def test_quick_soak_with_real_faults_passes(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("AGENT_TRACE_STORE", None)
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "soak.py"), "--quick", "--faults"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "RESULT: PASS" in proc.stdout
    rows = dict(line.strip().split("  ", 1) for line in proc.stdout.splitlines()[1:-1])
    assert rows["events emitted"].strip() == rows["events stored (both files)"].strip() == "3000"
    assert rows["lost"].strip() == "0" and rows["spill left over (bytes)"].strip() == "0"
    assert int(rows["spilled and re-appended"]) > 0
    assert list(tmp_path.iterdir()) == []
