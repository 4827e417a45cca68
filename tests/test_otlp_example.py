"""examples/otlp_ingest.py runs as users run it and stores a verified session."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from test_otlp_ingest import need

from agent_trace import open_store
from agent_trace.integrity import verify_session

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "otlp_ingest.py"


def test_the_otlp_ingest_example(tmp_path: Path) -> None:
    need("pydantic_ai")
    need("opentelemetry.exporter.otlp.proto.common")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    url = f"sqlite:///{tmp_path / 'otlp.db'}"
    proc = subprocess.run(
        [sys.executable, str(EXAMPLE), url],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "ingested 10 events (0 on resending the same spans)" in out
    assert "verified: True" in out
    assert "llm calls: 2, tools: ['forecast']" in out

    async def check() -> None:
        store = open_store(url)
        try:
            [info] = await store.list_sessions()
            assert (await verify_session(info.session_id, store=store)).ok
            types = [e.event_type for e in await store.get_events(info.session_id)]
            assert types.count("tool_executed") == 1 and types.count("llm_responded") == 2
        finally:
            await store.close()

    asyncio.run(check())
