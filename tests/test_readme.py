"""The README's Python blocks run as written (docs that cannot rot).

Each ```python block runs as its own script in a fresh directory. A block
preceded by ``<!-- no-run -->`` is a fragment and is skipped. When a block is
followed by "prints" and a ```text block, its output must match that block.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
_BLOCK = re.compile(
    r"(?P<skip><!-- no-run -->\s*)?```python\n(?P<code>.*?)```"
    r"(?:\s*prints\s*```text\n(?P<out>.*?)```)?",
    re.S,
)


def _blocks() -> list[tuple[str, str | None]]:
    found = []
    for m in _BLOCK.finditer(README.read_text()):
        if not m.group("skip"):
            found.append((m.group("code"), m.group("out")))
    return found


BLOCKS = _blocks()


def test_readme_has_runnable_blocks() -> None:
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs(index: int, tmp_path: Path) -> None:
    code, expected = BLOCKS[index]
    script = tmp_path / f"block_{index}.py"
    script.write_text(code)
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    if expected is not None:
        got = [line.rstrip() for line in proc.stdout.strip().splitlines()]
        assert got == [line.rstrip() for line in expected.strip().splitlines()]
