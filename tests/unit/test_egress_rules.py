"""How a launch's egress rules are assembled (core/egress_rules.py) and reach the contract:
inventory (defaults, groups, host), an approved workspace's, the flags; deny wins wherever."""

from __future__ import annotations

import io
from typing import Any

import pytest

from agent_host.egress import decide
from agent_host.wire import LaunchSpec, SpecError
from jackin_remote.core.contract import (
    LaunchRequest,
    RoleRef,
    TargetRef,
    WorkspaceRef,
    resolve_contract,
)
from jackin_remote.core.egress_rules import (
    APPROVED,
    CHANGED,
    NOT_APPROVED,
    NOT_USED,
    WorkspaceRules,
    launch_rules,
)
from jackin_remote.inventory.loader import parse_inventory

INVENTORY = (("deny", "metadata.internal", "/inv/a.toml:2"),
             ("allow", "**.corp.example.com", "/inv/a.toml:5"))  # fmt: skip
WORKSPACE = (("allow", "pypi.mirror.local:8443", ".jackin/config.toml:3"),
             ("allow", "a.corp.example.com", ".jackin/config.toml:3"),
             ("deny", "secret.example.com", ".jackin/config.toml:4"))  # fmt: skip

ROLE = RoleRef("test-agent", "ab" * 32, "jackin-role-test-agent:abababababab", "agent",
               ("shell",), "/roles/test-agent")  # fmt: skip
WS = WorkspaceRef("/home/me/app", "app-123abc", True, "c0ffee" * 6 + "abcd", "main", False, 1, 1)
TARGET = TargetRef("fleet-1", "ssh", "10.0.0.5", "~/.jackin", "docker", "2g", 1.5, 256,
                   egress=INVENTORY)  # fmt: skip


def test_workspace_rules_come_after_the_inventory_and_before_the_flags() -> None:
    rules = [str(rule) for rule in launch_rules("shell", ["x.example.com"], ["y.example.com"],
                                                INVENTORY, WORKSPACE)]  # fmt: skip
    assert rules[:3] == [
        "deny y.example.com (--deny)",
        "deny metadata.internal (inventory /inv/a.toml:2)",
        "deny secret.example.com (workspace .jackin/config.toml:4)",
    ]
    assert rules[-4:] == [
        "allow **.corp.example.com (inventory /inv/a.toml:5)",
        "allow pypi.mirror.local:8443 (workspace .jackin/config.toml:3)",
        "allow a.corp.example.com (workspace .jackin/config.toml:3)",
        "allow x.example.com (--allow)",
    ]


def test_deny_wins_whoever_allows() -> None:
    extra = ("allow", "metadata.internal", ".jackin/config.toml:9")
    rules = launch_rules("shell", ["secret.example.com"], [], INVENTORY, (*WORKSPACE, extra))
    by_flag = decide("secret.example.com", 443, rules)
    assert not by_flag.allowed and "workspace .jackin/config.toml:4" in by_flag.rule
    by_inventory = decide("metadata.internal", 80, rules)
    assert not by_inventory.allowed and "inventory /inv/a.toml:2" in by_inventory.rule
    # An allow that both grant is credited to the first: the inventory's.
    shared = decide("a.corp.example.com", 443, rules)
    assert shared.allowed and "inventory" in shared.rule
    mirror = decide("pypi.mirror.local", 8443, rules)
    assert mirror.allowed and mirror.rule.endswith("(workspace .jackin/config.toml:3)")
    assert not decide("pypi.mirror.local", 443, rules).allowed


def test_a_bad_workspace_pattern_names_where_it_is_written() -> None:
    with pytest.raises(SpecError) as caught:
        launch_rules("shell", [], [], (), (("allow", "a b", ".jackin/config.toml:7"),))
    assert caught.value.field == ".jackin/config.toml:7"


def test_group_rules_reach_the_contract_in_order() -> None:
    inventory = parse_inventory([("/inv/hosts.toml", (
        '[defaults.egress]\ndeny = ["d.example.com"]\n'        # 1-2
        '[hosts.web.egress]\nallow = ["own.example.com"]\n'    # 3-4
        '[groups.builders]\nmembers = ["web"]\n'               # 5-6
        '[groups.builders.egress]\nallow = ["g.example.com"]\n'  # 7-8
    ))])  # fmt: skip
    target = TargetRef("web", "ssh", None, "~/.jackin", "docker", None, None, None,
                       egress=inventory.hosts["web"].egress)  # fmt: skip
    request = LaunchRequest("shell", network="allowlist")
    rules = resolve_contract("abcd1234", target, ROLE, WS, request).network["rules"]
    ours = [rule for rule in rules if "inventory" in rule]
    assert ours == ["deny d.example.com (inventory /inv/hosts.toml:2)",
                    "allow g.example.com (inventory /inv/hosts.toml:8)",
                    "allow own.example.com (inventory /inv/hosts.toml:4)"]  # fmt: skip


def _contract(status: str, network: str = "allowlist") -> dict[str, Any]:
    rules = WorkspaceRules(status, WORKSPACE, "/home/me/app/.jackin/config.toml",
                           "jackin-remote policy approve /home/me/app")  # fmt: skip
    request = LaunchRequest("shell", network=network, workspace_rules=rules)
    contract = resolve_contract("abcd1234", TARGET, ROLE, WS, request)
    assert LaunchSpec.from_wire(contract.spec.to_wire()) == contract.spec
    return contract.to_dict()


def test_approved_workspace_rules_are_in_the_spec_with_their_origin() -> None:
    data = _contract(APPROVED)
    network = data["network"]
    assert "allow pypi.mirror.local:8443 (workspace .jackin/config.toml:3)" in network["rules"]
    assert network["workspace_rules"]["applied"] is True
    assert not [w for w in data["warnings"] if ".jackin/config.toml" in w]
    spec = data["spec"]
    assert {"action": "deny", "pattern": "secret.example.com",
            "source": "workspace .jackin/config.toml:4"} in spec["egress"]  # fmt: skip


@pytest.mark.parametrize("status", [NOT_APPROVED, CHANGED])
def test_pending_workspace_rules_are_shown_not_applied(status: str) -> None:
    data = _contract(status)
    network = data["network"]
    assert not [rule for rule in network["rules"] if "workspace" in rule]
    assert not [r for r in data["spec"]["egress"] if "workspace" in r["source"]]
    entry = network["workspace_rules"]
    assert entry["status"] == status and entry["applied"] is False
    assert entry["note"].startswith("NOT applied") and "policy approve" in entry["note"]
    assert len(entry["rules"]) == 3
    (warning,) = [w for w in data["warnings"] if ".jackin/config.toml" in w]
    assert "NOT applied" in warning and "/home/me/app/.jackin/config.toml" in warning


@pytest.mark.parametrize("network", ["open", "none"])
def test_other_networks_say_the_rules_are_irrelevant(network: str) -> None:
    data = _contract(NOT_APPROVED, network)
    entry = data["network"]["workspace_rules"]
    assert entry["status"] == NOT_USED and entry["applied"] is False
    assert "allowlist only" in entry["note"]
    assert not [w for w in data["warnings"] if ".jackin/config.toml" in w]
    assert data["spec"]["egress"] == []


def test_the_panel_says_pending_rules_are_not_applied() -> None:
    from rich.console import Console

    from jackin_remote.ui.contract import contract_panel

    console = Console(width=250, record=True, file=io.StringIO())
    console.print(contract_panel(_contract(CHANGED)))
    shown = " ".join(console.export_text().split())
    assert (
        "workspace rules /home/me/app/.jackin/config.toml: NOT applied: the file changed" in shown
    )
    assert "(not applied) allow pypi.mirror.local:8443 (workspace .jackin/config.toml:3)" in shown
    console.print(contract_panel(_contract(APPROVED)))
    assert "applied: approved with this exact content" in console.export_text()
