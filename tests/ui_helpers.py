"""Shared by the UI tests: a real ``agent-trace ui`` process, and sessions written for them.

``UIServer`` runs the console script as a user does (``--port 0``: any free
port, read back from its first stderr line) and stops it with Ctrl-C (SIGINT).
``write_session`` appends a hand-made session through a real store, so a test
knows exactly where two runs diverge.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from test_cli import cli_command, env

from agent_trace.events import AgentEvent, format_timestamp, uuid7
from agent_trace.stores import SQLiteStore, open_store
from agent_trace.stores.base import captured_from_events

_URL = re.compile(r"at (http://\S+?)/ ")


class UIServer:
    """``agent-trace --store URL ui --port 0 [args]`` in a subprocess, as a context manager."""

    def __init__(self, store_url: str, *args: str, cwd: Path | None = None) -> None:
        self.argv = [*cli_command(), "--store", store_url, "ui", "--port", "0", *args]
        self.cwd = cwd
        self.base = ""
        self.proc: subprocess.Popen[str] | None = None
        self.stderr_lines: list[str] = []

    def __enter__(self) -> UIServer:
        self.proc = subprocess.Popen(
            self.argv,
            cwd=self.cwd,
            env=env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline()
        self.stderr_lines.append(line)
        m = _URL.search(line)
        if not m:
            self.proc.kill()
            rest = self.proc.stderr.read()
            raise AssertionError(f"the server did not start: {line}{rest}")
        self.base = m.group(1)
        # Wait until the index has read the whole store once.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if self.json("/api/changes")["caught_up"]:
                    return self
            except (urllib.error.URLError, ConnectionError):
                pass
            time.sleep(0.05)
        raise AssertionError("the UI did not catch up with the store in 30 s")

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)
        try:
            self.returncode = self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("the UI did not stop on Ctrl-C within 15 s") from None
        finally:
            for stream in (self.proc.stdout, self.proc.stderr):
                if stream is not None:
                    stream.close()

    def get(
        self, path: str, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        """``(status, headers, body)``; error statuses are returned, not raised."""
        req = urllib.request.Request(self.base + path, headers=headers or {})
        return _send(req)

    def post(
        self, path: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, dict[str, str], bytes]:
        req = urllib.request.Request(self.base + path, data=body, headers=headers, method="POST")
        return _send(req)

    def text(self, path: str, status: int = 200) -> str:
        got, _, body = self.get(path)
        assert got == status, (path, got, body[:500])
        return body.decode()

    def json(self, path: str, status: int = 200) -> Any:
        got, headers, body = self.get(path)
        assert got == status, (path, got, body[:500])
        assert headers["content-type"].startswith("application/json")
        return json.loads(body)

    def wait_for(self, predicate: Any, timeout: float = 10.0) -> Any:
        """Poll ``predicate()`` until it returns something truthy; return it."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"not within {timeout} s")
            time.sleep(0.05)


def _send(req: urllib.request.Request) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, {k.lower(): v for k, v in err.headers.items()}, err.read()


def write_session(
    path: Path | str, session_id: str, choices: list[str], *, failed_tool: str | None = None
) -> list[AgentEvent]:
    """Append one agent run to a SQLite file (or a store URL): per choice a decision
    and a tool call; then an LLM call and a final answer.

    Two runs with the same first choices diverge at the first differing one
    (decision point ``2 * i + 1``: decision, tool args, decision, ...).
    """
    t0 = time.time_ns()
    events: list[AgentEvent] = []

    def add(event_type: str, payload: dict[str, Any], span: str | None = None) -> None:
        events.append(
            AgentEvent(
                uuid7(),
                session_id,
                event_type,
                format_timestamp(t0 + len(events) * 1_000_000),
                payload,
                span_id=span,
            )
        )

    add("session_started", {"metadata": {"user_id": "ada", "case": session_id}})
    add(
        "user_message_received",
        {"message": f"compare run {session_id}: how fast do heat pumps sell?"},
    )
    for i, tool in enumerate(choices):
        add(
            "decision_made",
            {
                "decision": "choose",
                "args": {},
                "choice": tool,
                "reasoning": None,
                "duration_ms": 1.0,
            },
            f"d{i}",
        )
        add("tool_started", {"tool": tool, "args": {"step": i}}, f"t{i}")
        if tool == failed_tool:
            add(
                "tool_failed",
                {
                    "tool": tool,
                    "error_type": "TimeoutError",
                    "error": "no answer",
                    "duration_ms": 2.0,
                },
                f"t{i}",
            )
        else:
            add("tool_executed", {"tool": tool, "result": i, "duration_ms": 2.0}, f"t{i}")
    # A priced model (genai-prices prices gpt-4o-mini), so the UI has a cost to show.
    add("llm_started", {"name": "complete", "provider": "openai", "model": "gpt-4o-mini"}, "l")
    add(
        "llm_responded",
        {
            "name": "complete",
            "provider": "openai",
            "model": "gpt-4o-mini",
            "response": "done",
            "duration_ms": 3.0,
            "usage": {"input_tokens": 100, "output_tokens": 20, "total_tokens": 120},
        },
        "l",
    )
    add("response_generated", {"response": f"answer of {session_id}", "tokens_used": 0})
    add("session_ended", {"status": "ok", "duration_ms": float(len(events))})

    async def append() -> None:
        store = SQLiteStore(path) if isinstance(path, Path) else open_store(path)
        try:
            # append_captured, not append: the UI must show whatever a store holds,
            # even ids that append() refuses (a hostile id, written by other means).
            await store.append_captured(captured_from_events(events))
        finally:
            await store.close()

    # In a thread of its own: the caller may be inside an event loop (Playwright's sync API).
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, append()).result()
    return events
