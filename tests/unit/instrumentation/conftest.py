"""Fixtures for the instrumentation tests: a real SDK pipeline kept in memory.

Spans go through tokentrace's processor into an ``InMemorySpanExporter``, so tests
see exactly what an exporter would receive, derived figures included. Metrics go
to an ``InMemoryMetricReader``. Each instrumentor is instrumented with these
providers for one test and uninstrumented after it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.fakeservers import FakeOllama, FakeOpenAI
from tokentrace.instrumentation.patching import BaseInstrumentor
from tokentrace.processor import TokenEfficiencySpanProcessor


@pytest.fixture
def span_exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def tracer_provider(span_exporter: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(TokenEfficiencySpanProcessor(SimpleSpanProcessor(span_exporter)))
    return provider


@pytest.fixture
def metric_reader() -> InMemoryMetricReader:
    return InMemoryMetricReader()


@pytest.fixture
def meter_provider(metric_reader: InMemoryMetricReader) -> Iterator[MeterProvider]:
    provider = MeterProvider(metric_readers=[metric_reader])
    yield provider
    provider.shutdown()


Instrument = Callable[..., BaseInstrumentor]


@pytest.fixture
def instrument(
    tracer_provider: TracerProvider, meter_provider: MeterProvider
) -> Iterator[Instrument]:
    """``instrument(SomeInstrumentor, **kwargs)``: instrumented until the test ends."""
    used: list[BaseInstrumentor] = []

    def _instrument(cls: type[BaseInstrumentor], **kwargs: Any) -> BaseInstrumentor:
        instrumentor = cls()
        instrumentor.instrument(
            tracer_provider=tracer_provider, meter_provider=meter_provider, **kwargs
        )
        used.append(instrumentor)
        return instrumentor

    yield _instrument
    for instrumentor in used:
        instrumentor.uninstrument()


@pytest.fixture
def fake_ollama() -> Iterator[FakeOllama]:
    with FakeOllama() as server:
        yield server


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server


def spans_named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [span for span in exporter.get_finished_spans() if span.name == name]


def only_span(exporter: InMemorySpanExporter, name: str) -> ReadableSpan:
    found = spans_named(exporter, name)
    assert len(found) == 1, [span.name for span in exporter.get_finished_spans()]
    return found[0]
