"""``agent-trace ui --otlp``: ``POST /v1/traces``, the one route that writes.

The content type and body checks are the server's own (415 for other content
types; 400 with a ``google.rpc.Status`` for a body that cannot be decoded).
End to end, the OpenTelemetry SDK's real OTLP/HTTP exporter posts GenAI spans
to the running server, which turns them into events (``agent_trace.otlp_ingest``)
that the UI then lists like any recorded session.
"""

from __future__ import annotations

import gzip
import json

import pytest
from test_cli import record
from ui_helpers import UIServer


@pytest.fixture
def server(tmp_path):
    # --otlp may start from nothing: ingest creates the store.
    with UIServer(f"sqlite:///{tmp_path}/otlp.db", "--otlp") as srv:
        yield srv
    assert srv.returncode == 0


def test_otlp_route_refuses_what_is_not_otlp(server):
    assert "OTLP/HTTP traces in at" in server.proc.stderr.readline()  # type: ignore[union-attr]
    status, _, body = server.post("/v1/traces", b"hello", {"Content-Type": "text/plain"})
    assert status == 415 and b"application/x-protobuf or application/json" in body
    status, _, body = server.post("/v1/traces", b"", {})
    assert status == 415
    # A gzip body that is not gzip: 400 with the reason, as a google.rpc.Status.
    status, headers, body = server.post(
        "/v1/traces",
        b"not gzip",
        {"Content-Type": "application/json", "Content-Encoding": "gzip"},
    )
    assert status == 400
    assert json.loads(body)["code"] == 3 and "cannot decode" in json.loads(body)["message"]
    status, headers, body = server.post(
        "/v1/traces",
        b"not gzip",
        {"Content-Type": "application/x-protobuf", "Content-Encoding": "gzip"},
    )
    assert status == 400 and headers["content-type"] == "application/x-protobuf"
    assert body[:2] == b"\x08\x03" and b"cannot decode the request body" in body
    assert server.json("/api/changes")["events"] == 0  # nothing was written


def test_real_otlp_exporter_posts_genai_spans_that_the_ui_lists(server):
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult

    results: list[SpanExportResult] = []

    class Recording(OTLPSpanExporter):
        def export(self, spans):  # what the SDK's processor gets back
            result = super().export(spans)
            results.append(result)
            return result

    provider = TracerProvider(resource=Resource.create({"service.name": "otel-agent"}))
    provider.add_span_processor(SimpleSpanProcessor(Recording(endpoint=server.base + "/v1/traces")))
    tracer = provider.get_tracer("test")
    conv = {"gen_ai.conversation.id": "otel-conv-1"}
    with tracer.start_as_current_span(
        "invoke_agent researcher",
        attributes={**conv, "gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "r"},
    ):
        with tracer.start_as_current_span(
            "chat gpt-4o-mini",
            attributes={
                **conv,
                "gen_ai.operation.name": "chat",
                "gen_ai.provider.name": "openai",
                "gen_ai.request.model": "gpt-4o-mini",
                "gen_ai.usage.input_tokens": 120,
                "gen_ai.usage.output_tokens": 30,
            },
        ):
            pass
        with tracer.start_as_current_span(
            "execute_tool search",
            attributes={
                **conv,
                "gen_ai.operation.name": "execute_tool",
                "gen_ai.tool.name": "search",
            },
        ):
            pass
        with tracer.start_as_current_span("GET /search", attributes={"http.method": "GET"}):
            pass  # not a GenAI span: accepted and ignored
    provider.force_flush()
    provider.shutdown()
    assert results and all(r is SpanExportResult.SUCCESS for r in results)

    rows = server.wait_for(lambda: server.json("/api/sessions?q=otel-conv-1")["sessions"])
    assert rows[0]["session_id"] == "otel-conv-1"
    assert rows[0]["tools"] == ["search"] and rows[0]["models"] == ["gpt-4o-mini"]
    assert rows[0]["tokens"] == 150
    assert "otel-conv-1" in server.text("/sessions/otel-conv-1")
    # The HTTP span was accepted and ignored, and counted.
    counts = server.json("/api/changes")["otlp"]
    assert counts["spans"] == 3 and counts["ignored_spans"] == 1
    assert counts["requests"] == len(results) and counts["events"] > 0
    assert "1 other spans ignored" in server.text("/stats")
    # Empty requests are answered with an empty ExportTraceServiceResponse; bad ones 400.
    before = server.json("/api/changes")["events"]
    body = json.dumps({"resourceSpans": []}).encode()
    status, _, answer = server.post("/v1/traces", body, {"Content-Type": "application/json"})
    assert status == 200 and json.loads(answer) == {}
    status, _, answer = server.post(
        "/v1/traces",
        gzip.compress(b""),
        {"Content-Type": "application/x-protobuf", "Content-Encoding": "gzip"},
    )
    assert status == 200 and answer == b""
    status, _, answer = server.post(
        "/v1/traces", b"\xff\xff\xff", {"Content-Type": "application/x-protobuf"}
    )
    assert status == 400 and answer[:2] == b"\x08\x03"
    assert server.json("/api/changes")["events"] == before


def test_store_made_by_record_is_served_with_otlp_too(tmp_path):
    url = f"sqlite:///{tmp_path}/both.db"
    record(url, sessions=1)
    with UIServer(url, "--otlp") as srv:
        assert srv.json("/api/sessions")["total"] == 1
    assert srv.returncode == 0
