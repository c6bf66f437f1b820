"""The Citus test harness skips where Citus is missing, except under CI=true."""

from __future__ import annotations

import pytest

from tests import citus_cluster


def test_without_citus_a_test_skips_saying_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(citus_cluster, "citus_available", lambda: False)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"\.\./shared/citus/install\.sh <python>"):
        citus_cluster.require_citus()


def test_under_ci_a_missing_citus_is_a_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(citus_cluster, "citus_available", lambda: False)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"CI=true and Citus is not installed"):
        citus_cluster.require_citus()


def test_with_citus_nothing_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(citus_cluster, "citus_available", lambda: True)
    monkeypatch.setenv("CI", "true")
    citus_cluster.require_citus()
