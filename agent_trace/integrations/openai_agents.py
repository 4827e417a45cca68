"""OpenAI Agents SDK runs recorded and replayed.

``instrument_openai_agents()`` hooks in at the SDK's own interfaces:

- a ``TracingProcessor`` (``agents.add_trace_processor``) turns the SDK's
  spans into ``agent_started``/``agent_finished`` (``agent`` = the agent's
  name; ``status``, ``duration_ms``, its ``tools`` and ``handoffs``),
  ``agent_handoff`` (``from_agent``, ``to_agent``) and ``guardrail_checked``
  (``name``, ``triggered``). These need the SDK's tracing on (its default);
- the ``Model`` interface: ``get_response`` and ``stream_response`` of every
  ``Model`` class (OpenAI's, LiteLLM's, your own) are wrapped, so each model
  call is ``llm_started`` (``name`` ``openai_agents.model_request``,
  ``agent``, ``model``, ``args``: instructions, input items, tool and handoff
  names, settings) and ``llm_responded`` (the output items, ``usage`` with
  cached and reasoning tokens, ``response_id``; for streams ``stream: true``,
  ``chunks``, ``time_to_first_chunk_ms``). Model classes defined later are
  picked up when a run starts;
- the ``FunctionTool`` interface: the ``on_invoke_tool`` of each function
  tool handed to a model call is wrapped (once, undone by
  ``uninstrument()``), so each tool call is ``tool_started`` (its JSON
  arguments) and ``tool_executed``.

Under ``replay(..., mock=("llm", "tool"))`` the wrapped model returns the
recorded ``ModelResponse`` (a streamed call replays as a stream of Responses
events ending in ``response.completed``) and the wrapped tool returns its
recorded output, so ``Runner.run``/``run_sync``/``run_streamed`` reach the
same output with no request sent and no tool run.

Never raises into agent code from the recording side.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import threading
import time
import weakref
from collections.abc import AsyncIterator
from typing import Any

import wrapt
from agents import FunctionTool, ModelResponse, Usage, add_trace_processor
from agents.items import TResponseOutputItem
from agents.models.interface import Model
from agents.tracing import TracingProcessor
from agents.tracing.span_data import AgentSpanData, GuardrailSpanData, HandoffSpanData
from openai.types.responses import (
    Response,
    ResponseCompletedEvent,
    ResponseOutputMessage,
    ResponseTextDeltaEvent,
    ResponseUsage,
)
from openai.types.responses.response_usage import InputTokensDetails, OutputTokensDetails
from pydantic import TypeAdapter

from agent_trace.context import _span
from agent_trace.decorators import LLM, TOOL, _Call, start_call
from agent_trace.integrations._agents import (
    AgentRun,
    Instrumentation,
    emit_event,
    restore,
    run_call,
)
from agent_trace.llm import ResponsesStreamAssembler, usage_of

__all__ = ["instrument"]

_log = logging.getLogger("agent_trace")
_perf = time.perf_counter

MODEL_REQUEST = "openai_agents.model_request"

_lock = threading.Lock()
_handles = 0
_processor_added = False
# (class, method name, the wrapper installed) for every Model method we wrapped
_model_hooks: list[tuple[type, str, Any]] = []
# Function tools whose on_invoke_tool we wrapped: id -> (weak ref, original)
_tools: dict[int, tuple[weakref.ref[Any], Any]] = {}
_item_adapter: TypeAdapter[Any] = TypeAdapter(TResponseOutputItem)
# True while a recorded model call runs: a Model that calls another one (its
# super()'s method, a model it wraps) is recorded once, as the outer call.
_inside_model: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "agent_trace.openai_agents.inside_model", default=False
)


def instrument() -> Instrumentation:
    """Record OpenAI Agents SDK runs (see the module docstring)."""
    global _handles, _processor_added
    with _lock:
        _handles += 1
        if not _processor_added:
            # The SDK has no way to remove one processor; ours does nothing while no
            # handle is active.
            add_trace_processor(_PROCESSOR)
            _processor_added = True
    _wrap_model_classes()
    return Instrumentation("openai-agents", _remove)


def _remove() -> None:
    global _handles
    with _lock:
        _handles -= 1
        if _handles:
            return
        for cls, method, hook in _model_hooks:
            restore(cls, method, hook)
        _model_hooks.clear()
        for ref, original in _tools.values():
            tool = ref()
            if tool is not None and isinstance(tool.on_invoke_tool, _RecordedInvoke):
                tool.on_invoke_tool = original
        _tools.clear()
    _PROCESSOR.runs.clear()
    _PROCESSOR.parents.clear()
    _PROCESSOR.errors.clear()


# --- agents, handoffs, guardrails: the tracing processor ------------------------------------


class _Processor(TracingProcessor):
    """The SDK's spans as agent_trace's agent events (see the module docstring)."""

    def __init__(self) -> None:
        self.runs: dict[str, AgentRun] = {}  # SDK span id -> the agent run it stands for
        self.parents: dict[str, str | None] = {}  # SDK span id -> its parent, while open
        self.errors: dict[str, Exception] = {}  # agent span id -> why a turn of it failed

    def on_trace_start(self, trace: Any) -> None:
        if _handles:
            _wrap_model_classes()  # a run begins: Model classes defined since instrument()

    def on_trace_end(self, trace: Any) -> None:
        pass

    def on_span_start(self, span: Any) -> None:
        if not _handles:
            return
        self.parents[span.span_id] = span.parent_id
        data = span.span_data
        if isinstance(data, AgentSpanData):
            try:
                run = AgentRun(data.name)
                if run.active:
                    run.enter()
                    self.runs[span.span_id] = run
            except Exception:
                _log.exception("agent_trace: could not record an agent run")

    def on_span_end(self, span: Any) -> None:
        data = span.span_data
        try:
            if isinstance(data, AgentSpanData):
                run = self.runs.pop(span.span_id, None)
                # A turn that failed (a tripwire, a model error) leaves the agent span clean.
                error = _span_error(span.error) if span.error else None
                error = error or self.errors.pop(span.span_id, None)
                if run is not None:
                    # The SDK fills in the agent's tools and handoffs after the span starts.
                    tools, handoffs = list(data.tools or []), list(data.handoffs or [])
                    run.finish(error, tools=tools, handoffs=handoffs)
            elif _handles and isinstance(data, HandoffSpanData):
                handoff = {"from_agent": data.from_agent, "to_agent": data.to_agent}
                self._emit(span, "agent_handoff", handoff)
            elif _handles and isinstance(data, GuardrailSpanData):
                checked = {"name": data.name, "triggered": data.triggered}
                self._emit(span, "guardrail_checked", checked)
            elif span.error and type(data).__name__ == "TurnSpanData":
                agent_span = self._agent_span_of(span)
                if agent_span is not None:
                    self.errors.setdefault(agent_span, _span_error(span.error))
        except Exception:
            _log.exception("agent_trace: could not record an Agents SDK span")
        finally:
            self.parents.pop(span.span_id, None)

    def _agent_span_of(self, span: Any) -> str | None:
        """The SDK span id of the agent run ``span`` belongs to."""
        parent: str | None = span.parent_id
        for _ in range(100):  # bounded: spans nest a few levels deep
            if parent is None or parent in self.runs:
                return parent
            parent = self.parents.get(parent)
        return None

    def _emit(self, span: Any, event_type: str, payload: dict[str, Any]) -> None:
        """In the span of the agent run it happened in, never in a tool or LLM call's."""
        run = self.runs.get(self._agent_span_of(span) or "")
        if run is not None:
            run.emit(event_type, payload)
        else:
            emit_event(_span.get(), event_type, payload)

    def shutdown(self) -> None:
        pass

    def force_flush(self) -> None:
        pass


class AgentRunError(Exception):
    """An agent run the SDK reports as failed (its span's error message)."""


class GuardrailTripwireTriggered(AgentRunError):
    """An agent run a guardrail's tripwire stopped."""


def _span_error(error: Any) -> Exception:
    message = error.get("message") if isinstance(error, dict) else str(error)
    data = error.get("data") if isinstance(error, dict) else None
    if isinstance(data, dict) and data.get("guardrail"):
        return GuardrailTripwireTriggered(f"guardrail {data['guardrail']!r} triggered")
    return AgentRunError(message or "agent run failed")


_PROCESSOR = _Processor()


def _current_agent() -> str | None:
    span = _span.get()
    if span is None:
        return None
    for run in list(_PROCESSOR.runs.values()):
        if run.span == span:
            return run.agent
    return None


# --- model calls: the Model interface ---------------------------------------------------------


def _wrap_model_classes() -> None:
    """Wrap ``get_response``/``stream_response`` of every concrete ``Model`` class, once."""
    with _lock:
        if not _handles:
            return
        done = {(cls, method) for cls, method, _ in _model_hooks}
        todo: list[type] = [Model]
        seen: set[type] = set()
        while todo:
            cls = todo.pop()
            if cls in seen:
                continue
            seen.add(cls)
            todo.extend(cls.__subclasses__())
            for method, wrapper in (("get_response", _get_response), ("stream_response", _stream)):
                own = cls.__dict__.get(method)
                if own is None or getattr(own, "__isabstractmethod__", False):
                    continue
                if (cls, method) in done or isinstance(own, wrapt.FunctionWrapper):
                    continue
                wrapt.wrap_function_wrapper(cls, method, wrapper)
                _model_hooks.append((cls, method, cls.__dict__[method]))


def _model_args(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    names = (
        "system_instructions",
        "input",
        "model_settings",
        "tools",
        "output_schema",
        "handoffs",
    )
    given = dict(zip(names, args, strict=False))
    given.update({k: v for k, v in kwargs.items() if k in names})
    settings = given.get("model_settings")
    to_json = getattr(settings, "to_json_dict", None)
    out: dict[str, Any] = {
        "system_instructions": given.get("system_instructions"),
        "input": given.get("input"),
        "tools": [getattr(t, "name", str(t)) for t in given.get("tools") or ()],
        "handoffs": [getattr(h, "tool_name", str(h)) for h in given.get("handoffs") or ()],
    }
    if callable(to_json):
        out["model_settings"] = {k: v for k, v in to_json().items() if v is not None}
    schema = given.get("output_schema")
    if schema is not None:
        out["output_schema"] = getattr(schema, "name", lambda: str(schema))()
    return out


def _begin_model_call(model: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> _Call | None:
    for tool in kwargs.get("tools") or (args[3] if len(args) > 3 else ()):
        if isinstance(tool, FunctionTool):
            _wrap_tool(tool)
    if not _handles:
        return None
    name = getattr(model, "model", None)
    fields = {
        "agent": _current_agent(),
        "model": name if isinstance(name, str) else type(model).__name__,
    }
    call = start_call(LLM, MODEL_REQUEST, _model_args(args, kwargs), fields)
    return call


async def _get_response(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    if _inside_model.get():  # a Model calling another (super(), a wrapped model): recorded once
        return await wrapped(*args, **kwargs)
    call = _begin_model_call(instance, args, kwargs)
    if call is None:
        return await wrapped(*args, **kwargs)
    token = _inside_model.set(True)
    try:
        return await run_call(call, lambda: wrapped(*args, **kwargs), _served_response, _outcome)
    finally:
        _inside_model.reset(token)


def _outcome(response: Any) -> tuple[Any, dict[str, Any]]:
    value = _response_json(response.output, response.usage, response.response_id)
    return value, {"usage": usage_of(response)}


def _stream(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    if _inside_model.get():
        return wrapped(*args, **kwargs)
    call = _begin_model_call(instance, args, kwargs)
    if call is None:
        return wrapped(*args, **kwargs)
    return _recorded_stream(call, wrapped, args, kwargs)


async def _recorded_stream(call: _Call, wrapped: Any, args: Any, kwargs: Any) -> AsyncIterator[Any]:
    """Pass each event on as it arrives; record the assembled response at the end."""
    await call.await_durable(call.start())
    events = _served_stream(call) if call.mock is not None else wrapped(*args, **kwargs)
    assembler = ResponsesStreamAssembler()
    chunks = 0
    first_ms: float | None = None
    complete = failed = False
    try:
        async for event in _marked(events):
            if first_ms is None:
                first_ms = (_perf() - call.t0) * 1000
            chunks += 1
            with contextlib.suppress(Exception):  # a chunk it cannot read is skipped
                assembler.add(event)
            yield event
        complete = True
    except GeneratorExit:  # the consumer stopped early: recorded as incomplete below
        raise
    except BaseException as exc:
        failed = True
        call.fail(exc)
        raise
    finally:
        if not failed:
            final = assembler.final
            extra: dict[str, Any] = {
                "usage": usage_of(final),
                "stream": True,
                "chunks": chunks,
                "time_to_first_chunk_ms": first_ms,
                "status": "complete" if complete else "incomplete",
            }
            value: Any = None
            if final is not None:
                value = _response_json(final.output, final.usage, final.id)
            call.succeed(value, extra)


async def _marked(events: Any) -> AsyncIterator[Any]:
    """``events``, each step taken as inside a model call (see ``_inside_model``).

    Set around each step only: a value set in an async generator and left set
    across a ``yield`` would leak into the consumer's context.
    """
    it = events.__aiter__()
    while True:
        token = _inside_model.set(True)
        try:
            event = await it.__anext__()
        except StopAsyncIteration:
            return
        finally:
            _inside_model.reset(token)
        yield event


def _usage_json(usage: Any) -> dict[str, Any]:
    details = getattr(usage, "input_tokens_details", None)
    reasoning = getattr(getattr(usage, "output_tokens_details", None), "reasoning_tokens", 0) or 0
    return {
        "requests": getattr(usage, "requests", 1),
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "total_tokens": usage.total_tokens,
        "input_tokens_details": {
            "cached_tokens": getattr(details, "cached_tokens", 0) or 0,
            "cache_write_tokens": getattr(details, "cache_write_tokens", 0) or 0,
        },
        "output_tokens_details": {"reasoning_tokens": reasoning},
    }


def _input_details(usage: dict[str, Any]) -> InputTokensDetails:
    details = usage.get("input_tokens_details") or {}
    return InputTokensDetails.model_validate(
        {
            "cached_tokens": details.get("cached_tokens", 0),
            "cache_write_tokens": details.get("cache_write_tokens", 0),
        }
    )


def _output_details(usage: dict[str, Any]) -> OutputTokensDetails:
    details = usage.get("output_tokens_details") or {}
    return OutputTokensDetails(reasoning_tokens=details.get("reasoning_tokens", 0))


def _response_json(output: Any, usage: Any, response_id: Any) -> dict[str, Any]:
    """A model response as JSON: the output items, usage and response id."""
    return {
        "output": [item.model_dump(mode="json", exclude_none=True) for item in output],
        "usage": _usage_json(usage) if usage is not None else None,
        "response_id": response_id,
    }


def _served_parts(call: _Call) -> tuple[list[Any], dict[str, Any], str | None]:
    served = call.mock
    assert served is not None
    if served.call.failed:
        served.play()  # raises the recorded failure
    data = served.call.result or {}
    output = [_item_adapter.validate_python(item) for item in data.get("output") or ()]
    return output, data.get("usage") or {}, data.get("response_id")


def _served_response(call: _Call) -> ModelResponse:
    output, usage, response_id = _served_parts(call)
    return ModelResponse(
        output=output,
        usage=Usage(
            requests=usage.get("requests", 1),
            input_tokens=usage.get("input_tokens", 0),
            output_tokens=usage.get("output_tokens", 0),
            total_tokens=usage.get("total_tokens", 0),
            input_tokens_details=_input_details(usage),
            output_tokens_details=_output_details(usage),
        ),
        response_id=response_id,
    )


async def _served_stream(call: _Call) -> AsyncIterator[Any]:
    """The recorded response as a stream: its text as deltas, then ``response.completed``."""
    output, usage, response_id = _served_parts(call)
    n = 0
    for index, item in enumerate(output):
        if isinstance(item, ResponseOutputMessage):
            for part_index, part in enumerate(item.content):
                text = getattr(part, "text", None)
                if text:
                    yield ResponseTextDeltaEvent(
                        type="response.output_text.delta",
                        item_id=item.id,
                        output_index=index,
                        content_index=part_index,
                        delta=text,
                        logprobs=[],
                        sequence_number=n,
                    )
                    n += 1
    response = Response(
        id=response_id or "replayed",
        created_at=0,
        model="replayed",
        object="response",
        output=output,
        tool_choice="auto",
        tools=[],
        parallel_tool_calls=False,
        status="completed",
        usage=ResponseUsage(
            input_tokens=usage.get("input_tokens", 0),
            output_tokens=usage.get("output_tokens", 0),
            total_tokens=usage.get("total_tokens", 0),
            input_tokens_details=_input_details(usage),
            output_tokens_details=_output_details(usage),
        ),
    )
    yield ResponseCompletedEvent(type="response.completed", response=response, sequence_number=n)


# --- tool calls: FunctionTool.on_invoke_tool ---------------------------------------------------


class _RecordedInvoke:
    """A function tool's ``on_invoke_tool``, recorded (and served under replay)."""

    def __init__(self, tool: Any, original: Any) -> None:
        self.name = tool.name
        self.original = original

    async def __call__(self, ctx: Any, arguments: str) -> Any:
        if not _handles:
            return await self.original(ctx, arguments)
        try:
            args = json.loads(arguments) if arguments else {}
        except ValueError:
            args = {"input": arguments}
        if not isinstance(args, dict):
            args = {"input": args}
        call = start_call(TOOL, self.name, args)
        if call is None:
            return await self.original(ctx, arguments)
        return await run_call(call, lambda: self.original(ctx, arguments), _play)


def _play(call: _Call) -> Any:
    assert call.mock is not None
    return call.mock.play()


def _wrap_tool(tool: Any) -> None:
    with _lock:
        if not _handles or isinstance(tool.on_invoke_tool, _RecordedInvoke):
            return
        original = tool.on_invoke_tool
        tool.on_invoke_tool = _RecordedInvoke(tool, original)
        _tools[id(tool)] = (weakref.ref(tool), original)
