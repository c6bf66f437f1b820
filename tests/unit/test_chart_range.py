"""``chart_range``: the dashboard's charts end on a rollup grain so the rollups answer them."""

from __future__ import annotations

import datetime as dt

import pytest

from tokentrace.dashboard.data import WINDOWS, chart_range

UTC = dt.timezone.utc
NOW = dt.datetime(2026, 12, 3, 13, 41, 27, 123456, tzinfo=UTC)


@pytest.mark.parametrize(
    ("key", "end"),
    [
        ("24h", dt.datetime(2026, 12, 3, 13, 45, tzinfo=UTC)),  # 30-minute buckets: 5-minute rows
        ("7d", dt.datetime(2026, 12, 3, 14, 0, tzinfo=UTC)),  # 4-hour buckets: hourly rows
        ("60d", dt.datetime(2026, 12, 4, 0, 0, tzinfo=UTC)),  # daily buckets: daily rows
    ],
)
def test_the_window_ends_at_the_next_boundary_of_the_coarsest_grain_that_fits(key: str, end: dt.datetime) -> None:
    window = WINDOWS[key]
    assert chart_range(window, NOW) == (end - dt.timedelta(hours=window.hours), end)


def test_on_a_boundary_the_window_ends_now() -> None:
    now = dt.datetime(2026, 12, 3, 0, 0, tzinfo=UTC)
    assert chart_range(WINDOWS["60d"], now) == (now - dt.timedelta(days=60), now)


def test_buckets_no_grain_divides_end_now() -> None:
    window = WINDOWS["1h"]  # 2-minute buckets
    assert chart_range(window, NOW) == (NOW - dt.timedelta(hours=1), NOW)


def test_the_grid_is_utc_whatever_the_zone_of_now() -> None:
    local = NOW.astimezone(dt.timezone(dt.timedelta(hours=5, minutes=30)))
    assert chart_range(WINDOWS["60d"], local) == chart_range(WINDOWS["60d"], NOW)
