"""TAP name allocation: one set of used indices, fresh names, jumps after a collision."""

from __future__ import annotations

import random

import pytest

from controller.base.errors import PermanentError
from controller.network.names import NameAllocator


def test_new_names_go_past_the_highest_used_index() -> None:
    alloc = NameAllocator("tap-pool-", ["tap-pool-0", "tap-pool-7", "wvbr0", "tap-pool-x", "tap-pool-03"])
    assert [alloc.propose() for _ in range(3)] == ["tap-pool-8", "tap-pool-9", "tap-pool-10"]


def test_just_released_names_are_not_handed_out_again() -> None:
    alloc = NameAllocator("tap-pool-", ["tap-pool-0", "tap-pool-1", "tap-pool-2"])
    # tap-pool-1 was just deleted: the allocator still goes forward, not back to it
    assert alloc.propose() == "tap-pool-3"


def test_collision_jumps_ahead_within_bounds() -> None:
    alloc = NameAllocator("tap-pool-", [], random.Random(1))
    first = alloc.propose()
    alloc.taken(first)
    second = int(alloc.propose().removeprefix("tap-pool-"))
    assert 1 <= second <= 33


def test_wraps_to_lowest_free_index_at_the_name_limit() -> None:
    prefix = "tap-pool-abcd"  # leaves 2 digits: indices 0..99
    alloc = NameAllocator(prefix, [f"{prefix}{i}" for i in range(1, 100)])
    assert alloc.propose() == f"{prefix}0"
    with pytest.raises(PermanentError, match="every tap-pool-abcdN name is in use"):
        alloc.propose()
