"""Interpreter exit flushes pending events: normal end, sys.exit, an unhandled exception, SIGTERM.

Each child emits a burst of events with batched durability and no flush of
its own (``flush_on_session_end=False``), then leaves in one of those ways.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import agent_trace as at

ROOT = Path(__file__).resolve().parents[1]
N = 3000

PRELUDE = textwrap.dedent(
    """
    import os, signal, sys, time
    import agent_trace as at
    at.configure(store={url!r}, flush_on_session_end=False{options})
    with at.session("exit-test"):
        for i in range({n}):
            at.emit("tick", {{"i": i}})
    """
)


def _run(
    tmp_path: Path, ending: str, *, before: str = "", stdin_wait: bool = False, options: str = ""
):
    url = f"sqlite:///{tmp_path / 'events.db'}"
    script = tmp_path / "child.py"
    script.write_text(
        before + PRELUDE.format(url=url, n=N, options=options) + textwrap.dedent(ending)
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    if stdin_wait:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "emitted\n"
        proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    events = at.get_events_sync("exit-test", store=url)
    return proc.returncode, out, err, events


def _assert_all_there(events):
    assert len(events) == N + 2, len(events)
    assert [e.payload["i"] for e in events[1:-1]] == list(range(N))
    assert events[-1].event_type == "session_ended"


def test_normal_end_flushes(tmp_path):
    code, _, err, events = _run(tmp_path, "")
    assert code == 0, err
    _assert_all_there(events)


def test_sys_exit_flushes(tmp_path):
    code, _, err, events = _run(tmp_path, "sys.exit(3)\n")
    assert code == 3, err
    _assert_all_there(events)


def test_unhandled_exception_flushes(tmp_path):
    code, _, err, events = _run(tmp_path, "raise RuntimeError('boom')\n")
    assert code == 1 and "RuntimeError: boom" in err
    _assert_all_there(events)


@pytest.mark.skipif(not hasattr(signal, "SIGTERM") or os.name != "posix", reason="POSIX signals")
def test_sigterm_flushes(tmp_path):
    code, _, err, events = _run(
        tmp_path,
        """
        print("emitted", flush=True)
        time.sleep(60)
        """,
        stdin_wait=True,
    )
    assert code in (128 + signal.SIGTERM, -signal.SIGTERM), (code, err)
    _assert_all_there(events)


@pytest.mark.skipif(os.name != "posix", reason="POSIX signals")
def test_a_users_own_sigterm_handler_is_left_alone(tmp_path):
    before = textwrap.dedent(
        """
        import signal, sys
        def mine(signum, frame):
            print("user handler", flush=True)
            sys.exit(7)
        signal.signal(signal.SIGTERM, mine)
        """
    )
    code, out, err, events = _run(
        tmp_path,
        """
        print("emitted", flush=True)
        time.sleep(60)
        """,
        before=before,
        stdin_wait=True,
    )
    assert code == 7 and "user handler" in out, (code, out, err)
    _assert_all_there(events)  # sys.exit from the user's handler: the exit hook flushes


@pytest.mark.skipif(os.name != "posix", reason="POSIX signals")
def test_handle_sigterm_false_keeps_the_default_action(tmp_path):
    code, _, err, _events = _run(
        tmp_path,
        """
        print("emitted", flush=True)
        time.sleep(60)
        """,
        stdin_wait=True,
        options=", handle_sigterm=False",
    )
    assert code == -signal.SIGTERM, (code, err)
