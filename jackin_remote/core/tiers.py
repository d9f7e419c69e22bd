"""Backends as risk tiers: what each one gives, which one a session should get, and whether a
host can run the one chosen. Pure: the contract's routing section, launch's refusals (before any
work) and `hosts check` all decide here.

- docker: runc, the engine's default. Namespaces and cgroups on the host's kernel: the agent's
  syscalls reach the host kernel directly, so a kernel bug is a way out.
- gvisor: runsc registered as a docker runtime by the host's operator (jackin never edits a
  host's daemon.json). gVisor's user-space kernel serves the agent's syscalls; the host kernel
  sees only gVisor's own, through a narrow seccomp filter. Still not a VM: a gVisor escape plus a
  host kernel bug gets out.
- a microVM (its own guest kernel behind a hypervisor on /dev/kvm) would be stronger; this
  version has none, and says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from agent_host.wire import GVISOR_RUNTIME
from jackin_remote.core.capacity import Capacity, Misfit, parse_runtimes

DOCKER = "docker"
GVISOR = "gvisor"
BACKENDS = (DOCKER, GVISOR)
RUNC = "runc"

RISK_TIER = {
    DOCKER: "container (runc): shared host kernel, namespaces + cgroups",
    GVISOR: "gVisor (runsc): a user-space kernel between the agent and the host kernel; syscalls "
    "the host kernel sees are gVisor's own, not the agent's",
}
STRONGER = (
    "a microVM (its own guest kernel behind a hypervisor on /dev/kvm): an escape would have to "
    "break the hypervisor as well; not in this version"
)
ALTERNATIVE = {  # no commas inside: the contract shows a list joined with ", "
    DOCKER: "docker (runc): the fastest and most compatible; the host kernel is its only boundary",
    GVISOR: "gvisor (runsc): a user-space kernel in front of the host's; slower syscalls and file "
    "I/O; some programs need syscalls it lacks; needs runsc registered on the host (`hosts check` "
    "shows it)",
}
LATER = ("microVM: later",)

FIRST_WARNING = {
    DOCKER: "A Docker container is not a microVM: the sandbox shares the host's kernel, and a "
    "kernel exploit escapes it.",
    GVISOR: "gVisor is not a microVM either: the agent's syscalls go to gVisor's user-space "
    "kernel, which itself runs on the host's kernel; a gVisor escape plus a host kernel bug "
    "escapes it.",
}

DOCS = "docs/backends.md"


def first_warning(backend: str) -> str:
    """The contract's first warning: what the chosen backend does not protect against."""
    return FIRST_WARNING.get(backend, FIRST_WARNING[DOCKER])


# -- where the backend was chosen ----------------------------------------------------------------
OriginKind = Literal["flag", "inventory", "default", "unknown"]


@dataclass(frozen=True)
class BackendOrigin:
    kind: OriginKind
    where: str | None = None  # inventory: "/ops/hosts.toml:3 hosts.build-1.backend"

    def words(self) -> str:
        """What follows "backend gvisor ": `chosen by --backend`, `set at hosts.toml:3 ...`."""
        if self.kind == "flag":
            return "chosen by --backend"
        if self.kind == "inventory":
            return f"set at {self.where}" if self.where else "set in the inventory"
        if self.kind == "default":
            return "by default (neither the inventory nor --backend sets one)"
        return "from the host's inventory entry or --backend"


def why(backend: str, origin: BackendOrigin) -> str:
    """The routing section's `why`: `gvisor chosen by --backend`."""
    return f"{backend} {origin.words()}"


# -- what the session needs, and the recommendation ---------------------------------------------
@dataclass(frozen=True)
class Needs:
    """What a session asks for that bears on how strong its box should be."""

    network: str  # open | none | allowlist
    credential: bool  # the session carries an API key (in the sandbox, or held by its proxy)
    unattended: bool  # task mode: the agent runs with nobody watching
    docker_access: str = "none"  # none | private (a daemon of its own in a sidecar)

    def words(self) -> str:
        parts = [
            f"network {self.network}",
            "a credential" if self.credential else "no credential",
            "unattended (task mode)" if self.unattended else "attended (interactive)",
            f"docker access {self.docker_access}",
        ]
        return ", ".join(parts)


@dataclass(frozen=True)
class Recommendation:
    backend: str
    because: tuple[str, ...]


def recommend(needs: Needs) -> Recommendation:
    """The backend a session's needs call for. gVisor whenever something could steer the agent
    into trying a way out, or make one worth more; docker (runc, faster and fully compatible)
    when nothing does. The shared kernel is the boundary either way for docker."""
    reasons: list[str] = []
    if needs.network == "open":
        reasons.append(
            "network open: what it reads on the internet can steer it, and it can "
            "fetch and run any code"
        )
    elif needs.network == "allowlist":
        reasons.append("network allowlist: what the allowed destinations send can still steer it")
    if needs.credential:
        reasons.append(
            "it carries a credential: a way out would take it, and reach the host and its "
            "other sessions"
        )
    if needs.unattended:
        reasons.append("unattended (task mode): nobody watches what it runs")
    if needs.docker_access != "none":
        reasons.append(
            f"docker access {needs.docker_access}: whatever the agent builds and runs gets a "
            "daemon of its own, whose sidecar is privileged on the host; a microVM around "
            "both would be the right box (later)"
        )
    if reasons:
        return Recommendation(
            GVISOR,
            (*reasons, "gVisor keeps the host kernel out of reach of the agent's own syscalls"),
        )
    return Recommendation(
        DOCKER,
        (
            "no network, no credential and someone watching: docker (runc) is faster and fully "
            "compatible; the host kernel is still its only boundary",
        ),
    )


def routing(backend: str, origin: BackendOrigin, needs: Needs) -> dict[str, Any]:
    """The contract's routing section. Flat strings and lists: it is rendered as key/value rows."""
    chosen = recommend(needs)
    if chosen.backend == backend:
        advice = f"{backend} is what this session's needs call for"
    elif chosen.backend == GVISOR:
        advice = (
            "launch with --backend gvisor for a stronger box (the host must have runsc: "
            "`jackin-remote hosts check` shows it)"
        )
    else:
        advice = "docker would do for this session's needs (faster, fully compatible)"
    return {
        "backend": backend,
        "why": why(backend, origin),
        "risk_tier": RISK_TIER.get(backend, backend),
        "stronger": STRONGER,
        "alternatives": [ALTERNATIVE[b] for b in BACKENDS if b != backend] + list(LATER),
        "session_needs": needs.words(),
        "recommended": chosen.backend,
        "recommended_because": "; ".join(chosen.because),
        "advice": advice,
    }


def with_origin(section: dict[str, Any], origin: BackendOrigin) -> dict[str, Any]:
    """A routing section whose `why` names where the backend was chosen (known after the
    contract: the launch's flag against the inventory's files)."""
    return {**section, "why": why(str(section.get("backend")), origin)}


# -- whether a host can run it -------------------------------------------------------------------
def network_none_only(args: tuple[str, ...]) -> bool:
    """True when runsc's runtimeArgs give it `--network=none` (also `-network=none`,
    `--network none`): every sandbox it runs then has only a loopback interface."""
    flags = [arg.lstrip("-") for arg in args]
    for index, flag in enumerate(flags):
        if flag == "network=none":
            return True
        if flag == "network" and index + 1 < len(flags) and flags[index + 1] == "none":
            return True
    return False


DEFAULT_NETWORK_WHY = "default: allowlist (the host enforces it; --network chooses)"


def default_network(backend: str, capacity: object) -> tuple[str, str]:
    """The network a session gets when --network is not given: `allowlist` wherever the host
    can enforce it; `none` on a gVisor host whose runsc runs only without a network (an
    allowlist needs an interface to its proxy). (network, why) for the contract."""
    if backend == GVISOR and isinstance(capacity, Capacity):
        runsc = capacity.runtime(GVISOR_RUNTIME)
        if runsc is not None and network_none_only(runsc.args):
            return "none", (
                "default: none, because this host runs gVisor only without a network (runsc "
                "--network=none), so no allowlist can be enforced for it; --network chooses"
            )
    return "allowlist", DEFAULT_NETWORK_WHY


def backend_misfits(
    host: str,
    backend: str,
    origin: BackendOrigin,
    network: str | None,
    capacity: Capacity,
    docker: str = "none",
) -> list[Misfit]:
    """Whether `host` can run `backend` for a session with `network` and `docker` access
    (network None: no session, as in `hosts check`). Blocking when the engine's runtimes say it
    cannot; a warning when they could not be read (the engine would then refuse at creation, in
    its own words)."""
    if backend != GVISOR:
        return []
    chosen = f"backend gvisor {origin.words()}"
    if capacity.runtimes is None:
        reason = capacity.runtimes_error or "the host did not say"
        return [
            Misfit(
                False,
                f"not checked whether {host} can run gVisor ({chosen}): its docker "
                f"engine's runtimes could not be read ({reason})",
                f"run `jackin-remote hosts check {host}`",
            )
        ]
    runsc = capacity.runtime(GVISOR_RUNTIME)
    change = f", or change {origin.where}" if origin.kind == "inventory" and origin.where else ""
    if runsc is None:
        return [
            Misfit(
                True,
                f"{host} cannot run gVisor ({chosen}): its docker engine has no "
                f"`{GVISOR_RUNTIME}` runtime",
                f"register runsc on {host} (install it, add it to /etc/docker/daemon.json "
                f"as runtime `{GVISOR_RUNTIME}`, reload dockerd: {DOCS}), or pass "
                f"--backend docker{change}",
            )
        ]
    if network is not None and docker == "private" and network_none_only(runsc.args):
        return [
            Misfit(
                True,
                f"{host} runs gVisor only without a network (its runsc is registered with "
                f"--network=none), but --docker private needs one to its daemon ({chosen})",
                f"pass --backend docker{change}, or register runsc on {host} without "
                f"--network=none ({DOCS})",
            )
        ]
    if network is not None and network != "none" and network_none_only(runsc.args):
        return [
            Misfit(
                True,
                f"{host} runs gVisor only without a network (its runsc is "
                f"registered with --network=none), but this session's network is "
                f"{network} ({chosen})",
                f"launch with --network none, or pass --backend docker{change}; or "
                f"register runsc on {host} without --network=none ({DOCS})",
            )
        ]
    return []


# -- what a host can run, for `hosts check` ------------------------------------------------------
def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def host_backends(facts: dict[str, Any]) -> dict[str, Any]:
    """What the host's facts say it can run: runc (docker), runsc (gvisor) and /dev/kvm (for a
    later microVM backend). `available` and `kvm` are None when the host did not say. Facts are
    a host's answer: anything of the wrong shape counts as not said."""
    docker = _dict(facts.get("docker"))
    access = docker.get("access") is True
    runtimes = parse_runtimes(docker.get("runtimes")) if access else None
    names = {r.name: r for r in runtimes or ()}
    runsc = names.get(GVISOR_RUNTIME)
    gvisor: dict[str, Any] = {
        "runtime": GVISOR_RUNTIME,
        "available": (False if not access else None) if runtimes is None else runsc is not None,
    }
    if runsc is not None:
        gvisor["path"] = runsc.path
        gvisor["args"] = list(runsc.args)
        gvisor["network"] = "none only" if network_none_only(runsc.args) else "any"
    present = _dict(facts.get("kvm")).get("present")
    return {
        DOCKER: {"runtime": RUNC, "available": access and (runtimes is None or RUNC in names)},
        GVISOR: gvisor,
        "kvm": present if isinstance(present, bool) else None,
        "runtimes": sorted(names),
    }


def backends_words(backends: object) -> list[tuple[str, bool | None]]:
    """The `hosts check` cell: (word, available) per backend, then kvm; "?" where not said."""
    found = _dict(backends)
    if not found:
        return []
    words: list[tuple[str, bool | None]] = []
    for name in BACKENDS:
        entry = _dict(found.get(name))
        available = entry.get("available")
        available = available if isinstance(available, bool) else None
        word = {True: name, False: f"no {name}", None: f"{name} ?"}[available]
        if available and entry.get("network") == "none only":
            word += " (network none only)"
        words.append((word, available))
    kvm = found.get("kvm")
    kvm = kvm if isinstance(kvm, bool) else None
    words.append(({True: "kvm", False: "no kvm", None: "kvm ?"}[kvm], kvm))
    return words
