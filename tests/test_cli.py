"""The ``agent-trace`` command, run as users run it: a subprocess on a real store.

The store is a SQLite file recorded by ``examples/research_agent.py`` (8
sessions; research-03 has one failed ``fetch_page``). Each command is checked
for its output, its ``--json`` (parsed), its exit code, and plain text when
piped; ``tests/test_cli_terminal.py`` covers the rich path on a pseudo-terminal.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

import agent_trace as at
from agent_trace.projections import build_session_summary

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "research_agent.py"
SESSIONS = [f"research-{i:02d}" for i in range(8)]


def cli_command() -> list[str]:
    """The installed console script, or the module when running from a bare checkout."""
    script = Path(sys.executable).parent / "agent-trace"
    return [str(script)] if script.exists() else [sys.executable, "-m", "agent_trace.cli"]


def env() -> dict[str, str]:
    e = dict(os.environ)
    e.pop("AGENT_TRACE_STORE", None)
    e["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), e.get("PYTHONPATH")]))
    e["COLUMNS"] = "120"
    return e


def cli(*args: str, cwd: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*cli_command(), *args],
        cwd=cwd,
        env=env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def ok(*args: str, **kw) -> str:
    proc = cli(*args, **kw)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def usage_error(*args: str, **kw) -> str:
    """Run a command that must fail with exit 2 and one line on stderr; return that line."""
    proc = cli(*args, **kw)
    assert proc.returncode == 2, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("agent-trace: error: ")
    return last


def record(url: str, sessions: int = 8) -> None:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLE), "--store", url, "--sessions", str(sessions), "--quiet"],
        env=env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    tmp = tmp_path_factory.mktemp("cli")
    url = f"sqlite:///{tmp}/x.db"
    record(url)
    return url


@pytest.fixture(scope="module")
def events(store) -> dict[str, list[at.AgentEvent]]:
    return {sid: at.get_events_sync(sid, store=store) for sid in SESSIONS}


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "agent-trace"
    if not script.exists():
        pytest.skip("not installed as a package (no console script)")
    proc = subprocess.run([str(script), "--version"], capture_output=True, text=True, env=env())
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"agent-trace {at.__version__}"


# --- sessions ----------------------------------------------------------------------


def test_sessions_table(store, events):
    out = ok("--store", store, "sessions")
    lines = out.strip().splitlines()
    assert lines[0].split() == [
        "session",
        "started",
        "(UTC)",
        "duration",
        "events",
        "tools",
        "tokens",
        "cost",
        "failures",
        "status",
    ]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert sorted(rows) == SESSIONS
    r3 = rows["research-03"]
    assert r3[-1] == "ok"
    assert r3[-2] == "1"  # one failed fetch_page
    assert r3[-6] == str(len(events["research-03"]))
    assert "\x1b[" not in out  # piped: plain text


def test_sessions_json(store, events):
    rows = json.loads(ok("--store", store, "sessions", "--json"))
    assert [r["session_id"] for r in rows] == [
        r["session_id"] for r in sorted(rows, key=lambda r: r["started_at"], reverse=True)
    ]
    by_id = {r["session_id"]: r for r in rows}
    assert sorted(by_id) == SESSIONS
    for sid, evs in events.items():
        summary = build_session_summary(evs, sid)
        row = by_id[sid]
        assert row["events"] == len(evs)
        assert row["tokens"] == summary.total_tokens
        assert row["status"] == "ok"
        assert row["failures"] == len(summary.errors)
        assert row["metadata"]["user_id"] == f"user-{int(sid[-2:]) % 7}"
    assert by_id["research-03"]["tool_calls"] == 5
    assert by_id["research-03"]["tools"] == ["calculator", "fetch_page", "read_notes", "web_search"]


def test_sessions_filters(store):
    def ids(*args: str) -> list[str]:
        return [
            r["session_id"] for r in json.loads(ok("--store", store, "sessions", "--json", *args))
        ]

    assert len(ids("--limit", "3")) == 3
    assert ids("--failed") == ["research-03"]
    assert sorted(ids("--tool", "calculator")) == SESSIONS
    assert ids("--tool", "no_such_tool") == []
    assert sorted(ids("--since", "1h")) == SESSIONS
    assert sorted(ids("--since", "2000-01-01")) == SESSIONS
    assert ids("--since", "2999-01-01T00:00:00Z") == []
    assert "--since" in usage_error("--store", store, "sessions", "--since", "yesterday-ish")
    assert ok("--store", store, "sessions", "--tool", "nope").strip() == "no sessions match"


# --- show, replay, summary -----------------------------------------------------------


def test_show_tree(store):
    out = ok("--store", store, "show", "research-03")
    lines = out.splitlines()
    assert lines[0].startswith("session research-03  ok")
    assert "1 failure" in lines[0]
    assert lines[1].startswith("├─ decision choose_next_action → read_notes")
    assert lines[2].startswith("│  └─ llm complete fake-gpt-4o-mini 49 tok")
    failed = [line for line in lines if "FAILED" in line]
    assert len(failed) == 1
    assert "tool fetch_page" in failed[0]
    assert "TimeoutError" not in failed[0]  # the message, not the type, is shown
    assert "no response from https://stats.unreachable.invalid" in failed[0]
    assert lines[-1].startswith("└─ llm stream_answer")
    assert all("|" in line for line in lines[1:])  # every span has a waterfall bar
    assert "\x1b[" not in out


def test_show_json(store, events):
    data = json.loads(ok("--store", store, "show", "research-03", "--json"))
    assert data["session_id"] == "research-03"
    spans = data["spans"]
    kinds = [s["kind"] for s in spans]
    assert kinds.count("tool") == 5
    assert kinds.count("decision") == 6
    assert [c["kind"] for c in spans[0]["children"]] == ["llm"]
    assert spans[0]["children"][0]["model"] == "fake-gpt-4o-mini"
    failed = [s for s in spans if s["status"] == "error"]
    assert [(s["kind"], s["name"]) for s in failed] == [("tool", "fetch_page")]
    for s in spans:  # spans lie on the session's time axis
        assert 0 <= s["start_ms"] <= s["end_ms"] <= data["duration_ms"] + 1e-6
    assert (
        data["summary"]["total_tokens"] == build_session_summary(events["research-03"]).total_tokens
    )


def test_replay(store, events):
    out = ok("--store", store, "replay", "research-03")
    firsts = [line.strip() for line in out.splitlines() if line.lstrip().startswith("[")]
    assert [line.split("] ")[1] for line in firsts] == [
        ev.event_type for ev in events["research-03"]
    ]
    assert "error: TimeoutError: no response" in out
    steps = json.loads(ok("--store", store, "replay", "research-03", "--json"))
    assert [s["version"] for s in steps] == [ev.version for ev in events["research-03"]]
    assert steps[2]["depth"] == 1 and steps[2]["kind"] == "llm"
    # --step without a terminal does not wait.
    assert ok("--store", store, "replay", "research-03", "--step") == out


def test_summary(store, events):
    data = json.loads(ok("--store", store, "summary", "research-03", "--json"))
    assert data == json.loads(
        json.dumps(build_session_summary(events["research-03"], "research-03").to_dict())
    )
    out = ok("--store", store, "summary", "research-03")
    assert "tools used:" in out
    assert "fetch_page x1" in out
    assert "error:" in out and "no response from" in out


# --- stats, verify --------------------------------------------------------------------


def test_stats(store, events):
    data = json.loads(ok("--store", store, "stats", "--json"))
    assert data["sessions"] == 8
    assert data["events"] == sum(len(e) for e in events.values())
    assert data["tools"]["fetch_page"]["calls"] == 9
    assert data["tools"]["fetch_page"]["failures"] == 1
    assert data["tools"]["calculator"]["p95_ms"] >= data["tools"]["calculator"]["p50_ms"] > 0
    model = data["models"]["fake-gpt-4o-mini"]
    llm_events = [ev for evs in events.values() for ev in evs if ev.event_type == "llm_responded"]
    assert model["calls"] == len(llm_events)
    assert model["input_tokens"] == sum(
        ev.payload["usage"].get("input_tokens", 0) for ev in llm_events
    )
    assert sum(data["sessions_per_day"].values()) == 8
    out = ok("--store", store, "stats")
    assert "tokens and cost per model" in out and "sessions per day" in out
    assert "fetch_page" in out


def test_verify_ok(store, events):
    out = ok("--store", store, "verify")
    total = sum(len(e) for e in events.values())
    assert out.strip() == f"verified 8 sessions, {total} events: ok"
    data = json.loads(ok("--store", store, "verify", "--json"))
    assert data == {"ok": True, "sessions_checked": 8, "events_checked": total, "failures": []}
    assert "verified 1 session" in ok("--store", store, "verify", "research-03")


def test_verify_detects_an_edited_event(store, tmp_path, events):
    path = tmp_path / "tampered.db"
    shutil.copy(store.removeprefix("sqlite:///"), path)
    db = sqlite3.connect(path)
    db.execute("DROP TRIGGER events_no_update")  # what an attacker with file access can do
    db.execute(
        "UPDATE events SET payload = ? WHERE session_id = 'research-05' AND version = 7",
        ('{"duration_ms":1.0,"result":"forged","tool":"read_notes"}',),
    )
    db.commit()
    db.close()
    url = f"sqlite:///{path}"
    # The fixture's store was verified by an earlier test: a full run (the
    # default) reads the edited event again; an incremental one would not.
    proc = cli("--store", url, "verify")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    bad = events["research-05"][6]
    assert f"FAILED research-05 at version 7 (event {bad.event_id}): hash does not match" in (
        proc.stdout
    )
    assert "1 of 8 sessions FAILED" in proc.stdout
    proc = cli("--store", url, "verify", "--json")
    assert proc.returncode == 1
    data = json.loads(proc.stdout)
    assert data["ok"] is False
    assert data["failures"][0]["session_id"] == "research-05"
    assert data["failures"][0]["first_bad_version"] == 7
    assert data["failures"][0]["event_id"] == bad.event_id
    assert cli("--store", url, "verify", "research-04").returncode == 0
    assert cli("--store", url, "verify", "research-05").returncode == 1


def test_verify_a_jsonl_store_with_a_deleted_line(tmp_path):
    url = f"jsonl:///{tmp_path}/j"
    record(url, sessions=2)
    assert cli("--store", url, "verify").returncode == 0
    events_file = tmp_path / "j" / "events.jsonl"
    lines = events_file.read_text().splitlines(keepends=True)
    events_file.write_text("".join(lines[:4] + lines[5:]))  # cut out position 5
    proc = cli("--store", url, "verify")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stdout.startswith("FAILED: the stored history is broken: event ")
    assert "position 6" in proc.stdout
    proc = cli("--store", url, "verify", "--json")
    assert proc.returncode == 1 and json.loads(proc.stdout)["ok"] is False


# --- export, ingest ------------------------------------------------------------------


def test_export_jsonl(store, events, tmp_path):
    out = ok("--store", store, "export", "research-03", "--format", "jsonl")
    rows = [json.loads(line) for line in out.splitlines()]
    assert [at.AgentEvent.from_dict(r) for r in rows] == events["research-03"]
    target = tmp_path / "r3.jsonl"
    proc = cli("--store", store, "export", "research-03", "-o", str(target))
    assert proc.returncode == 0 and proc.stdout == ""
    assert target.read_text() == out
    info = json.loads(ok("--store", store, "export", "research-03", "-o", str(target), "--json"))
    assert info == {"path": str(target), "format": "jsonl", "events": len(rows)}


def test_export_otlp_json(store, events, tmp_path):
    doc = json.loads(ok("--store", store, "export", "research-03", "--format", "otlp-json"))
    spans = [span for rs in doc["resourceSpans"] for ss in rs["scopeSpans"] for span in ss["spans"]]
    by_name: dict[str, list[dict]] = {}
    for span in spans:
        by_name.setdefault(span["name"], []).append(span)
    assert len(by_name["chat fake-gpt-4o-mini"]) == 7
    assert len(by_name["execute_tool fetch_page"]) == 2
    assert [s["status"]["code"] for s in by_name["execute_tool fetch_page"]] == [2, 0]
    root = [s for s in spans if "parentSpanId" not in s]
    assert len(root) == 1 and root[0]["name"].startswith("invoke_agent")

    def attrs(span):
        return {a["key"]: a["value"] for a in span["attributes"]}

    chat = attrs(by_name["chat fake-gpt-4o-mini"][0])
    assert chat["gen_ai.request.model"] == {"stringValue": "fake-gpt-4o-mini"}
    assert chat["gen_ai.usage.input_tokens"] == {"intValue": "24"}
    assert attrs(by_name["execute_tool fetch_page"][0])["gen_ai.tool.name"] == {
        "stringValue": "fetch_page"
    }
    # Content only on request; -o writes the same document.
    target = tmp_path / "r3.otlp.json"
    ok("--store", store, "export", "research-03", "--format", "otlp-json", "-o", str(target))
    assert json.loads(target.read_text()) == doc
    with_content = ok(
        "--store", store, "export", "research-03", "--format", "otlp-json", "--capture-content"
    )
    text = json.dumps(doc)
    assert text.count("heat-pumps") < json.dumps(json.loads(with_content)).count("heat-pumps")


def test_ingest(store, tmp_path):
    exported = tmp_path / "r3.jsonl"
    ok("--store", store, "export", "research-03", "-o", str(exported))
    fresh = f"sqlite:///{tmp_path}/fresh.db"  # created by ingest
    out = ok("--store", fresh, "ingest", str(exported))
    assert out.strip() == f"ingested {exported}: 34 new events written"
    out = ok("--store", fresh, "ingest", str(exported))  # idempotent by event_id
    assert out.strip() == f"ingested {exported}: 0 new events written"

    def strip_position(evs):
        return [{**ev.to_dict(), "position": None} for ev in evs]

    copied = at.get_events_sync("research-03", store=fresh)
    # Same chain: a store re-seals, and the hash does not cover the position.
    assert strip_position(copied) == strip_position(at.get_events_sync("research-03", store=store))
    assert ok("--store", fresh, "verify").strip() == "verified 1 session, 34 events: ok"

    # --remove empties the file once everything is stored; --json reports it.
    data = json.loads(ok("--store", fresh, "ingest", str(exported), "--remove", "--json"))
    assert data == {"path": str(exported), "written": 0, "removed": True, "refused": 0}
    assert exported.read_bytes() == b""


def test_ingest_errors(tmp_path):
    fresh = f"sqlite:///{tmp_path}/fresh.db"
    assert "no such file" in usage_error("--store", fresh, "ingest", str(tmp_path / "nope.jsonl"))
    bad = tmp_path / "bad.jsonl"
    good = {"event_id": "e1", "session_id": "s", "event_type": "t"}
    good["timestamp"] = "2024-01-01T00:00:00.000000+00:00"
    bad.write_text('{"not": "an event"}\n' + json.dumps(good) + "\n")
    # A bad line costs only itself: refused naming the line and field, the rest ingested.
    proc = cli("--store", fresh, "ingest", str(bad))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"{bad}:1: field 'event_id': is missing" in proc.stderr
    assert "1 new event written" in proc.stdout and "1 line refused" in proc.stdout
    assert (tmp_path / "bad.jsonl.rejected").read_text() == '{"not": "an event"}\n'


# --- tail ------------------------------------------------------------------------------


def test_tail_last_and_json(store, events):
    out = ok("--store", store, "tail", "--last", "3", "--timeout", "0.3")
    lines = out.splitlines()
    assert len(lines) == 3
    data = [
        json.loads(line)
        for line in ok("--store", store, "tail", "--last", "3", "--timeout", "0.3", "--json")
        .strip()
        .splitlines()
    ]
    all_events = sorted((ev for evs in events.values() for ev in evs), key=lambda e: e.position)
    assert [d["event_id"] for d in data] == [ev.event_id for ev in all_events[-3:]]
    assert [line.split()[2] for line in lines] == [ev.event_type for ev in all_events[-3:]]


def test_tail_follows_new_events(tmp_path):
    url = f"sqlite:///{tmp_path}/live.db"
    record(url, sessions=1)
    proc = subprocess.Popen(
        [*cli_command(), "--store", url, "tail", "--max-events", "40", "--timeout", "30"],
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ready = proc.stderr.readline()
        assert "following" in ready and "after position 29" in ready
        started = time.monotonic()
        record(url, sessions=2)  # 2 sessions x 29 events, after the first run's 29
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    lines = out.splitlines()
    assert len(lines) == 40
    assert {line.split()[1] for line in lines} <= {"research-00", "research-01"}
    assert any(line.split()[2] == "session_started" for line in lines)
    assert time.monotonic() - started < 20


# --- html, demo -------------------------------------------------------------------------


def test_html(store, tmp_path):
    target = tmp_path / "trace.html"
    out = ok("--store", store, "html", "research-03", "-o", str(target))
    assert out.splitlines()[0] == f"wrote {target} (34 events, 18 spans)"
    assert out.splitlines()[1] == f"open {target.resolve().as_uri()}"
    html = target.read_text()
    assert html.startswith("<!DOCTYPE html>")
    assert '"session_id":"research-03"' in html
    info = json.loads(ok("--store", store, "html", "research-03", "-o", str(target), "--json"))
    assert info == {"path": str(target), "events": 34, "spans": 18}
    # Without -o: ID.html in the current directory.
    ok("--store", store, "html", "research-03", cwd=tmp_path)
    assert (tmp_path / "research-03.html").read_text() == html


def test_demo(tmp_path):
    url = f"sqlite:///{tmp_path}/demo.db"
    out = ok("--store", url, "demo", "--sessions", "4")
    assert out.splitlines()[0].startswith("recorded 4 sessions")
    assert "look next:" in out
    assert f"  agent-trace --store {url} show research-03" in out
    assert len(json.loads(ok("--store", url, "sessions", "--json"))) == 4
    # Without --store: the default ./agent_trace.db in the current directory.
    data = json.loads(ok("demo", "--sessions", "1", "--json", cwd=tmp_path))
    assert data["store"] == "sqlite:///agent_trace.db"
    assert (tmp_path / "agent_trace.db").exists()


def test_demo_agent_ships_in_the_package():
    """``demo`` must work from a wheel: the package holds the example (a symlink in git)."""
    shipped = REPO / "agent_trace" / "_demo_agent.py"
    assert shipped.read_text() == EXAMPLE.read_text()


# --- usage errors, help -------------------------------------------------------------------


def test_unknown_session_suggests_near_matches(store):
    for command in ("show", "replay", "summary", "verify", "export", "html"):
        err = usage_error("--store", store, command, "research-3")
        assert err == (
            f"agent-trace: error: no session 'research-3' in {store}; "
            "did you mean research-03, research-07, research-06?"
        ) or ("did you mean research-03" in err), err


def test_store_errors(tmp_path):
    missing = f"sqlite:///{tmp_path}/missing.db"
    err = usage_error("--store", missing, "sessions")
    assert "no store at" in err and "missing.db does not exist" in err
    assert not (tmp_path / "missing.db").exists()  # reading never creates a store
    assert "unknown store URL" in usage_error("--store", "foo://bar", "sessions")
    assert "names a host" in usage_error("--store", "sqlite://host/x.db", "stats")
    err = usage_error("--store", "postgresql://u:secret@127.0.0.1:1/db", "sessions")
    assert "secret" not in err
    # AGENT_TRACE_STORE is the default store.
    proc = subprocess.run(
        [*cli_command(), "sessions"],
        env={**env(), "AGENT_TRACE_STORE": missing},
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "missing.db" in proc.stderr


def test_argument_errors_exit_2(store):
    for args in (
        [],
        ["show"],
        ["sessions", "--limit", "-1"],
        ["export", "research-03", "--format", "xml"],
        ["nope"],
    ):
        proc = cli("--store", store, *args)
        assert proc.returncode == 2, args
        assert "usage: agent-trace" in proc.stderr


def test_json_option_before_or_after_the_command(store):
    assert json.loads(ok("--json", "--store", store, "summary", "research-01")) == json.loads(
        ok("summary", "research-01", "--store", store, "--json")
    )


@pytest.mark.parametrize(
    "command",
    [
        "sessions",
        "show",
        "replay",
        "summary",
        "stats",
        "verify",
        "export",
        "ingest",
        "tail",
        "html",
        "demo",
    ],
)
def test_help_has_an_example(command):
    out = ok(command, "--help")
    assert "example:\n  agent-trace" in out
