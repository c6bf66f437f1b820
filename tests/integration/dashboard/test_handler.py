"""``GET /`` over real HTTP from the receiver: status codes, headers, escaping, access."""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from email.message import Message
from pathlib import Path

import pytest

from tokentrace.dashboard import handle_dashboard
from tokentrace.store.embedded import embedded_dsn
from tests.integration.dashboard.support import SimModel, StartServed, send_fleet, store_fleet

HOSTILE = SimModel('<script>alert("x")</script>&amp;', decode_ms=12, prefill_ms=0.5, load_s=2.0)
PLAIN = SimModel("llama3.2:3b", decode_ms=11, prefill_ms=0.6, load_s=1.9)


def _get(url: str, **headers: str) -> tuple[int, Message, str]:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers, response.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.headers, exc.read().decode()


def test_page_escapes_model_names_and_sets_a_strict_policy(start_dashboard: StartServed) -> None:
    served = start_dashboard()
    send_fleet(served.receiver.http_port, (HOSTILE, PLAIN), calls=4)
    status, headers, body = _get(served.url)

    assert status == 200
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert "<script>alert" not in body
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;amp;" in body
    policy = headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy
    nonce = re.search(r"'nonce-([^']+)'", policy)
    assert nonce is not None
    scripts = re.findall(r"<script([^>]*)>", body)
    assert scripts == [f' nonce="{nonce.group(1)}"']  # the page's one script, and only with the nonce
    assert headers["Cache-Control"] == "no-store"
    assert headers["X-Content-Type-Options"] == "nosniff"
    # Nothing to fetch: no external src/href, no CSS import or url().
    assert re.findall(r'(?:src|href|action)="(?!/|\?|data:)([^"]*)"', body) == []
    assert "@import" not in body and "url(" not in body


@pytest.mark.parametrize("window", ["1h", "24h", "7d", "60d"])
def test_every_window_renders(start_dashboard: StartServed, window: str) -> None:
    served = start_dashboard()
    send_fleet(served.receiver.http_port, (PLAIN,), calls=3)
    status, _, body = _get(f"{served.url}?window={window}")
    assert status == 200
    assert 'aria-current=page>' in body
    assert PLAIN.name in body


def test_partial_answers_the_data_region_only(start_dashboard: StartServed) -> None:
    served = start_dashboard()
    status, _, body = _get(f"{served.url}?partial=1&window=7d")
    assert status == 200
    assert body.startswith('<main id="data"') and body.endswith("</main>")
    assert "<html" not in body and "<script" not in body


def test_model_filter(start_dashboard: StartServed, clean_db: str) -> None:
    served = start_dashboard()
    store_fleet(clean_db, (PLAIN, SimModel("qwen2.5:7b", 24, 1.2, 3.4)), calls=3)
    _, _, body = _get(f"{served.url}?model=qwen2.5%3A7b")
    table = body[body.index('<table id="per-model"'):]
    table = table[: table.index("</table>")]
    assert "qwen2.5:7b" in table and PLAIN.name not in table
    assert '<option value="qwen2.5:7b" selected>' in body


@pytest.mark.parametrize("query", ["window=2h", "refresh=abc", "refresh=2", "window=1h&window=7d"])
def test_bad_parameters_answer_400(start_dashboard: StartServed, query: str) -> None:
    served = start_dashboard()
    status, headers, body = _get(f"{served.url}?{query}")
    assert status == 400
    assert headers["Content-Type"].startswith("text/html")
    assert "Bad request" in body


def test_a_token_is_required_when_configured(start_dashboard: StartServed) -> None:
    served = start_dashboard(auth_token="s3cret")
    status, headers, body = _get(served.url)
    assert status == 401
    assert headers["WWW-Authenticate"] == 'Bearer realm="tokentrace"'
    assert 'id="login"' in body and 'id="data"' not in body
    assert _get(served.url, Cookie="tokentrace_token=wrong")[0] == 401
    assert _get(served.url, Authorization="Bearer wrong")[0] == 401
    assert _get(served.url, Authorization="Bearer s3cret")[0] == 200
    assert _get(served.url, Cookie="tt_tz=UTC; tokentrace_token=s3cret")[0] == 200
    # The rest of the port keeps its own rule: the header, not the page's cookie.
    assert _get(f"{served.url}telemetry/footprint", Cookie="tokentrace_token=s3cret")[0] == 401


def test_time_zone_cookie_labels_times_locally(start_dashboard: StartServed) -> None:
    served = start_dashboard()
    _, _, utc = _get(served.url)
    _, _, local = _get(served.url, Cookie="tt_tz=America%2FSt_Johns")
    assert 'data-tz="UTC"' in utc
    assert 'data-tz="America/St_Johns"' in local and "(America/St_Johns)" in local
    _, _, bogus = _get(served.url, Cookie="tt_tz=../../etc/passwd")
    assert 'data-tz="UTC"' in bogus


def test_database_down_is_503_with_retry() -> None:
    status, headers, body = handle_dashboard("", "postgresql://tokentrace@127.0.0.1:1/none?connect_timeout=3")
    assert status == 503
    assert headers["Retry-After"] == "10"
    assert b"Database unavailable" in body and b'http-equiv="refresh"' in body


def test_an_unmigrated_database_says_how_to_fix_it(tmp_path: Path) -> None:
    dsn = embedded_dsn(tmp_path / "bare")  # a database without the tokentrace schema
    status, headers, body = handle_dashboard("", dsn)
    assert status == 503 and headers["Retry-After"] == "10"
    assert b"tokentrace migrate" in body
