"""The dashboard's Alerts panel: the alerts that fire now, from :func:`tokentrace.alerts.check`.

The page shows the same alerts as ``GET /telemetry/alerts`` and ``tokentrace alerts``,
against the thresholds of the server's environment (``TOKENTRACE_ALERT_*``). With a
model chosen on the page, that model's alerts and the store's (``disk_cap``). A
threshold that cannot be used is said in the panel; the rest of the page still shows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from tokentrace import alerts
from tokentrace.alerts import Alert, Thresholds
from tokentrace.config import ConfigError
from tokentrace.dashboard import fmt
from tokentrace.dashboard.svg import esc

LABELS = {
    alerts.REGRESSION: "slower than its baseline",
    alerts.ERROR_RATE: "error rate",
    alerts.DISK_CAP: "disk cap near",
}


@dataclass(frozen=True)
class AlertsPanel:
    alerts: Sequence[Alert]
    thresholds: Thresholds | None
    error: str | None = None  # a threshold setting that cannot be used

    @property
    def firing(self) -> list[Alert]:
        return [a for a in self.alerts if a.firing]


def gather(conn: psycopg.Connection[Any], model: str | None = None) -> AlertsPanel:
    try:
        thresholds = Thresholds.resolve()
    except ConfigError as exc:
        return AlertsPanel((), None, str(exc))
    found = alerts.check(conn, thresholds)
    if model:
        found = [a for a in found if a.model in (model, None)]
    return AlertsPanel(found, thresholds)


def shown(alert_name: str, value: float | None) -> str:
    """A value or threshold in its alert's unit."""
    if value is None:
        return fmt.DASH
    if alert_name == alerts.REGRESSION:
        return f"{value:.2f}×"
    if alert_name == alerts.ERROR_RATE:
        return fmt.percent(value)
    return fmt.days(value)


def _rule(t: Thresholds) -> str:
    return (
        f"Fires at {t.regression_ratio:g}× the 60-day ms/token, {fmt.percent(t.error_rate)} errors "
        f"over {t.error_window_hours:g} h, or the disk cap {t.disk_days:g} days away; "
        f"a model needs {t.min_calls} calls. <code>/telemetry/alerts</code> lists every alert."
    )


def render(panel: AlertsPanel | None) -> str:
    """The panel's HTML (nothing when it was not gathered)."""
    if panel is None:
        return ""
    if panel.thresholds is None:
        return (
            '<section class="card alerts" id="alerts"><div class="card-head"><h2>Alerts</h2></div>'
            f'<p class="sub bad">Not evaluated: {esc(panel.error)}.</p></section>'
        )
    firing = panel.firing
    if not firing:
        return (
            '<section class="card alerts calm" id="alerts"><h2>Alerts</h2>'
            f'<p class="sub">None firing. {_rule(panel.thresholds)}</p></section>'
        )
    rows = "".join(
        "<tr>"
        f'<td><span class="badge worse">{esc(LABELS.get(a.name, a.name))}</span></td>'
        f'<td class="model" title="{esc(a.model or "")}">{esc(a.model or "the store")}</td>'
        f"<td>{esc(shown(a.name, a.value))}</td>"
        f"<td>{esc(shown(a.name, a.threshold))}</td>"
        f'<td class="detail">{esc(a.detail)}</td>'
        "</tr>"
        for a in firing
    )
    head = (
        '<tr><th scope="col">alert</th><th scope="col">model</th><th scope="col">value</th>'
        '<th scope="col">threshold</th><th scope="col">detail</th></tr>'
    )
    count = f"{len(firing)} firing"
    return (
        '<section class="card alerts firing" id="alerts">'
        f'<div class="card-head"><div><h2>Alerts <span class="badge worse">{esc(count)}</span></h2>'
        f'<p class="sub">{_rule(panel.thresholds)}</p></div></div>'
        f'<div class="table-wrap"><table id="alert-list"><thead>{head}</thead>'
        f"<tbody>{rows}</tbody></table></div></section>"
    )
