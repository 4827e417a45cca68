"""docs/cli.md runs: every ``$ agent-trace ...`` line, in order, in an empty directory.

Each command must exit as documented (2 when its output is an error line, else
0) and print what the page shows, up to what varies between runs: numbers,
durations, timestamps, ids, the waterfall bars and the directory. A block's
output may end with ``...`` (the rest is left out of the page).
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

from test_cli import REPO, cli_command, env

DOC = REPO / "docs" / "cli.md"
DOC_DIR = "/tmp/docrun"  # where the page's outputs were recorded


def commands() -> list[tuple[str, list[str]]]:
    """``(command line, documented output lines)`` from the console blocks, in order."""
    found: list[tuple[str, list[str]]] = []
    for block in re.findall(r"```console\n(.*?)```", DOC.read_text(), re.S):
        for line in block.splitlines():
            if line.startswith("$ "):
                found.append((line[2:], []))
            elif found:
                found[-1][1].append(line)
    return found


def normalize(line: str) -> str:
    line = re.sub(r"\|[█ ]*\|", "|bar|", line)
    line = re.sub(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", "ID", line)
    line = re.sub(r"\d[\d,.:T+-]*( ?(ms|s)\b)?", "N", line)
    return " ".join(line.split())


def test_the_page_has_commands():
    names = [shlex.split(c)[1 if shlex.split(c)[1] != "--store" else 3] for c, _ in commands()]
    for command in ("demo", "sessions", "show", "summary", "replay", "stats", "verify"):
        assert command in names
    for command in ("export", "ingest", "tail", "html"):
        assert command in names


def test_every_documented_command_runs_as_shown(tmp_path: Path):
    for line, documented in commands():
        argv = shlex.split(line)
        assert argv[0] == "agent-trace", line
        proc = subprocess.run(
            [*cli_command(), *argv[1:]],
            cwd=tmp_path,
            env=env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        expect_error = bool(documented) and documented[0].startswith("agent-trace: error:")
        assert proc.returncode == (2 if expect_error else 0), (line, proc.stdout, proc.stderr)
        got = (proc.stderr if expect_error else proc.stdout).replace(str(tmp_path), DOC_DIR)
        got_lines = got.splitlines()
        if documented and documented[-1] == "...":
            documented = documented[:-1]
            got_lines = got_lines[: len(documented)]
        assert [normalize(g) for g in got_lines] == [normalize(d) for d in documented], line
