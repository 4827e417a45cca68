"""OTLP out in a real backend: a recorded session sent to Arize Phoenix, read back through
Phoenix's own client as a user would see it.

Phoenix runs offline on SQLite (``phoenix serve`` in a subprocess, loopback, a temp
working directory). The session goes the README's way: ``agent-trace export
--format otlp-proto`` and the documented ``curl``. Runs in CI (``CI`` set); elsewhere
it is skipped when Phoenix or curl is missing.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import agent_trace as at

README = Path(__file__).resolve().parent.parent / "README.md"
PROJECT = "agent-trace-test"


def _require(ok: bool, what: str) -> None:
    if not ok:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the Phoenix test; missing: {what}")
        pytest.skip(f"missing: {what}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def phoenix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    _require(importlib.util.find_spec("phoenix") is not None, "arize-phoenix")
    import httpx

    workdir = tmp_path_factory.mktemp("phoenix")
    port = _free_port()
    env = dict(
        os.environ,
        PHOENIX_WORKING_DIR=str(workdir),
        PHOENIX_HOST="127.0.0.1",
        PHOENIX_PORT=str(port),
        PHOENIX_GRPC_PORT=str(_free_port()),
        PHOENIX_TELEMETRY_ENABLED="false",
        PHOENIX_ALLOW_EXTERNAL_RESOURCES="false",
    )
    log = (workdir / "phoenix.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from phoenix.server.main import main; sys.exit(main())",
            "serve",
        ],
        env=env,
        cwd=workdir,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(
                    f"phoenix serve exited: {(workdir / 'phoenix.log').read_text()[-3000:]}"
                )
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("phoenix serve did not come up in 180 s")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


class Broke(Exception):
    pass


@at.record_decision
def route(question: str) -> str:
    return "search"


@at.record_tool
def search(query: str) -> list[str]:
    return [f"notes on {query}"]


@at.record_tool
def fetch(url: str) -> str:
    raise Broke(f"timed out fetching {url}")


@at.record_llm(model="gpt-4o")
def chat(messages: list[dict[str, str]]) -> dict[str, Any]:
    question = messages[-1]["content"]
    return {
        "id": "chatcmpl-1",
        "model": "gpt-4o-2024-08-06",
        "choices": [
            {
                "message": {"role": "assistant", "content": f"Answer to {question}"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 1000, "completion_tokens": 500, "total_tokens": 1500},
    }


QUESTIONS = ("What is OTLP?", "And the GenAI conventions?")


def record_two_turns() -> str:
    """One session entered twice (two turns), each: decision, tool, failing tool, LLM call."""
    sid = None
    for question in QUESTIONS:
        with at.session(sid, agent="researcher") as s:
            sid = s.id
            at.emit("user_message_received", {"message": question})
            route(question)
            search(question)
            with pytest.raises(Broke):
                fetch("http://example.invalid")
            reply = chat(
                [{"role": "system", "content": "Be brief."}, {"role": "user", "content": question}]
            )
            at.emit("response_generated", {"response": reply["choices"][0]["message"]["content"]})
    at.flush_sync(timeout=10)
    assert sid is not None
    return sid


def readme_recipe() -> list[str]:
    """The README's export + curl lines for Phoenix."""
    block = re.search(
        r"```bash\n(agent-trace export SESSION_ID --format otlp-proto.*?)```",
        README.read_text(),
        re.S,
    )
    assert block, "README has no otlp-proto curl recipe"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_an_exported_session_shows_fully_in_phoenix(phoenix: str, tmp_path: Path) -> None:
    _require(shutil.which("curl") is not None, "curl")
    db = tmp_path / "agent.db"
    at.configure(store=f"sqlite:///{db}", durability="batched", auto_session=False)
    sid = record_two_turns()

    # The README's recipe, as written, against this Phoenix.
    export_line, curl_line = readme_recipe()
    export = shlex.split(export_line.replace("SESSION_ID", sid).replace("my-agent", PROJECT))
    assert export[0] == "agent-trace"
    done = subprocess.run(
        [sys.executable, "-m", "agent_trace.cli", "--store", f"sqlite:///{db}", *export[1:]],
        cwd=tmp_path,
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr.decode()
    body = (tmp_path / "trace.pb").read_bytes()
    assert body[:1] == b"\n"  # protobuf field 1 (resource_spans), not JSON
    curl = shlex.split(curl_line.replace("http://localhost:6006", phoenix))
    sent = subprocess.run(
        [*curl, "-s", "-o", os.devnull, "-w", "%{http_code}"],
        cwd=tmp_path,
        capture_output=True,
        timeout=60,
    )
    assert sent.stdout == b"200", (sent.stdout, sent.stderr)

    from phoenix.client import Client

    client = Client(base_url=phoenix)
    spans: list[Any] = []
    deadline = time.monotonic() + 60
    while len(spans) < 10 and time.monotonic() < deadline:  # Phoenix inserts in the background
        time.sleep(0.5)
        try:
            spans = client.spans.get_spans(project_identifier=PROJECT, limit=100)
        except Exception:  # the project appears with its first span
            spans = []
    assert len(spans) == 10, [s["name"] for s in spans]

    kinds = {(s["name"], s["span_kind"]) for s in spans}
    assert kinds == {
        ("invoke_agent researcher", "AGENT"),
        ("decision route", "CHAIN"),
        ("execute_tool search", "TOOL"),
        ("execute_tool fetch", "TOOL"),
        ("chat gpt-4o", "LLM"),
    }

    # One trace per turn; each tree hangs from its turn's root.
    roots = sorted((s for s in spans if s["parent_id"] is None), key=lambda s: s["start_time"])
    assert len(roots) == 2
    assert len({s["context"]["trace_id"] for s in spans}) == 2
    for root in roots:
        children = [s for s in spans if s["parent_id"] == root["context"]["span_id"]]
        assert sorted(s["name"] for s in children) == [
            "chat gpt-4o",
            "decision route",
            "execute_tool fetch",
            "execute_tool search",
        ]
    turns = [e for e in at.get_events_sync(sid) if e.event_type == "session_started"]
    assert [r["context"]["trace_id"] for r in roots] == [t.event_id.replace("-", "") for t in turns]

    # The turn's question and answer on its root.
    for root, question in zip(roots, QUESTIONS, strict=True):
        assert root["attributes"]["input.value"] == question
        assert root["attributes"]["output.value"] == f"Answer to {question}"

    # LLM: model, provider, tokens, input and output messages.
    llm = next(s for s in spans if s["span_kind"] == "LLM")
    a = llm["attributes"]
    assert a["llm.model_name"] == "gpt-4o"
    assert a["llm.provider"] == "openai"
    assert a["llm.token_count.prompt"] == 1000 and a["llm.token_count.completion"] == 500
    question = a["llm.input_messages.1.message.content"]
    assert question in QUESTIONS
    assert a["llm.input_messages.0.message.role"] == "system"
    assert a["llm.input_messages.0.message.content"] == "Be brief."
    assert a["llm.input_messages.1.message.role"] == "user"
    assert a["llm.output_messages.0.message.role"] == "assistant"
    assert a["llm.output_messages.0.message.content"] == f"Answer to {question}"
    assert a["output.value"] == f"Answer to {question}"

    # The decision is a chain step with its choice.
    decision = next(s for s in spans if s["span_kind"] == "CHAIN")
    assert decision["attributes"]["output.value"] == "search"

    # The failed tool: error status and its exception event.
    failed = [s for s in spans if s["name"] == "execute_tool fetch"]
    assert {s["status_code"] for s in failed} == {"ERROR"}
    [exception] = [e for e in failed[0]["events"] if e["name"] == "exception"]
    assert exception["attributes"]["exception.type"] == "Broke"
    assert (
        exception["attributes"]["exception.message"] == "timed out fetching http://example.invalid"
    )
    ok_tool = next(s for s in spans if s["name"] == "execute_tool search")
    assert ok_tool["status_code"] != "ERROR"
    assert ok_tool["attributes"]["tool.name"] == "search"

    # The session: both turns, all their tokens.
    session = client.sessions.get(session_id=sid)
    assert len(session["traces"]) == 2
    assert session["token_count_total"] == 3000
    turns = client.sessions.get_session_turns(session_id=sid)
    assert [t["input"]["value"] for t in turns] == list(QUESTIONS)
    assert [t["output"]["value"] for t in turns] == [f"Answer to {q}" for q in QUESTIONS]
