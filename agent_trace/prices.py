"""The cost of an LLM call, derived when read, never stored.

Prices change, events do not: a cost is computed from an ``llm_responded``
event's provider, model (``response_model``, else the requested ``model``)
and full usage every time it is read. Prices come from
``configure(prices={model: {"input": usd_per_mtok, "output": …,
"cache_read": …, "cache_write": …}})`` first, then from the
``genai-prices`` package (extra ``prices``), at the price in force on the
event's date. An unknown model, or a call without usage, costs None, never 0.

Token convention (``agent_trace.llm``): ``input_tokens`` include cache reads
and writes, which are priced at their own rates when the model has them.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent_trace.events import AgentEvent

__all__ = ["ModelPrices", "llm_cost", "usage_cost"]

log = logging.getLogger("agent_trace")
_PRICE_KEYS = ("input", "output", "cache_read", "cache_write")


@dataclass(frozen=True, slots=True)
class ModelPrices:
    """USD per million tokens; cache rates default to the input rate."""

    input: float
    output: float
    cache_read: float | None = None
    cache_write: float | None = None

    def cost(self, usage: Mapping[str, Any]) -> float:
        inp, out = _count(usage, "input_tokens"), _count(usage, "output_tokens")
        read, write = _count(usage, "cache_read_tokens"), _count(usage, "cache_write_tokens")
        uncached = max(0, inp - read - write)
        total = uncached * self.input + out * self.output
        total += read * (self.input if self.cache_read is None else self.cache_read)
        total += write * (self.input if self.cache_write is None else self.cache_write)
        return total / 1_000_000


def parse_prices(prices: Mapping[str, Any]) -> dict[str, ModelPrices]:
    """Check ``configure(prices=...)``; a clear error names the bad model or key."""
    if not isinstance(prices, Mapping):
        raise TypeError(f"prices must map model names to price dicts, got {type(prices).__name__}")
    out: dict[str, ModelPrices] = {}
    for model, entry in prices.items():
        if isinstance(entry, ModelPrices):
            out[str(model)] = entry
            continue
        if not isinstance(entry, Mapping):
            raise TypeError(f"prices[{model!r}] must be a dict like {{'input': 2.5, 'output': 10}}")
        unknown = set(entry) - set(_PRICE_KEYS)
        if unknown:
            raise ValueError(
                f"prices[{model!r}] has unknown key(s) {sorted(unknown)}; "
                f"known: {list(_PRICE_KEYS)} (USD per million tokens)"
            )
        for key in ("input", "output"):
            if key not in entry:
                raise ValueError(f"prices[{model!r}] needs {key!r} (USD per million tokens)")
        values: dict[str, float | None] = {}
        for key in _PRICE_KEYS:
            value = entry.get(key)
            if value is None:
                values[key] = None
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"prices[{model!r}][{key!r}] must be a number >= 0, got {value!r}")
            values[key] = float(value)
        out[str(model)] = ModelPrices(
            input=values["input"] or 0.0,
            output=values["output"] or 0.0,
            cache_read=values["cache_read"],
            cache_write=values["cache_write"],
        )
    return out


def _count(usage: Mapping[str, Any], key: str) -> int:
    value = usage.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def llm_cost(event: AgentEvent) -> float | None:
    """USD cost of one ``llm_responded`` event, or None when it cannot be priced."""
    if event.event_type != "llm_responded":
        return None
    payload = event.payload
    usage = payload.get("usage")
    if not isinstance(usage, Mapping) or not usage:
        return None
    provider = payload.get("provider")
    named = (payload.get("response_model"), payload.get("model"))
    models = [m for m in named if isinstance(m, str)]
    return usage_cost(
        usage, models, provider if isinstance(provider, str) else None, event.timestamp[:10]
    )


def usage_cost(
    usage: Mapping[str, Any], models: list[str], provider: str | None = None, day: str | None = None
) -> float | None:
    """The cost of ``usage`` for the first of ``models`` that has a price."""
    from agent_trace.config import get_settings

    configured = get_settings().prices
    for model in models:
        own: ModelPrices | None = configured.get(model)
        if own is not None:
            return own.cost(usage)
    for model in models:
        price = _catalogue_price(provider, model, day)
        if price is not None:
            return price.cost(usage) if isinstance(price, ModelPrices) else _tiered(price, usage)
    return None


@functools.lru_cache(maxsize=4096)
def _catalogue_price(provider: str | None, model: str, day: str | None) -> Any:
    """genai-prices' price of ``model`` on ``day``: ``ModelPrices`` when flat, else its own."""
    try:
        from genai_prices import Usage, calc_price
    except ImportError:
        _warn_no_catalogue()
        return None
    when = None
    if day:
        try:
            when = datetime.fromisoformat(day + "T12:00:00+00:00")
        except ValueError:
            when = None
    try:
        found = calc_price(
            Usage(input_tokens=1, output_tokens=1),
            model_ref=model,
            provider_id=provider,
            genai_request_timestamp=when,
        )
    except LookupError:
        return None
    except Exception as exc:  # a catalogue problem must not break a report
        log.warning("agent_trace: genai-prices failed for %r: %s", model, exc)
        return None
    mp = found.model_price
    rates = [getattr(mp, f"{k}_mtok", None) for k in _PRICE_KEYS]
    flat = all(
        r is None or isinstance(r, (int, float)) or type(r).__name__ == "Decimal" for r in rates
    )
    if flat and rates[0] is not None and rates[1] is not None:
        # Flat rates: computed with floats here, 60 µs -> 1 µs per call in a report.
        return ModelPrices(*(None if r is None else float(r) for r in rates))  # type: ignore[arg-type]
    return mp  # tiered prices: genai-prices computes them


def _tiered(model_price: Any, usage: Mapping[str, Any]) -> float | None:
    from genai_prices import Usage

    try:
        result = model_price.calc_price(
            Usage(
                input_tokens=_count(usage, "input_tokens"),
                output_tokens=_count(usage, "output_tokens"),
                cache_read_tokens=_count(usage, "cache_read_tokens") or None,
                cache_write_tokens=_count(usage, "cache_write_tokens") or None,
            )
        )
        return float(result["total_price"])
    except Exception:
        return None


@functools.lru_cache(maxsize=1)
def _warn_no_catalogue() -> None:
    log.warning(
        "agent_trace: costs need the genai-prices package (pip install 'agent-trace[prices]') "
        "or configure(prices=...); costs show as unknown"
    )
