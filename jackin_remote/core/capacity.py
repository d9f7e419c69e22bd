"""Whether a host can meet a sandbox's limits and hold its files: pure, decided before any work.

`explain`, `launch` and `hosts check` read the same few facts from a host (CPUs, memory, the
kernel's pid_max, free disk under the host root) and judge them here. A limit the host cannot
meet is `blocking`: launch refuses before it syncs or builds anything (the engine would refuse
it only at container creation, after the image build, with its own words). The message names
where the value was set (`hosts.toml:17 defaults.limits.cpus`), so the fix is one edit away.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from agent_host.wire import memory_bytes

# Below this much free disk after a launch, a host is tight (builds, logs, later sessions).
MIN_DISK_FREE = 5 * 1024**3


@dataclass(frozen=True)
class EngineRuntime:
    """One OCI runtime the host's docker engine lists (`docker info` Runtimes)."""

    name: str  # what `docker run --runtime` takes: runc, runsc
    path: str
    args: tuple[str, ...] = ()  # its runtimeArgs in daemon.json


@dataclass(frozen=True)
class Capacity:
    """What a host has. None: the host did not say (the check is then skipped, not failed)."""

    cpus: int | None = None
    memory: int | None = None  # bytes, MemTotal
    pid_max: int | None = None
    disk_path: str | None = None  # the host root, or its nearest existing parent
    disk_free: int | None = None  # bytes available to the host account there
    runtimes: tuple[EngineRuntime, ...] | None = None  # the engine's runtimes; None: not read
    runtimes_error: str | None = None  # why they could not be read
    kvm: bool | None = None  # /dev/kvm exists (a later microVM backend needs it)
    root_usage: int | None = None  # bytes under the host root (`du -s`), read for disk_budget
    root_usage_error: str | None = None  # why it was not read

    def runtime(self, name: str) -> EngineRuntime | None:
        return next((r for r in self.runtimes or () if r.name == name), None)


@dataclass(frozen=True)
class Setting:
    """One limit as the operator set it: `origin` says where (file:line and key)."""

    key: str  # memory | cpus | pids | nofile
    value: str | float | int
    field: str  # "defaults.limits.cpus", "hosts.build-1.limits.cpus", "the built-in limits.cpus"
    where: str | None = None  # "/ops/inventory/hosts.toml:17"; None: not from a file we know

    @property
    def origin(self) -> str:
        return f"{self.where} {self.field}" if self.where else self.field


@dataclass(frozen=True)
class Misfit:
    blocking: bool  # True: the host cannot meet it (launch refuses); False: a warning
    message: str
    hint: str

    def as_dict(self) -> dict[str, object]:
        return {"blocking": self.blocking, "message": self.message, "hint": self.hint}


def _int(text: str) -> int | None:
    text = text.strip()
    return _count(int(text)) if text.isdigit() and len(text) <= 20 else None


def parse_probe(output: str) -> Capacity:
    """The `key value` lines the read-only probe prints (hostcheck.PROBE_SCRIPT). Unknown keys
    and junk are ignored: a fact the host did not give is simply not checked."""
    found: dict[str, str] = {}
    for raw in output.splitlines():
        key, _, value = raw.partition(" ")
        found.setdefault(key, value)
    memory_kb = _int(found.get("memory_kb", ""))
    free_kb = _int(found.get("disk_free_kb", ""))
    usage_kb = _int(found.get("root_usage_kb", ""))
    runtimes, runtimes_error = None, found.get("runtimes_error", "").strip() or None
    if "runtimes" in found:
        try:
            runtimes = parse_runtimes(json.loads(found["runtimes"]))
        except ValueError:
            runtimes_error = "the engine's runtimes were not JSON"
        if runtimes is None and runtimes_error is None:
            runtimes_error = "the engine's runtimes were not a JSON object"
    kvm = found.get("kvm", "").strip()
    return Capacity(
        cpus=_int(found.get("cpus", "")),
        memory=None if memory_kb is None else memory_kb * 1024,
        pid_max=_int(found.get("pid_max", "")),
        disk_path=found.get("disk_path") or None,
        disk_free=None if free_kb is None else free_kb * 1024,
        runtimes=runtimes,
        runtimes_error=None if runtimes is not None else runtimes_error,
        kvm={"1": True, "0": False}.get(kvm),
        root_usage=None if usage_kb is None else usage_kb * 1024,
        root_usage_error=found.get("root_usage_error", "").strip() or None,
    )


def capacity_from_facts(facts: object) -> Capacity | None:
    """What the probe would read, from the host agent's `facts` (no command run on the host);
    None from an agent that does not say it all (an older one: the caller runs the probe).
    The host's answer is typed here, value by value. Pure."""
    if not isinstance(facts, dict) or "pid_max" not in facts or "cpus_usable" not in facts:
        return None
    memory, disk, docker, kvm = (_object(facts.get(key)) for key in ("memory", "disk", "docker",
                                                                      "kvm"))  # fmt: skip
    runtimes = parse_runtimes(docker.get("runtimes"))
    error = docker.get("runtimes_error") or docker.get("error")
    path = disk.get("path")
    present = kvm.get("present")
    return Capacity(
        cpus=_count(facts.get("cpus_usable")),
        memory=_count(memory.get("total")),
        pid_max=_count(facts.get("pid_max")),
        disk_path=path if isinstance(path, str) and 0 < len(path) <= MAX_PATH
        and path.isprintable() else None,
        disk_free=_count(disk.get("free")),
        runtimes=runtimes,
        runtimes_error=None if runtimes is not None else
        (str(error)[:300] if error else "the engine listed no runtimes"),
        kvm=present if isinstance(present, bool) else None,
    )  # fmt: skip


def _object(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


MAX_COUNT = 2**62  # larger than any real CPU count, memory or disk: a host that says more lies
MAX_PATH = 4096


def _count(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_COUNT:
        return value
    return None


def parse_runtimes(value: object) -> tuple[EngineRuntime, ...] | None:
    """The engine's `Runtimes` object (`{"runsc": {"path": ..., "runtimeArgs": [...]}}`), as a
    host said it: entries that are not that shape are skipped; not an object at all: None."""
    if not isinstance(value, dict):
        return None
    found = []
    for name, entry in value.items():
        if not isinstance(name, str) or not isinstance(entry, dict):
            continue
        path = entry.get("path")
        args = entry.get("runtimeArgs") or []
        if not isinstance(path, str) or not isinstance(args, list):
            continue
        found.append(EngineRuntime(name, path, tuple(str(a) for a in args)))
    return tuple(sorted(found, key=lambda r: r.name))


def gib(size: int) -> str:
    return f"{size / 1024**3:.1f} GiB"


def _shown(value: str | float | int) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def limit_misfits(host: str, settings: Sequence[Setting], capacity: Capacity) -> list[Misfit]:
    """Each limit the host cannot meet, naming where it was set and what the host has."""
    found: list[Misfit] = []
    for setting in settings:
        have = _have(setting, capacity)
        if have is None:
            continue
        wanted, what, ceiling = have
        if wanted <= ceiling:
            continue
        found.append(
            Misfit(
                True,
                f"{setting.origin} = {_shown(setting.value)}, but {host} has {what}",
                f"pass {setting.field} {_ceiling(setting.key, ceiling)} or less"
                if setting.field.startswith("--")
                else f"set limits.{setting.key} to at most {_ceiling(setting.key, ceiling)} "
                f"({setting.where or 'in the inventory'}; for {host} alone: in its "
                f"[hosts.{host}] table)",
            )
        )
    return found


def _ceiling(key: str, ceiling: int) -> str:
    if key == "memory":
        return f"{ceiling // 1024**2}m"
    return str(ceiling)


def _have(setting: Setting, capacity: Capacity) -> tuple[float, str, int] | None:
    """(wanted, what the host has in words, the most it can give) or None if unknown."""
    if setting.key == "cpus" and capacity.cpus is not None:
        assert isinstance(setting.value, int | float)
        plural = "" if capacity.cpus == 1 else "s"
        return float(setting.value), f"{capacity.cpus} CPU{plural}", capacity.cpus
    if setting.key == "memory" and capacity.memory is not None:
        wanted = memory_bytes(setting.value)
        return float(wanted), f"{gib(capacity.memory)} of memory", capacity.memory
    if setting.key == "pids" and capacity.pid_max is not None:
        assert isinstance(setting.value, int)
        return float(setting.value), f"pid_max {capacity.pid_max}", capacity.pid_max
    return None


def disk_misfits(host: str, capacity: Capacity, needed: int, sessions: int) -> list[Misfit]:
    """`needed`: bytes this launch writes on the host (the workspace mirror and one checkout
    per session). Refused when they do not fit; a warning when little would be left."""
    free, where = capacity.disk_free, capacity.disk_path or "the host root"
    if free is None:
        return []
    what = f"the workspace mirror and {sessions} checkout(s), about {gib(needed)}"
    if free < needed:
        return [
            Misfit(
                True,
                f"{host} has {gib(free)} free under {where}, but this launch writes {what}",
                f"free disk space on {host}, or set a different root for it in the inventory",
            )
        ]
    if free - needed < MIN_DISK_FREE:
        return [
            Misfit(
                False,
                f"{host} would have {gib(free - needed)} free under {where} after this launch "
                f"({what})",
                f"free disk space on {host}: role builds, logs and later sessions need room",
            )
        ]
    return []
