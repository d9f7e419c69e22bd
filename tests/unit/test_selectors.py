"""Host selectors: names, groups (recursive), label:X, all, comma lists."""

from __future__ import annotations

import pytest

from jackin_remote.errors import UsageError
from jackin_remote.inventory import Host, Inventory, select_hosts
from jackin_remote.inventory.loader import parse_inventory

FLEET = """
[hosts.web-1]
labels = ["linux", "web"]
[hosts.web-2]
labels = ["linux", "web"]
[hosts.db]
labels = ["linux"]
[hosts.gpu]
labels = ["gpu"]

[groups]
web = ["web-2", "web-1"]
backend = ["db", "web"]
prod = ["backend", "gpu", "web"]
"""


@pytest.fixture
def inv() -> Inventory:
    return parse_inventory([("fleet.toml", FLEET)])


def names(hosts: list[Host]) -> list[str]:
    return [host.name for host in hosts]


def test_host_by_name(inv: Inventory) -> None:
    assert names(select_hosts(inv, "db")) == ["db"]


def test_local_is_selectable_by_name(inv: Inventory) -> None:
    assert select_hosts(inv, "local")[0].is_local


def test_group_expands_recursively_in_member_order_without_duplicates(inv: Inventory) -> None:
    assert names(select_hosts(inv, "web")) == ["web-2", "web-1"]
    assert names(select_hosts(inv, "prod")) == ["db", "web-2", "web-1", "gpu"]


def test_label(inv: Inventory) -> None:
    assert names(select_hosts(inv, "label:web")) == ["web-1", "web-2"]


def test_all_includes_local_first(inv: Inventory) -> None:
    assert names(select_hosts(inv, "all")) == ["local", "web-1", "web-2", "db", "gpu"]


def test_comma_list_is_a_deduplicated_union_in_order(inv: Inventory) -> None:
    assert names(select_hosts(inv, "gpu, label:linux ,db,web")) == ["gpu", "web-1", "web-2", "db"]


def test_unknown_name_suggests_and_lists(inv: Inventory) -> None:
    with pytest.raises(UsageError) as caught:
        select_hosts(inv, "wbe")
    err = caught.value
    assert "unknown host or group `wbe`" in err.message
    assert err.hint is not None
    assert err.hint.startswith("did you mean `web`?")
    assert "known hosts: local, web-1, web-2, db, gpu" in err.hint
    assert "groups: web, backend, prod" in err.hint


def test_unknown_label_lists_known_labels(inv: Inventory) -> None:
    with pytest.raises(UsageError, match="no host has the label `arm`") as caught:
        select_hosts(inv, "label:arm")
    assert caught.value.hint == "known labels: gpu, linux, web"


@pytest.mark.parametrize("selector", ["", " ", "db,", ",db", "db,,gpu"])
def test_empty_terms_are_errors(inv: Inventory, selector: str) -> None:
    with pytest.raises(UsageError, match="empty host selector"):
        select_hosts(inv, selector)


def test_hand_built_group_cycle_terminates() -> None:
    host = Host(name="a")
    inv = Inventory(hosts={"a": host}, groups={"x": ("y", "a"), "y": ("x",)})
    assert select_hosts(inv, "x") == [host]


def test_hand_built_group_with_unknown_member_is_a_usage_error() -> None:
    inv = Inventory(hosts={}, groups={"x": ("ghost",)})
    with pytest.raises(UsageError, match="ghost"):
        select_hosts(inv, "x")
