"""The alert gauges on the real OTel metrics SDK (InMemoryMetricReader), and exporter choice."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import psycopg
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, PeriodicExportingMetricReader

from tokentrace import alert_metrics
from tokentrace.alert_metrics import AlertGauges, exporter_names, reader
from tokentrace.alerts import Alert, Thresholds
from tokentrace.config import ConfigError

ALERTS = [
    Alert("regression", "llama", 2.0, 1.5, True, "slower"),
    Alert("regression", "qwen", None, 1.5, False, "no baseline"),
    Alert("error_rate", "llama", 0.01, 0.05, False, "fine"),
    Alert("disk_cap", None, 3.5, 7.0, True, "soon"),
]


def points(reader: InMemoryMetricReader) -> dict[str, dict[tuple[tuple[str, Any], ...], float]]:
    """metric name -> sorted attributes -> value, from one collection."""
    data = reader.get_metrics_data()
    assert data is not None
    out: dict[str, dict[tuple[tuple[str, Any], ...], float]] = {}
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                series = out.setdefault(metric.name, {})
                for point in metric.data.data_points:
                    series[tuple(sorted((point.attributes or {}).items()))] = point.value
    return out


def test_each_alert_is_three_gauges_with_its_name_and_model() -> None:
    calls: list[int] = []

    def evaluate() -> Sequence[Alert]:
        calls.append(1)
        return ALERTS

    metrics_reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[metrics_reader])
    gauges = AlertGauges(provider.get_meter("test"), evaluate)
    llama_reg = (("tokentrace.alert.model", "llama"), ("tokentrace.alert.name", "regression"))
    qwen_reg = (("tokentrace.alert.model", "qwen"), ("tokentrace.alert.name", "regression"))
    llama_err = (("tokentrace.alert.model", "llama"), ("tokentrace.alert.name", "error_rate"))
    disk = (("tokentrace.alert.name", "disk_cap"),)
    expected = {
        "tokentrace.alert.value": {llama_reg: 2.0, llama_err: 0.01, disk: 3.5},
        "tokentrace.alert.threshold": {llama_reg: 1.5, qwen_reg: 1.5, llama_err: 0.05, disk: 7.0},
        "tokentrace.alert.firing": {llama_reg: 1, qwen_reg: 0, llama_err: 0, disk: 1},
        "tokentrace.alert.evaluated": {(): 1},
    }
    assert points(metrics_reader) == expected
    assert gauges.evaluations == 1 and len(calls) == 1  # one evaluation per collection
    assert points(metrics_reader) == expected
    assert gauges.evaluations == 2
    provider.shutdown()


def test_a_failing_evaluation_is_logged_once_and_reported_as_not_evaluated(
    caplog: pytest.LogCaptureFixture,
) -> None:
    outcome: list[Any] = [psycopg.OperationalError("connection refused\nmore")]

    def evaluate() -> Sequence[Alert]:
        if isinstance(outcome[0], Exception):
            raise outcome[0]
        return outcome[0]  # type: ignore[no-any-return]

    metrics_reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[metrics_reader])
    AlertGauges(provider.get_meter("test"), evaluate)
    caplog.set_level(logging.DEBUG, logger="tokentrace.alert_metrics")
    for _ in range(3):
        assert points(metrics_reader) == {"tokentrace.alert.evaluated": {(): 0}}
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.getMessage() for r in warnings] == [
        "alert metrics: cannot evaluate the alerts: connection refused"
    ]
    outcome[0] = ALERTS[:1]
    got = points(metrics_reader)
    assert got["tokentrace.alert.evaluated"] == {(): 1}
    assert got["tokentrace.alert.firing"] == {
        (("tokentrace.alert.model", "llama"), ("tokentrace.alert.name", "regression")): 1
    }
    assert "alert metrics: evaluating the alerts again" in caplog.messages
    provider.shutdown()


# --- which exporter ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({}, []),
        ({"OTEL_METRICS_EXPORTER": "none"}, []),
        ({"OTEL_METRICS_EXPORTER": " "}, []),
        ({"OTEL_METRICS_EXPORTER": "otlp"}, ["otlp_proto_grpc"]),
        ({"OTEL_METRICS_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"},
         ["otlp_proto_http"]),
        ({"OTEL_METRICS_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
          "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "grpc"}, ["otlp_proto_grpc"]),
        ({"OTEL_METRICS_EXPORTER": "console, otlp_proto_http"}, ["console", "otlp_proto_http"]),
    ],
)  # fmt: skip
def test_exporter_names_follow_the_sdk(env: dict[str, str], names: list[str]) -> None:
    assert exporter_names(env) == names


def test_unusable_exporters_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"OTEL_EXPORTER_OTLP_PROTOCOL='http/json': metrics go out"):
        exporter_names({"OTEL_METRICS_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})
    with pytest.raises(ConfigError, match=r"no metrics exporter 'statsd' is installed$"):
        reader("statsd")
    assert alert_metrics.from_environment("", Thresholds(), {"OTEL_METRICS_EXPORTER": "none"}) is None
    disabled = {"OTEL_METRICS_EXPORTER": "console", "OTEL_SDK_DISABLED": "true"}
    assert alert_metrics.from_environment("", Thresholds(), disabled) is None


def test_push_exporters_are_read_periodically() -> None:
    made = reader("otlp_proto_http")
    assert isinstance(made, PeriodicExportingMetricReader)
    made.shutdown()
