"""The dashboard's "Which model, now?" panel, on a real PostgreSQL."""

from __future__ import annotations

import re

from tests.integration.dashboard.support import SimModel, store_fleet
from tokentrace.dashboard import handle_dashboard
from tokentrace.expected import expected_latency

FAST = SimModel("phi3:mini", decode_ms=8, prefill_ms=0.3, load_s=1.2)
SLOW = SimModel("llama3.1:70b", decode_ms=45, prefill_ms=2.0, load_s=9.0)


def _panel(body: str) -> str:
    found = re.search(r'<section class="card" id="which-model">.*?</section>', body, re.S)
    assert found is not None, "no panel"
    return found.group(0)


def test_the_panel_ranks_the_models_as_expected_latency_does(clean_db: str) -> None:
    store_fleet(clean_db, (SLOW, FAST), hours=0.5, calls=12)
    status, _, raw = handle_dashboard("", clean_db)
    assert status == 200
    panel = _panel(raw.decode())
    assert "Which model, now?" in panel and "500 prompt and 200 output tokens" in panel
    shown = re.findall(r'<td class="model" title="([^"]+)"', panel)
    assert shown == [e.model for e in expected_latency(clean_db, 500, 200)] == ["phi3:mini", "llama3.1:70b"]

    status, _, raw = handle_dashboard("route_prompt=4000&route_output=20", clean_db)
    assert status == 200 and "4,000 prompt and 20 output tokens" in _panel(raw.decode())
    status, _, raw = handle_dashboard("route_prompt=-4", clean_db)
    assert status == 400 and "route_prompt must be a whole number of tokens" in raw.decode()


def test_the_panel_says_when_there_is_nothing_to_rank(clean_db: str) -> None:
    status, _, raw = handle_dashboard("", clean_db)
    assert status == 200
    assert "No calls in the last 14 days" in _panel(raw.decode())
