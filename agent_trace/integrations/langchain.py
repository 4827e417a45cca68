"""LangChain and LangGraph recorded and replayed through their public hooks.

``instrument_langchain()`` uses three doors LangChain opens:

- a ``BaseCallbackHandler``, added to every run by
  ``langchain_core.tracers.context.register_configure_hook`` (the hook
  LangChain's own tracers use), records each chat model call as
  ``llm_started`` (``name``: the model class, ``provider``, ``model``,
  ``node``: the LangGraph node, ``args``: the messages and call parameters)
  and ``llm_responded`` (the ``AIMessage`` as JSON, ``usage`` from
  ``usage_metadata`` with cache and reasoning tokens, ``response_model``,
  ``finish_reasons``; for streams ``stream: true``, ``chunks``,
  ``time_to_first_chunk_ms``), and each LangGraph graph run (including
  ``create_react_agent`` and ``langchain.agents.create_agent``) as
  ``agent_started``/``agent_finished`` (``agent``: the graph's name);
- the global LLM cache (``langchain_core.globals.set_llm_cache``), the one
  place where LangChain lets something else answer a chat model call: from
  the first call a replay serves, a cache in front of the one set before (if
  any) answers with the recorded ``AIMessage`` and passes every other lookup
  on;
- ``BaseTool.run``/``BaseTool.arun``, the public methods every tool call
  goes through (``invoke``, LangGraph's ``ToolNode``): LangChain has no hook
  that lets a recorded result stand in for a tool, so these are wrapped
  (``wrapt``, undone by ``uninstrument()``). A tool call is
  ``tool_started`` with the tool's own arguments (those of its
  ``tool_call_schema``: never injected graph state, store or runtime) and
  ``tool_executed`` with the tool's output (a ``ToolMessage``'s content).

Message ``id``, ``run_id`` and ``tool_call_id`` values are recorded as they
are but are not compared by replay: LangChain makes them fresh on every run.

Never raises into agent code from the recording side (a replay divergence
is the one exception it lets through, as decorated calls do).
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
import uuid
from typing import Any

import wrapt
from langchain_core.caches import BaseCache
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.globals import get_llm_cache, set_llm_cache
from langchain_core.messages import BaseMessage, ToolMessage, messages_from_dict
from langchain_core.outputs import ChatGeneration
from langchain_core.tools import BaseTool, ToolException
from langchain_core.tracers.context import register_configure_hook

from agent_trace.decorators import LLM, TOOL, _Call, start_call
from agent_trace.integrations._agents import (
    AgentRun,
    Instrumentation,
    restore,
    run_call,
    run_call_sync,
)
from agent_trace.replay import ReplayDivergence

__all__ = ["instrument"]

_log = logging.getLogger("agent_trace")
_perf = time.perf_counter

# Fresh on every LangChain run: recorded, never compared by replay.
VOLATILE_KEYS = ("id", "run_id", "tool_call_id")
# What a request's args keep of each message: what a user reads.
_MESSAGE_KEYS = ("type", "content", "name", "id", "tool_calls", "tool_call_id", "status")

# How LangChain marks the root run of a graph in its metadata (``ls_integration``).
_AGENT_INTEGRATIONS = frozenset({"langgraph", "langchain_create_agent"})

_lock = threading.Lock()
_handles = 0
_tool_hooks: list[tuple[str, Any]] = []  # (method name, the wrapper installed on BaseTool)
_cache: _ReplayCache | None = None
# The recorded LLM responses waiting for their cache lookup (see _ReplayCache).
_pending: contextvars.ContextVar[tuple[_Pending, ...]] = contextvars.ContextVar(
    "agent_trace.langchain.pending", default=()
)


def instrument() -> Instrumentation:
    """Record LangChain/LangGraph runs (see the module docstring)."""
    global _handles, _cache
    with _lock:
        _handles += 1
        if _handles == 1:
            _hook_configure()
            for method in ("run", "arun"):
                wrapt.wrap_function_wrapper(BaseTool, method, _tool_wrapper(method == "arun"))
                _tool_hooks.append((method, BaseTool.__dict__[method]))
    return Instrumentation("langchain", _remove)


def _serve_through_cache() -> None:
    """Put the replay cache in front of LangChain's global cache (from the first served call).

    Only then: with a global cache set, LangChain serializes every prompt into
    a cache key, a cost a run that is only recorded should not pay.
    """
    global _cache
    with _lock:
        if _handles and (_cache is None or get_llm_cache() is not _cache):
            _cache = _ReplayCache(get_llm_cache())
            set_llm_cache(_cache)


def _remove() -> None:
    global _handles, _cache
    with _lock:
        _handles -= 1
        if _handles:
            return
        for method, hook in _tool_hooks:
            restore(BaseTool, method, hook)
        _tool_hooks.clear()
        if _cache is not None and get_llm_cache() is _cache:
            set_llm_cache(_cache.previous)
        _cache = None


_configured = False


def _hook_configure() -> None:
    """Add the handler to every LangChain run, once per process.

    LangChain adds a registered hook's handler whenever its context variable
    holds one; ours holds the handler by default, in every context. It has
    no unregister, so the handler stays and does nothing while no handle is
    active.
    """
    global _configured
    if not _configured:
        var: contextvars.ContextVar[Any] = contextvars.ContextVar(
            "agent_trace.langchain.handler", default=_HANDLER
        )
        register_configure_hook(var, inheritable=True)
        _configured = True


# --- chat model calls and graph runs: the callback handler ----------------------------


class _LLMRun:
    """One chat model call in flight."""

    __slots__ = ("call", "chunks", "first_ms", "pending")

    def __init__(self, call: _Call) -> None:
        self.call = call
        self.chunks = 0
        self.first_ms: float | None = None
        self.pending: _Pending | None = None


class _Pending:
    """A recorded response waiting for the cache lookup of its call."""

    __slots__ = ("run", "taken")

    def __init__(self, run: _LLMRun) -> None:
        self.run = run
        self.taken = False


class AgentTraceCallbackHandler(BaseCallbackHandler):
    """Records chat model calls and LangGraph runs (see the module docstring)."""

    # Called in the caller's context: the session, the current span and the
    # replay are context variables.
    run_inline = True
    # Lets a ReplayDivergence through; everything else is caught below.
    raise_error = True

    def __init__(self) -> None:
        super().__init__()
        self.llm_runs: dict[uuid.UUID, _LLMRun] = {}
        self.agent_runs: dict[uuid.UUID, AgentRun] = {}

    # graph runs

    def on_chain_start(
        self,
        serialized: dict[str, Any] | None,
        inputs: Any,
        *,
        run_id: uuid.UUID,
        parent_run_id: uuid.UUID | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        # A graph invoked by the application (not a node of another run): a LangGraph
        # graph, the prebuilt ReAct agent or langchain.agents.create_agent.
        if not _handles or parent_run_id is not None:
            return
        metadata = metadata or {}
        if metadata.get("ls_integration") not in _AGENT_INTEGRATIONS:
            return
        try:
            name = metadata.get("lc_agent_name") or kwargs.get("name") or "LangGraph"
            run = AgentRun(str(name))
            if run.active:
                run.enter()
                self.agent_runs[run_id] = run
        except Exception:
            _log.exception("agent_trace: could not record a LangGraph run")

    def on_chain_end(self, outputs: Any, *, run_id: uuid.UUID, **kwargs: Any) -> None:
        run = self.agent_runs.pop(run_id, None)
        if run is not None:
            try:
                run.finish(output=_final_text(outputs))
            except Exception:
                _log.exception("agent_trace: could not record a LangGraph run")

    def on_chain_error(self, error: BaseException, *, run_id: uuid.UUID, **kwargs: Any) -> None:
        run = self.agent_runs.pop(run_id, None)
        if run is not None:
            try:
                run.finish(error)
            except Exception:
                _log.exception("agent_trace: could not record a LangGraph run")

    # chat model calls

    def on_chat_model_start(
        self,
        serialized: dict[str, Any],
        messages: list[list[BaseMessage]],
        *,
        run_id: uuid.UUID,
        metadata: dict[str, Any] | None = None,
        invocation_params: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if not _handles:
            return
        try:
            call = _start_llm(serialized, messages, metadata, invocation_params, kwargs)
        except ReplayDivergence:
            raise
        except Exception:
            _log.exception("agent_trace: could not record a chat model call")
            return
        if call is None:
            return
        run = self.llm_runs[run_id] = _LLMRun(call)
        if call.mock is not None:
            _serve_through_cache()
            run.pending = _Pending(run)
            waiting = tuple(p for p in _pending.get() if not p.taken)
            _pending.set((*waiting, run.pending))

    def on_llm_new_token(self, token: Any, *, run_id: uuid.UUID, **kwargs: Any) -> None:
        run = self.llm_runs.get(run_id)
        if run is not None:
            if run.first_ms is None:
                run.first_ms = (_perf() - run.call.t0) * 1000
            run.chunks += 1

    def on_llm_end(self, response: Any, *, run_id: uuid.UUID, **kwargs: Any) -> None:
        run = self.llm_runs.pop(run_id, None)
        if run is None:
            return
        if run.pending is not None:  # never looked up (a call that skips the cache)
            run.pending.taken = True
        try:
            generation = response.generations[0][0]
            message = getattr(generation, "message", None)
            extra = _message_fields(message) if message is not None else {"usage": {}}
            if run.chunks:
                extra.update(
                    stream=True,
                    chunks=run.chunks,
                    time_to_first_chunk_ms=run.first_ms,
                    status="complete",
                )
            value = _message_json(message) if message is not None else generation.text
            run.call.succeed(value, extra)
        except Exception:
            _log.exception("agent_trace: could not record a chat model response")

    def on_llm_error(self, error: BaseException, *, run_id: uuid.UUID, **kwargs: Any) -> None:
        run = self.llm_runs.pop(run_id, None)
        if run is not None:
            if run.pending is not None:
                run.pending.taken = True
            try:
                run.call.fail(error)
            except Exception:
                _log.exception("agent_trace: could not record a chat model failure")


_HANDLER = AgentTraceCallbackHandler()


def _start_llm(
    serialized: dict[str, Any] | None,
    messages: list[list[BaseMessage]],
    metadata: dict[str, Any] | None,
    params: dict[str, Any] | None,
    kwargs: dict[str, Any],
) -> _Call | None:
    metadata = metadata or {}
    params = dict(params or {})
    name = kwargs.get("name") or _class_name(serialized) or "chat_model"
    tools = params.pop("tools", None)
    args: dict[str, Any] = {
        "messages": [_message_args(m) for m in (messages[0] if messages else ())],
        "params": {k: v for k, v in params.items() if k != "_type" and v is not None},
    }
    if tools:
        args["tools"] = [_tool_name(t) for t in tools]
    model = (
        metadata.get("ls_model_name")
        or params.get("model")
        or params.get("model_name")
        or params.get("_type")
    )
    fields = {"provider": metadata.get("ls_provider"), "model": model}
    if metadata.get("langgraph_node"):
        fields["node"] = metadata["langgraph_node"]
    call = start_call(LLM, str(name), args, fields, ignore=VOLATILE_KEYS)
    if call is not None:
        n = call.start()
        call.wait(n)
    return call


# --- replay: the recorded AIMessage answers through the LLM cache ----------------------


class _ReplayCache(BaseCache):
    """The global LLM cache while instrumented: serves recorded responses under replay.

    A chat model looks the cache up right after its ``on_chat_model_start``
    callbacks, in the same context, so the recorded response the handler put
    in ``_pending`` is the one for this call. Anything else goes to the cache
    that was set before.
    """

    def __init__(self, previous: BaseCache | None) -> None:
        self.previous = previous

    def lookup(self, prompt: str, llm_string: str) -> Any:
        for item in _pending.get():
            if not item.taken:
                item.taken = True
                return [ChatGeneration(message=_served_message(item.run.call))]
        return self.previous.lookup(prompt, llm_string) if self.previous is not None else None

    async def alookup(self, prompt: str, llm_string: str) -> Any:
        # In this task, not in an executor thread: _pending is a context variable.
        if any(not item.taken for item in _pending.get()):
            return self.lookup(prompt, llm_string)
        if self.previous is not None:
            return await self.previous.alookup(prompt, llm_string)
        return None

    def update(self, prompt: str, llm_string: str, return_val: Any) -> None:
        if self.previous is not None:
            self.previous.update(prompt, llm_string, return_val)

    async def aupdate(self, prompt: str, llm_string: str, return_val: Any) -> None:
        if self.previous is not None:
            await self.previous.aupdate(prompt, llm_string, return_val)

    def clear(self, **kwargs: Any) -> None:
        if self.previous is not None:
            self.previous.clear(**kwargs)


def _served_message(call: _Call) -> BaseMessage:
    served = call.mock
    assert served is not None
    if served.call.failed:
        served.play()  # raises the recorded failure
    data = dict(served.call.result or {})
    kind = data.get("type") or "ai"
    return messages_from_dict([{"type": kind, "data": data}])[0]


# --- tools: BaseTool.run / BaseTool.arun ----------------------------------------------------


def _tool_wrapper(is_async: bool) -> Any:
    def start(tool: Any, args: Any, kwargs: Any) -> tuple[_Call | None, str | None]:
        if not _handles or not isinstance(tool, BaseTool):
            return None, None
        tool_input = args[0] if args else kwargs.get("tool_input")
        tool_call_id = kwargs.get("tool_call_id")
        call = start_call(TOOL, tool.name, _tool_args(tool, tool_input))
        return call, tool_call_id

    def run_sync(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        call, tool_call_id = start(instance, args, kwargs)
        if call is None:
            return wrapped(*args, **kwargs)
        return run_call_sync(
            call,
            lambda: wrapped(*args, **kwargs),
            lambda c: _served_tool(c, instance, tool_call_id),
            _tool_outcome,
        )

    async def run_async(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        call, tool_call_id = start(instance, args, kwargs)
        if call is None:
            return await wrapped(*args, **kwargs)
        return await run_call(
            call,
            lambda: wrapped(*args, **kwargs),
            lambda c: _served_tool(c, instance, tool_call_id),
            _tool_outcome,
        )

    return run_async if is_async else run_sync


def _tool_args(tool: BaseTool, tool_input: Any) -> dict[str, Any]:
    """The tool's own arguments: those the model sees in its ``tool_call_schema``."""
    if not isinstance(tool_input, dict):
        return {"input": tool_input}
    try:
        schema = tool.tool_call_schema
        if isinstance(schema, dict):
            names = set((schema.get("properties") or {}).keys())
        else:  # a pydantic model (v2, or v1's __fields__)
            names = set(getattr(schema, "model_fields", None) or getattr(schema, "__fields__", {}))
    except Exception:  # an unusual schema: keep what the caller passed
        return dict(tool_input)
    return {k: v for k, v in tool_input.items() if k in names}


def _tool_outcome(output: Any) -> tuple[Any, dict[str, Any] | None]:
    """``tool_executed``: a ``ToolMessage``'s content (and status, artifact), else the output."""
    if isinstance(output, ToolMessage):
        extra: dict[str, Any] = {"message": "ToolMessage"}
        if output.status != "success":
            extra["status"] = output.status
        if output.artifact is not None:
            extra["artifact"] = output.artifact
        return output.content, extra
    return output, None


def _served_tool(call: _Call, tool: BaseTool, tool_call_id: str | None) -> Any:
    served = call.mock
    assert served is not None
    recorded = served.call
    if recorded.failed and recorded.error_type == "ToolException":
        raise ToolException(recorded.error or "")
    result = served.play()
    outcome = recorded.outcome or {}
    if outcome.get("message") == "ToolMessage" and tool_call_id is not None:
        return ToolMessage(
            recorded.result,
            tool_call_id=tool_call_id,
            name=tool.name,
            status=outcome.get("status", "success"),
            artifact=outcome.get("artifact"),
        )
    return result


# --- messages as JSON -----------------------------------------------------------------------


def _message_args(message: BaseMessage) -> dict[str, Any]:
    """A request message as its args record it: ``_MESSAGE_KEYS``, empty ones left out."""
    data = message.model_dump(mode="json")
    out = {k: data[k] for k in _MESSAGE_KEYS if data.get(k) not in (None, [], {})}
    if "tool_calls" in out:
        out["tool_calls"] = [
            {k: v for k, v in tc.items() if k != "type"} for tc in out["tool_calls"]
        ]
    return out


def _message_json(message: BaseMessage) -> dict[str, Any]:
    """The response message as JSON, rebuilt by ``messages_from_dict`` under replay."""
    data = message.model_dump(mode="json")
    data = {k: v for k, v in data.items() if v not in (None, [], {})}
    if isinstance(data.get("usage_metadata"), dict):
        # LangChain adds a zero cost to a cached (replayed) response's usage.
        data["usage_metadata"].pop("total_cost", None)
    return data


def _message_fields(message: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {"usage": usage_of(getattr(message, "usage_metadata", None))}
    meta = getattr(message, "response_metadata", None) or {}
    model = meta.get("model_name") or meta.get("model")
    if isinstance(model, str):
        fields["response_model"] = model
    reason = meta.get("finish_reason") or meta.get("stop_reason")
    if isinstance(reason, str):
        fields["finish_reasons"] = [reason]
    return fields


def usage_of(usage: Any) -> dict[str, int]:
    """LangChain's ``usage_metadata`` in agent_trace's convention (``agent_trace.llm``).

    Its ``input_tokens`` already count cached prompt tokens, as ours do.
    """
    if not isinstance(usage, dict):
        return {}
    out = {
        k: usage[k]
        for k in ("input_tokens", "output_tokens", "total_tokens")
        if isinstance(usage.get(k), int)
    }
    inp = usage.get("input_token_details") or {}
    outp = usage.get("output_token_details") or {}
    for key, value in (
        ("cache_read_tokens", inp.get("cache_read")),
        ("cache_write_tokens", inp.get("cache_creation")),
        ("reasoning_tokens", outp.get("reasoning")),
    ):
        if isinstance(value, int) and value:
            out[key] = value
    return out


def _final_text(outputs: Any) -> Any:
    """What a graph run answered: the last message's content, when its state has messages."""
    messages = outputs.get("messages") if isinstance(outputs, dict) else None
    if isinstance(messages, list) and messages and isinstance(messages[-1], BaseMessage):
        return messages[-1].content
    return None


def _class_name(serialized: dict[str, Any] | None) -> str | None:
    if not serialized:
        return None
    ids = serialized.get("id")
    if isinstance(ids, list) and ids:
        return str(ids[-1])
    name = serialized.get("name")
    return str(name) if name else None


def _tool_name(tool: Any) -> str:
    if isinstance(tool, dict):
        fn = tool.get("function")
        if isinstance(fn, dict) and fn.get("name"):
            return str(fn["name"])
        return str(tool.get("name") or tool.get("title") or "?")
    return str(getattr(tool, "name", tool))
