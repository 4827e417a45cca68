"""``agent-trace ui``: a local web UI over a store (extra ``ui``: Starlette and uvicorn).

Sessions (search, sort, pages, live), one session's timeline with payloads,
two sessions side by side with the first divergence marked, and stats.
``create_app`` builds the ASGI app (``app.py``), ``serve`` runs it with
uvicorn. Binds to loopback unless told otherwise; reads the store only
(SQLite opened read-only); with ``otlp=True`` it also takes OTLP/HTTP traces
on ``POST /v1/traces``, the one route that writes.

Nothing here is imported by ``import agent_trace``.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from agent_trace.stores.base import EventStore

__all__ = ["bind", "create_app", "is_loopback", "serve"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 6006


def create_app(
    store: EventStore | str,
    *,
    otlp: bool = False,
    allowed_hosts: Sequence[str] | None = None,
    poll_interval: float = 0.5,
) -> Starlette:
    """The UI's ASGI app for a store object or URL (see ``agent_trace.ui.app``)."""
    from agent_trace.ui.app import create_app as build

    return build(store, otlp=otlp, allowed_hosts=allowed_hosts, poll_interval=poll_interval)


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bind(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: any free port); ``OSError`` if taken."""
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]"), port))
        sock.listen(128)
    except BaseException:
        sock.close()
        raise
    return sock


def serve(
    store: EventStore | str,
    sock: socket.socket,
    *,
    otlp: bool = False,
    log_level: str = "warning",
) -> None:
    """Serve the UI on a socket from :func:`bind` until interrupted (Ctrl-C).

    On loopback only loopback ``Host`` headers are answered, so a web page
    elsewhere cannot reach the UI through DNS rebinding.
    """
    import uvicorn

    host, port = sock.getsockname()[:2]
    allowed = ["127.0.0.1", "localhost", "::1", "[::1]"] if is_loopback(host) else None
    app = create_app(store, otlp=otlp, allowed_hosts=allowed)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=2,
    )
    uvicorn.Server(config).run(sockets=[sock])
