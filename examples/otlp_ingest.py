"""Record an agent that only has OpenTelemetry instrumentation, through OTLP.

A pydantic-ai agent (offline: pydantic-ai's TestModel) is traced by pydantic-ai's
own OpenTelemetry instrumentation. Its spans are encoded exactly as an OTLP/HTTP
exporter sends them and handed to ``ingest_otlp``, which stores them as
agent_trace events; then the session is verified, summarized and stepped through.

In production the exporter posts to ``agent-trace ui --otlp`` instead
(``OTLPSpanExporter(endpoint="http://127.0.0.1:6006/v1/traces")``), which calls
the same function.

    pip install 'agent-trace[otel]' pydantic-ai-slim opentelemetry-exporter-otlp-proto-http
    python examples/otlp_ingest.py [STORE_URL]
"""

from __future__ import annotations

import asyncio
import sys

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic_ai import Agent
from pydantic_ai.models.instrumented import InstrumentationSettings
from pydantic_ai.models.test import TestModel

from agent_trace import open_store
from agent_trace.integrity import verify_session
from agent_trace.otlp_ingest import ingest_otlp
from agent_trace.projections import session_summary
from agent_trace.replay import iter_steps


def traced_agent(provider: TracerProvider) -> Agent[None, str]:
    settings = InstrumentationSettings(tracer_provider=provider, include_content=True)
    try:
        from pydantic_ai.capabilities.instrumentation import Instrumentation
    except ImportError:  # pydantic-ai before capabilities
        agent: Agent[None, str] = Agent(TestModel(), name="weather", instrument=settings)
    else:
        agent = Agent(TestModel(), name="weather", capabilities=[Instrumentation(settings)])

    @agent.tool_plain
    def forecast(city: str) -> str:
        """Tomorrow's weather in a city."""
        return f"sunny in {city}"

    return agent


async def main(store_url: str) -> None:
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    agent = traced_agent(provider)
    result = await agent.run("What is the weather in Paris tomorrow?")
    print("agent said:", result.output)

    # What an OTLP/HTTP exporter would POST to /v1/traces.
    body = encode_spans(spans.get_finished_spans()).SerializeToString()
    store = open_store(store_url)
    try:
        written = await ingest_otlp(body, "application/x-protobuf", store)
        again = await ingest_otlp(body, "application/x-protobuf", store)  # a retry
        print(f"ingested {written} events ({again} on resending the same spans)")
        [info] = await store.list_sessions()
        sid = info.session_id
        print("verified:", bool(await verify_session(sid, store=store)))
        summary = await session_summary(sid, store=store)
        print(
            f"llm calls: {summary.llm_calls}, tools: {summary.tools_used}, "
            f"tokens: {summary.total_tokens}"
        )
        async for step in iter_steps(sid, store=store):
            print(f"{'  ' * step.depth}{step.event_type}: {step.summary}")
    finally:
        await store.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "sqlite:///otlp_ingest.db"))
