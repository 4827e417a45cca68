"""Record an LLM SDK stream as the caller consumes it.

A proxy (``wrapt.ObjectProxy``) stands in for the SDK's stream object: the
caller still sees the SDK's own type (``isinstance`` holds, every attribute
and method is the SDK's), each chunk is handed on the moment the SDK yields
it, nothing is read ahead. On the side, each chunk goes to an assembler that
rebuilds the non-streaming response; when the stream ends, the call's
``llm_responded`` is emitted with that response, ``stream: true``,
``chunks``, ``time_to_first_chunk_ms`` and ``status`` (``complete``, or
``incomplete`` when the consumer closed it, left a ``with`` block or dropped
it before the end). An error raised by the stream is recorded as
``llm_failed`` and re-raised unchanged.

Never raises into agent code from the recording side.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any, Protocol

import wrapt

from agent_trace.llm import (
    AnthropicStreamAssembler,
    ChatStreamAssembler,
    ResponsesStreamAssembler,
)

__all__ = [
    "AsyncRecordedMessageStream",
    "AsyncRecordedStream",
    "AsyncRecordedStreamManager",
    "RecordedMessageStream",
    "RecordedStream",
    "RecordedStreamManager",
    "StreamRecording",
    "auto_assembler",
    "record_sdk_stream",
]

_perf = time.perf_counter


class Assembler(Protocol):
    def add(self, chunk: Any) -> None: ...
    def response(self) -> Any: ...


class _Call(Protocol):
    """What a stream needs of a recorded call (``decorators._Call``)."""

    t0: float

    def succeed(self, result: Any, extra: dict[str, Any] | None = None) -> int: ...
    def fail(self, exc: BaseException, extra: dict[str, Any] | None = None) -> int: ...
    def wait(self, n: int) -> None: ...
    async def await_durable(self, n: int) -> None: ...


class _AutoAssembler:
    """Picks the assembler from the first chunk's shape (for ``@record_llm`` results)."""

    def __init__(self) -> None:
        self.inner: Assembler | None = None

    def add(self, chunk: Any) -> None:
        if self.inner is None:
            kind = getattr(chunk, "type", None)
            if getattr(chunk, "object", None) == "chat.completion.chunk":
                self.inner = ChatStreamAssembler()
            elif isinstance(kind, str) and kind.startswith("response."):
                self.inner = ResponsesStreamAssembler()
            elif isinstance(kind, str) and kind.startswith(("message_", "content_block_", "ping")):
                self.inner = AnthropicStreamAssembler()
            else:
                return
        self.inner.add(chunk)

    def response(self) -> Any:
        return None if self.inner is None else self.inner.response()


def auto_assembler() -> Assembler:
    return _AutoAssembler()


class StreamRecording:
    """The recording side of one stream: counts, times, assembles, emits once."""

    __slots__ = ("assembler", "call", "chunks", "done", "final", "first_ms")

    def __init__(self, call: _Call, assembler: Assembler, final: Any = None) -> None:
        self.call = call
        self.assembler = assembler
        self.chunks = 0
        self.first_ms: float | None = None
        self.done = False
        # For the Anthropic helper: () -> the SDK's own accumulated Message.
        self.final = final

    def observe(self, chunk: Any) -> None:
        if self.first_ms is None:
            self.first_ms = (_perf() - self.call.t0) * 1000
        self.chunks += 1
        # An unexpected chunk shape must not break the agent.
        with contextlib.suppress(Exception):
            self.assembler.add(chunk)

    def finish(self, complete: bool) -> int:
        """Emit ``llm_responded`` (once); returns the event count to wait for."""
        if self.done:
            return 0
        self.done = True
        response: Any = None
        try:
            response = self.final() if self.final is not None else self.assembler.response()
        except Exception:
            response = self.assembler.response() if self.final is not None else None
        extra = {
            "stream": True,
            "chunks": self.chunks,
            "time_to_first_chunk_ms": self.first_ms,
            "status": "complete" if complete else "incomplete",
        }
        return self.call.succeed(response, extra)

    def fail(self, exc: BaseException) -> int:
        if self.done:
            return 0
        self.done = True
        return self.call.fail(exc, failure_fields(exc))


def failure_fields(exc: BaseException) -> dict[str, Any]:
    """``status_code`` (and the error body) of an SDK's HTTP error, for ``llm_failed``."""
    status = getattr(exc, "status_code", None)
    if not isinstance(status, int):
        return {}
    fields: dict[str, Any] = {"status_code": status}
    body = getattr(exc, "body", None)
    if body is not None:
        fields["error_body"] = body
    return fields


class RecordedStream(wrapt.ObjectProxy):  # type: ignore[type-arg,misc,unused-ignore]
    """A synchronous SDK stream (``openai.Stream``, ``anthropic.Stream``), recorded."""

    def __init__(self, stream: Any, recording: StreamRecording) -> None:
        super().__init__(stream)
        self._self_recording = recording

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        rec = self._self_recording
        try:
            item = self.__wrapped__.__next__()
        except StopIteration:
            rec.call.wait(rec.finish(complete=True))
            raise
        except BaseException as exc:
            rec.call.wait(rec.fail(exc))
            raise
        rec.observe(item)
        return item

    def __enter__(self) -> Any:
        self.__wrapped__.__enter__()
        return self

    def __exit__(self, *exc_info: Any) -> Any:
        try:
            return self.__wrapped__.__exit__(*exc_info)
        finally:
            self._self_recording.finish(complete=False)

    def close(self) -> Any:
        try:
            return self.__wrapped__.close()
        finally:
            self._self_recording.finish(complete=False)

    def __del__(self) -> None:
        recording = getattr(self, "_self_recording", None)
        if recording is not None and not recording.done:
            # Dropped unfinished (a `break` without close()); at interpreter
            # shutdown the recorder may be gone: never raise from a finalizer.
            with contextlib.suppress(Exception):
                recording.finish(complete=False)


class AsyncRecordedStream(wrapt.ObjectProxy):  # type: ignore[type-arg,misc,unused-ignore]
    """An asynchronous SDK stream (``openai.AsyncStream``, ...), recorded."""

    def __init__(self, stream: Any, recording: StreamRecording) -> None:
        super().__init__(stream)
        self._self_recording = recording

    def __aiter__(self) -> AsyncIterator[Any]:
        return self

    async def __anext__(self) -> Any:
        rec = self._self_recording
        try:
            item = await self.__wrapped__.__anext__()
        except StopAsyncIteration:
            await rec.call.await_durable(rec.finish(complete=True))
            raise
        except BaseException as exc:
            n = rec.fail(exc)
            if isinstance(exc, Exception):
                await rec.call.await_durable(n)
            raise
        rec.observe(item)
        return item

    async def __aenter__(self) -> Any:
        await self.__wrapped__.__aenter__()
        return self

    async def __aexit__(self, *exc_info: Any) -> Any:
        try:
            return await self.__wrapped__.__aexit__(*exc_info)
        finally:
            self._self_recording.finish(complete=False)

    async def close(self) -> Any:
        try:
            return await self.__wrapped__.close()
        finally:
            self._self_recording.finish(complete=False)

    def __del__(self) -> None:
        recording = getattr(self, "_self_recording", None)
        if recording is not None and not recording.done:
            # Dropped unfinished (a `break` without close()); at interpreter
            # shutdown the recorder may be gone: never raise from a finalizer.
            with contextlib.suppress(Exception):
                recording.finish(complete=False)


# --- Anthropic's messages.stream() helper ---------------------------------------


class RecordedMessageStream(RecordedStream):
    """Anthropic's ``MessageStream``: its ``text_stream`` and ``get_final_*`` read through us.

    The SDK's own helpers iterate the stream object itself, which would
    bypass the proxy; the few lines below re-express them over the proxy.
    """

    @property
    def text_stream(self) -> Iterator[str]:
        return _text_of(self)

    def until_done(self) -> None:
        for _ in self:
            pass

    def get_final_message(self) -> Any:
        self.until_done()
        return self.__wrapped__.get_final_message()

    def get_final_text(self) -> str:
        self.until_done()
        return str(self.__wrapped__.get_final_text())


def _text_of(stream: Iterator[Any]) -> Iterator[str]:
    for event in stream:
        if event.type == "content_block_delta" and event.delta.type == "text_delta":
            yield event.delta.text


class AsyncRecordedMessageStream(AsyncRecordedStream):
    """Anthropic's ``AsyncMessageStream``, as ``RecordedMessageStream``."""

    @property
    def text_stream(self) -> AsyncIterator[str]:
        return _atext_of(self)

    async def until_done(self) -> None:
        async for _ in self:
            pass

    async def get_final_message(self) -> Any:
        await self.until_done()
        return await self.__wrapped__.get_final_message()

    async def get_final_text(self) -> str:
        await self.until_done()
        return str(await self.__wrapped__.get_final_text())


async def _atext_of(stream: AsyncIterator[Any]) -> AsyncIterator[str]:
    async for event in stream:
        if event.type == "content_block_delta" and event.delta.type == "text_delta":
            yield event.delta.text


def _snapshot(stream: Any) -> Any:
    return lambda: stream.current_message_snapshot


class RecordedStreamManager(wrapt.ObjectProxy):  # type: ignore[type-arg,misc,unused-ignore]
    """Anthropic's ``MessageStreamManager``: ``with`` yields a recorded ``MessageStream``."""

    def __init__(self, manager: Any, call: _Call) -> None:
        super().__init__(manager)
        self._self_call = call
        self._self_recording: StreamRecording | None = None

    def __enter__(self) -> Any:
        call = self._self_call
        try:
            stream = self.__wrapped__.__enter__()
        except BaseException as exc:
            call.wait(call.fail(exc, failure_fields(exc)))
            raise
        recording = StreamRecording(call, AnthropicStreamAssembler(), _snapshot(stream))
        self._self_recording = recording
        return RecordedMessageStream(stream, recording)

    def __exit__(self, *exc_info: Any) -> Any:
        try:
            return self.__wrapped__.__exit__(*exc_info)
        finally:
            if self._self_recording is not None:
                self._self_recording.finish(complete=False)


class AsyncRecordedStreamManager(wrapt.ObjectProxy):  # type: ignore[type-arg,misc,unused-ignore]
    """Anthropic's ``AsyncMessageStreamManager``, as ``RecordedStreamManager``."""

    def __init__(self, manager: Any, call: _Call) -> None:
        super().__init__(manager)
        self._self_call = call
        self._self_recording: StreamRecording | None = None

    async def __aenter__(self) -> Any:
        call = self._self_call
        try:
            stream = await self.__wrapped__.__aenter__()
        except BaseException as exc:
            n = call.fail(exc, failure_fields(exc))
            if isinstance(exc, Exception):
                await call.await_durable(n)
            raise
        recording = StreamRecording(call, AnthropicStreamAssembler(), _snapshot(stream))
        self._self_recording = recording
        return AsyncRecordedMessageStream(stream, recording)

    async def __aexit__(self, *exc_info: Any) -> Any:
        try:
            return await self.__wrapped__.__aexit__(*exc_info)
        finally:
            if self._self_recording is not None:
                self._self_recording.finish(complete=False)


# --- streams returned by @record_llm functions ------------------------------------

_SDK_STREAMS = (
    ("openai", ("Stream",), ("AsyncStream",)),
    ("anthropic", ("Stream",), ("AsyncStream",)),
)
_ANTHROPIC_MANAGERS = ("MessageStreamManager", "AsyncMessageStreamManager")


def record_sdk_stream(call: _Call, result: Any) -> Any | None:
    """A recording proxy for an SDK stream object ``result``, or None if it is not one.

    Looks only at SDKs already imported: a result cannot be an instance of a
    class whose module was never loaded.
    """
    for module_name, sync_names, async_names in _SDK_STREAMS:
        module = sys.modules.get(module_name)
        if module is None:
            continue
        for name in sync_names:
            cls = getattr(module, name, None)
            if isinstance(cls, type) and isinstance(result, cls):
                return RecordedStream(result, StreamRecording(call, auto_assembler()))
        for name in async_names:
            cls = getattr(module, name, None)
            if isinstance(cls, type) and isinstance(result, cls):
                return AsyncRecordedStream(result, StreamRecording(call, auto_assembler()))
    streaming = sys.modules.get("anthropic.lib.streaming")
    if streaming is not None:
        if isinstance(result, getattr(streaming, _ANTHROPIC_MANAGERS[0])):
            return RecordedStreamManager(result, call)
        if isinstance(result, getattr(streaming, _ANTHROPIC_MANAGERS[1])):
            return AsyncRecordedStreamManager(result, call)
    return None
