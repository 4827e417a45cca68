"""The ``agent-trace`` rich path: the same commands on a pseudo-terminal.

On a terminal the CLI draws with rich (colours, tables, a coloured tree);
piped, it prints plain text (``tests/test_cli.py``). A pty makes the child
see a terminal, as in a user's shell.
"""

from __future__ import annotations

import os
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_cli import cli, cli_command, env, record

pty = pytest.importorskip("pty")
pytest.importorskip("rich")

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('cli_tty')}/x.db"
    record(url)
    return url


def run_in_pty(*args: str, keys: list[bytes] = (), timeout: float = 30) -> tuple[int, str]:
    """Run the CLI with stdin, stdout and stderr on a pty; type ``keys`` one per prompt."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [*cli_command(), *args],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env={**env(), "TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40"},
        close_fds=True,
    )
    os.close(slave)
    keys = list(keys)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
                if keys and b"Enter, q" in data:
                    os.write(master, keys.pop(0))
            elif proc.poll() is not None:
                break
        code = proc.wait(timeout=max(deadline - time.monotonic(), 1))
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    return code, b"".join(chunks).decode("utf-8", "replace")


def plain(text: str) -> str:
    return ANSI.sub("", text).replace("\r\n", "\n")


def test_sessions_rich_table(store):
    code, out = run_in_pty("--store", store, "sessions")
    assert code == 0
    assert ANSI.search(out), "a terminal gets colours"
    text = plain(out)
    assert "research-03" in text and "research-07" in text
    assert "─" in text  # rich's table rule
    assert "started (UTC)" in text
    # The same command piped: no escape codes, no rich rule.
    piped = cli("--store", store, "sessions").stdout
    assert not ANSI.search(piped)


def test_show_rich_tree_marks_failures_red(store):
    code, out = run_in_pty("--store", store, "show", "research-03")
    assert code == 0
    text = plain(out)
    assert "├─ decision choose_next_action → read_notes" in text
    assert "│  └─ llm complete fake-gpt-4o-mini 49 tok" in text
    assert "█" in text
    failure = next(line for line in out.splitlines() if "FAILED: no response" in line)
    assert "\x1b[1;31m" in failure  # bold red
    tool_line = next(line for line in out.splitlines() if "tool " in line and "read_notes" in line)
    assert "32m" in tool_line  # tools are green


def test_stats_and_summary_rich(store):
    code, out = run_in_pty("--store", store, "stats")
    assert code == 0 and ANSI.search(out)
    assert "tokens and cost per model" in plain(out)
    code, out = run_in_pty("--store", store, "summary", "research-03")
    assert code == 0 and "fetch_page x1" in plain(out)


def test_verify_shows_progress_on_a_terminal(tmp_path):
    url = f"sqlite:///{tmp_path}/many.db"
    record(url, sessions=60)  # progress bars start at 50 items
    code, out = run_in_pty("--store", url, "verify")
    assert code == 0
    assert "verifying" in out and "━" in out  # rich's bar, drawn on stderr (the pty)
    assert re.search(r"verified 60 sessions, [\d,]+ events: ok", plain(out))
    piped = cli("--store", url, "verify")
    assert "verifying" not in piped.stdout + piped.stderr


def test_test_command_shows_progress_on_a_terminal(tmp_path):
    url = f"sqlite:///{tmp_path}/many.db"
    record(url, sessions=60)
    target = f"{Path(__file__).resolve().parent / 'regression_targets.py'}:unchanged"
    code, out = run_in_pty("--store", url, "test", target, "--replays-to", "memory://")
    assert code == 0
    assert "replaying 60 sessions" in out and "━" in out  # rich's bar on stderr (the pty)
    assert "60 of 60 sessions same" in plain(out)
    piped = cli("--store", url, "test", target, "--replays-to", "memory://")
    assert piped.returncode == 0 and "replaying" not in piped.stdout + piped.stderr


def test_json_on_a_terminal_is_still_plain_json(store):
    code, out = run_in_pty("--store", store, "summary", "research-03", "--json")
    assert code == 0
    assert not ANSI.search(out)
    assert '"session_id": "research-03"' in out


def test_replay_step_waits_for_enter(store):
    code, out = run_in_pty(
        "--store", store, "replay", "research-03", "--step", keys=[b"\n", b"\n", b"q\n"]
    )
    assert code == 0
    text = plain(out)
    assert text.count("Enter, q") == 3
    shown = re.findall(r"\] (\w+)\n", text)
    assert shown == ["session_started", "user_message_received", "llm_started"]


def test_errors_on_a_terminal(store):
    code, out = run_in_pty("--store", store, "show", "nope")
    assert code == 2
    assert "agent-trace: error: no session 'nope'" in plain(out)


@pytest.mark.skipif(sys.platform == "win32", reason="pty")
def test_plain_option_on_a_terminal(store):
    code, out = run_in_pty("--store", store, "--plain", "sessions")
    assert code == 0
    assert not ANSI.search(out)
