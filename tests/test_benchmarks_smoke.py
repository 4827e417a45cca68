"""The benchmarks still run: --quick exits 0 and prints their tables.

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


LLM_BENCH = REPO / "benchmarks" / "bench_llm_clients.py"


def _run_llm_bench(cwd: Path, pythonpath: list[str]) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("AGENT_TRACE_STORE", None)
    parts = [*pythonpath, str(REPO), env.get("PYTHONPATH")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in parts if p)
    return subprocess.run(
        [sys.executable, str(LLM_BENCH), "--quick"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _check_llm_table(proc: subprocess.CompletedProcess[str]) -> list[str]:
    """The table is whole; returns its Logfire rows (overhead and ratio, per shape)."""
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    header = next(line for line in proc.stdout.splitlines() if line.startswith("metric"))
    assert header.split() == ["metric", "value", "reference", "ratio", "target", "result"]
    for shape in ("create:", "stream (30 chunks):", "async create:"):
        assert f"{shape} agent_trace overhead (recorded - bare)" in proc.stdout, out
    # ERROR also flags a wrong number of recorded events per call.
    assert "ERROR" not in proc.stdout, out
    rows = [line for line in proc.stdout.splitlines() if "Logfire overhead" in line]
    assert len(rows) == 6, out
    return rows


def test_quick_llm_client_benchmark_prints_every_row(tmp_path):
    """bench_llm_clients.py --quick: every shape measured, against Logfire when installed."""
    import importlib.util

    proc = _run_llm_bench(tmp_path, [])
    rows = _check_llm_table(proc)
    if importlib.util.find_spec("logfire") is None:
        assert all("skipped: pip install logfire" in line for line in rows), proc.stdout
    else:
        assert "skipped" not in proc.stdout, proc.stdout
        ratio = next(line for line in rows if line.startswith("create: agent_trace overhead /"))
        assert ratio.split()[-1] in ("PASS", "MISS", "NOISE"), proc.stdout
    assert list(tmp_path.iterdir()) == []  # no scratch databases or Logfire files left behind


def test_quick_llm_client_benchmark_without_logfire(tmp_path):
    """Logfire not importable: its rows say how to get them, the rest is measured, exit 0."""
    shadow = tmp_path / "shadow"
    (shadow / "logfire").mkdir(parents=True)
    (shadow / "logfire" / "__init__.py").write_text('raise ImportError("no logfire here")\n')
    work = tmp_path / "work"
    work.mkdir()
    proc = _run_llm_bench(work, [str(shadow)])
    rows = _check_llm_table(proc)
    assert all("skipped: pip install logfire" in line for line in rows), proc.stdout
    assert list(work.iterdir()) == []


def test_append_captured_benchmark_compares_two_trees(tmp_path):
    """Side by side against a baseline tree (here the same one): both rows and the ratio."""
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "bench_append_captured.py"),
            "--baseline",
            str(REPO),
            "--events",
            "2000",
            "--repeat",
            "1",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    for part in ("this tree", "baseline", "this tree / baseline:"):
        assert part in proc.stdout, proc.stdout
