"""A call seen twice over OTLP (a wrapper span and the client span inside it) counts once,
whichever OTLP request, protocol or receiver brings each of them."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from tests.helpers import query
from tests.integration.receiver.conftest import StartReceiver


def _framework_over_client(framework_model: str) -> tuple[ReadableSpan, ReadableSpan]:
    """A framework span (LangChain-like, OpenLLMetry attributes, no operation named)
    around a client span (GenAI conventions, Ollama's timings), as one process ends them."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "rag-app"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span(
        "ChatOllama.chat",
        kind=SpanKind.INTERNAL,
        attributes={
            "gen_ai.system": "Ollama",
            "gen_ai.request.model": framework_model,
            "gen_ai.usage.prompt_tokens": 26,
            "gen_ai.usage.completion_tokens": 100,
        },
    ):
        with tracer.start_as_current_span(
            "chat llama3.2",
            kind=SpanKind.CLIENT,
            attributes={
                "gen_ai.operation.name": "chat",
                "gen_ai.provider.name": "ollama",
                "gen_ai.request.model": "llama3.2",
                "gen_ai.response.model": "llama3.2:latest",
                "gen_ai.usage.input_tokens": 26,
                "gen_ai.usage.output_tokens": 100,
                "tokentrace.server.eval_duration_ns": 1_500_000_000,
            },
        ):
            pass
    provider.shutdown()
    child, parent = memory.get_finished_spans()
    assert child.parent is not None and child.parent.span_id == parent.context.span_id
    return parent, child


def _send(exporter: SpanExporter, spans: Sequence[ReadableSpan]) -> None:
    assert exporter.export(spans) == SpanExportResult.SUCCESS


@pytest.mark.parametrize("order", ["child_then_parent", "parent_then_child"])
@pytest.mark.parametrize("framework_model", ["llama3.2", "ChatOllama"])
def test_separate_requests_count_the_call_once(
    start_receiver: StartReceiver, db: str, order: str, framework_model: str
) -> None:
    parent, child = _framework_over_client(framework_model)
    grpc_receiver, http_receiver = start_receiver(), start_receiver()
    grpc = GrpcExporter(endpoint=f"127.0.0.1:{grpc_receiver.grpc_port}", insecure=True)
    http = HttpExporter(endpoint=f"http://127.0.0.1:{http_receiver.http_port}/v1/traces")
    try:
        first, second = (child, parent) if order == "child_then_parent" else (parent, child)
        _send(grpc, [first])
        _send(http, [second])
        _send(grpc, [second])  # a retry to the other receiver: stored once, counted once
    finally:
        grpc.shutdown()
        http.shutdown()

    rows = query(
        db,
        "SELECT model, calls, input_tokens, output_tokens, decode_ms_per_token"
        " FROM tokentrace.efficiency('1 hour')",
    )
    assert rows == [("llama3.2:latest", 1, 26, 100, 15.0)]
    assert query(db, "SELECT name, wrapper FROM tokentrace.spans ORDER BY name") == [
        ("ChatOllama.chat", True),
        ("chat llama3.2", False),
    ]
