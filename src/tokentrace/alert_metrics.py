"""The alerts as OpenTelemetry metrics, for a Collector or Prometheus to alert on.

``tokentrace serve`` exports them when ``OTEL_METRICS_EXPORTER`` is set (the standard
variable; unset or ``none``: no metrics). Four observable gauges, evaluated by
:func:`tokentrace.alerts.check` when the SDK collects (every
``OTEL_METRIC_EXPORT_INTERVAL`` ms, default 60 000, for a push exporter):

===============================  ==========================================================
``tokentrace.alert.value``       the alert's value (a ratio, a fraction, days); no point
                                 while it is unknown (no baseline, no disk cap)
``tokentrace.alert.threshold``   the threshold it is held against
``tokentrace.alert.firing``      1 when it fires, else 0
``tokentrace.alert.evaluated``   1 when the last evaluation read the database, 0 when it
                                 failed (then the three above have no points)
===============================  ==========================================================

The first three carry ``tokentrace.alert.name`` (``regression``, ``error_rate``,
``disk_cap``) and, for a model's alert, ``tokentrace.alert.model``. One collection
runs one evaluation (three report queries on a kept connection), however many gauges
it reads; a database error is logged (once while it lasts) and never leaves the
callback.

Exporters, as the OpenTelemetry Python SDK picks them: ``OTEL_METRICS_EXPORTER`` is a
comma-separated list; ``otlp`` is OTLP over ``OTEL_EXPORTER_OTLP_METRICS_PROTOCOL``
(else ``OTEL_EXPORTER_OTLP_PROTOCOL``, else ``grpc``; ``http/protobuf`` for HTTP);
any other name is an ``opentelemetry_metrics_exporter`` entry point (``console``,
``otlp_proto_grpc``, ``otlp_proto_http``, ``prometheus`` from
``opentelemetry-exporter-prometheus``). The OTLP exporters read their own
``OTEL_EXPORTER_OTLP_*`` settings (endpoint, headers, TLS) and are in the
``tokentrace[metrics]`` extra. The resource is the SDK's (``OTEL_SERVICE_NAME``,
``OTEL_RESOURCE_ATTRIBUTES``), with ``service.name`` ``tokentrace`` unless set.

Python (any ``MeterProvider``, such as one with an ``InMemoryMetricReader``)::

    gauges = AlertGauges(provider.get_meter("tokentrace.alerts"), evaluate=lambda: alerts_now)
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from importlib import metadata
from typing import Any

from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.metrics import CallbackOptions, Meter, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    MetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource

from tokentrace import alerts, reports
from tokentrace import attributes as A
from tokentrace.config import ConfigError
from tokentrace.store.errors import describe
from tokentrace.store.pool import ConnectionPool

_log = logging.getLogger(__name__)

VALUE = "tokentrace.alert.value"
THRESHOLD = "tokentrace.alert.threshold"
FIRING = "tokentrace.alert.firing"
EVALUATED = "tokentrace.alert.evaluated"
METER_NAME = "tokentrace.alerts"
SERVICE_NAME = "tokentrace"
EXTRA_HINT = "pip install 'tokentrace[metrics]'"
_ENTRY_POINTS = "opentelemetry_metrics_exporter"
_OTLP_BY_PROTOCOL = {"grpc": "otlp_proto_grpc", "http/protobuf": "otlp_proto_http"}


def alert_attributes(alert: alerts.Alert) -> dict[str, str]:
    attrs = {A.TT_ALERT_NAME: alert.name}
    if alert.model is not None:
        attrs[A.TT_ALERT_MODEL] = alert.model
    return attrs


class AlertGauges:
    """The four gauges on ``meter``, observing what ``evaluate()`` returns.

    ``evaluate`` is called once per collection: the first gauge read after every
    gauge has seen the last result starts a new evaluation. If it raises, the
    error is logged and the collection gets ``evaluated`` = 0 and nothing else.
    """

    def __init__(self, meter: Meter, evaluate: Callable[[], Sequence[alerts.Alert]]) -> None:
        self._evaluate = evaluate
        self._lock = threading.Lock()
        self._current: Sequence[alerts.Alert] | None = None
        self._read_by: set[str] = set()
        self._failing: str | None = None  # the error being reported, while it lasts
        self.evaluations = 0
        meter.create_observable_gauge(
            VALUE, [self._values], description="The alert's value: a ratio, a fraction or days"
        )
        meter.create_observable_gauge(
            THRESHOLD, [self._thresholds], description="The threshold the alert's value is held against"
        )
        # No unit "1": Prometheus naming would append "_ratio" to these names.
        meter.create_observable_gauge(
            FIRING, [self._firing], description="1 while the alert fires, else 0"
        )
        meter.create_observable_gauge(
            EVALUATED, [self._evaluated],
            description="1 when the alerts were evaluated, 0 when the database could not be read",
        )  # fmt: skip

    def _snapshot(self, gauge: str) -> Sequence[alerts.Alert] | None:
        with self._lock:
            if gauge in self._read_by or not self._read_by:
                self._current = self._run()
                self._read_by = set()
            self._read_by.add(gauge)
            return self._current

    def _run(self) -> Sequence[alerts.Alert] | None:
        self.evaluations += 1
        try:
            found = self._evaluate()
        except Exception as exc:  # noqa: BLE001 - telemetry never raises into the SDK
            message = describe(exc)
            if message != self._failing:
                _log.warning("alert metrics: cannot evaluate the alerts: %s", message)
                self._failing = message
            else:
                _log.debug("alert metrics: still cannot evaluate the alerts: %s", message)
            return None
        if self._failing is not None:
            _log.info("alert metrics: evaluating the alerts again")
            self._failing = None
        return found

    def _values(self, options: CallbackOptions) -> Iterable[Observation]:
        found = self._snapshot(VALUE) or ()
        return [Observation(a.value, alert_attributes(a)) for a in found if a.value is not None]

    def _thresholds(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(a.threshold, alert_attributes(a)) for a in self._snapshot(THRESHOLD) or ()]

    def _firing(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(int(a.firing), alert_attributes(a)) for a in self._snapshot(FIRING) or ()]

    def _evaluated(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(0 if self._snapshot(EVALUATED) is None else 1)]


def store_evaluator(
    connections: ConnectionPool, thresholds: alerts.Thresholds
) -> Callable[[], Sequence[alerts.Alert]]:
    """``alerts.check`` on a kept report connection, without tracing its queries."""

    def evaluate() -> Sequence[alerts.Alert]:
        with suppress_instrumentation():
            return connections.run(lambda conn: alerts.check(conn, thresholds))

    return evaluate


# --- the exporters of `tokentrace serve` ---------------------------------------------------
def exporter_names(environ: Mapping[str, str]) -> list[str]:
    """The entry point names ``OTEL_METRICS_EXPORTER`` asks for (``otlp`` resolved)."""
    names = environ.get("OTEL_METRICS_EXPORTER", "").strip()
    if not names or names.lower() == "none":
        return []
    resolved = []
    for name in (n.strip() for n in names.split(",")):
        if not name:
            continue
        if name == "otlp":
            variable = "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL"
            protocol = environ.get(variable, "").strip()
            if not protocol:
                variable = "OTEL_EXPORTER_OTLP_PROTOCOL"
                protocol = environ.get(variable, "").strip() or "grpc"
            if protocol not in _OTLP_BY_PROTOCOL:
                raise ConfigError(
                    f"{variable}={protocol!r}: metrics go out as grpc or http/protobuf"
                )
            name = _OTLP_BY_PROTOCOL[protocol]
        resolved.append(name)
    return resolved


def reader(name: str) -> MetricReader:
    """The metric reader for exporter entry point ``name`` (a push exporter is read periodically)."""
    found = metadata.entry_points(group=_ENTRY_POINTS, name=name)
    if not found:
        hint = f" ({EXTRA_HINT})" if name.startswith("otlp") else ""
        raise ConfigError(f"OTEL_METRICS_EXPORTER: no metrics exporter {name!r} is installed{hint}")
    (entry_point,) = tuple(found)[:1]
    try:
        kind = entry_point.load()
        if isinstance(kind, type) and issubclass(kind, MetricReader):
            made: MetricReader = kind()
            return made
        if isinstance(kind, type) and issubclass(kind, MetricExporter):
            return PeriodicExportingMetricReader(kind())
    except ImportError as exc:
        raise ConfigError(f"OTEL_METRICS_EXPORTER: cannot load {name!r}: {exc}") from None
    raise ConfigError(f"OTEL_METRICS_EXPORTER: {name!r} is not a metrics exporter")


def resource() -> Resource:
    """The SDK's resource from the environment, named ``tokentrace`` unless it is named."""
    detected = Resource.create()
    if str(detected.attributes.get(A.SERVICE_NAME, "")).startswith("unknown_service"):
        detected = detected.merge(Resource({A.SERVICE_NAME: SERVICE_NAME}))
    return detected


class AlertMetrics:
    """A meter provider of its own (the process's global one is left alone) with the gauges."""

    def __init__(
        self,
        readers: Sequence[MetricReader],
        evaluate: Callable[[], Sequence[alerts.Alert]],
        *,
        on_shutdown: Callable[[], None] | None = None,
        names: Sequence[str] = (),
    ) -> None:
        from tokentrace import __version__

        self.names = tuple(names)  # the exporters, for the log

        self.provider = MeterProvider(metric_readers=list(readers), resource=resource())
        self.gauges = AlertGauges(self.provider.get_meter(METER_NAME, __version__), evaluate)
        self._on_shutdown = on_shutdown
        self._stopped = False

    def shutdown(self) -> None:
        """Export a last time and stop (idempotent)."""
        if self._stopped:
            return
        self._stopped = True
        try:
            self.provider.shutdown()
        finally:
            if self._on_shutdown is not None:
                self._on_shutdown()


def from_environment(
    dsn: str, thresholds: alerts.Thresholds, environ: Mapping[str, str] | None = None
) -> AlertMetrics | None:
    """The alert metrics ``tokentrace serve`` exports, or None when none are asked for.

    A :class:`~tokentrace.config.ConfigError` names what cannot be used (an unknown
    exporter, a missing package, an unknown OTLP protocol).
    """
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    names = exporter_names(env)
    if not names:
        return None
    readers = [reader(name) for name in names]
    connections = reports.report_pool(dsn)
    return AlertMetrics(
        readers,
        store_evaluator(connections, thresholds),
        on_shutdown=connections.close,
        names=names,
    )
