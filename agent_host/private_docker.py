"""`docker private`: a docker daemon of the session's own, never the host's.

A sidecar container (`jk-<id>-dockerd`) runs dockerd from the operator's image (sh, openssl and
dockerd: e.g. docker:27-dind). At each start it makes a fresh CA, a server certificate and one
client certificate, then deletes the CA key: nobody can mint another client. dockerd listens on
TCP 2376 with --tlsverify, so only a holder of that client certificate is served. The client's
files go to an engine volume of the session (`jk-<id>-docker-client`), owned by the agent's uid,
which the sandbox mounts read-only at PRIVATE_DOCKER_CERTS; DOCKER_HOST points at the sidecar.

The sandbox and the sidecar share a network of their own (`jk-<id>-docker`): internal, and with
no address on the host's side of its bridge (inhibit_ipv4), so it reaches neither the outside
nor the host, only the two of them. The sidecar's own way out follows the session's network:
`allowlist`, the session's egress network, with dockerd's pulls through the session's proxy
(the same rules decide); `open`, the engine's default bridge; `none`, nothing (images are loaded
from the sandbox). Containers the agent starts there are behind the sidecar's NAT, on the same
ways out.

The sidecar runs with elevated privileges on the host (docker's --privileged, or every
capability but CAP_SYS_RESOURCE with seccomp and AppArmor unconfined): that is what a daemon
needs to run containers, and what the contract says. The session's memory, cpu and pids limits
apply to it as a whole. Python 3.9 compatible.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Dict, List, Optional

from agent_host.protocol import E_FAILED, RemoteError
from agent_host.wire import (
    LABEL_SESSION,
    PRIVATE_DOCKER_CERTS,
    PRIVATE_DOCKER_PORT,
    DockerPrivilege,
    LaunchSpec,
    Network,
    check_session_id,
    egress_network,
)

READY_TIMEOUT = 90.0  # dockerd's first start makes its state and iptables rules
LABEL_PART = "jackin.part"  # "private-docker": not a sandbox (no jackin.managed label)
SERVER_DIR = "/run/jackin-dockerd"  # in the sidecar: the server's TLS files and the CA
CLIENT_DIR = "/jackin-client"  # in the sidecar: where the client volume is mounted

# Run by the sidecar's /bin/sh at every start. The CA key never outlives this script.
SIDECAR_SCRIPT = r"""set -eu
umask 077
s=%(server)s
c=%(client)s
rm -rf "$s"
mkdir -p "$s"
cd "$s"
key() { openssl ecparam -name prime256v1 -genkey -noout -out "$1" 2>/dev/null; }
key ca-key.pem
openssl req -new -x509 -days 30 -key ca-key.pem -subj /CN=jackin-private-docker-ca \
    -out ca.pem
key key.pem
openssl req -new -key key.pem -subj /CN="$JACKIN_DOCKERD" -out server.csr
printf 'subjectAltName=DNS:%%s,DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' \
    "$JACKIN_DOCKERD" >server.ext
openssl x509 -req -days 30 -in server.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial \
    -extfile server.ext -out cert.pem 2>/dev/null
key client-key.pem
openssl req -new -key client-key.pem -subj /CN=jackin-sandbox -out client.csr
printf 'extendedKeyUsage=clientAuth\n' >client.ext
openssl x509 -req -days 30 -in client.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial \
    -extfile client.ext -out client-cert.pem 2>/dev/null
rm -f ca-key.pem ca.srl ./*.csr ./*.ext
rm -f "$c/ca.pem" "$c/cert.pem" "$c/key.pem"
cp ca.pem "$c/ca.pem"
cp client-cert.pem "$c/cert.pem"
cp client-key.pem "$c/key.pem"
chown "$JACKIN_UID:$JACKIN_GID" "$c" "$c/ca.pem" "$c/cert.pem" "$c/key.pem"
chmod 0500 "$c"
chmod 0444 "$c/ca.pem" "$c/cert.pem"
chmod 0400 "$c/key.pem"
set -- dockerd --host=tcp://0.0.0.0:%(port)d --tlsverify --tlscacert="$s/ca.pem" \
    --tlscert="$s/cert.pem" --tlskey="$s/key.pem"
# docker:dind's wrapper prepares cgroups and mounts for a nested daemon, where it exists.
if command -v dind >/dev/null 2>&1; then set -- dind "$@"; fi
exec "$@"
""" % {"server": SERVER_DIR, "client": CLIENT_DIR, "port": PRIVATE_DOCKER_PORT}

# Asked inside the sidecar: is the daemon serving TLS with the client's certificate?
READY_PROBE = [
    "docker", "--host=tcp://127.0.0.1:%d" % PRIVATE_DOCKER_PORT, "--tlsverify",
    "--tlscacert=%s/ca.pem" % SERVER_DIR, "--tlscert=%s/client-cert.pem" % SERVER_DIR,
    "--tlskey=%s/client-key.pem" % SERVER_DIR, "version", "--format", "{{.Server.Version}}",
]  # fmt: skip


def network_name(session_id: str) -> str:
    """The network only the sandbox and its daemon are on."""
    return "jk-%s-docker" % check_session_id(session_id)


def sidecar_name(session_id: str) -> str:
    return "jk-%s-dockerd" % check_session_id(session_id)


def client_volume(session_id: str) -> str:
    return "jk-%s-docker-client" % check_session_id(session_id)


def sandbox_env(session_id: str) -> Dict[str, str]:
    """What the sandbox's docker clients read to find, and trust, their daemon."""
    return {
        "DOCKER_HOST": "tcp://%s:%d" % (sidecar_name(session_id), PRIVATE_DOCKER_PORT),
        "DOCKER_TLS_VERIFY": "1",
        "DOCKER_CERT_PATH": PRIVATE_DOCKER_CERTS,
    }


def privilege_kwargs(privilege: DockerPrivilege) -> Dict[str, Any]:
    """The engine options that let a daemon run containers, per the inventory's choice."""
    if privilege is DockerPrivilege.PRIVILEGED:
        return {"privileged": True}
    return {
        "cap_add": ["ALL"],
        "cap_drop": ["SYS_RESOURCE"],
        "security_opt": ["seccomp=unconfined", "apparmor=unconfined"],
        "volumes": {"/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "rw"}},
    }


def _labels(session_id: str, root: Optional[str] = None) -> Dict[str, str]:
    labels = {LABEL_SESSION: session_id, LABEL_PART: "private-docker"}
    if root is not None:  # whose it is, for gc (agent_host/ownership.py)
        from agent_host.ownership import root_labels

        labels.update(root_labels(root))
    return labels


def ensure_network(client: Any, session_id: str, root: Optional[str] = None) -> str:
    """The sandbox-and-daemon network (made if missing); an existing one is used only if it is
    this session's, internal, and without a host address."""
    from docker.errors import NotFound

    name = network_name(session_id)
    try:
        network = client.networks.get(name)
    except NotFound:
        network = client.networks.create(
            name, driver="bridge", internal=True, labels=_labels(session_id, root),
            options={"com.docker.network.bridge.inhibit_ipv4": "true"},
        )  # fmt: skip
        network.reload()
        _audit(root, session_id, "network.create", name, "docker network rm %s" % name)
    attrs = network.attrs
    options = attrs.get("Options") or {}
    if (
        not attrs.get("Internal")
        or (attrs.get("Labels") or {}).get(LABEL_SESSION) != session_id
        or options.get("com.docker.network.bridge.inhibit_ipv4") != "true"
    ):
        raise RemoteError(E_FAILED, "network %s exists but is not this session's private one: "
                          "remove it (`docker network rm %s`)" % (name, name))  # fmt: skip
    return name


def start(
    client: Any, spec: LaunchSpec, uid: int, gid: int, proxy: Optional[str],
    root: Optional[str] = None,
) -> str:  # fmt: skip
    """Make (or start again) the session's daemon and wait until it serves TLS; the network the
    sandbox must join. `proxy`: the session's egress proxy URL (allowlist), for dockerd's pulls."""
    from docker.errors import DockerException, NotFound

    assert spec.private_docker is not None
    session_id = spec.session_id
    network = ensure_network(client, session_id, root)
    name = sidecar_name(session_id)
    try:
        try:
            sidecar = client.containers.get(name)
        except NotFound:
            sidecar = _create(client, spec, uid, gid, network, proxy, root)
        if (sidecar.labels or {}).get(LABEL_SESSION) != session_id:
            raise RemoteError(E_FAILED, "container %s exists but is not this session's daemon: "
                              "remove it (`docker rm -f %s`)" % (name, name))  # fmt: skip
        sidecar.reload()
        if sidecar.status != "running":
            sidecar.start()
            _audit(root, session_id, "container.start", name, "jackin-remote stop %s" % session_id)
        _wait_ready(sidecar)
    except DockerException as exc:
        raise RemoteError(E_FAILED, "docker could not start the private docker daemon (%s): %s"
                          % (spec.private_docker.image, exc)) from None  # fmt: skip
    return network


def _create(
    client: Any, spec: LaunchSpec, uid: int, gid: int, network: str, proxy: Optional[str],
    root: Optional[str] = None,
) -> Any:  # fmt: skip
    from docker.errors import ImageNotFound

    assert spec.private_docker is not None
    session_id = spec.session_id
    image = spec.private_docker.image
    try:
        client.images.get(image)
    except ImageNotFound:
        raise RemoteError(
            E_FAILED, "the private docker image %s is not on this host" % image,
            {"hint": "load it on the host (`docker pull %s`, or docker save | docker load), or "
             "set private_docker_image in the inventory" % image},
        ) from None  # fmt: skip
    volume = client_volume(session_id)
    client.volumes.create(name=volume, labels=_labels(session_id, root))
    _audit(root, session_id, "volume.create", volume, "docker volume rm %s" % volume)
    env = {"JACKIN_UID": str(uid), "JACKIN_GID": str(gid), "JACKIN_DOCKERD": sidecar_name(
        session_id)}  # fmt: skip
    if proxy is not None:  # dockerd pulls through the session's proxy, by the same rules
        for key in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
            env[key] = proxy
    kwargs = privilege_kwargs(spec.private_docker.privilege)
    volumes = dict(kwargs.pop("volumes", {}))
    volumes[volume] = {"bind": CLIENT_DIR, "mode": "rw"}
    limits = spec.limits
    if limits.memory is not None:
        kwargs["mem_limit"] = limits.memory_bytes
        kwargs["memswap_limit"] = limits.memory_bytes
    if limits.cpus is not None:
        kwargs["nano_cpus"] = int(limits.cpus * 1e9)
    if limits.pids is not None:
        kwargs["pids_limit"] = limits.pids
    sidecar = client.containers.create(
        image, ["-c", SIDECAR_SCRIPT], entrypoint=["/bin/sh"], name=sidecar_name(session_id),
        user="0", environment=env, labels=_labels(session_id, root), volumes=volumes,
        tmpfs={"/var/lib/docker": "exec"}, network=network, detach=True,
        log_config={"type": "json-file", "config": {"max-size": "1m", "max-file": "2"}},
        **kwargs,
    )  # fmt: skip
    _audit(root, session_id, "container.create", sidecar_name(session_id),
           "docker rm -f %s" % sidecar_name(session_id))  # fmt: skip
    if spec.network is Network.ALLOWLIST:
        client.networks.get(egress_network(session_id)).connect(sidecar)
    elif spec.network is Network.OPEN:
        client.networks.get("bridge").connect(sidecar)
    return sidecar


def _wait_ready(sidecar: Any, timeout: float = READY_TIMEOUT) -> None:
    """Until the daemon answers the client certificate (a deadline, not a test's timing)."""
    deadline = time.monotonic() + timeout
    while True:
        sidecar.reload()
        if sidecar.status != "running":
            raise RemoteError(E_FAILED, "the private docker daemon exited: %s" % _tail(sidecar))
        code, _ = sidecar.exec_run(READY_PROBE, user="0")
        if code == 0:
            return
        if time.monotonic() > deadline:
            raise RemoteError(E_FAILED, "the private docker daemon did not answer within %ds: %s"
                              % (timeout, _tail(sidecar)))  # fmt: skip
        time.sleep(0.3)


def _tail(sidecar: Any) -> str:
    with contextlib.suppress(Exception):
        text = sidecar.logs(tail=5).decode("utf-8", "replace").strip()
        return text[-600:] or "no output"
    return "no output"


def stop(client: Any, session_id: str, root: Optional[str] = None) -> None:
    """Stop the daemon (its images and containers, in memory, are gone with it)."""
    from docker.errors import NotFound

    with contextlib.suppress(NotFound):
        sidecar = client.containers.get(sidecar_name(session_id))
        if sidecar.status == "running" and (sidecar.labels or {}).get(LABEL_SESSION) == (
            session_id
        ):
            sidecar.stop(timeout=10)
            _audit(root, session_id, "container.stop", sidecar.name,
                   "jackin-remote start %s" % session_id)  # fmt: skip


def remove(client: Any, session_id: str, root: Optional[str] = None) -> None:
    """The sidecar, its network and the client volume (rm, or a failed create)."""
    from docker.errors import NotFound

    label = "%s=%s" % (LABEL_SESSION, session_id)
    for container in client.containers.list(
        all=True, filters={"label": label}, ignore_removed=True
    ):
        if (container.labels or {}).get(LABEL_PART) == "private-docker":
            container.remove(force=True)
            _audit(root, session_id, "container.remove", container.name, "")
    with contextlib.suppress(NotFound):
        client.networks.get(network_name(session_id)).remove()
        _audit(root, session_id, "network.remove", network_name(session_id), "")
    with contextlib.suppress(NotFound):
        client.volumes.get(client_volume(session_id)).remove(force=True)
        _audit(root, session_id, "volume.remove", client_volume(session_id), "")


def _audit(root: Optional[str], session_id: str, action: str, target: str, undo: str) -> None:
    """Record a change in the host's audit (callers without a root record nothing)."""
    if root is not None:
        from agent_host import audit

        audit.record(root, session_id, action, target, undo)


def mounts(session_id: str) -> Dict[str, Dict[str, str]]:
    """The sandbox's view of the client's files: read-only."""
    return {client_volume(session_id): {"bind": PRIVATE_DOCKER_CERTS, "mode": "ro"}}


def extra_networks(spec: LaunchSpec) -> List[str]:
    """Networks the sandbox joins besides its own (none: the private one is its only one)."""
    if spec.private_docker is None or spec.network is Network.NONE:
        return []
    return [network_name(spec.session_id)]
