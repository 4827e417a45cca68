"""The recorder: takes events off the caller's path and makes them durable.

Callers (any thread, any event loop, plain sync code) hand over an event as a
tuple — captured payload bytes, a nanosecond timestamp, span ids — appended to
an in-memory deque under a short lock; that is all they do, no I/O. One daemon
writer thread, started on first use, owns the store and its own event loop. It
wakes when the deque turns non-empty (or a flush asks), takes up to
``batch_size`` events, gives each a UUIDv7 id and ISO timestamp, and awaits
the store's append: ``append_captured`` with the captured payload bytes as
they are (the built-in stores), else ``append`` with ``AgentEvent``s. The
store assigns versions, positions and hashes in one transaction; while it
works, the writer prepares the next batch. For a SQLite file that transaction
can run in a helper process instead (``writer_process``, see
``agent_trace.stores.sqlite_writer``), started once the writer falls a whole
batch behind, so hashing and inserting leave the agent's interpreter. When the
append returns, the batch is durable: the writer advances its ``written``
count and wakes every ``flush()`` waiting for a count at or below it. When
``append`` raises, the writer keeps the same sealed batch (same event ids, so
a retry after a half-done append duplicates nothing) and retries with capped
exponential backoff while new events queue behind it. If the store stays down
for ``spill_after`` seconds, batches go to the local spill file
(``spill_path``, fsynced, see ``agent_trace.spill``) and count as handled, so
flushes return and the agent keeps running; the next append that reaches the
store first re-appends the spill, so each session keeps its order. The deque
is bounded by ``max_buffer``: a full buffer makes emitters wait for room,
never drop. At exit, one hook flushes before the interpreter joins its threads
(all a multiprocessing child runs) and an atexit hook flushes what threads
emitted until their end, then closes the store; SIGTERM, unless the program
handles it itself, exits through ``SystemExit`` so those hooks run too.
``os.fork`` waits for an append in flight; the child starts a fresh recorder.

Never raises into agent code on the emit path; failures are logged once per
outage and counted in ``stats()``.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agent_trace.config import Settings, get_settings
from agent_trace.events import AgentEvent, format_timestamp, uuid7_many
from agent_trace.spill import SpillFile, store_identity
from agent_trace.stores.base import Captured, events_from_captured
from agent_trace.stores.sqlite_writer import WriterProcessSkipped

if TYPE_CHECKING:
    from agent_trace.stores.base import EventStore
    from agent_trace.stores.sqlite_writer import WriterProcess

__all__ = ["DurabilityError", "Recorder", "flush", "flush_sync", "get_recorder", "stats"]

log = logging.getLogger("agent_trace")

# (unix_ns, session_id, event_type, payload_json, span_id, parent_span_id, schema_version)
Pending = tuple[int, str, str, bytes, "str | None", "str | None", int]

_MAX_BACKOFF = 2.0
_FIRST_BACKOFF = 0.05
# Bounds on one append attempt (see Recorder._attempt_timeout): a probe of a
# store that is already known to be down waits at most _PROBE_TIMEOUT.
_PROBE_TIMEOUT = 1.0
_MIN_ATTEMPT = 0.05
_LOST_LOG_INTERVAL = 1.0  # seconds between ERROR lines while events are being lost


class DurabilityError(RuntimeError):
    """``durability="immediate"``: the event could be made durable neither in
    the store nor in the spill file within ``spill_after`` seconds."""


_now = time.time_ns


@dataclass
class _AsyncWaiter:
    target: int
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[None]


class Recorder:
    """Queue + writer thread in front of one store. One per process."""

    def __init__(self, settings: Settings | None = None) -> None:
        self._adopt(settings or get_settings())
        # Taken by the writer to pop a batch and count it in _taken, and by
        # whoever needs _taken + len(queue) exact: the events ever queued.
        self._lock = threading.Lock()
        self._changed = threading.Condition(threading.Lock())  # written / room changes
        self._wake = threading.Event()
        self.queue: deque[Pending] = deque()
        self._taken = 0  # events the writer has popped off the queue
        self._written = 0  # events durable in the store (a prefix of the queue order)
        self._retried = 0
        self._batches = 0
        self._failures = 0
        self._last_error: str | None = None
        self._outage_since: float | None = None  # monotonic start of the current outage
        self._spilled = 0  # events ever written to the spill file
        self._spill_pending = 0  # of those, not yet re-appended to the store
        self._next_probe = 0.0  # while spilling: when to try the store again
        self._probe_delay = _FIRST_BACKOFF
        self._spill_file: SpillFile | None = None  # kept: it remembers a drain's progress
        # Events neither stored nor spilled (both failing): counted, logged, and
        # for durability="immediate" raised to the caller as DurabilityError.
        self._lost = 0
        self._lost_ranges: list[tuple[int, int]] = []  # [start, end) in queue order
        self._lost_logged = 0.0
        self._force_probe = False  # try the store now, whatever the backoff says
        self._final_drain = False
        self._leftover = 0  # of _spill_pending: spilled by an earlier run, not in _written
        self._sink_errors = 0
        # Held while the store works on an append: os.fork() waits for it, so
        # a child is never forked while the store holds SQLite's (or a
        # driver's) internal locks, which would stay locked in the child.
        # Reentrant: two pipelined appends to the writer process (two tasks
        # on the writer thread) may hold it at once.
        self._in_store = threading.RLock()
        self._async_waiters: list[_AsyncWaiter] = []
        self._sync_waiters = 0  # threads in wait_sync(): the writer must not linger
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._store: EventStore | None = None
        self._owns_store = False
        self._switch_lock = threading.Lock()
        self._writer_proc: WriterProcess | None = None  # see stores.sqlite_writer
        self._writer_starts = 0

    def _adopt(self, settings: Settings) -> None:
        # Read on every recorded call, so kept as plain attributes.
        self._settings = settings
        self.max_buffer = settings.max_buffer
        self.immediate = settings.durability == "immediate"
        self.capture_options = settings.capture
        self._full = min(settings.batch_size, settings.max_buffer)

    # --- caller side -------------------------------------------------------

    def enqueue(
        self,
        session_id: str,
        event_type: str,
        payload_json: bytes,
        span_id: str | None = None,
        parent_span_id: str | None = None,
        schema_version: int = 1,
    ) -> None:
        """Queue one event; :meth:`flush` covers it from now on."""
        # payload_json comes from capture(), already an exact-size copy.
        queue = self.queue
        if len(queue) >= self.max_buffer:
            self._wait_for_room()
        # No lock: deque.append is atomic, and the writer pops under _lock,
        # which is all an exact count (emitted()) needs.
        queue.append(
            (_now(), session_id, event_type, payload_json, span_id, parent_span_id, schema_version)
        )
        queued = len(queue)
        if queued == 1:
            if self._thread is None:
                self._start()
            self._wake.set()
        elif queued == self._full:  # a whole batch waits: no reason to linger
            self._wake.set()

    def emit(
        self,
        session_id: str,
        event_type: str,
        payload_json: bytes,
        span_id: str | None = None,
        parent_span_id: str | None = None,
        schema_version: int = 1,
    ) -> int:
        """:meth:`enqueue`, returning the count to wait for to see the event durable
        (exactly this event's place in the queue order, plus one)."""
        queue = self.queue
        if len(queue) >= self.max_buffer:
            self._wait_for_room()
        item = (
            _now(),
            session_id,
            event_type,
            payload_json,
            span_id,
            parent_span_id,
            schema_version,
        )
        with self._lock:
            queue.append(item)
            queued = len(queue)
            n = self._taken + queued
        if queued == 1:  # as in enqueue: the writer drains a non-empty queue by itself
            if self._thread is None:
                self._start()
            self._wake.set()
        elif queued == self._full:
            self._wake.set()
        return n

    def emitted(self) -> int:
        """Events ever queued (so far): wait for this count to see them all durable."""
        with self._lock:
            return self._taken + len(self.queue)

    def is_full(self) -> bool:
        """True when the next emit would wait for room."""
        return len(self.queue) >= self.max_buffer

    async def wait_for_room(self) -> None:
        """Async form of the backpressure wait, for async callers."""
        while self.is_full():
            self._wake.set()
            await asyncio.sleep(self._settings.flush_interval or 0.001)

    def _wait_for_room(self) -> None:
        with self._changed:
            while len(self.queue) >= self.max_buffer:
                self._wake.set()
                self._changed.wait(0.1)

    def wait_sync(
        self, target: int, timeout: float | None = None, *, durable: bool | None = None
    ) -> bool:
        """Block until ``target`` events are durable; False on timeout.

        ``durable`` (default: ``durability="immediate"``): raise
        :class:`DurabilityError` if event ``target`` itself was lost.
        """
        if self._written >= target:
            return self._check_lost(target, durable)
        if threading.current_thread() is self._thread:
            raise RuntimeError("flush_sync() cannot be called from the agent_trace writer thread")
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            self._sync_waiters += 1
        self._wake.set()
        try:
            with self._changed:
                while self._written < target:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        return False
                    self._changed.wait(0.1 if left is None else min(left, 0.1))
        finally:
            with self._changed:
                self._sync_waiters -= 1
        return self._check_lost(target, durable)

    def _check_lost(self, target: int, durable: bool | None) -> bool:
        if not self._lost_ranges or not (self.immediate if durable is None else durable):
            return True
        index = target - 1
        for start, end in reversed(self._lost_ranges):
            if start <= index < end:
                raise DurabilityError(
                    "agent_trace: the event could not be made durable: the store and the "
                    f"spill file both failed ({self._last_error})"
                )
        return True

    async def wait(
        self, target: int, timeout: float | None = None, *, durable: bool | None = None
    ) -> bool:
        """Await until ``target`` events are durable; False on timeout (see wait_sync)."""
        if self._written >= target:
            return self._check_lost(target, durable)
        loop = asyncio.get_running_loop()
        waiter = _AsyncWaiter(target, loop, loop.create_future())
        with self._changed:
            if self._written >= target:
                return self._check_lost(target, durable)
            self._async_waiters.append(waiter)
        self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(waiter.future), timeout)
        except asyncio.TimeoutError:
            return False
        finally:
            with self._changed:
                if waiter in self._async_waiters:
                    self._async_waiters.remove(waiter)
        return self._check_lost(target, durable)

    def stats(self) -> dict[str, Any]:
        """Counters since the process started."""
        return {
            "emitted": (emitted := self.emitted()),
            "written": self._written - (self._spill_pending - self._leftover) - self._lost,
            "buffered": emitted - self._written,
            "retried": self._retried,
            "spilled": self._spilled,
            "spill_pending": self._spill_pending,
            "lost": self._lost,
            "batches": self._batches,
            "store_failures": self._failures,
            "last_error": self._last_error,
            "sink_errors": self._sink_errors,
            "writer_pid": wp.pid if (wp := self._writer_proc) is not None and wp.ready else None,
        }

    # --- store ownership ---------------------------------------------------

    @property
    def settings(self) -> Settings:
        return self._settings

    def store(self) -> EventStore:
        """The store events go to (opened from the settings on first use)."""
        if self._store is None:
            with self._switch_lock:
                if self._store is None:
                    self._store, self._owns_store = _open(self._settings.store)
        return self._store

    def reconfigure(self, settings: Settings) -> None:
        """Adopt new settings; flush into the old store first if it changes."""
        new_store: EventStore | None = None
        owns = False
        if settings.store != self._settings.store or self._store is None:
            new_store, owns = _open(settings.store)  # a bad URL raises before anything changes
        if new_store is None:
            self._adopt(settings)
            return
        self.flush_sync(timeout=self._settings.flush_timeout)
        with self._in_store:  # not while a batch is on its way to the writer process
            self._stop_writer_process(self._settings.exit_timeout)
            self._writer_starts = 0
        with self._switch_lock:
            old, old_owned = self._store, self._owns_store
            self._store, self._owns_store = new_store, owns
            self._adopt(settings)
            if self._spill_pending:
                # Those events belong to the old store: not re-appended to the new one.
                log.warning(
                    "agent_trace: the store changed with %d events still in the spill file "
                    "%s; re-append them to the old store with agent_trace.ingest()",
                    self._spill_pending,
                    self._settings.spill_path,
                )
                self._spill_pending = self._leftover = 0
        if old is not None and old_owned:
            self._close_store(old)

    def flush_sync(self, timeout: float | None = None) -> bool:
        return self.wait_sync(self.emitted(), timeout, durable=False)

    async def flush(self, timeout: float | None = None) -> bool:
        return await self.wait(self.emitted(), timeout, durable=False)

    # --- writer thread -----------------------------------------------------

    def _start(self) -> None:
        if self._settings.handle_sigterm:
            _install_sigterm_handler()
        with self._switch_lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(
                target=self._run, name="agent_trace-writer", daemon=True
            )
            self._thread.start()

    def _run(self) -> None:
        self._warn_about_leftover_spill()
        loop = asyncio.new_event_loop()
        # One append in flight, or two through the writer process. While the
        # store works on one (in its own thread or server), this thread seals
        # the next batch; that batch is appended only after the previous one
        # is durable, so order holds. The writer process takes batches in
        # order and skips those behind a failure (see _write), so there the
        # next batch already waits in its pipe: the child never idles while
        # this thread waits for the GIL.
        in_flight: deque[tuple[asyncio.Task[None], _Batch]] = deque()
        try:
            while True:
                self._wake.clear()
                if not self.queue:
                    if in_flight:
                        loop.run_until_complete(in_flight.popleft()[0])
                        continue
                    if self._spill_pending and time.monotonic() >= self._next_probe:
                        # Idle with events in the spill: re-append them once the store is back.
                        loop.run_until_complete(self._write(_Batch([], self._taken)))
                        continue
                    if self._stopping:
                        if self._spill_pending and not self._final_drain:
                            # A normal exit: one last try to hand the spill to the store.
                            self._final_drain = self._force_probe = True
                            loop.run_until_complete(self._write(_Batch([], self._taken)))
                            self._force_probe = False
                            continue
                        return
                    self._wake.wait(0.5)
                    continue
                if self._may_linger():
                    # Let the events of a busy moment share one transaction: an
                    # agent emits a few events per LLM call, and waking for each
                    # one cost a commit per call (a recorded OpenAI call: 229-303
                    # -> 89 us of process CPU, benchmarks/bench_llm_clients.py).
                    # A flush, a full batch or "immediate" cut the wait short.
                    self._wake.wait(self._settings.flush_interval)
                batch = self._take_batch()
                wp = self._writer_proc
                if wp is None:
                    self._maybe_start_writer_process()
                depth = 2 if wp is not None and wp.ready else 1
                while len(in_flight) >= depth:
                    loop.run_until_complete(in_flight.popleft()[0])
                prev = in_flight[-1] if in_flight else None
                in_flight.append((loop.create_task(self._write(batch, prev)), batch))
                loop.run_until_complete(asyncio.sleep(0))  # hand the batch to the store
        finally:
            while in_flight:
                loop.run_until_complete(in_flight.popleft()[0])
            loop.close()

    def _may_linger(self) -> bool:
        """Whether the writer may wait ``flush_interval`` for more events before a batch."""
        return (
            self._settings.flush_interval > 0
            and not self.immediate
            and not self._stopping
            and len(self.queue) < self._full
            and not self._sync_waiters
            and not self._async_waiters
            and not self._wake.is_set()
        )

    def _take_batch(self) -> _Batch:
        q = self.queue
        n = min(len(q), self._settings.batch_size)
        popleft = q.popleft
        with self._lock:
            items = [popleft() for _ in range(n)]
            start = self._taken
            self._taken += n
        with self._changed:
            self._changed.notify_all()  # room for emitters waiting on a full buffer
        ids = uuid7_many([item[0] for item in items])
        return _Batch(
            [
                (event_id, sid, etype, format_timestamp(ns), pj, span, parent, sv)
                for (ns, sid, etype, pj, span, parent, sv), event_id in zip(items, ids, strict=True)
            ],
            start,
        )

    async def _write(
        self, batch: _Batch, prev: tuple[asyncio.Task[None], _Batch] | None = None
    ) -> None:
        """Append ``batch`` (retrying, or spilling) after ``prev``, the batch before it.

        Every attempt is bounded (:meth:`_attempt_timeout`): a store that hangs,
        is locked by another process, or a writer process that stopped
        answering delays the batch by at most about ``spill_after`` before it
        goes to the spill file (or, if that fails too, is counted as lost).
        """
        delay = _FIRST_BACKOFF
        while True:
            behind = None  # (writer, epoch): straight into its pipe, behind prev
            if prev is not None and not prev[0].done():
                behind = self._pipelined_behind(prev[1])
                if behind is None:
                    await prev[0]  # the batch before settles first: order holds
            now = time.monotonic()
            if (
                behind is None
                and not self._force_probe
                and now < self._next_probe
                and (self._spill_pending or self._outage_due(now))
                and self._spill_or_lose(batch)
            ):
                break  # the store failed a moment ago: do not wait on it for every batch
            timeout = self._attempt_timeout(now)
            try:
                with self._in_store:
                    if behind is None:
                        store = self.store()
                        if self._spill_pending:
                            # Earlier batches first: order holds.
                            await asyncio.wait_for(self._drain_spill(store), timeout)
                        wp = self._ready_writer()
                        if wp is not None:
                            behind = (wp, wp.epoch)
                    if behind is not None:
                        batch.sent_to = behind
                        await asyncio.wait_for(
                            behind[0].append_captured(batch.items, behind[1]), timeout
                        )
                    else:
                        append_captured = _captured_appender(store)
                        if append_captured is not None:
                            await asyncio.wait_for(append_captured(batch.items), timeout)
                        else:
                            await asyncio.wait_for(store.append(batch.events), timeout)
            except WriterProcessSkipped:
                # Sent behind a batch that failed: resent once that one is through.
                batch.sent_to = None
                self._retried += 1
                continue
            except Exception as exc:
                if isinstance(exc, asyncio.TimeoutError):
                    exc = TimeoutError(
                        f"the store did not answer within {timeout:g}s (locked, hung or down)"
                    )
                    if batch.sent_to is not None:
                        self._kill_writer_process(batch.sent_to[0], timeout)
                batch.sent_to = None
                self._retried += 1
                self._failures += 1
                self._last_error = f"{type(exc).__name__}: {exc}"
                now = time.monotonic()
                self._next_probe = now + self._probe_delay
                self._probe_delay = min(self._probe_delay * 2, _MAX_BACKOFF)
                if self._outage_since is None:
                    self._outage_since = now
                    log.warning(
                        "agent_trace: store append failed (%s); %d events kept in memory "
                        "and retried with backoff%s",
                        self._last_error,
                        len(batch) + len(self.queue),
                        f", spilled to {self._settings.spill_path} after "
                        f"{self._settings.spill_after:g}s"
                        if self._settings.spill_path
                        else "",
                    )
                if (self._spill_pending or self._outage_due(now)) and self._spill_or_lose(batch):
                    break
                left = self._settings.spill_after - (now - self._outage_since)
                await asyncio.sleep(max(min(delay, left), 0.0) if left > 0 else delay)
                delay = min(delay * 2, _MAX_BACKOFF)
                continue
            self._probe_delay = _FIRST_BACKOFF
            if self._outage_since is not None:
                self._outage_since = None
                log.warning("agent_trace: store is back; %d events written after retry", len(batch))
            break
        if prev is not None:
            await prev[0]  # _written counts a prefix of the queue order
        if not batch:
            return
        self._batches += 1
        if self._settings.sinks:
            self._feed_sinks(batch.events)
        with self._changed:
            self._written += len(batch)
            self._changed.notify_all()
            done = [w for w in self._async_waiters if w.target <= self._written]
            for w in done:
                self._async_waiters.remove(w)
        for w in done:
            # RuntimeError: that loop has closed, so nobody is waiting any more.
            with contextlib.suppress(RuntimeError):
                w.loop.call_soon_threadsafe(_resolve, w.future)

    def _outage_due(self, now: float) -> bool:
        """Has the store been failing for ``spill_after`` seconds?"""
        since = self._outage_since
        return since is not None and now - since >= self._settings.spill_after

    def _attempt_timeout(self, now: float) -> float | None:
        """How long one append may take before it counts as failed.

        ``spill_after`` (what is left of it in an outage); a probe of a store
        already down past that, at most ``_PROBE_TIMEOUT``. None (wait) only
        where waiting is all there is: batched mode without a spill file.
        """
        if self._settings.spill_path is None and not self.immediate:
            return None
        limit = self._settings.spill_after
        since = self._outage_since
        if since is not None:
            left = limit - (now - since)
            limit = left if left > 0 else min(limit, _PROBE_TIMEOUT)
        return max(limit, _MIN_ATTEMPT)

    def _spill_or_lose(self, batch: _Batch) -> bool:
        """The store is down past ``spill_after``: spill ``batch``; if that fails
        too, count it lost (True: handled). Batched mode without a spill file
        keeps it in memory instead (False: retry)."""
        if self._spill(batch.events):
            return True
        if self._settings.spill_path is None and not self.immediate:
            return False
        self._lose(batch)
        return True

    def _lose(self, batch: _Batch) -> None:
        n = len(batch)
        if not n:
            return
        self._lost += n
        ranges = self._lost_ranges
        if ranges and ranges[-1][1] == batch.start:
            ranges[-1] = (ranges[-1][0], batch.start + n)
        else:
            ranges.append((batch.start, batch.start + n))
            del ranges[:-1000]  # the recent ones are what waiters ask about
        now = time.monotonic()
        if now - self._lost_logged >= _LOST_LOG_INTERVAL:
            self._lost_logged = now
            log.error(
                "agent_trace: %d events LOST (%d in all): the store failed for %gs (%s) and "
                "the spill file %s",
                n,
                self._lost,
                self._settings.spill_after,
                self._last_error,
                "failed too" if self._settings.spill_path else "is turned off (spill_path=None)",
            )

    def _kill_writer_process(self, wp: WriterProcess, waited: float | None) -> None:
        """A writer process that did not answer in time: SIGKILL it (it may be
        stopped, or hung holding the write lock) and write in-process."""
        if self._writer_proc is wp:
            self._writer_proc = None
        log.warning(
            "agent_trace: writer process %s did not answer within %gs; killed it, "
            "writing in-process",
            wp.pid,
            waited or 0,
        )
        wp.kill()

    # --- writer process (SQLite file stores) ------------------------------------

    def _maybe_start_writer_process(self) -> None:
        mode = self._settings.writer_process
        if mode == "never" or self._writer_starts >= _MAX_WRITER_STARTS:
            return
        # "auto": only under sustained load, when a whole batch is already
        # waiting behind the one just taken; a quiet agent never forks one.
        if mode == "auto" and len(self.queue) < self._settings.batch_size:
            return
        store = _writer_process_target(self.store())
        if store is None:
            return
        from agent_trace.stores.sqlite_writer import WriterProcess

        self._writer_starts += 1
        wp = WriterProcess(store.path, store.busy_timeout_ms, store.synchronous)
        wp.send_timeout = max(self._settings.spill_after, _MIN_ATTEMPT)
        try:
            wp.start()
        except OSError as exc:
            self._writer_starts = _MAX_WRITER_STARTS  # this interpreter cannot spawn: stop trying
            log.warning(
                "agent_trace: cannot start the writer process (%s); writing in-process", exc
            )
            return
        self._writer_proc = wp

    def _pipelined_behind(self, prev: _Batch) -> tuple[WriterProcess, int] | None:
        """Where a batch may go while ``prev`` is in flight: into the same
        writer process's pipe, in the same epoch, if ``prev`` went there and
        nothing has failed since (the child then skips this one); else None."""
        sent = prev.sent_to
        if sent is None:
            return None
        wp, epoch = sent
        if wp is not self._writer_proc or not wp.ready or wp.epoch != epoch:
            return None
        return sent

    def _ready_writer(self) -> WriterProcess | None:
        """The writer process if this batch should go through it, else None (in-process)."""
        wp = self._writer_proc
        if wp is not None and self._settings.writer_process == "never":
            self._stop_writer_process(self._settings.exit_timeout)  # configure() turned it off
        elif wp is not None:
            if wp.dead:
                self._writer_proc = None
                log.warning("agent_trace: %s; writing in-process", wp.gone_message())
            else:
                if not wp.ready and self._settings.writer_process == "always":
                    # "always" means every batch through the child, the first one too.
                    wp.wait_ready(_WRITER_READY_TIMEOUT)
                if wp.ready:
                    return wp
                if wp.age() > _WRITER_READY_TIMEOUT:
                    # Alive but silent: sys.executable is not a Python that can run it.
                    log.warning(
                        "agent_trace: writer process %s did not start within %gs; "
                        "writing in-process",
                        wp.pid,
                        _WRITER_READY_TIMEOUT,
                    )
                    self._writer_starts = _MAX_WRITER_STARTS
                    self._stop_writer_process(1.0)
        return None

    def _stop_writer_process(self, timeout: float | None) -> None:
        wp, self._writer_proc = self._writer_proc, None
        if wp is not None:
            wp.close(timeout)

    def _feed_sinks(self, batch: list[AgentEvent]) -> None:
        # Before flush() waiters wake, so a flush also means the sinks saw it.
        for sink in self._settings.sinks:
            try:
                sink(batch)
            except Exception as exc:
                self._sink_errors += 1
                if self._sink_errors == 1 or self._sink_errors % 1000 == 0:
                    log.warning(
                        "agent_trace: sink %r failed (%s: %s)", sink, type(exc).__name__, exc
                    )

    def _spill(self, batch: list[AgentEvent]) -> bool:
        """Write ``batch`` to the spill file; False if there is none or it failed too."""
        spill = self._spill_target()
        if spill is None:
            return False
        if not batch:
            return True  # an idle probe of the store: nothing to keep
        path = spill.path
        try:
            spill.write(batch)
        except OSError as exc:
            log.error("agent_trace: cannot spill to %s (%s); events stay in memory", path, exc)
            return False
        if not self._spill_pending:
            log.warning("agent_trace: store still down; spilling batches to %s", path)
        self._spilled += len(batch)
        self._spill_pending += len(batch)
        return True

    def _warn_about_leftover_spill(self) -> None:
        # A spill written by an earlier process that died before the store came
        # back. Its lines for this store are re-appended (the spill says which
        # store each line is for); others are left for agent_trace.ingest().
        path = self._settings.spill_path
        try:
            size = os.path.getsize(path) if path is not None else 0
        except OSError:
            return
        if not size:
            return
        try:
            spill = self._spill_target()
            mine, others = spill.count(spill.owner) if spill is not None else (0, 1)
        except Exception as exc:  # an unreadable file or a store that cannot be built
            log.warning("agent_trace: cannot read the spill file %s: %s", path, exc)
            return
        if mine:
            log.warning(
                "agent_trace: %s holds %d events spilled for this store by an earlier run; "
                "re-appending them",
                path,
                mine,
            )
            self._spill_pending += mine
            self._leftover += mine
        if others:
            log.warning(
                "agent_trace: %s holds %d lines spilled by an earlier run for another store "
                "(or unreadable); re-append them with agent_trace.ingest(%r) or "
                "`agent-trace ingest %s`",
                path,
                others,
                path,
                path,
            )

    def _spill_target(self) -> SpillFile | None:
        path = self._settings.spill_path
        if path is None:
            return None
        owner = store_identity(self.store())
        spill = self._spill_file
        if spill is None or spill.path != path or spill.owner != owner:
            spill = self._spill_file = SpillFile(path, owner)
        return spill

    async def _drain_spill(self, store: EventStore) -> None:
        spill = self._spill_target()
        if spill is None:
            self._spill_pending = 0
            return
        n = await spill.drain(store, self._settings.batch_size, only_owner=True)
        log.warning("agent_trace: re-appended %d spilled events from %s", n, spill.path)
        self._spill_pending = self._leftover = 0

    # --- shutdown ----------------------------------------------------------

    def close(self, timeout: float | None = None) -> None:
        """Flush, stop the writer and close the store if we opened it."""
        ok = self.flush_sync(timeout)
        if not ok:
            log.error(
                "agent_trace: %d events could not be written before exit (last error: %s)",
                self.emitted() - self._written,
                self._last_error,
            )
        self._stopping = True
        self._wake.set()
        thread = self._thread
        if thread is not None and ok:
            thread.join(timeout)
        self._stop_writer_process(timeout)
        if self._store is not None and self._owns_store:
            self._close_store(self._store)
            self._store = None
        for sink in self._settings.sinks:
            shutdown = getattr(sink, "shutdown", None)
            if callable(shutdown):
                try:
                    shutdown()
                except Exception as exc:
                    log.warning("agent_trace: shutting down sink %r failed: %s", sink, exc)

    def _close_store(self, store: EventStore) -> None:
        # A thread of its own: the caller may be inside a running event loop.
        def close() -> None:
            try:
                asyncio.run(store.close())
            except Exception as exc:
                log.warning("agent_trace: closing the store failed: %s", exc)

        closer = threading.Thread(target=close, name="agent_trace-close")
        closer.start()
        closer.join(self._settings.exit_timeout or None)


_sigterm_installed = False


def _install_sigterm_handler() -> None:
    """Make SIGTERM exit through the normal exit path (which flushes).

    Only from the main thread, and only if the program has not set a SIGTERM
    handler of its own (or chosen to ignore it): theirs is left alone.
    """
    global _sigterm_installed
    if _sigterm_installed or threading.current_thread() is not threading.main_thread():
        return
    _sigterm_installed = True
    sig = getattr(signal, "SIGTERM", None)
    try:
        if sig is not None and signal.getsignal(sig) == signal.SIG_DFL:
            signal.signal(sig, _on_sigterm)
    except (ValueError, OSError):  # not the main interpreter, or signals unsupported
        pass


def _on_sigterm(signum: int, frame: Any) -> None:
    # What the default action does (exit, status 128 + 15), but as SystemExit, so
    # finally blocks and session exits run and the exit hook flushes. A second
    # SIGTERM while that flush is slow kills at once, as the default would.
    signal.signal(signum, signal.SIG_DFL)
    raise SystemExit(128 + signum)


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _captured_appender(store: EventStore) -> Any:
    """The store's ``append_captured`` if it may stand in for ``append``.

    Our stores take the captured payload bytes as they are (no JSON round
    trip, no event objects). A subclass that overrides ``append`` (to wrap,
    filter or inject faults) keeps getting ``append``, with AgentEvents.
    """
    cls = type(store)
    cached = _appender_cache.get(cls)
    if cached is None:
        owner = next((c for c in cls.__mro__ if "append_captured" in c.__dict__), None)
        cached = owner is not None and getattr(cls, "append", None) is owner.__dict__.get("append")
        _appender_cache[cls] = cached
    return store.append_captured if cached else None  # type: ignore[attr-defined]


_appender_cache: dict[type, bool] = {}
_MAX_WRITER_STARTS = 3  # a writer process that keeps dying is given up on
_WRITER_READY_TIMEOUT = 10.0


def _writer_process_target(store: EventStore) -> Any:
    """The store if a writer process can append for it: a plain SQLite file store."""
    from agent_trace.stores.sqlite import SQLiteStore

    # Exactly SQLiteStore: a subclass may change what appending means.
    if type(store) is SQLiteStore and store.path != ":memory:":
        return store
    return None


class _Batch:
    """Events taken off the queue together: captured tuples (with id and
    timestamp), and the same as ``AgentEvent``s, built only if asked for."""

    __slots__ = ("_events", "items", "sent_to", "start")

    def __init__(self, items: list[Captured], start: int) -> None:
        self.items = items
        self.start = start  # the first event's place in the queue order
        self._events: list[AgentEvent] | None = None
        # (writer process, epoch) while the batch is in that child's pipe.
        self.sent_to: tuple[WriterProcess, int] | None = None

    def __len__(self) -> int:
        return len(self.items)

    @property
    def events(self) -> list[AgentEvent]:
        if self._events is None:
            self._events = events_from_captured(self.items)
        return self._events


def _open(store: Any) -> tuple[EventStore, bool]:
    if isinstance(store, str):
        from agent_trace.stores import open_store

        return open_store(store), True
    return store, False


# --- process-wide recorder ---------------------------------------------------

_recorder: Recorder | None = None
_recorder_lock = threading.Lock()


def get_recorder() -> Recorder:
    """The process's recorder, created on first use."""
    global _recorder
    if _recorder is None:
        with _recorder_lock:
            if _recorder is None:
                _recorder = Recorder()
    return _recorder


def flush_sync(timeout: float | None = None) -> bool:
    """Block until every event emitted before the call is durable.

    Returns False if ``timeout`` (seconds) passed first, e.g. while the store
    is down; the events stay queued and keep being retried.
    """
    return get_recorder().flush_sync(timeout)


async def flush(timeout: float | None = None) -> bool:
    """Await until every event emitted before the call is durable (see flush_sync)."""
    return await get_recorder().flush(timeout)


def stats() -> dict[str, Any]:
    """Recorder counters: emitted, written, buffered, retried, spilled, and more."""
    return get_recorder().stats()


def _at_exit() -> None:
    rec = _recorder
    if rec is not None:
        rec.close(rec.settings.exit_timeout)


_held_for_fork: Recorder | None = None


def _before_fork() -> None:
    global _held_for_fork
    rec = _recorder
    if rec is not None and rec._in_store.acquire(timeout=rec.settings.exit_timeout):
        _held_for_fork = rec


def _after_fork_in_parent() -> None:
    global _held_for_fork
    if _held_for_fork is not None:
        _held_for_fork._in_store.release()
        _held_for_fork = None


def _after_fork_in_child() -> None:
    # The writer thread did not survive the fork, and events queued in the
    # parent belong to the parent: the child starts with a fresh recorder
    # that reopens the store from the same settings.
    global _recorder, _recorder_lock, _held_for_fork
    _recorder_lock = threading.Lock()
    _held_for_fork = None
    old = _recorder
    _recorder = None
    if old is not None:
        settings = old.settings
        _recorder = Recorder(settings)


def _flush_before_thread_join() -> None:
    rec = _recorder
    if rec is not None:
        rec.flush_sync(rec.settings.exit_timeout)


# Two exit points. atexit hooks run after the interpreter has joined every
# non-daemon thread, so events that worker threads emit up to their end are
# flushed too (the writer and the stores' worker threads are daemons, still
# alive then). But a multiprocessing child ends with os._exit and runs only
# the hooks registered where concurrent.futures registers its own: flush there.
atexit.register(_at_exit)
_register_before_join = getattr(threading, "_register_atexit", None)
if _register_before_join is not None:
    _register_before_join(_flush_before_thread_join)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_before_fork,
        after_in_parent=_after_fork_in_parent,
        after_in_child=_after_fork_in_child,
    )
