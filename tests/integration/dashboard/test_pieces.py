"""The dashboard's pure parts: formatting, time ticks, storage arithmetic, parameters, access."""

from __future__ import annotations

import datetime as dt
import math

import pytest

from tokentrace.dashboard import charts, fmt, svg, timeaxis
from tokentrace.dashboard.data import WINDOWS, Storage, Trend, disk_cap_bytes, storage
from tokentrace.dashboard.handler import BadRequest, authorized, cookies, parse_query

UTC = dt.timezone.utc
NOW = dt.datetime(2026, 3, 29, 12, 0, tzinfo=UTC)
MB = 10**6


@pytest.mark.parametrize(
    ("value", "text"),
    [(None, "\u2013"), (float("nan"), "\u2013"), (0, "0"), (0.6123, "0.612"), (12.44, "12.4"), (1234.5, "1,234")],
)
def test_number(value: float | None, text: str) -> None:
    assert fmt.number(value) == text


def test_units() -> None:
    assert fmt.compact(36) == "36"
    assert fmt.compact(76_400) == "76.4 k"
    assert fmt.ms(840) == "840 ms" and fmt.ms(24_300) == "24.3 s" and fmt.ms(150_000) == "2.50 min"
    assert fmt.size(8 * 1024) == "8.0 KiB" and fmt.size(512) == "512 B"
    assert fmt.percent(0.0123) == "1.2 %"
    assert fmt.change(1.32) == "+32 %" and fmt.change(0.97) == "\u22123 %" and fmt.change(1.001) == "\u00b10 %"
    assert fmt.days(0.5) == "12 h" and fmt.days(3.25) == "3.2 days" and fmt.days(1e9) == "> 10 years"


def test_ticks_fall_on_round_local_times() -> None:
    kolkata = timeaxis.zone("Asia/Kolkata")
    ticks = timeaxis.ticks(NOW - dt.timedelta(hours=24), NOW, kolkata)
    assert 4 <= len(ticks) <= 8
    for tick in ticks:
        local = tick.at.astimezone(kolkata.tzinfo)
        assert local.minute == 0 and local.hour % 3 == 0
    assert ticks == sorted(ticks, key=lambda t: t.at)


def test_ticks_across_a_daylight_saving_change() -> None:
    # Europe/Berlin moved its clocks from 02:00 to 03:00 on 2026-03-29.
    berlin = timeaxis.zone("Europe/Berlin")
    ticks = timeaxis.ticks(dt.datetime(2026, 3, 28, 20, tzinfo=UTC), dt.datetime(2026, 3, 29, 8, tzinfo=UTC), berlin)
    labels = [t.label for t in ticks]
    assert all(label.endswith(":00") or label.startswith("Mar") for label in labels)
    assert len({t.at for t in ticks}) == len(ticks)


def test_unknown_zones_are_utc() -> None:
    for name in (None, "", "Nowhere/City", "../../etc/passwd", "UTC", "x" * 100):
        assert timeaxis.zone(name).is_utc


def test_nice_axis() -> None:
    assert svg.nice_max(83.4) == (100.0, 20.0)
    assert svg.nice_max(0) == (1.0, 0.25)
    assert svg.tick_format(0.25) == "{:,.2f}" and svg.tick_format(5) == "{:,.0f}"
    assert svg.esc('<a href="x">') == "&lt;a href=&quot;x&quot;&gt;"


def test_storage_estimates_growth_without_a_growth_report(monkeypatch: pytest.MonkeyPatch) -> None:
    foot = {"total_bytes": 10 * MB, "relations": [{"relation": "spans", "total_bytes": 10 * MB}],
            "database_bytes": 20 * MB, "oldest_span": (NOW - dt.timedelta(days=10)).isoformat()}  # fmt: skip
    monkeypatch.delenv("TOKENTRACE_DISK_CAP_GB", raising=False)
    s = storage(foot, NOW, 60)
    assert s.growth_measured is False
    assert math.isclose(s.growth_per_day or 0, MB)
    assert math.isclose(s.projected_bytes or 0, 60 * MB)
    assert s.cap_bytes is None and s.days_until_cap is None and s.fits_cap is None

    monkeypatch.setenv("TOKENTRACE_DISK_CAP_GB", "0.03")  # 30 MB: reached in 20 days
    tight = storage(foot, NOW, 60)
    assert tight.fits_cap is False
    assert math.isclose(tight.days_until_cap or 0, 20.0)
    monkeypatch.setenv("TOKENTRACE_DISK_CAP_GB", "0.1")
    assert storage(foot, NOW, 60).fits_cap is True


def test_storage_takes_the_reported_growth_and_cap() -> None:
    foot = {"total_bytes": 1000, "relations": [], "bytes_per_day": 100.0, "projected_bytes": 6000,
            "disk_cap_bytes": 3000, "oldest_span": None}  # fmt: skip
    s = storage(foot, NOW, 60)
    assert s.growth_measured and s.growth_per_day == 100.0 and s.projected_bytes == 6000
    assert s.fits_cap is False and s.days_until_cap == 20.0
    assert storage({**foot, "disk_cap_bytes": None}, NOW, 60).cap_bytes is None


def test_an_empty_footprint() -> None:
    s = Storage([], 0, None, None, None, False, None, 60)
    assert s.projected_bytes is None and s.days_until_cap is None
    assert charts.footprint([]) is None


def test_disk_cap_from_the_environment() -> None:
    assert disk_cap_bytes({"TOKENTRACE_DISK_CAP_GB": "2"}) == 2 * 10**9
    assert disk_cap_bytes({"TOKENTRACE_DISK_CAP_GB": "0.5"}) == 500 * MB
    for bad in ("", "-1", "nan", "lots"):
        assert disk_cap_bytes({"TOKENTRACE_DISK_CAP_GB": bad}) is None


def test_trend_ratio() -> None:
    assert Trend("m", 10.0, 13.0, 1, 1).ratio == pytest.approx(1.3)
    assert Trend("m", None, 13.0, 1, 1).ratio is None
    assert Trend("m", 0.0, 13.0, 1, 1).ratio is None


def test_query_parameters() -> None:
    assert parse_query("").window is WINDOWS["24h"]
    params = parse_query("window=7d&model=qwen2.5%3A7b&refresh=0&partial=1&utm=x")
    assert (params.window.key, params.model, params.refresh_s, params.partial) == ("7d", "qwen2.5:7b", 0, True)
    assert parse_query({"model": ["  "]}).model is None
    for bad in ("window=3d", "refresh=4", "refresh=-5", "refresh=9999", "model=" + "m" * 600, "window=1h&window=7d"):
        with pytest.raises(BadRequest):
            parse_query(bad)


def test_cookies_and_access() -> None:
    assert cookies('a=1; tt_tz=Europe%2FBerlin; b="q"') == {"a": "1", "tt_tz": "Europe/Berlin", "b": "q"}
    assert authorized(None, None, None)
    assert authorized("Bearer t0k", None, "t0k") and authorized("bearer  t0k ", None, "t0k")
    assert authorized(None, "x=1; tokentrace_token=t%3Bk", "t;k")
    assert not authorized(None, None, "t0k")
    assert not authorized("Basic t0k", "tokentrace_token=nope", "t0k")
