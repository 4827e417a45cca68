"""benchmarks/bench_recording.py still runs: --quick exits 0 and prints its table.

No numbers are asserted; a benchmark reports, CI machines vary.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "benchmarks" / "bench_recording.py"


def test_quick_benchmark_prints_the_table(tmp_path):
    env = dict(os.environ)
    env.pop("AGENT_TRACE_STORE", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    header = next(line for line in proc.stdout.splitlines() if line.startswith("metric"))
    assert header.split() == ["metric", "value", "reference", "ratio", "target", "result"]
    for part in ("call:", "throughput:", "memory:"):
        assert part in proc.stdout, proc.stdout + proc.stderr
    assert "ERROR" not in proc.stdout, proc.stdout + proc.stderr
    assert list(tmp_path.iterdir()) == []  # all scratch databases were cleaned up
