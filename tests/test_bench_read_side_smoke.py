"""benchmarks/bench_read_side.py still runs: --quick exits 0 and prints every row.

No numbers are asserted; a benchmark reports, CI machines vary.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "benchmarks" / "bench_read_side.py"

ROWS = (
    "list_sessions(limit=20)",
    "agent-trace sessions --limit 20",
    "agent-trace sessions (no limit)",
    "agent-trace stats",
    "agent-trace verify",
    "verify_store per event",
    "verify_store second run",
    "agent-trace verify --incremental",
    "run_once per event at 200",
    "run_once per event at 2,000",
    "run_once per event at 20,000",
    "run_once per event, 20,000 vs 2,000",
    "KB OpenAI response",
    "JSONLStore, batches of",
    "JSONLStore, 4 tasks x 1 event",
    "HTML timeline, 2,000 events",
)


def test_quick_read_side_benchmark_prints_every_row(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "AGENT_TRACE_STORE"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["TMPDIR"] = str(tmp_path)  # its scratch files, checked below
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "built 20,000 events (200 sessions)" in proc.stdout
    table = proc.stdout[proc.stdout.index("\nrow ") :]
    for row in ROWS:
        assert row in table, f"missing row {row!r}:\n{proc.stdout}"
    assert list(tmp_path.iterdir()) == [], "scratch files left behind"
