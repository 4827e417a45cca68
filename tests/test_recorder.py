"""The recorder: flushing, durability, backpressure, store failures, threads, loops, exit."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import agent_trace as at
from agent_trace.stores import MemoryStore, SQLiteStore


class FlakyStore(MemoryStore):
    """A real MemoryStore whose first ``failures`` appends raise (fault injection)."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures
        self.attempts = 0

    async def append(self, events):
        self.attempts += 1
        if self.attempts <= self.failures:
            raise ConnectionError(f"store unavailable (attempt {self.attempts})")
        return await super().append(events)


class HalfDoneStore(MemoryStore):
    """Writes the batch, then raises as if the acknowledgement was lost."""

    def __init__(self) -> None:
        super().__init__()
        self.raised = False

    async def append(self, events):
        written = await super().append(events)
        if not self.raised:
            self.raised = True
            raise ConnectionResetError("connection lost after commit")
        return written


class SlowStore(MemoryStore):
    """A real MemoryStore that takes ``delay`` seconds per append."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay
        self.max_batch = 0

    async def append(self, events):
        self.max_batch = max(self.max_batch, len(events))
        await asyncio.sleep(self.delay)
        return await super().append(events)


@pytest.fixture
def use_store():
    def configure(store, **options):
        at.configure(store=store, **{"durability": "batched", "max_buffer": 100_000, **options})
        return store

    yield configure
    at.flush_sync(timeout=10)
    at.configure(max_buffer=100_000, durability="batched", flush_on_session_end=True)


async def test_flush_makes_everything_durable(memory_store):
    with at.session("r-flush"):
        for i in range(500):
            at.emit("tick", {"i": i})
        assert await at.flush() is True
        stored = await memory_store.get_events("r-flush")
        assert [e.payload["i"] for e in stored[1:]] == list(range(500))


async def test_store_failure_is_retried_and_nothing_is_lost(use_store, caplog):
    store = use_store(FlakyStore(failures=3))
    before = at.stats()["retried"]

    @at.record_tool
    async def work(i):
        return i

    async with at.session("r-flaky"):
        results = [await work(i) for i in range(20)]
    assert results == list(range(20))  # the agent kept running
    events = await store.get_events("r-flaky")
    assert len(events) == 2 + 40
    assert [e.version for e in events] == list(range(1, 43))
    assert at.stats()["retried"] - before == 3
    warnings = [r for r in caplog.records if "store append failed" in r.getMessage()]
    assert len(warnings) == 1  # once per outage, not per event or per retry


async def test_retry_after_half_done_append_duplicates_nothing(use_store):
    store = use_store(HalfDoneStore())
    async with at.session("r-half"):
        for i in range(10):
            at.emit("tick", {"i": i})
    events = await store.get_events("r-half")
    assert len(events) == 12
    assert len({e.event_id for e in events}) == 12


async def test_bounded_buffer_waits_instead_of_dropping(use_store):
    store = use_store(SlowStore(delay=0.02), max_buffer=50, batch_size=20)
    n = 400

    def producer():
        with at.session("r-bounded"):
            for i in range(n):
                at.emit("tick", {"i": i})
                # the queue, plus one batch being appended and one sealed next
                assert at.stats()["buffered"] <= 50 + 2 * 20 + 1

    t = threading.Thread(target=producer)
    t.start()
    t.join(60)
    assert not t.is_alive()
    await at.flush()
    events = await store.get_events("r-bounded")
    assert [e.payload["i"] for e in events if e.event_type == "tick"] == list(range(n))
    assert store.max_batch <= 20


async def test_async_callers_wait_for_room_without_blocking_the_loop(use_store):
    store = use_store(SlowStore(delay=0.01), max_buffer=20, batch_size=10)

    @at.record_tool
    async def work(i):
        return i

    ticks = 0

    async def heartbeat():
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.001)

    hb = asyncio.create_task(heartbeat())
    async with at.session("r-room"):
        for i in range(100):
            await work(i)
    hb.cancel()
    events = await store.get_events("r-room")
    assert len(events) == 202
    assert ticks > 5


async def test_immediate_durability_makes_each_call_durable_before_it_returns(tmp_path):
    store = SQLiteStore(tmp_path / "immediate.db")
    at.configure(store=store, durability="immediate")
    try:

        @at.record_tool
        async def step(i):
            return i

        async with at.session("r-immediate"):
            for i in range(5):
                await step(i)
                # read through a second, independent connection: no flush asked
                reader = SQLiteStore(tmp_path / "immediate.db")
                try:
                    stored = await reader.get_events("r-immediate")
                finally:
                    await reader.close()
                assert len(stored) == 1 + 2 * (i + 1)
            at.emit("note", {})
            reader = SQLiteStore(tmp_path / "immediate.db")
            try:
                assert (await reader.get_events("r-immediate"))[-1].event_type == "note"
            finally:
                await reader.close()
    finally:
        at.configure(durability="batched")


def test_threads_carry_the_session_with_context_executor(memory_store):
    @at.record_tool
    def fetch(i):
        return at.current_session().id if at.current_session() else None

    with at.session("r-pool"), at.ContextExecutor(max_workers=4) as pool:
        results = list(pool.map(fetch, range(8)))
    assert results == ["r-pool"] * 8
    events = at.get_events_sync("r-pool")
    assert sum(e.event_type == "tool_executed" for e in events) == 8


def test_plain_threads_do_not_inherit_and_record_nothing(memory_store):
    seen = []

    @at.record_tool
    def fetch():
        seen.append(at.current_session())

    with at.session("r-plain-thread"):
        t = threading.Thread(target=fetch)
        t.start()
        t.join()
    assert seen == [None]
    assert [e.event_type for e in at.get_events_sync("r-plain-thread")] == [
        "session_started",
        "session_ended",
    ]


def test_several_event_loops_in_threads(memory_store):
    @at.record_tool
    async def work(i):
        await asyncio.sleep(0)
        return i

    async def request(t, j):
        async with at.session(f"r-loop-{t}-{j}"):
            for i in range(20):
                await work(i)

    def thread_main(t):
        async def main():
            await asyncio.gather(*(request(t, j) for j in range(3)))

        asyncio.run(main())

    threads = [threading.Thread(target=thread_main, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for t in range(4):
        for j in range(3):
            events = at.get_events_sync(f"r-loop-{t}-{j}")
            assert len(events) == 42
            assert [e.version for e in events] == list(range(1, 43))


def test_stats_counts(memory_store):
    before = at.stats()
    with at.session("r-stats"):
        for _ in range(10):
            at.emit("tick", {})
    after = at.stats()
    assert after["emitted"] - before["emitted"] == 12
    assert after["written"] - before["written"] == 12
    assert after["buffered"] == 0
    assert set(after) >= {"emitted", "written", "retried", "spilled", "buffered"}


def test_counts_and_flushes_stay_exact_with_threads_queueing_at_once(memory_store):
    # Events are queued without a lock; the writer pops under one. A flush
    # from any thread must still cover every event queued before it.
    before = at.stats()["emitted"]
    recorded = at.record_tool(lambda i: i)
    done: list[int] = []

    def work(t: int) -> None:
        with at.session(f"r-count-{t}"):
            for i in range(1500):
                at.emit("tick", {"i": i})
                recorded(i)
                if i % 500 == 499:
                    assert at.flush_sync(timeout=10)
                    # Everything this thread queued so far is in the store.
                    events = at.get_events_sync(f"r-count-{t}", store=memory_store)
                    assert len(events) == 1 + 3 * (i + 1)
        done.append(t)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sorted(done) == list(range(6))
    assert at.flush_sync(timeout=10)
    after = at.stats()
    assert after["emitted"] - before == 6 * (2 + 3 * 1500)
    assert after["buffered"] == 0


def test_configure_rejects_unknown_scheme_and_options():
    with pytest.raises(ValueError, match=r"nosuch://user:\*\*\*@host"):
        at.configure(store="nosuch://user:hunter2@host/db")
    with pytest.raises(TypeError, match="unknown option"):
        at.configure(max_bufer=10)
    with pytest.raises(ValueError, match="durability"):
        at.configure(durability="sometimes")


def test_unwritable_path_is_a_clear_error(tmp_path):
    missing = tmp_path / "no" / "such" / "dir" / "x.db"
    with pytest.raises((ValueError, OSError), match="no/such/dir"):
        at.configure(store=f"sqlite:///{missing}")


def _run_script(tmp_path: Path, body: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(body))
    return subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )


def test_interpreter_exit_flushes_pending_events(tmp_path):
    proc = _run_script(
        tmp_path,
        """
        import agent_trace as at
        at.configure(flush_on_session_end=False)
        with at.session("exit-flush"):
            for i in range(5000):
                at.emit("tick", {"i": i})
        print(at.stats()["written"] < 5002)
        """,
    )
    assert proc.returncode == 0, proc.stderr
    events = at.get_events_sync("exit-flush", store=f"sqlite:///{tmp_path / 'agent_trace.db'}")
    assert len(events) == 5002
    assert events[-1].event_type == "session_ended"


def test_exit_after_unhandled_exception_still_flushes(tmp_path):
    proc = _run_script(
        tmp_path,
        """
        import agent_trace as at
        at.configure(flush_on_session_end=False)
        with at.session("exit-crash"):
            at.emit("tick", {})
        raise SystemExit(3)
        """,
    )
    assert proc.returncode == 3
    events = at.get_events_sync("exit-crash", store=f"sqlite:///{tmp_path / 'agent_trace.db'}")
    assert [e.event_type for e in events] == ["session_started", "tick", "session_ended"]


def test_default_store_is_agent_trace_db_in_cwd(tmp_path):
    proc = _run_script(
        tmp_path,
        """
        import agent_trace as at
        with at.session("default-store"):
            at.emit("tick", {})
        """,
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "agent_trace.db").exists()


def test_env_var_chooses_the_store(tmp_path):
    script = tmp_path / "env.py"
    script.write_text(
        "import agent_trace as at\nwith at.session('env-store'):\n    at.emit('tick', {})\n"
    )
    env = {**__import__("os").environ, "AGENT_TRACE_STORE": "jsonl:///" + str(tmp_path / "log")}
    proc = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "agent_trace.db").exists()
    events = at.get_events_sync("env-store", store="jsonl:///" + str(tmp_path / "log"))
    assert len(events) == 3


def test_flush_timeout_returns_false_while_store_is_down(use_store):
    store = use_store(FlakyStore(failures=10**9), flush_on_session_end=False)
    with at.session("r-down"):
        at.emit("tick", {})
    start = time.monotonic()
    assert at.flush_sync(timeout=0.3) is False
    assert time.monotonic() - start < 5
    # bring it back: the queued events are written
    store.failures = 0
    assert at.flush_sync(timeout=10) is True
    assert len(at.get_events_sync("r-down", store=store)) == 3


def test_forked_workers_record_into_the_same_store(tmp_path):
    proc = _run_script(
        tmp_path,
        """
        import multiprocessing as mp
        import agent_trace as at

        @at.record_tool
        def work(i):
            return i * i

        def child(n):
            with at.session(f"fork-child-{n}"):
                for i in range(50):
                    work(i)

        if __name__ == "__main__":
            with at.session("fork-parent"):
                at.configure(flush_on_session_end=False)
                for i in range(10):
                    work(i)  # still queued in the parent when the children fork
                ctx = mp.get_context("fork")
                procs = [ctx.Process(target=child, args=(n,)) for n in range(3)]
                for p in procs:
                    p.start()
                for p in procs:
                    p.join()
                    assert p.exitcode == 0
        """,
    )
    assert proc.returncode == 0, proc.stderr
    store = f"sqlite:///{tmp_path / 'agent_trace.db'}"
    parent = at.get_events_sync("fork-parent", store=store)
    assert len(parent) == 2 + 20  # written once, by the parent only
    for n in range(3):
        events = at.get_events_sync(f"fork-child-{n}", store=store)
        assert len(events) == 2 + 100
        assert [e.version for e in events] == list(range(1, 103))


def test_exit_flushes_events_from_threads_still_running(tmp_path):
    proc = _run_script(
        tmp_path,
        """
        import threading, time
        import agent_trace as at

        def worker():
            with at.session("exit-worker"):
                time.sleep(0.3)  # still running when the main thread ends
                for i in range(100):
                    at.emit("tick", {"i": i})

        threading.Thread(target=worker).start()
        """,
    )
    assert proc.returncode == 0, proc.stderr
    events = at.get_events_sync("exit-worker", store=f"sqlite:///{tmp_path / 'agent_trace.db'}")
    assert len(events) == 102


async def test_sinks_see_each_durable_batch_and_failures_are_contained(memory_store):
    seen: list[str] = []

    def broken_sink(events):
        raise RuntimeError("sink down")

    at.configure(sinks=[lambda events: seen.extend(e.event_type for e in events), broken_sink])
    try:
        async with at.session("r-sinks"):
            at.emit("tick", {})
        assert seen == ["session_started", "tick", "session_ended"]  # flush implies sinks ran
        assert at.stats()["sink_errors"] >= 1
        assert len(await memory_store.get_events("r-sinks")) == 3
    finally:
        at.configure(sinks=())


async def test_otel_exporter_as_a_live_sink(memory_store):
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from agent_trace.otel import OTelExporter

    spans = InMemorySpanExporter()
    at.configure(sinks=[OTelExporter(spans, batch=False)])
    try:

        @at.record_tool
        async def search(query):
            return [query]

        async with at.session("r-otel", agent="researcher"):
            await search("x")
    finally:
        at.configure(sinks=())
    names = sorted(s.name for s in spans.get_finished_spans())
    assert names == ["execute_tool search", "invoke_agent researcher"]


def test_sinks_must_be_callable():
    with pytest.raises(TypeError, match="sink must be callable"):
        at.configure(sinks=["not callable"])
