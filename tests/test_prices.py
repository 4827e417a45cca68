"""Cost derived when read: llm_cost, SessionSummary.cost_usd, configure(prices=...), the CLI."""

from __future__ import annotations

import json
import subprocess

import pytest
from genai_prices import Usage, calc_price
from test_cli import cli_command, env

import agent_trace as at
from agent_trace.events import AgentEvent
from agent_trace.projections import CostPerModel, build_session_summary, fold, llm_cost


def responded(usage, model="gpt-4o", response_model=None, provider="openai", ts=None):
    payload = {"name": "x", "model": model, "provider": provider, "usage": usage}
    if response_model:
        payload["response_model"] = response_model
    return AgentEvent(
        event_id=at.uuid7(),
        session_id="s",
        event_type="llm_responded",
        timestamp=ts or "2026-12-01T10:00:00.000000+00:00",
        payload=payload,
        version=1,
    )


@pytest.fixture(autouse=True)
def no_prices(memory_store):
    at.configure(prices={})
    yield
    at.configure(prices={})


def test_openai_cost_counts_cached_tokens_at_their_rate():
    usage = {"input_tokens": 1200, "output_tokens": 300, "cache_read_tokens": 1000}
    ev = responded(usage, response_model="gpt-4o-2024-08-06")
    expected = calc_price(
        Usage(input_tokens=1200, output_tokens=300, cache_read_tokens=1000),
        model_ref="gpt-4o-2024-08-06",
        provider_id="openai",
    ).total_price
    assert llm_cost(ev) == pytest.approx(float(expected), rel=1e-9)
    # Cached tokens are cheaper: pricing them as plain input would cost more.
    plain = responded({"input_tokens": 1200, "output_tokens": 300}, "gpt-4o-2024-08-06")
    assert llm_cost(plain) > llm_cost(ev)


def test_anthropic_cost_with_cache_reads_and_writes():
    usage = {
        "input_tokens": 2600,
        "output_tokens": 40,
        "cache_read_tokens": 2000,
        "cache_write_tokens": 500,
    }
    ev = responded(usage, "claude-sonnet-4-5", "claude-sonnet-4-5-20250929", "anthropic")
    expected = calc_price(
        Usage(input_tokens=2600, output_tokens=40, cache_read_tokens=2000, cache_write_tokens=500),
        model_ref="claude-sonnet-4-5-20250929",
        provider_id="anthropic",
    ).total_price
    assert llm_cost(ev) == pytest.approx(float(expected), rel=1e-9)


def test_unknown_model_or_missing_usage_is_none_never_zero():
    assert llm_cost(responded({"input_tokens": 10, "output_tokens": 5}, "my-local-llama")) is None
    assert llm_cost(responded({}, "gpt-4o")) is None
    summary = build_session_summary([responded({"input_tokens": 1}, "my-local-llama")])
    assert summary.cost_usd is None


def test_configured_prices_override_and_add():
    at.configure(
        prices={
            "my-local-llama": {"input": 1.0, "output": 2.0},
            "gpt-4o": {"input": 10.0, "output": 20.0, "cache_read": 1.0},
        }
    )
    assert llm_cost(
        responded({"input_tokens": 1_000_000, "output_tokens": 500_000}, "my-local-llama")
    ) == pytest.approx(2.0)
    usage = {"input_tokens": 1_000_000, "output_tokens": 0, "cache_read_tokens": 400_000}
    assert llm_cost(responded(usage, "gpt-4o")) == pytest.approx(6.0 + 0.4)


def test_bad_prices_are_clear_errors():
    with pytest.raises(ValueError, match=r"prices\['m'\] needs 'output'"):
        at.configure(prices={"m": {"input": 1}})
    with pytest.raises(ValueError, match="unknown key"):
        at.configure(prices={"m": {"input": 1, "output": 2, "cached": 3}})
    with pytest.raises(ValueError, match="number >= 0"):
        at.configure(prices={"m": {"input": -1, "output": 2}})
    with pytest.raises(TypeError, match="must map model names"):
        at.configure(prices=[("m", 1)])


def test_summary_and_per_model_cost():
    at.configure(prices={"a": {"input": 1.0, "output": 1.0}})
    events = [
        responded({"input_tokens": 500_000, "output_tokens": 500_000}, "a"),
        responded({"input_tokens": 1_000_000, "output_tokens": 0}, "a"),
        responded({"input_tokens": 5, "output_tokens": 5}, "unpriced"),
    ]
    assert build_session_summary(events).cost_usd == pytest.approx(2.0)
    projection = CostPerModel()
    usage = projection.usage(fold(projection, events))
    assert usage["a"].cost == pytest.approx(2.0) and usage["a"].calls == 2
    assert usage["unpriced"].cost is None


def test_cost_is_derived_not_stored(tmp_path):
    at.configure(store=f"sqlite:///{tmp_path}/c.db", prices={"m": {"input": 1.0, "output": 1.0}})
    with at.session("priced"):
        at.emit("user_message_received", {"message": "hi"})

        @at.record_llm(model="m")
        def llm() -> dict:
            return {"usage": {"input_tokens": 1_000_000, "output_tokens": 0}}

        llm()
    at.flush_sync()
    stored = at.get_events_sync("priced")
    assert all("cost" not in json.dumps(e.payload) for e in stored)
    at.configure(prices={"m": {"input": 3.0, "output": 1.0}})  # prices change, events do not
    assert build_session_summary(stored).cost_usd == pytest.approx(3.0)


def test_cli_shows_cost(tmp_path):
    at.configure(store=f"sqlite:///{tmp_path}/cli.db")

    @at.record_llm(model="gpt-4o")
    def llm() -> dict:
        return {
            "model": "gpt-4o-2024-08-06",
            "usage": {"prompt_tokens": 100_000, "completion_tokens": 10_000},
        }

    with at.session("cli-cost"):
        llm()
    at.flush_sync()
    at.configure(store="memory://")
    store = f"sqlite:///{tmp_path}/cli.db"

    def run(*argv: str) -> str:
        proc = subprocess.run(
            [*cli_command(), "--store", store, *argv], capture_output=True, text=True, env=env()
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    expected = 100_000 * 2.5 / 1e6 + 10_000 * 10 / 1e6  # gpt-4o: $2.50 / $10 per MTok
    assert f"${expected:.4f}" in run("sessions")
    assert f"${expected:.4f}" in run("summary", "cli-cost")
    assert f"${expected:.4f}" in run("show", "cli-cost")
    stats = json.loads(run("stats", "--json"))
    assert stats["models"]["gpt-4o-2024-08-06"]["cost_usd"] == pytest.approx(expected)
