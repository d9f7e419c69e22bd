"""`--docker private` decided without a host: the wire's checks (image references, privileges,
the variables and the mount the daemon owns, engine sockets as mount sources), the contract's
docker access section and plan, the tiers' refusal where gVisor has no network, and the
default network each host gets."""

from __future__ import annotations

from typing import Any

import pytest

from agent_host.private_docker import SIDECAR_SCRIPT, network_name, sandbox_env, sidecar_name
from agent_host.wire import (
    ENGINE_SOCKETS,
    PRIVATE_DOCKER_CERTS,
    DockerPrivilege,
    LaunchSpec,
    Mount,
    PrivateDocker,
    SpecError,
    check_image_ref,
)
from jackin_remote.core.capacity import Capacity, EngineRuntime
from jackin_remote.core.contract import (
    ContractError,
    LaunchRequest,
    RoleRef,
    TargetRef,
    WorkspaceRef,
    resolve_contract,
)
from jackin_remote.core.tiers import (
    DEFAULT_NETWORK_WHY,
    BackendOrigin,
    backend_misfits,
    default_network,
)
from tests.unit.test_wire import GOOD

ROLE = RoleRef("test-agent", "ab" * 32, "jackin-role-test-agent:abababababab", "agent",
               ("shell",), "/roles/test-agent")  # fmt: skip
WS = WorkspaceRef("/ws/app", "app-1", True, "c0ffee" * 6 + "abcd", "main", False, 3, 100)


def target(**extra: Any) -> TargetRef:
    return TargetRef("h1", "ssh", "10.0.0.5", "/srv/jackin", "docker", "1g", 1.0, 128, **extra)


@pytest.mark.parametrize(
    "ref",
    ["docker:27-dind", "docker", "registry.example.com:5000/ops/dind:v1", "jackin-test-dind:latest",
     "docker@sha256:" + "a" * 64, "a/b/c:1.0_rc-2"],
)  # fmt: skip
def test_image_references_a_daemon_can_pull_are_accepted(ref: str) -> None:
    assert check_image_ref(ref, "x") == ref
    assert PrivateDocker.from_wire({"image": ref, "privilege": "privileged"}).image == ref


@pytest.mark.parametrize(
    "ref",
    ["", "--privileged", "docker:27 dind", "Docker:27", "docker;rm -rf /", "$(id)", "docker:",
     ":tag", "a//b", "docker:27-dind\n", "x" * 300, "/abs/path", "docker@sha256:abc"],
)  # fmt: skip
def test_anything_else_is_not_an_image_reference(ref: str) -> None:
    with pytest.raises(SpecError):
        check_image_ref(ref, "x")
    with pytest.raises(SpecError):
        PrivateDocker.from_wire({"image": ref})


def test_the_privilege_is_one_of_two_and_nothing_else_travels() -> None:
    assert PrivateDocker.from_wire({"image": "docker"}).privilege is DockerPrivilege.PRIVILEGED
    for bad in ({"image": "docker", "privilege": "root"}, {"image": "docker", "extra": 1}, []):
        with pytest.raises(SpecError):
            PrivateDocker.from_wire(bad)


def test_a_spec_with_a_private_daemon_survives_the_wire_and_owns_its_variables() -> None:
    data = {**GOOD, "private_docker": {"image": "docker:27-dind", "privilege": "capabilities"}}
    spec = LaunchSpec.from_wire(data)
    assert spec.private_docker == PrivateDocker("docker:27-dind", DockerPrivilege.CAPABILITIES)
    assert LaunchSpec.from_wire(spec.to_wire()) == spec
    for name in ("DOCKER_HOST", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH"):
        with pytest.raises(SpecError, match="set by docker private"):
            LaunchSpec.from_wire({**data, "env": {name: "unix:///var/run/docker.sock"}})
    with pytest.raises(SpecError, match="private docker"):
        LaunchSpec.from_wire({**data, "mounts": [{"kind": "tmpfs", "target": PRIVATE_DOCKER_CERTS,
                                                  "size": "8m"}]})  # fmt: skip


@pytest.mark.parametrize("name", ENGINE_SOCKETS)
@pytest.mark.parametrize("parent", ["/var/run", "/srv/x", "/run/user/1000"])
def test_an_engine_socket_is_never_a_mount_source(name: str, parent: str) -> None:
    with pytest.raises(SpecError, match="socket is never mounted"):
        Mount("host", "/mnt/s", source=f"{parent}/{name}")


def test_the_sandbox_finds_its_daemon_by_name_and_trusts_only_its_ca() -> None:
    env = sandbox_env("abcd1234")
    assert env == {"DOCKER_HOST": f"tcp://{sidecar_name('abcd1234')}:2376",
                   "DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": PRIVATE_DOCKER_CERTS}  # fmt: skip
    assert network_name("abcd1234") == "jk-abcd1234-docker"
    # The CA key is deleted before dockerd starts: nobody can mint another client.
    assert SIDECAR_SCRIPT.index("rm -f ca-key.pem") < SIDECAR_SCRIPT.index('exec "$@"')
    assert "--tlsverify" in SIDECAR_SCRIPT


def test_the_contract_says_what_the_daemon_is_and_what_it_costs() -> None:
    request = LaunchRequest("shell", task="make", network="allowlist", docker="private")
    contract = resolve_contract("abcd1234", target(), ROLE, WS, request)
    access = contract.docker_access
    assert access["access"] == "private"
    assert (
        "docker --privileged" in access["privileges"]
        and "root on the host" in (access["privileges"])
    )
    assert "jk-abcd1234-egress" in access["daemon_network"]
    assert contract.spec.private_docker == PrivateDocker("docker:27-dind")
    actions = [effect.action for effect in contract.plan]
    sidecar = next(i for i, a in enumerate(actions) if a.startswith("create and start sidecar"))
    sandbox = next(i for i, a in enumerate(actions) if a.startswith("create and start container"))
    assert sidecar < sandbox
    mounts = {m["container"]: m for m in contract.filesystem["mounts"]}
    assert mounts[PRIVATE_DOCKER_CERTS]["mode"] == "ro"
    assert any("elevated privileges" in w for w in contract.warnings)
    assert "docker access private" in contract.routing["session_needs"]

    request = LaunchRequest("shell", network="none", docker="private")
    closed = resolve_contract(
        "abcd1234", target(private_docker_privilege="capabilities"), ROLE, WS, request
    )
    assert closed.network["reaches"] == ["its private docker daemon"]
    assert "CAP_SYS_RESOURCE" in closed.docker_access["privileges"]
    assert "none" in closed.docker_access["daemon_network"]

    plain = resolve_contract("abcd1234", target(), ROLE, WS, LaunchRequest("shell"))
    assert plain.docker_access["access"] == "none" and plain.spec.private_docker is None
    with pytest.raises(ContractError, match="--docker 'socket'"):
        resolve_contract("abcd1234", target(), ROLE, WS, LaunchRequest("shell", docker="socket"))


RUNSC_NO_NET = EngineRuntime("runsc", "/usr/bin/runsc", ("--network=none",))


def test_gvisor_without_a_network_cannot_reach_a_private_daemon() -> None:
    cap = Capacity(cpus=2, runtimes=(EngineRuntime("runc", "runc"), RUNSC_NO_NET))
    (misfit,) = backend_misfits("h1", "gvisor", BackendOrigin("flag"), "none", cap, "private")
    assert misfit.blocking and "--docker private needs one" in misfit.message
    assert backend_misfits("h1", "gvisor", BackendOrigin("flag"), "none", cap, "none") == []
    assert backend_misfits("h1", "docker", BackendOrigin("flag"), "none", cap, "private") == []


def test_the_default_network_is_allowlist_wherever_the_host_can_enforce_it() -> None:
    runsc = Capacity(cpus=2, runtimes=(EngineRuntime("runsc", "/usr/bin/runsc"),))
    no_net = Capacity(cpus=2, runtimes=(RUNSC_NO_NET,))
    assert default_network("docker", no_net) == ("allowlist", DEFAULT_NETWORK_WHY)
    assert default_network("gvisor", runsc) == ("allowlist", DEFAULT_NETWORK_WHY)
    assert default_network("gvisor", "unreachable") == ("allowlist", DEFAULT_NETWORK_WHY)
    network, why = default_network("gvisor", no_net)
    assert network == "none" and "runsc --network=none" in why
