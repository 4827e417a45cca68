"""The ``agent-trace ui`` web application (Starlette): pages, a JSON API, optional OTLP in.

``create_app(store)`` builds the ASGI app. At startup a task follows the
store's global log into a ``SessionIndex`` (``index.py``); the list and stats
answer from it, a session page reads that session's events
(``get_events``), and a comparison diffs two sessions with
``agent_trace.replay.diff_sessions``.

Read-only: a SQLite store is opened with ``mode=ro``; no route appends,
except ``POST /v1/traces`` when ``otlp=True`` (OTLP/HTTP ingest through
``agent_trace.otlp_ingest``, into a separate, writable store object; spans
that are not GenAI spans are accepted, ignored and counted).

Routes (``GET`` unless said): ``/`` sessions, ``/sessions/{id}`` one
session (the HTML timeline), ``/compare?a=&b=``, ``/stats``;
``/api/sessions``, ``/api/sessions/{id}``,
``/api/sessions/{id}/events/{version}``, ``/api/compare``, ``/api/stats``,
``/api/changes`` (what the live pages poll); ``/static/…``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import logging
import zlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from agent_trace.events import AgentEvent
from agent_trace.replay import decision_points, diff_sessions
from agent_trace.stores.base import EventStore, mask_url
from agent_trace.timeline import render_html, timeline_data
from agent_trace.ui import pages
from agent_trace.ui.index import Query, SessionIndex

__all__ = ["create_app", "read_only_store"]

log = logging.getLogger("agent_trace.ui")

STATIC = Path(__file__).resolve().parent / "static"
OTLP_TYPES = ("application/x-protobuf", "application/json")
# The pages load only from this server (no CDN, fonts or analytics); style
# attributes draw the per-day bars.
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; form-action 'self'; base-uri 'none'; "
    "frame-ancestors 'none'"
)


def read_only_store(url: str) -> EventStore:
    """The store at ``url`` for reading: SQLite opened with ``mode=ro``, others as they are."""
    from agent_trace.stores import SQLiteStore, open_store

    store = open_store(url)
    if isinstance(store, SQLiteStore) and store.path != ":memory:":
        return SQLiteStore(store.path, busy_timeout_ms=store.busy_timeout_ms, read_only=True)
    return store


class _JSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, default=str)


class _Page(HTMLResponse):
    def __init__(self, content: str, status_code: int = 200) -> None:
        super().__init__(content, status_code, headers={"Content-Security-Policy": _CSP})


def create_app(
    store: EventStore | str,
    *,
    otlp: bool = False,
    allowed_hosts: Sequence[str] | None = None,
    poll_interval: float = 0.5,
) -> Starlette:
    """The UI for ``store`` (a store object, or a URL opened read-only).

    ``otlp=True`` adds ``POST /v1/traces``, writing into the same URL through
    a second, writable store (or into the given store object).
    ``allowed_hosts``: accepted ``Host`` headers (a guard against DNS
    rebinding when serving on loopback); None accepts any.
    """
    if isinstance(store, str):
        url = store
        reader = read_only_store(url)
        writer: EventStore | None = None
        if otlp:
            from agent_trace.stores import open_store

            # A read-only SQLite connection cannot append: ingest gets its own.
            writer = open_store(url) if getattr(reader, "read_only", False) else reader
        owned = list({id(s): s for s in (reader, writer) if s is not None}.values())
    else:
        url = repr(store)
        reader, writer, owned = store, (store if otlp else None), []
    index = SessionIndex()
    store_name = mask_url(url)
    # What POST /v1/traces took in: spans that are not GenAI spans are accepted and counted.
    otlp_counts = {"requests": 0, "spans": 0, "ignored_spans": 0, "events": 0} if otlp else None
    stop = asyncio.Event()
    wake = asyncio.Event()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        task = asyncio.create_task(index.follow(reader, stop, poll_interval, wake=wake))
        try:
            yield
        finally:
            stop.set()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            for s in owned:
                with contextlib.suppress(Exception):
                    await s.close()

    # --- pages ----------------------------------------------------------------

    def bad_request(message: str, api: bool) -> Response:
        if api:
            return _JSON({"error": message}, status_code=400)
        return _Page(pages.error_page(index, store_name, "Bad request", message), 400)

    async def sessions_page(request: Request) -> Response:
        try:
            query = Query.from_params(request.query_params)
        except ValueError as exc:
            return bad_request(str(exc), api=False)
        return _Page(pages.sessions_page(index, query, store_name))

    async def load(session_id: str) -> list[AgentEvent]:
        return await reader.get_events(session_id)

    def not_found(session_id: str, api: bool) -> Response:
        near = index.near(session_id)
        message = f"No session {session_id!r} in {store_name}."
        if api:
            return _JSON({"error": message, "near": near}, status_code=404)
        page = pages.error_page(index, store_name, "Session not found", message, near)
        return _Page(page, 404)

    async def session_page(request: Request) -> Response:
        session_id = request.path_params["session_id"]
        events = await load(session_id)
        if not events:
            return not_found(session_id, api=False)
        doc = render_html(events, nav_html=pages.session_nav(session_id))
        return HTMLResponse(doc)  # the timeline carries its own CSP (inline, no network)

    async def compare_page(request: Request) -> Response:
        params = request.query_params
        picked = params.getlist("s")
        if len(picked) == 2 and not params.get("a"):  # the list's "compare selected" form
            return RedirectResponse(
                f"/compare?a={quote(picked[0], safe='')}&b={quote(picked[1], safe='')}",
                status_code=303,
            )
        a, b = (params.get("a") or "").strip(), (params.get("b") or "").strip()
        if not a or not b:
            return _Page(pages.compare_page(index, store_name, a, b))
        result = await compare(a, b)
        if isinstance(result, str):
            return not_found(result, api=False)
        events_a, events_b, diff = result
        doc = pages.compare_page(
            index,
            store_name,
            a,
            b,
            (index.rows.get(a), index.rows.get(b)),
            (decision_points(events_a), decision_points(events_b)),
            diff,
        )
        return _Page(doc)

    async def compare(a: str, b: str) -> str | tuple[list[AgentEvent], list[AgentEvent], Any]:
        """Both sessions' events and their diff, or the id of one that does not exist."""
        events_a, events_b = await load(a), await load(b)
        if not events_a:
            return a
        if not events_b:
            return b
        return events_a, events_b, await diff_sessions(events_a, events_b)

    async def stats_page(request: Request) -> Response:
        return _Page(pages.stats_page(index, store_name, otlp_counts))

    # --- JSON API -----------------------------------------------------------------

    async def api_sessions(request: Request) -> Response:
        try:
            query = Query.from_params(request.query_params)
        except ValueError as exc:
            return bad_request(str(exc), api=True)
        total, rows = index.sessions(query)
        return _JSON(
            {
                "total": total,
                "page": query.page,
                "per_page": query.per_page,
                "pages": max((total + query.per_page - 1) // query.per_page, 1),
                "sessions": [r.to_dict() for r in rows],
                "index": index.status(),
            }
        )

    async def api_session(request: Request) -> Response:
        session_id = request.path_params["session_id"]
        events = await load(session_id)
        if not events:
            return not_found(session_id, api=True)
        return _JSON(timeline_data(events))

    async def api_event(request: Request) -> Response:
        session_id = request.path_params["session_id"]
        version = request.path_params["version"]
        events = await reader.get_events(session_id, after_version=version - 1)
        if not events or events[0].version != version:
            message = f"No event v{version} in session {session_id!r}."
            return _JSON({"error": message}, status_code=404)
        return _JSON(events[0].to_dict())

    async def api_compare(request: Request) -> Response:
        a = (request.query_params.get("a") or "").strip()
        b = (request.query_params.get("b") or "").strip()
        if not a or not b:
            return bad_request("give two sessions: ?a=ID&b=ID", api=True)
        result = await compare(a, b)
        if isinstance(result, str):
            return not_found(result, api=True)
        events_a, events_b, diff = result

        def point(p: Any) -> dict[str, Any] | None:
            if p is None:
                return None
            return {
                "kind": p.kind,
                "name": p.name,
                "field": p.field,
                "value": p.value,
                "version": p.version,
            }

        return _JSON(
            {
                "a": a,
                "b": b,
                "diverged": bool(diff),
                "first_divergence": None
                if not diff
                else {
                    "index": diff.index,
                    "reason": diff.reason,
                    "a": point(diff.expected),
                    "b": point(diff.actual),
                },
                "compared": diff.compared,
                "text": diff.render(),
                "points_a": [point(p) for p in decision_points(events_a)],
                "points_b": [point(p) for p in decision_points(events_b)],
            }
        )

    async def api_stats(request: Request) -> Response:
        return _JSON({**index.stats(), "otlp": otlp_counts})

    async def api_changes(request: Request) -> Response:
        return _JSON({**index.status(), "otlp": otlp_counts})

    # --- OTLP/HTTP in (the only route that writes) --------------------------------------

    async def otlp_traces(request: Request) -> Response:
        assert writer is not None
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype not in OTLP_TYPES:
            return Response(
                f"unsupported content type {ctype or '(none)'!r}: OTLP/HTTP takes "
                "application/x-protobuf or application/json\n",
                status_code=415,
                media_type="text/plain",
            )
        body = await request.body()
        encoding = request.headers.get("content-encoding", "").strip().lower()
        try:
            if encoding == "gzip":
                body = gzip.decompress(body)
            elif encoding == "deflate":
                body = zlib.decompress(body)
            elif encoding not in ("", "identity"):
                raise ValueError(f"unsupported content-encoding {encoding!r} (use gzip)")
        except (OSError, zlib.error, EOFError, ValueError) as exc:
            return _otlp_error(ctype, 400, f"cannot decode the request body: {exc}")
        from agent_trace.otlp_ingest import ingest_otlp_request

        try:
            batch = await ingest_otlp_request(body, ctype, writer)
        except ValueError as exc:
            return _otlp_error(ctype, 400, f"bad OTLP payload: {exc}")
        assert otlp_counts is not None
        otlp_counts["requests"] += 1
        otlp_counts["spans"] += batch.spans
        otlp_counts["ignored_spans"] += batch.ignored
        otlp_counts["events"] += batch.written
        if batch.written:
            wake.set()  # the index picks the new events up now, not at its next poll
        # An ExportTraceServiceResponse with nothing rejected: empty in both encodings.
        if ctype == "application/json":
            return Response(b"{}", media_type="application/json")
        return Response(b"", media_type="application/x-protobuf")

    routes = [
        Route("/", sessions_page),
        Route("/sessions/{session_id:path}", session_page),
        Route("/compare", compare_page),
        Route("/stats", stats_page),
        Route("/api/sessions", api_sessions),
        Route("/api/sessions/{session_id:path}/events/{version:int}", api_event),
        Route("/api/sessions/{session_id:path}", api_session),
        Route("/api/compare", api_compare),
        Route("/api/stats", api_stats),
        Route("/api/changes", api_changes),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    if otlp:
        routes.append(Route("/v1/traces", otlp_traces, methods=["POST"]))
    middleware = []
    if allowed_hosts is not None:
        middleware.append(Middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts)))
    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan)
    app.state.index = index
    app.state.store = reader
    app.state.writer = writer
    return app


def _otlp_error(ctype: str, status: int, message: str) -> Response:
    """An OTLP/HTTP error: a ``google.rpc.Status`` in the request's encoding."""
    code = 3 if status == 400 else 12  # INVALID_ARGUMENT, UNIMPLEMENTED
    if ctype == "application/json":
        return _JSON({"code": code, "message": message}, status_code=status)
    text = message.encode()
    body = b"\x08" + _varint(code) + b"\x12" + _varint(len(text)) + text
    return Response(body, status_code=status, media_type="application/x-protobuf")


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)
