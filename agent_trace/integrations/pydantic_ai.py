"""pydantic-ai agents recorded and replayed through its capability hooks.

``instrument_pydantic_ai(agent=None)`` adds one capability to every run of
an ``Agent`` (or of the given one), handed over through ``Agent.iter``'s own
``capabilities=`` parameter, which ``run``, ``run_sync``, ``run_stream`` and
``iter`` all go through. The capability's hooks record:

- ``wrap_run``: ``agent_started``/``agent_finished`` (``agent``, ``model``,
  ``input``; ``status``, ``output``, ``duration_ms``), the parent of the
  run's calls;
- ``wrap_model_request``: each model request as ``llm_started`` (``name``
  ``pydantic_ai.model_request``, ``provider``, ``model``, ``agent``,
  ``args``: the messages without timestamps and per-run ids, the settings,
  the tool names) and ``llm_responded`` (the ``ModelResponse`` as JSON,
  ``usage`` with cache and reasoning tokens, ``response_model``,
  ``finish_reasons``; ``stream: true`` and ``time_to_first_chunk_ms`` when
  streamed, the first event's time noted by a ``WrapperModel`` handed over
  through the ``get_wrapper_model`` hook);
- ``wrap_tool_execute``: each tool call as ``tool_started``/``tool_executed``
  with the tool's own validated arguments (never ``RunContext`` or deps).

Under ``replay(..., mock=("llm", "tool"))`` the hooks answer without calling
the model or the tool: a model request gets the recorded ``ModelResponse``
(pydantic-ai streams it to a ``run_stream`` consumer itself), a tool its
recorded result, and a recorded ``ModelRetry`` is raised again as one.

Never raises into agent code from the recording side; outside a session
the hooks only pass the call on.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import wrapt
from pydantic_ai import Agent, ModelRetry
from pydantic_ai.capabilities import AbstractCapability
from pydantic_ai.messages import ModelMessagesTypeAdapter, ModelResponse
from pydantic_ai.models.wrapper import WrapperModel

from agent_trace.decorators import LLM, TOOL, _Call, start_call
from agent_trace.integrations._agents import AgentRun, Instrumentation, restore, run_call

__all__ = ["instrument"]

MODEL_REQUEST = "pydantic_ai.model_request"
# What a request's args keep of each message: the conversation itself. The
# rest (timestamps, per-run ids, provider bookkeeping, a response's usage)
# is not what a user reads, differs on every run, and is set on a response
# after it comes back, so replay would see a divergence.
_MESSAGE_KEYS = ("kind", "instructions", "parts")
_PART_NOISE = frozenset({"timestamp", "id", "provider_name", "provider_details", "provider_url"})

_lock = threading.Lock()
_everywhere = 0  # handles instrumenting every agent
# Agents instrumented one by one: id(agent) -> (a weak reference to it, handles).
# Keyed by id because an Agent is not hashable.
_agents: dict[int, tuple[weakref.ref[Any], int]] = {}
_hook: Any = None  # the wrapper installed on Agent.iter, while any handle wants it
# run id -> what the stream of its model request in flight showed (see _TimedModel).
_streams: dict[str, _StreamSeen] = {}


def instrument(agent: Any = None) -> Instrumentation:
    """Record every pydantic-ai agent run (or the given agent's); see the module docstring."""
    global _everywhere, _hook
    if agent is not None and not isinstance(agent, Agent):
        raise TypeError(
            f"instrument_pydantic_ai(agent) takes a pydantic_ai.Agent, got {type(agent).__name__}"
        )
    with _lock:
        if agent is None:
            _everywhere += 1
        else:
            _, count = _agents.get(id(agent), (None, 0))
            _agents[id(agent)] = (weakref.ref(agent), count + 1)
        if _hook is None:
            wrapt.wrap_function_wrapper(Agent, "iter", _with_recording)
            _hook = Agent.__dict__["iter"]
    key = None if agent is None else id(agent)
    return Instrumentation("pydantic-ai", lambda: _remove(key))


def _remove(key: int | None) -> None:
    global _everywhere, _hook
    with _lock:
        if key is None:
            _everywhere -= 1
        elif key in _agents:
            ref, count = _agents[key]
            if count > 1 and ref() is not None:
                _agents[key] = (ref, count - 1)
            else:
                del _agents[key]
        if _everywhere or _agents or _hook is None:
            return
        restore(Agent, "iter", _hook)
        _hook = None


def _with_recording(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    """``Agent.iter`` with our capability added to the run's own ``capabilities``."""
    if _everywhere or _watched(instance):
        kwargs = dict(kwargs)
        kwargs["capabilities"] = [*(kwargs.get("capabilities") or ()), RecordedRun()]
    return wrapped(*args, **kwargs)


def _watched(agent: Any) -> bool:
    entry = _agents.get(id(agent))
    return entry is not None and entry[0]() is agent


class RecordedRun(AbstractCapability[Any]):
    """The capability that records one run (see the module docstring)."""

    async def wrap_run(self, ctx: Any, *, handler: Any) -> Any:
        run = AgentRun(_agent_name(ctx), {"model": _model_name(ctx.model), "input": ctx.prompt})
        run.enter()
        try:
            result = await handler()
        except BaseException as exc:
            run.finish(exc)
            raise
        run.finish(output=getattr(result, "output", None))
        return result

    async def wrap_model_request(self, ctx: Any, *, request_context: Any, handler: Any) -> Any:
        model = request_context.model
        params = request_context.model_request_parameters
        args = {
            "messages": _conversation(request_context.messages),
            "model_settings": request_context.model_settings or None,
            "tools": [t.name for t in (*params.function_tools, *params.output_tools)],
        }
        fields = {
            "provider": getattr(model, "system", None),
            "model": _model_name(model),
            "agent": _agent_name(ctx),
        }
        call = start_call(LLM, MODEL_REQUEST, args, fields)
        if call is None:
            return await handler(request_context)
        if not request_context.streaming:
            return await run_call(
                call,
                lambda: handler(request_context),
                _served_response,
                lambda response: (_response_json(response), _response_fields(response)),
            )
        # The first event's time, noted by the stream the wrapper model hands out. The
        # stream is opened in another task: the run id says which request it serves
        # (a run makes one model request at a time).
        seen = _StreamSeen()
        run_id = getattr(ctx, "run_id", None)
        if run_id is not None:
            _streams[run_id] = seen
        try:
            return await run_call(
                call,
                lambda: handler(request_context),
                _served_response,
                lambda response: (
                    _response_json(response),
                    {**_response_fields(response), **_stream_fields(call, seen)},
                ),
            )
        finally:
            if run_id is not None:
                _streams.pop(run_id, None)

    def get_wrapper_model(self, model: Any) -> Any:
        return _TimedModel(model)

    async def wrap_tool_execute(
        self, ctx: Any, *, call: Any, tool_def: Any, args: Any, handler: Any
    ) -> Any:
        recorded = start_call(TOOL, call.tool_name, dict(args) if args else {})
        if recorded is None:
            return await handler(args)
        return await run_call(recorded, lambda: handler(args), _served_tool_result)


class _StreamSeen:
    """What a streamed request's events showed: when the first came, how many came."""

    __slots__ = ("chunks", "first")

    def __init__(self) -> None:
        self.first: float | None = None
        self.chunks = 0


def _stream_fields(call: _Call, seen: _StreamSeen) -> dict[str, Any]:
    if call.mock is not None or seen.first is None:  # served from a recording: no stream ran
        return {"stream": True, "time_to_first_chunk_ms": None}
    ttfc = (seen.first - call.t0) * 1000
    return {"stream": True, "chunks": seen.chunks, "time_to_first_chunk_ms": ttfc}


class _TimedModel(WrapperModel):
    """The model as it is, except that a stream notes when its first event arrives."""

    @asynccontextmanager
    async def request_stream(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        run_context = args[3] if len(args) > 3 else kwargs.get("run_context")
        seen = _streams.get(getattr(run_context, "run_id", None) or "")
        async with super().request_stream(*args, **kwargs) as response:
            yield response if seen is None else _SeenStream(response, seen)


class _SeenStream(wrapt.ObjectProxy):  # type: ignore[type-arg,misc,unused-ignore]
    """A ``StreamedResponse`` (the SDK's own object to pydantic-ai) whose events are counted."""

    def __init__(self, response: Any, seen: _StreamSeen) -> None:
        super().__init__(response)
        self._self_seen = seen

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._self_events(self.__wrapped__.__aiter__())

    async def _self_events(self, events: AsyncIterator[Any]) -> AsyncIterator[Any]:
        seen = self._self_seen
        async for event in events:
            if seen.first is None:
                seen.first = time.perf_counter()
            seen.chunks += 1
            yield event


def _served_response(call: _Call) -> ModelResponse:
    """The recorded ``ModelResponse`` (or the recorded failure, raised)."""
    served = call.mock
    assert served is not None
    if served.call.failed:
        served.play()  # raises the recorded failure
    data = served.call.result
    return ModelMessagesTypeAdapter.validate_python([data])[0]  # type: ignore[return-value]


def _served_tool_result(call: _Call) -> Any:
    served = call.mock
    assert served is not None
    if served.call.failed and served.call.error_type in ("ModelRetry", "ToolRetryError"):
        # The model is asked to try again, as in the recorded run.
        raise ModelRetry(served.call.error or "")
    return served.play()


def _response_json(response: Any) -> Any:
    """The ``ModelResponse`` as JSON, empty fields left out (they validate back as defaults)."""
    data = ModelMessagesTypeAdapter.dump_python([response], mode="json")[0]
    data = {k: v for k, v in data.items() if v is not None}
    data["parts"] = [{k: v for k, v in p.items() if v is not None} for p in data["parts"]]
    return data


def _response_fields(response: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {"usage": usage_of(response.usage)}
    if response.model_name:
        fields["response_model"] = response.model_name
    if response.finish_reason:
        fields["finish_reasons"] = [response.finish_reason]
    return fields


def usage_of(usage: Any) -> dict[str, int]:
    """pydantic-ai's ``RequestUsage`` in agent_trace's convention (``agent_trace.llm``).

    Its ``input_tokens`` already count cached prompt tokens, as ours do.
    """
    inp, out = usage.input_tokens, usage.output_tokens
    fields = {"input_tokens": inp, "output_tokens": out, "total_tokens": inp + out}
    for key, value in (
        ("cache_read_tokens", usage.cache_read_tokens),
        ("cache_write_tokens", usage.cache_write_tokens),
        ("reasoning_tokens", getattr(usage, "output_reasoning_tokens", 0)),
    ):
        if value:
            fields[key] = value
    return fields


def _conversation(messages: Any) -> list[dict[str, Any]]:
    """The request's messages as JSON: kinds, instructions and parts (see ``_MESSAGE_KEYS``)."""
    out = []
    for message in ModelMessagesTypeAdapter.dump_python(messages, mode="json"):
        kept = {k: message[k] for k in _MESSAGE_KEYS if message.get(k) is not None}
        kept["parts"] = [
            {k: v for k, v in part.items() if k not in _PART_NOISE and v is not None}
            for part in message.get("parts") or ()
        ]
        out.append(kept)
    return out


def _agent_name(ctx: Any) -> str:
    agent = getattr(ctx, "agent", None)
    return (getattr(agent, "name", None) if agent is not None else None) or "agent"


def _model_name(model: Any) -> str | None:
    name = getattr(model, "model_name", None)
    return name if isinstance(name, str) else None
