from __future__ import annotations

import pytest

from tokentrace.config import ConfigError, env_int, retention_days


def test_env_int_names_the_variable_on_bad_values() -> None:
    with pytest.raises(ConfigError, match="TOKENTRACE_RETENTION_DAYS='soon' is not an integer"):
        env_int("TOKENTRACE_RETENTION_DAYS", 60, environ={"TOKENTRACE_RETENTION_DAYS": "soon"})
    with pytest.raises(ConfigError, match="must be at least 1"):
        env_int("X", 1, minimum=1, environ={"X": "0"})
    assert env_int("X", 5, environ={}) == 5


def test_argument_beats_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENTRACE_RETENTION_DAYS", "30")
    assert retention_days() == 30
    assert retention_days(7) == 7
