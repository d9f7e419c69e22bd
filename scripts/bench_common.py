"""Shared pieces of the bench_*.py scripts: timing whole processes, statistics, the bench
inventory and a description of the machine. Scripts, not tests: nothing here asserts a time."""

from __future__ import annotations

import json
import math
import os
import platform
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / ".bench"
TIMEOUT_S = 600.0
# Bench runs use a host root of their own: other engineers' test runs on the same hosts then
# never see bench sessions, and their agent deploys (which replace ~/.jackin/agent/*.pyz when
# the agent code changes) never turn a timed bench run into a deploy run, nor the reverse.
BENCH_ROOT = "~/.jackin-bench"


@dataclass(frozen=True)
class Stats:
    median: float
    p95: float
    samples: list[float]

    @classmethod
    def of(cls, samples: Sequence[float]) -> Stats:
        return cls(statistics.median(samples), percentile(samples, 95), list(samples))

    def as_dict(self) -> dict[str, Any]:
        return {"median_s": self.median, "p95_s": self.p95, "samples_s": self.samples}


def percentile(samples: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (with 5 samples, p95 is the slowest)."""
    ordered = sorted(samples)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def timed_run(
    argv: Sequence[str], *, env: dict[str, str], cwd: Path, what: str
) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Wall time of a whole process; a failure stops the bench, showing the command."""
    start = time.perf_counter()
    done = subprocess.run(
        list(argv), env=env, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT_S
    )
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(
            f"{what} failed ({done.returncode}): {shlex.join(argv)}\n{done.stdout}{done.stderr}"
        )
    return wall, done


class CpuMeter:
    """CPU seconds burnt by our child processes (the tool under test, and what it waited for)
    and inside the given fleet containers (sshd, the agent, the host's idle dockerd).

    On a shared 2-core machine the wall clock mostly measures everyone else's load; CPU seconds
    say what a tool itself costs. Host CPU comes from each container's cgroup (v1 or v2).
    """

    def __init__(self, containers: Sequence[str]) -> None:
        self.files = [_cgroup_cpu_file(c) for c in containers]

    def read(self) -> tuple[float, float | None]:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        children = usage.ru_utime + usage.ru_stime
        if not self.files or any(f is None for f in self.files):
            return children, None
        return children, sum(_cgroup_cpu_seconds(f) for f in self.files if f is not None)


def _cgroup_cpu_file(container: str) -> Path | None:
    done = subprocess.run(
        ["docker", "inspect", "-f", "{{.Id}}", container], capture_output=True, text=True
    )
    cid = done.stdout.strip()
    if done.returncode != 0 or not cid:
        return None
    for path in (
        Path(f"/sys/fs/cgroup/cpuacct/docker/{cid}/cpuacct.usage"),  # v1, cgroupfs driver
        Path(f"/sys/fs/cgroup/docker/{cid}/cpu.stat"),  # v2, cgroupfs driver
        Path(f"/sys/fs/cgroup/system.slice/docker-{cid}.scope/cpu.stat"),  # v2, systemd
    ):
        if path.exists():
            return path
    return None


def _cgroup_cpu_seconds(path: Path) -> float:
    text = path.read_text()
    if path.name == "cpuacct.usage":
        return int(text) / 1e9
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "usage_usec":
            return int(value) / 1e6
    raise ValueError(f"{path}: no usage_usec")


def jackin_cli() -> str:
    """The installed `jackin-remote` entry point, as a user runs it."""
    beside = Path(sys.executable).parent / "jackin-remote"
    found = str(beside) if beside.exists() else shutil.which("jackin-remote")
    if found is None:
        raise SystemExit("jackin-remote is not installed in this venv (pip install -e .)")
    return found


def bench_inventory(hosts: Sequence[Any], identity_file: Path, root: str = BENCH_ROOT) -> str:
    """An inventory (TOML) for fleet hosts (tests.fleet.FleetHost) with the bench's root, and
    group `bench` holding them all."""
    lines = ["# written by scripts/bench_*.py for one bench run", ""]
    for host in hosts:
        lines += [
            f"[hosts.{host.name}]",
            'address = "127.0.0.1"',
            f"port = {host.port}",
            'user = "jackin"',
            f"identity_file = {json.dumps(str(identity_file))}",
            f"host_key = {json.dumps(host.host_key)}",
            f"root = {json.dumps(root)}",
            "",
        ]
    lines += ["[groups]", f"bench = {json.dumps([host.name for host in hosts])}", ""]
    return "\n".join(lines)


def local_inventory(root: Path) -> str:
    return f'[hosts.local]\ntransport = "local"\nroot = {json.dumps(str(root))}\n'


def machine() -> dict[str, Any]:
    model = "unknown"
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    openssh = subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.strip()
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "openssh": openssh,
        "loadavg_start": list(os.getloadavg()),
    }


def load_note(info: dict[str, Any]) -> str:
    start, end = info["loadavg_start"][0], info["loadavg_end"][0]
    return f"load average (1 min) at start {start:.1f}, at end {end:.1f}, on {info['cpus']} cpus"
