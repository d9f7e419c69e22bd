"""The contract's docker access: none, or a private daemon in a sidecar. Pure.

What a `--docker private` session gets is decided on the host (agent_host/private_docker.py);
this module only says it, from the same names, so the contract tells what the host will make.
"""

from __future__ import annotations

from typing import Any

from agent_host.private_docker import client_volume, network_name, sidecar_name
from agent_host.wire import (
    PRIVATE_DOCKER_CERTS,
    PRIVATE_DOCKER_PORT,
    DockerPrivilege,
    LaunchSpec,
    Network,
    PrivateDocker,
    egress_network,
)

DOCKER_ACCESS = ("none", "private")
NONE_SECTION = {
    "access": "none",
    "detail": "no docker daemon and no docker socket in the sandbox; the host socket is never "
    "offered, whatever is asked",
}
PRIVILEGE_WORDS = {
    DockerPrivilege.PRIVILEGED: "docker --privileged (every capability, every device, no "
    "seccomp or AppArmor profile)",
    DockerPrivilege.CAPABILITIES: "every capability but CAP_SYS_RESOURCE, seccomp and AppArmor "
    "unconfined, the host's /sys/fs/cgroup mounted read-write",
}


def private_docker(docker: str, image: str, privilege: str) -> PrivateDocker | None:
    """The spec's private_docker for `--docker` (None for none); ValueError on a bad value."""
    if docker not in DOCKER_ACCESS:
        raise ValueError(f"--docker {docker!r}: expected none or private")
    if docker == "none":
        return None
    return PrivateDocker(image, DockerPrivilege(privilege))


def section(spec: LaunchSpec) -> dict[str, Any]:
    """The contract's docker_access section."""
    docker = spec.private_docker
    if docker is None:
        return dict(NONE_SECTION)
    sidecar = sidecar_name(spec.session_id)
    privilege = PRIVILEGE_WORDS[docker.privilege]
    way_out = {
        Network.ALLOWLIST: f"its egress network ({egress_network(spec.session_id)}): its pulls "
        "go through the session's proxy, by the same rules, and so does what its containers "
        "send",
        Network.OPEN: "the engine's default bridge: it and its containers reach the internet "
        "and the host's network",
        Network.NONE: "none: it pulls nothing; images come from the sandbox (docker load)",
    }[spec.network]
    return {
        "access": "private",
        "daemon": f"dockerd of the session's own in sidecar container {sidecar} (image "
        f"{docker.image}); the sandbox reaches it at tcp://{sidecar}:{PRIVATE_DOCKER_PORT}",
        "authentication": "TLS with a client certificate only this sandbox holds "
        f"({PRIVATE_DOCKER_CERTS}, read-only); the CA key is deleted once the certificates "
        "are made, and a new CA is made at every start",
        "reached_over": f"{network_name(spec.session_id)}: a network of the sandbox and its "
        "daemon only (internal, no address on the host's side)",
        "daemon_network": way_out,
        "privileges": f"elevated on the host: the sidecar runs with {privilege}. An escape "
        "from the sidecar (or from a container it runs) is root on the host's kernel.",
        "host_socket": "never mounted, whatever is asked",
        "storage": "images and containers in memory (tmpfs /var/lib/docker in the sidecar): "
        "gone when the session stops",
        "limits": "the session's memory, cpu and pids limits apply to the daemon and all its "
        "containers, separately from the sandbox's",
        "stronger": "a microVM per session, with the daemon inside it (later); until then, "
        "a dedicated host for sessions that need docker",
    }


def effects(spec: LaunchSpec, host: str) -> list[tuple[str, str]]:
    """(action, target) of the plan, in the order the host applies them."""
    docker = spec.private_docker
    if docker is None:
        return []
    engine = f"docker engine on {host}"
    return [
        (f"create network {network_name(spec.session_id)} (internal; no host address)", engine),
        (f"create volume {client_volume(spec.session_id)} (the client's TLS files)", engine),
        (
            f"create and start sidecar {sidecar_name(spec.session_id)} from {docker.image} "
            f"({docker.privilege.value}: elevated on the host), and wait until it serves TLS",
            engine,
        ),
    ]


def mount_entry(spec: LaunchSpec) -> list[dict[str, Any]]:
    if spec.private_docker is None:
        return []
    return [
        {
            "laptop": None,
            "host": f"volume {client_volume(spec.session_id)}",
            "container": PRIVATE_DOCKER_CERTS,
            "mode": "ro",
            "isolation": "private-docker",
            "note": "the private daemon's CA and this sandbox's client certificate and key; "
            "removed by rm",
        }
    ]


def warning(spec: LaunchSpec) -> list[str]:
    if spec.private_docker is None:
        return []
    return [
        "--docker private: the session's docker daemon runs in a sidecar with elevated "
        "privileges on the host; what the agent runs there is one container escape from the "
        "host's kernel. A microVM would be the stronger box (not in this version)."
    ]
