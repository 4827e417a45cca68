"""Process-wide settings: which store, how durable, how much to buffer.

``configure()`` replaces the settings; the recorder reads them when it
starts and switches stores after flushing what the old one was owed.
Reading the environment (``AGENT_TRACE_STORE``, ``AGENT_TRACE_WRITER_PROCESS``)
happens on first use, not at import, so a test or a script can set it late.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any, Literal

from agent_trace.capture import DEFAULT_MAX_EVENT_BYTES, DEFAULT_REDACT_KEYS, CaptureOptions
from agent_trace.prices import parse_prices
from agent_trace.spill import DEFAULT_SPILL_PATH

if TYPE_CHECKING:
    from agent_trace.events import AgentEvent
    from agent_trace.stores.base import EventStore

__all__ = ["DEFAULT_STORE_URL", "Settings", "configure", "get_settings"]

DEFAULT_STORE_URL = "sqlite:///agent_trace.db"
Durability = Literal["batched", "immediate"]
WriterProcessMode = Literal["auto", "always", "never"]
_WRITER_PROCESS_MODES = ("auto", "always", "never")


@dataclass(frozen=True)
class Settings:
    """Everything ``configure()`` accepts. Defaults suit a production agent."""

    store: str | EventStore = DEFAULT_STORE_URL
    durability: Durability = "batched"
    max_buffer: int = 100_000
    batch_size: int = 5_000
    #: Seconds an event may wait in memory for others to share its batch's
    #: transaction. flush(), a session's end, a full batch and
    #: durability="immediate" never wait for it.
    flush_interval: float = 0.05
    flush_on_session_end: bool = True
    flush_timeout: float = 30.0
    exit_timeout: float = 10.0
    auto_session: bool = False
    max_value_chars: int = 20_000
    max_depth: int = 32
    max_items: int = 10_000
    redact_keys: frozenset[str] = DEFAULT_REDACT_KEYS
    #: Where batches go while the store stays down (None: keep retrying in
    #: memory only). Relative paths resolve against the current directory.
    spill_path: str | None = DEFAULT_SPILL_PATH
    #: Seconds of failed appends before the recorder starts spilling.
    spill_after: float = 5.0
    #: Flush on SIGTERM (only if the program has no SIGTERM handler of its own).
    handle_sigterm: bool = True
    #: Extra sinks (e.g. ``agent_trace.otel.OTelExporter``): callables given each
    #: batch of events once the store has made it durable.
    sinks: tuple[Callable[[list[AgentEvent]], object], ...] = ()
    #: SQLite file stores only: hand batches to a helper process that hashes
    #: and inserts them on another core. "auto" starts it once the writer
    #: falls a batch behind; "never" keeps all work in this process.
    writer_process: WriterProcessMode = "auto"
    #: USD per million tokens by model, ``{"input": …, "output": …, "cache_read": …,
    #: "cache_write": …}``: overrides or adds to genai-prices (see ``agent_trace.prices``).
    prices: Mapping[str, Any] = field(default_factory=dict)

    # --- secrets and size (SPEC 4) ---
    #: One event's captured payload is cut at about this many bytes, with a marker.
    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES
    #: ``fn(str) -> str`` applied to every captured string (e.g. to hide e-mail
    #: addresses); a mask that raises redacts that value.
    mask: Callable[[str], Any] | None = None

    capture: CaptureOptions = field(default_factory=CaptureOptions, compare=False)

    def __post_init__(self) -> None:
        if self.durability not in ("batched", "immediate"):
            raise ValueError(
                f"durability must be 'batched' or 'immediate', got {self.durability!r}"
            )
        if self.writer_process not in _WRITER_PROCESS_MODES:
            raise ValueError(
                f"writer_process must be one of {', '.join(_WRITER_PROCESS_MODES)}, "
                f"got {self.writer_process!r}"
            )
        for name in ("max_buffer", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.spill_path is not None:
            object.__setattr__(self, "spill_path", os.path.abspath(os.fspath(self.spill_path)))
        for name in ("flush_interval", "flush_timeout", "exit_timeout", "spill_after"):
            if float(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        sinks = tuple(self.sinks)
        for sink in sinks:
            if not callable(sink):
                raise TypeError(f"each sink must be callable with a list of events, got {sink!r}")
        object.__setattr__(self, "sinks", sinks)
        object.__setattr__(self, "prices", parse_prices(self.prices))
        keys = frozenset(k.lower() for k in self.redact_keys)
        object.__setattr__(self, "redact_keys", keys)
        if int(self.max_event_bytes) < 1024:
            raise ValueError(f"max_event_bytes must be >= 1024, got {self.max_event_bytes!r}")
        if self.mask is not None and not callable(self.mask):
            raise TypeError(f"mask must be a callable str -> str, got {self.mask!r}")
        object.__setattr__(
            self,
            "capture",
            CaptureOptions(
                max_value_chars=self.max_value_chars,
                max_depth=self.max_depth,
                max_items=self.max_items,
                redact_keys=keys,
                max_event_bytes=int(self.max_event_bytes),
                mask=self.mask,
            ),
        )


_OPTION_NAMES = frozenset(f.name for f in fields(Settings)) - {"capture"}
_settings: Settings | None = None


def get_settings() -> Settings:
    """The settings in force (built from the environment on first use)."""
    global _settings
    if _settings is None:
        _settings = Settings(
            store=os.environ.get("AGENT_TRACE_STORE") or DEFAULT_STORE_URL,
            writer_process=os.environ.get("AGENT_TRACE_WRITER_PROCESS") or "auto",  # type: ignore[arg-type]
        )
    return _settings


def configure(store: str | EventStore | None = None, **options: Any) -> Settings:
    """Set the process default store and recorder options; returns the settings.

    Options not given keep their current value. Pending events are flushed to
    the previous store before a new store takes over.
    """
    unknown = set(options) - _OPTION_NAMES
    if unknown:
        raise TypeError(
            f"configure() got unknown option(s) {sorted(unknown)}; "
            f"known: {sorted(_OPTION_NAMES - {'store'})}"
        )
    if "redact_keys" in options:
        keys = options["redact_keys"]
        if isinstance(keys, str):
            raise TypeError("redact_keys must be a collection of key names, not a str")
        options["redact_keys"] = frozenset(keys)
    if store is not None:
        options["store"] = store
    new = replace(get_settings(), **options)
    from agent_trace.recorder import get_recorder

    get_recorder().reconfigure(new)
    _set(new)
    return new


def _set(settings: Settings) -> None:
    global _settings
    _settings = settings
