import pytest

from jackin_remote.core.placement import PlacementError, Slot, place
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


def test_hosts_that_did_not_answer_are_never_picked() -> None:
    slots = [Slot("dead", 4, 0, error="unreachable: Connect call failed"), Slot("live", 2, 0)]
    assert place(slots, 2) == ["live", "live"]


def test_all_or_nothing_refusal_names_the_dead_hosts_and_why() -> None:
    slots = [Slot("dead", 4, 0, error="unreachable: Connect call failed"), Slot("live", 2, 1)]
    with pytest.raises(PlacementError) as caught:
        place(slots, 2)
    error = caught.value
    assert error.exit_code == 3
    assert "dead (unreachable: Connect call failed)" in error.message
    assert "1 free slot(s)" in error.message and "live 1/2" in error.message
    assert "nothing was started" in (error.hint or "")


def test_every_host_dead_is_refused() -> None:
    slots = [Slot("a", 2, 0, error="unreachable: x"), Slot("b", 2, 0, error="auth_failed: y")]
    with pytest.raises(PlacementError, match="no host answered") as caught:
        place(slots)
    assert caught.value.exit_code == 3


def test_capacity_alone_is_a_usage_error() -> None:
    with pytest.raises(PlacementError) as caught:
        place([Slot("a", 1, 0)], 2)
    assert caught.value.exit_code == 2
