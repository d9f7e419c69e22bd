#!/usr/bin/env python3
"""Benchmark: `du` and `gc` (dry run) over 10 hosts, against `ssh host du -s ROOT` in sequence.

    .venv/bin/python scripts/bench_du.py [--runs 5] [--hosts 10] [--machines 3] [--files 200]

The test fleet has 4 containers; fleet-4 is the disruptive one. The bench declares --hosts
inventory names (bd01, bd02, ...) over fleet-1..fleet-M (M = --machines), each name with a host
root of its own (~/.jackin-bench-du/<name>), as tests/conftest.py add_host_copy does: every
name is its own host for jackin (its own agent, records and files); several share a machine.

Setup, untimed: a git workspace of --files files (10 KiB each), one session per name
(`launch --on bench --count N`, a shell task that writes 1 MiB into its checkout), one warm-up
`du` and `gc`. Then each of --runs runs times, in turn, each as a whole fresh process:

  jackin du     `jackin-remote -i bench.toml du --on bench --json`: every root walked, every
                session's engine objects measured, concurrently over N connections
  jackin gc     `jackin-remote -i bench.toml gc --on bench --json` (a dry run: nothing removed)
  ssh du -s     `ssh -p PORT jackin@127.0.0.1 du -s ROOT` for each name, one after another (the
                root's size only: no sessions, no engine objects); the total wall

Medians (and p95), CPU seconds (the tool's process tree here, and inside the fleet containers:
sshd, agents, their idle dockerd), and the ratios against the sequential ssh baseline measured
in the same run. It also checks that jackin's root totals agree with `du -s` (both count a
hard-linked file once). Sessions are removed (`rm --force`) at the end. Results go to
.bench/du.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_common import (
    BENCH_DIR,
    ROOT,
    CpuMeter,
    Stats,
    jackin_cli,
    load_note,
    machine,
    timed_run,
)

sys.path.insert(0, str(ROOT))

from tests import fleet as fleet_mod

ROLE_DIR = ROOT / "roles" / "test-agent"
ROOTS = "~/.jackin-bench-du"
TASK = "head -c 1048576 /dev/urandom > bench.bin"


def inventory_text(names: list[str], hosts: list[Any], identity_file: Path) -> str:
    lines = ["# written by scripts/bench_du.py for one bench run", ""]
    for index, name in enumerate(names):
        host = hosts[index % len(hosts)]
        lines += [
            f"[hosts.{name}]",
            'address = "127.0.0.1"',
            f"port = {host.port}",
            'user = "jackin"',
            f"identity_file = {json.dumps(str(identity_file))}",
            f"host_key = {json.dumps(host.host_key)}",
            f'root = "{ROOTS}/{name}"',
            "capacity = 2",
            "",
        ]
    lines += ["[groups]", f"bench = {json.dumps(names)}", ""]
    return "\n".join(lines)


def make_workspace(path: Path, files: int) -> None:
    path.mkdir()
    for index in range(files):
        target = path / f"pkg{index % 10}" / f"file{index}.txt"
        target.parent.mkdir(exist_ok=True)
        target.write_bytes(os.urandom(10 * 1024))
    ident = ["-c", "user.name=bench", "-c", "user.email=bench@example.invalid"]
    for argv in (["init", "-q", "-b", "main"], ["add", "-A"], [*ident, "commit", "-qm", "bench"]):
        subprocess.run(["git", "-C", str(path), *argv], check=True)


def ssh_du(info: Any, host: Any, name: str) -> tuple[int, str]:
    """`du -s` of one name's root over a fresh OpenSSH connection: (KiB, the command)."""
    argv = info.ssh_argv(host, f"du -s {ROOTS}/{name}")
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise SystemExit(f"{shlex.join(argv)} failed: {done.stderr}")
    return int(done.stdout.split()[0]), shlex.join(argv)


def bench(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    result: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "machine": machine()}
    print(f"scripts/fleet up {args.machines} ...", flush=True)
    info = fleet_mod.fleet_up(args.machines)
    hosts = info.hosts[: args.machines]
    names = [f"bd{index:02d}" for index in range(1, args.hosts + 1)]
    by_name = {name: hosts[index % len(hosts)] for index, name in enumerate(names)}
    inventory = work / "bench.toml"
    inventory.write_text(inventory_text(names, hosts, info.identity_file))
    env = dict(os.environ, JACKIN_HOME=str(work / "jh"))
    workspace = work / "workspace"
    make_workspace(workspace, args.files)
    cli = [jackin_cli(), "-i", str(inventory)]

    def jackin(*command: str) -> tuple[float, dict[str, Any]]:
        wall, done = timed_run([*cli, *command, "--json"], env=env, cwd=work,
                               what=" ".join(command))  # fmt: skip
        data: dict[str, Any] = json.loads(done.stdout)
        return wall, data

    started, launched = jackin("launch", "--on", "bench", "--count", str(args.hosts), "--role",
                               str(ROLE_DIR), "--runtime", "shell", "--network", "none",
                               "--task", TASK, str(workspace))  # fmt: skip
    ids = [s["id"] for s in launched["sessions"] if s["error"] is None]
    placed = {s["host"] for s in launched["sessions"] if s["error"] is None}
    print(f"setup: {len(ids)} sessions on {len(placed)} names in {started:.1f} s", flush=True)
    try:
        warm_du = jackin("du", "--on", "bench")[0]
        warm_gc = jackin("gc", "--on", "bench")[0]
        print(f"warm-up: du {warm_du:.2f} s, gc {warm_gc:.2f} s", flush=True)
        samples: dict[str, list[float]] = {"du": [], "gc": [], "ssh": []}
        cpu: dict[str, list[tuple[float, float | None]]] = {key: [] for key in samples}
        meter = CpuMeter([h.container for h in hosts])
        agreement: list[float] = []
        command = ""

        def metered(key: str, work: Any) -> Any:
            local0, hosts0 = meter.read()
            wall, value = work()
            local1, hosts1 = meter.read()
            samples[key].append(wall)
            on_hosts = None if hosts0 is None or hosts1 is None else hosts1 - hosts0
            cpu[key].append((local1 - local0, on_hosts))
            return value

        def ssh_sequence() -> tuple[float, dict[str, int]]:
            nonlocal command
            start = time.perf_counter()
            found = {}
            for name in names:
                found[name], command = ssh_du(info, by_name[name], name)
            return time.perf_counter() - start, found

        for run in range(1, args.runs + 1):
            data = metered("du", lambda: jackin("du", "--on", "bench"))
            bad = [h["name"] for h in data["hosts"] if h["error"] is not None]
            if bad:
                raise SystemExit(f"du failed on {bad}")
            jackin_kib = {h["name"]: h["totals"]["root"]["bytes"] / 1024 for h in data["hosts"]}
            metered("gc", lambda: jackin("gc", "--on", "bench"))
            ssh_kib = metered("ssh", ssh_sequence)
            agreement.append(max(abs(jackin_kib[n] - ssh_kib[n]) / max(ssh_kib[n], 1)
                                 for n in names))  # fmt: skip
            print(f"run {run}: du {samples['du'][-1]:.2f} s, gc {samples['gc'][-1]:.2f} s, "
                  f"ssh du -s x{len(names)} {samples['ssh'][-1]:.2f} s", flush=True)  # fmt: skip
    finally:
        for session in ids:
            subprocess.run([*cli, "rm", "--force", session, "--json"], env=env, cwd=work,
                           capture_output=True, timeout=300)  # fmt: skip
    stats = {key: Stats.of(values) for key, values in samples.items()}
    result["machine"]["loadavg_end"] = list(os.getloadavg())
    result.update({
        "runs": args.runs, "names": names,
        "machines": [h.name for h in hosts], "roots": f"{ROOTS}/<name>",
        "sessions": len(ids), "workspace_files": args.files,
        "setup_launch_s": started, "warm_du_s": warm_du, "warm_gc_s": warm_gc,
        "du": {**stats["du"].as_dict(), **cpu_summary(cpu["du"])},
        "gc": {**stats["gc"].as_dict(), **cpu_summary(cpu["gc"])},
        "ssh_du_sequential": {**stats["ssh"].as_dict(), **cpu_summary(cpu["ssh"])},
        "ssh_command_example": command,
        "ratio_du_over_ssh": stats["du"].median / stats["ssh"].median,
        "ratio_gc_over_ssh": stats["gc"].median / stats["ssh"].median,
        "root_total_max_relative_difference": max(agreement),
    })  # fmt: skip
    return result


def cpu_summary(samples: list[tuple[float, float | None]]) -> dict[str, Any]:
    """CPU seconds here (the tool's process tree) and in the fleet containers, medians."""
    on_hosts = [h for _, h in samples if h is not None]
    return {
        "cpu_local_median_s": statistics.median(local for local, _ in samples),
        "cpu_hosts_median_s": statistics.median(on_hosts) if on_hosts else None,
        "cpu_samples_s": samples,
    }


def report(result: dict[str, Any]) -> str:
    count = len(result["names"])
    rows = [
        (f"jackin-remote du --on bench ({count} names)", result["du"]),
        (f"jackin-remote gc --on bench (dry run, {count} names)", result["gc"]),
        (f"ssh du -s ROOT, {count} in sequence", result["ssh_du_sequential"]),
    ]
    return "\n".join([
        f"du and gc over {count} inventory names on {len(result['machines'])} fleet machines, "
        f"{result['sessions']} sessions, whole processes, {result['runs']} runs "
        "(median / p95):",
        *(f"  {name:<48} {s['median_s']:7.2f} s / {s['p95_s']:6.2f} s   CPU here "
          f"{s['cpu_local_median_s']:.2f} s, hosts {_cpu(s['cpu_hosts_median_s'])}"
          for name, s in rows),
        f"  du / ssh-sequence = {result['ratio_du_over_ssh']:.2f}x   "
        f"gc / ssh-sequence = {result['ratio_gc_over_ssh']:.2f}x",
        f"  root totals: jackin vs du -s differ by at most "
        f"{100 * result['root_total_max_relative_difference']:.2f}%",
        load_note(result["machine"]),
    ])  # fmt: skip


def _cpu(value: float | None) -> str:
    return "?" if value is None else f"{value:.2f} s"


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--hosts", type=int, default=10, help="inventory names")
    parser.add_argument("--machines", type=int, default=3, help="fleet-1..M (not fleet-4)")
    parser.add_argument("--files", type=int, default=200, help="workspace files (10 KiB each)")
    args = parser.parse_args()
    if args.runs < 1 or args.hosts < 1 or not 1 <= args.machines <= 3 or args.files < 1:
        parser.error("--runs, --hosts and --files at least 1; --machines 1..3")
    BENCH_DIR.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="jkb-du-") as tmp:
        result = bench(args, Path(tmp))
    out = BENCH_DIR / "du.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(report(result))
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
