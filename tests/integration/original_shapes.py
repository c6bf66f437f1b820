"""The two reports' JSON shapes, key by key and type by type (docs/reports.md).

The original system's keys, with its types, beside every key tokentrace returned
before them. Used on the HTTP endpoints' JSON, the drop-in's dicts and the CLI's
``--json`` alike: after ``json.loads`` the types are JSON's (``int`` stays ``int``,
``float`` stays ``float``), and the drop-in's must match them.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from tokentrace.tables import format_bytes

# What tokentrace's footprint carried before the original's keys were added (row_counts
# then held "estimated"/"exact", now in row_counts_source).
TOKENTRACE_FOOTPRINT_KEYS = {
    "relations", "total_bytes", "total_size", "database_bytes", "oldest_span", "newest_span",
    "spans_per_day", "bytes_per_day", "retention_days", "rollup_retention_days",
    "projected_bytes", "projected_size", "disk_cap_bytes", "fits_within_cap", "days_until_cap",
}  # fmt: skip
ORIGINAL_FOOTPRINT_KEYS = {"table_sizes", "row_counts", "oldest_telemetry_record", "monitored_at"}
FOOTPRINT_KEYS = TOKENTRACE_FOOTPRINT_KEYS | ORIGINAL_FOOTPRINT_KEYS | {"row_counts_source"}
RELATION_KEYS = {"relation", "total_bytes", "total_size", "row_estimate", "bytes_per_day", "projected_bytes"}

STATISTICS_KEYS = {"overall", "model_trends", "retention_window_days", "efficiency_change"}
OVERALL_KEYS = {
    "total_measurements", "unique_models", "oldest_record", "newest_record",  # the original's
    "total_tokens", "retention_window_days",
}  # fmt: skip
TREND_KEYS = {"component", "model", "avg_efficiency", "measurement_count", "total_tokens_processed"}

# format_bytes's output: decimal units, one decimal above bytes.
PRETTY_SIZE = re.compile(r"-?\d{1,3}(,\d{3})* B|-?\d{1,3}(,\d{3})*\.\d (kB|MB|GB|TB|PB)")


def is_int(value: Any) -> bool:
    return type(value) is int  # not bool, not float


def assert_iso_utc(value: Any) -> dt.datetime:
    """An ISO 8601 string with a UTC offset; returns it parsed."""
    assert type(value) is str, value
    parsed = dt.datetime.fromisoformat(value)
    assert parsed.utcoffset() == dt.timedelta(0), value
    return parsed


def assert_footprint(foot: dict[str, Any], *, before: float, after: float) -> None:
    """``foot`` (a footprint report made between the Unix times ``before`` and ``after``)."""
    assert set(foot) == FOOTPRINT_KEYS
    relations = foot["relations"]
    assert type(relations) is list and relations
    for rel in relations:
        assert RELATION_KEYS <= set(rel) <= RELATION_KEYS | {"exact_rows"}
        assert type(rel["relation"]) is str and is_int(rel["total_bytes"]) and is_int(rel["row_estimate"])
        assert rel["total_size"] == format_bytes(rel["total_bytes"])

    sizes = foot["table_sizes"]
    assert type(sizes) is list and len(sizes) == len(relations)
    for entry, rel in zip(sizes, relations):
        assert set(entry) == {"tablename", "total_size", "size_bytes"}
        assert type(entry["tablename"]) is str and entry["tablename"] == rel["relation"]
        assert is_int(entry["size_bytes"]) and entry["size_bytes"] == rel["total_bytes"]
        assert type(entry["total_size"]) is str and PRETTY_SIZE.fullmatch(entry["total_size"])
        assert entry["total_size"] == format_bytes(entry["size_bytes"])

    counts = foot["row_counts"]
    assert type(counts) is dict and set(counts) == {r["relation"] for r in relations}
    assert all(is_int(n) and n >= 0 for n in counts.values())
    assert foot["row_counts_source"] in ("estimated", "exact")
    source = "exact_rows" if foot["row_counts_source"] == "exact" else "row_estimate"
    assert counts == {r["relation"]: r[source] for r in relations}

    if foot["oldest_span"] is None:
        assert foot["oldest_telemetry_record"] is None  # an empty store
    else:
        assert_iso_utc(foot["oldest_telemetry_record"])
        assert foot["oldest_telemetry_record"] == foot["oldest_span"]

    monitored = foot["monitored_at"]
    assert type(monitored) is str and re.fullmatch(r"\d+\.\d{6}", monitored), monitored
    assert before - 1e-6 <= float(monitored) <= after + 1e-6

    assert is_int(foot["total_bytes"]) and foot["total_bytes"] == sum(r["total_bytes"] for r in relations)
    assert foot["total_size"] == format_bytes(foot["total_bytes"])
    assert foot["projected_size"] == format_bytes(foot["projected_bytes"])
    assert is_int(foot["database_bytes"]) and foot["database_bytes"] >= foot["total_bytes"]


def assert_statistics(stats: dict[str, Any]) -> None:
    """``stats``, the ``statistics`` of a 60-day report."""
    assert set(stats) == STATISTICS_KEYS
    overall = stats["overall"]
    assert set(overall) == OVERALL_KEYS
    for key in ("total_measurements", "unique_models", "total_tokens", "retention_window_days"):
        assert is_int(overall[key]), key
    assert is_int(stats["retention_window_days"]) and stats["retention_window_days"] == 60
    if overall["total_measurements"] == 0:
        assert overall["oldest_record"] is None and overall["newest_record"] is None
    else:
        assert assert_iso_utc(overall["oldest_record"]) <= assert_iso_utc(overall["newest_record"])

    trends = stats["model_trends"]
    assert type(trends) is list and len(trends) <= overall["unique_models"]
    for trend in trends:
        assert set(trend) == TREND_KEYS
        assert type(trend["component"]) is str and trend["component"] == trend["model"]
        assert trend["avg_efficiency"] is None or type(trend["avg_efficiency"]) is float
        assert is_int(trend["measurement_count"]) and is_int(trend["total_tokens_processed"])
    assert type(stats["efficiency_change"]) is list
