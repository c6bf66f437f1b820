from __future__ import annotations

from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult

from tokentrace import attributes as A
from tokentrace.processor import TokenEfficiencySpanProcessor


def _pipeline(**kwargs: object) -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(**kwargs)  # type: ignore[arg-type]
    provider.add_span_processor(TokenEfficiencySpanProcessor(SimpleSpanProcessor(exporter)))
    return provider, exporter


def test_genai_span_is_forwarded_with_derived_attributes() -> None:
    provider, exporter = _pipeline()
    tracer = provider.get_tracer("t")
    span = tracer.start_span("chat m", start_time=1_000_000_000, attributes={
        A.GEN_AI_OPERATION_NAME: "chat", A.GEN_AI_REQUEST_MODEL: "m",
    })
    span.set_attribute(A.GEN_AI_USAGE_OUTPUT_TOKENS, 40)
    span.add_event("first token")
    span.end(end_time=1_800_000_000)
    (out,) = exporter.get_finished_spans()
    assert out.attributes is not None
    assert out.attributes[A.TT_MS_PER_TOKEN] == 20.0
    assert out.attributes[A.TT_INFERENCE_MS] == 800.0
    assert out.attributes[A.TT_TOKEN_SOURCE] == "reported"
    assert out.attributes[A.GEN_AI_USAGE_OUTPUT_TOKENS] == 40
    assert [e.name for e in out.events] == ["first token"]
    assert out.context == span.get_span_context()
    assert out.end_time == 1_800_000_000


def test_other_spans_pass_untouched() -> None:
    provider, exporter = _pipeline()
    with provider.get_tracer("t").start_as_current_span("GET /", attributes={"http.method": "GET"}):
        pass
    (out,) = exporter.get_finished_spans()
    assert dict(out.attributes or {}) == {"http.method": "GET"}


class _RecordOnly(Sampler):
    """Records spans without sampling them: they reach on_end, unsampled."""

    def should_sample(self, *args: object, **kwargs: object) -> SamplingResult:
        return SamplingResult(Decision.RECORD_ONLY)

    def get_description(self) -> str:
        return "record-only"


def test_unsampled_spans_pass_untouched() -> None:
    provider = TracerProvider(sampler=_RecordOnly())
    seen: list[ReadableSpan] = []

    class Spy(SpanProcessor):
        def on_end(self, span: ReadableSpan) -> None:
            seen.append(span)

    provider.add_span_processor(TokenEfficiencySpanProcessor(Spy()))
    tracer = provider.get_tracer("t")
    span = tracer.start_span("chat m", attributes={A.GEN_AI_REQUEST_MODEL: "m", A.GEN_AI_USAGE_OUTPUT_TOKENS: 3})
    span.end()
    assert len(seen) == 1
    assert not seen[0].context.trace_flags.sampled
    assert A.TT_MS_PER_TOKEN not in (seen[0].attributes or {})
