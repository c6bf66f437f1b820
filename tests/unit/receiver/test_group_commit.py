"""Mapping a group's refused rows back to the requests they came from (pure)."""

from __future__ import annotations

from typing import Any

from tokentrace.receiver.group_commit import _distribute, _Pending


def _group(*sizes: int) -> list[_Pending]:
    rows: list[Any] = [object()]
    return [_Pending(rows * size) for size in sizes]


def test_group_indexes_become_each_requests_own() -> None:
    group = _group(3, 1, 4)
    _distribute([(0, "a"), (2, "b"), (3, "c"), (4, "d"), (7, "e")], group)
    assert [p.share.rejected for p in group] == [
        [(0, "a"), (2, "b")],
        [(0, "c")],
        [(0, "d"), (3, "e")],
    ]


def test_nothing_refused_leaves_every_share_empty() -> None:
    group = _group(2, 2)
    _distribute([], group)
    assert [p.share.rejected for p in group] == [[], []]


def test_a_group_of_one() -> None:
    group = _group(5)
    _distribute([(4, "x")], group)
    assert group[0].share.rejected == [(4, "x")]
