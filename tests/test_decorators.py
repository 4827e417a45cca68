"""The three decorators on every function kind: events, spans, transparency."""

from __future__ import annotations

import asyncio
import inspect
import os
import traceback

import pytest

import agent_trace as at
from agent_trace.events import new_span_id


async def events_of(session_id: str) -> list[at.AgentEvent]:
    await at.flush()
    return await at.get_events(session_id)


def types_of(events: list[at.AgentEvent]) -> list[str]:
    return [e.event_type for e in events]


# --- every function kind ---------------------------------------------------------


@at.record_tool
async def async_tool(query: str, limit: int = 3) -> list[str]:
    """Search something."""
    return [query] * limit


@at.record_tool(name="sync_search")
def sync_tool(query: str) -> str:
    return query.upper()


@at.record_tool
def gen_tool(n: int):
    yield from range(n)
    return "done"


@at.record_llm(model="gpt-4o")
async def stream_llm(prompt: str):
    for word in ["Hello", " ", "world"]:
        yield word


class Agent:
    @at.record_decision
    async def choose(self, message: str) -> dict:
        return {"tool": "search", "reasoning": f"user asked {message!r}"}

    @at.record_tool
    def method_tool(self, x: int) -> int:
        return x * 2

    @classmethod
    @at.record_tool
    def class_tool(cls, x: int) -> str:
        return f"{cls.__name__}:{x}"

    @staticmethod
    @at.record_tool
    def static_tool(x: int) -> int:
        return x + 1

    @at.record_tool
    @classmethod
    def outer_class_tool(cls, x: int) -> str:
        return f"outer:{cls.__name__}:{x}"

    @at.record_tool
    @staticmethod
    def outer_static_tool(x: int) -> int:
        return x - 1


async def test_async_tool_events_and_payloads(memory_store):
    async with at.session("s-async", user_id="u1") as s:
        assert s.id == "s-async"
        result = await async_tool("q", limit=2)
    assert result == ["q", "q"]
    events = await events_of("s-async")
    assert types_of(events) == ["session_started", "tool_started", "tool_executed", "session_ended"]
    started, executed = events[1], events[2]
    assert events[0].payload["metadata"] == {"user_id": "u1"}
    assert started.payload == {"tool": "async_tool", "args": {"query": "q", "limit": 2}}
    assert executed.payload["result"] == ["q", "q"]
    assert executed.payload["tool"] == "async_tool"
    assert executed.payload["duration_ms"] >= 0
    assert started.span_id == executed.span_id and started.span_id is not None
    assert started.parent_span_id is None
    assert events[-1].payload["status"] == "ok"
    assert [e.version for e in events] == [1, 2, 3, 4]


@at.record_tool
async def plain_tool(a: int, b: str = "x") -> int:
    return a


@at.record_tool
async def nested_tool(items: list, *, flag: bool = False) -> dict:
    return {"n": len(items), "inner": await plain_tool(len(items))}


@at.record_tool(capture_args=False, capture_result=False)
async def quiet_tool(secret: str) -> str:
    return secret


@at.record_tool
async def broken_tool(x: int) -> int:
    raise ValueError(f"bad {x}")


async def _record_each_shape(session_id: str) -> None:
    async with at.session(session_id):
        await plain_tool(1)
        await plain_tool(2, b="y")
        await nested_tool([1, {"k": None}], flag=True)
        await quiet_tool("hunter2")
        with pytest.raises(ValueError):
            await broken_tool(3)


def _shape(events: list[at.AgentEvent]) -> list[tuple]:
    """Events without ids, times and durations; spans as indexes of first use."""
    spans: dict[str | None, int | None] = {None: None}
    out = []
    for e in events:
        for span in (e.span_id, e.parent_span_id):
            spans.setdefault(span, len(spans))
        payload = {k: v for k, v in e.payload.items() if k != "duration_ms"}
        out.append((e.event_type, payload, spans[e.span_id], spans[e.parent_span_id]))
    return out


async def test_the_fast_async_path_records_what_the_general_path_does(memory_store):
    # "batched" takes the fast path for async tools; "immediate" the general one.
    await _record_each_shape("s-fast")
    at.configure(durability="immediate")
    try:
        await _record_each_shape("s-general")
    finally:
        at.configure(durability="batched")
    fast, general = await events_of("s-fast"), await events_of("s-general")
    assert _shape(fast) == _shape(general)
    assert len(fast) == 2 + 2 * 6
    assert fast[1].payload == {"tool": "plain_tool", "args": {"a": 1, "b": "x"}}
    assert fast[9].payload == {"tool": "quiet_tool", "args": None}
    assert fast[10].payload["result"] is None
    assert fast[-2].payload["error"] == "bad 3"


async def test_defaults_are_bound_into_args(memory_store):
    async with at.session("s-defaults"):
        await async_tool("q")
    events = await events_of("s-defaults")
    assert events[1].payload["args"] == {"query": "q", "limit": 3}


def test_sync_tool_in_plain_sync_code(memory_store):
    with at.session("s-sync"):
        assert sync_tool("abc") == "ABC"
    events = at.get_events_sync("s-sync")
    assert types_of(events)[1:3] == ["tool_started", "tool_executed"]
    assert events[1].payload == {"tool": "sync_search", "args": {"query": "abc"}}
    assert events[2].payload["result"] == "ABC"


async def test_methods_of_every_kind(memory_store):
    agent = Agent()
    async with at.session("s-methods"):
        choice = await agent.choose("find x")
        assert agent.method_tool(21) == 42
        assert Agent.class_tool(1) == "Agent:1"
        assert agent.class_tool(2) == "Agent:2"
        assert Agent.static_tool(1) == 2
        assert agent.static_tool(2) == 3
        assert Agent.outer_class_tool(3) == "outer:Agent:3"
        assert Agent.outer_static_tool(3) == 2
    events = await events_of("s-methods")
    decision = events[1]
    assert decision.event_type == "decision_made"
    assert decision.payload["decision"] == "choose"
    assert decision.payload["args"] == {"message": "find x"}
    assert decision.payload["choice"] == choice
    assert decision.payload["reasoning"] == "user asked 'find x'"
    started = [e.payload for e in events if e.event_type == "tool_started"]
    assert started == [
        {"tool": "method_tool", "args": {"x": 21}},
        {"tool": "class_tool", "args": {"x": 1}},
        {"tool": "class_tool", "args": {"x": 2}},
        {"tool": "static_tool", "args": {"x": 1}},
        {"tool": "static_tool", "args": {"x": 2}},
        {"tool": "outer_class_tool", "args": {"x": 3}},
        {"tool": "outer_static_tool", "args": {"x": 3}},
    ]


def test_sync_generator_records_items_and_return(memory_store):
    with at.session("s-gen"):
        gen = gen_tool(3)
        assert list(gen) == [0, 1, 2]
    events = at.get_events_sync("s-gen")
    assert types_of(events)[1:3] == ["tool_started", "tool_executed"]
    done = events[2].payload
    assert done["result"] == [0, 1, 2]
    assert done["chunks"] == 3 and done["status"] == "complete"


def test_sync_generator_stopped_early(memory_store):
    with at.session("s-gen-early"):
        gen = gen_tool(10)
        assert next(gen) == 0
        gen.close()
    done = at.get_events_sync("s-gen-early")[2]
    assert done.event_type == "tool_executed"
    assert done.payload["status"] == "incomplete"
    assert done.payload["result"] == [0]


def test_sync_generator_send_and_throw_pass_through(memory_store):
    @at.record_tool
    def echo():
        received = []
        while True:
            try:
                x = yield len(received)
            except KeyError:
                received.append("caught")
                continue
            if x is None:
                return received
            received.append(x)

    with at.session("s-gen-send"):
        g = echo()
        assert next(g) == 0
        assert g.send("a") == 1
        assert g.throw(KeyError("k")) == 2
        with pytest.raises(StopIteration) as stop:
            g.send(None)
        assert stop.value.value == ["a", "caught"]


async def test_streaming_llm_response(memory_store):
    async with at.session("s-stream"):
        chunks = [c async for c in stream_llm("hi")]
    assert chunks == ["Hello", " ", "world"]
    events = await events_of("s-stream")
    assert types_of(events)[1:3] == ["llm_started", "llm_responded"]
    assert events[1].payload == {"name": "stream_llm", "model": "gpt-4o", "args": {"prompt": "hi"}}
    done = events[2].payload
    assert done["response"] == "Hello world"
    assert done["chunks"] == 3
    assert done["time_to_first_chunk_ms"] >= 0
    assert done["status"] == "complete"


async def test_streaming_llm_consumer_stops_early(memory_store):
    async with at.session("s-stream-early"):
        agen = stream_llm("hi")
        assert await agen.__anext__() == "Hello"
        await agen.aclose()
    done = (await events_of("s-stream-early"))[2]
    assert done.event_type == "llm_responded"
    assert done.payload["status"] == "incomplete"
    assert done.payload["response"] == "Hello"
    assert done.payload["chunks"] == 1


async def test_streaming_llm_cancelled_mid_stream(memory_store):
    gate = asyncio.Event()

    @at.record_llm
    async def slow_stream():
        yield "first"
        await gate.wait()
        yield "never"

    async def consume(out: list[str]) -> None:
        async for chunk in slow_stream():
            out.append(chunk)

    got: list[str] = []
    async with at.session("s-stream-cancel"):
        task = asyncio.create_task(consume(got))
        while not got:
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    events = await events_of("s-stream-cancel")
    assert types_of(events)[1:3] == ["llm_started", "llm_failed"]
    assert events[2].payload["error_type"] == "CancelledError"


# --- transparency --------------------------------------------------------------


def test_introspection_is_preserved():
    assert async_tool.__name__ == "async_tool"
    assert async_tool.__doc__ == "Search something."
    assert inspect.iscoroutinefunction(async_tool)
    assert inspect.isasyncgenfunction(stream_llm)
    assert inspect.isgeneratorfunction(gen_tool)
    assert not inspect.iscoroutinefunction(sync_tool)
    assert inspect.signature(async_tool) == inspect.signature(async_tool.__wrapped__)
    assert list(inspect.signature(async_tool).parameters) == ["query", "limit"]
    assert async_tool.__wrapped__.__name__ == "async_tool"


def test_plain_functions_take_any_argument_name_and_still_bind_as_methods(memory_store):
    @at.record_tool
    def takes_self(self: int, /, other: int = 0, **kw: int) -> tuple:
        return (self, other, kw)

    @at.record_tool
    def named_self(self: int) -> int:
        return self

    class Holder:
        method = at.record_tool(lambda self, x: (type(self).__name__, x))

    with at.session("s-plain"):
        assert takes_self(1, other=2, self=3) == (1, 2, {"self": 3})
        assert named_self(self=5) == 5
        assert Holder().method(7) == ("Holder", 7)
        assert Holder.method(Holder(), 8) == ("Holder", 8)
    events = at.get_events_sync("s-plain")
    called = [e.payload for e in events if e.event_type == "tool_started"]
    assert called[1]["args"] == {"self": 5}
    assert called[2]["args"] == {"x": 7} and called[3]["args"] == {"x": 8}


async def test_same_return_object_and_same_exception(memory_store):
    sentinel = object()

    @at.record_tool
    async def give():
        return sentinel

    err = ValueError("bad input")

    @at.record_tool
    async def boom():
        raise err

    async with at.session("s-same"):
        assert await give() is sentinel
        with pytest.raises(ValueError) as info:
            await boom()
    assert info.value is err
    frames = [f.name for f in traceback.extract_tb(info.value.__traceback__)]
    assert "boom" in frames  # the original raising frame is still in the traceback
    events = await events_of("s-same")
    failed = next(e for e in events if e.event_type == "tool_failed")
    assert failed.payload["tool"] == "boom"
    assert failed.payload["error_type"] == "ValueError"
    assert failed.payload["error"] == "bad input"
    assert failed.payload["duration_ms"] >= 0


async def test_cancellation_propagates_and_is_recorded(memory_store):
    started = asyncio.Event()

    @at.record_tool
    async def hang():
        started.set()
        await asyncio.sleep(3600)

    async def request():
        async with at.session("s-cancel"):
            await hang()

    task = asyncio.create_task(request())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    events = await events_of("s-cancel")
    assert types_of(events) == ["session_started", "tool_started", "tool_failed", "session_ended"]
    assert events[2].payload["error_type"] == "CancelledError"
    assert events[3].payload["status"] == "cancelled"


async def test_session_error_status(memory_store):
    with pytest.raises(KeyError):
        async with at.session("s-err"):
            raise KeyError("missing")
    ended = (await events_of("s-err"))[-1]
    assert ended.payload["status"] == "error"
    assert "missing" in ended.payload["error"]
    assert ended.payload["duration_ms"] >= 0


async def test_outside_a_session_nothing_is_recorded(memory_store):
    assert await async_tool("x", 1) == ["x"]
    assert sync_tool("y") == "Y"
    assert list(gen_tool(2)) == [0, 1]
    await at.flush()
    assert await memory_store.read_all() == []


async def test_auto_session_opens_one_session_per_outermost_call(memory_store):
    @at.record_tool
    async def inner():
        return 1

    @at.record_tool
    async def outer():
        return await inner() + await inner()

    at.configure(auto_session=True)
    try:
        await outer()
        await outer()
    finally:
        at.configure(auto_session=False)
    await at.flush()
    sessions = await memory_store.list_sessions()
    assert len(sessions) == 2
    for info in sessions:
        events = await memory_store.get_events(info.session_id)
        assert types_of(events) == ["session_started"] + ["tool_started"] * 1 + [
            "tool_started",
            "tool_executed",
            "tool_started",
            "tool_executed",
            "tool_executed",
            "session_ended",
        ]


# --- spans -----------------------------------------------------------------------


async def test_spans_nest(memory_store):
    @at.record_tool
    async def leaf(i):
        at.emit("leaf_note", {"i": i})
        return i

    @at.record_decision
    async def plan():
        return await leaf(1) + await leaf(2)

    @at.record_llm
    def llm():
        return {"text": "ok"}

    async with at.session("s-spans"):
        await plan()
        llm()
    events = await events_of("s-spans")
    by_type = {}
    for e in events:
        by_type.setdefault(e.event_type, []).append(e)
    decision = by_type["decision_made"][0]
    leaves = by_type["tool_started"]
    assert decision.parent_span_id is None
    assert all(leaf.parent_span_id == decision.span_id for leaf in leaves)
    assert leaves[0].span_id != leaves[1].span_id
    note = by_type["leaf_note"][0]
    assert note.span_id == leaves[0].span_id  # the call it was emitted in
    assert note.parent_span_id == decision.span_id
    assert by_type["llm_started"][0].parent_span_id is None


async def test_concurrent_tasks_keep_their_own_span_and_session(memory_store):
    @at.record_tool
    async def step(tag):
        await asyncio.sleep(0.001)
        return at.current_session().id

    @at.record_decision
    async def run(tag):
        return await asyncio.gather(step(tag), step(tag))

    async def request(i):
        async with at.session(f"s-conc-{i}"):
            return await run(i)

    results = await asyncio.gather(*(request(i) for i in range(10)))
    assert results == [[f"s-conc-{i}"] * 2 for i in range(10)]
    for i in range(10):
        events = await events_of(f"s-conc-{i}")
        decision = next(e for e in events if e.event_type == "decision_made")
        steps = [e for e in events if e.event_type == "tool_started"]
        assert len(steps) == 2
        assert {s.parent_span_id for s in steps} == {decision.span_id}


# --- LLM usage, decisions, options ---------------------------------------------


class _OpenAIUsage:
    prompt_tokens = 11
    completion_tokens = 7
    total_tokens = 18


class _OpenAIResponse:
    usage = _OpenAIUsage()

    def __repr__(self) -> str:
        return "ChatCompletion(...)"


async def test_llm_usage_shapes(memory_store):
    @at.record_llm(model="gpt-4o")
    async def openai_like():
        return _OpenAIResponse()

    @at.record_llm(model="claude")
    async def anthropic_like():
        return {"content": "hi", "usage": {"input_tokens": 5, "output_tokens": 2}}

    @at.record_llm(usage=lambda r: {"input_tokens": r["i"], "total_tokens": r["i"]})
    async def custom(model: str):
        return {"i": 4}

    async with at.session("s-usage"):
        await openai_like()
        await anthropic_like()
        await custom(model="local-llama")
    done = [e.payload for e in await events_of("s-usage") if e.event_type == "llm_responded"]
    assert done[0]["usage"] == {"input_tokens": 11, "output_tokens": 7, "total_tokens": 18}
    assert done[0]["model"] == "gpt-4o"
    assert done[0]["response"] == "ChatCompletion(...)"
    assert done[1]["usage"] == {"input_tokens": 5, "output_tokens": 2, "total_tokens": 7}
    assert done[2]["usage"] == {"input_tokens": 4, "total_tokens": 4}
    assert done[2]["model"] == "local-llama"  # taken from the call's `model` argument


async def test_llm_failure(memory_store):
    @at.record_llm(model="m")
    async def rate_limited(prompt):
        raise RuntimeError("429 Too Many Requests")

    async with at.session("s-llm-fail"):
        with pytest.raises(RuntimeError):
            await rate_limited("p")
    failed = (await events_of("s-llm-fail"))[2]
    assert failed.event_type == "llm_failed"
    assert failed.payload["name"] == "rate_limited" and failed.payload["model"] == "m"
    assert failed.payload["error_type"] == "RuntimeError"


async def test_decision_failure_and_one_fact(memory_store):
    @at.record_decision
    def pick(options):
        if not options:
            raise LookupError("nothing to pick")
        return options[0]

    async with at.session("s-decision"):
        assert pick(["a", "b"]) == "a"
        with pytest.raises(LookupError):
            pick([])
    events = await events_of("s-decision")
    assert types_of(events) == [
        "session_started",
        "decision_made",
        "decision_failed",
        "session_ended",
    ]
    assert events[1].payload["choice"] == "a" and events[1].payload["reasoning"] is None


async def test_capture_options_and_redaction(memory_store):
    @at.record_tool(capture_args=False, capture_result=False)
    async def private(secret_arg):
        return "hidden"

    @at.record_tool(redact=["ssn"])
    async def lookup(user: dict, api_key: str):
        return {"ssn": "123-45-6789", "name": user["name"], "Authorization": "Bearer x"}

    async with at.session("s-redact"):
        await private("s3cret")
        await lookup({"name": "Ada", "password": "pw"}, api_key="sk-123")
    events = await events_of("s-redact")
    assert events[1].payload == {"tool": "private", "args": None}
    assert events[2].payload["result"] is None
    assert events[3].payload["args"] == {
        "user": {"name": "Ada", "password": "[REDACTED]"},
        "api_key": "[REDACTED]",
    }
    assert events[4].payload["result"] == {
        "ssn": "[REDACTED]",
        "name": "Ada",
        "Authorization": "[REDACTED]",
    }


async def test_arguments_are_captured_at_call_time(memory_store):
    @at.record_tool
    async def mutate(items: list):
        items.append("added by the tool")
        return len(items)

    data = ["original"]
    async with at.session("s-mutation"):
        await mutate(data)
    started = (await events_of("s-mutation"))[1]
    assert started.payload["args"] == {"items": ["original"]}


async def test_var_args_are_bound_by_name(memory_store):
    @at.record_tool
    def varargs(a, *rest, flag=False, **extra):
        return a

    with at.session("s-varargs"):
        varargs(1, 2, 3, flag=True, colour="red")
    started = (await events_of("s-varargs"))[1]
    assert started.payload["args"] == {
        "a": 1,
        "rest": [2, 3],
        "flag": True,
        "extra": {"colour": "red"},
    }


async def test_wrong_call_raises_the_functions_own_error(memory_store):
    async with at.session("s-typeerror"):
        with pytest.raises(TypeError):
            await async_tool()  # missing `query`


def test_emit_requires_a_session():
    with pytest.raises(RuntimeError, match="needs a session"):
        at.emit("user_message_received", {"message": "hi"})


def test_emit_validates_type_and_payload(memory_store):
    with at.session("s-emit-bad"):
        with pytest.raises(ValueError, match="invalid event_type"):
            at.emit("", {})
        with pytest.raises(TypeError, match="payload must be a dict"):
            at.emit("note", ["not", "a", "dict"])


def test_session_id_validation():
    with pytest.raises(ValueError, match="invalid session_id"):
        at.session("has spaces and\nnewlines")
    with pytest.raises(TypeError):
        at.session(42)


def test_session_without_id_gets_uuid7(memory_store):
    with at.session() as s:
        pass
    assert len(s.id) == 36 and s.id[14] == "7"


def test_reentering_a_session_appends(memory_store):
    for _ in range(2):
        with at.session("s-again"):
            at.emit("note", {})
    events = at.get_events_sync("s-again")
    assert types_of(events) == ["session_started", "note", "session_ended"] * 2
    assert [e.version for e in events] == list(range(1, 7))


def test_span_ids_are_unique_hex_and_not_shared_with_a_forked_child():
    ids = {new_span_id() for _ in range(5000)}
    assert len(ids) == 5000
    assert all(len(i) == 16 and int(i, 16) >= 0 for i in ids)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child must not hand out the parent's unused ids
        os.write(write, new_span_id().encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 100).decode()
    os.waitpid(pid, 0)
    os.close(read)
    assert child != new_span_id() and len(child) == 16
