#!/usr/bin/env python3
"""Benchmark: the no-op workspace sync check vs plain rsync, over N fleet hosts.

    .venv/bin/python scripts/bench_sync.py [--hosts 10] [--files 5000] [--runs 5]

A git workspace of --files files is made in a temp dir and synced once to fleet-1..N
(`scripts/fleet up N` runs first). Then, median of --runs each:

  jackin cold   a fresh Python process that loads the inventory, scans the workspace, connects
                to every host, starts the agents and runs sync_workspace: all hosts in sync,
                so no rsync runs (what a CLI command without a daemon costs today)
  jackin warm   the same check inside one process whose connections and agents are up
                (what a daemon or a long command pays): scan + one status RPC per host
  rsync plain   `rsync -rlpt` of the same tree to every host in parallel, through an OpenSSH
                ControlMaster that is already up (warm), i.e. the usual "just rsync it";
                and the same with a fresh ssh login per rsync (cold, like the jackin cold run)

The workspace is committed and packed, as a cloned repository is.

Prints the medians and ratios and writes them to .bench/sync.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from jackin_remote.fleet import Pool  # noqa: E402
from jackin_remote.inventory.loader import load_inventory  # noqa: E402
from jackin_remote.sync import openssh_target, sync_workspace  # noqa: E402
from jackin_remote.transport.openssh import (  # noqa: E402
    ensure_master,
    openssh_argv,
    openssh_base_argv,
    rsync_destination,
    rsync_remote_shell,
    stop_master,
)
from jackin_remote.workspace import scan_workspace  # noqa: E402
from tests import fleet as fleet_mod  # noqa: E402

# The cold path, as its own process: imports, inventory, scan, connect, agents, status RPCs.
DRIVER = """
import asyncio, json, sys, time
t0 = time.perf_counter()
from pathlib import Path
from jackin_remote.fleet import Pool
from jackin_remote.inventory.loader import load_inventory
from jackin_remote.sync import sync_workspace
from jackin_remote.workspace import scan_workspace

async def main():
    inventory = load_inventory(sys.argv[1])
    hosts = [inventory.hosts[name] for name in sys.argv[3].split(",")]
    t1 = time.perf_counter()
    scan = scan_workspace(Path(sys.argv[2]))
    t2 = time.perf_counter()
    async with Pool(inventory) as pool:
        results = await sync_workspace(pool, hosts, scan)
    t3 = time.perf_counter()
    bad = [r.host.name for r in results if not r.ok or not r.value.skipped]
    print(json.dumps({"imports_s": t1 - t0, "scan_s": t2 - t1, "fleet_s": t3 - t2, "bad": bad}))

asyncio.run(main())
"""


def make_workspace(path: Path, files: int) -> None:
    rng = random.Random(5000)
    words = [f"token{i}" for i in range(500)]
    for i in range(files):
        rel = Path(f"pkg{i % 40}", f"mod{i % 7}", f"file{i}.py")
        (path / rel.parent).mkdir(parents=True, exist_ok=True)
        body = " ".join(rng.choice(words) for _ in range(rng.randint(40, 1200)))
        (path / rel).write_text(f"# {rel}\nDATA = '''{body}'''\n")
    git = ["git", "-C", str(path), "-c", "user.name=bench", "-c", "user.email=b@b"]
    subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "bench"], check=True)
    # Packed, as a cloned repository is: one pack, not 5,000 loose objects, travels.
    subprocess.run([*git, "repack", "-a", "-d", "-q"], check=True)
    subprocess.run([*git, "prune-packed"], check=True)


def run_driver(
    inventory: Path, workspace: Path, hosts: list[str], env: dict[str, str]
) -> dict[str, Any]:
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, str(inventory), str(workspace), ",".join(hosts)],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"driver failed:\n{done.stderr}")
    report: dict[str, Any] = json.loads(done.stdout)
    if report["bad"]:
        raise SystemExit(f"hosts not in sync (an rsync ran or failed): {report['bad']}")
    report["wall_s"] = wall
    return report


async def plain_rsync_all(argvs: list[list[str]]) -> float:
    start = time.perf_counter()
    procs = [
        await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
        )
        for argv in argvs
    ]
    for proc in procs:
        _, err = await proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"plain rsync failed: {err.decode()}")
    return time.perf_counter() - start


async def pool_cleanup(argv: list[str]) -> None:
    proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL)
    await proc.wait()


async def bench(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    if args.reuse:  # hosts another run already started: do not touch the fleet
        info = fleet_mod.load_state()
        usable = [h for h in info.hosts if h.name not in args.skip][: args.hosts]
        if len(usable) < args.hosts:
            raise SystemExit(f"only {len(usable)} usable hosts are running")
        info = fleet_mod.FleetInfo(info.inventory, info.known_hosts, info.identity_file, usable)
    else:
        info = fleet_mod.fleet_up(args.hosts)
    names = [h.name for h in info.hosts]
    workspace = work / "workspace"
    workspace.mkdir()
    t = time.perf_counter()
    make_workspace(workspace, args.files)
    print(f"workspace: {args.files} files made in {time.perf_counter() - t:.1f}s", flush=True)

    env = dict(os.environ, JACKIN_HOME=str(work / "jh"))
    os.environ["JACKIN_HOME"] = env["JACKIN_HOME"]
    inventory = load_inventory(info.inventory)
    hosts = [inventory.hosts[name] for name in names]
    scan = scan_workspace(workspace)

    async with Pool(inventory) as pool:
        t = time.perf_counter()
        initial = await sync_workspace(pool, hosts, scan)
        initial_s = time.perf_counter() - t
        failed = [r.error for r in initial if not r.ok]
        if failed:
            raise SystemExit(f"initial sync failed: {failed}")
        print(f"initial sync to {len(hosts)} hosts: {initial_s:.2f}s", flush=True)

        warm = []
        for _ in range(args.runs):
            t = time.perf_counter()
            check = await sync_workspace(pool, hosts, scan_workspace(workspace))
            warm.append(time.perf_counter() - t)
            assert all(r.value is not None and r.value.skipped for r in check)
        warm_rpc = []
        for _ in range(args.runs):
            t = time.perf_counter()
            await sync_workspace(pool, hosts, scan)
            warm_rpc.append(time.perf_counter() - t)

        # Cold processes run while this one idles: its connections cost them nothing.
        run_driver(info.inventory, workspace, names, env)  # builds the agent cache, untimed
        cold = [run_driver(info.inventory, workspace, names, env) for _ in range(args.runs)]

        targets = [await openssh_target(pool, host) for host in hosts]
        for target in targets:
            await ensure_master(target)
        argvs = [
            ["rsync", "-rlpt", "-e", rsync_remote_shell(openssh_base_argv(target)),
             f"{workspace}/", rsync_destination(target.host, "bench-plain/")]
            for target in targets
        ]  # fmt: skip
        await plain_rsync_all(argvs)  # the initial full copy, untimed
        plain = [await plain_rsync_all(argvs) for _ in range(args.runs)]
        fresh_argvs = [
            ["rsync", "-rlpt", "-e", rsync_remote_shell(openssh_base_argv(target, master=False)),
             f"{workspace}/", rsync_destination(target.host, "bench-plain/")]
            for target in targets
        ]  # fmt: skip
        plain_fresh = [await plain_rsync_all(fresh_argvs) for _ in range(args.runs)]
        cleanup = f"rm -rf bench-plain .jackin/workspaces/{scan.name}"
        for target in targets:
            await pool_cleanup(openssh_argv(target, cleanup))
            await stop_master(target)

    cold_wall = statistics.median(r["wall_s"] for r in cold)
    result = {
        "hosts": len(hosts),
        "files": len(scan.files),
        "workspace_files": args.files,
        "bytes": scan.total_bytes,
        "runs": args.runs,
        "initial_sync_s": initial_s,
        "jackin_cold_s": cold_wall,
        "jackin_cold_parts_s": {
            key: statistics.median(r[key] for r in cold)
            for key in ("imports_s", "scan_s", "fleet_s")
        },
        "jackin_warm_s": statistics.median(warm),
        "jackin_warm_rpc_only_s": statistics.median(warm_rpc),
        "plain_rsync_s": statistics.median(plain),
        "plain_rsync_fresh_ssh_s": statistics.median(plain_fresh),
        "ratio_plain_over_cold": statistics.median(plain) / cold_wall,
        "ratio_plain_over_warm": statistics.median(plain) / statistics.median(warm),
        "ratio_plain_fresh_over_cold": statistics.median(plain_fresh) / cold_wall,
        "load_average": os.getloadavg(),
        "samples": {
            "cold": [r["wall_s"] for r in cold],
            "warm": warm,
            "plain": plain,
            "plain_fresh_ssh": plain_fresh,
        },
    }
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hosts", type=int, default=10)
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--reuse", action="store_true", help="use running hosts as they are")
    parser.add_argument("--skip", nargs="*", default=[], help="with --reuse: hosts to leave out")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="jk-bench-") as tmp:
        result = asyncio.run(bench(args, Path(tmp)))
    out = ROOT / ".bench" / "sync.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    parts = result["jackin_cold_parts_s"]
    print(
        f"no-op sync check, {result['files']} files ({result['bytes'] / 1e6:.1f} MB), "
        f"{result['hosts']} hosts, median of {args.runs}:\n"
        f"  jackin cold process  {result['jackin_cold_s'] * 1000:8.0f} ms"
        f"  (imports {parts['imports_s'] * 1000:.0f}, scan {parts['scan_s'] * 1000:.0f}, "
        f"connect+agents+RPC {parts['fleet_s'] * 1000:.0f})\n"
        f"  jackin warm (scan+RPC) {result['jackin_warm_s'] * 1000:6.0f} ms"
        f"  (RPC only {result['jackin_warm_rpc_only_s'] * 1000:.1f} ms)\n"
        f"  plain rsync, warm CM {result['plain_rsync_s'] * 1000:8.0f} ms\n"
        f"  plain rsync, fresh ssh {result['plain_rsync_fresh_ssh_s'] * 1000:6.0f} ms\n"
        f"  plain / jackin cold = {result['ratio_plain_over_cold']:.2f}x, "
        f"plain / jackin warm = {result['ratio_plain_over_warm']:.1f}x, "
        f"plain fresh ssh / jackin cold = {result['ratio_plain_fresh_over_cold']:.2f}x\n"
        f"  (load average {result['load_average'][0]:.1f} on {os.cpu_count()} cpus)\n"
        f"written to {out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
