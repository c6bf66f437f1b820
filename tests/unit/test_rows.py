from __future__ import annotations

import datetime as dt

import pytest

from tokentrace import attributes as A
from tokentrace.store.rows import COLUMN_TYPES, COLUMNS, RowError, SpanData, build_row

TRACE = bytes(range(1, 17))
SPAN = bytes(range(1, 9))


def _data(**overrides: object) -> SpanData:
    fields: dict[str, object] = dict(
        trace_id=TRACE,
        span_id=SPAN,
        parent_span_id=None,
        name="chat m",
        kind="CLIENT",
        start_ns=1_700_000_000_000_000_000,
        end_ns=1_700_000_001_000_000_000,
        attributes={A.GEN_AI_OPERATION_NAME: "chat", A.GEN_AI_REQUEST_MODEL: "m", A.GEN_AI_USAGE_OUTPUT_TOKENS: 100},
        resource={"service.name": "svc"},
    )
    fields.update(overrides)
    return SpanData(**fields)  # type: ignore[arg-type]


def _row(data: SpanData, limit: int = 65_536) -> dict[str, object]:
    built = build_row(data, limit)
    return dict(zip(COLUMNS, built.values))


def test_columns_and_types_line_up() -> None:
    assert len(COLUMNS) == len(COLUMN_TYPES) == 25


def test_row_carries_derived_figures() -> None:
    row = _row(_data())
    assert row["model"] == "m"
    assert row["service_name"] == "svc"
    assert row["duration_ms"] == 1000.0
    assert row["ms_per_token"] == 10.0
    assert row["start_time"] == dt.datetime(2023, 11, 14, 22, 13, 20, tzinfo=dt.timezone.utc)
    assert row["attributes"][A.TT_MS_PER_TOKEN] == 10.0  # type: ignore[index]


def test_nul_bytes_are_replaced_and_noted() -> None:
    built = build_row(_data(attributes={A.GEN_AI_REQUEST_MODEL: "m\x00x", "note": "a\x00b"}))
    row = dict(zip(COLUMNS, built.values))
    assert row["model"] == "m\ufffdx"
    assert row["attributes"]["note"] == "a\ufffdb"  # type: ignore[index]
    assert any("NUL" in p for p in built.problems)


def test_huge_strings_are_truncated_with_a_marker() -> None:
    built = build_row(_data(attributes={"big": "x" * 1_000_000}), 1000)
    value = dict(zip(COLUMNS, built.values))["attributes"]["big"]  # type: ignore[index]
    assert value.startswith("x" * 1000)
    assert value.endswith("…[truncated 999000 chars]")
    assert built.problems == ["big: truncated 999000 chars"]


def test_lone_surrogates_become_replacement_characters() -> None:
    built = build_row(_data(attributes={"s": "ok\udcff"}))
    assert dict(zip(COLUMNS, built.values))["attributes"]["s"] == "ok?"  # type: ignore[index]


def test_non_finite_floats_and_bytes_are_storable() -> None:
    attrs = dict(zip(COLUMNS, build_row(_data(attributes={"f": float("nan"), "b": b"\x01\x02"})).values))["attributes"]
    assert attrs["f"] == "nan"  # type: ignore[index]
    assert attrs["b"] == "0102"  # type: ignore[index]


def test_end_before_start_is_stored_without_duration() -> None:
    built = build_row(_data(end_ns=1_699_999_999_000_000_000))
    row = dict(zip(COLUMNS, built.values))
    assert row["duration_ms"] is None and row["ms_per_token"] is None
    assert "span ends before it starts: duration unknown" in built.problems


@pytest.mark.parametrize(
    "overrides",
    [{"trace_id": b"\x01" * 15}, {"span_id": b"\x00" * 8}, {"parent_span_id": b"\x01" * 3}],
)
def test_unusable_identity_is_refused(overrides: dict[str, object]) -> None:
    with pytest.raises(RowError):
        build_row(_data(**overrides))


def test_error_status_without_error_type_gets_other() -> None:
    row = _row(_data(status="ERROR"))
    assert row["error_type"] == "_OTHER"


def test_unicode_model_names_survive() -> None:
    row = _row(_data(attributes={A.GEN_AI_REQUEST_MODEL: "模型-🚀", A.GEN_AI_USAGE_OUTPUT_TOKENS: 1}))
    assert row["model"] == "模型-🚀"
