"""agent_trace.replay: stepping, deterministic re-execution, divergence, diff, batch."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import agent_trace as at
from agent_trace.replay import (
    RecordedDict,
    ReplayDivergence,
    ReplayedError,
    diff_sessions,
    diff_sessions_sync,
    iter_steps,
    replay,
    replay_many,
    replay_session,
)

REPO = Path(__file__).resolve().parent.parent

# --- a small agent whose tools and LLM count how often their bodies run --------------

RUNS: dict[str, int] = {}


def ran(name: str) -> None:
    RUNS[name] = RUNS.get(name, 0) + 1


@pytest.fixture(autouse=True)
def _reset_runs():
    RUNS.clear()
    WORLD.clear()
    WORLD.update({"weather": "sunny", "model": "v1"})


WORLD: dict[str, str] = {}


class Flaky(Exception):
    """Not a builtin: replays as a ReplayedError subclass."""


@at.record_tool
async def lookup(city: str) -> dict:
    ran("lookup")
    await asyncio.sleep(0)
    # Keys in sorted order: a replayed mapping comes back with sorted keys (the
    # store keeps payloads canonical), and this agent puts repr(result) in a prompt.
    return {"city": city, "temp": 21.5, "weather": WORLD["weather"]}


@at.record_tool
async def fetch(url: str) -> str:
    ran("fetch")
    if "down" in url:
        raise TimeoutError(f"no answer from {url}")
    if "flaky" in url:
        raise Flaky("try again later")
    return f"page {url}"


@at.record_llm(model="fake")
async def complete(prompt: str) -> dict:
    ran("complete")
    text = f"[{WORLD['model']}] answer to {prompt}"
    return {"choices": [{"message": {"content": text}}], "usage": {"input_tokens": 3}}


@at.record_llm(model="fake")
async def stream(prompt: str):
    ran("stream")
    for word in f"{WORLD['model']} says hello to {prompt}".split(" "):
        yield word + "|"


@at.record_decision
async def plan(question: str) -> dict:
    ran("plan")
    reply = await complete(f"plan: {question}")
    content = reply["choices"][0]["message"]["content"]
    return {"tool": "lookup", "reasoning": content}


async def agent(question: str, cities: tuple[str, ...] = ("paris",)) -> str:
    at.emit("user_message_received", {"message": question})
    await plan(question)
    reports = [await lookup(city) for city in cities]
    reply = await complete(f"{question} {reports}")
    answer = reply["choices"][0]["message"]["content"]
    at.emit("response_generated", {"response": answer})
    return answer


async def record(session_id: str, coro_fn, *args) -> None:
    async with at.session(session_id, user_id="u1"):
        await coro_fn(*args)
    await at.flush()


# --- stepping ----------------------------------------------------------------------


async def test_iter_steps_nests_by_span(memory_store):
    await record("s-steps", agent, "weather?")
    steps = [s async for s in iter_steps("s-steps")]
    assert [s.event_type for s in steps][:4] == [
        "session_started",
        "user_message_received",
        "llm_started",
        "llm_responded",
    ]
    by_type = {}
    for s in steps:
        by_type.setdefault((s.event_type, s.name), s)  # the first of each
    # The planning LLM call runs inside the decision, which is recorded when it returns.
    assert by_type[("llm_started", "complete")].depth == 1
    assert by_type[("decision_made", "plan")].depth == 0
    assert by_type[("tool_started", "lookup")].depth == 0
    assert by_type[("tool_started", "lookup")].kind == "tool"
    assert steps[0].depth == 0 and steps[0].kind is None
    assert [s.index for s in steps] == list(range(len(steps)))
    assert [s.version for s in steps] == list(range(1, len(steps) + 1))


def test_iter_steps_blocking_and_custom_events_inside_a_call(memory_store):
    @at.record_tool
    def outer() -> int:
        at.emit("note", {"message": "inside"})
        return inner()

    @at.record_tool
    def inner() -> int:
        return 1

    with at.session("s-sync-steps"):
        outer()
    steps = list(iter_steps("s-sync-steps"))
    depth = {(s.event_type, s.name or s.event.payload.get("message")): s.depth for s in steps}
    assert depth[("tool_started", "outer")] == 0
    assert depth[("note", "inside")] == 1
    assert depth[("tool_started", "inner")] == 1
    assert depth[("session_ended", None)] == 0


async def test_iter_steps_blocking_form_works_under_a_running_loop(memory_store):
    await record("s-loop", agent, "q")
    steps = list(iter_steps("s-loop"))  # e.g. a notebook cell
    assert steps[0].event_type == "session_started"


async def test_replay_session_prints_seed_format_indented(memory_store):
    @at.record_tool
    async def big() -> str:
        return "x" * 500

    async with at.session("s-print"):
        await agent("weather?")
        await big()
        with pytest.raises(TimeoutError):
            await fetch("http://down.example")
    await at.flush()
    out = io.StringIO()
    events = await at.get_events("s-print")
    n = replay_session(events, file=out)
    text = out.getvalue()
    assert n == len(events)
    lines = text.splitlines()
    assert lines[0].startswith(f"[{events[0].timestamp}] session_started")
    assert any(line.startswith("  [") and line.endswith("] llm_started") for line in lines)
    assert "    reasoning: [v1] answer to plan: weather?" in text
    assert "    tool: lookup" in text
    assert "result: " + "x" * 200 + "… (500 chars)" in text
    assert "error: TimeoutError: no answer from http://down.example" in text
    assert "message: weather?" in text


async def test_replay_session_reads_another_store(tmp_path, memory_store):
    await record("s-other", agent, "q")
    url = f"sqlite:///{tmp_path}/other.db"
    other = at.open_store(url)
    await other.append(await at.get_events("s-other"))
    await other.close()
    out = io.StringIO()
    assert replay_session("s-other", store=url, file=out) > 5
    assert "session_started" in out.getvalue()


# --- deterministic re-execution ----------------------------------------------------------


async def test_mocked_tools_return_recorded_results_in_a_new_session(memory_store):
    await record("s-tools", agent, "weather?")
    WORLD["weather"] = "rain"  # the world changed since the recording
    RUNS.clear()
    async with replay("s-tools", mock=("tool",)) as r:
        answer = await agent("weather?")
    assert RUNS.get("lookup") is None  # the tool body never ran
    assert RUNS["complete"] == 2  # the LLM is live
    assert "sunny" in answer  # the recorded tool result reached the live LLM
    assert r.served == 1 and r.divergences == [] and r.unused() == []
    assert r.id != "s-tools"
    events = await at.get_events(r.id)
    assert events[0].payload["metadata"] == {"replay_of": "s-tools"}
    original = await at.get_events("s-tools")
    # The replay is a full recording of its own, with the same story.
    assert [e.event_type for e in events] == [e.event_type for e in original]
    assert len(await at.get_events("s-tools")) == len(original)  # never modified


async def test_mock_tool_and_llm_is_fully_deterministic(memory_store):
    await record("s-full", agent, "weather?")
    original = await at.get_events("s-full")
    WORLD.update(weather="snow", model="v2")
    RUNS.clear()
    async with replay("s-full", mock=("tool", "llm")) as r:
        answer = await agent("weather?")
    assert RUNS == {"plan": 1}  # the decision runs (it is not mocked); nothing below it does
    assert answer.startswith("[v1]")
    assert not await diff_sessions("s-full", r.id)
    replayed = await at.get_events(r.id)
    responses = [e.payload["response"] for e in replayed if e.event_type == "llm_responded"]
    assert responses == [e.payload["response"] for e in original if e.event_type == "llm_responded"]
    usage = [e.payload["usage"] for e in replayed if e.event_type == "llm_responded"]
    assert usage[0] == {"input_tokens": 3}


async def test_replayed_mappings_allow_attribute_access(memory_store):
    @at.record_llm
    async def chat(prompt: str) -> dict:
        return {"choices": [{"message": {"content": "hi", "items": 1}}]}

    async with at.session("s-attr"):
        await chat("x")
    async with replay("s-attr", mock="llm"):
        reply = await chat("x")
    assert isinstance(reply, RecordedDict) and isinstance(reply, dict)
    assert reply.choices[0].message.content == "hi"
    assert reply["choices"][0]["message"]["items"] == 1
    with pytest.raises(AttributeError):
        reply.missing  # noqa: B018


async def test_decode_rebuilds_objects(memory_store):
    async with at.session("s-decode"):
        await lookup("rome")
    seen = []

    def decode(call, value):
        seen.append((call.kind, call.name))
        return tuple(sorted(value))

    async with replay("s-decode", mock=("tool",), decode=decode):
        assert await lookup("rome") == ("city", "temp", "weather")
    assert seen == [("tool", "lookup")]


async def test_concurrent_calls_match_by_name_and_args(memory_store):
    async def fan_out(cities):
        return await asyncio.gather(*(lookup(c) for c in cities))

    async with at.session("s-gather"):
        recorded = await fan_out(["a", "b", "c"])
    RUNS.clear()
    async with replay("s-gather", mock=("tool",)) as r:
        replayed = await fan_out(["c", "a", "b"])  # another order
    assert RUNS == {}
    assert [x["city"] for x in replayed] == ["c", "a", "b"]
    assert sorted(replayed, key=lambda x: x["city"]) == recorded
    assert r.served == 3


async def test_sequential_calls_keep_their_order(memory_store):
    async def in_order(cities):
        return [await lookup(c) for c in cities]

    async with at.session("s-seq"):
        await in_order(["a", "b"])
    with pytest.raises(ReplayDivergence) as info:
        async with replay("s-seq", mock=("tool",)):
            await in_order(["b", "a"])
    assert info.value.expected == {"city": "a"} and info.value.actual == {"city": "b"}


async def test_recorded_failures_reraise_the_recorded_type(memory_store):
    async with at.session("s-fail"):
        with pytest.raises(TimeoutError):
            await fetch("http://down.example")
        with pytest.raises(Flaky):
            await fetch("http://flaky.example")
        assert await fetch("http://ok.example") == "page http://ok.example"
    RUNS.clear()
    async with replay("s-fail", mock=("tool",)) as r:
        with pytest.raises(TimeoutError, match=r"no answer from http://down\.example"):
            await fetch("http://down.example")
        with pytest.raises(ReplayedError) as info:
            await fetch("http://flaky.example")
        assert await fetch("http://ok.example") == "page http://ok.example"
    assert RUNS == {}
    err = info.value
    assert type(err).__name__ == "Flaky" and err.error_type == "Flaky"
    assert err.message == "try again later" and str(err) == "try again later"
    failed = [e.payload for e in await at.get_events(r.id) if e.event_type == "tool_failed"]
    assert [(p["error_type"], p["error"]) for p in failed] == [
        ("TimeoutError", "no answer from http://down.example"),
        ("Flaky", "try again later"),
    ]


async def test_streamed_llm_replays_the_same_chunks(memory_store):
    async with at.session("s-stream"):
        recorded = [c async for c in stream("bob")]
    WORLD["model"] = "v2"
    RUNS.clear()
    async with replay("s-stream", mock=("llm",)) as r:
        replayed = [c async for c in stream("bob")]
    assert RUNS == {}
    assert replayed == recorded == ["v1|", "says|", "hello|", "to|", "bob|"]
    done = [e.payload for e in await at.get_events(r.id) if e.event_type == "llm_responded"]
    assert done[0]["response"] == "".join(recorded) and done[0]["chunks"] == 5
    assert done[0]["chunk_lengths"] == [len(c) for c in recorded]


def test_sync_generator_and_sync_replay(memory_store):
    @at.record_tool
    def numbers(n: int):
        ran("numbers")
        yield from range(n)

    @at.record_tool
    def add(a: int, b: int) -> int:
        ran("add")
        return a + b

    with at.session("s-sync-replay"):
        assert list(numbers(3)) == [0, 1, 2]
        assert add(1, 2) == 3
    RUNS.clear()
    with replay("s-sync-replay", mock="tool") as r:
        assert list(numbers(3)) == [0, 1, 2]
        assert add(1, 2) == 3
    assert RUNS == {} and r.served == 2


def test_chunks_of_recordings_without_boundaries():
    from agent_trace.replay import _split_chunks

    assert _split_chunks({"chunks": 3}, "Hello big world") == ["Hello", " big", " world"]
    uneven = _split_chunks({"chunks": 4}, "abcdefghij")
    assert "".join(uneven) == "abcdefghij" and len(uneven) == 4
    assert _split_chunks({"chunks": 2, "chunk_lengths": [1, 2]}, "abc") == ["a", "bc"]
    assert _split_chunks({"chunks": 2}, [{"d": 1}, {"d": 2}]) == [{"d": 1}, {"d": 2}]


async def test_mocked_decision_skips_the_calls_inside_it(memory_store):
    await record("s-decision", agent, "weather?")
    RUNS.clear()
    async with replay("s-decision", mock=("decision", "tool", "llm")) as r:
        await agent("weather?")
    assert RUNS == {}
    assert r.unused() == [] and r.served == 3  # plan, lookup, the final complete


# --- divergence --------------------------------------------------------------------------


async def test_args_divergence_raises_naming_step_expected_actual(memory_store):
    await record("s-args", agent, "weather?", ("paris",))
    RUNS.clear()
    with pytest.raises(ReplayDivergence) as info:
        async with replay("s-args", mock=("tool", "llm")):
            await agent("weather?", ("rome",))
    err = info.value
    assert RUNS.get("lookup") is None  # raised before the tool ran
    assert err.expected == {"city": "paris"} and err.actual == {"city": "rome"}
    assert err.step == 6  # version of the recorded tool_started
    assert err.divergence.reason == "args_differ"
    assert "step 6" in str(err) and "args.city" in str(err) and "'lookup'" in str(err)


async def test_extra_call_raises(memory_store):
    await record("s-extra", agent, "weather?", ("paris",))
    with pytest.raises(ReplayDivergence) as info:
        async with replay("s-extra", mock=("tool", "llm")):
            await agent("weather?", ("paris", "rome"))
    assert info.value.divergence.reason == "unexpected_call"
    assert info.value.actual == {"city": "rome"} and info.value.step is None


async def test_missing_call_raises_on_exit(memory_store):
    async def two_lookups():
        await lookup("paris")
        await lookup("rome")

    await record("s-missing", two_lookups)
    with pytest.raises(ReplayDivergence) as info:
        async with replay("s-missing", mock=("tool", "llm")) as r:
            await lookup("paris")  # and then stops
    d = info.value.divergence
    assert d.reason == "not_called" and d.name == "lookup"
    assert d.expected == {"city": "rome"} and d.actual is None
    assert "never made" in str(info.value)
    ended = (await at.get_events(r.id))[-1]
    assert ended.payload["status"] == "error"
    assert ended.payload["error_type"] == "ReplayDivergence"


async def test_divergence_swallowed_by_the_agent_still_fails(memory_store):
    await record("s-swallow", lookup, "paris")

    async def careless():
        with contextlib.suppress(Exception):
            await lookup("rome")
        await lookup("paris")

    with pytest.raises(ReplayDivergence, match="args differ"):
        async with replay("s-swallow", mock=("tool",)):
            await careless()


async def test_not_strict_runs_live_and_records_the_divergence(memory_store):
    await record("s-lenient", agent, "weather?", ("paris",))
    RUNS.clear()
    async with replay("s-lenient", mock=("tool", "llm"), strict=False) as r:
        await agent("weather?", ("rome",))
    assert RUNS["lookup"] == 1  # rome ran live
    reasons = [d.reason for d in r.divergences]
    assert reasons[0] == "args_differ"
    events = await at.get_events(r.id)
    diverged = [e.payload for e in events if e.event_type == "replay_diverged"]
    assert diverged[0]["kind"] == "tool" and diverged[0]["name"] == "lookup"
    assert diverged[0]["expected"] == {"city": "paris"}
    assert diverged[0]["actual"] == {"city": "rome"}
    assert len(diverged) == len(r.divergences)
    assert events[-1].payload["status"] == "ok"


async def test_redacted_args_match_anything(memory_store):
    @at.record_tool(redact=("token",))
    async def call_api(path: str, token: str) -> str:
        ran("call_api")
        return "ok"

    async with at.session("s-redact"):
        await call_api("/x", "s3cret")
    RUNS.clear()
    async with replay("s-redact", mock="tool"):
        assert await call_api("/x", "other-token") == "ok"
    assert RUNS == {}


async def test_bad_arguments(memory_store):
    with pytest.raises(ValueError, match="kinds"):
        replay("x", mock=("tools",))
    with pytest.raises(ValueError, match="no recorded session 'nope'"):
        async with replay("nope"):
            pass


# --- forking --------------------------------------------------------------------------


async def test_until_version_serves_the_prefix_and_runs_live_after(memory_store):
    await record("s-fork", agent, "weather?", ("paris", "rome"))
    original = await at.get_events("s-fork")
    first_lookup_done = next(
        e.version
        for e in original
        if e.event_type == "tool_executed" and e.payload["tool"] == "lookup"
    )
    WORLD.update(weather="fog", model="v2")
    RUNS.clear()
    async with replay("s-fork", mock=("tool", "llm"), until_version=first_lookup_done) as r:
        answer = await agent("weather?", ("paris", "rome", "oslo"))
    assert RUNS == {"plan": 1, "lookup": 2, "complete": 1}  # rome, oslo and the answer: live
    assert answer.startswith("[v2]")
    assert (await at.get_events(r.id))[0].payload["metadata"] == {
        "replay_of": "s-fork",
        "until_version": first_lookup_done,
    }
    assert await at.get_events("s-fork") == original  # the original is never modified


# --- comparing runs -------------------------------------------------------------------


async def test_diff_sessions_reports_the_first_divergent_decision(memory_store):
    await record("d-a", agent, "weather?")
    await record("d-b", agent, "weather?")
    same = await diff_sessions("d-a", "d-b")
    assert not same and same.index is None
    assert "agree on all" in same.render()
    WORLD["model"] = "v2"
    await record("d-c", agent, "weather?")
    report = await diff_sessions("d-a", "d-c")
    assert report
    assert report.index == 0  # the planning LLM output is the first point
    assert report.expected.kind == "llm" and report.expected.field == "response"
    assert "[v1]" in str(report.expected.value) and "[v2]" in str(report.actual.value)
    assert "diverge at decision point 1" in report.render()
    assert diff_sessions_sync("d-a", "d-c").index == 0


async def test_diff_sessions_tool_args_and_missing_points(memory_store):
    await record("t-a", agent, "q", ("paris",))
    await record("t-b", agent, "q", ("rome",))
    await record("t-c", agent, "q", ("paris", "rome"))
    args = await diff_sessions("t-a", "t-b")
    assert args.expected.kind == "tool" and args.expected.value == {"city": "paris"}
    assert args.actual.value == {"city": "rome"}
    assert args.reason == "different args"
    extra = await diff_sessions("t-a", "t-c")
    assert extra.actual.kind == "tool" and extra.expected.kind == "llm"
    assert extra.reason == "a different call"
    events = await at.get_events("t-a")
    cut = await diff_sessions("t-a", events[:-2])  # b stops before the final response
    assert cut.actual is None and cut.expected.kind == "response"
    assert "stops before" in cut.render()


# --- many sessions --------------------------------------------------------------------


async def test_replay_many_collects_every_result(memory_store):
    for i, cities in enumerate([("paris",), ("rome",), ("oslo",)]):
        await record(f"m-{i}", agent, f"weather {i}?", cities)

    def run(recording):
        cities = ("paris",) if recording.session_id == "m-1" else None  # m-1 regressed
        if cities is None:
            cities = tuple(
                e.payload["args"]["city"]
                for e in recording.events
                if e.event_type == "tool_started"
            )
        return agent(recording.user_message, cities)

    batch = await replay_many(["m-0", "m-1", "m-2"], run)
    assert [r.ok for r in batch] == [True, False, True]
    assert isinstance(batch.failures[0].error, ReplayDivergence)
    assert not batch.ok and len(batch) == 3
    assert "FAIL  m-1" in batch.render() and "2/3 sessions ok" in batch.render()
    assert batch.results[0].output.startswith("[v1]") and batch.results[0].diff is not None

    fast = await replay_many(["m-1", "m-0"], run, fail_fast=True)
    assert len(fast) == 1 and not fast.ok

    parallel = await replay_many(["m-0", "m-1", "m-2", "nope"], run, concurrency=3)
    assert [r.session_id for r in parallel] == ["m-0", "m-1", "m-2", "nope"]
    assert [r.ok for r in parallel] == [True, False, True, False]
    assert isinstance(parallel.results[3].error, ValueError)  # no such session
    assert parallel.results[3].replay_id is None


async def test_replay_many_flags_a_changed_decision(memory_store):
    await record("m-llm", agent, "weather?")
    WORLD["model"] = "v2"  # live LLM, mocked tools: a new model answers differently
    batch = await replay_many(
        ["m-llm"], lambda rec: agent(rec.user_message), mock=("tool",), compare=True
    )
    result = batch.results[0]
    assert not result.ok and result.error is None and result.diff
    assert "decision point 1" in result.render()


# --- another process --------------------------------------------------------------------


RECORDER_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    sys.path.insert(0, {tests!r})
    import agent_trace as at
    import test_replay as t

    async def main():
        at.configure(store={url!r})
        async with at.session("from-elsewhere"):
            await t.agent("weather?", ("paris", "rome"))
        await at.flush()

    t.WORLD.update(weather="hail", model="v9")
    asyncio.run(main())
    """
)


async def test_replay_a_session_recorded_by_another_process(tmp_path, memory_store):
    url = f"sqlite:///{tmp_path}/elsewhere.db"
    env = dict(os.environ)
    env.pop("AGENT_TRACE_STORE", None)
    script = RECORDER_SCRIPT.format(tests=str(REPO / "tests"), url=url)
    proc = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    RUNS.clear()
    async with replay("from-elsewhere", mock=("tool", "llm"), store=url) as r:
        answer = await agent("weather?", ("paris", "rome"))
    assert answer.startswith("[v9]") and "hail" in answer
    assert RUNS == {"plan": 1}
    assert not await diff_sessions(r.recording.events, r.id)


async def test_json_text_built_from_a_replayed_result_still_matches(memory_store):
    # The store keeps payload keys sorted, so a replayed mapping has sorted keys
    # (a documented limit). Strings holding JSON compare by value, so an agent
    # that json.dumps a tool result into its prompt still replays.
    import json

    @at.record_tool
    async def profile(user: str) -> dict:
        return {"name": user, "age": 30}

    async def run():
        result = await profile("ann")
        return await complete(json.dumps(result)), list(result)

    async with at.session("s-json"):
        _, keys = await run()
    assert keys == ["name", "age"]
    async with replay("s-json", mock=("tool", "llm")) as r:
        _, keys = await run()
    assert keys == ["age", "name"]
    assert r.divergences == [] and r.served == 2


async def test_a_recording_cut_inside_a_call_runs_live_from_there(memory_store):
    from agent_trace.stores import MemoryStore

    async def two_lookups():
        await lookup("paris")
        await lookup("rome")

    await record("s-cut", two_lookups)
    events = await at.get_events("s-cut")
    # As if the process died while the second lookup ran.
    cut = next(i for i, e in enumerate(events) if e.payload.get("args") == {"city": "rome"})
    crashed = MemoryStore()
    await crashed.append(events[: cut + 1])
    RUNS.clear()
    async with replay("s-cut", mock="tool", store=crashed) as r:
        await two_lookups()
    assert RUNS == {"lookup": 1} and r.served == 1 and r.divergences == []


def test_replay_in_threads_carrying_the_context(memory_store):
    @at.record_tool
    def square(x: int) -> int:
        ran("square")
        return x * x

    with at.session("s-threads"), at.ContextExecutor(4) as pool:
        assert list(pool.map(square, range(8))) == [x * x for x in range(8)]
    RUNS.clear()
    with replay("s-threads", mock="tool") as r, at.ContextExecutor(4) as pool:
        assert [pool.submit(square, x).result() for x in range(8)] == [x * x for x in range(8)]
    assert RUNS == {} and r.served == 8


async def test_recording_properties(memory_store):
    await record("s-props", agent, "weather?")
    async with replay("s-props") as r:
        await agent("weather?")
    rec = r.recording
    assert rec.metadata == {"user_id": "u1"}
    assert rec.user_message == "weather?"
    assert rec.final_response.startswith("[v1] answer to weather?")
    assert [(c.kind, c.name) for c in rec.calls] == [
        ("decision", "plan"),
        ("llm", "complete"),
        ("tool", "lookup"),
        ("llm", "complete"),
    ]
    assert all(c.finished and not c.failed for c in rec.calls)


def test_recorded_exception_types():
    from agent_trace.replay import recorded_exception

    assert type(recorded_exception("KeyError", "'k'")) is KeyError
    assert isinstance(recorded_exception("CancelledError", ""), asyncio.CancelledError)
    odd = recorded_exception("UnicodeDecodeError", "bad byte")  # needs 5 args: not rebuilt
    assert isinstance(odd, ReplayedError) and type(odd).__name__ == "UnicodeDecodeError"
    stop = recorded_exception("KeyboardInterrupt", "")  # never re-raised for real
    assert isinstance(stop, ReplayedError)
    assert type(recorded_exception("Boom", "x")) is type(recorded_exception("Boom", "y"))


async def test_replay_from_exported_events(memory_store):
    await record("s-export", lookup, "oslo")
    exported = [at.AgentEvent.from_dict(e.to_dict()) for e in await at.get_events("s-export")]
    RUNS.clear()
    async with replay(exported, mock="tool") as r:
        assert (await lookup("oslo"))["city"] == "oslo"
    assert RUNS == {} and r.replay_of == "s-export"
    with pytest.raises(ValueError, match="non-empty"):
        replay([])
