"""Disk decisions, pure: sizes as the inventory writes them, the budget and the floor.

- `disk_budget` ("50g"): what jackin's files under a host root may take (checkouts, snapshots,
  workspace mirrors, role contexts, synced mounts: what `du -s <root>` says, hard links once).
  Over it: a warning in `hosts check`, `explain` and the launch contract; never a refusal.
  Images, containers' writable layers, logs and volumes are the engine's: `jackin-remote du`
  shows them, the budget does not count them (one engine serves every root on a machine).
- `disk_floor` ("5g"): the free space a launch must leave under the root. A launch that would
  leave less is refused before any work, naming the host, the numbers and --ignore-disk-floor;
  `explain` and `hosts check` warn.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

from jackin_remote.core.capacity import Capacity, Misfit

IGNORE_FLOOR_FLAG = "--ignore-disk-floor"
MAX_SIZE = 1 << 50  # 1 PiB (1024t): anything larger is a typo
_SIZE = re.compile(r"^([0-9]{1,19})(?:\.([0-9]{1,6}))?([kmgt]?)\Z")
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


class SizeError(ValueError):
    pass


def parse_size(text: str) -> int:
    """Bytes of "50g", "512m", "1.5t", "4096" (binary units, like the memory limit's)."""
    match = _SIZE.match(text.strip().lower())
    if match is None:
        raise SizeError(f"invalid size {text!r}: a number with an optional unit k, m, g or t")
    whole, fraction, unit = match.groups()
    scale = _UNITS[unit]
    size = int(whole) * scale + (int(fraction) * scale // 10 ** len(fraction) if fraction else 0)
    if not 0 < size <= MAX_SIZE:
        raise SizeError(f"invalid size {text!r}: more than 0 and at most 1024t")
    return size


def human(size: int | None) -> str:
    """A byte count for people: 0 B, 812 B, 4.0 KiB, 1.2 GiB."""
    if size is None:
        return "?"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class DiskSetting:
    """`disk_budget` or `disk_floor` of one host, as the inventory says it and where."""

    key: str  # disk_budget | disk_floor
    text: str  # "50g"
    origin: str  # "inventory/hosts.toml:7 hosts.build-1.disk_floor"

    @property
    def size(self) -> int:
        return parse_size(self.text)


def budget_misfits(
    host: str, capacity: Capacity, budget: DiskSetting | None, needed: int = 0
) -> list[Misfit]:
    """Warnings: the root over its budget now, or after this launch writes `needed` bytes."""
    if budget is None:
        return []
    where = capacity.disk_path or "the host root"
    hint = (
        f"see `jackin-remote du --on {host}`; free space with `jackin-remote gc --on {host}` "
        f"or `jackin-remote rm`; or raise disk_budget ({budget.origin})"
    )
    usage = capacity.root_usage
    if usage is None:
        why = capacity.root_usage_error or "the host did not say"
        return [Misfit(False, f"disk budget not checked on {host}: {why}", hint)]
    limit = budget.size
    if usage > limit:
        return [
            Misfit(
                False,
                f"{host}: jackin uses {human(usage)} under {where}, over its "
                f"disk_budget of {human(limit)} ({budget.origin})",
                hint,
            )
        ]
    if needed and usage + needed > limit:
        return [
            Misfit(
                False,
                f"{host}: this launch writes about {human(needed)}, taking jackin "
                f"to {human(usage + needed)} under {where}, over its disk_budget of "
                f"{human(limit)} ({budget.origin})",
                hint,
            )
        ]
    return []


def floor_misfits(
    host: str,
    capacity: Capacity,
    floor: DiskSetting | None,
    needed: int = 0,
    *,
    launching: bool = True,
    ignored: bool = False,
) -> list[Misfit]:
    """The free space `needed` bytes would leave against the floor. Blocking for a launch
    (unless `ignored`); a warning otherwise (explain, hosts check: `launching` False)."""
    if floor is None:
        return []
    free, where = capacity.disk_free, capacity.disk_path or "the host root"
    hint = (
        f"free space on {host} (`jackin-remote gc --on {host}`, `jackin-remote du --on "
        f"{host}`), lower disk_floor ({floor.origin}), or launch with {IGNORE_FLOOR_FLAG}"
    )
    if free is None:
        return [Misfit(False, f"disk floor not checked on {host}: its free space is unknown", hint)]
    limit = floor.size
    left = free - needed
    if left >= limit:
        return []
    if needed:
        message = (
            f"{host} has {human(free)} free under {where}; this launch writes about "
            f"{human(needed)}, leaving {human(max(left, 0))}, below its disk_floor of "
            f"{human(limit)} ({floor.origin})"
        )
    else:
        message = (
            f"{host} has {human(free)} free under {where}, below its disk_floor of "
            f"{human(limit)} ({floor.origin}): launch refuses it until space is freed"
        )
    if ignored:
        return [Misfit(False, f"{message} (ignored: {IGNORE_FLOOR_FLAG})", hint)]
    return [Misfit(launching, message, hint)]


def recovery(
    path: str,
    commit: str | None,
    clone: bool,
    session: str | None,
    target: str | None,
    port: int | None = None,
) -> str:
    """How to copy an orphaned checkout's work off its host before removing it by hand.
    `target`: `[user@]address` of an ssh host (`port` if not 22), None for the local one. The
    agent wrote that .git: it is read as untrusted (no hooks, no fsmonitor)."""
    name = f"recovered-{session or 'work'}"
    if target is None:
        copy = f"cp -a {shlex.quote(path)} ./{name}"
    else:
        ssh = f"-e 'ssh -p {port}' " if port else ""
        copy = f"rsync -a {ssh}{target}:{shlex.quote(path + '/')} ./{name}/"
    what = f" (commit {commit[:12]})" if commit and clone else ""
    inspect = (
        f"; read it as untrusted: `git -c core.hooksPath=/dev/null -c core.fsmonitor=false "
        f"-C ./{name} log` (the agent wrote its .git)"
        if clone
        else ""
    )
    return (
        f"copy it off the host{what}: `{copy}`{inspect}; once recovered, remove it on the "
        f"host: `rm -rf {shlex.quote(path)}`"
    )
