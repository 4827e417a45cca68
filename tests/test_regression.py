"""``agent-trace test`` end to end: recorded sessions, replayed through an agent entry point.

The recordings are 8 research sessions of ``examples/research_agent.py`` in a
SQLite file; the entry points are in ``tests/regression_targets.py`` (the
agent as recorded, and changed). The command runs as users run it, in a
subprocess; the selection filters and the judging are also checked in process.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from test_cli import SESSIONS, cli, ok, record, usage_error

import agent_trace as at
from agent_trace.regression import (
    parse_selection,
    run_regression,
    select_recordings,
    text_diff,
)
from agent_trace.replay import RecordedSession

TARGETS = Path(__file__).resolve().parent / "regression_targets.py"


def target(name: str) -> str:
    return f"{TARGETS}:{name}"


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('regression')}/prod.db"
    record(url)
    return url


def run_json(store: str, *args: str, code: int = 0) -> dict:
    proc = cli("--store", store, "test", *args, "--replays-to", "memory://", "--json")
    assert proc.returncode == code, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return json.loads(proc.stdout)


def recorded_versions(url: str, session_id: str, tool: str, needle: str) -> list[int]:
    """Versions of the recorded calls of ``tool`` whose args mention ``needle``."""
    events = at.get_events_sync(session_id, store=url)
    return [
        e.version
        for e in events
        if e.event_type == "tool_started"
        and e.payload["tool"] == tool
        and needle in json.dumps(e.payload["args"])
    ]


# --- the command ------------------------------------------------------------------


def test_unchanged_agent_passes(store):
    text = ok("--store", store, "test", target("unchanged"), "--replays-to", "memory://")
    lines = text.splitlines()
    assert lines[0].split() == ["session", "result", "tokens", "cost", "duration"]
    rows = {line.split()[0]: line.split()[1] for line in lines[1:9]}
    assert rows == dict.fromkeys(SESSIONS, "same")
    assert "8 of 8 sessions same, 0 diverged" in text
    assert "fake-gpt-4o-mini: calls 49" in text  # tokens and cost per model, before = after


def test_a_changed_agent_fails_with_the_right_sessions_and_steps(store):
    report = run_json(store, target("patient"), code=1)
    diverged = {s["session_id"]: s for s in report["sessions"] if s["result"] == "diverged"}
    # Only the questions whose sources live on energy.example.org: solar and heat pumps.
    expected = {
        sid: versions[0]
        for sid in SESSIONS
        if (versions := recorded_versions(store, sid, "fetch_page", "energy.example.org"))
    }
    assert set(diverged) == set(expected) == {"research-00", "research-03", "research-05"}
    for sid, step in expected.items():
        d = diverged[sid]["divergence"]
        assert (d["step"], d["kind"], d["name"], d["reason"]) == (
            step,
            "tool",
            "fetch_page",
            "args_differ",
        )
        assert d["expected"]["timeout"] == 2.0 and d["actual"]["timeout"] == 5.0
        assert d["expected"]["url"] == d["actual"]["url"]
    assert report["summary"]["same"] == 5 and not report["ok"]

    proc = cli("--store", store, "test", target("patient"), "--replays-to", "memory://")
    assert proc.returncode == 1
    assert "research-03 diverged at step" in proc.stdout
    assert "(tool 'fetch_page'): called with other arguments" in proc.stdout
    assert "at args.timeout: recorded 2.0, now 5.0" in proc.stdout
    assert "5 of 8 sessions same, 3 diverged" in proc.stdout


def test_junit_xml_parses_and_names_each_session(store, tmp_path):
    path = tmp_path / "replay.xml"
    proc = cli(
        "--store", store, "test", target("patient"), "--replays-to", "memory://",
        "--junit-xml", str(path),
    )  # fmt: skip
    assert proc.returncode == 1
    suite = ET.parse(path).getroot().find("testsuite")
    assert suite is not None
    assert (suite.get("tests"), suite.get("failures")) == ("8", "3")
    cases = {case.get("name"): case for case in suite.iter("testcase")}
    assert sorted(cases) == SESSIONS
    failed = {name for name, case in cases.items() if case.find("failure") is not None}
    assert failed == {"research-00", "research-03", "research-05"}
    failure = cases["research-03"].find("failure")
    assert failure is not None
    assert "diverged at step" in failure.get("message", "")
    assert "at args.timeout: recorded 2.0, now 5.0" in (failure.text or "")


def test_live_llm_summary_counts_how_behaviour_changed(store):
    """A new model that skips the notes: every first decision changes, the answers do not."""
    report = run_json(store, target("new_model"), "--mock", "tool", code=1)
    s = report["summary"]
    assert (s["sessions"], s["same"], s["diverged"]) == (8, 0, 8)
    assert s["first_decision_changed"] == 8
    assert s["tool_choice_changed"] == 8
    assert s["final_answer_changed"] == 0
    assert set(s["models"]) == {"fake-gpt-4o-mini", "fake-gpt-5-mini"}
    old, new = s["models"]["fake-gpt-4o-mini"], s["models"]["fake-gpt-5-mini"]
    assert old["before"]["calls"] == 49 and old["after"]["calls"] == 8  # the answers only
    assert new["before"]["calls"] == 0 and new["after"]["calls"] == 49 - 8 - 8  # no notes step
    assert s["after"]["total_tokens"] != s["before"]["total_tokens"]
    first = report["sessions"][0]["divergence"]
    assert (first["name"], first["reason"]) == ("read_notes", "not_called")

    text = cli("--store", store, "test", target("new_model"), "--mock", "tool",
               "--replays-to", "memory://").stdout  # fmt: skip
    assert (
        "0 of 8 sessions same, 8 diverged: 8 at the first decision, "
        "8 with a different tool choice, 0 with a different final answer"
    ) in text
    assert "fake-gpt-5-mini: calls 0 -> 33" in text


def test_an_agent_that_raises_is_a_divergence_at_its_first_step(store):
    report = run_json(store, target("broken"), "--select", "metadata.topic=batteries", code=1)
    assert [s["session_id"] for s in report["sessions"]] == ["research-01", "research-06"]
    d = report["sessions"][0]["divergence"]
    assert d["reason"] == "error"
    assert d["actual_text"] == "raised RuntimeError: prompt template missing {question}"
    assert (d["kind"], d["name"]) == ("decision", "choose_next_action")


def test_replays_recorded_in_the_store_are_not_selected_next_time(store, tmp_path):
    copy = tmp_path / "copy.db"
    shutil.copy(store.removeprefix("sqlite:///"), copy)
    url = f"sqlite:///{copy}"
    first = ok("--store", url, "test", "--json", target("unchanged"))  # replays go into url
    second = ok("--store", url, "test", "--json", target("unchanged"))
    ids = [[s["session_id"] for s in json.loads(run)["sessions"]] for run in (first, second)]
    assert ids == [SESSIONS, SESSIONS]
    infos = at.list_sessions_sync(store=url)
    replays = [i for i in infos if "replay_of" in i.metadata]
    assert len(replays) == 16 and {i.metadata["replay_of"] for i in replays} == set(SESSIONS)
    only = json.loads(ok("--store", url, "test", "--json", target("unchanged"),
                         "--select", "replays=only", "--replays-to", "memory://"))  # fmt: skip
    assert len(only["sessions"]) == 16

    # --replays-to keeps them out of the store altogether.
    before = len(at.list_sessions_sync(store=url))
    ok("--store", url, "test", target("unchanged"), "--replays-to", "memory://")
    assert len(at.list_sessions_sync(store=url)) == before


def test_select_filters_on_the_command_line(store):
    def ids(*select: str) -> list[str]:
        args = [a for s in select for a in ("--select", s)]
        return [s["session_id"] for s in run_json(store, target("unchanged"), *args)["sessions"]]

    assert ids("tool=calculator") == SESSIONS
    assert ids("metadata.topic=rivers") == ["research-02", "research-07"]
    assert ids("session=research-0[12]") == ["research-01", "research-02"]
    assert len(ids("limit=3")) == 3
    assert ids("sample=3") == ids("sample=3") != ids("sample=3,seed=7")
    assert ids("since=1h", "until=2999-01-01") == SESSIONS
    assert ids("status=ok", "tool=fetch_page") == SESSIONS


def test_usage_errors_exit_2(store, tmp_path):
    assert "TARGET must be module:function" in usage_error("--store", store, "test", "nope")
    assert "cannot import" in usage_error("--store", store, "test", "no_such_module:run")
    assert "has no attribute" in usage_error("--store", store, "test", target("missing"))
    assert "not callable" in usage_error("--store", store, "test", target("not_callable"))
    assert "unknown select filter 'colour'" in usage_error(
        "--store", store, "test", target("unchanged"), "--select", "colour=red"
    )
    assert "--mock takes kinds" in usage_error(
        "--store", store, "test", target("unchanged"), "--mock", "tools"
    )
    message = usage_error("--store", store, "test", target("unchanged"), "--select", "tool=fax")
    assert "no recorded sessions" in message and "tool=fax" in message
    assert "no store at" in usage_error(
        "--store", f"sqlite:///{tmp_path}/none.db", "test", target("unchanged")
    )


def test_module_target_found_from_the_current_directory(store, tmp_path):
    (tmp_path / "my_agent.py").write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(TARGETS.parent)!r})\n"
        "from regression_targets import unchanged_sync as handle\n"
    )
    text = ok("--store", store, "test", "my_agent:handle", "--replays-to", "memory://",
              "--select", "limit=2", cwd=tmp_path)  # fmt: skip
    assert "2 of 2 sessions same" in text


# --- in process: selection and judging ------------------------------------------------


@at.record_tool
async def lookup(key: str) -> str:
    if key == "boom":
        raise KeyError(key)
    return key.upper()


async def echo(session: RecordedSession) -> str:
    answer = await lookup(session.user_message)
    at.emit("response_generated", {"response": answer})
    return answer


async def record_echo(session_id: str, message: str, **metadata: str) -> None:
    try:
        async with at.session(session_id, **metadata):
            at.emit("user_message_received", {"message": message})
            await lookup(message)
            at.emit("response_generated", {"response": message.upper()})
    except KeyError:
        pass


async def test_selection_in_process(memory_store):
    for i in range(6):
        await record_echo(f"e-{i}", f"m{i}", shard=str(i % 2))
    await record_echo("e-boom", "boom")
    await at.flush()

    async def ids(spec: str | None = None) -> list[str]:
        return [r.session_id for r in await select_recordings(memory_store, spec)]

    assert await ids() == [*(f"e-{i}" for i in range(6)), "e-boom"]
    assert await ids("status=error") == ["e-boom"]
    assert await ids("metadata.shard=1") == ["e-1", "e-3", "e-5"]
    assert await ids("limit=2") == ["e-5", "e-boom"]  # the newest two
    assert await ids("sample=3") == await ids("sample=3")
    assert await ids({"tool": "lookup", "session": "e-[0-2]"}) == ["e-0", "e-1", "e-2"]


async def test_open_sessions_are_left_out_unless_asked(memory_store):
    import time

    from agent_trace.events import AgentEvent, format_timestamp, uuid7

    started = AgentEvent(  # a session still running: started, not ended
        event_id=uuid7(),
        session_id="live-1",
        event_type="session_started",
        timestamp=format_timestamp(time.time_ns()),
        payload={"metadata": {}},
    )
    await memory_store.append([started])
    await record_echo("done-1", "x")
    await at.flush()
    assert [r.session_id for r in await select_recordings(memory_store)] == ["done-1"]
    open_only = await select_recordings(memory_store, "status=open")
    assert [r.session_id for r in open_only] == ["live-1"]


async def test_a_recorded_failure_replayed_the_same_way_is_same(memory_store):
    await record_echo("ok-1", "fine")
    await record_echo("boom-1", "boom")  # KeyError('boom') ends the session with an error
    await at.flush()
    recordings = await select_recordings(memory_store, "status=any")
    report = await run_regression(echo, recordings)
    assert [(r.session_id, r.diverged) for r in report.results] == [
        ("ok-1", False),
        ("boom-1", False),
    ]
    assert report.results[1].after.error == "KeyError: 'boom'"


async def test_concurrent_replays_give_the_same_verdicts(memory_store):
    for i in range(20):
        await record_echo(f"c-{i:02d}", f"m{i}")
    await at.flush()
    recordings = await select_recordings(memory_store)

    async def changed(session: RecordedSession) -> str:
        message = session.user_message
        answer = await lookup(message + "!" if message.endswith("7") else message)
        at.emit("response_generated", {"response": answer})
        return answer

    one = await run_regression(changed, recordings)
    many = await run_regression(changed, recordings, concurrency=8)
    verdicts = [[(r.session_id, r.diverged) for r in rep.results] for rep in (one, many)]
    assert verdicts[0] == verdicts[1]
    assert [sid for sid, bad in verdicts[0] if bad] == ["c-07", "c-17"]


def test_selection_errors_name_the_filter():
    for spec, message in [
        ("tool", "needs a value"),
        ("limit=0", "must be >= 1"),
        ("limit=ten", "not an integer"),
        ("status=broken", "status='broken'"),
        ("replays=maybe", "replays='maybe'"),
        ("tool=a,tool=b", "given twice"),
        ("since=yesterday-ish", "since"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_selection(spec)
    assert str(parse_selection("tool=a, limit=5")) == "tool=a,limit=5"


def test_text_diff_shows_the_changed_words_in_context():
    before = "Installed solar PV capacity reached 1419 GW in 2023, led by China and the EU."
    after = "Installed solar PV capacity reached 1500 GW in 2023, led by China and the EU."
    (hunk,) = text_diff(before, after)
    assert "[-1419-]{+1500+}" in hunk
    assert hunk.startswith("Installed") and "China" in hunk


def test_sync_entry_point_runs_its_own_loop(store):
    from regression_targets import unchanged_sync

    async def go() -> list[bool]:
        recordings = await select_recordings(store, "limit=2")
        at.configure(store="memory://")
        report = await run_regression(unchanged_sync, recordings)
        return [r.diverged for r in report.results]

    assert asyncio.run(go()) == [False, False]


# --- the pytest plugin, as a user's project runs it ------------------------------------

PLUGIN_TESTS = """
import sys
import pytest
import agent_trace as at

sys.path.insert(0, {targets_dir!r})
import regression_targets as targets

STORE = {store!r}
at.configure(store="memory://")


@pytest.mark.agent_trace_replay(store=STORE)
def test_unchanged(recorded_session, agent_replay):
    assert agent_replay(targets.unchanged) == recorded_session.final_response


@pytest.mark.agent_trace_replay(store=STORE, select="metadata.topic=heat pumps")
def test_patient(recorded_session, agent_replay):
    agent_replay(targets.patient)


@pytest.mark.agent_trace_replay(store=STORE, select="limit=1", mock="tool")
def test_live_llm(recorded_session, agent_replay):
    agent_replay(targets.unchanged)
    assert agent_replay.result.before.total_tokens == agent_replay.result.after.total_tokens


def test_without_marker(recorded_session):
    pass
"""


def test_pytest_plugin_runs_without_a_conftest(store, tmp_path):
    import os
    import subprocess
    import sys

    from test_cli import env

    project = tmp_path / "project"
    project.mkdir()
    (project / "test_agent.py").write_text(
        PLUGIN_TESTS.format(targets_dir=str(TARGETS.parent), store=store)
    )
    e = env()
    e.pop("PYTHONPATH", None)  # the plugin must come from the installed entry point
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", "-p", "no:asyncio"],
        cwd=project,
        env=e,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = proc.stdout + proc.stderr
    assert sorted(os.listdir(project)) == ["test_agent.py"]  # no conftest, nothing written
    assert proc.returncode == 1, out
    for sid in SESSIONS:
        assert f"test_agent.py::test_unchanged[{sid}] PASSED" in out
    assert "test_agent.py::test_patient[research-03] FAILED" in out
    assert out.count("test_agent.py::test_patient[") == 2  # one heat-pump session: -v, summary
    assert "test_agent.py::test_live_llm[research-07] PASSED" in out
    step = recorded_versions(store, "research-03", "fetch_page", "energy.example.org")[0]
    assert f"session research-03 diverged at step {step} (tool 'fetch_page')" in out
    assert "at args.timeout: recorded 2.0, now 5.0" in out
    assert "recorded_session needs @pytest.mark.agent_trace_replay" in out
    assert "1 failed, 9 passed, 1 error" in out


def test_cost_before_and_after_per_model(store, tmp_path):
    """Prices from configure(prices=...) in the target's module: cost where tokens are."""
    (tmp_path / "priced.py").write_text(
        "import sys\n"
        "import agent_trace as at\n"
        f"sys.path.insert(0, {str(TARGETS.parent)!r})\n"
        "from regression_targets import new_model, unchanged\n"
        "at.configure(prices={'fake-gpt-4o-mini': {'input': 0.15, 'output': 0.6},\n"
        "                     'fake-gpt-5-mini': {'input': 1.25, 'output': 10.0}})\n"
    )
    proc = cli("--store", store, "test", "priced:new_model", "--mock", "tool",
               "--replays-to", "memory://", "--json", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    models = json.loads(proc.stdout)["summary"]["models"]
    recorded = [
        e.payload["usage"]
        for sid in SESSIONS
        for e in at.get_events_sync(sid, store=store)
        if e.event_type == "llm_responded" and e.payload.get("usage")
    ]
    expected = sum(u["input_tokens"] * 0.15 + u["output_tokens"] * 0.6 for u in recorded) / 1e6
    assert models["fake-gpt-4o-mini"]["before"]["cost_usd"] == pytest.approx(expected)
    new = models["fake-gpt-5-mini"]
    assert new["before"]["cost_usd"] is None  # no call of it was recorded: unknown, not 0
    assert new["after"]["cost_usd"] == pytest.approx(
        (new["after"]["input_tokens"] * 1.25 + new["after"]["output_tokens"] * 10.0) / 1e6
    )
    text = ok("--store", store, "test", "priced:unchanged", "--replays-to", "memory://",
              cwd=tmp_path)  # fmt: skip
    assert "research-03  same       853  $0.0" in text
    assert "fake-gpt-4o-mini: calls 49, tokens 4,350, cost $0.0" in text


PARAGRAPH = (
    "Heat pump sales in Europe grew from 1.9 million units in 2020 to 3.0 million units "
    "in 2022, then slowed in 2023 as gas prices fell and subsidies were cut in Germany."
)


@at.record_tool
async def summarize(text: str) -> str:
    return text[:40]


async def test_a_long_text_argument_gets_a_word_diff(memory_store):
    async with at.session("long-1"):
        at.emit("user_message_received", {"message": PARAGRAPH})
        await summarize(PARAGRAPH)
    await at.flush()

    async def edited(session: RecordedSession) -> str:
        return await summarize(session.user_message.replace("1.9 million", "2.1 million"))

    report = await run_regression(edited, await select_recordings(memory_store))
    (result,) = report.results
    assert result.divergence is not None and result.divergence.step == 3
    text = result.explain()
    assert "session long-1 diverged at step 3 (tool 'summarize')" in text
    assert "at args.text (text diff):" in text
    assert "[-1.9-]{+2.1+}" in text and "…" in text  # only the change, in context
    assert len(max(text.splitlines(), key=len)) < 200
