#!/usr/bin/env python3
"""Benchmark: launch latency (workspace sync plus sandbox start), one host and five.

    .venv/bin/python scripts/bench_launch.py [--runs 5] [--first-host 6]

Uses fleet-K..fleet-K+4 (K = --first-host; the default 6 keeps off fleet-1..4, which the test
suites use) under a host root of the bench's own, and a small git workspace (20 files). Every
launch is a whole `jackin-remote launch` process:

    jackin-remote -i bench.toml launch --on SEL --role roles/test-agent --runtime demo
        --task "write a.txt: hi" --network none --json WORKSPACE

Before each timed launch one workspace file changes (and is committed), so each launch really
syncs (an incremental rsync) rather than finding the host already in sync. Sessions are removed
(`rm --force`, untimed) after each measurement. Medians of --runs:

  one host      a launch on fleet-K. The first launch on a host uploads the role and builds
                its image (and deploys the agent under the bench root): that first launch is
                timed and reported on its own, not in the median.
  five, one     `launch --on fleet-K,..,fleet-K+4 --count 5`: one process, hosts in parallel
  five, seq     five `launch --on fleet-J` processes one after another (total wall)
  local         the one-host launch in local mode: the builtin `local` host with its own root
                (the laptop's docker engine; no SSH)

Results go to .bench/launch.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench_common import (
    BENCH_DIR,
    BENCH_ROOT,
    ROOT,
    Stats,
    bench_inventory,
    jackin_cli,
    load_note,
    local_inventory,
    machine,
    timed_run,
)

sys.path.insert(0, str(ROOT))

from jackin_remote.roles import image_tag, load_role
from tests import fleet as fleet_mod

ROLE_DIR = ROOT / "roles" / "test-agent"
WORKSPACE_FILES = 20
FANOUT = 5
LAUNCH_ARGS = ["--role", str(ROLE_DIR), "--runtime", "demo", "--task", "write a.txt: hi",
               "--network", "none", "--json"]  # fmt: skip


class Bench:
    """One bench run: its workspace, JACKIN_HOME and inventories, and the launch/rm commands."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.workspace = work / "workspace"
        # Short on purpose: OpenSSH's master socket lives under it and must fit AF_UNIX's
        # 108 bytes with its temporary suffix (see docs/benchmarks.md, known problems).
        self.env = dict(os.environ, JACKIN_HOME=str(work / "jh"))
        self.edits = 0

    # -- workspace ---------------------------------------------------------------------------
    def make_workspace(self) -> None:
        self.workspace.mkdir()
        for i in range(WORKSPACE_FILES):
            path = self.workspace / f"pkg{i % 4}" / f"mod{i}.py"
            path.parent.mkdir(exist_ok=True)
            path.write_text(f'"""Module {i}."""\n\nVALUE = {i}\n' + "# filler\n" * (i * 10))
        self.git("init", "-q", "-b", "main")
        self.commit("bench workspace")

    def git(self, *args: str) -> None:
        ident = ["-c", "user.name=bench", "-c", "user.email=bench@example.invalid"]
        subprocess.run(["git", "-C", str(self.workspace), *ident, *args], check=True)

    def commit(self, message: str) -> None:
        self.git("add", "-A")
        self.git("commit", "-q", "-m", message)

    def edit(self) -> None:
        """A one-file change, committed: the next launch has something to sync."""
        self.edits += 1
        with (self.workspace / "pkg0" / "mod0.py").open("a") as fh:
            fh.write(f"EDIT_{self.edits} = {self.edits}\n")
        self.commit(f"edit {self.edits}")

    # -- jackin-remote -----------------------------------------------------------------------
    def launch(self, inventory: Path, selector: str, count: int = 1) -> tuple[float, list[str]]:
        """Wall time of one launch process and the ids of the sessions it started."""
        argv = [jackin_cli(), "-i", str(inventory), "launch", "--on", selector, *LAUNCH_ARGS]
        if count > 1:
            argv += ["--count", str(count)]
        wall, done = timed_run([*argv, str(self.workspace)], env=self.env, cwd=self.work,
                               what="launch")  # fmt: skip
        sessions: list[dict[str, Any]] = json.loads(done.stdout)["sessions"]
        failed = [s for s in sessions if s["error"]]
        if failed or len(sessions) != count:
            raise SystemExit(f"launch on {selector}: {len(sessions)} sessions, failed: {failed}")
        wanted = set(selector.split(","))
        placed = {s["host"] for s in sessions}
        if count == len(wanted) and placed != wanted:
            raise SystemExit(f"launch --count {count} placed sessions on {sorted(placed)} only")
        return wall, [s["id"] for s in sessions]

    def rm(self, inventory: Path, ids: Sequence[str]) -> None:
        for session in ids:
            argv = [jackin_cli(), "-i", str(inventory), "rm", "--force", session, "--json"]
            timed_run(argv, env=self.env, cwd=self.work, what="rm")

    def launch_and_rm(self, inventory: Path, selector: str, count: int = 1) -> float:
        self.edit()
        wall, ids = self.launch(inventory, selector, count)
        self.rm(inventory, ids)
        return wall

    def sequential(self, inventory: Path, names: Sequence[str]) -> list[float]:
        """Wall of each launch process, one host after another (the total is what counts)."""
        self.edit()
        walls, ids = [], []
        for name in names:
            wall, started = self.launch(inventory, name)
            walls.append(wall)
            ids += started
        self.rm(inventory, ids)
        return walls


def image_present(tag: str, container: str | None) -> bool:
    """Whether a docker engine (a fleet host's own, or this machine's) has the image."""
    inspect = ["docker", "image", "inspect", tag]
    argv = ["docker", "exec", container, *inspect] if container else inspect
    return subprocess.run(argv, capture_output=True).returncode == 0


def bench(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    result: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "machine": machine()}
    last = args.first_host + FANOUT - 1
    print(f"scripts/fleet up {last} ...", flush=True)
    info = fleet_mod.fleet_up(last)
    hosts = info.hosts[args.first_host - 1 : last]
    names = [h.name for h in hosts]
    run = Bench(work)
    run.make_workspace()
    inventory = work / "bench.toml"
    inventory.write_text(bench_inventory(hosts, info.identity_file))
    local_inv = work / "local.toml"
    local_inv.write_text(local_inventory(work / "local-root"))
    tag = image_tag(load_role(str(ROLE_DIR)))
    before = {h.name: image_present(tag, h.container) for h in hosts}
    before["local"] = image_present(tag, None)

    # (a) one host: the first launch builds the role image there; then the steady state.
    first_one = run.launch_and_rm(inventory, names[0])
    print(f"first launch on {names[0]}: {first_one:.2f} s", flush=True)
    # (b) warm the other four hosts the same way, all at once (untimed for the medians).
    first_five = run.launch_and_rm(inventory, ",".join(names), FANOUT)
    print(f"first launch on {FANOUT} hosts (--count {FANOUT}): {first_five:.2f} s", flush=True)
    # (c) local mode, first launch.
    first_local = run.launch_and_rm(local_inv, "local")
    print(f"first launch in local mode: {first_local:.2f} s", flush=True)

    samples: dict[str, list[float]] = {"one": [], "parallel": [], "sequential": [], "local": []}
    sequential_parts: list[list[float]] = []
    for i in range(1, args.runs + 1):
        samples["one"].append(run.launch_and_rm(inventory, names[0]))
        samples["parallel"].append(run.launch_and_rm(inventory, ",".join(names), FANOUT))
        sequential_parts.append(run.sequential(inventory, names))
        samples["sequential"].append(sum(sequential_parts[-1]))
        samples["local"].append(run.launch_and_rm(local_inv, "local"))
        print(f"run {i}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in samples.items()),
              flush=True)  # fmt: skip

    stats = {key: Stats.of(values) for key, values in samples.items()}
    one, parallel = stats["one"].median, stats["parallel"].median
    result["machine"]["loadavg_end"] = list(os.getloadavg())
    result.update(
        {
            "runs": args.runs,
            "hosts": names,
            "host_root": BENCH_ROOT,
            "workspace_files": WORKSPACE_FILES,
            "role_image": tag,
            "image_present_before": before,
            "first_launch_one_host_s": first_one,
            "first_launch_five_hosts_s": first_five,
            "first_launch_local_s": first_local,
            "one_host": stats["one"].as_dict(),
            "five_hosts_one_process": stats["parallel"].as_dict(),
            "five_hosts_sequential": stats["sequential"].as_dict(),
            "five_hosts_sequential_each_s": sequential_parts,
            "local": stats["local"].as_dict(),
            "ratio_sequential_over_parallel": stats["sequential"].median / parallel,
            "ratio_parallel_over_one": parallel / one,
            "ratio_one_over_local": one / stats["local"].median,
        }
    )
    return result


def report(result: dict[str, Any]) -> str:
    host = result["hosts"][0]
    rows = [
        (f"one host ({host})", result["one_host"]),
        (f"{FANOUT} hosts, one process (--count {FANOUT})", result["five_hosts_one_process"]),
        (f"{FANOUT} hosts, {FANOUT} processes in sequence", result["five_hosts_sequential"]),
        ("local mode (builtin local host)", result["local"]),
    ]
    present = result["image_present_before"]
    built = ", ".join(f"{name} {'yes' if yes else 'no'}" for name, yes in present.items())
    return "\n".join(
        [
            f"launch, {result['workspace_files']}-file git workspace, whole processes, "
            f"{result['runs']} runs (median / p95):",
            *(f"  {name:<40} {s['median_s']:7.2f} s / {s['p95_s']:6.2f} s" for name, s in rows),
            f"  sequential / parallel = {result['ratio_sequential_over_parallel']:.2f}x   "
            f"parallel / one host = {result['ratio_parallel_over_one']:.2f}x   "
            f"ssh host / local = {result['ratio_one_over_local']:.2f}x",
            f"first launches: one host {result['first_launch_one_host_s']:.2f} s, "
            f"{FANOUT} hosts {result['first_launch_five_hosts_s']:.2f} s, "
            f"local {result['first_launch_local_s']:.2f} s",
            f"  role image {result['role_image']} present before the bench: {built}",
            load_note(result["machine"]),
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--first-host", type=int, default=6, help="use fleet-K..fleet-K+4")
    args = parser.parse_args()
    if args.runs < 1 or args.first_host < 1:
        parser.error("--runs and --first-host must be at least 1")
    BENCH_DIR.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="jkb-launch-") as tmp:
        result = bench(args, Path(tmp))
    out = BENCH_DIR / "launch.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(report(result))
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
