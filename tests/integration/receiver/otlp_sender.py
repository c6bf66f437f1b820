"""Sends spans with the official OpenTelemetry OTLP exporters (run as a separate process).

Usage: ``python otlp_sender.py '<json config>'``. The config::

    {"service": "name",
     "targets": [{"protocol": "grpc" | "http", "endpoint": "http://127.0.0.1:4317",
                  "compression": "gzip" | "none", "headers": {...}, "ca": "/path/ca.pem"}],
     "mode": "dialects" | "stream", "count": 1000, "rate": 500}

``dialects`` sends one span per attribute dialect to each target with the
exporter's ``export()`` and prints, as one JSON line, the ids sent and whether each
export succeeded. ``stream`` ends ``count`` spans at ``rate`` per second through a
``BatchSpanProcessor`` (as an application would) and prints how many exports
succeeded and failed. Exit status 0 only if every export succeeded.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http import Compression as HttpCompression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

DURATION_NS = 2_000_000_000  # every dialect span lasts exactly 2 s

# One span per dialect, as each instrumentation library writes it.
DIALECTS: dict[str, tuple[str, dict[str, Any]]] = {
    "genai_current": (
        "chat gpt-4o-mini",
        {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": "openai",
            "gen_ai.request.model": "gpt-4o-mini",
            "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
            "gen_ai.usage.input_tokens": 12,
            "gen_ai.usage.output_tokens": 80,
        },
    ),
    "genai_deprecated": (
        "chat gpt-4",
        {
            "gen_ai.operation.name": "chat",
            "gen_ai.system": "openai",
            "gen_ai.request.model": "gpt-4",
            "gen_ai.usage.prompt_tokens": 30,
            "gen_ai.usage.completion_tokens": 50,
        },
    ),
    "openllmetry_ollama": (
        "ollama.chat",
        {
            "gen_ai.system": "Ollama",
            "llm.request.type": "chat",
            "gen_ai.request.model": "llama3.2",
            "gen_ai.response.model": "llama3.2:latest",
            "gen_ai.usage.prompt_tokens": 26,
            "gen_ai.usage.completion_tokens": 100,
            "llm.usage.total_tokens": 126,
            "llm.is_streaming": False,
        },
    ),
    "openinference": (
        "ChatCompletion",
        {
            "openinference.span.kind": "LLM",
            "llm.model_name": "mistral-7b-instruct",
            "llm.provider": "ollama",
            "llm.token_count.prompt": 5,
            "llm.token_count.completion": 40,
            "llm.token_count.total": 45,
        },
    ),
    "openlit": (
        "chat qwen2.5",
        {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": "ollama",
            "gen_ai.request.model": "qwen2.5",
            "gen_ai.response.model": "qwen2.5:7b",
            "gen_ai.usage.input_tokens": 10,
            "gen_ai.usage.output_tokens": 64,
            "gen_ai.request.stream": True,
            "gen_ai.server.time_to_first_token": 0.25,
            "gen_ai.server.time_per_output_token": 0.03,
            "gen_ai.client.token.usage": 74,
            "telemetry.sdk.name": "openlit",
        },
    ),
}


def make_exporter(target: dict[str, Any]) -> SpanExporter:
    headers = target.get("headers") or None
    gzip = target.get("compression") == "gzip"
    ca = target.get("ca")
    if target["protocol"] == "grpc":
        credentials = grpc.ssl_channel_credentials(Path(ca).read_bytes()) if ca else None
        return GrpcExporter(
            endpoint=target["endpoint"],
            insecure=not ca,
            credentials=credentials,
            headers=headers,
            compression=grpc.Compression.Gzip if gzip else grpc.Compression.NoCompression,
            timeout=target.get("timeout", 10),
        )
    return HttpExporter(
        endpoint=target["endpoint"] + "/v1/traces",
        certificate_file=ca,
        headers=headers,
        compression=HttpCompression.Gzip if gzip else HttpCompression.NoCompression,
        timeout=target.get("timeout", 10),
    )


def dialect_spans(service: str) -> tuple[list[ReadableSpan], list[dict[str, str]]]:
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("tokentrace-tests")
    start = time.time_ns()
    sent = []
    for dialect, (name, attributes) in DIALECTS.items():
        span = tracer.start_span(
            name, kind=SpanKind.CLIENT, attributes=attributes, start_time=start
        )
        span.end(end_time=start + DURATION_NS)
        ctx = span.get_span_context()
        sent.append(
            {
                "dialect": dialect,
                "trace_id": f"{ctx.trace_id:032x}",
                "span_id": f"{ctx.span_id:016x}",
            }
        )
    spans = list(memory.get_finished_spans())
    provider.shutdown()
    return spans, sent


def send_dialects(config: dict[str, Any]) -> bool:
    results = []
    for target in config["targets"]:
        spans, sent = dialect_spans(config["service"])
        exporter = make_exporter(target)
        result = exporter.export(spans)
        exporter.shutdown()
        results.append(
            {
                "protocol": target["protocol"],
                "ok": result is SpanExportResult.SUCCESS,
                "spans": sent,
            }
        )
    print(json.dumps(results), flush=True)
    return all(r["ok"] for r in results)


class CountingExporter(SpanExporter):
    """Counts what the wrapped exporter reported, batch by batch."""

    def __init__(self, inner: SpanExporter) -> None:
        self.inner = inner
        self.ok_spans = 0
        self.failed_batches = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        result = self.inner.export(spans)
        if result is SpanExportResult.SUCCESS:
            self.ok_spans += len(spans)
        else:
            self.failed_batches += 1
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()


def send_stream(config: dict[str, Any]) -> bool:
    [target] = config["targets"]
    counting = CountingExporter(make_exporter(target))
    provider = TracerProvider(resource=Resource.create({"service.name": config["service"]}))
    provider.add_span_processor(
        BatchSpanProcessor(
            counting, max_queue_size=1_000_000, max_export_batch_size=100, schedule_delay_millis=50
        )
    )
    tracer = provider.get_tracer("tokentrace-tests")
    count, rate = int(config["count"]), float(config["rate"])
    began = time.monotonic()
    for i in range(count):
        span = tracer.start_span(
            "chat m",
            kind=SpanKind.CLIENT,
            attributes={
                "gen_ai.operation.name": "chat",
                "gen_ai.request.model": "stream-model",
                "gen_ai.usage.output_tokens": 10,
                "seq": i,
            },
        )
        span.end()
        delay = began + (i + 1) / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    provider.shutdown()  # flushes the queue through the exporter, retries included
    print(
        json.dumps(
            {
                "sent": count,
                "ok_spans": counting.ok_spans,
                "failed_batches": counting.failed_batches,
            }
        ),
        flush=True,
    )
    return counting.failed_batches == 0 and counting.ok_spans == count


def main() -> int:
    config = json.loads(sys.argv[1])
    ok = send_stream(config) if config.get("mode") == "stream" else send_dialects(config)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
