"""The machinery both LLM SDK integrations share (OpenAI, Anthropic).

Each SDK method we record (``Completions.create``, ``Messages.stream`` ...)
is a ``Target``. Instrumenting wraps it with ``wrapt``: on the class for
every client (``wrapt.wrap_function_wrapper``, as OpenLLMetry and
OpenInference do), or as an attribute of one client's resource object for
that client only. The wrapper:

- outside a session, or inside another recorded SDK call (a client
  instrumented both ways, the SDK calling itself), runs the method as it is;
- otherwise records ``llm_started``, runs the method in the call's span, and
  records ``llm_responded`` from the SDK's own return value: at once for a
  response object, as it is consumed for a stream (``agent_trace.streams``);
  a raised error is recorded as ``llm_failed`` (with ``status_code``) and
  re-raised unchanged;
- under ``replay(..., mock=("llm",))`` sends nothing to the provider: the
  same method is called on a throwaway client of the same SDK whose HTTP
  transport answers with the recorded response (JSON, or server-sent events
  rebuilt from the recorded one for a stream, or the recorded HTTP error).
  So the caller gets what the SDK itself builds: ``ChatCompletion``,
  ``Message``, ``Stream`` of chunk objects, ``RateLimitError``, raw
  responses, ``.parse()`` results.

Request parameters are recorded as ``args`` without ``extra_headers`` (auth
can travel there) and ``timeout`` (not part of what was asked); the API key
lives on the client and never reaches an event.
"""

from __future__ import annotations

import abc
import contextvars
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import wrapt

from agent_trace.context import _session, _span
from agent_trace.decorators import LLM, _Call, start_call
from agent_trace.replay import recorded_exception
from agent_trace.streams import (
    Assembler,
    AsyncRecordedStream,
    AsyncRecordedStreamManager,
    RecordedStream,
    RecordedStreamManager,
    StreamRecording,
    failure_fields,
)

__all__ = ["SDK", "Instrumentation", "Target", "instrument"]

# Set while a recorded SDK call runs: a nested wrapper (global + per-client,
# or the SDK calling its own instrumented method) records nothing more.
_inside: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "agent_trace.sdk_call", default=False
)
_DROPPED_ARGS = frozenset({"extra_headers", "timeout"})
_RAW_HEADER = "X-Stainless-Raw-Response"
# SDK errors raised for no HTTP answer -> the transport error that makes the SDK raise them.
_TRANSPORT_ERRORS = {"APITimeoutError": "ReadTimeout", "APIConnectionError": "ConnectError"}


@dataclass(frozen=True)
class Target:
    """One SDK method we record."""

    module: str  # where the resource class lives
    owner: str  # the resource class, e.g. "Completions"
    attr: str  # the method, e.g. "create"
    name: str  # the event name, e.g. "openai.chat.completions.create"
    path: tuple[str, ...]  # the resource on a client, e.g. ("chat", "completions")
    is_async: bool
    shape: str  # what it returns: "chat", "responses", "embeddings", "messages", "message_stream"


class SDK(abc.ABC):
    """What differs between SDKs; subclassed by the OpenAI and Anthropic modules."""

    provider: str = ""
    targets: tuple[Target, ...] = ()

    @abc.abstractmethod
    def assembler(self, shape: str) -> Assembler:
        """What rebuilds the non-streaming response from this shape's chunks."""

    @abc.abstractmethod
    def sse(self, shape: str, response: Any, chunks: int | None) -> bytes:
        """Server-sent events that the SDK parses back into the recorded stream."""

    #: The SDK's package (``openai``, ``anthropic``) and its (sync, async) client classes.
    module: Any = None
    sync_client: str = ""
    async_client: str = ""
    replay_url: str = "http://agent-trace.replay"

    def client_classes(self) -> tuple[type, ...]:
        return (getattr(self.module, self.sync_client), getattr(self.module, self.async_client))

    def http_module(self) -> Any:
        """The httpx-like package this SDK is built on (``httpx``, or ``httpx2`` since
        openai 3 / anthropic 2): the base of the SDK's own default HTTP client."""
        import importlib

        return importlib.import_module(self.module.DefaultHttpxClient.__mro__[1].__module__)

    def replay_client(self, is_async: bool, transport: Any) -> Any:
        """A client of this SDK whose HTTP goes to ``transport`` (no retries)."""
        http = self.http_module()
        sync_cls, async_cls = self.client_classes()
        http_client = (
            http.AsyncClient(transport=transport) if is_async else http.Client(transport=transport)
        )
        return (async_cls if is_async else sync_cls)(
            api_key="agent-trace-replay",
            base_url=self.replay_url,
            max_retries=0,
            http_client=http_client,
        )


def request_args(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The request's parameters as recorded: no headers, no timeout; types by name."""
    args: dict[str, Any] = {}
    for key, value in kwargs.items():
        if key in _DROPPED_ARGS:
            continue
        if isinstance(value, type):  # response_format=SomeModel (parse)
            value = f"{value.__module__}.{value.__qualname__}"
        args[key] = value
    return args


def _raw_mode(kwargs: dict[str, Any]) -> str | None:
    headers = kwargs.get("extra_headers")
    if not isinstance(headers, dict):
        return None
    for key, value in headers.items():
        if isinstance(key, str) and key.lower() == _RAW_HEADER.lower():
            return str(value)
    return None


def _is_raw_response(result: Any) -> bool:
    return hasattr(result, "http_response") and callable(getattr(result, "parse", None))


# --- replay: the SDK answers from the recording ----------------------------------


def _recorded_answer(sdk: SDK, target: Target, call: _Call, kwargs: dict[str, Any]) -> Any:
    """(status, content type, body) of the HTTP answer that reproduces the recorded call."""
    served = call.mock
    assert served is not None
    recorded = served.call
    outcome = recorded.outcome or {}
    if recorded.failed:
        status = outcome.get("status_code")
        if recorded.error_type in _TRANSPORT_ERRORS:  # the SDK raises its own type again
            return 0, recorded.error_type, b""
        if not isinstance(status, int):  # not from the SDK: raised as recorded
            raise recorded_exception(recorded.error_type, recorded.error)
        body = outcome.get("error_body")
        if body is None:
            body = {"message": recorded.error}
        return status, "application/json", orjson.dumps({"error": body})
    response = recorded.result
    if outcome.get("stream") or target.shape == "message_stream":
        chunks = outcome.get("chunks")
        text = sdk.sse(target.shape, response, chunks if isinstance(chunks, int) else None)
        return 200, "text/event-stream", text
    return 200, "application/json", orjson.dumps(response)


def _replay_method(sdk: SDK, target: Target, answer: tuple[int, str, bytes]) -> Callable[..., Any]:
    http = sdk.http_module()
    status, content_type, body = answer

    def handler(request: Any) -> Any:
        if status == 0:  # a recorded timeout or connection error
            raise getattr(http, _TRANSPORT_ERRORS[content_type])("replayed", request=request)
        return http.Response(status, headers={"content-type": content_type}, content=body)

    client = sdk.replay_client(target.is_async, http.MockTransport(handler))
    resource = client
    for part in target.path:
        resource = getattr(resource, part)
    method: Callable[..., Any] = getattr(resource, target.attr)
    return method


# --- the wrappers --------------------------------------------------------------------


def _begin(sdk: SDK, target: Target, kwargs: dict[str, Any]) -> _Call | None:
    if _session.get() is None or _inside.get() or _raw_mode(kwargs) == "stream":
        return None
    model = kwargs.get("model")
    fields = {"provider": sdk.provider, "model": model if isinstance(model, str) else None}
    return start_call(LLM, target.name, request_args(kwargs), fields)


def _outcome(sdk: SDK, target: Target, call: _Call, result: Any, kwargs: dict[str, Any]) -> Any:
    """Record a returned value; returns what the caller gets (a proxy for streams)."""
    if target.shape == "message_stream":
        if target.is_async:
            return AsyncRecordedStreamManager(result, call)
        return RecordedStreamManager(result, call)
    streamed = kwargs.get("stream") is True
    if _raw_mode(kwargs) is not None and _is_raw_response(result):
        if streamed:  # the SDK builds the stream on .parse(), out of our reach
            call.wait(call.succeed(None, {"stream": True, "status": "unobserved"}))
            return result
        response = result.parse()  # the SDK caches it: the caller's .parse() gets the same
        call.wait(call.succeed(response))
        return result
    if streamed:
        recording = StreamRecording(call, sdk.assembler(target.shape))
        if target.is_async:
            return AsyncRecordedStream(result, recording)
        return RecordedStream(result, recording)
    call.wait(call.succeed(result))
    return result


def _sync_wrapper(sdk: SDK, target: Target) -> Callable[..., Any]:
    def wrapper(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
        call = _begin(sdk, target, kwargs)
        if call is None:
            return wrapped(*args, **kwargs)
        call.wait(call.start())
        span = _span.set(call.span)
        inside = _inside.set(True)
        try:
            if call.mock is not None:
                wrapped = _replay_method(sdk, target, _recorded_answer(sdk, target, call, kwargs))
            result = wrapped(*args, **kwargs)
        except BaseException as exc:
            call.wait(call.fail(exc, failure_fields(exc)))
            raise
        finally:
            _inside.reset(inside)
            _span.reset(span)
        return _outcome(sdk, target, call, result, kwargs)

    return wrapper


def _async_wrapper(sdk: SDK, target: Target) -> Callable[..., Any]:
    async def run(call: _Call, wrapped: Callable[..., Any], args: Any, kwargs: Any) -> Any:
        await call.await_durable(call.start())
        span = _span.set(call.span)
        inside = _inside.set(True)
        try:
            if call.mock is not None:
                wrapped = _replay_method(sdk, target, _recorded_answer(sdk, target, call, kwargs))
            result = wrapped(*args, **kwargs)
            if target.shape != "message_stream":  # stream() returns a manager, not a coroutine
                result = await result
        except BaseException as exc:
            n = call.fail(exc, failure_fields(exc))
            if isinstance(exc, Exception):  # not inside a cancellation
                await call.await_durable(n)
            raise
        finally:
            _inside.reset(inside)
            _span.reset(span)
        if target.shape == "message_stream":
            return AsyncRecordedStreamManager(result, call)
        return _outcome(sdk, target, call, result, kwargs)

    def wrapper(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
        call = _begin(sdk, target, kwargs)
        if call is None:
            return wrapped(*args, **kwargs)
        if target.shape == "message_stream":
            # AsyncMessages.stream() is a plain method returning a manager.
            return _sync_wrapper(sdk, target)(wrapped, instance, args, kwargs)
        return run(call, wrapped, args, kwargs)

    return wrapper


def _wrapper(sdk: SDK, target: Target) -> Callable[..., Any]:
    return _async_wrapper(sdk, target) if target.is_async else _sync_wrapper(sdk, target)


# --- instrument / uninstrument ---------------------------------------------------------


class Instrumentation:
    """What ``instrument_openai()`` / ``instrument_anthropic()`` return."""

    def __init__(self, sdk: SDK, client: Any, undo: list[Callable[[], None]]) -> None:
        self.sdk = sdk
        self.client = client
        self._undo = undo

    @property
    def active(self) -> bool:
        return bool(self._undo)

    def uninstrument(self) -> None:
        """Stop recording (idempotent)."""
        with _lock:
            undo, self._undo = self._undo, []
            for step in reversed(undo):
                step()
            key = (type(self.sdk), id(self.client) if self.client is not None else None)
            if _active.get(key) is self:
                del _active[key]

    def __repr__(self) -> str:
        scope = "every client" if self.client is None else f"client {id(self.client):#x}"
        state = "active" if self.active else "uninstrumented"
        return f"<agent_trace {self.sdk.provider} instrumentation of {scope}, {state}>"


_lock = threading.Lock()
_active: dict[tuple[type, int | None], Instrumentation] = {}


def instrument(sdk: SDK, client: Any = None) -> Instrumentation:
    """Record the SDK's calls for every client (``client=None``) or for one client."""
    with _lock:
        key = (type(sdk), id(client) if client is not None else None)
        existing = _active.get(key)
        if existing is not None and existing.active:
            return existing  # instrumenting twice records once
        undo = _instrument_classes(sdk) if client is None else _instrument_client(sdk, client)
        handle = _active[key] = Instrumentation(sdk, client, undo)
        return handle


def _instrument_classes(sdk: SDK) -> list[Callable[[], None]]:
    import importlib

    undo: list[Callable[[], None]] = []
    for target in sdk.targets:
        try:
            owner = getattr(importlib.import_module(target.module), target.owner)
        except (ImportError, AttributeError):  # an older SDK without this API
            continue
        original = owner.__dict__.get(target.attr)
        if original is None:
            continue
        setattr(owner, target.attr, wrapt.FunctionWrapper(original, _wrapper(sdk, target)))

        def restore(owner: Any = owner, attr: str = target.attr, original: Any = original) -> None:
            setattr(owner, attr, original)

        undo.append(restore)
    return undo


def _instrument_client(sdk: SDK, client: Any) -> list[Callable[[], None]]:
    if not isinstance(client, sdk.client_classes()):
        names = ", ".join(c.__name__ for c in sdk.client_classes())
        raise TypeError(
            f"instrument_{sdk.provider}(client) takes a {names} client, got {type(client).__name__}"
        )
    is_async = _is_async_client(sdk, client)
    undo: list[Callable[[], None]] = []
    for target in sdk.targets:
        if target.is_async != is_async:
            continue
        resource = client
        try:
            for part in target.path:
                resource = getattr(resource, part)
            bound = getattr(resource, target.attr)
        except AttributeError:  # an older SDK without this API
            continue
        # Raw-response views bind the method when first built: rebuild them.
        for view in ("with_raw_response", "with_streaming_response"):
            resource.__dict__.pop(view, None)
        setattr(resource, target.attr, wrapt.FunctionWrapper(bound, _wrapper(sdk, target)))

        def restore(resource: Any = resource, attr: str = target.attr) -> None:
            resource.__dict__.pop(attr, None)
            for view in ("with_raw_response", "with_streaming_response"):
                resource.__dict__.pop(view, None)

        undo.append(restore)
    return undo


def _is_async_client(sdk: SDK, client: Any) -> bool:
    # client_classes() lists (sync, async) pairs.
    return any(isinstance(client, cls) for cls in sdk.client_classes()[1::2])


# --- streams returned by @record_llm functions, replayed ------------------------------


def replayed_stream(outcome: dict[str, Any], is_async: bool) -> Any:
    """The SDK stream a recorded ``@record_llm`` stream replays as, or None.

    The recorded response's shape says which SDK and API produced it; the
    SDK itself parses server-sent events rebuilt from it, so the caller gets
    an ``openai.Stream`` / ``anthropic.Stream`` (or their async forms) of the
    SDK's own chunk objects. Returns a coroutine for ``is_async``.
    """
    response = outcome.get("response")
    if not isinstance(response, dict) or not outcome.get("stream"):
        return None
    kind = response.get("object") or response.get("type")
    model = response.get("model") or "replayed"
    sdk: SDK
    if kind in ("chat.completion", "response"):
        from agent_trace.integrations.openai import _SDK as openai_sdk

        sdk = openai_sdk
        shape = "chat" if kind == "chat.completion" else "responses"
        kwargs: dict[str, Any] = (
            {"model": model, "messages": [], "stream": True}
            if shape == "chat"
            else {"model": model, "input": "", "stream": True}
        )
    elif kind == "message":
        from agent_trace.integrations.anthropic import _SDK as anthropic_sdk

        sdk, shape = anthropic_sdk, "messages"
        kwargs = {"model": model, "messages": [], "max_tokens": 1, "stream": True}
    else:
        return None
    target = next(t for t in sdk.targets if t.shape == shape and t.is_async == is_async)
    chunks = outcome.get("chunks")
    body = sdk.sse(shape, response, chunks if isinstance(chunks, int) else None)
    method = _replay_method(sdk, target, (200, "text/event-stream", body))
    token = _inside.set(True)
    try:
        return method(**kwargs)
    finally:
        _inside.reset(token)
