"""The Grafana dashboard: every panel's SQL runs against the real schema; provisioning fits together.

Grafana expands its macros before a query reaches PostgreSQL; the test does the
same with concrete values (a 24-hour range, a one-minute interval, each value of
the ``model`` variable), then runs each query on a read-only report connection.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tokentrace import reports
from tests.integration.dashboard.support import SimModel, store_fleet

ROOT = Path(__file__).resolve().parents[3]
DASHBOARD = ROOT / "grafana" / "dashboards" / "tokentrace.json"
DATASOURCES = ROOT / "grafana" / "provisioning" / "datasources" / "tokentrace.yaml"
PROVIDERS = ROOT / "grafana" / "provisioning" / "dashboards" / "tokentrace.yaml"
DOCS = ROOT / "docs" / "dashboard.md"
FLEET = (SimModel("llama3.2:3b", 11, 0.6, 1.9), SimModel("it's-a-model", 24, 1.2, 3.4))


def _dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def _queries() -> list[tuple[str, str]]:
    """(panel title, SQL) of every panel target, and the template variables' queries."""
    board = _dashboard()
    found = [(p["title"], t["rawSql"]) for p in board["panels"] for t in p.get("targets", [])]
    found += [(f"variable {v['name']}", v["query"]) for v in board["templating"]["list"] if v["type"] == "query"]
    return found


def _sql_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def expand(sql: str, *, start: dt.datetime, end: dt.datetime, model: str, interval_ms: int = 60_000) -> str:
    """``sql`` with Grafana's macros and variables replaced as Grafana's PostgreSQL source does."""
    iso = {k: v.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ") for k, v in (("from", start), ("to", end))}
    sql = re.sub(r"\$__timeFilter\(([^)]+)\)", lambda m: f"{m.group(1)} BETWEEN '{iso['from']}' AND '{iso['to']}'", sql)
    sql = sql.replace("$__timeFrom()", f"'{iso['from']}'").replace("$__timeTo()", f"'{iso['to']}'")
    sql = sql.replace("$__interval_ms", str(interval_ms)).replace("$__interval", f"{interval_ms // 1000}s")
    sql = sql.replace("${model:sqlstring}", _sql_literal(model))
    return sql


@pytest.fixture
def fleet_db(clean_db: str) -> str:
    store_fleet(clean_db, FLEET, hours=20, calls=6)
    return clean_db


@pytest.mark.parametrize("model", ["__all", "llama3.2:3b", "it's-a-model", "no such model"])
def test_every_panel_query_runs(fleet_db: str, model: str) -> None:
    end = dt.datetime.now(dt.timezone.utc)
    start = end - dt.timedelta(hours=24)
    queries = _queries()
    assert len(queries) >= 10
    with reports.report_connection(fleet_db) as conn:  # read-only: no panel writes
        for title, raw in queries:
            sql = expand(raw, start=start, end=end, model=model)
            assert "$__" not in sql and "${" not in sql, title
            rows = conn.execute(sql.encode()).fetchall()
            if model == "__all" and not title.startswith("variable"):
                assert rows, f"panel {title!r} found no rows with a fleet in range"


def test_time_series_panels_answer_time_metric_value(fleet_db: str) -> None:
    end = dt.datetime.now(dt.timezone.utc)
    board = _dashboard()
    series = [p for p in board["panels"] if p["targets"][0]["format"] == "time_series"]
    assert len(series) >= 3
    with reports.report_connection(fleet_db) as conn:
        for panel in series:
            sql = expand(panel["targets"][0]["rawSql"], start=end - dt.timedelta(hours=6), end=end, model="__all")
            cur = conn.execute(sql.encode())
            assert [c.name for c in cur.description or []] == ["time", "metric", "value"], panel["title"]
            times = [row[0] for row in cur.fetchall()]
            assert times == sorted(times)


@pytest.mark.parametrize("interval_ms", [60_000, 600_000, 3_600_000])
def test_time_series_panels_equal_the_raw_series(fleet_db: str, interval_ms: int) -> None:
    """On Grafana's interval grid the rollups answer (from 5-minute intervals on); the
    figures are the raw series' (calls exactly, ms/token to 1e-9)."""
    end = dt.datetime.now(dt.timezone.utc)
    board = _dashboard()
    panels = {p["title"]: p["targets"][0]["rawSql"] for p in board["panels"]}
    with reports.report_connection(fleet_db) as conn:
        for title in ("Calls per interval", "Latency per output token (token-weighted)"):
            sql = expand(panels[title], start=end - dt.timedelta(hours=24), end=end, model="__all",
                         interval_ms=interval_ms)  # fmt: skip
            raw = sql.replace("tokentrace.efficiency_series_range(", "tokentrace.efficiency_series_raw(")
            assert raw != sql
            mine, want = conn.execute(sql.encode()).fetchall(), conn.execute(raw.encode()).fetchall()
            assert mine and [r[:2] for r in mine] == [r[:2] for r in want], title
            for a, b in zip(mine, want):
                assert a[2] == pytest.approx(b[2], rel=1e-9), (title, a, b)


def test_the_model_variable_lists_models(fleet_db: str) -> None:
    variable = _dashboard()["templating"]["list"][0]
    with reports.report_connection(fleet_db) as conn:
        models = [row[0] for row in conn.execute(variable["query"].encode()).fetchall()]
    assert models == sorted(m.name for m in FLEET)
    assert variable["includeAll"] and variable["allValue"] == "__all"


def test_provisioning_fits_together() -> None:
    sources = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    assert len(sources) == 1
    source = sources[0]
    assert source["type"] == "grafana-postgresql-datasource"
    # Credentials come from the environment, never from the file.
    assert source["secureJsonData"]["password"].startswith("${")
    assert source["url"].startswith("${") and source["user"].startswith("${")
    for panel in _dashboard()["panels"]:
        assert panel["datasource"]["uid"] == source["uid"], panel["title"]
        assert all(t["datasource"]["uid"] == source["uid"] for t in panel["targets"])

    provider = yaml.safe_load(PROVIDERS.read_text())["providers"][0]
    compose = _compose_snippet()
    grafana = compose["services"]["grafana"]
    assert re.fullmatch(r"grafana/grafana(-oss)?:\d+\.\d+\.\d+", grafana["image"]), "pin an exact version"
    mounts = {v.split(":")[1]: v.split(":")[0] for v in grafana["volumes"]}
    assert mounts[provider["options"]["path"]] == "./grafana/dashboards"
    assert mounts["/etc/grafana/provisioning"] == "./grafana/provisioning"
    names = re.findall(r"\$\{(\w+)\}", json.dumps(source))
    assert set(names) <= set(grafana["environment"]), "every variable the data source reads is set"
    assert all(p.startswith("127.0.0.1:") for p in grafana["ports"])


def _compose_snippet() -> dict[str, Any]:
    """The docker-compose service block given in docs/dashboard.md."""
    text = DOCS.read_text()
    block = re.search(r"```yaml\n(services:\n.*?)```", text, re.DOTALL)
    assert block is not None, "docs/dashboard.md has a ```yaml block starting with services:"
    loaded: dict[str, Any] = yaml.safe_load(block.group(1))
    return loaded
