"""Helpers of the dashboard tests: a fleet sent by the official OTLP exporter."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode

from tokentrace import attributes as A
from tokentrace.exporter import PostgresSpanExporter
from tokentrace.receiver.server import Receiver

ARTIFACTS = Path(__file__).resolve().parents[3] / "artifacts"
NS = 1_000_000_000


@dataclass
class Served:
    receiver: Receiver

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.receiver.http_port}/"


StartServed = Callable[..., Served]


@dataclass(frozen=True)
class SimModel:
    name: str
    decode_ms: float
    prefill_ms: float
    load_s: float


def send_fleet(port: int, models: Sequence[SimModel], **options: Any) -> int:
    """:func:`emit_fleet` through the official OTLP/HTTP exporter to a receiver on ``port``."""
    exporter = OTLPSpanExporter(endpoint=f"http://127.0.0.1:{port}/v1/traces", timeout=30)
    return emit_fleet(exporter, models, **options)


def store_fleet(dsn: str, models: Sequence[SimModel], **options: Any) -> int:
    """:func:`emit_fleet` through tokentrace's own exporter straight into ``dsn``."""
    return emit_fleet(PostgresSpanExporter(dsn), models, **options)


def emit_fleet(
    exporter: SpanExporter,
    models: Sequence[SimModel],
    *,
    hours: float = 20,
    calls: int = 12,
    now: dt.datetime | None = None,
    failing: int | None = 0,
) -> int:
    """A load and ``calls`` calls per model over the last ``hours``, exported by ``exporter``.

    Calls carry Ollama-style server timings (prefill and decode) and token counts;
    call number ``failing`` of the first model fails. Returns the spans sent.
    """
    end_ns = int((now or dt.datetime.now(dt.timezone.utc)).timestamp() * NS)
    start_ns = end_ns - int(hours * 3600 * NS)
    provider = TracerProvider(resource=Resource.create({"service.name": "dashboard-tests"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("tests.dashboard")
    sent = 0
    for m_index, model in enumerate(models):
        load = tracer.start_span(f"load_model {model.name}", kind=SpanKind.CLIENT, start_time=start_ns,
                                 attributes={A.GEN_AI_OPERATION_NAME: A.OP_LOAD_MODEL,
                                             A.GEN_AI_REQUEST_MODEL: model.name})  # fmt: skip
        load.end(end_time=start_ns + int(model.load_s * NS))
        sent += 1
        step = (end_ns - start_ns - 60 * NS) // calls
        for i in range(calls):
            t = start_ns + int(model.load_s * NS) + (i + 1) * step
            span = tracer.start_span(f"chat {model.name}", kind=SpanKind.CLIENT, start_time=t,
                                     attributes={A.GEN_AI_OPERATION_NAME: A.OP_CHAT,
                                                 A.GEN_AI_REQUEST_MODEL: model.name,
                                                 A.GEN_AI_RESPONSE_MODEL: model.name})  # fmt: skip
            if failing is not None and m_index == 0 and i == failing:
                span.set_status(Status(StatusCode.ERROR, "timed out"))
                span.set_attribute(A.ERROR_TYPE, "timeout")
                span.end(end_time=t + 30 * NS)
            else:
                call = sim_call(model, i)
                span.set_attributes({
                    A.GEN_AI_USAGE_INPUT_TOKENS: call.input_tokens, A.GEN_AI_USAGE_OUTPUT_TOKENS: call.output_tokens,
                    A.TT_SERVER_PROMPT_EVAL_NS: call.prefill_ns, A.TT_SERVER_EVAL_NS: call.decode_ns,
                })  # fmt: skip
                span.end(end_time=t + call.prefill_ns + call.decode_ns + 5_000_000)
            sent += 1
    provider.shutdown()
    return sent


@dataclass(frozen=True)
class SimCall:
    input_tokens: int
    output_tokens: int
    prefill_ns: int
    decode_ns: int


def sim_call(model: SimModel, i: int) -> SimCall:
    """Call number ``i`` of ``model`` in :func:`emit_fleet` (deterministic, for expected figures)."""
    prompt, output = 200 + 37 * i, 80 + 13 * i
    return SimCall(
        input_tokens=prompt,
        output_tokens=output,
        prefill_ns=int(prompt * model.prefill_ms * 1e6),
        decode_ns=int(output * model.decode_ms * (1 + 0.05 * (i % 4)) * 1e6),
    )
