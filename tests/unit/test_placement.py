import pytest

from jackin_remote.core.placement import Slot, place
from jackin_remote.errors import UsageError


def test_least_loaded_relative_to_capacity() -> None:
    slots = [Slot("a", 4, 2), Slot("b", 8, 2), Slot("c", 2, 0)]
    assert place(slots) == ["c"]


def test_spreads_several_sessions_and_skips_full_hosts() -> None:
    slots = [Slot("a", 2, 0), Slot("b", 2, 0), Slot("full", 1, 1)]
    assert sorted(place(slots, 4)) == ["a", "a", "b", "b"]


def test_no_capacity_is_an_error_naming_the_hosts() -> None:
    with pytest.raises(UsageError, match="a 1/1"):
        place([Slot("a", 1, 1)])


def test_ties_go_to_inventory_order() -> None:
    assert place([Slot("x", 4, 0), Slot("y", 4, 0)]) == ["x"]
