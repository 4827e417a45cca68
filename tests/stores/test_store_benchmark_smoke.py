"""benchmarks/store_append.py still runs and prints its table (no numbers asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "store_append.py"


def test_store_append_benchmark_runs(tmp_path: Path, subprocess_env: dict[str, str]) -> None:
    result = subprocess.run(
        [sys.executable, str(BENCH), "--events", "2000", "--batch", "500", "--repeat", "1"],
        cwd=tmp_path,
        env=subprocess_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    for name in ("raw sqlite3.executemany", "SQLiteStore", "MemoryStore", "JSONLStore"):
        assert name in result.stdout
    assert "x target" in result.stdout
    assert list(tmp_path.iterdir()) == []
