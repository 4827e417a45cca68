"""``record_tool``, ``record_llm``, ``record_decision``: one wrapping core.

Every decorator is the same ``wrapt`` wrapper — dispatch on the function kind
(async, sync, generator, async generator), span push/pop, timing, error
capture — plus a small ``CallKind`` that says which events to emit and what
goes in their payloads. A new kind of recorded call is a new ``CallKind``.

Recording never changes what the agent does: the wrapped function gets the
same arguments, and its caller gets the same return value, the same exception
object (re-raised, traceback intact) and the same cancellation. Outside a
session the function runs unchanged and nothing is recorded.
"""

from __future__ import annotations

import contextlib
import inspect
import time
import types
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar, overload

import wrapt

from agent_trace.capture import CaptureOptions, capture
from agent_trace.context import _replay, _session, _span, session
from agent_trace.events import new_span_id
from agent_trace.llm import response_fields, usage_of
from agent_trace.recorder import Recorder, get_recorder
from agent_trace.streams import record_sdk_stream

__all__ = [
    "DECISION",
    "LLM",
    "TOOL",
    "CallKind",
    "record_decision",
    "record_llm",
    "record_tool",
    "start_call",
]

F = TypeVar("F", bound=Callable[..., Any])
_perf = time.perf_counter
# Values whose JSON holds no object key: a payload made of them has known keys,
# which capture() checks for redaction without scanning the output.
_PLAIN = frozenset({str, int, float, bool, type(None)})


@dataclass(frozen=True, slots=True)
class CallKind:
    """What one decorator records: its event types and payload fields."""

    label: str
    started: str | None  # None: the call is one fact, emitted at the end
    succeeded: str
    failed: str
    name_key: str
    # (recorded function, bound args) -> fields every event of the call carries
    common: Callable[[_Recorded, dict[str, Any]], dict[str, Any]] | None
    # (recorded function, bound args, result) -> fields of the success event;
    # or just the key the result goes under (no call to make per event)
    outcome: Callable[[_Recorded, dict[str, Any], Any], dict[str, Any]] | str


# --- the wrapping core -------------------------------------------------------


class _Recorded:
    """Per decorated function: its name, kind, options and argument binder."""

    __slots__ = (
        "_options",
        "capture_args",
        "capture_result",
        "defaults",
        "defaults_after_self",
        "exclude",
        "ignore",
        "kind",
        "model",
        "name",
        "names",
        "names_after_self",
        "opts_redact",
        "plain_name",
        "result_keys",
        "signature",
        "simple",
        "usage",
    )

    def __init__(
        self,
        func: Callable[..., Any] | None,
        kind: CallKind,
        name: str | None,
        capture_args: bool,
        capture_result: bool,
        redact: Iterable[str],
        model: str | None = None,
        usage: Callable[[Any], Mapping[str, Any] | None] | None = None,
        exclude_args: Iterable[str] = (),
        ignore: Iterable[str] = (),
    ) -> None:
        self.kind = kind
        self.name = name or getattr(func, "__name__", None) or repr(func)
        if func is None:  # a call recorded by name (see start_call)
            self.signature: inspect.Signature | None = None
        else:
            try:
                self.signature = inspect.signature(func)
            except (TypeError, ValueError):  # some builtins have no signature
                self.signature = None
        self.capture_args = capture_args
        self.capture_result = capture_result
        if isinstance(exclude_args, str):
            raise TypeError(f"exclude_args= takes a list of names, e.g. ({exclude_args!r},)")
        # Arguments left out of the record, and so out of replay's comparison.
        self.exclude = frozenset(exclude_args)
        # Keys (at any depth of the args) whose values replay does not compare.
        self.ignore = frozenset(ignore)
        self.opts_redact = frozenset(k.lower() for k in redact)
        self._options: tuple[CaptureOptions, CaptureOptions] | None = None
        self.model = model
        self.usage = usage
        params = list(self.signature.parameters.values()) if self.signature else []
        positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        self.names = tuple(p.name for p in params if p.kind in positional)
        self.simple = self.signature is not None and all(
            p.kind in (*positional, inspect.Parameter.KEYWORD_ONLY) for p in params
        )
        self.defaults = {
            p.name: p.default for p in params if p.default is not inspect.Parameter.empty
        }
        # For bound methods: wrapt has already taken self/cls off the arguments.
        self.names_after_self = self.names[1:]
        self.defaults_after_self = {
            k: v for k, v in self.defaults.items() if not self.names or k != self.names[0]
        }
        # The keys of a success payload {name, result, duration_ms} (see _Call.succeed).
        self.plain_name = type(self.name) in _PLAIN
        self.result_keys = (
            (kind.name_key, kind.outcome, "duration_ms")
            if isinstance(kind.outcome, str) and kind.common is None and self.plain_name
            else None
        )

    def options(self, rec: Recorder) -> CaptureOptions:
        opts = rec.capture_options
        if not self.opts_redact:
            return opts
        cached = self._options
        if cached is None or cached[0] is not opts:
            cached = self._options = (opts, opts.with_redact(self.opts_redact))
        return cached[1]

    def bind(self, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """Map parameter names to values, defaults applied, ``self``/``cls`` left out."""
        if not self.capture_args:
            return {}
        # wrapt has already taken self/cls off ``args`` for bound methods.
        skip = instance is not None and self.names != ()
        if self.simple:
            if skip:
                names, defaults = self.names_after_self, self.defaults_after_self
            else:
                names, defaults = self.names, self.defaults
            n = len(args)
            if n <= len(names):
                # An index loop: for the few arguments a call takes, it costs
                # less than dict(zip(...)), and this runs on every call.
                bound = {}
                for i in range(n):
                    bound[names[i]] = args[i]
                if kwargs:
                    bound.update(kwargs)
                if defaults:
                    for k, v in defaults.items():
                        if k not in bound:
                            bound[k] = v
                return self._without_excluded(bound) if self.exclude else bound
        if self.signature is None:
            return {"args": list(args), "kwargs": dict(kwargs)}
        try:
            ba = self.signature.bind(*((instance,) if skip else ()), *args, **kwargs)
        except TypeError:  # the call itself is wrong; the function will say so
            return {"args": list(args), "kwargs": dict(kwargs)}
        ba.apply_defaults()
        bound = dict(ba.arguments)
        if skip:
            bound.pop(self.names[0], None)
        return self._without_excluded(bound) if self.exclude else bound

    def _without_excluded(self, bound: dict[str, Any]) -> dict[str, Any]:
        """``bound`` minus the ``exclude_args`` names (``**kwargs`` entries included)."""
        out = {}
        for k, v in bound.items():
            if k in self.exclude:
                continue
            if isinstance(v, dict) and self.signature is not None:
                param = self.signature.parameters.get(k)
                if param is not None and param.kind is inspect.Parameter.VAR_KEYWORD:
                    v = {kk: vv for kk, vv in v.items() if kk not in self.exclude}
            out[k] = v
        return out


class _Call:
    """One recorded call in flight: emits its events and owns its span."""

    __slots__ = (
        "args",
        "fields",
        "mock",
        "opts",
        "parent",
        "rec",
        "recorded",
        "session_id",
        "span",
        "span_id",
        "t0",
    )

    def __init__(
        self,
        recorded: _Recorded,
        session_id: str,
        args: dict[str, Any],
        fields: dict[str, Any] | None = None,
    ) -> None:
        self.recorded = recorded
        self.rec = rec = get_recorder()
        self.session_id = session_id
        self.args = args
        outer = _span.get()
        parent = self.parent = outer[0] if outer is not None else None
        span_id = self.span_id = new_span_id()
        self.span = (span_id, parent)
        # Most functions add no redact keys: skip the method call for them.
        self.opts = recorded.options(rec) if recorded.opts_redact else rec.capture_options
        common = recorded.kind.common
        if fields is None and common is not None:
            fields = common(recorded, args)
        self.fields = fields
        self.t0 = 0.0
        # Under replay, a recorded outcome stands in for the function body. The
        # replayer raises ReplayDivergence here, before anything runs.
        replayer = _replay.get()
        self.mock = (
            None
            if replayer is None
            else replayer.lookup(recorded.kind.label, recorded.name, args, recorded.ignore)
        )

    def _emit(self, event_type: str, body: dict[str, Any]) -> int:
        return self.rec.emit(
            self.session_id, event_type, capture(body, self.opts), self.span_id, self.parent
        )

    def start(self) -> int:
        """Emit the started event (if the kind has one) and start the clock."""
        recorded = self.recorded
        kind = recorded.kind
        n = 0
        if kind.started is not None:
            body = {kind.name_key: recorded.name}
            if self.fields:
                body.update(self.fields)
            args = self.args
            body["args"] = args if recorded.capture_args else None
            keys = None
            if recorded.plain_name and not self.fields:
                keys = _started_keys(kind.name_key, args)
            # self._emit() inlined here and in succeed(): one call less per event.
            n = self.rec.emit(
                self.session_id,
                kind.started,
                capture(body, self.opts, keys),
                self.span_id,
                self.parent,
            )
        self.t0 = _perf()
        return n

    def succeed(self, result: Any, extra: dict[str, Any] | None = None) -> int:
        ms = (_perf() - self.t0) * 1000
        recorded = self.recorded
        kind = recorded.kind
        body = {kind.name_key: recorded.name}
        if self.fields:
            body.update(self.fields)
        outcome = kind.outcome
        keys = None
        if type(outcome) is str:
            body[outcome] = result
            if extra is None and type(result) in _PLAIN:
                keys = recorded.result_keys
        else:
            body.update(outcome(recorded, self.args, result))
        if extra:
            body.update(extra)
        body["duration_ms"] = ms
        return self.rec.emit(
            self.session_id,
            kind.succeeded,
            capture(body, self.opts, keys),
            self.span_id,
            self.parent,
        )

    def fail(self, exc: BaseException, extra: dict[str, Any] | None = None) -> int:
        body = _failure(self.recorded, self.fields, exc, self.t0)
        if extra:
            body.update(extra)
        return self._emit(self.recorded.kind.failed, body)

    def wait(self, n: int) -> None:
        """With ``durability="immediate"``: block until event ``n`` is durable."""
        if n and self.rec.immediate:
            self.rec.wait_sync(n)

    async def await_durable(self, n: int) -> None:
        """The async form of ``wait``."""
        if n and self.rec.immediate:
            await self.rec.wait(n)


def _started_keys(name_key: str, args: dict[str, Any]) -> tuple[str, ...] | None:
    """All the object keys of a started payload ``{name_key, "args": args}``,
    or None when an argument's value could hold keys of its own (see capture)."""
    for value in args.values():
        if type(value) not in _PLAIN:
            return None
    return (name_key, "args", *args)


def _replayed_stream(call: _Call, is_async: bool) -> Any:
    """Under replay, the SDK stream a recorded ``@record_llm`` stream comes back as."""
    served = call.mock
    if call.recorded.kind is not LLM or served is None or served.call.failed:
        return None
    outcome = served.call.outcome or {}
    if not outcome.get("stream"):
        return None
    # Imported here: only a replay of a recorded SDK stream needs the SDK.
    from agent_trace.integrations._sdk import replayed_stream

    return replayed_stream(outcome, is_async)


def _failure(
    recorded: _Recorded, fields: dict[str, Any] | None, exc: BaseException, t0: float
) -> dict[str, Any]:
    """The payload of a call's failed event."""
    ms = (_perf() - t0) * 1000
    body = {recorded.kind.name_key: recorded.name}
    if fields:
        body.update(fields)
    body["error_type"] = type(exc).__name__
    body["error"] = _error_text(exc)
    body["duration_ms"] = ms
    return body


def _auto_session() -> bool:
    return get_recorder().settings.auto_session


def _immediate(call: _Call) -> bool:
    return call.rec.immediate


def _sync_wrapper(recorded: _Recorded) -> Callable[..., Any]:
    def wrapper(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
        sess = _session.get()
        if sess is None:
            if not _auto_session():
                return wrapped(*args, **kwargs)
            with session():
                return wrapper(wrapped, instance, args, kwargs)
        call = _Call(recorded, sess.id, recorded.bind(instance, args, kwargs))
        n = call.start()
        if n and _immediate(call):
            call.rec.wait_sync(n)
        token = _span.set(call.span)
        try:
            if call.mock is None:
                result = wrapped(*args, **kwargs)
            else:
                result = _replayed_stream(call, is_async=False)
                if result is None:
                    result = call.mock.play()
        except BaseException as exc:
            _span.reset(token)
            n = call.fail(exc)
            if _immediate(call):
                call.rec.wait_sync(n)
            raise
        _span.reset(token)
        if recorded.kind is LLM:
            stream = record_sdk_stream(call, result)
            if stream is not None:  # recorded as it is consumed
                return stream
        n = call.succeed(result if recorded.capture_result else None)
        if _immediate(call):
            call.rec.wait_sync(n)
        return result

    return wrapper


def _async_wrapper(recorded: _Recorded) -> Callable[..., Any]:
    kind = recorded.kind
    name, name_key, outcome = recorded.name, kind.name_key, kind.outcome
    started, succeeded = kind.started, kind.succeeded
    capture_args, capture_result = recorded.capture_args, recorded.capture_result
    result_keys = recorded.result_keys
    # The common case — an async tool with no per-call fields and no redact
    # keys of its own, not replayed, not "immediate" — on a path of its own:
    # what _Call does for it, without building the object and calling its
    # methods (about 0.5 µs of a 5.8 µs call).
    fast = (
        started is not None and type(outcome) is str and result_keys is not None
        and not recorded.opts_redact
    )  # fmt: skip

    async def run_fast(
        rec: Recorder,
        session_id: str,
        bound: dict[str, Any],
        wrapped: Callable[..., Any],
        args: Any,
        kwargs: Any,
    ) -> Any:
        if len(rec.queue) >= rec.max_buffer:
            await rec.wait_for_room()
        opts = rec.capture_options
        outer = _span.get()
        parent = outer[0] if outer is not None else None
        span_id = new_span_id()
        body = {name_key: name, "args": bound if capture_args else None}
        keys = _started_keys(name_key, bound)
        rec.enqueue(session_id, started, capture(body, opts, keys), span_id, parent)
        t0 = _perf()
        token = _span.set((span_id, parent))
        try:
            result = await wrapped(*args, **kwargs)
        except BaseException as exc:
            _span.reset(token)
            body = _failure(recorded, None, exc, t0)
            rec.enqueue(session_id, kind.failed, capture(body, opts), span_id, parent)
            raise
        _span.reset(token)
        ms = (_perf() - t0) * 1000
        value = result if capture_result else None
        body = {name_key: name, outcome: value, "duration_ms": ms}
        keys = result_keys if type(value) in _PLAIN else None
        rec.enqueue(session_id, succeeded, capture(body, opts, keys), span_id, parent)
        return result

    async def run(call: _Call, wrapped: Callable[..., Any], args: Any, kwargs: Any) -> Any:
        rec = call.rec
        if len(rec.queue) >= rec.max_buffer:
            await rec.wait_for_room()
        immediate = rec.immediate
        n = call.start()
        if n and immediate:
            await rec.wait(n)
        token = _span.set(call.span)
        try:
            if call.mock is None:
                result = await wrapped(*args, **kwargs)
            else:
                replayed = _replayed_stream(call, is_async=True)
                result = call.mock.play() if replayed is None else await replayed
        except BaseException as exc:
            _span.reset(token)
            n = call.fail(exc)
            # Cancelled: don't await again inside the cancellation; the event
            # is queued and the writer makes it durable shortly.
            if immediate and isinstance(exc, Exception):
                await rec.wait(n)
            raise
        _span.reset(token)
        if recorded.kind is LLM:
            stream = record_sdk_stream(call, result)
            if stream is not None:  # recorded as it is consumed
                return stream
        n = call.succeed(result if recorded.capture_result else None)
        if immediate:
            await rec.wait(n)
        return result

    async def auto(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
        async with session():
            return await wrapper(wrapped, instance, args, kwargs)

    def wrapper(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
        sess = _session.get()
        if sess is None:
            if not _auto_session():
                return wrapped(*args, **kwargs)
            return auto(wrapped, instance, args, kwargs)
        if fast and _replay.get() is None:
            rec = get_recorder()
            if not rec.immediate:
                bound = recorded.bind(instance, args, kwargs)
                return run_fast(rec, sess.id, bound, wrapped, args, kwargs)
        call = _Call(recorded, sess.id, recorded.bind(instance, args, kwargs))
        return run(call, wrapped, args, kwargs)

    return wrapper


def _gen_wrapper(recorded: _Recorded) -> Callable[..., Any]:
    def drive(call: _Call, gen: Any) -> Any:
        stream = _Stream(call)
        to_send: Any = None
        to_throw: BaseException | None = None
        while True:
            token = _span.set(call.span)
            try:
                if to_throw is not None:
                    exc, to_throw = to_throw, None
                    item = gen.throw(exc)
                else:
                    item = gen.send(to_send)
            except StopIteration as stop:
                _span.reset(token)
                stream.end(complete=True)
                return stop.value
            except BaseException as exc:
                _span.reset(token)
                call.fail(exc)
                raise
            _span.reset(token)
            stream.add(item)
            try:
                to_send = yield item
            except GeneratorExit:
                stream.end(complete=False)
                gen.close()
                raise
            except BaseException as exc:
                to_throw, to_send = exc, None

    def auto(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
        with session():
            return (yield from wrapper(wrapped, instance, args, kwargs))

    def wrapper(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
        sess = _session.get()
        if sess is None:
            if not _auto_session():
                return wrapped(*args, **kwargs)
            return auto(wrapped, instance, args, kwargs)
        call = _Call(recorded, sess.id, recorded.bind(instance, args, kwargs))
        gen = wrapped(*args, **kwargs) if call.mock is None else _replayed_sync(call.mock.chunks())
        return drive(call, gen)

    return wrapper


def _asyncgen_wrapper(recorded: _Recorded) -> Callable[..., Any]:
    async def drive(call: _Call, agen: Any) -> Any:
        stream = _Stream(call)
        to_send: Any = None
        to_throw: BaseException | None = None
        while True:
            token = _span.set(call.span)
            try:
                if to_throw is not None:
                    exc, to_throw = to_throw, None
                    item = await agen.athrow(exc)
                else:
                    item = await agen.asend(to_send)
            except StopAsyncIteration:
                _span.reset(token)
                stream.end(complete=True)
                return
            except BaseException as exc:
                _span.reset(token)
                call.fail(exc)
                raise
            _span.reset(token)
            stream.add(item)
            try:
                to_send = yield item
            except GeneratorExit:
                stream.end(complete=False)
                await agen.aclose()
                raise
            except BaseException as exc:
                to_throw, to_send = exc, None

    async def auto(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
        async with session():
            agen = wrapper(wrapped, instance, args, kwargs)
            try:
                async for item in agen:
                    yield item
            finally:
                await agen.aclose()

    def wrapper(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
        sess = _session.get()
        if sess is None:
            if not _auto_session():
                return wrapped(*args, **kwargs)
            return auto(wrapped, instance, args, kwargs)
        call = _Call(recorded, sess.id, recorded.bind(instance, args, kwargs))
        agen = wrapped(*args, **kwargs) if call.mock is None else _replayed(call.mock.chunks())
        return drive(call, agen)

    return wrapper


async def _replayed(chunks: list[Any]) -> Any:
    for chunk in chunks:
        yield chunk


def _replayed_sync(chunks: list[Any]) -> Any:
    yield from chunks


class _Stream:
    """Collects a generator's items and emits the call's events around them."""

    __slots__ = ("call", "chunks", "first_ms")

    def __init__(self, call: _Call) -> None:
        self.call = call
        self.chunks: list[Any] = []
        self.first_ms: float | None = None
        call.start()

    def add(self, item: Any) -> None:
        if self.first_ms is None:
            self.first_ms = (_perf() - self.call.t0) * 1000
        if self.call.recorded.capture_result:
            self.chunks.append(item)

    def end(self, complete: bool) -> None:
        chunks = self.chunks
        result: Any = chunks
        extra: dict[str, Any] = {}
        if chunks and all(isinstance(c, str) for c in chunks):
            result = "".join(chunks)
            # Where the joined text splits back into chunks: replay streams the same chunks.
            extra["chunk_lengths"] = [len(c) for c in chunks]
        elif not self.call.recorded.capture_result:
            result = None
        extra["chunks"] = len(chunks)
        extra["time_to_first_chunk_ms"] = self.first_ms
        extra["status"] = "complete" if complete else "incomplete"
        self.call.succeed(result, extra)


_DISPATCH = (
    (inspect.isasyncgenfunction, _asyncgen_wrapper),
    (inspect.iscoroutinefunction, _async_wrapper),
    (inspect.isgeneratorfunction, _gen_wrapper),
)


class _PlainFunctionWrapper(wrapt.FunctionWrapper):
    """A ``FunctionWrapper`` for a plain function, called directly.

    wrapt's own ``__call__`` first looks up ``__self__`` on the wrapped
    function, in case it is a bound method; on a plain function that raises
    and clears an AttributeError on every call, about 0.35 µs. A plain
    function has no ``__self__``, so the outcome is known: no instance.
    Methods are unaffected: wrapt binds them through ``__get__`` into a
    ``BoundFunctionWrapper``, which has its own ``__call__``.
    """

    def __call__(self, /, *args: Any, **kwargs: Any) -> Any:
        return self._self_wrapper(self.__wrapped__, None, args, kwargs)


def _decorate(func: Any, recorded_for: Callable[[Callable[..., Any]], _Recorded]) -> Any:
    target = func.__func__ if isinstance(func, (classmethod, staticmethod)) else func
    if not callable(target):
        raise TypeError(f"agent_trace decorators wrap functions, got {type(func).__name__}")
    recorded = recorded_for(target)
    make = _sync_wrapper
    for test, maker in _DISPATCH:
        if test(target):
            make = maker
            break
    plain = type(func) is types.FunctionType and "__self__" not in func.__dict__
    wrapper_type = _PlainFunctionWrapper if plain else wrapt.FunctionWrapper
    return wrapper_type(func, make(recorded))


# --- the three kinds -----------------------------------------------------------


def _llm_fields(recorded: _Recorded, args: dict[str, Any]) -> dict[str, Any]:
    model = recorded.model
    if model is None:
        arg_model = args.get("model")
        model = arg_model if isinstance(arg_model, str) else None
    return {"model": model}


def _llm_outcome(recorded: _Recorded, args: dict[str, Any], result: Any) -> dict[str, Any]:
    usage = None
    if recorded.usage is not None:
        try:
            usage = recorded.usage(result)
        except Exception:  # a user's usage= callable must not break the agent
            usage = None
    # An SDK response object (pydantic) becomes its JSON once, here: reading
    # usage from a dict costs less than probing the model's attributes (each
    # miss raises inside pydantic), and capture writes the same bytes.
    dump = getattr(result, "model_dump", None)
    if callable(dump) and not isinstance(result, type):
        # Not pydantic's model_dump (other arguments): capture decides.
        with contextlib.suppress(Exception):
            result = dump(mode="json", warnings=False)
    source = result
    if isinstance(result, list):  # streamed chunks: usage comes on the last ones
        source = next((item for item in reversed(result) if usage_of(item)), None)
    fields = {"response": result, **response_fields(source)}
    if usage is not None:
        fields["usage"] = dict(usage)
    return fields


def _decision_outcome(recorded: _Recorded, args: dict[str, Any], result: Any) -> dict[str, Any]:
    if isinstance(result, Mapping):
        reasoning = result.get("reasoning")
    else:
        reasoning = getattr(result, "reasoning", None)
    return {
        "args": args if recorded.capture_args else None,
        "choice": result,
        "reasoning": reasoning,
    }


TOOL = CallKind("tool", "tool_started", "tool_executed", "tool_failed", "tool", None, "result")
LLM = CallKind(
    "llm", "llm_started", "llm_responded", "llm_failed", "name", _llm_fields, _llm_outcome
)
DECISION = CallKind(
    "decision", None, "decision_made", "decision_failed", "decision", None, _decision_outcome
)


def extract_usage(response: Any) -> dict[str, int]:
    """Token usage from an OpenAI, Anthropic or ``{"usage": {...}}`` shaped response.

    ``input_tokens`` counts cached prompt tokens too; ``cache_read_tokens``,
    ``cache_write_tokens`` and ``reasoning_tokens`` appear when reported
    (see ``agent_trace.llm``).
    """
    return usage_of(response)


# --- calls recorded by name (the SDK integrations) -------------------------------

_named: dict[tuple[str, str, frozenset[str], frozenset[str]], _Recorded] = {}


def start_call(
    kind: CallKind,
    name: str,
    args: dict[str, Any],
    fields: dict[str, Any] | None = None,
    *,
    redact: Iterable[str] = (),
    ignore: Iterable[str] = (),
) -> _Call | None:
    """Begin a recorded call that no decorated function stands for; None outside a session.

    For integrations that see a call through a framework's hook. ``fields`` go
    into every event of the call (e.g. ``provider`` and ``model``). Under
    replay the returned call's ``mock`` holds the recorded outcome to serve;
    ``ignore`` names arg keys (at any depth) whose values replay does not
    compare, such as a framework's per-run ids.
    The caller emits the started event with ``start()`` and ends the call
    with ``succeed``/``fail``; the call's span is ``call.span``.
    """
    sess = _session.get()
    if sess is None:
        return None
    key = (kind.label, name, frozenset(redact), frozenset(ignore))
    recorded = _named.get(key)
    if recorded is None:
        recorded = _named[key] = _Recorded(None, kind, name, True, True, redact, ignore=ignore)
    return _Call(recorded, sess.id, args, fields)


# --- public decorators ---------------------------------------------------------


def _make(kind: CallKind, **kind_opts: Any) -> Callable[[F], F]:
    def decorator(func: F) -> F:
        return _decorate(func, lambda target: _Recorded(target, kind, **kind_opts))

    return decorator


@overload
def record_tool(func: F, /) -> F: ...
@overload
def record_tool(
    *,
    name: str | None = None,
    capture_args: bool = True,
    capture_result: bool = True,
    redact: Iterable[str] = (),
    exclude_args: Iterable[str] = (),
) -> Callable[[F], F]: ...
def record_tool(
    func: Any = None,
    /,
    *,
    name: str | None = None,
    capture_args: bool = True,
    capture_result: bool = True,
    redact: Iterable[str] = (),
    exclude_args: Iterable[str] = (),
) -> Any:
    """Record each call as ``tool_started`` then ``tool_executed`` or ``tool_failed``.

    ``exclude_args=("db", ...)``: those arguments are neither recorded nor
    compared in replay (clients, connections, framework context objects)."""
    deco = _make(
        TOOL,
        name=name,
        capture_args=capture_args,
        capture_result=capture_result,
        redact=redact,
        exclude_args=exclude_args,
    )
    return deco if func is None else deco(func)


@overload
def record_decision(func: F, /) -> F: ...
@overload
def record_decision(
    *,
    name: str | None = None,
    capture_args: bool = True,
    capture_result: bool = True,
    redact: Iterable[str] = (),
    exclude_args: Iterable[str] = (),
) -> Callable[[F], F]: ...
def record_decision(
    func: Any = None,
    /,
    *,
    name: str | None = None,
    capture_args: bool = True,
    capture_result: bool = True,
    redact: Iterable[str] = (),
    exclude_args: Iterable[str] = (),
) -> Any:
    """Record each call as one ``decision_made`` (choice = the return value) or
    ``decision_failed``. ``reasoning`` is taken from the result's ``reasoning``
    key or attribute when it has one."""
    deco = _make(
        DECISION,
        name=name,
        capture_args=capture_args,
        capture_result=capture_result,
        redact=redact,
        exclude_args=exclude_args,
    )
    return deco if func is None else deco(func)


@overload
def record_llm(func: F, /) -> F: ...
@overload
def record_llm(
    *,
    name: str | None = None,
    model: str | None = None,
    usage: Callable[[Any], Mapping[str, Any] | None] | None = None,
    capture_args: bool = True,
    capture_result: bool = True,
    redact: Iterable[str] = (),
    exclude_args: Iterable[str] = (),
) -> Callable[[F], F]: ...
def record_llm(
    func: Any = None,
    /,
    *,
    name: str | None = None,
    model: str | None = None,
    usage: Callable[[Any], Mapping[str, Any] | None] | None = None,
    capture_args: bool = True,
    capture_result: bool = True,
    redact: Iterable[str] = (),
    exclude_args: Iterable[str] = (),
) -> Any:
    """Record each call as ``llm_started`` then ``llm_responded`` (with ``usage``)
    or ``llm_failed``. Async generators are recorded as one streamed response."""
    deco = _make(
        LLM,
        name=name,
        model=model,
        usage=usage,
        capture_args=capture_args,
        capture_result=capture_result,
        redact=redact,
        exclude_args=exclude_args,
    )
    return deco if func is None else deco(func)


def _error_text(exc: BaseException) -> str:
    try:
        return str(exc)[:2000]
    except Exception:
        return "<str() failed>"
