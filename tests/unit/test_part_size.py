"""The multipart part-size schedule: S3_PART_SIZE, doubling every 1000 parts, capped at 5 GiB."""

from __future__ import annotations

import pytest

from pgops.storage.s3_multipart import MAX_PART_SIZE, MAX_PARTS, MIN_PART_SIZE, part_size_for

MiB = 1024**2
GiB = 1024**3
TiB = 1024**4
S3_MAX_OBJECT = 5 * TiB


def capacity(base: int) -> int:
    """Bytes that 10,000 parts hold under the schedule."""
    return sum(part_size_for(n, base) for n in range(1, MAX_PARTS + 1))


def test_schedule_doubles_every_1000_parts() -> None:
    base = 16 * MiB
    assert part_size_for(1, base) == base
    assert part_size_for(1000, base) == base
    assert part_size_for(1001, base) == 2 * base
    assert part_size_for(2000, base) == 2 * base
    assert part_size_for(2001, base) == 4 * base
    assert part_size_for(9000, base) == 256 * base  # 4 GiB: not yet capped
    assert part_size_for(9001, base) == MAX_PART_SIZE  # 8 GiB would exceed the 5 GiB part limit


@pytest.mark.parametrize("base", [MIN_PART_SIZE, 8 * MiB, 16 * MiB, 64 * MiB, 1 * GiB, MAX_PART_SIZE])
def test_every_part_is_within_s3_limits_and_never_shrinks(base: int) -> None:
    sizes = [part_size_for(n, base) for n in range(1, MAX_PARTS + 1)]
    assert all(MIN_PART_SIZE <= s <= MAX_PART_SIZE for s in sizes)
    assert sizes == sorted(sizes)


def test_default_base_outgrows_the_s3_object_limit_before_the_part_limit() -> None:
    # 1000 parts each of 16, 32, ..., 4096 MiB, then 1000 of 5 GiB (capped): 13,296,000 MiB (~12.7 TiB).
    assert capacity(16 * MiB) == 13_296_000 * MiB
    assert capacity(16 * MiB) > S3_MAX_OBJECT


def test_minimum_base_still_holds_almost_five_tib() -> None:
    # 1000 parts each of 5 * (1, 2, ..., 512) MiB = 5,115,000 MiB (~4.88 TiB): just below S3's 5 TiB
    # object limit, so with the smallest setting a stream can hit the part limit first.
    assert capacity(5 * MiB) == 5_115_000 * MiB
    assert 4.8 * TiB < capacity(5 * MiB) < S3_MAX_OBJECT


def test_smallest_base_reaching_five_tib() -> None:
    # The schedule's capacity is monotonic in the base; 6 MiB is the smallest whole-MiB base that
    # covers S3's whole object size range.
    assert capacity(6 * MiB) >= S3_MAX_OBJECT > capacity(5 * MiB)


@pytest.mark.parametrize(("number", "base"), [(0, 16 * MiB), (MAX_PARTS + 1, 16 * MiB), (1, MIN_PART_SIZE - 1)])
def test_out_of_range_arguments_are_refused(number: int, base: int) -> None:
    with pytest.raises(ValueError, match="outside"):
        part_size_for(number, base)
