"""Judge a host from its facts: pure, so every rule is tested without a host."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from jackin_remote.core.aliases import Alias
from jackin_remote.core.capacity import MIN_DISK_FREE

Severity = Literal["warn", "fail"]
Verdict = Literal["ready", "degraded", "unusable"]

MIN_PYTHON = (3, 9)
MAX_CLOCK_SKEW = 2.0  # seconds; beyond this, ages and timeouts in the fleet view lie


@dataclass(frozen=True)
class Problem:
    severity: Severity
    message: str
    hint: str

    def as_dict(self) -> dict[str, str]:
        return {"severity": self.severity, "message": self.message, "hint": self.hint}


def _version_tuple(text: str | None) -> tuple[int, ...]:
    parts = []
    for piece in (text or "").split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def problems(facts: dict[str, Any], clock_skew: float | None) -> list[Problem]:
    found: list[Problem] = []
    docker = facts.get("docker") or {}
    if not docker.get("installed"):
        found.append(
            Problem("fail", "no docker engine", "install docker (e.g. apt install docker.io)")
        )
    elif not docker.get("access"):
        reason = docker.get("error") or "the engine did not answer"
        hint = (
            f"add {facts.get('user') or 'the user'} to the docker group, then log in again"
            if "permission" in reason
            else "start the docker engine (systemctl start docker)"
        )
        found.append(Problem("fail", f"docker not usable: {reason}", hint))
    if _version_tuple(facts.get("python")) < MIN_PYTHON:
        found.append(
            Problem("fail", f"python {facts.get('python')} is too old", "install python3 >= 3.9")
        )
    if not facts.get("rsync"):
        found.append(Problem("fail", "rsync not installed", "install rsync (workspace sync)"))
    if not facts.get("git"):
        found.append(Problem("fail", "git not installed", "install git (session checkouts)"))
    free = (facts.get("disk") or {}).get("free")
    if isinstance(free, int) and free < MIN_DISK_FREE:
        found.append(
            Problem(
                "warn",
                f"only {free / 1024**3:.1f} GiB free under {facts['disk'].get('path')}",
                "free disk space or set a different root for this host",
            )
        )
    if clock_skew is not None and abs(clock_skew) > MAX_CLOCK_SKEW:
        found.append(
            Problem("warn", f"clock is off by {clock_skew:+.1f} s", "enable NTP on the host")
        )
    return found


def misfit_problems(misfits: Iterable[Mapping[str, Any]]) -> list[Problem]:
    """Limits the host cannot meet (core/capacity.py). A warning here, not a failure: the host
    is fine, the inventory asks too much of it, and launch refuses until the value is fixed."""
    return [Problem("warn", str(m["message"]), str(m["hint"])) for m in misfits]


def alias_problems(name: str, found: Iterable[Alias]) -> list[Problem]:
    """`name` is one machine with another inventory name (core/aliases.py). One root: every
    session shows under both names and both count the same sessions against capacity. Two
    roots: separate session sets, but one machine's CPUs, memory and disk."""
    result = []
    for alias in found:
        if name not in alias.names:
            continue
        other = alias.names[1] if alias.names[0] == name else alias.names[0]
        pair = f"{name} and {other}"
        if alias.same_root:
            result.append(Problem(
                "warn",
                f"{pair} are the same host root on one machine ({alias.evidence()}): "
                "the same sessions under two names",
                f"remove one of them (`jackin-remote hosts rm {other}`), or give them "
                "different roots",
            ))  # fmt: skip
        else:
            roots = f" ({alias.first.root} and {alias.second.root})" if alias.first.root else ""
            result.append(Problem(
                "warn",
                f"{pair} are one machine ({alias.evidence()}) with different roots{roots}: "
                "separate sessions sharing its CPUs, memory and disk",
                f"keep both only if that is meant; otherwise remove one of them "
                f"(`jackin-remote hosts rm {other}`)",
            ))  # fmt: skip
    return result


def verdict(found: list[Problem]) -> Verdict:
    if any(p.severity == "fail" for p in found):
        return "unusable"
    return "degraded" if found else "ready"
