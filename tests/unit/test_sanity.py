"""Row counts of a restored table against the two estimates the manifest records."""

from __future__ import annotations

from pgops.sanity import row_count_ok


def test_either_estimate_may_match() -> None:
    # PostgreSQL 15 after a bulk load and ANALYZE in one session: n_live_tup is doubled, reltuples is right.
    assert row_count_ok(500, {"reltuples": 500, "n_live_tup": 1000})
    assert row_count_ok(1000, {"reltuples": 500, "n_live_tup": 1000})
    assert not row_count_ok(300, {"reltuples": 500, "n_live_tup": 1000})


def test_more_rows_than_estimated_is_no_loss() -> None:
    # A promoted standby that took 10,000 inserts before any ANALYZE: both estimates say 10,000, the dump holds 20,000
    # (tests/integration/test_restore_check_after_promotion.py causes it for real).
    assert row_count_ok(20_000, {"reltuples": 10_000, "n_live_tup": 10_000})
    assert row_count_ok(100_000, {"reltuples": 500, "n_live_tup": 1000})


def test_tolerance_is_ten_percent_or_a_hundred_rows() -> None:
    assert row_count_ok(9_000, {"reltuples": 10_000, "n_live_tup": -1})
    assert not row_count_ok(8_999, {"reltuples": 10_000, "n_live_tup": -1})
    assert row_count_ok(0, {"reltuples": 100, "n_live_tup": 100})
    assert not row_count_ok(0, {"reltuples": 101, "n_live_tup": 101})


def test_unknown_estimates_accept_any_count() -> None:
    assert row_count_ok(12_345, {"reltuples": -1, "n_live_tup": -1})
    assert row_count_ok(7, {})
