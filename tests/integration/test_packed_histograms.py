"""Packed ms/token histograms (migration 0060): packing, unpacking and adding them."""

from __future__ import annotations

import pytest

from tests.helpers import query

pytestmark = pytest.mark.usefixtures("db")


def _unpack(db: str, packed_sql: str, *params: object) -> tuple[list[int], list[int]]:
    [(bins, counts)] = query(
        db, f"SELECT u.bins, u.counts FROM tokentrace.mpt_unpack({packed_sql}) u", params
    )
    return list(bins), list(counts)


@pytest.mark.parametrize(
    ("bins", "counts"),
    [
        ([], []),
        ([0], [1]),
        ([-1], [7]),
        ([-40, -3, 0, 5, 90, 91], [1, 2, 3, 4, 5, 999_999_999_999]),
        ([-32768, 12, 32767], [3, 4, 5]),  # zero and +Infinity keep their own bins
        ([-1364, 10921], [1, 1]),  # the last bins packed as themselves
    ],
)
def test_pack_then_unpack_gives_the_arrays_back(db: str, bins: list[int], counts: list[int]) -> None:
    packed = "tokentrace.mpt_pack(%s::smallint[], %s::bigint[])"
    assert _unpack(db, packed, bins, counts) == (bins, counts)


def test_bins_beyond_the_packable_range_count_as_zero_or_infinity(db: str) -> None:
    packed = "tokentrace.mpt_pack(%s::smallint[], %s::bigint[])"
    assert _unpack(db, packed, [-2000, -1365, 10922, 16000], [1, 2, 3, 4]) == (
        [-32768, 32767],
        [3, 7],
    )


def test_packed_histograms_add_and_subtract_bin_by_bin(db: str) -> None:
    # a − b + c, as a signed window adds its pieces; counts borrow across bins in between.
    [(bins, counts)] = query(
        db,
        "SELECT u.bins, u.counts FROM tokentrace.mpt_unpack("
        " tokentrace.mpt_pack('{-5,0,3}', '{10,1,5}')"
        " - tokentrace.mpt_pack('{-5,3}', '{9,5}')"
        " + tokentrace.mpt_pack('{0,7}', '{2,1}')) u",
    )
    assert (list(bins), list(counts)) == ([-5, 0, 7], [1, 3, 1])


def test_nothing_or_a_negative_sum_unpacks_to_no_bins(db: str) -> None:
    assert _unpack(db, "0::numeric") == ([], [])
    assert _unpack(db, "-tokentrace.mpt_pack('{4}', '{1}')") == ([], [])


def test_mpt_unit_is_ten_to_twelve_times_the_bin(db: str) -> None:
    [(one, small, big)] = query(
        db,
        "SELECT tokentrace.mpt_unit(0::smallint) = 1, "
        "tokentrace.mpt_unit(-1::smallint) = 1e-12, tokentrace.mpt_unit(2::smallint) = 1e24",
    )
    assert (one, small, big) == (True, True, True)
