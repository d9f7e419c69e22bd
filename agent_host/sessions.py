"""Sessions on this host: create the sandbox a contract describes, list, logs, stop, rm.

The host is the source of truth. A session is recorded (state `starting`) before anything is
made for it, so a controller that dies mid-launch leaves a record, never an unknown container.
Python 3.9 compatible.
"""

from __future__ import annotations

import codecs
import contextlib
import os
import re
import shutil
import threading
import time
from dataclasses import fields
from typing import Any, Callable, Dict, List, Optional, Tuple

from agent_host import audit, layout, observe, private_docker, snapshots, testhooks
from agent_host.procs import pid_alive
from agent_host.protocol import (
    E_CONFLICT,
    E_DOCKER_UNAVAILABLE,
    E_FAILED,
    E_INVALID_PARAMS,
    E_NOT_FOUND,
    Message,
    RemoteError,
)
from agent_host.server import Context
from agent_host.state import Store
from agent_host.wire import (
    ACTIVE_STATES,
    CAP_DROP,
    GVISOR_RUNTIME,
    LABEL_MANAGED,
    LABEL_SESSION,
    LOG_MAX_FILES,
    LOG_MAX_SIZE,
    MANAGED_FILTER,
    MODEL_KEY_PLACEHOLDER,
    MODEL_PREFIX,
    PROXY_PORT,
    READ_ONLY_ROOT,
    SANDBOX_UID_BASE,
    SECRET_EXPORTS,
    SECRETS_MOUNT,
    SECURITY_OPT,
    SHM_SIZE,
    STATUS_FILE,
    STATUS_FILE_BYTES,
    TMUX_SESSION,
    AgentStatus,
    Backend,
    EndReason,
    LaunchSpec,
    Mount,
    Network,
    SessionRecord,
    SessionState,
    check_env_value,
    check_session_id,
    egress_network,
    held_sensitive,
)

Range = Tuple[int, int]  # [start, end)
STOP_TIMEOUT = 10
PANE_POLL = 1.0  # seconds between two looks at an interactive session's pane (logs -f)
PANE_TAIL = 8  # printed lines remembered to find where the next capture continues
RESTARTABLE = ("stopped", "exited", "crashed")
SETUP_GRACE = 600.0  # a `starting` record older than this, whose setter-upper is gone, failed


def _docker() -> Any:
    try:
        import docker
        from docker.errors import DockerException
    except ImportError as exc:  # pragma: no cover - vendored in the zipapp
        raise RemoteError(E_DOCKER_UNAVAILABLE, "docker SDK missing: %s" % exc) from None
    try:
        return docker.from_env(timeout=120)
    except DockerException as exc:
        raise RemoteError(E_DOCKER_UNAVAILABLE, "docker engine not usable: %s" % exc) from None


def _not_found() -> Any:
    from docker.errors import NotFound

    return NotFound


# -- create ----------------------------------------------------------------------------------
def create(ctx: Context, params: Message) -> Dict[str, Any]:
    """Make the sandbox a spec describes. Every field is checked here (LaunchSpec.from_wire),
    whatever the controller did; what is never a choice (hardening, mounts, labels, image) is
    derived from the spec, not read from the wire."""
    spec = LaunchSpec.from_wire(params.get("spec"))
    secrets = params.get("secret_env") or {}
    if not isinstance(secrets, dict) or set(secrets) != set(spec.secret_env):
        raise RemoteError(E_INVALID_PARAMS, "secret_env values must match spec.secret_env names")
    for name, value in secrets.items():
        check_env_value(value, "secret_env." + name)
    if spec.model_api is not None:
        key = secrets.get(spec.model_api.key_env, "")
        if not all(0x21 <= ord(char) <= 0x7E for char in key):
            raise RemoteError(E_INVALID_PARAMS, "the model API key must be printable ASCII: it "
                              "goes into an HTTP header")  # fmt: skip
    files = params.get("secret_files") or {}
    if not isinstance(files, dict) or set(files) != set(spec.secret_files):
        raise RemoteError(E_INVALID_PARAMS, "secret_files values must match spec.secret_files")
    for name, value in files.items():
        check_env_value(value, "secret_files." + name)
    session_id = spec.session_id
    store = Store(ctx.root)
    try:
        if store.get(session_id) is not None:
            raise RemoteError(E_CONFLICT, "session %s already exists" % session_id)
        client = _docker()
        store.insert(_record(spec, os.getpid()))
        audit.record(ctx.root, session_id, "session.record", "%s in %s" % (session_id,
                     layout.state_db(ctx.root)), "jackin-remote rm %s" % session_id)  # fmt: skip
        testhooks.pause_host("host-create", ctx.root)
        try:
            # Who the agent runs as is checked first (never uid 0 in the image), then the checkout.
            image, uid, gid = sandbox_identity(ctx.root, client, spec)
            store.update(session_id, uid=uid)
            checkout = _checkout(ctx.root, spec)
            undo = "rm -rf %s" % layout.session_dir(ctx.root, session_id)
            audit.record(ctx.root, session_id, "checkout.create", checkout["work_dir"], undo)
            store.update(
                session_id,
                base_commit=checkout.get("base_commit") or spec.base_commit,
                launch_commit=checkout.get("launch_commit"),
            )
            work = layout.work_dir(ctx.root, session_id)
            if os.getuid() == 0:
                _chown_tree(work, uid, gid)
            if spec.snapshots.before_start:  # before the agent can touch it (snapshots.py)
                from agent_host import snapshots

                snapshots.take(ctx.root, session_id, "before-start", spec.snapshots)
            # The model API key goes to the proxy only, never into the sandbox.
            model_env = spec.model_api.key_env if spec.model_api else None
            model_key = secrets.get(model_env) if model_env else None
            sandbox_secrets = {k: v for k, v in secrets.items() if k != model_env}
            proxy = _start_egress(ctx.root, client, spec, model_key)
            if spec.private_docker is not None:
                private_docker.start(client, spec, uid, gid, proxy, root=ctx.root)
            held = write_secret_files(session_id, uid, gid, files) if spec.secret_files else None
            if held is not None:  # names only, never a value
                audit.record(ctx.root, session_id, "secrets.write", "%s (%s)" % (held, ", ".join(
                    sorted(files))), "rm -rf %s" % held)  # fmt: skip
            container = _run_container(
                client, spec, sandbox_secrets, image, work, uid, gid, proxy, held
            )
        except Exception as exc:
            with contextlib.suppress(Exception):
                private_docker.remove(client, session_id, root=ctx.root)
            _stop_egress(ctx.root, client, session_id)
            remove_secret_files(session_id, root=ctx.root)
            with contextlib.suppress(Exception):
                _remove_volumes(client, session_id, root=ctx.root)
            message = (
                exc.message
                if isinstance(exc, RemoteError)
                else "%s: %s" % (type(exc).__name__, exc)
            )
            store.update(
                session_id,
                state=SessionState.FAILED_SETUP.value,
                error=message[:2000],
                finished_at=time.time(),
                owner_pid=None,
            )
            raise
        store.update(
            session_id,
            state=SessionState.RUNNING.value,
            started_at=time.time(),
            owner_pid=None,
            image=image,
            agent_status=agent_status(SessionState.RUNNING.value, spec.mode.value),
        )
        if spec.idle_timeout is not None:
            _ensure_janitor(ctx.root, getattr(ctx, "resident", None))
        entry = public_record(_existing(store.get(session_id)))
        entry["container_id"] = container.id[:12]
        return entry
    finally:
        store.close()


def _start_egress(
    root: str, client: Any, spec: LaunchSpec, model_key: Optional[str] = None
) -> Optional[str]:
    """`network allowlist`: the session's internal network and its proxy; the proxy's URL.
    `model_key`: the runtime's API key, which the proxy adds to the sandbox's model API calls
    (None on a restart: the proxy reads the one it was given at create)."""
    if spec.network is not Network.ALLOWLIST:
        return None
    from agent_host import egressd

    gateway, subnet = egressd.ensure_network(client, spec.session_id, root=root)
    egressd.start_proxy(root, spec, gateway, subnet, model_key)
    return "http://%s:%d" % (gateway, PROXY_PORT)


def _stop_egress(root: str, client: Any, session_id: str, network: bool = True) -> None:
    """Stop a session's proxy (if any), and remove its network (once no container is on it)."""
    from agent_host import egressd

    egressd.stop_proxy(root, session_id)
    if network:
        with contextlib.suppress(Exception):
            egressd.remove_network(client, session_id, root=root)


def _record(spec: LaunchSpec, pid: int) -> Dict[str, Any]:
    return {
        "id": spec.session_id, "name": spec.name, "workspace": spec.workspace,
        "role": spec.role, "runtime": spec.runtime, "image": spec.image,
        "container": spec.container, "mode": spec.mode.value,
        "isolation": spec.isolation.value, "state": SessionState.STARTING.value,
        "agent_status": AgentStatus.UNKNOWN.value, "branch": spec.branch,
        "base_commit": spec.base_commit, "owner_pid": pid, "spec": spec.to_wire(),
    }  # fmt: skip


def _checkout(root: str, spec: LaunchSpec) -> Dict[str, Any]:
    from agent_host.workspaces import make_checkout

    if not os.path.isdir(layout.mirror_dir(root, spec.workspace)):
        raise RemoteError(E_NOT_FOUND, "workspace %s was never synced here" % spec.workspace)
    return make_checkout(root, spec.workspace, spec.session_id, spec.isolation.value)


def _chown_tree(path: str, uid: int, gid: int) -> None:
    os.lchown(path, uid, gid)
    for base, dirs, files in os.walk(path):
        for name in dirs + files:
            os.lchown(os.path.join(base, name), uid, gid)


# -- who the agent runs as ---------------------------------------------------------------------
def _subuid_ranges(paths: Tuple[str, ...] = ("/etc/subuid", "/etc/subgid")) -> List[Range]:
    ranges: List[Range] = []
    for path in paths:
        try:
            with open(path) as handle:
                lines = handle.read().splitlines()
        except OSError:
            continue
        for line in lines:
            parts = line.strip().split(":")
            if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
                ranges.append((int(parts[1]), int(parts[1]) + int(parts[2])))
    return ranges


def pick_sandbox_uid(
    taken: Callable[[int], bool], ranges: List[Range], base: int = SANDBOX_UID_BASE
) -> int:
    """The first id from `base` that no account, group or subordinate range uses. Pure."""
    candidate = base
    while candidate < base + 1000000:
        inside = [end for start, end in ranges if start <= candidate < end]
        if inside:
            candidate = max(inside)
            continue
        if not taken(candidate):
            return candidate
        candidate += 1
    raise RemoteError(E_FAILED, "no free uid for the sandbox above %d" % base)


def _id_taken(value: int) -> bool:
    import grp
    import pwd

    for lookup in (pwd.getpwuid, grp.getgrgid):
        try:
            lookup(value)
            return True
        except KeyError:
            pass
    return False


def sandbox_identity(root: str, client: Any, spec: LaunchSpec) -> Tuple[str, int, int]:
    """The image to run, and the uid/gid the agent has in it. Never 0.

    - On a root host the agent gets a uid that no host account uses, so no login on the host
      can read its /proc (environment, root filesystem) or its checkout.
    - Otherwise it gets the host user's own uid (the account that runs jackin there and owns
      the checkout, which already controls the docker engine).

    A thin derived image (`<image>-u<uid>`) gives the role user that uid, so names still work.
    """
    from agent_host.roles import image_user_ids

    image = spec.image
    uid, gid = image_user_ids(root, image, spec.user)
    if uid == 0 or gid == 0:
        raise RemoteError(
            E_INVALID_PARAMS,
            "role user %r is root (uid %d, gid %d) inside %s: the agent never runs as root"
            % (spec.user, uid, gid, image),
        )
    if os.getuid() == 0:
        target = pick_sandbox_uid(_id_taken, _subuid_ranges())
        target_uid, target_gid = target, target
    else:
        target_uid, target_gid = os.getuid(), os.getgid()
    if (uid, gid) == (target_uid, target_gid):
        return image, uid, gid
    derived = "%s-u%d" % (image, target_uid)
    try:
        client.images.get(derived)
    except _not_found():
        _build_uid_image(client, image, derived, uid, target_uid, target_gid)
        audit.record(root, spec.session_id, "image.build", derived, "docker rmi %s" % derived)
    return derived, target_uid, target_gid


def _build_uid_image(client: Any, base: str, tag: str, old_uid: int, uid: int, gid: int) -> None:
    import io

    # The role user is found by its uid (the spec may name it by name or number); its passwd
    # and group entries are moved to the new ids and its home follows.
    dockerfile = (
        "FROM %s\nUSER root\n"
        "RUN set -e; name=$(getent passwd %d | cut -d: -f1 || true); "
        'if [ -n "$name" ]; then grp=$(id -gn "$name"); '
        'sed -i -E "s/^($name:[^:]*):[0-9]+:[0-9]+:/\\1:%d:%d:/" /etc/passwd; '
        'sed -i -E "s/^($grp:[^:]*):[0-9]+:/\\1:%d:/" /etc/group; '
        'home=$(getent passwd "$name" | cut -d: -f6); '
        '[ ! -d "$home" ] || chown -R %d:%d "$home"; fi\n'
        "USER %d:%d\n" % (base, old_uid, uid, gid, gid, uid, gid, uid, gid)
    ).encode()
    try:
        client.images.build(
            fileobj=io.BytesIO(dockerfile),
            tag=tag,
            rm=True,
            forcerm=True,
            labels={LABEL_MANAGED: "true"},
            pull=False,
            network_mode="none",
        )
    except Exception as exc:
        raise RemoteError(
            E_FAILED, "could not map the role user to uid %d: %s" % (uid, exc)
        ) from None


def _run_container(
    client: Any,
    spec: LaunchSpec,
    secrets: Dict[str, str],
    image: str,
    work: str,
    uid: int,
    gid: int,
    proxy: Optional[str] = None,
    secret_dir: Optional[str] = None,
) -> Any:
    env = spec.environment
    env.update(secrets)
    if proxy is not None:  # the only way out; most tools read one spelling or the other
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
            env[name] = proxy
        gateway = proxy.split("//", 1)[1].rsplit(":", 1)[0]  # the model route is the proxy's own
        env["NO_PROXY"] = env["no_proxy"] = "localhost,127.0.0.1,::1," + gateway
        if spec.model_api is not None:
            env[spec.model_api.base_url_env] = proxy + MODEL_PREFIX
            env[spec.model_api.key_env] = MODEL_KEY_PLACEHOLDER
    if spec.private_docker is not None:  # the session's own daemon, never the proxy's business
        env.update(private_docker.sandbox_env(spec.session_id))
        if proxy is not None:
            sidecar = private_docker.sidecar_name(spec.session_id)
            env["NO_PROXY"] = env["no_proxy"] = "%s,%s" % (env["NO_PROXY"], sidecar)
    tmpfs = {}
    for path, options in spec.tmpfs.items():
        if path != "/tmp":
            options = "%s,uid=%d,gid=%d,mode=0700" % (options, uid, gid)
        tmpfs[path] = options
    volumes = {work: {"bind": spec.workdir, "mode": "rw"}, **_secret_volume(secret_dir)}
    if spec.private_docker is not None:
        volumes.update(private_docker.mounts(spec.session_id))
    for index, mount in enumerate(spec.mounts):
        if mount.kind == "tmpfs":
            tmpfs[mount.target] = "rw,nosuid,nodev,size=%s,uid=%d,gid=%d,mode=0700" % (
                mount.size, uid, gid)  # fmt: skip
        elif mount.kind == "host":
            volumes[checked_host_source(root_of(work), mount, spec)] = {
                "bind": mount.target, "mode": "ro"}  # fmt: skip
        elif mount.kind == "synced":
            copy = checked_synced_copy(root_of(work), spec, index)
            audit.record(root_of(work), spec.session_id, "mount.copy", copy, "rm -rf %s" % copy)
            if os.getuid() == 0:  # the agent's own, like its checkout (ro: the mount says so)
                _chown_tree(copy, uid, gid)
            volumes[copy] = {"bind": mount.target, "mode": str(mount.mode)}
        else:
            name = _session_volume(client, spec, index, image, uid, gid, root_of(work))
            volumes[name] = {"bind": mount.target, "mode": "rw"}
    from agent_host.ownership import root_labels  # whose it is, for gc

    kwargs: Dict[str, Any] = {
        "command": list(spec.command)
        if secret_dir is None
        else ["/bin/sh", "-c", SECRET_EXPORTS, "jackin-secrets", *spec.command],
        "name": spec.container,
        "user": "%d:%d" % (uid, gid),
        "working_dir": spec.workdir,
        "environment": env,
        "labels": {**spec.labels, **root_labels(root_of(work))},
        # The checkout, the secrets (read-only), the operator's mounts. Never the docker socket.
        "volumes": volumes,
        "tmpfs": tmpfs,
        "shm_size": SHM_SIZE,
        "read_only": READ_ONLY_ROOT,
        "cap_drop": list(CAP_DROP),
        "security_opt": list(SECURITY_OPT),
        **_network_kwargs(spec),
        "log_config": {
            "type": "json-file",
            "config": {"max-size": LOG_MAX_SIZE, "max-file": str(LOG_MAX_FILES)},
        },
        "init": True,
        "detach": True,
    }
    if spec.backend is Backend.GVISOR:
        kwargs["runtime"] = GVISOR_RUNTIME  # docker's name for runsc on this host
    limits = spec.limits
    if limits.memory is not None:
        kwargs["mem_limit"] = limits.memory_bytes
        kwargs["memswap_limit"] = limits.memory_bytes
    if limits.cpus is not None:
        kwargs["nano_cpus"] = int(limits.cpus * 1e9)
    if limits.pids is not None:
        kwargs["pids_limit"] = limits.pids
    if limits.nofile is not None:
        from docker.types import Ulimit

        kwargs["ulimits"] = [Ulimit(name="nofile", soft=limits.nofile, hard=limits.nofile)]
    from docker.errors import DockerException

    kwargs.pop("detach")
    try:
        container = client.containers.create(image, **kwargs)
        audit.record(root_of(work), spec.session_id, "container.create", spec.container,
                     "docker rm -f %s" % spec.container)  # fmt: skip
        for network in private_docker.extra_networks(spec):
            client.networks.get(network).connect(container)
        container.start()
        audit.record(root_of(work), spec.session_id, "container.start", spec.container,
                     "jackin-remote stop %s" % spec.session_id)  # fmt: skip
        return container
    except DockerException as exc:
        if limits.nofile is not None and "rlimit type 7" in str(exc):  # RLIMIT_NOFILE
            raise RemoteError(
                E_FAILED, "the engine cannot give the sandbox %d open files: its own limit on "
                "this host is lower (lower limits.nofile, or leave it unset for the engine's "
                "default): %s" % (limits.nofile, exc),
            ) from None  # fmt: skip
        raise RemoteError(E_FAILED, "docker could not start the sandbox: %s" % exc) from None


# -- list / reconcile ------------------------------------------------------------------------
# Never mounted, whatever an inventory allows: the engine's socket gives root on the host.
NEVER_MOUNTED = ("/var/run/docker.sock", "/run/docker.sock", "/var/run", "/run", "/proc",
                 "/sys", "/dev", "/etc", "/root", "/var/lib/docker")  # fmt: skip


def root_of(work: str) -> str:
    """The host root, from a session's work directory (ROOT/sessions/ID/work)."""
    return os.path.dirname(os.path.dirname(os.path.dirname(work)))


def checked_host_source(root: str, mount: Mount, spec: LaunchSpec) -> str:
    """A host directory to mount read-only, checked here whatever the controller did: a real
    directory (no symlink in its path), not the engine's socket nor a system tree, not jackin's
    root, holding no sensitive name the operator did not acknowledge."""
    source = str(mount.source)
    real = os.path.realpath(source)
    if real != source:
        raise RemoteError(E_INVALID_PARAMS, "mount %s: a symlink is in its path (it is %s)"
                          % (source, real))  # fmt: skip
    if not os.path.isdir(real):
        raise RemoteError(E_NOT_FOUND, "mount %s: no such directory on this host" % source)
    for never in (*NEVER_MOUNTED, os.path.realpath(root)):
        if (
            real == never
            or real.startswith(never + "/")
            or never.startswith(real + "/")
            or (real == "/")
        ):
            raise RemoteError(E_INVALID_PARAMS, "mount %s: never mounted (it is or holds %s)"
                              % (source, never))  # fmt: skip
    missing = [name for name in held_sensitive(real) if name not in spec.acknowledged]
    if missing:
        raise RemoteError(
            E_INVALID_PARAMS,
            "mount %s holds %s: acknowledge %s by name to mount "
            "it" % (source, ", ".join(missing), "them" if len(missing) > 1 else "it"),
        )
    return real


def checked_synced_copy(root: str, spec: LaunchSpec, index: int) -> str:
    """The host copy of a synced laptop directory: its path is derived here from the session id
    and the mount's index (never read from the wire); it must be a real directory (no symlink
    anywhere below the root) holding no sensitive name the operator did not acknowledge."""
    copy = layout.synced_dir(root, spec.session_id, index)
    target = spec.mounts[index].target
    real = os.path.realpath(copy)
    if real != layout.synced_dir(os.path.realpath(root), spec.session_id, index):
        raise RemoteError(E_INVALID_PARAMS, "mount %s: its synced copy %s is reached through a "
                          "symlink (it is %s)" % (target, copy, real))  # fmt: skip
    if os.path.islink(copy) or not os.path.isdir(copy):
        raise RemoteError(E_NOT_FOUND, "mount %s: the laptop directory was not synced to %s"
                          % (target, copy))  # fmt: skip
    missing = [name for name in held_sensitive(copy) if name not in spec.acknowledged]
    if missing:
        raise RemoteError(
            E_INVALID_PARAMS,
            "mount %s: the synced copy holds %s: acknowledge %s by name to mount it"
            % (target, ", ".join(missing), "them" if len(missing) > 1 else "it"),
        )
    return copy


def _session_volume(client: Any, spec: LaunchSpec, index: int, image: str, uid: int,
                    gid: int, root: Optional[str] = None) -> str:  # fmt: skip
    """An engine volume of the session's own (removed by rm), owned by the agent's uid: a
    one-shot container of the session's image, with CHOWN alone, gives it to that uid."""
    name = "jk-%s-v%d" % (spec.session_id, index)
    labels = {LABEL_MANAGED: "true", LABEL_SESSION: spec.session_id}
    if root is not None:  # whose it is, for gc (agent_host/ownership.py)
        from agent_host.ownership import root_labels

        labels.update(root_labels(root))
    client.volumes.create(name=name, labels=labels)
    if root is not None:
        audit.record(root, spec.session_id, "volume.create", name, "docker volume rm %s" % name)
    client.containers.run(
        image, ["chown", "%d:%d" % (uid, gid), "/v"], user="0", remove=True,
        volumes={name: {"bind": "/v", "mode": "rw"}}, network_mode="none",
        cap_drop=["ALL"], cap_add=["CHOWN"], security_opt=list(SECURITY_OPT),
        read_only=True, labels=labels, entrypoint=[],
    )  # fmt: skip
    return name


def _remove_volumes(client: Any, session_id: str, root: Optional[str] = None) -> None:
    label = "%s=%s" % (LABEL_SESSION, session_id)
    for volume in client.volumes.list(filters={"label": label}):
        volume.remove(force=True)
        if root is not None:
            audit.record(root, session_id, "volume.remove", volume.name, "")


def _secret_volume(secret_dir: Optional[str]) -> Dict[str, Dict[str, str]]:
    return {} if secret_dir is None else {secret_dir: {"bind": SECRETS_MOUNT, "mode": "ro"}}


def secret_dir(session_id: str) -> str:
    """A session's secrets on the host: in memory (/dev/shm), never on a disk."""
    return os.path.join("/dev/shm", "jackin-secrets-" + check_session_id(session_id))


def write_secret_files(session_id: str, uid: int, gid: int, values: Dict[str, str]) -> str:
    """One file per secret, 0400, owned by the agent's uid, in a directory only it can list."""
    path = secret_dir(session_id)
    if not os.path.isdir("/dev/shm"):
        raise RemoteError(E_FAILED, "this host has no /dev/shm: secrets are kept only in memory")
    remove_secret_files(session_id)
    os.mkdir(path, 0o700)
    for name, value in values.items():
        fd = os.open(os.path.join(path, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(value)
        if os.getuid() == 0:
            os.chown(os.path.join(path, name), uid, gid)
    if os.getuid() == 0:
        os.chown(path, uid, gid)
    os.chmod(path, 0o500)
    return path


def remove_secret_files(session_id: str, root: Optional[str] = None) -> None:
    """The session's secrets directory and its files, never following a link: /dev/shm is
    world-writable, so its entry may be anyone's (a symlink swapped in is refused, not chmodded
    or emptied)."""
    path = secret_dir(session_id)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return  # none, or not a plain directory: nothing of ours to remove
    try:
        owner = os.fstat(fd).st_uid
        if os.getuid() not in (0, owner):  # another account's: left alone
            return
        os.fchmod(fd, 0o700)
        for name in os.listdir(fd):
            with contextlib.suppress(OSError):  # only files are ours; anything else stays
                os.unlink(name, dir_fd=fd)
    finally:
        os.close(fd)
    try:
        os.rmdir(path)
    except OSError:
        return
    if root is not None:
        audit.record(root, session_id, "secrets.remove", path, "")


def secret_values(session_id: str) -> List[Tuple[str, str]]:
    """(name, value) of a session's secrets, longest first: what `logs` redacts."""
    path = secret_dir(session_id)
    found = []
    try:
        names = os.listdir(path)
    except OSError:
        return []
    for name in names:
        try:
            with open(os.path.join(path, name), encoding="utf-8", errors="replace") as handle:
                found.append((name, handle.read()))
        except OSError:
            continue
    return sorted((item for item in found if item[1]), key=lambda item: -len(item[1]))


def redact(text: str, secrets: List[Tuple[str, str]]) -> str:
    for name, value in secrets:
        text = text.replace(value, "<redacted:%s>" % name)
    return text


def _network_kwargs(spec: LaunchSpec) -> Dict[str, str]:
    if spec.network is Network.ALLOWLIST:
        return {"network": egress_network(spec.session_id)}
    if spec.network is Network.NONE and spec.private_docker is not None:
        return {"network": private_docker.network_name(spec.session_id)}  # its daemon only
    return {"network_mode": "none" if spec.network is Network.NONE else "bridge"}


def _container_states(client: Any) -> Dict[str, Dict[str, Any]]:
    states = {}
    for container in client.containers.list(
        all=True, filters={"label": MANAGED_FILTER}, ignore_removed=True
    ):
        session_id = container.labels.get(LABEL_SESSION)
        if not session_id:
            continue
        info = container.attrs.get("State") or {}
        states[session_id] = {
            "container": container,
            "status": info.get("Status"),
            "exit_code": info.get("ExitCode"),
            "started_at": info.get("StartedAt"),
            "finished_at": info.get("FinishedAt"),
            "oom": info.get("OOMKilled"),
        }
    return states


def derive_state(
    record: Dict[str, Any], container: Optional[Dict[str, Any]], now: float, owner_alive: bool
) -> Tuple[str, Optional[int]]:
    """The lifecycle state a record has given what docker says. Pure: tested without docker."""
    state = record["state"]
    if state in ("failed_setup", "purged"):
        return state, record.get("exit_code")
    if container is None:
        if state == "starting":
            if owner_alive and now - record["created_at"] < SETUP_GRACE:
                return "starting", None
            return "failed_setup", None
        if state in ("stopped", "exited", "crashed"):
            return state, record.get("exit_code")
        return "crashed", record.get("exit_code")  # running but its container vanished
    status = container["status"]
    if status in ("created", "running", "restarting", "paused"):
        return ("running" if status != "created" else "starting"), None
    code = container["exit_code"]
    if state == "stopped":
        return "stopped", code
    # The kernel killed a process of the sandbox: its work may be cut short, whatever the code.
    return ("exited" if code == 0 and not container.get("oom") else "crashed"), code


def end_reason(
    state: str, container: Optional[Dict[str, Any]], engine_started: Optional[float] = None
) -> Optional[str]:
    """Why a session ended, beyond its exit code; None when the code says it all. Pure.
    `engine_started`: when the host's dockerd started (epoch seconds), if known. A sandbox
    started by an earlier run of the engine whose end this run recorded (at its restore) ended
    with the engine: the host stopped or rebooted while it ran."""
    if state != "crashed" or container is None:
        return None
    if container.get("oom"):
        return EndReason.OOM.value
    started = docker_time(container.get("started_at"))
    finished = docker_time(container.get("finished_at"))
    known = engine_started is not None and started is not None and finished is not None
    if known and started < engine_started <= finished:  # type: ignore[operator]
        return EndReason.ENGINE_RESTART.value
    return None


def docker_time(value: object) -> Optional[float]:
    """Epoch seconds of an engine timestamp (`2026-11-29T10:45:53.123456789Z`); None for the
    zero time or anything else."""
    if not isinstance(value, str) or value.startswith("0001-"):
        return None
    match = re.match(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)\Z", value)
    if not match:
        return None
    stamp, fraction, zone = match.groups()
    import calendar

    seconds = calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%S"))
    if zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        seconds -= sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    return seconds + (float("0." + fraction) if fraction else 0.0)


def engine_started_at(pid_file: str = "/var/run/docker.pid") -> Optional[float]:
    """When the host's dockerd started (epoch seconds), from its pid file and /proc; None where
    that cannot be read (another pid namespace, a rootless engine)."""
    try:
        with open(pid_file) as handle:
            pid = int(handle.read().strip())
        with open("/proc/%d/stat" % pid) as handle:
            ticks = int(handle.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat") as handle:
            boot = next(int(line.split()[1]) for line in handle if line.startswith("btime "))
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def agent_status(state: str, mode: str, observed: Optional[str] = None) -> str:
    """What the agent is doing: while it runs, what its own output last said (its runtime's
    events, a status tag), else what its mode suggests; once it ended, done or unknown."""
    if state == "running":
        if observed in ("working", "blocked", "done"):
            return observed
        return "working" if mode == "task" else "idle"
    if state == "exited":
        return "done"
    return "unknown"


def _observe(record: Dict[str, Any], container: Any, state: str) -> Optional[Dict[str, Any]]:
    """The session's new `scan` (agent_host/observe.py), or None when there is nothing to read
    or it cannot be read now (never fails the listing)."""
    scan = record.get("scan") if isinstance(record.get("scan"), dict) else None
    if (scan or {}).get("final"):
        return None
    secrets = secret_values(record["id"])

    def clean(text: str) -> str:
        return redact(text, secrets)

    try:
        if record["mode"] == "interactive":
            if state != "running":
                return None
            return observe.read_screen(_status_screen(container), scan, clean)

        def logs(since: Optional[int]) -> str:
            data = container.logs(stdout=True, stderr=True, timestamps=True, since=since)
            return str(data.decode(errors="replace"))

        fresh = observe.read_task_log(logs, record["runtime"], scan, clean, state != "running")
    except Exception:
        return None
    fresh["final"] = state != "running"  # a container that ended writes no more
    return fresh


OBSERVE_DEADLINE = 10.0  # seconds for all sessions' reads: a late one is skipped this time


def _attach_observations(
    store: Store, jobs: List[Tuple[Dict[str, Any], Any, str]], out: List[Dict[str, Any]]
) -> None:
    """Read each job's output (in parallel, within OBSERVE_DEADLINE: a session whose read hangs,
    e.g. its tmux stopped by the agent, is skipped, never the listing), record what changed,
    and show it in `out`. A record that cannot be written now is shown anyway."""
    import sqlite3
    from concurrent.futures import ThreadPoolExecutor, wait

    pool = ThreadPoolExecutor(max_workers=min(8, len(jobs)))
    futures = [pool.submit(_observe, *job) for job in jobs]
    wait(futures, timeout=OBSERVE_DEADLINE)
    pool.shutdown(wait=False)
    entries = {entry["id"]: entry for entry in out}
    for (record, _, state), future in zip(jobs, futures):  # noqa: B905 - python 3.9
        scan = future.result() if future.done() and not future.exception() else None
        if scan is None or scan == record.get("scan"):
            continue
        seen = observe.observed_fields(scan)
        status = agent_status(state, record["mode"], seen["observed_status"])
        fields = {"scan": scan, "links": seen["links"], "usage": seen["usage"],
                  "agent_status": status}  # fmt: skip
        if not store.read_only:
            with contextlib.suppress(sqlite3.Error, OSError):
                store.update(record["id"], **fields)
        entry = entries.get(record["id"])
        if entry is not None:
            entry.update(links=fields["links"], usage=fields["usage"],
                         agent_status=fields["agent_status"])  # fmt: skip


def _stats(container: Any) -> Dict[str, Any]:
    """One container's use from `docker stats` (about 2 s: the engine samples twice, 1 s apart):
    for the sessions whose cgroup resources.sample could not read."""
    try:
        stats = container.stats(stream=False)
    except Exception:
        return {}
    cpu = stats.get("cpu_stats") or {}
    pre = stats.get("precpu_stats") or {}
    cpu_delta = (cpu.get("cpu_usage") or {}).get("total_usage", 0) - (
        pre.get("cpu_usage") or {}
    ).get("total_usage", 0)
    system_delta = cpu.get("system_cpu_usage", 0) - pre.get("system_cpu_usage", 0)
    online = cpu.get("online_cpus") or 1
    percent = (cpu_delta / system_delta) * online * 100.0 if system_delta > 0 else 0.0
    memory_stats = stats.get("memory_stats") or {}
    memory = memory_stats.get("usage")
    detail = memory_stats.get("stats") or {}
    cache = detail.get("total_inactive_file", detail.get("inactive_file"))  # v1, v2
    if isinstance(memory, int) and isinstance(cache, int) and 0 <= cache < memory:
        memory -= cache  # what docker stats shows, and what resources.py reads
    limit = ((container.attrs or {}).get("HostConfig") or {}).get("Memory")  # 0: no limit
    pids = (stats.get("pids_stats") or {}).get("current")
    return {
        "cpu_percent": round(percent, 1),
        "memory_bytes": memory,
        "memory_limit_bytes": limit if isinstance(limit, int) and limit > 0 else None,
        "pids": pids if isinstance(pids, int) else None,
    }


def list_sessions(ctx: Context, params: Message) -> Dict[str, Any]:
    testhooks.pause_host("host-list", ctx.root)  # tests: a host that does not answer
    store = Store(ctx.root)
    client = None
    try:
        client = _docker()
        containers = _container_states(client)
        engine_started = engine_started_at()
        now = time.time()
        records = store.all(include_purged=bool(params.get("all")))
        known = set()
        out = []
        want_stats = bool(params.get("stats", True))
        running = []
        watched: List[Tuple[Dict[str, Any], Any, str]] = []
        for record in records:
            known.add(record["id"])
            container = containers.get(record["id"])
            state, code = derive_state(record, container, now, pid_alive(record["owner_pid"]))
            kept = record["reason"] if state in ("crashed", "stopped") else None  # oom, idle
            reason = end_reason(state, container, engine_started) or kept  # container may be gone
            if (state, code, reason) != (record["state"], record["exit_code"], record["reason"]):
                fields: Dict[str, Any] = {"state": state, "exit_code": code, "reason": reason}
                if state in ("exited", "crashed", "failed_setup") and not record["finished_at"]:
                    fields["finished_at"] = now
                observed = observe.kept_status(record.get("scan"))
                fields["agent_status"] = agent_status(state, record["mode"], observed)
                if not store.read_only:  # a full disk: shown now, recorded once there is room
                    store.update(record["id"], **fields)
                record.update(fields)
            if state not in ACTIVE_STATES and (record.get("spec") or {}).get("network") == (
                Network.ALLOWLIST.value
            ):  # its sandbox is done: its proxy goes too (start brings it back)
                from agent_host import egressd

                egressd.stop_proxy(ctx.root, record["id"])
            if state not in ACTIVE_STATES and (record.get("spec") or {}).get("private_docker"):
                private_docker.stop(client, record["id"], root=ctx.root)  # likewise its daemon
            if state == "running" and container is not None and want_stats:
                running.append((record, container["container"]))
            if container is not None and want_stats and state in ("running", "exited", "crashed",
                                                                  "stopped"):  # fmt: skip
                watched.append((record, container["container"], state))
            record["snapshots"] = _snapshot_count(ctx.root, record["id"])
            out.append(public_record(record))
        if running:
            _attach_stats(running, out, getattr(ctx, "resident", None))
        if watched:
            _attach_observations(store, watched, out)
        orphans = [
            {"session_id": sid, "container": info["container"].name, "status": info["status"]}
            for sid, info in containers.items()
            if sid not in known
        ]
        if any(r["state"] in ACTIVE_STATES and (r.get("spec") or {}).get("idle_timeout")
               for r in records):  # fmt: skip
            _ensure_janitor(
                ctx.root, getattr(ctx, "resident", None)
            )  # it stops idle sessions with no controller connected
        return {"sessions": out, "orphans": orphans, "running": store.running_count()}
    finally:
        store.close()
        if client is not None:  # a resident agent lists every 2 s per watcher: never leak one
            client.close()


def _ensure_janitor(root: str, resident: Any = None) -> None:
    """This root's idle janitor (agent_host/janitor.py), started if missing: a thread of the
    resident agent, or a process of its own beside an agent per command. Never fails the
    request: without it, idle sessions are stopped at the next `host.janitor` or `ls`."""
    from agent_host import janitor

    with contextlib.suppress(OSError, RuntimeError):  # a full disk, no thread left: later
        if resident is not None:
            resident.ensure_janitor()
        else:
            janitor.ensure_running(root)


def _snapshot_count(root: str, session_id: str) -> int:
    from agent_host import snapshots

    return snapshots.count(root, session_id)


FRESH_SAMPLE = 5.0  # seconds: a resident agent's sample younger than this is `ls`'s numbers


def _attach_stats(
    running: List[Tuple[Dict[str, Any], Any]], out: List[Dict[str, Any]], resident: Any = None
) -> None:
    """Every running session's use: the resident agent's own sample when it is fresh (no wait
    at all), else from their cgroups, all at once (resources.sample: one short wait); docker
    stats only for those it could not read."""
    from concurrent.futures import ThreadPoolExecutor

    from agent_host import resources

    sampler = getattr(resident, "sampler", None)
    if sampler is not None:
        fresh = {}
        for record, _ in running:
            latest = sampler.latest(record["id"], FRESH_SAMPLE)
            if latest is not None:
                fresh[record["id"]] = {key: latest.get(key) for key in resources.STAT_KEYS}
        running = [(record, container) for record, container in running
                   if record["id"] not in fresh]  # fmt: skip
        for entry in out:
            entry.update(fresh.get(entry["id"], {}))
        if not running:
            return
    targets = [
        resources.Target(record["id"], ((container.attrs or {}).get("State") or {}).get("Pid"),
                         container.id)
        for record, container in running
    ]  # fmt: skip
    sampled = resources.sample(targets)
    by_id = dict(sampled.stats)
    unread = set(sampled.unread)
    rest = [(record, container) for record, container in running if record["id"] in unread]
    if rest:
        with ThreadPoolExecutor(max_workers=min(8, len(rest))) as pool:
            results = list(pool.map(lambda pair: _stats(pair[1]), rest))
        ids = [record["id"] for record, _ in rest]
        by_id.update(zip(ids, results))  # noqa: B905 - python 3.9 has no zip(strict=)
    for entry in out:
        entry.update(by_id.get(entry["id"], {}))


def public_record(record: Dict[str, Any]) -> Dict[str, Any]:
    """A host record as it crosses the wire: a SessionRecord, nothing of the stored spec but
    what `ls` shows."""
    spec = record.get("spec") or {}
    known = {item.name for item in fields(SessionRecord)}
    entry = {key: value for key, value in record.items() if key in known}
    entry["task"] = spec.get("task")
    entry["network"] = spec.get("network")
    entry["links"] = observe.merge_links(None, entry.get("links")) or None  # kept: re-checked
    entry["usage"] = observe.observed_fields({"observed": {"usage": entry.get("usage")}})["usage"]
    return SessionRecord.from_wire(entry).to_wire()


def _existing(record: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    if record is None:
        raise RemoteError(E_NOT_FOUND, "no such session")
    return record


def _get(store: Store, params: Message) -> Dict[str, Any]:
    session_id = check_session_id(params.get("id"), "id")
    record = store.get(session_id)
    if record is None:
        raise RemoteError(E_NOT_FOUND, "no session %s on this host" % session_id)
    return record


# -- logs ------------------------------------------------------------------------------------
def logs(ctx: Context, params: Message) -> Dict[str, Any]:
    store = Store(ctx.root)
    try:
        record = _get(store, params)
    finally:
        store.close()
    tail = params.get("tail")
    tail = int(tail) if isinstance(tail, int) and tail >= 0 else "all"
    client = _docker()
    try:
        container = client.containers.get(record["container"])
    except _not_found():
        raise RemoteError(E_NOT_FOUND, "the container of %s is gone" % record["id"]) from None
    # The session's secrets never reach the controller, whatever the agent printed.
    secrets = secret_values(record["id"])
    if record["mode"] == "interactive":
        if not params.get("follow"):
            return {"text": redact(_tmux_capture(container), secrets)}
        ctx.streaming()
        return _follow_pane(ctx, container, secrets)
    if not params.get("follow"):
        data = container.logs(stdout=True, stderr=True, tail=tail)
        return {"text": redact(data.decode(errors="replace"), secrets)}
    ctx.streaming()
    # One decoder for the stream: a character split across two chunks stays one character; and
    # the last characters are held back until the next chunk, so no secret is split across two.
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    hold = max((len(value) for _, value in secrets), default=1) - 1
    pending = ""
    stream = container.logs(stdout=True, stderr=True, stream=True, follow=True, tail=tail)
    if hasattr(stream, "close"):  # a resident agent must not keep the stream once nobody reads
        ctx.on_cancel(stream.close)
    for chunk in stream:
        pending = redact(pending + decoder.decode(chunk), secrets)
        cut = max(len(pending) - hold, 0)
        if cut:
            ctx.notify("session.log", {"data": pending[:cut]})
            pending = pending[cut:]
    if pending:
        ctx.notify("session.log", {"data": redact(pending, secrets)})
    return {"text": ""}


# The screen `ls` reads for a status tag: the last lines only. Then the status file its hooks
# write (wire.STATUS_FILE), if any, after observe.STATUS_FILE_MARK: its tag outranks a tag on
# the screen. The sandbox owns these processes (it may stop them, or swap the file for a FIFO):
# the host bounds the read itself (sandbox_exec), in time and size.
_STATUS_SCREEN = (
    'tmux capture-pane -p -t "$1" -S -200; '
    'if [ -f "$2" ]; then printf "%s" "$4"; head -c "$3" "$2"; echo; fi'
)
SCREEN_SECONDS = 3.0


def _status_screen(container: Any) -> str:
    from agent_host.sandbox_exec import bounded_exec

    _, output = bounded_exec(container, ["sh", "-c", _STATUS_SCREEN, "sh", TMUX_SESSION,
                                         STATUS_FILE, str(STATUS_FILE_BYTES),
                                         observe.STATUS_FILE_MARK], SCREEN_SECONDS)  # fmt: skip
    return output.decode(errors="replace")


def _tmux_capture(container: Any) -> str:
    from agent_host.sandbox_exec import bounded_exec

    argv = ["tmux", "capture-pane", "-p", "-t", TMUX_SESSION, "-S", "-2000"]
    return bounded_exec(container, argv, SCREEN_SECONDS)[1].decode(errors="replace")


def _follow_pane(
    ctx: Context, container: Any, secrets: Optional[List[Tuple[str, str]]] = None
) -> Dict[str, Any]:
    """`logs -f` of an interactive session: the tmux pane polled, each line printed once it is
    settled (above the cursor), until the sandbox stops or the controller goes away."""
    argv = ["tmux", "display-message", "-p", "-t", TMUX_SESSION, "#{history_size} #{cursor_y}",
            ";", "capture-pane", "-p", "-t", TMUX_SESSION, "-S", "-"]  # fmt: skip
    from docker.errors import DockerException

    from agent_host.sandbox_exec import bounded_exec

    tail: List[str] = []
    end = 0
    while not ctx.cancelled:
        try:
            code, output = bounded_exec(container, argv, SCREEN_SECONDS)
        except DockerException:
            break  # the sandbox stopped (or is gone) between two looks
        if code is not None and code != 0:
            break  # tmux (the session's main process) is gone
        head, _, screen = output.decode(errors="replace").partition("\n")
        try:
            history, cursor = (int(part) for part in head.split())
        except ValueError:
            break
        lines, end = settled_news(screen.split("\n")[: history + cursor], tail, end)
        if lines:
            text = "".join(item + "\n" for item in lines)
            ctx.notify("session.log", {"data": redact(text, secrets or [])})
            tail = (tail + lines)[-PANE_TAIL:]
        try:
            container.reload()
        except DockerException:
            break
        if container.status != "running":
            break
        time.sleep(PANE_POLL)
    return {"text": ""}


def settled_news(settled: List[str], tail: List[str], end: int) -> Tuple[List[str], int]:
    """The lines of `settled` not printed yet, and where the printed ones now end. `tail` is
    what was printed last and `end` where it ended in the previous capture. Pure.

    The history only grows until its limit, then drops lines at the top: the printed tail is
    looked for at its old place first, then above it. Not found (the screen was cleared or
    redrawn), every settled line is new."""
    size = len(tail)
    if size:
        for stop in range(min(end, len(settled)), size - 1, -1):
            if settled[stop - size : stop] == tail:
                return settled[stop:], len(settled)
    return settled, len(settled)


# -- stop / rm -------------------------------------------------------------------------------
def stop(ctx: Context, params: Message) -> Dict[str, Any]:
    store = Store(ctx.root)
    try:
        record = _get(store, params)
        client = _docker()
        try:
            container = client.containers.get(record["container"])
            running = container.status == "running"
            container.stop(timeout=STOP_TIMEOUT)
            container.reload()
            code = (container.attrs.get("State") or {}).get("ExitCode")
            if running:
                audit.record(ctx.root, record["id"], "container.stop", record["container"],
                             "jackin-remote start %s" % record["id"])  # fmt: skip
        except _not_found():
            code = record.get("exit_code")
        _stop_egress(ctx.root, client, record["id"], network=False)
        private_docker.stop(client, record["id"], root=ctx.root)
        if record["state"] in ("starting", "running"):
            store.update(
                record["id"],
                state="stopped",
                exit_code=code,
                finished_at=time.time(),
                agent_status="unknown",
            )
        return public_record(_existing(store.get(record["id"])))
    finally:
        store.close()


def start(ctx: Context, params: Message) -> Dict[str, Any]:
    """Start a stopped, exited or crashed session again: its own container, as it was made (the
    same spec, checkout and sandbox user); the record says `running` again."""
    from docker.errors import DockerException

    store = Store(ctx.root)
    try:
        record = _get(store, params)
        hint = {"hint": "see `jackin-remote ls`; launch a new session instead"}
        if record["state"] in ("starting", "failed_setup", "purged"):
            raise RemoteError(
                E_CONFLICT, "session %s is %s: only a stopped, exited or crashed session can be "
                "started again" % (record["id"], record["state"]), hint,
            )  # fmt: skip
        client = _docker()
        try:
            container = client.containers.get(record["container"])
        except _not_found():
            raise RemoteError(
                E_NOT_FOUND, "the container of %s is gone: it cannot start again" % record["id"],
                hint,
            ) from None  # fmt: skip
        if container.status in ("running", "restarting", "paused"):
            raise RemoteError(E_CONFLICT, "session %s is already running" % record["id"])
        spec = LaunchSpec.from_wire(record["spec"])
        if spec.secret_files and not os.path.isdir(secret_dir(spec.session_id)):
            # Gone with a host reboot (they live in memory): the agent starts without them.
            os.mkdir(secret_dir(spec.session_id), 0o500)
        try:
            with snapshots.held_for_start(ctx.root, spec.session_id):  # not mid-restore
                proxy = _start_egress(ctx.root, client, spec)
                if spec.private_docker is not None:
                    uid = record.get("uid") or 0
                    private_docker.start(client, spec, uid, uid, proxy, root=ctx.root)
                container.start()
            audit.record(ctx.root, record["id"], "container.start", record["container"],
                         "jackin-remote stop %s" % record["id"])  # fmt: skip
        except (DockerException, RemoteError) as exc:
            private_docker.stop(client, spec.session_id, root=ctx.root)
            _stop_egress(ctx.root, client, spec.session_id, network=False)
            if isinstance(exc, RemoteError):
                raise
            raise RemoteError(
                E_FAILED, "docker could not start %s: %s" % (record["id"], exc)
            ) from None
        store.update(
            record["id"],
            state=SessionState.RUNNING.value,
            exit_code=None,
            reason=None,
            finished_at=None,
            started_at=time.time(),
            agent_status=agent_status("running", record["mode"]),
            scan=observe.restarted(record.get("scan")),  # its output is read again, from there
        )
        if spec.idle_timeout is not None:
            _ensure_janitor(ctx.root, getattr(ctx, "resident", None))
        return public_record(_existing(store.get(record["id"])))
    finally:
        store.close()


def work_status(ctx: Context, record: Dict[str, Any]) -> Dict[str, Any]:
    """Whether the session holds work that was never pulled (then rm refuses).

    Read through review.snapshot, which never runs git inside the agent's own .git (the agent
    controls that repository's config and hooks).
    """
    from agent_host import review

    if not os.path.isdir(layout.work_dir(ctx.root, record["id"])):
        return {"unpulled": False, "commit": None}
    snap = review.snapshot(ctx, {"id": record["id"]})
    launch = record.get("launch_commit") or (record.get("spec") or {}).get("launch_commit")
    untouched = record["isolation"] == "clone" and snap["commit"] == launch
    return {"unpulled": not (snap["pulled"] or untouched), "commit": snap["commit"]}


def remove(ctx: Context, params: Message) -> Dict[str, Any]:
    """Remove a session's sandbox and checkout. Its snapshots stay (a removed session's record
    with them), unless `purge`: then they and the record go too.

    Without force, work that was never pulled (or that cannot be inspected: the agent owns its
    checkout and may have wrecked it) makes rm refuse. With force, the sandbox is stopped and
    removed *first*, so nothing the agent did to its checkout can keep it running, and what
    could not be inspected is reported, not fatal.
    """
    store = Store(ctx.root)
    try:
        record = _get(store, params)
        force = bool(params.get("force"))
        client = _docker() if force else None
        if client is not None:
            _remove_containers(client, record, ctx.root)
        try:
            status = work_status(ctx, record)
            uninspectable = None
        except RemoteError as exc:
            status = {"unpulled": True, "commit": None}
            uninspectable = exc.message
        if not force and (status["unpulled"] or uninspectable):
            problem = (
                "its work could not be inspected (%s)" % uninspectable
                if uninspectable
                else "it has work that was not pulled"
            )
            raise RemoteError(
                E_CONFLICT,
                "session %s: %s" % (record["id"], problem),
                {
                    "hint": "run `jackin-remote pull %s` first, or rm --force to discard it"
                    % record["id"]
                },
            )
        if client is None:
            client = _docker()
            _remove_containers(client, record, ctx.root)
        _stop_egress(ctx.root, client, record["id"])
        private_docker.remove(client, record["id"], root=ctx.root)
        _remove_volumes(client, record["id"], root=ctx.root)
        remove_secret_files(record["id"], root=ctx.root)
        store.forget_egress(record["id"])
        session_path = layout.session_dir(ctx.root, record["id"])
        if os.path.isdir(session_path):
            _rmtree(session_path)
            audit.record(ctx.root, record["id"], "checkout.remove", session_path, "")
        kept, purged = _snapshot_count(ctx.root, record["id"]), 0
        if params.get("purge"):
            from agent_host import snapshots

            purged, kept = snapshots.purge(ctx.root, record["id"]), 0
        store.update(
            record["id"],
            state=SessionState.PURGED.value,
            finished_at=record["finished_at"] or time.time(),
        )
        audit.record(ctx.root, record["id"], "session.purge", "%s in %s" % (record["id"],
                     layout.state_db(ctx.root)), "")  # fmt: skip
        if params.get("purge"):
            store.delete(record["id"])
        return {
            "id": record["id"],
            "removed": True,
            "discarded_unpulled": bool(status["unpulled"]),
            "discarded_commit": status["commit"] if status["unpulled"] else None,
            "not_inspected": uninspectable,
            "snapshots_kept": kept,
            "snapshots_removed": purged,
        }
    finally:
        store.close()


def _remove_containers(client: Any, record: Dict[str, Any], root: Optional[str] = None) -> None:
    """Every container of the session, found by its label (and by name, for old records)."""
    label = "%s=%s" % (LABEL_SESSION, record["id"])
    removed = []
    for container in client.containers.list(
        all=True, filters={"label": label}, ignore_removed=True
    ):
        with contextlib.suppress(_not_found()):  # removed meanwhile (a concurrent rm)
            container.remove(force=True)
            removed.append(container.name)
    try:
        client.containers.get(record["container"]).remove(force=True)
        removed.append(record["container"])
    except _not_found():
        pass
    for name in removed:
        if root is not None:
            audit.record(root, record["id"], "container.remove", name, "")


def _rmtree(path: str) -> None:
    def retry_writable(func: Any, target: str, _exc: Any) -> None:
        os.chmod(os.path.dirname(target), 0o700)
        func(target)

    shutil.rmtree(path, onerror=retry_writable)


def attach_command(root: str, session_id: str) -> List[str]:
    """docker argv to attach the caller's terminal to a session's tmux (used by `attach`)."""
    store = Store(root)
    try:
        record = store.get(check_session_id(session_id, "session"))
    finally:
        store.close()
    if record is None:
        raise RemoteError(E_NOT_FOUND, "no session %s on this host" % session_id)
    if record["mode"] != "interactive":
        raise RemoteError(
            E_CONFLICT, "session %s runs headless on a task: use logs -f" % session_id
        )
    return ["docker", "exec", "-it", record["container"], "tmux", "attach", "-t", TMUX_SESSION]


def address(ctx: Context, params: Message) -> Dict[str, Any]:
    """Where the host reaches a running sandbox (for `ports`): its address on its own network,
    the bridge (open) or its internal one (allowlist). `none` has no address: nothing to reach."""
    store = Store(ctx.root)
    try:
        record = _get(store, params)
    finally:
        store.close()
    spec = LaunchSpec.from_wire(record["spec"])
    if spec.network is Network.NONE:
        raise RemoteError(E_CONFLICT, "session %s has network none: no port of it can be "
                          "reached" % record["id"], {"hint": "launch with --network allowlist "
                          "or open to publish a port"})  # fmt: skip
    try:
        container = _docker().containers.get(record["container"])
    except _not_found():
        raise RemoteError(E_NOT_FOUND, "the container of %s is gone" % record["id"]) from None
    if container.status != "running":
        raise RemoteError(E_CONFLICT, "session %s is not running" % record["id"])
    wanted = egress_network(spec.session_id) if spec.network is Network.ALLOWLIST else "bridge"
    networks = (container.attrs.get("NetworkSettings") or {}).get("Networks") or {}
    ip = (networks.get(wanted) or {}).get("IPAddress")
    if not ip:
        raise RemoteError(E_FAILED, "session %s has no address on %s" % (record["id"], wanted))
    return {"address": ip, "network": wanted}


PUSH_EVERY = 2.0  # seconds between a watch's looks at the sessions (the sampler's pace)


def watch(ctx: Context, params: Message) -> Dict[str, Any]:
    """Push `session.list`'s answer to the caller whenever it changes, looking every PUSH_EVERY
    seconds, until the caller goes away. Only a resident agent watches: an agent of its own
    per command would be a process held open for one caller (the caller asks instead)."""
    if getattr(ctx, "resident", None) is None:
        raise RemoteError(E_FAILED, "only the resident host agent pushes session changes",
                          {"hint": "ask session.list instead"})  # fmt: skip
    ctx.streaming()
    wake = threading.Event()
    ctx.on_cancel(wake.set)
    last: Optional[Dict[str, Any]] = None
    while not ctx.cancelled:
        answer = list_sessions(ctx, {"all": bool(params.get("all"))})
        if answer != last:
            ctx.notify("session.list", answer)
            last = answer
        wake.wait(PUSH_EVERY)
    return {}


HANDLERS = {
    "session.address": address,
    "session.watch": watch,
    "session.create": create,
    "session.list": list_sessions,
    "session.logs": logs,
    "session.stop": stop,
    "session.start": start,
    "session.rm": remove,
}
