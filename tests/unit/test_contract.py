"""The session contract is a pure function: every decision is checked here without I/O."""

from __future__ import annotations

import json

import pytest

from agent_host.wire import MAX_CONTAINER_NAME, Isolation, LaunchSpec, Mode, Network
from jackin_remote.core.contract import (
    Contract,
    ContractError,
    LaunchRequest,
    RoleRef,
    TargetRef,
    WorkspaceRef,
    container_name,
    parse_env,
    resolve_contract,
)

ROLE = RoleRef("test-agent", "ab" * 32, "jackin-role-test-agent:abababababab", "agent",
               ("shell", "demo", "claude"), "/roles/test-agent")  # fmt: skip
GIT_WS = WorkspaceRef("/home/me/app", "app-123abc", True, "c0ffee" * 6 + "abcd", "main", True,
                      12, 3400, excluded_secrets=(".env",), tracked_secrets=())  # fmt: skip
PLAIN_WS = WorkspaceRef("/home/me/notes", "notes-99aa00", False, None, None, False, 3, 10)
TARGET = TargetRef("fleet-1", "ssh", "10.0.0.5", "~/.jackin", "docker", "2g", 1.5, 256, 4096)


def resolve(request: LaunchRequest, workspace: WorkspaceRef = GIT_WS) -> Contract:
    return resolve_contract("abcd1234", TARGET, ROLE, workspace, request)


def test_sections_follow_the_design_order() -> None:
    data = resolve(LaunchRequest("shell", task="echo hi")).to_dict()
    assert list(data)[:12] == [
        "identity", "routing", "filesystem", "credentials", "network", "docker_access",
        "service_ports", "limits", "persistence", "plan", "recovery", "warnings",
    ]  # fmt: skip


def test_limits_reach_the_spec_and_hardening_is_not_a_field_of_it() -> None:
    spec = resolve(LaunchRequest("shell", task="echo hi", network="none")).spec
    wire = spec.to_wire()
    # Hardening, mounts, labels and the image are derived on the host, never sent.
    for key in ("cap_drop", "security_opt", "read_only", "labels", "image", "workdir", "tmpfs"):
        assert key not in wire
    assert wire["user"] == "agent"
    assert wire["limits"] == {"memory": "2g", "cpus": 1.5, "pids": 256, "nofile": 4096}
    assert spec.network is Network.NONE
    assert spec.labels["jackin.managed"] == "true"
    assert spec.labels["jackin.session"] == "abcd1234"
    assert spec.command == ("/bin/sh", "-c", "echo hi")
    assert LaunchSpec.from_wire(wire) == spec


def test_network_none_is_labelled_host_enforced_and_open_is_not() -> None:
    closed = resolve(LaunchRequest("shell", network="none")).network
    opened = resolve(LaunchRequest("shell", network="open")).network
    assert closed["enforcement"] == "host-enforced" and closed["reaches"] == []
    assert opened["enforcement"] == "open" and opened["reaches"]


def test_docker_access_is_none() -> None:
    contract = resolve(LaunchRequest("shell"))
    assert contract.docker_access["access"] == "none"
    assert all("docker.sock" not in str(m) for m in contract.filesystem["mounts"])


def test_git_workspace_clones_on_a_session_branch_and_says_the_working_tree_travels() -> None:
    contract = resolve(LaunchRequest("shell"))
    assert contract.spec.isolation is Isolation.CLONE
    assert contract.spec.branch == "jackin/abcd1234"
    assert "uncommitted local changes travel" in contract.filesystem["working_tree"]


def test_plain_workspace_is_copied_and_clone_is_refused() -> None:
    assert resolve(LaunchRequest("shell"), PLAIN_WS).spec.isolation is Isolation.COPY
    with pytest.raises(ContractError, match="needs a git workspace"):
        resolve(LaunchRequest("shell", isolation="clone"), PLAIN_WS)


def test_interactive_mode_runs_in_tmux() -> None:
    spec = resolve(LaunchRequest("shell")).spec
    assert spec.mode is Mode.INTERACTIVE
    assert "tmux new-session" in " ".join(spec.command)


def test_credentials_are_named_and_redacted_never_valued() -> None:
    contract = resolve(LaunchRequest("claude", task="t", credential_source="MY_KEY",
                                     credential_present=True))  # fmt: skip
    (cred,) = contract.credentials
    assert cred["source"] == "MY_KEY" and cred["delivered_as"] == "ANTHROPIC_API_KEY"
    assert cred["value"] == "<redacted>"
    assert contract.spec.secret_env == ("ANTHROPIC_API_KEY",)
    assert "ANTHROPIC_API_KEY" not in dict(contract.spec.env)
    assert any("docker inspect" in w for w in contract.warnings)


def test_missing_credential_is_a_warning() -> None:
    contract = resolve(LaunchRequest("claude", task="t", credential_present=False))
    assert contract.spec.secret_env == ()
    assert any("ANTHROPIC_API_KEY is not set" in w for w in contract.warnings)


def test_paths_that_do_not_travel_are_warned_about() -> None:
    workspace = WorkspaceRef("/w", "w-1", True, None, None, False, 1, 1, skipped=("vendor/lib",))
    warnings = resolve(LaunchRequest("shell"), workspace).warnings
    assert any("do not travel" in w and "vendor/lib" in w for w in warnings)


def test_container_is_not_a_microvm_warning_always_present() -> None:
    assert any("not a microVM" in w for w in resolve(LaunchRequest("shell")).warnings)


@pytest.mark.parametrize("name", ["OPENAI_API_KEY", "GH_TOKEN", "AWS_SECRET", "DB_PASSWORD",
                                  "my_password_2"])  # fmt: skip
def test_secret_looking_env_is_refused_with_a_pointer(name: str) -> None:
    with pytest.raises(ContractError, match="looks like a secret") as info:
        parse_env([f"{name}=x"])
    assert "credentials" in (info.value.hint or "")


def test_plain_env_is_listed_in_the_contract() -> None:
    env = parse_env(["ANTHROPIC_BASE_URL=http://gw:8080"])
    contract = resolve(LaunchRequest("shell", env=env))
    assert dict(contract.spec.env)["ANTHROPIC_BASE_URL"] == "http://gw:8080"


@pytest.mark.parametrize("item", ["1BAD=x", "A B=x", "noequals", "HOME=/root", "X=a\nb"])
def test_bad_env_is_refused(item: str) -> None:
    with pytest.raises(ContractError):
        parse_env([item])


@pytest.mark.parametrize("name", ["a;rm -rf /", "$(id)", "UPPER", "x y", "-dash", "a`b`"])
def test_session_names_with_shell_metacharacters_are_refused(name: str) -> None:
    with pytest.raises(ContractError, match="session name"):
        resolve(LaunchRequest("shell", name=name))


def test_runtime_must_be_known_and_supported_by_the_role() -> None:
    with pytest.raises(ContractError, match="not a known runtime"):
        resolve(LaunchRequest("vim"))
    with pytest.raises(ContractError, match="does not support"):
        resolve(LaunchRequest("codex"))


def test_unknown_network_is_refused() -> None:
    with pytest.raises(ContractError, match="--network 'wide': expected one of"):
        resolve(LaunchRequest("shell", network="wide"))


def test_allowlist_rules_reach_the_spec_and_the_plan_names_the_proxy() -> None:
    request = LaunchRequest("claude", network="allowlist", allow=("**.example.com",),
                            deny=("secret.example.com",))  # fmt: skip
    contract = resolve(request)
    rules = [str(rule) for rule in contract.spec.egress]
    assert rules[0] == "deny secret.example.com (--deny)"
    assert "allow api.anthropic.com:443 (preset anthropic)" in rules  # the runtime's model API
    assert rules[-1] == "allow **.example.com (--allow)"
    assert contract.network["rules"] == rules
    assert LaunchSpec.from_wire(contract.spec.to_wire()) == contract.spec
    actions = " ".join(effect.action for effect in contract.plan)
    assert "jk-abcd1234-egress" in actions and "egress proxy" in actions
    with pytest.raises(ContractError, match="--allow and --deny apply to --network allowlist"):
        resolve(LaunchRequest("shell", network="open", allow=("x.com",)))
    with pytest.raises(ContractError, match="--deny"):
        resolve(LaunchRequest("shell", network="allowlist", deny=("a b",)))


def test_container_names_are_dns_safe_and_bounded() -> None:
    name = container_name("abcd1234", "w" * 60, "r" * 60)
    assert len(name) <= MAX_CONTAINER_NAME
    assert name.startswith("jk-abcd1234-")
    assert container_name("abcd1234", "app-1", "test-agent") == "jk-abcd1234-app-1-test-agent"


def test_json_is_serializable_and_holds_no_secret_values() -> None:
    contract = resolve(LaunchRequest("claude", task="t", credential_present=True))
    text = json.dumps(contract.to_dict())
    assert "<redacted>" in text


def test_the_plan_names_the_host_layout_paths() -> None:
    from agent_host import layout

    contract = resolve(LaunchRequest("shell"))
    targets = [effect.target for effect in contract.plan]
    assert layout.role_dir("~/.jackin", "test-agent", "ab" * 32) in targets
    assert layout.work_dir("~/.jackin", "abcd1234") in targets
    assert layout.mirror_dir("~/.jackin", "app-123abc") in targets


def test_dev_shm_and_log_rotation_are_in_the_contract() -> None:
    contract = resolve(LaunchRequest("shell"))
    mounts = {m["container"]: m for m in contract.filesystem["mounts"]}
    assert mounts["/dev/shm"]["mode"] == "tmpfs"
    assert "rotated" in contract.limits["logs"]


def test_recovery_keeps_the_three_kinds_apart_and_says_what_removes_each() -> None:
    recovery = resolve(LaunchRequest("shell", task="make")).recovery
    assert "rm --purge forgets it" in recovery["session_metadata"]
    assert "`ls` rebuilds it from the hosts" in recovery["session_metadata"]
    assert "kept by rm, removed by rm --purge" in recovery["project_snapshots"]
    assert "removed by rm" in recovery["sandbox_state"]
    assert "gc" in recovery["sandbox_state"] and "audit" in recovery["sandbox_state"]
