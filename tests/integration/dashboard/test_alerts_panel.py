"""The dashboard's Alerts panel over real HTTP: firing alerts listed, escaped, filtered."""

from __future__ import annotations

import re

import pytest

from tests.integration.dashboard.support import StartServed
from tests.integration.dashboard.test_handler import _get
from tests.integration.test_alerts import calls, fleet, send


def _panel(body: str) -> str:
    start = body.index('<section class="card alerts')
    return body[start : body.index("</section>", start)]


def _rows(panel: str) -> list[list[str]]:
    rows = re.findall(r"<tr>(.*?)</tr>", panel[panel.index("<tbody>") :])
    return [[re.sub(r"<[^>]+>", "", cell) for cell in re.findall(r"<td[^>]*>(.*?)</td>", r)] for r in rows]


def test_firing_alerts_are_listed(start_dashboard: StartServed) -> None:
    served = start_dashboard()
    fleet(served.receiver)
    status, _, body = _get(served.url)
    assert status == 200
    panel = _panel(body)
    assert 'class="card alerts firing"' in panel and "2 firing" in panel
    assert _rows(panel) == [
        ["slower than its baseline", "slow", "2.00×", "1.50×",
         "40 ms/token in the last 24 h against 20 in the 60 days before (12 and 12 calls)"],
        ["error rate", "flaky", "10.0 %", "5.0 %", "2 errors in 20 calls in the last 1 h"],
    ]  # fmt: skip
    # The partial refresh carries the panel too.
    _, _, partial = _get(f"{served.url}?partial=1")
    assert _panel(partial) == panel


def test_the_panel_follows_the_model_filter_and_escapes(start_dashboard: StartServed) -> None:
    served = start_dashboard()
    hostile = '<b>"x"</b>'
    send(served.receiver, calls(hostile, 12, ago_hours=72, ms=1000), calls(hostile, 12, ago_hours=2, ms=3000))
    fleet(served.receiver)
    _, _, body = _get(served.url)
    panel = _panel(body)
    assert "<b>" not in panel and "&lt;b&gt;&quot;x&quot;&lt;/b&gt;" in panel
    assert [r[1] for r in _rows(panel)] == ["&lt;b&gt;&quot;x&quot;&lt;/b&gt;", "slow", "flaky"]
    _, _, only = _get(f"{served.url}?model=slow")
    assert [r[1] for r in _rows(_panel(only))] == ["slow"]
    _, _, other = _get(f"{served.url}?model=steady")
    calm = _panel(other)
    assert 'class="card alerts calm"' in calm and "None firing." in calm


def test_thresholds_come_from_the_environment(
    start_dashboard: StartServed, monkeypatch: pytest.MonkeyPatch
) -> None:
    served = start_dashboard()
    fleet(served.receiver)
    monkeypatch.setenv("TOKENTRACE_ALERT_REGRESSION_RATIO", "3")
    monkeypatch.setenv("TOKENTRACE_ALERT_ERROR_RATE", "0.5")
    _, _, body = _get(served.url)
    panel = _panel(body)
    assert "None firing." in panel and "Fires at 3× the 60-day ms/token, 50.0 % errors" in panel
    monkeypatch.setenv("TOKENTRACE_ALERT_MIN_CALLS", "many")
    status, _, broken = _get(served.url)
    assert status == 200  # the rest of the page still shows
    assert "Not evaluated: TOKENTRACE_ALERT_MIN_CALLS=&#x27;many&#x27; is not an integer." in _panel(broken)
