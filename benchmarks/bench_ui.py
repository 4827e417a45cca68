"""``agent-trace ui`` at 1,000,000 events: time to first page, search, stats, session page.

    python benchmarks/bench_ui.py               # 1,000,000 events, 10,000 sessions
    python benchmarks/bench_ui.py --quick       # 20,000 events, 200 sessions (smoke)
    python benchmarks/bench_ui.py --db big.db   # keep the generated store, reuse it

The store is ``bench_projections.py``'s (sessions of 100 events shaped like an
agent's: LLM calls with usage, decisions, tool calls of which some fail). The
UI runs as users run it, ``agent-trace ui`` in its own process, and is timed
over HTTP from here:

1. start: until the server answers at all, and until its index has read the
   whole store (the first complete page); against a plain ``sqlite3`` loop
   over the same rows (the read limit);
2. requests once it is up (median of ``--samples``): the first page, text
   and tool searches, a sort, stats, a session page, a comparison; each
   against what answering it straight from the store costs: ``list_sessions``
   (SQL GROUP BY) for the first page, SQL ``LIKE`` over payloads for the text
   search, the CLI's ``stats`` projections (a full scan) for stats,
   ``session_summary`` for one session;
3. the server's resident memory.

Prints a table and exits 0 whatever the numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench_projections import EVENTS_PER_SESSION, fill, read_limit

from agent_trace.projections import CostPerModel, rebuild, session_summary, tool_stats
from agent_trace.stores import SQLiteStore

REPO = Path(__file__).resolve().parent.parent


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=120) as resp:
        assert resp.status == 200, (url, resp.status)
        return resp.read()


def median_ms(urls: list[str]) -> float:
    """Median time of GET over ``urls`` (give distinct URLs to time uncached answers)."""
    times = []
    for url in urls:
        start = time.perf_counter()
        get(url)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def row(metric: str, value: str, reference: str = "", ratio: str = "", note: str = "") -> str:
    return f"{metric:<34}{value:>12}  {reference:<40}{ratio:>9}  {note}"


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def start_server(path: Path) -> tuple[subprocess.Popen[str], str, float, float]:
    """The UI on ``path``; (process, base URL, s until it answers, s until its index is full)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    script = Path(sys.executable).parent / "agent-trace"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "agent_trace.cli"]
    start = time.perf_counter()
    proc = subprocess.Popen(
        [*command, "--store", f"sqlite:///{path}", "ui", "--port", "0"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    line = proc.stderr.readline()
    m = re.search(r"at (http://\S+?)/ ", line)
    if not m:
        proc.kill()
        raise SystemExit(f"the UI did not start: {line}{proc.stderr.read()}")
    base = m.group(1)
    answered = None
    while True:
        page = get(base + "/api/changes")
        if answered is None:
            answered = time.perf_counter() - start
        if b'"caught_up":true' in page:
            get(base + "/")  # the first complete page
            return proc, base, answered, time.perf_counter() - start
        time.sleep(0.02)


async def references(path: Path, sessions: int, samples: int) -> dict[str, float]:
    """What each request costs when answered straight from the store, in ms."""
    store = SQLiteStore(path, read_only=True)
    out: dict[str, float] = {}
    try:
        await store.list_sessions(1)
        start = time.perf_counter()
        await store.list_sessions(50)
        out["list"] = (time.perf_counter() - start) * 1000
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        start = time.perf_counter()
        found = db.execute(
            "SELECT COUNT(DISTINCT session_id) FROM events WHERE payload LIKE ?",
            ("%solar capacity grew%",),
        ).fetchone()[0]
        out["like"] = (time.perf_counter() - start) * 1000
        db.close()
        assert found == sessions, found
        start = time.perf_counter()
        await tool_stats(store)
        cost = CostPerModel()
        cost.usage(await rebuild(cost, store))
        out["stats"] = (time.perf_counter() - start) * 1000
        times = []
        for i in range(samples):
            sid = f"sess-{(i * 7919) % sessions:06d}"
            start = time.perf_counter()
            await session_summary(sid, store)
            times.append((time.perf_counter() - start) * 1000)
        out["summary"] = statistics.median(times)
    finally:
        await store.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    parser.add_argument("--sessions", type=int, default=None, help="default 10,000 (quick: 200)")
    parser.add_argument("--db", type=Path, default=None, help="keep/reuse the store at this path")
    parser.add_argument("--samples", type=int, default=None, help="requests per metric (20)")
    args = parser.parse_args()
    sessions = args.sessions or (200 if args.quick else 10_000)
    samples = args.samples or (5 if args.quick else 20)
    n = sessions * EVENTS_PER_SESSION

    with tempfile.TemporaryDirectory() as tmp:
        path = args.db.resolve() if args.db else Path(tmp) / "bench.db"

        async def prepare() -> None:
            store = SQLiteStore(path)
            try:
                existing = (await store.read_all(n - 1, 2)) if path.exists() else []
                if len(existing) == 1 and existing[0].position == n:
                    print(f"reusing {path} ({n:,} events)")
                elif path.exists() and (await store.read_all(0, 1)):
                    raise SystemExit(f"{path} holds other data; pass a new --db path")
                else:
                    seconds = await fill(store, sessions)
                    print(f"filled {n:,} events / {sessions:,} sessions in {seconds:.1f}s")
            finally:
                await store.close()

        asyncio.run(prepare())
        read_s, rows = read_limit(path)
        assert rows == n
        proc, base, answered_s, full_s = start_server(path)
        try:
            # Distinct searches (each misses the server's result cache), then one repeated.
            words = "solar capacity grew"
            cold = {
                "stats": [base + "/stats"],  # the first stats request of this server
                "first": [f"{base}/?until=2999-01-{d:02d}" for d in range(1, samples + 1)],
                "text": [
                    f"{base}/?q={words[: 5 + i % 14].strip().replace(' ', '+')}&sort={key}"
                    for i, key in enumerate(["started", "tokens", "events", "duration"] * samples)
                ][:samples],
                "text_none": [f"{base}/?q=absent-word-{i}" for i in range(samples)],
                "tool": [
                    f"{base}/?tool=fetch_page&status=failed&until=2999-02-{d:02d}"
                    for d in range(1, samples + 1)
                ],
                "sort": [
                    f"{base}/?sort=tokens&page=50&until=2999-03-{d:02d}"
                    for d in range(1, samples + 1)
                ],
                "session": [
                    f"{base}/sessions/sess-{(i * 7919) % sessions:06d}" for i in range(samples)
                ],
                "compare": [
                    f"{base}/compare?a=sess-{(i * 7919) % sessions:06d}"
                    f"&b=sess-{(i * 104729) % sessions:06d}"
                    for i in range(samples)
                ],
                "changes": [base + "/api/changes"] * samples,
            }
            timings = {name: median_ms(urls) for name, urls in cold.items()}
            repeated = {name: median_ms(urls[:1] * samples) for name, urls in cold.items()}
            mem = rss_mb(proc.pid)
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=30)
        refs = asyncio.run(references(path, sessions, samples))

    print(
        f"{n:,} events, {sessions:,} sessions; medians of {samples} distinct requests over HTTP; "
        f"python {sys.version.split()[0]}"
    )
    print(row("metric", "value", "reference", "ratio"))
    print(row("server answers (index filling)", f"{answered_s:.2f} s"))
    print(
        row(
            "index complete: first full page",
            f"{full_s:.2f} s",
            f"sqlite3 row loop over the store {read_s:.2f} s",
            f"{full_s / read_s:.1f}x",
            f"({n / full_s:,.0f} ev/s)",
        )
    )
    print(row("server RSS after the requests", f"{mem:.0f} MB"))

    def req(label: str, key: str, ref_label: str = "", ref: float | None = None) -> None:
        ms = timings[key]
        ratio = f"{ms / ref:.3f}x" if ref else ""
        ref_text = f"{ref_label} {ref:.1f} ms" if ref is not None else ""
        print(row(label, f"{ms:.1f} ms", ref_text, ratio, f"repeated: {repeated[key]:.1f} ms"))

    req("first page (50 newest) of a list", "first", "list_sessions(50) (SQL)", refs["list"])
    req("text search (every session)", "text", "SQL LIKE over payloads", refs["like"])
    req("text search (no match)", "text_none", "SQL LIKE over payloads", refs["like"])
    req("tool + status filter", "tool")
    req("sort by tokens, page 50", "sort")
    req("stats page (first request)", "stats", "CLI stats projections", refs["stats"])
    req("session page (100 events)", "session", "session_summary()", refs["summary"])
    req("compare two sessions", "compare")
    req("live poll (/api/changes)", "changes")


if __name__ == "__main__":
    main()
