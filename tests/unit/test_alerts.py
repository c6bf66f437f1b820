"""The alert thresholds and their pure evaluation (no database)."""

from __future__ import annotations

import pytest

from tokentrace import alerts
from tokentrace.alerts import Alert, Change, Disk, Errors, Facts, Thresholds
from tokentrace.config import ConfigError

VARIABLES = {
    "regression_ratio": "TOKENTRACE_ALERT_REGRESSION_RATIO",
    "error_rate": "TOKENTRACE_ALERT_ERROR_RATE",
    "error_window_hours": "TOKENTRACE_ALERT_ERROR_WINDOW_HOURS",
    "disk_days": "TOKENTRACE_ALERT_DISK_DAYS",
    "min_calls": "TOKENTRACE_ALERT_MIN_CALLS",
}


# --- thresholds ----------------------------------------------------------------------------
def test_defaults() -> None:
    assert Thresholds.resolve(environ={}) == Thresholds(1.5, 0.05, 1.0, 7.0, 10)
    assert Thresholds().as_json() == {
        "regression_ratio": 1.5,
        "error_rate": 0.05,
        "error_window_hours": 1.0,
        "disk_days": 7.0,
        "min_calls": 10,
    }


def test_environment_then_argument() -> None:
    env = {
        "TOKENTRACE_ALERT_REGRESSION_RATIO": "2",
        "TOKENTRACE_ALERT_ERROR_RATE": "0.1",
        "TOKENTRACE_ALERT_ERROR_WINDOW_HOURS": "0.5",
        "TOKENTRACE_ALERT_DISK_DAYS": "0",
        "TOKENTRACE_ALERT_MIN_CALLS": " 3 ",
    }
    assert Thresholds.resolve(environ=env) == Thresholds(2.0, 0.1, 0.5, 0.0, 3)
    assert Thresholds.resolve(
        regression_ratio=1.2, error_rate="0.2", min_calls=7, environ=env
    ) == Thresholds(1.2, 0.2, 0.5, 0.0, 7)
    assert Thresholds.resolve(environ={"TOKENTRACE_ALERT_MIN_CALLS": ""}).min_calls == 10


@pytest.mark.parametrize(
    ("field", "raw", "message"),
    [
        ("regression_ratio", "fast", "is not a number"),
        ("regression_ratio", "0", "must be greater than 0"),
        ("regression_ratio", "nan", "is not a finite number"),
        ("error_rate", "1.5", "must be at most 1"),
        ("error_rate", "-0.1", "must be greater than 0"),
        ("error_window_hours", "0", "must be greater than 0"),
        ("error_window_hours", "10000", "must be at most 9600"),
        ("disk_days", "-1", "must be at least 0"),
        ("disk_days", "inf", "is not a finite number"),
        ("min_calls", "0", "must be at least 1"),
        ("min_calls", "2.5", "is not an integer"),
    ],
)
def test_bad_values_name_the_variable_or_the_flag(field: str, raw: str, message: str) -> None:
    variable = VARIABLES[field]
    with pytest.raises(ConfigError) as env_error:
        Thresholds.resolve(environ={variable: raw})
    assert str(env_error.value) == f"{variable}={raw!r} {message}"
    flag = "--" + field.replace("_", "-")
    with pytest.raises(ConfigError) as arg_error:
        Thresholds.resolve(environ={}, **{field: raw})
    assert str(arg_error.value) == f"{flag}={raw!r} {message}"


def test_every_threshold_variable_is_documented() -> None:
    from pathlib import Path

    import tokentrace.config

    root = Path(__file__).resolve().parents[2]
    readme = (root / "README.md").read_text(encoding="utf-8")
    guide = (root / "docs" / "alerts.md").read_text(encoding="utf-8")
    registry = tokentrace.config.__doc__ or ""
    for field, variable in VARIABLES.items():
        default = getattr(Thresholds(), field)
        assert f"`{variable}`" in readme and f"``{variable}``" in registry
        row = next(line for line in guide.splitlines() if line.startswith(f"| `{variable}` |"))
        flag = "--" + field.replace("_", "-")
        assert row.split("|")[2].strip() == f"`{flag}`"
        assert row.split("|")[-2].strip() == f"{default:g}"


# --- regression ----------------------------------------------------------------------------
def _facts(
    changes: list[Change] = (),  # type: ignore[assignment]
    errors: list[Errors] = (),  # type: ignore[assignment]
    disk: Disk | None = None,
) -> Facts:
    return Facts(list(changes), list(errors), disk or Disk(None, 0, None, None, None, None), 1.0)


def _only(found: list[Alert], name: str) -> list[Alert]:
    return [a for a in found if a.name == name]


def test_regression_fires_at_or_above_the_ratio() -> None:
    t = Thresholds()
    found = alerts.evaluate(
        _facts([
            Change("a", 30.0, 20.0, 1.5, 10, 10),
            Change("b", 29.0, 20.0, 1.45, 50, 50),
            Change("c", 40.0, 20.0, 2.0, 9, 100),
            Change("d", 40.0, 20.0, 2.0, 100, 9),
        ]),  # fmt: skip
        t,
    )
    assert _only(found, "regression") == [
        Alert("regression", "a", 1.5, 1.5, True,
              "30 ms/token in the last 24 h against 20 in the 60 days before (10 and 10 calls)"),
        Alert("regression", "b", 1.45, 1.5, False,
              "29 ms/token in the last 24 h against 20 in the 60 days before (50 and 50 calls)"),
        Alert("regression", "c", 2.0, 1.5, False,
              "40 ms/token in the last 24 h against 20 in the 60 days before (9 and 100 calls); "
              "too few calls to fire (at least 10 in each)"),
        Alert("regression", "d", 2.0, 1.5, False,
              "40 ms/token in the last 24 h against 20 in the 60 days before (100 and 9 calls); "
              "too few calls to fire (at least 10 in each)"),
    ]  # fmt: skip
    looser = alerts.evaluate(_facts([Change("c", 40.0, 20.0, 2.0, 9, 100)]), Thresholds(min_calls=9))
    assert _only(looser, "regression")[0].firing is True


def test_regression_without_a_ratio_never_fires() -> None:
    found = alerts.evaluate(
        _facts([
            Change("idle", None, 20.0, None, 0, 40),
            Change("new", 20.0, None, None, 40, 0),
            Change("untimed", None, None, None, 40, 40),
        ]),  # fmt: skip
        Thresholds(),
    )
    assert [(a.model, a.value, a.firing, a.detail) for a in _only(found, "regression")] == [
        ("idle", None, False, "no calls in the last 24 h"),
        ("new", None, False, "no calls in the 60 days before the last 24 h to compare with"),
        ("untimed", None, False, "no timed output tokens to compare (40 and 40 calls)"),
    ]


# --- error rate ----------------------------------------------------------------------------
def test_error_rate_fires_at_or_above_the_rate_with_enough_calls() -> None:
    found = alerts.evaluate(
        _facts(errors=[Errors("a", 20, 1), Errors("b", 25, 1), Errors("c", 9, 9), Errors("d", 0, 2)]),
        Thresholds(),
    )
    assert _only(found, "error_rate") == [
        Alert("error_rate", "a", 0.05, 0.05, True, "1 error in 20 calls in the last 1 h"),
        Alert("error_rate", "b", 0.04, 0.05, False, "1 error in 25 calls in the last 1 h"),
        Alert("error_rate", "c", 1.0, 0.05, False,
              "9 errors in 9 calls in the last 1 h; too few calls to fire (at least 10)"),
        Alert("error_rate", "d", None, 0.05, False, "2 failed spans and no calls in the last 1 h"),
    ]  # fmt: skip


# --- disk ----------------------------------------------------------------------------------
GB = 10**9


@pytest.mark.parametrize(
    ("disk", "value", "firing", "detail"),
    [
        (Disk(None, 5 * GB, 1e8, 6 * GB, None, None), None, False,
         "no disk cap set (TOKENTRACE_DISK_CAP_GB)"),
        (Disk(10 * GB, 5 * GB, 1e7, 6 * GB, True, None), None, False,
         "5.0 GB of a 10.0 GB cap; settles at 6.0 GB once the retention windows are full: "
         "never reaches the cap"),
        (Disk(10 * GB, 5 * GB, 0.0, 60 * GB, False, None), None, False,
         "5.0 GB of a 10.0 GB cap, not growing"),
        (Disk(10 * GB, 3 * GB, GB, 60 * GB, False, 7.0), 7.0, True,
         "3.0 GB of a 10.0 GB cap, growing 1.0 GB/day: reaches it in 7.0 days"),
        (Disk(10 * GB, 2 * GB, GB, 60 * GB, False, 8.0), 8.0, False,
         "2.0 GB of a 10.0 GB cap, growing 1.0 GB/day: reaches it in 8.0 days"),
        (Disk(10 * GB, 11 * GB, GB, 60 * GB, False, 0.0), 0.0, True,
         "11.0 GB of a 10.0 GB cap, growing 1.0 GB/day: cap reached"),
    ],
)  # fmt: skip
def test_disk_cap(disk: Disk, value: float | None, firing: bool, detail: str) -> None:
    assert _only(alerts.evaluate(_facts(disk=disk), Thresholds()), "disk_cap") == [
        Alert("disk_cap", None, value, 7.0, firing, detail)
    ]


def test_disk_days_zero_fires_only_at_the_cap() -> None:
    t = Thresholds(disk_days=0)
    near = Disk(10 * GB, 9 * GB, GB, 60 * GB, False, 1.0)
    full = Disk(10 * GB, 10 * GB, GB, 60 * GB, False, 0.0)
    assert _only(alerts.evaluate(_facts(disk=near), t), "disk_cap")[0].firing is False
    assert _only(alerts.evaluate(_facts(disk=full), t), "disk_cap")[0].firing is True


def test_payload_counts_the_firing_alerts() -> None:
    found = [
        Alert("regression", "a", 2.0, 1.5, True, "x"),
        Alert("error_rate", "a", 0.0, 0.05, False, "y"),
        Alert("disk_cap", None, None, 7.0, False, "z"),
    ]
    assert alerts.payload(found, Thresholds()) == {
        "status": "success",
        "alerts": [
            {"name": "regression", "model": "a", "value": 2.0, "threshold": 1.5, "firing": True,
             "detail": "x"},
            {"name": "error_rate", "model": "a", "value": 0.0, "threshold": 0.05, "firing": False,
             "detail": "y"},
            {"name": "disk_cap", "model": None, "value": None, "threshold": 7.0, "firing": False,
             "detail": "z"},
        ],
        "firing": 1,
        "thresholds": Thresholds().as_json(),
    }  # fmt: skip
