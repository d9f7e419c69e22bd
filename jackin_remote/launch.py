"""explain and launch: resolve contracts (no side effects), then apply their plans.

Placement goes only to hosts that answer. `launch` asks every candidate for its sessions first
(live counts) and refuses, before starting anything, when the sessions do not all fit. `explain`
only connects (no agent is started, so nothing is deployed or written on a host) and uses the
laptop's last-known counts; its contract says which. Applying the plan is where the first
host-side effect happens.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent_host.wire import Mount
from jackin_remote.config import choose_runtime
from jackin_remote.core.capacity import Capacity, Misfit
from jackin_remote.core.contract import (
    Contract,
    LaunchRequest,
    RoleRef,
    TargetRef,
    WorkspaceRef,
    check_session_name,
    parse_env,
    pick_runtime,
    resolve_contract,
)
from jackin_remote.core.egress_rules import WorkspaceRules
from jackin_remote.core.hoststate import HostState
from jackin_remote.core.names import new_session_id
from jackin_remote.core.placement import Slot, place
from jackin_remote.core.tiers import DEFAULT_NETWORK_WHY
from jackin_remote.credentials import Source, parse_source, resolve
from jackin_remote.errors import AgentCallError, HostError, JackinError, UsageError
from jackin_remote.inventory import Host, Inventory, select_hosts

if TYPE_CHECKING:
    from jackin_remote.fleet import HostLink, Pool
    from jackin_remote.roles import Role
    from jackin_remote.store import Store
    from jackin_remote.sync import LaptopDir, ProgressCallback
    from jackin_remote.workspace import WorkspaceScan

Step = Callable[[str, str], None]  # (host, message)


@dataclass(frozen=True)
class LaunchOptions:
    selector: str
    role: str
    runtime: str | None  # None: the role's only runtime (config.choose_runtime)
    workspace: Path
    task: str | None = None
    network: str | None = None  # None: allowlist wherever the host can enforce it
    docker: str = "none"  # --docker: none | private
    env: tuple[str, ...] = ()
    count: int = 1
    isolation: str | None = None
    name: str | None = None
    key_from: str | None = None
    include: tuple[str, ...] = ()
    role_cache: Path | None = None  # where a git role is fetched (None: the laptop cache)
    build_network: str = "none"  # the role build's network: none | default
    # (limit, value, where): a flag's or a config's limits replace the inventory's
    limits: tuple[tuple[str, Any, str], ...] = ()
    allow: tuple[str, ...] = ()  # --allow / --deny: the allowlist's operator rules
    deny: tuple[str, ...] = ()
    backend: str | None = None  # --backend: replaces the hosts' own for this launch
    model_api: str | None = None  # --model-api: the proxy's upstream for model calls
    secrets: tuple[str, ...] = ()  # --secret NAME=SOURCE (jackin_remote/credentials.py)
    mounts: tuple[str, ...] = ()  # --mount host:SRC:DST[:ro] | LAPTOP_DIR:DST[:ro|rw]
    tmpfs: tuple[str, ...] = ()  # --tmpfs DST:SIZE
    volumes: tuple[str, ...] = ()  # --volume DST
    acknowledged: tuple[str, ...] = ()  # --ack-sensitive NAME
    # launch reads every source; explain only env and file ones (never runs a command or op)
    resolve_commands: bool = False
    # --workspace-rules: apply (the approved [egress] of .jackin/config.toml) | ignore
    workspace_rules: str = "apply"
    explain_only: bool = False  # explain: unapproved workspace rules are shown, not refused
    idle_timeout: str | None = None  # --idle-timeout: "2h", "off"; None: the inventory's
    ignore_disk_floor: bool = False  # --ignore-disk-floor: a host's disk_floor does not refuse
    snapshot: bool = True  # snapshot the checkout before the agent starts (--no-snapshot: no)


@dataclass
class Prepared:
    """Everything read (never written) to resolve contracts."""

    inventory: Inventory
    hosts: list[Host]
    role: Role
    scan: WorkspaceScan
    request: LaunchRequest
    credential: dict[str, str] = field(default_factory=dict)  # env name -> value; never printed
    count: int = 1
    limit_sources: dict[str, str] = field(default_factory=dict)  # limit -> flag or file:line
    secret_files: dict[str, str] = field(default_factory=dict)  # name -> value; never printed
    synced_dirs: dict[str, LaptopDir] = field(default_factory=dict)  # --mount LAPTOP_DIR: realpath
    # host -> (network, why) where --network was not given: the default, per host's facts
    networks: dict[str, tuple[str, str]] = field(default_factory=dict)
    ignore_disk_floor: bool = False  # --ignore-disk-floor

    def request_for(self, host: str) -> LaunchRequest:
        """The request as `host` gets it: with the default network its facts allow."""
        if host not in self.networks:
            return self.request
        network, why = self.networks[host]
        return dataclasses.replace(self.request, network=network, network_why=why)

    def with_default_networks(self, capacities: Mapping[str, Capacity | str]) -> Prepared:
        """Where --network was not given: allowlist wherever the host can enforce it
        (core/tiers.py default_network); the hosts whose facts could not be read get it too
        (their misfits say what was not checked)."""
        from jackin_remote.core.tiers import default_network

        request = self.request
        # Rules for a proxy: an allowlist, or a refusal where the host cannot have one.
        if request.network_why == "--network" or request.allow or request.deny:
            return self
        if request.model_api:
            return self
        chosen = {h.name: default_network(h.backend, capacities.get(h.name)) for h in self.hosts}
        return dataclasses.replace(self, networks=chosen)


def idle_timeout_option(text: str | None) -> int | None:
    """--idle-timeout, checked by the inventory's own rule: "30m", "2h", "1d" or "off"."""
    from jackin_remote.inventory.loader import IDLE_TIMEOUT
    from jackin_remote.inventory.values import ValueProblem

    if text is None:
        return None
    try:
        return IDLE_TIMEOUT(text)
    except ValueProblem as problem:
        raise UsageError(f"--idle-timeout: {problem.message}", hint=problem.hint) from None


def check_network_options(network: str, allow: Sequence[str], deny: Sequence[str]) -> None:
    from agent_host.egress import parse_pattern
    from agent_host.wire import Network, SpecError

    if network not in {n.value for n in Network}:
        raise UsageError(f"--network {network!r}: expected one of "
                         + ", ".join(n.value for n in Network))  # fmt: skip
    if (allow or deny) and network != Network.ALLOWLIST.value:
        raise UsageError("--allow and --deny apply to --network allowlist only",
                         hint="launch with --network allowlist")  # fmt: skip
    for flag, patterns in (("--allow", allow), ("--deny", deny)):
        for pattern in patterns:
            try:
                parse_pattern(pattern, flag)
            except SpecError as exc:
                raise UsageError(f"{flag}: {exc.problem}") from None


def workspace_egress(options: LaunchOptions) -> WorkspaceRules | None:
    """The workspace's own egress rules (`[egress]` of .jackin/config.toml), judged: launch
    refuses rules the operator has not approved, before any host is contacted; explain shows
    them as pending (jackin_remote/workspace_rules.py)."""
    from jackin_remote.workspace_rules import is_pending, judge, refusal

    network = options.network or "allowlist"  # not given: allowlist wherever it can be had
    rules = judge(options.workspace, mode=options.workspace_rules, network=network)
    if rules is not None and is_pending(rules) and not options.explain_only:
        raise refusal(rules)
    return rules


def read_task(task: str | None, task_file: Path | None) -> str | None:
    if task is not None and task_file is not None:
        raise UsageError("give --task or --task-file, not both")
    if task_file is None:
        return task
    try:
        return task_file.read_text()
    except OSError as exc:
        raise UsageError(f"--task-file {task_file}: {exc.strerror}") from None


def prepare(
    inventory: Inventory, options: LaunchOptions, environ: Mapping[str, str] | None = None
) -> Prepared:
    """Load and check everything a contract needs. Reads only; a typo fails here, before any
    host is contacted."""
    from jackin_remote.roles import load_role
    from jackin_remote.workspace import scan_workspace

    environ = os.environ if environ is None else environ
    if options.count < 1:
        raise UsageError("--count must be at least 1")
    if options.count > 1 and options.name:
        raise UsageError("--name names one session; it cannot be used with --count")
    check_network_options(options.network or "allowlist", options.allow, options.deny)
    if options.docker not in ("none", "private"):
        raise UsageError(
            f"--docker {options.docker!r}: expected none or private",
            hint="private: a docker daemon of the session's own, in a sidecar",
        )
    check_session_name(options.name)
    env = parse_env(list(options.env))
    if options.backend not in (None, "docker", "gvisor"):
        raise UsageError(f"--backend {options.backend!r}: expected docker or gvisor")
    idle = idle_timeout_option(options.idle_timeout)
    hosts = [
        _with_backend(_with_limits(h, options.limits), options.backend)
        for h in select_hosts(inventory, options.selector)
    ]
    if options.idle_timeout is not None:  # the flag wins over the inventory, "off" included
        hosts = [dataclasses.replace(h, idle_timeout=idle) for h in hosts]
    role = load_role(options.role, options.role_cache)
    runtime = choose_runtime(options.runtime, role.name, tuple(role.runtimes))
    scan = scan_workspace(options.workspace, include=options.include)
    workspace_rules = workspace_egress(options)
    key_env = pick_runtime(runtime, _role_ref(role)).key_env
    credential: dict[str, str] = {}
    source = None
    key_present = False
    if key_env:
        key_source = parse_source(options.key_from or key_env, "--key-from")
        source = str(key_source) if key_source.kind != "env" else key_source.ref
        value = _read_source(key_source, "--key-from", options.resolve_commands, environ)
        key_present = value is not None or key_source.kind in ("command", "op")
        if value is not None:
            if not all(0x21 <= ord(char) <= 0x7E for char in value):
                raise UsageError(f"--key-from {source}: the key holds characters other than "
                                 "printable ASCII (a stray newline or space?)")  # fmt: skip
            credential[key_env] = value
    secrets = _secret_options(options.secrets, env, key_env)
    secret_values = {
        name: value
        for name, item in secrets.items()
        if (value := _read_source(item, f"--secret {name}", options.resolve_commands, environ))
    }
    mounts = mount_options(options.mounts, options.tmpfs, options.volumes,
                           workspace=scan.path, acknowledged=options.acknowledged)  # fmt: skip
    synced_dirs = laptop_dirs(mounts)
    request = LaunchRequest(
        runtime=runtime,
        task=options.task,
        network=options.network or "allowlist",
        network_why="--network" if options.network else DEFAULT_NETWORK_WHY,
        idle_timeout_flag=options.idle_timeout is not None,
        docker=options.docker,
        env=env,
        credential_source=source,
        credential_present=key_present,
        secrets=tuple((name, item.described) for name, item in secrets.items()),
        mounts=mounts,
        synced=tuple((d.path, d.files, d.total_bytes) for d in synced_dirs.values()),
        acknowledged=options.acknowledged,
        isolation=options.isolation,
        name=options.name,
        build_network=options.build_network,
        allow=options.allow,
        deny=options.deny,
        model_api=options.model_api,
        workspace_rules=workspace_rules,
        snapshot=options.snapshot,
    )
    sources = {key: where for key, _, where in options.limits}
    return Prepared(inventory, hosts, role, scan, request, credential, options.count, sources,
                    secret_values, synced_dirs,
                    ignore_disk_floor=options.ignore_disk_floor)  # fmt: skip


def mount_options(
    mounts: Sequence[str],
    tmpfs: Sequence[str],
    volumes: Sequence[str],
    *,
    workspace: Path | None = None,
    acknowledged: Sequence[str] = (),
) -> tuple[Mount, ...]:
    """--mount host:SRC:DST[:ro] | LAPTOP_DIR:DST[:ro|rw], --tmpfs DST:SIZE and --volume DST,
    checked by the wire's rules. A laptop directory is checked here, on the laptop
    (`synced_mount`); `workspace` is the launch's (a directory above it is refused)."""
    from agent_host.wire import SpecError

    found: list[Mount] = []
    try:
        for text in mounts:
            parts = text.split(":")
            if parts[0] != "host":
                found.append(synced_mount(text, workspace, acknowledged))
                continue
            if len(parts) == 4 and parts[3] == "rw":
                raise UsageError(f"--mount {text!r}: host directories are mounted read-only: "
                                 "they never widen what the agent can write")  # fmt: skip
            if len(parts) not in (3, 4) or (len(parts) == 4 and parts[3] != "ro"):
                raise UsageError(f"--mount {text!r}: expected host:DIR:TARGET[:ro]")
            found.append(Mount("host", parts[2], source=parts[1]))
        for text in tmpfs:
            target, sep, size = text.partition(":")
            if not sep:
                raise UsageError(f"--tmpfs {text!r}: expected TARGET:SIZE, e.g. /scratch:512m")
            found.append(Mount("tmpfs", target, size=size))
        found += [Mount("volume", target) for target in volumes]
    except SpecError as exc:
        raise UsageError(f"{exc.field}: {exc.problem}") from None
    return tuple(found)


SYNCED_SYNTAX = "LAPTOP_DIR:TARGET[:ro|rw] (a laptop directory) or host:DIR:TARGET[:ro]"


def synced_mount(text: str, workspace: Path | None, acknowledged: Sequence[str] = ()) -> Mount:
    """--mount LAPTOP_DIR:TARGET[:ro|rw]: a laptop directory, copied to the host for the session
    and mounted at TARGET (ro by default). Checked on the laptop, on its realpath: it must be a
    directory, neither /, nor the home directory or a directory above it, nor one above the
    workspace (the workspace's parent holds its siblings), and neither be, be inside nor hold
    (two levels down) a credential store unless --ack-sensitive names it."""
    from agent_host.wire import SYNCED_MODES, held_sensitive, sensitive_names

    body, mode = text, "ro"
    head, sep, last = text.rpartition(":")
    if sep and last in SYNCED_MODES:
        body, mode = head, last
    source, sep, target = body.rpartition(":")
    if not sep or not source or not target.startswith("/"):
        raise UsageError(f"--mount {text!r}: expected {SYNCED_SYNTAX}")
    real = os.path.realpath(Path(source).expanduser())
    if not os.path.isdir(real):
        raise UsageError(f"--mount {text!r}: {source} is not a directory on this laptop")
    shown = source if real == source else f"{source} (it is {real})"
    home = os.path.realpath(Path.home())
    if real == "/" or real == home or home.startswith(real.rstrip("/") + "/"):
        raise UsageError(f"--mount {text!r}: {shown} is or holds your home directory: "
                         "mount the directory the agent needs, not all of it")  # fmt: skip
    if workspace is not None:
        ws = os.path.realpath(workspace)
        if ws.startswith(real.rstrip("/") + "/"):
            raise UsageError(f"--mount {text!r}: {shown} holds the workspace and what is beside "
                             "it: the workspace travels on its own; mount a directory of its "
                             "own")  # fmt: skip
    found = sorted(set(sensitive_names(real)) | set(held_sensitive(real)))
    missing = [name for name in found if name not in acknowledged]
    if missing:
        raise UsageError(
            f"--mount {text!r}: {shown} is or holds {', '.join(missing)} (credentials): it is "
            "refused unless acknowledged by name",
            hint=" ".join(f"--ack-sensitive {name}" for name in missing)
            + " to send it to the host anyway",
        )
    return Mount("synced", target, source=real, mode=mode)


def laptop_dirs(mounts: Sequence[Mount]) -> dict[str, LaptopDir]:
    """What each synced laptop directory sends, read once (reads only)."""
    from jackin_remote.sync import scan_laptop_dir

    return {str(m.source): scan_laptop_dir(str(m.source)) for m in mounts if m.kind == "synced"}


def _read_source(
    source: Source, flag: str, run_commands: bool, environ: Mapping[str, str]
) -> str | None:
    """The value now, or None: an unset variable, or (explain) a command or op source."""
    if source.kind in ("command", "op") and not run_commands:
        return None
    value = resolve(source, flag, environ)
    if value is None and source.kind == "env" and flag.startswith("--secret"):
        raise UsageError(f"{flag}: the laptop variable {source.ref} is not set")
    return value


def _secret_options(
    given: Sequence[str], env: Sequence[tuple[str, str]], key_env: str | None
) -> dict[str, Source]:
    """--secret NAME=SOURCE, checked: NAME is the variable the agent's process gets."""
    from agent_host.wire import ENV_NAME_RE, RESERVED_ENV

    found: dict[str, Source] = {}
    plain = {name for name, _ in env}
    for item in given:
        name, sep, text = item.partition("=")
        flag = f"--secret {name}" if sep else "--secret"
        if not sep or not ENV_NAME_RE.match(name):
            raise UsageError(f"--secret {item.split('=')[0]!r}: expected NAME=SOURCE with NAME "
                             "an environment variable name", hint="e.g. --secret "
                             "GITHUB_TOKEN=op://dev/github/token")  # fmt: skip
        if name in found or name in plain or name in RESERVED_ENV or name == key_env:
            raise UsageError(f"{flag}: {name} is already set another way")
        found[name] = parse_source(text, flag)
    return found


def _with_backend(host: Host, backend: str | None) -> Host:
    if backend is None:
        return host
    return dataclasses.replace(host, backend=backend)  # type: ignore[arg-type]


def _with_limits(host: Host, limits: Sequence[tuple[str, Any, str]]) -> Host:
    if not limits:
        return host
    values = {key: value for key, value, _ in limits}
    return dataclasses.replace(host, limits=dataclasses.replace(host.limits, **values))


def _role_ref(role: Role) -> RoleRef:
    from jackin_remote.roles import image_tag

    return RoleRef(
        name=role.name,
        content_hash=role.content_hash,
        image=image_tag(role),
        user=role.user,
        runtimes=tuple(role.runtimes),
        source=role.shown_source,
        origin=role.origin,
    )


def _workspace_ref(scan: WorkspaceScan) -> WorkspaceRef:
    return WorkspaceRef(
        path=str(scan.path),
        name=scan.name,
        is_git=scan.is_git,
        head=scan.head,
        branch=scan.branch,
        dirty=scan.dirty,
        file_count=len(scan.files),
        total_bytes=scan.total_bytes,
        excluded_secrets=tuple(scan.excluded_secrets),
        tracked_secrets=tuple(scan.tracked_secrets),
        skipped=tuple(scan.skipped),
    )


def _target_ref(host: Host, slots: Sequence[Slot], placed_by: str | None) -> TargetRef:
    return TargetRef(
        host=host.name,
        transport=host.transport,
        address=None if host.is_local else host.ssh_address,
        root=host.root,
        backend=host.backend,
        memory=host.limits.memory,
        cpus=host.limits.cpus,
        pids=host.limits.pids,
        nofile=host.limits.nofile,
        egress=host.egress,
        host_mounts=host.host_mounts,
        private_docker_image=host.private_docker_image,
        private_docker_privilege=host.private_docker_privilege,
        idle_timeout=host.idle_timeout,
        snapshot_keep=host.snapshot_keep,
        snapshot_max_age=host.snapshot_max_age,
        snapshot_excludes=host.snapshot_excludes,
        candidates=tuple(slots) if len(slots) > 1 else (),
        placed_by=placed_by if len(slots) > 1 else None,
    )


# What the candidates' counts are, as the contract says it.
LIVE = "live counts: every candidate was asked before anything was started"
LAST_KNOWN = ("counts last known to this laptop; explain connects to the candidates but starts "
              "nothing on them")  # fmt: skip


def slots_for(
    hosts: Sequence[Host], running: Mapping[str, int], errors: Mapping[str, str] | None = None
) -> list[Slot]:
    """Placement's view of the candidates: their counts, and why a host did not answer."""
    errors = errors or {}
    return [Slot(h.name, h.capacity, running.get(h.name, 0), errors.get(h.name)) for h in hosts]


def placements(prepared: Prepared, slots: Sequence[Slot]) -> list[Host]:
    by_name = {h.name: h for h in prepared.hosts}
    return [by_name[name] for name in place(slots, prepared.count)]


def contracts(
    prepared: Prepared, slots: Sequence[Slot], placed_by: str | None = None
) -> list[Contract]:
    """One resolved contract per session to launch. Pure given `slots` (what the candidates
    said, or the last-known counts). Raises PlacementError before anything is started when the
    sessions do not all fit on the hosts that answered."""
    role, workspace = _role_ref(prepared.role), _workspace_ref(prepared.scan)
    return [
        resolve_contract(
            new_session_id(), _target_ref(host, slots, placed_by), role, workspace,
            prepared.request_for(host.name),
        )
        for host in placements(prepared, slots)
    ]  # fmt: skip


def running_counts(store: Store | None) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in store.sessions() if store is not None else []:
        if row["state"] in ("starting", "running") and row["host_state"] == "ok":
            counts[row["host"]] = counts.get(row["host"], 0) + 1
    return counts


async def live_slots(pool: Pool, hosts: Sequence[Host], known: Mapping[str, int]) -> list[Slot]:
    """Ask every candidate, concurrently (the pool bounds the handshakes), before anything is
    resolved: a host that does not answer is never placed on; one whose agent is already
    deployed gives its live running count. Nothing is deployed or written here (on a host or
    in the laptop's view): where this agent version is not on a host yet, the laptop's
    last-known count (`known`) stands."""
    from jackin_remote.agent.client import AgentClosed
    from jackin_remote.sessions import checked_records

    async def ask(host: Host) -> int:
        link = await pool.deployed_agent(host)
        if link is None:
            return known.get(host.name, 0)
        reply = await link.agent.call("session.list", {})
        entries = checked_records(host.name, reply.get("sessions"))
        return sum(1 for entry in entries if entry["state"] in ("starting", "running"))

    async def ask_one(host: Host) -> tuple[int, str | None]:
        try:
            return await ask(host), None
        except HostError as exc:
            return 0, f"{exc.state}: {exc.reason}"
        except (JackinError, AgentClosed) as exc:
            return 0, f"{HostState.AGENT_ERROR}: {getattr(exc, 'reason', None) or exc}"

    found = await asyncio.gather(*(ask_one(h) for h in hosts))
    running = {h.name: count for h, (count, _) in zip(hosts, found, strict=True)}
    errors = {h.name: e for h, (_, e) in zip(hosts, found, strict=True) if e is not None}
    return slots_for(hosts, running, errors)


async def answering_slots(
    pool: Pool, hosts: Sequence[Host], running: Mapping[str, int]
) -> list[Slot]:
    """For explain: connect to each candidate (transport only: no agent is started, so nothing
    is deployed or written on a host) and keep the laptop's last-known counts."""

    async def reach(host: Host) -> str | None:
        try:
            await pool.link(host)
        except HostError as exc:
            return f"{exc.state}: {exc.reason}"
        return None

    found = await asyncio.gather(*(reach(h) for h in hosts))
    errors = {h.name: error for h, error in zip(hosts, found, strict=True) if error is not None}
    return slots_for(hosts, running, errors)


async def launch_contracts(pool: Pool, prepared: Prepared, store: Store | None) -> list[Contract]:
    """launch: the candidates asked live, then the contracts (PlacementError if they do not
    all fit: nothing has been started)."""
    # The limits first, read-only: a refusal leaves every host as it was.
    capacities = await read_capacities(pool, prepared.hosts)
    prepared = prepared.with_default_networks(capacities)
    refuse_misfits(limit_misfits(prepared, capacities))
    slots = await live_slots(pool, prepared.hosts, running_counts(store))
    checked, blocking = judge_fit(prepared, contracts(prepared, slots, LIVE), capacities)
    refuse_misfits(blocking)
    return checked


async def explain_contracts(prepared: Prepared, store: Store | None) -> list[Contract]:
    """explain: with several candidates, drop those that do not answer a connection; the
    counts are the laptop's last-known ones. The placed hosts' facts are read by a read-only
    probe (no agent is started): their misfits are warnings in the contracts."""
    from jackin_remote.fleet import Pool

    running = running_counts(store)
    async with Pool(prepared.inventory) as pool:
        if prepared.request.network_why != "--network":  # the default depends on the host
            prepared = prepared.with_default_networks(await read_capacities(pool, prepared.hosts))
        if len(prepared.hosts) < 2:
            plan = contracts(prepared, slots_for(prepared.hosts, running))
        else:
            slots = await answering_slots(pool, prepared.hosts, running)
            plan = contracts(prepared, slots, LAST_KNOWN)
        # The placed hosts' facts, read-only: a limit they cannot meet is a warning here.
        names = {c.identity["host"] for c in plan}
        capacities = await read_capacities(pool, [h for h in prepared.hosts if h.name in names])
    return judge_fit(prepared, plan, capacities)[0]


# -- fit: the hosts' facts against the limits and the disk, before any work -------------------
async def read_capacities(pool: Pool, hosts: Sequence[Host]) -> dict[str, Capacity | str]:
    """Each host's CPUs, memory, pid_max and free disk, read by a read-only probe over the
    transport (no agent: nothing is deployed or written), or why it could not be read."""
    from jackin_remote.hostcheck import read_capacity

    async def one(host: Host) -> Capacity | str:
        try:
            return await read_capacity(await pool.link(host))
        except (HostError, TimeoutError, OSError) as exc:
            return getattr(exc, "reason", None) or str(exc) or type(exc).__name__

    found = await asyncio.gather(*(one(h) for h in hosts))
    return {h.name: capacity for h, capacity in zip(hosts, found, strict=True)}


def limit_misfits(prepared: Prepared, capacities: Mapping[str, Capacity | str]) -> list[Misfit]:
    """The limits a candidate host cannot meet, and a backend it cannot run (gvisor without
    runsc, or runsc without a network for a session that needs one). Launch refuses on any,
    before it asks a host anything else: the value is wrong whichever host would be picked."""
    from jackin_remote.hostcheck import host_backend_misfits, host_misfits

    docker = prepared.request.docker
    return [
        misfit
        for host in prepared.hosts
        if isinstance(capacity := capacities.get(host.name), Capacity)
        for misfit in [
            *host_misfits(
                host, capacity, prepared.inventory.host(host.name), prepared.limit_sources
            ),
            *host_backend_misfits(
                host, capacity, prepared.inventory.host(host.name),
                prepared.request_for(host.name).network, docker,
            ),
        ]
    ]  # fmt: skip


def judge_fit(
    prepared: Prepared, plan: Sequence[Contract], capacities: Mapping[str, Capacity | str]
) -> tuple[list[Contract], list[Misfit]]:
    """The placed hosts' limits and the launch's disk use (the mirror plus one checkout per
    session, each the workspace's size) against their facts. Returns the contracts with what was
    found added to their warnings, and the problems a launch must refuse on."""
    from jackin_remote.core.capacity import disk_misfits
    from jackin_remote.core.contract import with_warnings
    from jackin_remote.core.tiers import with_origin
    from jackin_remote.hostcheck import (
        backend_origin,
        host_backend_misfits,
        host_disk_misfits,
        host_misfits,
    )

    sessions: dict[str, int] = {}
    for contract in plan:
        sessions[contract.identity["host"]] = sessions.get(contract.identity["host"], 0) + 1
    hosts = {h.name: h for h in prepared.hosts}
    found: dict[str, list[Misfit]] = {}
    for name, count in sessions.items():
        capacity = capacities.get(name)
        if not isinstance(capacity, Capacity):
            found[name] = [Misfit(False, f"limits and disk not checked on {name}: "
                                  f"{capacity or 'not asked'}",
                                  "run `jackin-remote hosts check`")]  # fmt: skip
            continue
        synced = sum(d.total_bytes for d in prepared.synced_dirs.values())
        needed = prepared.scan.total_bytes * (count + 1) + synced * count
        found[name] = host_misfits(
            hosts[name], capacity, prepared.inventory.host(name), prepared.limit_sources
        )
        found[name] += host_backend_misfits(
            hosts[name], capacity, prepared.inventory.host(name),
            prepared.request_for(name).network, prepared.request.docker,
        )  # fmt: skip
        found[name] += disk_misfits(name, capacity, needed, count)
        found[name] += host_disk_misfits(hosts[name], capacity, needed, launching=True,
                                         ignore_floor=prepared.ignore_disk_floor)  # fmt: skip
    # Where each host's backend was chosen (--backend, the inventory's file:line, the default).
    origins = {
        name: backend_origin(hosts[name], prepared.inventory.host(name)) for name in sessions
    }
    checked = [
        with_warnings(
            dataclasses.replace(c, routing=with_origin(c.routing, origins[c.identity["host"]])),
            [f"{m.message} (hint: {m.hint})" for m in found[c.identity["host"]]],
        )
        for c in plan
    ]
    return checked, [m for misfits in found.values() for m in misfits if m.blocking]


def refuse_misfits(blocking: Sequence[Misfit]) -> None:
    """Launch stops here, before anything is synced, built or created on any host."""
    if blocking:
        messages = sorted({m.message for m in blocking})
        hints = sorted({m.hint for m in blocking})
        raise JackinError(
            "cannot launch, nothing was started: " + "; ".join(messages),
            hint="; ".join(hints) + "; then launch again (`jackin-remote explain` and "
            "`hosts check` show the same check)",
        )


# -- apply -------------------------------------------------------------------------------------
async def apply(
    pool: Pool,
    prepared: Prepared,
    plan: Sequence[Contract],
    store: Store,
    step: Step,
    progress: ProgressCallback | None = None,
    build_output: Step | None = None,
) -> list[dict[str, Any]]:
    """Apply each contract's plan. Hosts are prepared once each (sync, image), concurrently; a
    failure on one host fails only its sessions. Role build output goes to `build_output`
    (default: `step`), so that a caller can fold it."""
    by_host: dict[str, list[Contract]] = {}
    for contract in plan:
        by_host.setdefault(contract.identity["host"], []).append(contract)
    hosts = {h.name: h for h in prepared.hosts}
    results = await asyncio.gather(
        *(_apply_host(pool, prepared, hosts[name], items, store, step, progress,
                      build_output or step)
          for name, items in by_host.items())
    )  # fmt: skip
    return [entry for batch in results for entry in batch]


async def _apply_host(
    pool: Pool,
    prepared: Prepared,
    host: Host,
    items: list[Contract],
    store: Store,
    step: Step,
    progress: ProgressCallback | None,
    build_output: Step,
) -> list[dict[str, Any]]:
    from agent_host import testhooks
    from jackin_remote.agent.client import AgentClosed
    from jackin_remote.roles import ensure_role_image
    from jackin_remote.sessions import checked_records
    from jackin_remote.sync import sync_workspace

    try:
        step(host.name, "starting the host agent")
        await testhooks.pause("agent")
        link = await pool.agent(host)
        step(host.name, "syncing the workspace")
        (synced,) = await sync_workspace(pool, [host], prepared.scan, progress=progress)
        if synced.error is not None:
            raise synced.error
        step(host.name, "preparing the role image")
        await testhooks.pause("role-image")
        await ensure_role_image(
            link,
            prepared.role,
            lambda line: build_output(host.name, line),
            network=prepared.request.build_network,
        )
    except JackinError as exc:
        return [_failed(c, str(exc)) for c in items]
    except AgentClosed as exc:
        lost = (f"{host.name}: the connection to the host was lost while preparing it ({exc}); "
                "no session was created there: launch again")  # fmt: skip
        return [_failed(c, lost) for c in items]

    async def create(contract: Contract) -> dict[str, Any]:
        session_id = contract.identity["session"]
        step(host.name, f"creating session {session_id}")
        try:
            await _sync_mounts(pool, link, prepared, contract, step)
        except JackinError as exc:
            return _failed(contract, str(exc))
        try:
            await testhooks.pause("create-send")
            entry = await link.agent.call(
                "session.create",
                {
                    "spec": contract.spec.to_wire(),
                    "secret_env": prepared.credential,
                    "secret_files": prepared.secret_files,
                },
            )
        except AgentCallError as exc:
            # The host recorded it (failed_setup) unless the spec was refused outright.
            return _failed(contract, exc.reason, state="failed_setup")
        except AgentClosed as exc:
            # Sent or not, the host may have it: only the host can say.
            return _failed(contract, f"{host.name}: the connection to the host was lost while "
                           f"creating {session_id} ({exc}); `jackin-remote ls --on {host.name}` "
                           "shows whether it started", state="unknown")  # fmt: skip
        await testhooks.pause("create-reply")
        try:
            (entry,) = checked_records(host.name, [entry])
        except HostError as exc:
            return _failed(contract, exc.reason, state="unknown")
        store.record(host.name, entry, workspace_path=str(prepared.scan.path))
        return {
            "id": session_id,
            "host": host.name,
            "state": entry["state"],
            "container": entry["container"],
            "branch": entry.get("branch"),
            "error": None,
        }

    return list(await asyncio.gather(*(create(c) for c in items)))


async def _sync_mounts(
    pool: Pool, link: HostLink, prepared: Prepared, contract: Contract, step: Step
) -> None:
    """Copy each synced laptop directory of the session to its host copy, before the session
    is created (the host refuses a synced mount whose copy is missing)."""
    from jackin_remote.sync import sync_laptop_dir

    spec = contract.spec
    for index, mount in enumerate(spec.mounts):
        if mount.kind == "synced":
            step(link.host.name, f"syncing {mount.source} for {mount.target}")
            directory = prepared.synced_dirs[str(mount.source)]
            await sync_laptop_dir(pool, link, directory, spec.session_id, index)


def _failed(contract: Contract, message: str, state: str = "not_started") -> dict[str, Any]:
    return {
        "id": contract.identity["session"],
        "host": contract.identity["host"],
        "state": state,
        "container": contract.identity["container"],
        "branch": None,
        "error": message,
    }
