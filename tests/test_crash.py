"""Crash safety: SIGKILL the research agent at random points; nothing acknowledged is lost.

A child process runs the example research agent (``examples/research_agent.py``)
against a SQLite (or JSONL) store and prints, flushed, one line per
acknowledgement it received: ``ack <session> <n>`` once the session's first
``n`` events were reported durable, ``done <session>`` once the whole session
was. The parent kills it with SIGKILL at a random moment, then checks that the
store opens, ``verify_store()`` passes and every acknowledged event is there.

Runs go in parallel (each with its own store) to keep the suite fast.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

import agent_trace as at
from agent_trace.stores import open_store

ROOT = Path(__file__).resolve().parents[1]

CHILD = textwrap.dedent(
    """
    import asyncio, sys
    sys.path.insert(0, {examples!r})
    import agent_trace as at
    import research_agent as ra

    at.configure(store={url!r}, durability={durability!r})
    agent = ra.ResearchAgent()

    async def one(i):
        sid = "crash-%05d" % i
        topic, question = ra.QUESTIONS[i % len(ra.QUESTIONS)]
        async with at.session(sid, topic=topic):
            at.emit("probe", {{"i": i}})
            if {durability!r} == "immediate":
                # session_started and probe were each durable before emit returned
                print("ack", sid, 2, flush=True)
            await agent.answer(question)
        # session exit flushes (immediate: every event; batched: flush_on_session_end)
        print("done", sid, flush=True)

    async def main():
        print("ready", flush=True)
        i = 0
        while True:
            await asyncio.gather(*(one(i + k) for k in range(3)))
            i += 3

    asyncio.run(main())
    """
)


@dataclass
class Run:
    url: str
    acked: dict[str, int]
    done: list[str]
    stderr: str


def _crash_run(tmp: Path, kind: str, durability: str, seed: int) -> Run:
    url = f"sqlite:///{tmp / 'events.db'}" if kind == "sqlite" else f"jsonl:///{tmp / 'log'}"
    script = tmp / "child.py"
    script.write_text(CHILD.format(examples=str(ROOT / "examples"), url=url, durability=durability))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        cwd=tmp,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first == "ready\n", first + proc.stderr.read()
        time.sleep(random.Random(seed).uniform(0.02, 0.5))
        proc.send_signal(signal.SIGKILL)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    acked: dict[str, int] = {}
    done: list[str] = []
    # only whole lines: the kill may cut a print in half
    for line in out.splitlines(keepends=True):
        if not line.endswith("\n"):
            continue
        parts = line.split()
        if parts[0] == "ack":
            acked[parts[1]] = max(acked.get(parts[1], 0), int(parts[2]))
        elif parts[0] == "done":
            done.append(parts[1])
    return Run(url, acked, done, err)


async def _check(run: Run) -> tuple[int, int]:
    store = open_store(run.url)
    try:
        result = await at.verify_store(store)
        assert result.ok, str(result)
        for sid, n in run.acked.items():
            events = await store.get_events(sid)
            assert len(events) >= n, (sid, n, len(events))
            assert events[0].event_type == "session_started"
            assert events[1].event_type == "probe"
        for sid in run.done:
            events = await store.get_events(sid)
            assert events and events[-1].event_type == "session_ended", sid
            assert events[-1].payload["status"] == "ok"
        return len(run.acked), len(run.done)
    finally:
        await store.close()


def _runs(tmp_path: Path, plan: list[tuple[str, str]]) -> list[Run]:
    def go(i: int) -> Run:
        kind, durability = plan[i]
        d = tmp_path / f"run{i:02d}"
        d.mkdir()
        return _crash_run(d, kind, durability, seed=1000 + i)

    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 2) * 2)) as pool:
        return list(pool.map(go, range(len(plan))))


@pytest.mark.slow
async def test_sigkill_with_immediate_durability_loses_no_acknowledged_event(tmp_path):
    plan = [("sqlite", "immediate")] * 20 + [("jsonl", "immediate")] * 4
    runs = await asyncio.to_thread(_runs, tmp_path, plan)
    acked = done = 0
    for run in runs:
        a, d = await _check(run)
        acked, done = acked + a, done + d
    # the kills landed at different points, and most runs got somewhere
    assert acked >= len(plan) // 2, [(r.acked, r.done, r.stderr[-300:]) for r in runs]
    assert len({len(r.done) for r in runs}) > 1


@pytest.mark.slow
async def test_sigkill_with_batched_durability_keeps_what_was_flushed(tmp_path):
    plan = [("sqlite", "batched")] * 6
    runs = await asyncio.to_thread(_runs, tmp_path, plan)
    for run in runs:
        await _check(run)
    assert sum(len(r.done) for r in runs) > 0
