"""The dashboard in a real headless Chromium: data drawn, no errors, nothing fetched from outside.

Skipped (with the reason) where Chromium or the ``websockets`` package is missing;
CI installs both. Screenshots are saved under ``artifacts/``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.helpers import query
from tests.integration.dashboard.support import ARTIFACTS, SimModel, StartServed, send_fleet

pytest.importorskip("websockets", reason="the browser tests need the websockets package (pip install -e '.[test]')")

from tests.integration.dashboard.cdp import Browser, Page, chromium_path

pytestmark = pytest.mark.slow

THREE = (
    SimModel("llama3.2:3b", decode_ms=11, prefill_ms=0.6, load_s=1.9),
    SimModel("qwen2.5:7b", decode_ms=24, prefill_ms=1.2, load_s=3.4),
    # Model names are user data: this one would run script if the page did not escape it.
    SimModel("mistral<img src=x onerror=alert(1)>", decode_ms=19, prefill_ms=0.9, load_s=4.2),
)
ZONE = "Asia/Kolkata"  # +05:30: local labels differ from UTC ones even at round hours
# (Chromium may name it by an older alias, Asia/Calcutta: compare with what it reports.)
RENDERED_IN_LOCAL_ZONE = (
    "document.getElementById('data').dataset.tz === Intl.DateTimeFormat().resolvedOptions().timeZone"
)

# Every SVG chart on the page and how many marks (paths, bars, dots) each draws.
CHART_MARKS = """
Array.from(document.querySelectorAll('svg.chart')).map(svg => ({
  label: svg.getAttribute('aria-label'),
  marks: Array.from(svg.querySelectorAll('.mark')).filter(el => {
    const box = el.getBBox();
    if (el.tagName === 'path') return (el.getAttribute('d') || '').length > 0 && (box.width > 0 || box.height > 0);
    if (el.tagName === 'circle') return Number(el.getAttribute('r')) > 0;
    return box.width > 0 && box.height > 0;
  }).length,
}))
"""


@pytest.fixture(scope="module")
def chromium() -> str:
    found = chromium_path()
    if found is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium; the CI script installs it)")
    return found


@pytest.fixture
def browser(chromium: str, tmp_path: Path) -> Iterator[Browser]:
    instance = Browser(chromium, tmp_path / "profile")
    yield instance
    instance.close()


def _assert_clean(page: Page, origin: str) -> None:
    assert page.console_errors() == []
    assert page.dialogs() == []
    # Every request went back to the server that served the page (or was inline data).
    outside = [u for u in page.request_urls() if not u.startswith((origin, "data:"))]
    assert outside == []
    assert all(urlsplit(u).hostname in (None, "127.0.0.1") for u in page.request_urls())


def _open(page: Page, url: str) -> None:
    page.goto(url)
    # The first visit is drawn in UTC; the script sets the zone cookie and redraws in place.
    page.wait_for(RENDERED_IN_LOCAL_ZONE)


def test_three_models_drawn_in_every_chart(start_dashboard: StartServed, browser: Browser, db: str) -> None:
    served = start_dashboard()
    sent = send_fleet(served.receiver.http_port, THREE)
    assert query(db, "SELECT count(*) FROM tokentrace.spans")[0][0] == sent

    page = browser.new_page(timezone=ZONE)
    _open(page, served.url)

    text = page.evaluate("document.body.innerText")
    for model in THREE:
        assert model.name in text
    zone = page.evaluate("Intl.DateTimeFormat().resolvedOptions().timeZone")
    assert zone.startswith("Asia/") and f"({zone})" in text  # times in the viewer's zone
    assert page.evaluate("document.querySelectorAll('img').length") == 0  # the hostile name stayed text

    charts = page.evaluate(CHART_MARKS)
    labels = [c["label"] for c in charts]
    assert any("over time" in label for label in labels)
    assert any("prefill and decode" in label for label in labels)
    assert any("model loads" in label for label in labels)
    assert any("database size" in label for label in labels)
    assert sum("60-day trend" in label for label in labels) == len(THREE)
    assert [c for c in charts if c["marks"] == 0] == []
    # One line (with its dots) per model in the chart over time.
    assert page.evaluate("document.querySelectorAll('svg.chart g.series').length") == len(THREE)

    # The table sorts by a column when its heading is clicked.
    page.evaluate("document.querySelector('#per-model th:nth-child(7) button').click()")
    order = page.evaluate(
        "Array.from(document.querySelectorAll('#per-model tbody tr td:nth-child(7)')).map(td => Number(td.dataset.v))"
    )
    assert order == sorted(order, reverse=True)

    page.screenshot(ARTIFACTS / "dashboard-three-models.png")
    _assert_clean(page, served.url)


def test_refresh_redraws_in_place(start_dashboard: StartServed, browser: Browser) -> None:
    served = start_dashboard()
    send_fleet(served.receiver.http_port, THREE[:1], calls=4)
    page = browser.new_page(timezone=ZONE)
    _open(page, served.url)
    page.evaluate("window.__notReloaded = true")
    assert "gemma3:4b" not in page.evaluate("document.body.innerText")

    send_fleet(served.receiver.http_port, (SimModel("gemma3:4b", 9, 0.5, 1.1),), calls=4, failing=None)
    assert page.evaluate("window.tokentrace.refresh()") is True

    assert "gemma3:4b" in page.evaluate("document.body.innerText")
    assert page.evaluate("window.__notReloaded") is True  # the data region changed, not the page
    _assert_clean(page, served.url)


def test_empty_database_shows_what_to_do(start_dashboard: StartServed, browser: Browser) -> None:
    served = start_dashboard()
    page = browser.new_page(timezone=ZONE)
    _open(page, served.url)

    text = page.evaluate("document.body.innerText")
    assert "No spans yet" in text
    assert "http://127.0.0.1:4318/v1/traces" in text
    assert "tokentrace demo" in text
    assert page.evaluate("document.querySelectorAll('.empty').length") >= 5
    # Only the footprint has something to draw (the schema's own tables).
    labels = [c["label"] for c in page.evaluate(CHART_MARKS)]
    assert labels == ["database size per relation"]

    page.screenshot(ARTIFACTS / "dashboard-empty.png")
    _assert_clean(page, served.url)


def test_token_protected_dashboard_signs_in_with_a_cookie(start_dashboard: StartServed, browser: Browser) -> None:
    served = start_dashboard(auth_token="s3cret-token")
    page = browser.new_page(timezone=ZONE)
    page.goto(served.url)
    assert page.evaluate("document.getElementById('login') !== null")
    assert page.evaluate("document.getElementById('data')") is None

    page.evaluate("document.getElementById('token').value = 's3cret-token'")
    page.evaluate("document.querySelector('#login button').click()")
    page.wait_for("document.getElementById('data') !== null")
    page.wait_for(RENDERED_IN_LOCAL_ZONE)
    assert "No spans yet" in page.evaluate("document.body.innerText")
    # The sign-in page itself answered 401: that is the one console error expected.
    errors = [e for e in page.console_errors() if "401" not in e]
    assert errors == []
