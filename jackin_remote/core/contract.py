"""The session contract: the fully resolved boundary of a session, computed before any effect.

`resolve_contract` is a pure function of the target host, the role, the workspace scan and the
launch options. `explain` renders its result; `launch` renders the same result and then hands its
`spec` to the host agent, which creates exactly that sandbox. Secret values never enter a
Contract: credentials appear by name, source and delivery only.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from agent_host import layout
from agent_host.egress import Rule
from agent_host.wire import (
    BUILD_NETWORKS,
    CONTAINER_WORKDIR,
    DEFAULT_BUILD_NETWORK,
    DEFAULT_SNAPSHOT_KEEP,
    ENV_NAME_RE,
    LOG_MAX_FILES,
    LOG_MAX_SIZE,
    PROXY_PORT,
    RESERVED_ENV,
    SANDBOX_UID_BASE,
    SECRETS_MOUNT,
    SHM_SIZE,
    TMUX_SESSION,
    Backend,
    Isolation,
    LaunchSpec,
    Limits,
    Mode,
    ModelApi,
    Mount,
    Network,
    SnapshotPolicy,
    SpecError,
    container_name,
    egress_network,
)
from jackin_remote.core import docker_access
from jackin_remote.core.egress_rules import WorkspaceRules, launch_rules
from jackin_remote.core.names import is_valid_name
from jackin_remote.core.placement import Slot
from jackin_remote.core.runtimes import RUNTIMES, Runtime
from jackin_remote.core.tiers import BackendOrigin, Needs, first_warning, routing
from jackin_remote.errors import UsageError

__all__ = ["container_name"]

_SECRET_ENV = re.compile(r"(_KEY|_TOKEN|_SECRET)$|PASSWORD|PASSWD|^API_?KEY$", re.IGNORECASE)


class ContractError(UsageError):
    pass


@dataclass(frozen=True)
class RoleRef:
    name: str
    content_hash: str
    image: str
    user: str
    runtimes: tuple[str, ...]
    source: str
    origin: str = "directory"  # "directory" or "git": where the role's Dockerfile came from


@dataclass(frozen=True)
class WorkspaceRef:
    path: str
    name: str
    is_git: bool
    head: str | None
    branch: str | None
    dirty: bool
    file_count: int
    total_bytes: int
    excluded_secrets: tuple[str, ...] = ()
    tracked_secrets: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()  # nested repos, submodules, special files: not synced


@dataclass(frozen=True)
class TargetRef:
    host: str
    transport: str
    address: str | None
    root: str
    backend: str
    memory: str | None
    cpus: float | None
    pids: int | None
    nofile: int | None = None
    egress: tuple[tuple[str, str, str], ...] = ()  # the inventory's rules: (action, pattern, at)
    host_mounts: tuple[str, ...] = ()  # host directories the inventory lets sessions mount
    private_docker_image: str = "docker:27-dind"  # --docker private: the sidecar's image
    private_docker_privilege: str = "privileged"  # privileged | capabilities
    idle_timeout: int | None = None  # seconds idle before the host stops the session; None: never
    snapshot_keep: int = DEFAULT_SNAPSHOT_KEEP  # snapshots: the newest N are kept
    snapshot_max_age: str | None = None  # and none older than this ("7d")
    snapshot_excludes: tuple[str, ...] = ()  # left out besides the defaults ("!name" keeps one)
    candidates: tuple[Slot, ...] = ()  # when a selector matched several hosts
    placed_by: str | None = None  # what the candidates' counts are (live, last-known)


@dataclass(frozen=True)
class LaunchRequest:
    runtime: str
    task: str | None = None
    network: str = "open"
    env: tuple[tuple[str, str], ...] = ()
    credential_source: str | None = None  # where the runtime's key comes from (var or source)
    credential_present: bool = False
    secrets: tuple[tuple[str, str], ...] = ()  # --secret: (name, its source, described)
    mounts: tuple[Mount, ...] = ()  # --mount host:... | LAPTOP_DIR:..., --tmpfs, --volume
    synced: tuple[tuple[str, int, int], ...] = ()  # per synced laptop dir: (realpath, files, bytes)
    acknowledged: tuple[str, ...] = ()  # --ack-sensitive
    isolation: str | None = None  # None: clone for git workspaces, copy otherwise
    name: str | None = None
    build_network: str = DEFAULT_BUILD_NETWORK  # the role build's network (--build-network)
    # The workspace's .jackin/config.toml [egress]: applied only when approved (None: no rules)
    workspace_rules: WorkspaceRules | None = None
    allow: tuple[str, ...] = ()  # --allow patterns (network allowlist)
    deny: tuple[str, ...] = ()  # --deny patterns
    model_api: str | None = None  # --model-api: the upstream the proxy sends model calls to
    docker: str = "none"  # --docker: none | private (a daemon of the session's own)
    network_why: str = "--network"  # who chose the network: the flag, or the default and why
    idle_timeout_flag: bool = False  # --idle-timeout was given (else: the inventory's idle_timeout)
    snapshot: bool = True  # snapshot the checkout before the agent starts (--no-snapshot)


@dataclass(frozen=True)
class Effect:
    """One host-side effect of the plan, in the order launch applies them."""

    action: str
    target: str
    when: str = "always"


@dataclass(frozen=True)
class Contract:
    schema: str
    identity: dict[str, Any]
    routing: dict[str, Any]
    filesystem: dict[str, Any]
    credentials: list[dict[str, Any]]
    network: dict[str, Any]
    docker_access: dict[str, Any]
    service_ports: list[dict[str, Any]]
    limits: dict[str, Any]
    persistence: dict[str, Any]
    plan: list[Effect]
    recovery: dict[str, Any]
    warnings: list[str]
    spec: LaunchSpec  # exactly what the host agent creates
    build: dict[str, Any] = field(default_factory=dict)  # how the role image is built

    SECTIONS = (
        "identity",
        "routing",
        "filesystem",
        "credentials",
        "network",
        "docker_access",
        "service_ports",
        "limits",
        "persistence",
        "plan",
        "recovery",
        "warnings",
    )

    def to_dict(self) -> dict[str, Any]:
        data = {name: getattr(self, name) for name in self.SECTIONS}
        data["plan"] = [asdict(effect) for effect in self.plan]
        data["build"] = self.build
        data["spec"] = self.spec.to_wire()
        return data


# -- validation ------------------------------------------------------------------------------
def check_env(pairs: tuple[tuple[str, str], ...]) -> None:
    for name, value in pairs:
        if not ENV_NAME_RE.match(name):
            raise ContractError(
                f"--env {name}: not a valid environment variable name",
                hint="use letters, digits and '_', not starting with a digit",
            )
        if _SECRET_ENV.search(name):
            raise ContractError(
                f"--env {name}: this looks like a secret; --env is for plain settings only",
                hint="credentials are delivered separately and redacted: the runtime's API key "
                "comes from a laptop env var (--key-from VAR); see docs/credentials.md",
            )
        if name in RESERVED_ENV:
            raise ContractError(f"--env {name}: set by jackin itself and cannot be overridden")
        if "\0" in value or "\n" in value:
            raise ContractError(f"--env {name}: the value may not contain NUL or newlines")


def parse_env(items: list[str]) -> tuple[tuple[str, str], ...]:
    pairs = []
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise ContractError(f"--env {item!r}: expected KEY=VALUE")
        pairs.append((name, value))
    pairs_t = tuple(pairs)
    check_env(pairs_t)
    return pairs_t


def check_session_name(name: str | None) -> None:
    if name is not None and not is_valid_name(name):
        raise ContractError(
            f"--name {name!r}: a session name may hold only lowercase letters, digits and '-'",
            hint="it reaches container names and shell commands on the host",
        )


def pick_runtime(name: str, role: RoleRef) -> Runtime:
    runtime = RUNTIMES.get(name)
    if runtime is None:
        raise ContractError(
            f"--runtime {name!r} is not a known runtime",
            hint="one of: " + ", ".join(sorted(RUNTIMES)),
        )
    if name not in role.runtimes:
        raise ContractError(
            f"role {role.name} does not support runtime {name!r}",
            hint="it supports: " + ", ".join(role.runtimes),
        )
    return runtime


def pick_isolation(requested: str | None, workspace: WorkspaceRef) -> Isolation:
    if requested is None:
        return Isolation.CLONE if workspace.is_git else Isolation.COPY
    if requested not in ("clone", "copy"):
        raise ContractError(f"--isolation {requested!r}: expected clone or copy")
    if requested == "clone" and not workspace.is_git:
        raise ContractError("--isolation clone needs a git workspace", hint="use --isolation copy")
    return Isolation(requested)


# -- resolution ------------------------------------------------------------------------------
def resolve_contract(
    session_id: str,
    target: TargetRef,
    role: RoleRef,
    workspace: WorkspaceRef,
    request: LaunchRequest,
) -> Contract:
    if request.network not in {n.value for n in Network}:
        choices = ", ".join(n.value for n in Network)
        raise ContractError(f"--network {request.network!r}: expected one of {choices}")
    check_env(request.env)
    check_session_name(request.name)
    build = _build(role, request.build_network)
    runtime = pick_runtime(request.runtime, role)
    isolation = pick_isolation(request.isolation, workspace)
    mode = "task" if request.task else "interactive"
    # Host paths come from the host's own layout module, so the plan names what the host makes.
    root = target.root.rstrip("/")
    work = layout.work_dir(root, session_id)
    snapshots = layout.snapshots_dir(root, session_id)
    mirror = layout.mirror_dir(root, workspace.name)

    env = {
        "GIT_AUTHOR_NAME": "jackin agent",
        "GIT_AUTHOR_EMAIL": f"agent+{session_id}@jackin.invalid",
        "GIT_COMMITTER_NAME": "jackin agent",
        "GIT_COMMITTER_EMAIL": f"agent+{session_id}@jackin.invalid",
        **dict(runtime.env),
        **dict(request.env),
    }
    model_api = _model_api(runtime, request)
    credentials = _credentials(runtime, request, model_api) + _secret_credentials(request)
    secret_env = [runtime.key_env for c in credentials
                  if c["available"] and runtime.key_env and c["delivery"] != "file"]  # fmt: skip
    command = _command(runtime, request.task)
    try:
        daemon = docker_access.private_docker(
            request.docker, target.private_docker_image, target.private_docker_privilege
        )
    except ValueError as exc:
        raise ContractError(str(exc), hint="--docker none | private") from None
    try:
        spec = LaunchSpec(
            session_id=session_id,
            workspace=workspace.name,
            role=role.name,
            role_hash=role.content_hash,
            user=role.user,
            runtime=runtime.name,
            mode=Mode(mode),
            command=tuple(command),
            isolation=isolation,
            network=Network(request.network),
            host=target.host,
            name=request.name,
            task=request.task,
            env=tuple(env.items()),
            secret_env=tuple(secret_env),
            base_commit=workspace.head,
            limits=Limits(target.memory, target.cpus, target.pids, target.nofile),
            egress=_egress(request, runtime.name, target.egress),
            backend=Backend(target.backend),
            model_api=model_api,
            secret_files=tuple(name for name, _ in request.secrets),
            mounts=_allowed_mounts(request.mounts, target),
            acknowledged=request.acknowledged,
            private_docker=daemon,
            idle_timeout=target.idle_timeout,
            snapshots=SnapshotPolicy(
                request.snapshot,
                target.snapshot_keep,
                target.snapshot_max_age,
                target.snapshot_excludes,
            ),
        )
    except SpecError as exc:
        raise ContractError(f"cannot launch: {exc.message}") from None
    # Everything below is derived from the spec, with the host's own functions.
    name, branch, home = spec.container, spec.branch, spec.home

    filesystem = {
        "workdir": CONTAINER_WORKDIR,
        "mounts": [
            {
                "laptop": workspace.path,
                "host": work,
                "container": CONTAINER_WORKDIR,
                "mode": "rw",
                "isolation": isolation.value,  # words, not `Isolation.CLONE`
                "note": (
                    f"own clone on branch {branch}; synced from the laptop via {mirror}"
                    if branch
                    else f"own copy of the workspace; synced via {mirror}"
                ),
            },
            {
                "laptop": None,
                "host": "docker-init (the engine's)",
                "container": "/usr/sbin/docker-init",
                "mode": "ro",
                "isolation": "shared",
                "note": "the engine's tiny init (PID 1: reaps zombies), bind-mounted read-only",
            },
            {
                "laptop": None,
                "host": None,
                "container": "/tmp",
                "mode": "tmpfs",
                "isolation": "ephemeral",
                "note": f"{_size(spec.tmpfs['/tmp'])}; discarded when the container stops",
            },
            {
                "laptop": None,
                "host": None,
                "container": home,
                "mode": "tmpfs",
                "isolation": "ephemeral",
                "note": f"agent home, {_size(spec.tmpfs[home])}; discarded when the container "
                "stops",
            },
            {
                "laptop": None,
                "host": None,
                "container": "/dev/shm",
                "mode": "tmpfs",
                "isolation": "ephemeral",
                "note": f"the engine's shared-memory tmpfs, size={SHM_SIZE}, writable (noexec); "
                "discarded when the container stops",
            },
            *(
                _mount_entry(mount, session_id, index, root, request.synced)
                for index, mount in enumerate(spec.mounts)
            ),
            *docker_access.mount_entry(spec),
            *(
                [
                    {
                        "laptop": None,
                        "host": f"/dev/shm/jackin-secrets-{session_id} (in memory)",
                        "container": SECRETS_MOUNT,
                        "mode": "ro",
                        "isolation": "secrets",
                        "note": "one file per --secret (0400, the agent's uid); removed by rm",
                    }
                ]
                if request.secrets
                else []
            ),
        ],
        "root_filesystem": "read-only (the role image)",
        "engine_files": ["/etc/hosts", "/etc/hostname", "/etc/resolv.conf"],
        "working_tree": _working_tree_note(workspace),
        "excluded_secrets": list(workspace.excluded_secrets),
        "sensitive_paths": list(workspace.tracked_secrets),
    }

    network = (
        _network_section(spec)
        if request.network == "allowlist"
        else (
            {
                "policy": "none",
                "enforcement": "host-enforced",
                "enforced_by": "the container engine on the host: the sandbox has only a loopback "
                "interface",
                "reaches": [],
            }
            if request.network == "none" and daemon is None
            else {
                "policy": "none",
                "enforcement": "host-enforced",
                "enforced_by": "the container engine on the host: the sandbox's only network "
                "is the one to its private docker daemon (internal, no host address)",
                "reaches": ["its private docker daemon"],
            }
            if request.network == "none"
            else {
                "policy": "open",
                "enforcement": "open",
                "enforced_by": "nothing: the sandbox uses the engine's default bridge",
                "reaches": ["the internet", "the host's network, incl. services on the bridge"],
            }
        )
    )
    network = {**network, "chosen": request.network_why}

    plan = [
        Effect(
            "start the host agent (deploy it if missing or outdated)",
            layout.agent_dir(root),
            "if missing",
        ),
        Effect(
            "sync the workspace (rsync; skipped when the manifest hash matches)",
            mirror,
            "if changed",
        ),
        Effect(
            f"upload the role and build image {role.image} (build network: {build['network']})",
            layout.role_dir(root, role.name, role.content_hash),
            "if missing",
        ),
        *(
            Effect(
                f"sync laptop directory {mount.source} ({_synced_size(mount, request.synced)}) "
                f"for {mount.target} (rsync: symlinks as links, never followed; no owners, "
                "devices or special files)",
                layout.synced_dir(root, session_id, index),
            )
            for index, mount in enumerate(spec.mounts)
            if mount.kind == "synced"
        ),
        Effect("record the session (state: starting)", layout.state_db(root)),
        Effect(
            f"create the session checkout ({isolation.value}"
            + (f", branch {branch})" if branch else ")"),
            work,
        ),
        *(
            [Effect("snapshot the checkout before the agent starts", snapshots + "/s1")]
            if spec.snapshots.before_start
            else []
        ),
        *(_egress_effects(spec, target.host, root) if request.network == "allowlist" else ()),
        *(Effect(action, where) for action, where in docker_access.effects(spec, target.host)),
        Effect(f"create and start container {name}", f"docker engine on {target.host}"),
        Effect("record the session on the laptop", "local state db (a cache)"),
    ]

    warnings = [first_warning(target.backend)]  # what the backend does not protect against
    if request.workspace_rules is not None:  # applied, pending, ignored or irrelevant: said here
        network = {**network, "workspace_rules": request.workspace_rules.section(request.network)}
        warnings += request.workspace_rules.warnings(request.network)
    if request.network == "open":
        warnings.append(
            "Network is open: the agent can reach the internet and your host's network, and can "
            "send anything it can read (including the workspace and its credential) anywhere."
        )
    warnings += docker_access.warning(spec)
    if build["network"] != "none":
        warnings.append(
            f"The role build has the network ({build['network']}): its RUN steps run as root "
            "on the host's engine and can reach the internet, the host's network and cloud "
            "metadata services (the role came from " + build["role_source"] + ")."
        )
    if any(c["available"] and c["delivery"] == "env" for c in credentials):
        warnings.append(
            "The runtime's API key is an environment variable in the sandbox: every process "
            "there can read it, and anyone with docker access on the host can see it with "
            "`docker inspect`."
        )
    for cred in credentials:
        if not cred["available"]:
            warnings.append(
                f"{cred['source']} is not set on this machine: the {runtime.name} runtime "
                "starts without its API key."
            )
    if workspace.tracked_secrets:
        warnings.append(
            "Secret-shaped files are committed in this repo and travel with its history: "
            + ", ".join(workspace.tracked_secrets[:5])
        )
    if workspace.skipped:
        warnings.append(
            f"{len(workspace.skipped)} path(s) do not travel (nested repositories, submodules or "
            "special files): " + ", ".join(workspace.skipped[:5])
        )
    if workspace.excluded_secrets:
        warnings.append(
            f"{len(workspace.excluded_secrets)} secret-shaped file(s) stay on the laptop "
            "(name them with --include to send them)."
        )
    for index, mount in enumerate(spec.mounts):
        if mount.kind == "synced" and mount.mode == "rw":
            warnings.append(
                f"{mount.target} is a writable copy of {mount.source}: what the agent writes "
                f"there stays in {layout.synced_dir(root, session_id, index)} on the host, never "
                "travels back to the laptop, and is deleted by rm."
            )

    return Contract(
        schema="v1",
        identity={
            "session": session_id,
            "name": request.name,
            "host": target.host,
            "candidates": [slot.as_dict() for slot in target.candidates],
            "placed_by": target.placed_by,
            "transport": target.transport,
            "workspace": {
                "name": workspace.name,
                "path": workspace.path,
                "branch": workspace.branch,
                "head": workspace.head,
            },
            "role": {"name": role.name, "source": role.source, "hash": role.content_hash},
            "runtime": runtime.name,
            "mode": mode,
            "task": request.task,
            "image": role.image,
            "container": name,
        },
        # core/tiers.py: the tier, the alternatives and the backend this session's needs call
        # for; where the backend was chosen is filled in by launch.judge_fit (BackendOrigin).
        routing=routing(
            target.backend,
            BackendOrigin("unknown"),
            Needs(
                network=request.network,
                credential=any(c["available"] for c in credentials),
                unattended=mode == "task",
                docker_access=request.docker,
            ),
        ),
        filesystem=filesystem,
        credentials=credentials,
        network=network,
        docker_access=docker_access.section(spec),
        service_ports=[],
        limits={
            "memory": target.memory,
            "cpus": target.cpus,
            "pids": target.pids,
            "nofile": target.nofile,
            "user": f"{role.user} (non-root)",
            "uid": f"on a host where jackin runs as root: a uid no host account, group or "
            f"subordinate range uses (the first free one from {SANDBOX_UID_BASE}); otherwise the "
            "uid of the host account jackin runs as. The uid used is in `ls --json`.",
            "capabilities": "all dropped",
            "no_new_privileges": True,
            "logs": f"rotated by the engine: at most {LOG_MAX_FILES} files of {LOG_MAX_SIZE} "
            "(older output is dropped)",
        },
        persistence={
            "survives_container_exit": [f"{work} (the session checkout, until rm)"],
            "lost_on_stop": ["/tmp", home]
            + (["the private docker daemon's images and containers"] if daemon else []),
            "shared": [
                f"{mirror} (workspace mirror, shared by this workspace's sessions; "
                "read when creating checkouts, never mounted)"
            ],
            "disk_budget": "none yet",
        },
        plan=plan,
        recovery={
            "snapshot_before_start": spec.snapshots.before_start,
            **_snapshot_recovery(spec, snapshots),
            "laptop_repo": "untouched: the agent works in its own checkout on the host",
            "get_the_work": f"jackin-remote pull {session_id}"
            + (
                f" (fetches branch {branch})"
                if branch
                else f" (copies into {workspace.path}/.jackin/pulled/{session_id}/)"
            ),
            "stop": f"jackin-remote stop {session_id} (keeps the checkout)",
            "idle_timeout": _idle_note(target, request, session_id, mode),
            "out_of_memory": (
                f"at its memory limit ({target.memory}) the kernel kills a process of the "
                "sandbox: the session shows `crashed (oom)` in ls, and its checkout is kept"
                if target.memory
                else "no memory limit: the host's own OOM killer may end any process on it"
            ),
            "rm": f"jackin-remote rm {session_id}: deletes the container and {work}; refuses "
            "while the work has not been pulled, unless --force; the snapshots stay until "
            "rm --purge",
            # Three kinds, kept apart: what each is, and what removes it.
            "session_metadata": "the host's record (its state db: the source of truth) and this "
            "laptop's view (a cache: `ls` rebuilds it from the hosts); rm marks the record "
            "purged, rm --purge forgets it",
            "project_snapshots": f"{snapshots}/ (see snapshots): kept by rm, removed by rm --purge",
            "sandbox_state": "the container, its volumes, its networks, its egress proxy and "
            "private-docker sidecar: removed by rm; `jackin-remote gc` finds what a crash left "
            "(`audit` lists each with its undo)",
        },
        warnings=warnings,
        spec=spec,
        build=build,
    )


def _snapshot_recovery(spec: LaunchSpec, where: str) -> dict[str, Any]:
    """The recovery section's snapshot entries: when, where, what is kept and left out."""
    policy, session = spec.snapshots, spec.session_id
    taken = "before the agent starts, " if policy.before_start else "not at start (--no-snapshot); "
    retention = f"the newest {policy.keep} (snapshot_keep)" + (
        f", none older than {policy.max_age} (snapshot_max_age)" if policy.max_age else ""
    )
    return {
        "snapshots": f"{where}/ on the host, outside the session directory and never mounted "
        f"into the sandbox; taken {taken}on `jackin-remote snapshot {session}` and before every "
        "restore; the whole checkout, .git included; unchanged files are hard links to the "
        "previous snapshot's",
        "snapshot_retention": retention + "; pruned after each new snapshot",
        "snapshot_excludes": list(policy.patterns),
        "restore": f"jackin-remote restore {session} [SNAPSHOT] [--stop]: the whole checkout "
        "back as it was (a snapshot of it is taken first, so a restore can be undone); "
        f"jackin-remote diff {session} --since SNAPSHOT shows what changed",
    }


def _egress(
    request: LaunchRequest, runtime: str, inventory: tuple[tuple[str, str, str], ...] = ()
) -> tuple[Rule, ...]:
    if request.network != "allowlist":
        if request.allow or request.deny:
            raise ContractError("--allow and --deny apply to --network allowlist only")
        return ()
    try:
        workspace = request.workspace_rules.applied if request.workspace_rules else ()
        return launch_rules(runtime, request.allow, request.deny, inventory, workspace)
    except SpecError as exc:
        raise ContractError(f"{exc.field}: {exc.problem}") from None


def _idle_note(target: TargetRef, request: LaunchRequest, session_id: str, mode: str) -> str:
    """What the host does with an idle session (agent_host/janitor.py), in the contract."""
    if target.idle_timeout is None:
        return "none: the session runs until it ends or is stopped"
    when = (
        "after that long without tmux activity (keys or output)"
        if mode == "interactive"
        else "once it has exited (its proxy and daemon stop then)"
    )
    origin = "--idle-timeout" if request.idle_timeout_flag else "idle_timeout in the inventory"
    return (
        f"{_duration(target.idle_timeout)} ({origin}): the host stops the "
        f"session {when}, even with no controller connected; its checkout, snapshots and record "
        f"stay (`jackin-remote start {session_id}`); each idle stop is in `jackin-remote audit`"
    )


def _duration(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _network_section(spec: LaunchSpec) -> dict[str, Any]:
    network = egress_network(spec.session_id)
    return {
        "policy": "allowlist",
        "enforcement": "host-enforced",
        "enforced_by": f"an internal docker network of its own ({network}: no route out, no "
        f"outside DNS); jackin's egress proxy, a host process at the network's gateway port "
        f"{PROXY_PORT}, is the only way out. It resolves names itself, speaks HTTP and CONNECT, "
        "and decides each destination by the rules (deny wins). If it stops, nothing gets out.",
        "rules": [str(rule) for rule in spec.egress],
        "reaches": ["what the rules allow, through the proxy (HTTP, and HTTPS by CONNECT)"],
        "log": f"jackin-remote policy log {spec.session_id}",
        "caveats": [
            "an allowed destination is still a way out for anything the agent can read",
            "the proxy is not a firewall for the host itself: host services listening on all "
            "addresses answer at the network's gateway (on docker engines before 25, at any "
            "address of the host)",
            "rules match names, not the addresses they resolve to; an allowed host:port is raw "
            "TCP through CONNECT, and a name on a shared CDN can front other sites",
            "docker engines before 26.0 (25.0.4, 23.0.11) may forward DNS from internal "
            "networks when the host's resolver is on loopback (CVE-2024-29018)",
            "raw TCP, UDP and DNS have no other route: tools that ignore HTTP(S)_PROXY cannot "
            "connect",
        ],
    }


def _egress_effects(spec: LaunchSpec, host: str, root: str) -> list[Effect]:
    session_dir = layout.session_dir(root, spec.session_id)
    return [
        Effect(f"create internal network {egress_network(spec.session_id)} (no route out)",
               f"docker engine on {host}"),
        Effect(f"start the egress proxy (a host process; rules in {session_dir}/egress.json, "
               "its decisions counted in the state db)", f"{host}: the network's gateway, port "
               f"{PROXY_PORT}"),
    ]  # fmt: skip


def _build(role: RoleRef, network: str) -> dict[str, Any]:
    """The role image build: where the role came from and what its RUN steps can reach.

    `none` is the default for every role, not only for git ones: a local directory is often a
    checkout of someone else's repository, and the roles this project ships build offline."""
    if network not in BUILD_NETWORKS:
        raise ContractError(
            f"--build-network {network!r}: expected none or default",
            hint="none: RUN steps get no network; default: the engine's network (for a "
            "Dockerfile that downloads)",
        )
    return {
        "role_origin": role.origin,
        "role_source": f"{'git URL' if role.origin == 'git' else 'directory'} {role.source}",
        "network": network,
        "enforced_by": (
            "the container engine on the host: RUN steps get only a loopback interface"
            if network == "none"
            else "nothing: RUN steps use the engine's default network"
        ),
        "reaches": []
        if network == "none"
        else ["the internet", "the host's network", "cloud metadata services"],
        "runs_as": "the Dockerfile's USER (root unless it says otherwise), with the engine's "
        "default capabilities: a build is not sandboxed like the session",
        "when": "only if the image is missing on the host; an image already built from the "
        "same role content is reused as it is",
    }


def _command(runtime: Runtime, task: str | None) -> list[str]:
    if task:
        return runtime.task_argv(task)
    # Interactive: the program runs in tmux; the container lives as long as the tmux session.
    argv = runtime.interactive_argv()
    return [
        "/bin/sh",
        "-c",
        f'tmux new-session -d -s {TMUX_SESSION} -x 200 -y 50 "$@" && '
        f"while tmux has-session -t {TMUX_SESSION} 2>/dev/null; do sleep 2; done",
        "jackin-tmux",
        *argv,
    ]


def _model_api(runtime: Runtime, request: LaunchRequest) -> ModelApi | None:
    """allowlist: the runtime's key goes to the proxy, which adds it to its model API calls."""
    if request.model_api is not None and request.network != "allowlist":
        raise ContractError("--model-api applies to --network allowlist only (the proxy uses it)")
    if request.network != "allowlist" or runtime.model is None or runtime.key_env is None:
        return None
    if not request.credential_present:
        return None
    endpoint = runtime.model
    try:
        return ModelApi(request.model_api or endpoint.upstream, endpoint.header, endpoint.prefix,
                        runtime.key_env, endpoint.base_url_env)  # fmt: skip
    except SpecError as exc:
        raise ContractError(f"--model-api: {exc.problem}") from None


def _allowed_mounts(mounts: tuple[Mount, ...], target: TargetRef) -> tuple[Mount, ...]:
    """A host directory is mounted only if the target's inventory lists it (or a parent)."""
    for mount in mounts:
        source = str(mount.source)
        if mount.kind == "host" and not any(
            source == allowed or source.startswith(allowed.rstrip("/") + "/")
            for allowed in target.host_mounts
        ):
            raise ContractError(
                f"--mount host:{source}: {target.host} does not allow it: list it in host_mounts "
                f"of [hosts.{target.host}] (or [defaults]) in the inventory"
            )
    return mounts


def _synced_size(mount: Mount, synced: tuple[tuple[str, int, int], ...]) -> str:
    for path, files, total in synced:
        if path == mount.source:
            return f"{files} file{'' if files == 1 else 's'}, {_bytes_text(total)}"
    return "size not read"


def _bytes_text(count: int) -> str:
    size, unit = float(count), "bytes"
    for bigger in ("KB", "MB", "GB", "TB"):
        if size < 1024:
            break
        size, unit = size / 1024, bigger
    return f"{count} bytes" if unit == "bytes" else f"{size:.1f} {unit}"


def _mount_entry(
    mount: Mount,
    session_id: str,
    index: int,
    root: str = "",
    synced: tuple[tuple[str, int, int], ...] = (),
) -> dict[str, Any]:
    if mount.kind == "synced":
        writes = (
            "read-only in the sandbox"
            if mount.mode == "ro"
            else "writable: what the agent writes here lands in this host copy only and never "
            "travels back to the laptop (`pull` brings back the checkout only: have the agent "
            "copy what you want to keep into " + CONTAINER_WORKDIR + ", or copy the host path "
            "off the host before rm)"
        )
        return {"laptop": mount.source, "host": layout.synced_dir(root, session_id, index),
                "container": mount.target, "mode": mount.mode, "isolation": "copy",
                "note": f"a copy of the laptop directory ({_synced_size(mount, synced)}), synced "
                "before the session is created; symlinks are copied as links and never followed "
                "(what they point to stays on the laptop; in the sandbox they resolve inside the "
                "sandbox); owners, devices and special files are not copied; " + writes
                + "; deleted by rm"}  # fmt: skip
    if mount.kind == "host":
        return {"laptop": None, "host": mount.source, "container": mount.target, "mode": "ro",
                "isolation": "shared", "note": "a host directory the inventory allows; "
                "read-only, so it never widens what the agent can write"}  # fmt: skip
    if mount.kind == "tmpfs":
        return {"laptop": None, "host": None, "container": mount.target, "mode": "tmpfs",
                "isolation": "ephemeral", "note": f"size={mount.size}; discarded when the "
                "container stops"}  # fmt: skip
    return {"laptop": None, "host": f"engine volume jk-{session_id}-v{index}",
            "container": mount.target, "mode": "rw", "isolation": "ephemeral",
            "note": "the session's own volume: kept across stop/start, removed by rm"}  # fmt: skip


def _secret_credentials(request: LaunchRequest) -> list[dict[str, Any]]:
    return [
        {
            "name": name,
            "source": source,
            "source_kind": "resolved on the laptop at launch",
            "delivery": "file",
            "delivered_as": f"{SECRETS_MOUNT}/{name} (read-only, 0400, the agent's uid), "
            f"exported as ${name} into the agent's process only",
            "value": "<redacted>",
            "available": True,
            "exposure": "the agent and the processes it starts can read it; not in docker "
            "inspect or the host's ps; held on the host in memory (/dev/shm) until rm; "
            "redacted from logs",
        }
        for name, source in request.secrets
    ]


def _source_kind(source: str) -> str:
    if source.startswith("op://"):
        return "1Password (op read), on the laptop"
    if source.startswith("file:"):
        return "laptop file"
    if source.startswith("command:"):
        return "laptop command's output"
    return "laptop environment variable"


def _credentials(
    runtime: Runtime, request: LaunchRequest, model_api: ModelApi | None = None
) -> list[dict[str, Any]]:
    if runtime.key_env is None:
        return []
    source = request.credential_source or runtime.key_env
    if model_api is not None:
        return [
            {
                "name": f"{runtime.name} API key",
                "source": source,
                "source_kind": _source_kind(source),
                "delivery": "proxy",
                "delivered_as": f"added by the session's egress proxy to calls to "
                f"{model_api.upstream} ({model_api.header} header); the sandbox's "
                f"{model_api.key_env} holds a placeholder and {model_api.base_url_env} points "
                "at the proxy",
                "value": "<redacted>",
                "available": True,
                "exposure": "never in the sandbox: held by the proxy on the host (in the "
                "session directory, mode 0600, outside every mount; removed by rm). The agent "
                f"cannot read it, but can spend it on any call to {model_api.upstream}",
            }
        ]
    return [
        {
            "name": f"{runtime.name} API key",
            "source": source,
            "source_kind": _source_kind(source),
            "delivery": "env",
            "delivered_as": runtime.key_env,
            "value": "<redacted>" if request.credential_present else None,
            "available": request.credential_present,
            "exposure": "readable by every process in the sandbox and via docker inspect on "
            "the host",
        }
    ]


def _size(tmpfs_options: str) -> str:
    sizes = [opt.partition("=")[2] for opt in tmpfs_options.split(",") if opt.startswith("size=")]
    return f"size={sizes[0]}" if sizes else "no size limit"


def _working_tree_note(workspace: WorkspaceRef) -> str:
    if not workspace.is_git:
        return f"not a git repo: all {workspace.file_count} file(s) travel (secrets excluded)"
    if workspace.dirty:
        return (
            "uncommitted local changes travel: they are committed on the session branch as "
            "'jackin: local working tree at launch', on top of your HEAD"
        )
    return "clean: the session starts from your HEAD"


def with_warnings(contract: Contract, extra: list[str]) -> Contract:
    """The contract with warnings found after it was resolved (the host's facts: a limit it
    cannot meet, tight disk), so explain shows them in the same place as every other warning."""
    if not extra:
        return contract
    return replace(contract, warnings=[*contract.warnings, *extra])
