"""A writer process for the SQLite store: hashing and inserting on another core.

Recording is Python from end to end: capture on the caller's thread, then per
event a hash, a version and an insert in the writer. In one interpreter those
share one core (the GIL), so the agent's own code and the recorder's writer
take turns. Under sustained load the recorder hands batches to this helper
process instead: its own interpreter seals them (versions, positions, hash
chain) and inserts them with the same ``_append`` transaction the in-process
store runs, while the recording process keeps capturing.

The protocol is a pair of pipes (the child's stdin and stdout), frames of a
4-byte little-endian length and a ``marshal`` body (both ends run the same
interpreter, ``sys.executable``). The child says ``("ready", pid)`` once its
connection is set up, then answers each batch, in order, with ``("ok", n)``
or ``("error", type, message)``. An answer means committed (or not): a batch
is acknowledged only after its ``COMMIT``. The event ids are fixed before a
batch is sent, so a batch resent after the child died duplicates nothing.

Batches are pipelined: the next one waits in the pipe while the child works,
so the child never idles waiting for the recording process's threads to get
the GIL back. Each frame carries an epoch. After a batch fails, the child
answers ``("skipped",)`` to every later frame of that epoch: a batch sent
behind a failed one must not commit before the failed one's retry, or a
session's events would change order. The parent starts a new epoch when it
reads the error, and resends in order. WAL checkpoints run on a thread of the
child's own (see ``_Checkpointer``), beside the inserts.

The child ignores SIGINT and SIGTERM and runs in its own session: the
recording process decides when to stop, flushing first. It exits when its
stdin closes — on ``close()``, or when the recording process dies (SIGKILL
included), after finishing the batch in hand.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import marshal
import os
import select
import signal
import sqlite3
import struct
import subprocess
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Sequence
from typing import IO, Any

from agent_trace.stores.base import Captured, StoreError

__all__ = ["WriterProcess", "WriterProcessError", "WriterProcessSkipped", "main"]

log = logging.getLogger("agent_trace")

_HEADER = struct.Struct("<I")
# Frames above this are refused by the child: a corrupt length must not make
# it try to read gigabytes. Batches are far smaller (5,000 events ~ 2 MB).
_MAX_FRAME = 1 << 30
# The child's connection checkpoints the WAL itself only past this many pages
# (16 MB at 4 KB pages); its checkpointer thread keeps it well below that.
_WAL_PAGES = 4000


class WriterProcessError(StoreError):
    """The writer process could not append a batch (or is gone)."""


class WriterProcessSkipped(WriterProcessError):
    """Not attempted: a batch ahead of it in the same epoch failed. Resend it after that one."""


class WriterProcess:
    """The recording process's handle on one writer child for one SQLite file."""

    def __init__(self, path: str, busy_timeout_ms: int, synchronous: str) -> None:
        self.path = path
        self._args = [path, str(busy_timeout_ms), synchronous]
        self._proc: subprocess.Popen[bytes] | None = None
        self._pending: deque[concurrent.futures.Future[int]] = deque()
        self._lock = threading.Lock()  # one frame at a time; pairs sends with _pending
        self._ready = threading.Event()
        self._dead = False
        self._epoch = 0  # advanced (under _lock) each time the child reports an error
        self.pid: int | None = None
        self.exit_reason: str | None = None
        self._started: float | None = None
        #: Seconds a batch may wait for room in the child's input pipe. A child
        #: that stopped reading (SIGSTOP, hung) is killed after this, instead of
        #: blocking the recorder's writer thread in a write for ever.
        self.send_timeout: float | None = 10.0

    # --- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        """Spawn the child; returns at once (``ready`` turns true when it is set up).

        Raises ``OSError`` if the interpreter cannot be started.
        """
        # The child finds agent_trace where this process found it, even off the
        # default sys.path; appended last, so it shadows nothing.
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        bootstrap = (
            f"import sys; sys.path.append({root!r}); "
            "from agent_trace.stores.sqlite_writer import main; sys.exit(main())"
        )
        self._proc = subprocess.Popen(
            [sys.executable, "-c", bootstrap, *self._args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            close_fds=True,
            start_new_session=True,
        )
        self.pid = self._proc.pid
        if self._proc.stdin is not None and hasattr(os, "set_blocking"):
            os.set_blocking(self._proc.stdin.fileno(), False)  # see _send: writes time out
        self._started = time.monotonic()
        _live.add(self)
        threading.Thread(
            target=self._read_answers, name="agent_trace-writer-answers", daemon=True
        ).start()

    def wait_ready(self, timeout: float) -> bool:
        """Wait until the child is set up; False on timeout or if it died."""
        self._ready.wait(timeout)
        return self.ready

    def age(self) -> float:
        """Seconds since :meth:`start`."""
        return time.monotonic() - self._started if self._started is not None else 0.0

    @property
    def ready(self) -> bool:
        """True once the child has its connection, until it dies or is closed."""
        return self._ready.is_set() and not self._dead

    @property
    def dead(self) -> bool:
        return self._dead

    @property
    def epoch(self) -> int:
        """The epoch new batches go in; a batch of an older one is skipped if that one failed."""
        return self._epoch

    def close(self, timeout: float | None = 10.0) -> None:
        """Let the child finish what it holds and exit (closes its stdin)."""
        proc = self._proc
        if proc is None:
            return
        with self._lock:
            self._dead = True
            try:
                if proc.stdin is not None:
                    proc.stdin.close()
            except OSError:
                pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("agent_trace: writer process %d did not exit; killing it", proc.pid)
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        _live.discard(self)

    def kill(self) -> None:
        """SIGKILL the child: it stopped answering (stopped, or hung). A batch in
        its hands is rolled back by SQLite, or was committed; either way its
        retry, with the same event ids, writes it once."""
        proc = self._proc
        if proc is None:
            return
        with self._lock:
            self._dead = True
        with contextlib.suppress(OSError):
            proc.kill()

    # --- appending ---------------------------------------------------------------

    async def append_captured(self, items: Sequence[Captured], epoch: int | None = None) -> int:
        """Append ``items`` through the child: the store's ``append_captured``."""
        if not items:
            return 0
        return await asyncio.wrap_future(self.submit(items, epoch))

    def submit(
        self, items: Sequence[Captured], epoch: int | None = None
    ) -> concurrent.futures.Future[int]:
        """Send one batch; the future resolves once the child has committed it.

        ``epoch``: the epoch of the batch this one was sent behind (default: the
        current one). If that epoch has seen a failure, the child skips this
        batch and the future raises :class:`WriterProcessSkipped`.
        """
        body = marshal.dumps((self._epoch if epoch is None else epoch, list(items)))
        fut: concurrent.futures.Future[int] = concurrent.futures.Future()
        with self._lock:
            proc = self._proc
            if self._dead or proc is None or proc.stdin is None:
                raise WriterProcessError(self.gone_message())
            self._pending.append(fut)
            try:
                _send_fd(proc.stdin.fileno(), body, self.send_timeout)
            except TimeoutError as exc:
                # The child stopped reading: it is stopped or hung, maybe holding the
                # write lock. Kill it; the batch is retried (same ids) in-process.
                self._pending.remove(fut)
                self._dead = True
                self.exit_reason = f"stopped reading its input for {self.send_timeout:g}s; killed"
                with contextlib.suppress(OSError):
                    proc.kill()
                raise WriterProcessError(self.gone_message()) from exc
            except (OSError, ValueError) as exc:  # EPIPE, or closed under us
                self._pending.remove(fut)
                self._dead = True
                raise WriterProcessError(f"{self.gone_message()}: {exc}") from exc
        return fut

    # --- answers -------------------------------------------------------------------

    def _read_answers(self) -> None:
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        stream = proc.stdout
        try:
            while True:
                answer = _read_frame(stream)
                if answer is None:
                    break
                if answer[0] == "ready":
                    self._ready.set()
                    continue
                if answer[0] == "failed":
                    self.exit_reason = answer[1]
                    break
                with self._lock:
                    fut = self._pending.popleft() if self._pending else None
                if fut is None:
                    break  # an answer nobody asked for: the stream is out of step
                if answer[0] == "ok":
                    _settle(fut, result=answer[1])
                elif answer[0] == "skipped":
                    _settle(fut, WriterProcessSkipped("skipped behind a failed batch"))
                else:
                    with self._lock:
                        self._epoch += 1  # before the sender can see the failure
                    _settle(fut, WriterProcessError(f"{answer[1]}: {answer[2]}"))
        except (OSError, ValueError, EOFError) as exc:
            self.exit_reason = f"{type(exc).__name__}: {exc}"
        finally:
            with self._lock:
                self._dead = True
                pending, self._pending = list(self._pending), deque()
            code = proc.poll()
            if code is None:
                try:
                    code = proc.wait(1.0)
                except subprocess.TimeoutExpired:
                    code = None
            if self.exit_reason is None:
                self.exit_reason = f"exited with code {code}"
            for fut in pending:
                # Committed or not is unknown: the batch is retried, and its
                # fixed event ids make a retry of a committed batch a no-op.
                _settle(fut, WriterProcessError(self.gone_message()))

    def gone_message(self) -> str:
        """Why appends through this child can no longer work (for errors and logs)."""
        reason = f" ({self.exit_reason})" if self.exit_reason else ""
        return f"agent_trace writer process {self.pid} for {self.path!r} is gone{reason}"


def _settle(
    fut: concurrent.futures.Future[int], exc: BaseException | None = None, result: int = 0
) -> None:
    """Resolve ``fut`` unless its waiter gave up on it (cancelled after a timeout)."""
    if fut.cancelled():
        return
    with contextlib.suppress(concurrent.futures.InvalidStateError):
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)


def _read_frame(stream: IO[bytes]) -> Any:
    """One frame's value, or None at a clean end of stream."""
    header = stream.read(_HEADER.size)
    if not header:
        return None
    if len(header) < _HEADER.size:
        raise EOFError("truncated frame header")
    (size,) = _HEADER.unpack(header)
    if size > _MAX_FRAME:
        raise ValueError(f"frame of {size} bytes is over the {_MAX_FRAME} limit")
    body = stream.read(size)
    if len(body) < size:
        raise EOFError("truncated frame")
    return marshal.loads(body)


def _write_frame(stream: IO[bytes], value: Any) -> None:
    _send(stream, marshal.dumps(value))


def _send_fd(fd: int, body: bytes, timeout: float | None) -> None:
    """One frame on a non-blocking pipe; ``TimeoutError`` if the reader makes no
    room for it within ``timeout`` seconds."""
    deadline = None if timeout is None else time.monotonic() + timeout
    for part in (_HEADER.pack(len(body)), body):
        view = memoryview(part)
        while view:
            try:
                view = view[os.write(fd, view) :]
                continue
            except BlockingIOError:
                pass
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError("the pipe stayed full")
            select.select([], [fd], [], left)


def _send(stream: IO[bytes], body: bytes) -> None:
    """One frame: the length, then ``body`` (written as is, not concatenated)."""
    stream.write(_HEADER.pack(len(body)))
    stream.write(body)
    stream.flush()


# A forked child of the recording process must not keep the writer's pipes
# open: the writer would not see its stdin close when the parent exits.
_live: weakref.WeakSet[WriterProcess] = weakref.WeakSet()


def _forget_in_child() -> None:
    for wp in list(_live):
        wp._dead = True
        proc = wp._proc
        for stream in (proc.stdin, proc.stdout) if proc is not None else ():
            if stream is not None:
                with contextlib.suppress(OSError, ValueError):
                    os.close(stream.fileno())
    _live.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)


# --- the child -------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """The writer child: ``python -m agent_trace.stores.sqlite_writer PATH BUSY_MS SYNC``."""
    from agent_trace.stores.sqlite import FileChanged, SQLiteStore, _append, _file_id

    path, busy_ms, synchronous = argv if argv is not None else sys.argv[1:]
    for sig in (signal.SIGINT, getattr(signal, "SIGTERM", None)):
        if sig is not None:
            signal.signal(sig, signal.SIG_IGN)
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing but frames may reach the protocol stream
    store = SQLiteStore(path, busy_timeout_ms=int(busy_ms), synchronous=synchronous)
    db = sqlite3.connect(path, isolation_level=None)
    checkpointer = _Checkpointer(path, int(busy_ms))
    try:
        try:
            store._set_up(db)
            db.execute(f"PRAGMA wal_autocheckpoint = {_WAL_PAGES}")
        except Exception as exc:
            _write_frame(out, ("failed", f"{type(exc).__name__}: {exc}"))
            return 1
        opened = _file_id(path)
        checkpointer.start()
        _write_frame(out, ("ready", os.getpid()))
        failed_epoch = None
        while True:
            frame = _read_frame(inp)
            if frame is None:
                return 0
            epoch, items = frame
            if epoch == failed_epoch:
                _write_frame(out, ("skipped",))
                continue
            try:
                n = _append(db, items, path, opened)
            except FileChanged as exc:
                # This connection writes to a lost file: answer, then exit; the
                # recording process appends in-process, reopening the path.
                _write_frame(out, ("error", type(exc).__name__, str(exc)))
                return 1
            except Exception as exc:
                failed_epoch = epoch
                _write_frame(out, ("error", type(exc).__name__, str(exc)))
            else:
                checkpointer.poke()
                _write_frame(out, ("ok", n))
    except (BrokenPipeError, EOFError):
        return 0  # the recording process is gone; nothing left to answer
    finally:
        checkpointer.stop()
        db.close()


class _Checkpointer:
    """Copies committed WAL pages into the database file, beside the inserts.

    A commit that finds the WAL over ``wal_autocheckpoint`` pages copies them
    on the committing connection, in the writer's path: about an eighth of its
    time under sustained load. Here a thread with a connection of its own runs
    a passive checkpoint after each commit instead (SQLite does the copying
    and syncing with the GIL released), so the writer goes on to the next
    batch. Passive checkpoints never wait for or block a writer or reader.
    A passive checkpoint cannot restart the WAL while the writer keeps
    appending; the writer's own autocheckpoint, past ``_WAL_PAGES``, finds
    little left to copy and lets the next transaction restart it.
    """

    def __init__(self, path: str, busy_ms: int) -> None:
        self.path = path
        self.busy_ms = busy_ms
        self._due = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="checkpointer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def poke(self) -> None:
        """A commit happened: checkpoint when the thread is next free."""
        self._due.set()

    def stop(self) -> None:
        self._stopping = True
        self._due.set()
        if self._thread.is_alive():
            self._thread.join(self.busy_ms / 1000 + 5)

    def _run(self) -> None:
        try:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error:
            return  # the writer's autocheckpoint still bounds the WAL
        try:
            db.execute(f"PRAGMA busy_timeout = {self.busy_ms}")
            while True:
                self._due.wait()
                self._due.clear()
                if self._stopping:
                    return
                # Errors (another checkpoint running, a lock) only mean this
                # round is skipped; the next commit asks again.
                with contextlib.suppress(sqlite3.Error):
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        finally:
            db.close()


if __name__ == "__main__":
    sys.exit(main())
