#!/usr/bin/env python3
"""Benchmark: `hosts check` fanned out over N fleet hosts, against Fabric and Ansible.

    .venv/bin/python scripts/bench_hosts.py [--hosts 10] [--runs 5] [--rounds 50]

`scripts/fleet up max(N, 20)` runs first (it only ever adds hosts). Every run below is a whole,
fresh process (new interpreter, new SSH connections) against the same hosts fleet-1..N, and the
three tools take turns within each run so that load from other users of the machine hits them
alike. Medians (and p95) of --runs:

  jackin check  `jackin-remote -i fleet.toml hosts check --on fleet-1,..,fleet-N --json`:
                connect, start the host agent (already deployed by the untimed warm-up run),
                3 pings and the facts RPC, per host
  fabric        `fabric.ThreadingGroup(...).run("uptime")` in a fresh python, host keys checked
                against .fleet/known_hosts (RejectPolicy instead of Fabric's AutoAddPolicy)
  ansible       `ansible all -m ping -f N` (ansible-core in its own venv, .bench/ansible-venv,
                installed with pip on first use), its default ssh args (ControlMaster within
                the run, a fresh ControlPath dir per run so every run is cold) plus
                StrictHostKeyChecking against .fleet/known_hosts
  phases        diagnostic only: a fresh python doing what `hosts check` does, one phase at a
                time with a barrier in between (import, connect, agent start, ping, facts)

Then the warm case: one process holds connections and started agents to N hosts (and to 20)
and times --rounds rounds of one `ping` RPC to every host at once.

Goals (from the issue): a full `hosts check` is no slower than Fabric's bare `uptime` (so at
least 10x faster than Ansible's ping), and a warm RPC round to 20 hosts takes at most 20 ms.
A miss prints MISS; the exit status is 0 either way. Results go to .bench/hosts.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
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
    machine,
    timed_run,
)

sys.path.insert(0, str(ROOT))

from jackin_remote.fleet import Pool
from jackin_remote.inventory import load_inventory, select_hosts
from tests import fleet as fleet_mod

ANSIBLE_VENV = BENCH_DIR / "ansible-venv"
ANSIBLE_SPEC = "ansible-core"
WARM_SIZE = 20  # the goal for warm RPC rounds is stated for 20 hosts
WARM_GOAL_S = 0.020
ANSIBLE_OVER_JACKIN_GOAL = 10.0
# Ansible's own default ssh_args, plus strict host keys from the fleet's known_hosts.
ANSIBLE_DEFAULT_SSH_ARGS = "-C -o ControlMaster=auto -o ControlPersist=60s"

FABRIC_DRIVER = """
import json, sys, time
t0 = time.perf_counter()
import paramiko
from fabric import ThreadingGroup
known_hosts, key, *targets = sys.argv[1:]
group = ThreadingGroup(
    *targets,
    connect_kwargs={"key_filename": key, "look_for_keys": False, "allow_agent": False},
)
for conn in group:
    # Fabric auto-adds unknown host keys; check them as jackin and OpenSSH do here.
    conn.client.load_host_keys(known_hosts)
    conn.client.set_missing_host_key_policy(paramiko.RejectPolicy())
t1 = time.perf_counter()
results = group.run("uptime", hide=True)
t2 = time.perf_counter()
group.close()
ok = sum(1 for r in results.values() if r.ok and "load average" in r.stdout)
print(json.dumps({"imports_s": t1 - t0, "run_s": t2 - t1, "ok": ok}))
"""

# `hosts check`'s work, one phase at a time, to show where a cold check spends its time.
PHASES_DRIVER = """
import asyncio, json, sys, time
t0 = time.perf_counter()
from jackin_remote.fleet import Pool
from jackin_remote.inventory import load_inventory, select_hosts

async def main():
    inventory = load_inventory(sys.argv[1])
    hosts = select_hosts(inventory, sys.argv[2])
    marks = {"imports_s": time.perf_counter() - t0}
    async with Pool(inventory) as pool:
        t = time.perf_counter()
        await asyncio.gather(*(pool.link(h) for h in hosts))
        marks["connect_s"] = time.perf_counter() - t
        t = time.perf_counter()
        links = await asyncio.gather(*(pool.agent(h) for h in hosts))
        marks["agent_start_s"] = time.perf_counter() - t
        t = time.perf_counter()
        await asyncio.gather(*(link.agent.call("ping") for link in links))
        marks["first_ping_s"] = time.perf_counter() - t
        t = time.perf_counter()
        await asyncio.gather(*(link.agent.call("facts") for link in links))
        marks["first_facts_s"] = time.perf_counter() - t
        t = time.perf_counter()
        await asyncio.gather(*(link.agent.call("facts") for link in links))
        marks["second_facts_s"] = time.perf_counter() - t
    print(json.dumps(marks))

asyncio.run(main())
"""


# -- jackin ------------------------------------------------------------------------------------
def jackin_check(
    inventory: Path, selector: str, count: int, env: dict[str, str]
) -> tuple[float, list[dict[str, Any]]]:
    argv = [jackin_cli(), "-i", str(inventory), "hosts", "check", "--on", selector, "--json"]
    wall, done = timed_run(argv, env=env, cwd=ROOT, what="jackin-remote hosts check")
    hosts: list[dict[str, Any]] = json.loads(done.stdout)["hosts"]
    bad = [h["name"] for h in hosts if h["status"] != "ok" or h["error"] is not None]
    if bad or len(hosts) != count:
        raise SystemExit(f"hosts check: {len(hosts)} hosts answered, not ok: {bad}\n{done.stdout}")
    return wall, hosts


def jackin_phases(inventory: Path, selector: str, env: dict[str, str]) -> dict[str, float]:
    argv = [sys.executable, "-c", PHASES_DRIVER, str(inventory), selector]
    wall, done = timed_run(argv, env=env, cwd=ROOT, what="phases driver")
    marks: dict[str, float] = json.loads(done.stdout)
    marks["wall_s"] = wall
    return marks


async def warm_rounds(inventory: Path, selector: str, rounds: int) -> tuple[float, list[float]]:
    """(seconds to connect and start every agent, per-round seconds of one ping to all)."""
    inv = load_inventory(inventory)
    hosts = select_hosts(inv, selector)
    async with Pool(inv) as pool:
        start = time.perf_counter()
        links = await asyncio.gather(*(pool.agent(h) for h in hosts))
        setup = time.perf_counter() - start
        for _ in range(5):  # first calls pay one-off costs (imports, buffers): not measured
            await asyncio.gather(*(link.agent.call("ping") for link in links))
        samples = []
        for _ in range(rounds):
            start = time.perf_counter()
            await asyncio.gather(*(link.agent.call("ping") for link in links))
            samples.append(time.perf_counter() - start)
    return setup, samples


# -- Fabric ------------------------------------------------------------------------------------
def fabric_run(info: fleet_mod.FleetInfo, hosts: Sequence[fleet_mod.FleetHost]) -> float:
    targets = [f"{fleet_mod.USER}@{fleet_mod.ADDRESS}:{h.port}" for h in hosts]
    argv = [sys.executable, "-c", FABRIC_DRIVER, str(info.known_hosts), str(info.identity_file)]
    wall, done = timed_run([*argv, *targets], env=dict(os.environ), cwd=ROOT, what="fabric")
    ok = json.loads(done.stdout)["ok"]
    if ok != len(hosts):
        raise SystemExit(f"fabric: only {ok} of {len(hosts)} hosts ran uptime")
    return wall


# -- Ansible -----------------------------------------------------------------------------------
def ensure_ansible() -> Path:
    """ansible in its own venv, so the product's venv never carries it."""
    ansible = ANSIBLE_VENV / "bin" / "ansible"
    if ansible.exists():
        return ansible
    print(f"installing {ANSIBLE_SPEC} into {ANSIBLE_VENV} (once)...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(ANSIBLE_VENV)], check=True)
    pip = [str(ANSIBLE_VENV / "bin" / "python"), "-m", "pip", "install", "-q", ANSIBLE_SPEC]
    subprocess.run(pip, check=True)
    return ansible


def ansible_version(ansible: Path) -> str:
    done = subprocess.run([str(ansible), "--version"], capture_output=True, text=True)
    return done.stdout.splitlines()[0] if done.returncode == 0 else "unknown"


def ansible_inventory(info: fleet_mod.FleetInfo, hosts: Sequence[fleet_mod.FleetHost]) -> str:
    lines = ["[fleet]"]
    lines += [f"{h.name} ansible_host={fleet_mod.ADDRESS} ansible_port={h.port}" for h in hosts]
    lines += [
        "[fleet:vars]",
        f"ansible_user={fleet_mod.USER}",
        f"ansible_ssh_private_key_file={info.identity_file}",
        "ansible_python_interpreter=/usr/bin/python3",
    ]
    return "\n".join(lines) + "\n"


def ansible_env(work: Path, known_hosts: Path, control_dir: Path) -> dict[str, str]:
    ssh_args = (
        f"{ANSIBLE_DEFAULT_SSH_ARGS} -F /dev/null -o IdentitiesOnly=yes "
        f"-o UserKnownHostsFile={known_hosts} -o StrictHostKeyChecking=yes"
    )
    return dict(
        os.environ,
        ANSIBLE_HOME=str(work / "ansible-home"),
        ANSIBLE_LOCAL_TEMP=str(work / "ansible-tmp"),
        ANSIBLE_SSH_CONTROL_PATH_DIR=str(control_dir),
        ANSIBLE_SSH_ARGS=ssh_args,
        ANSIBLE_HOST_KEY_CHECKING="True",
        ANSIBLE_DEPRECATION_WARNINGS="False",
        ANSIBLE_NOCOLOR="1",
    )


def ansible_ping(
    ansible: Path, inventory: Path, known_hosts: Path, count: int, work: Path, run: int
) -> float:
    control_dir = work / f"ansible-cp-{run}"  # fresh: no master survives from an earlier run
    control_dir.mkdir()
    env = ansible_env(work, known_hosts, control_dir)
    argv = [str(ansible), "all", "-i", str(inventory), "-m", "ping", "-f", str(count)]
    try:
        wall, done = timed_run(argv, env=env, cwd=work, what="ansible ping")
    finally:
        for socket in control_dir.iterdir():  # ControlPersist masters: end them, untimed
            subprocess.run(
                ["ssh", "-o", f"ControlPath={socket}", "-O", "exit", "unused"],
                capture_output=True,
                timeout=30,
            )
    pongs = done.stdout.count('"ping": "pong"')
    if pongs != count:
        raise SystemExit(f"ansible: {pongs} of {count} hosts answered pong\n{done.stdout}")
    return wall


# -- report ------------------------------------------------------------------------------------
def versions() -> dict[str, str]:
    import asyncssh
    import fabric
    import paramiko  # type: ignore[import-untyped]

    return {
        "asyncssh": asyncssh.__version__,
        "fabric": fabric.__version__,
        "paramiko": paramiko.__version__,
    }


def goal(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def report(result: dict[str, Any]) -> str:
    n = result["hosts"]
    rows = [
        ("jackin hosts check (cold process)", result["jackin_check"]),
        ("fabric ThreadingGroup uptime", result["fabric_uptime"]),
        ("ansible all -m ping", result["ansible_ping"]),
    ]
    lines = [
        f"{n} hosts, {result['runs']} runs, whole fresh processes (median / p95):",
        *(f"  {name:<36} {s['median_s']:7.2f} s / {s['p95_s']:6.2f} s" for name, s in rows),
        f"  jackin / fabric = {result['ratio_jackin_over_fabric']:.2f}x   "
        f"ansible / jackin = {result['ratio_ansible_over_jackin']:.1f}x",
        f"  first check (agent deploy on {result['warmup']['deployed']} hosts): "
        f"{result['warmup']['wall_s']:.2f} s",
        "  cold check by phase (median, barrier between phases): "
        + ", ".join(f"{k.removesuffix('_s')} {v:.2f}" for k, v in result["phases"].items()),
        "warm RPC round, one ping to every host over held connections "
        f"({result['rounds']} rounds, median / p95):",
    ]
    for size, warm in result["warm"].items():
        lines.append(
            f"  {size:>3} hosts  {warm['median_s'] * 1000:7.2f} ms / {warm['p95_s'] * 1000:6.2f} ms"
            f"   (connect + start agents first: {warm['setup_s']:.2f} s)"
        )
    lines.append("goals:")
    lines += [f"  {g['verdict']}  {g['goal']}: {g['measured']}" for g in result["goals"]]
    if result["deploys_in_timed_runs"]:
        lines.append(f"  note: {result['deploys_in_timed_runs']} agent deploys in timed runs")
    lines.append(load_note(result["machine"]))
    return "\n".join(lines)


def goals(result: dict[str, Any]) -> list[dict[str, str]]:
    jackin = result["jackin_check"]["median_s"]
    fabric = result["fabric_uptime"]["median_s"]
    ratio = result["ratio_ansible_over_jackin"]
    out = [
        {
            "goal": "hosts check no slower than Fabric's bare uptime",
            "measured": f"{jackin:.2f} s vs {fabric:.2f} s",
            "verdict": goal(jackin <= fabric),
        },
        {
            "goal": f"hosts check >= {ANSIBLE_OVER_JACKIN_GOAL:.0f}x faster than ansible ping",
            "measured": f"{ratio:.1f}x",
            "verdict": goal(ratio >= ANSIBLE_OVER_JACKIN_GOAL),
        },
    ]
    warm = result["warm"].get(str(WARM_SIZE))
    if warm is not None:
        out.append(
            {
                "goal": f"warm RPC round to {WARM_SIZE} hosts <= {WARM_GOAL_S * 1000:.0f} ms",
                "measured": f"median {warm['median_s'] * 1000:.1f} ms, "
                f"p95 {warm['p95_s'] * 1000:.1f} ms",
                "verdict": goal(warm["median_s"] <= WARM_GOAL_S),
            }
        )
    return out


# -- main --------------------------------------------------------------------------------------
def bench(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    result: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "machine": machine()}
    ansible = ensure_ansible()
    sizes = sorted({args.hosts, WARM_SIZE})
    print(f"scripts/fleet up {max(sizes)} ...", flush=True)
    info = fleet_mod.fleet_up(max(sizes))
    hosts = info.hosts[: args.hosts]
    inventory = work / "bench.toml"
    inventory.write_text(bench_inventory(hosts, info.identity_file))
    warm_inventory = work / "warm.toml"
    warm_inventory.write_text(bench_inventory(info.hosts[: max(sizes)], info.identity_file))
    env = dict(os.environ, JACKIN_HOME=str(work / "jh"))
    os.environ["JACKIN_HOME"] = env["JACKIN_HOME"]  # this process's own Pool, for warm rounds
    ansible_inv = work / "ansible-hosts.ini"
    ansible_inv.write_text(ansible_inventory(info, hosts))

    # Untimed warm-up: deploys the agent under the bench root where it is missing, fills
    # jackin's agent cache, and lets every tool load its files into the page cache once.
    warm_wall, warm_hosts = jackin_check(inventory, "bench", len(hosts), env)
    deployed = sum(1 for h in warm_hosts if h["agent"]["deployed"])
    print(f"warm-up check: {warm_wall:.2f} s (agent deployed on {deployed} hosts)", flush=True)
    fabric_run(info, hosts)
    ansible_ping(ansible, ansible_inv, info.known_hosts, len(hosts), work, 0)

    samples: dict[str, list[float]] = {"jackin": [], "fabric": [], "ansible": []}
    phases: list[dict[str, float]] = []
    redeployed = 0  # should stay 0: the agent code changed under the bench if not
    for run in range(1, args.runs + 1):
        wall, checked = jackin_check(inventory, "bench", len(hosts), env)
        samples["jackin"].append(wall)
        redeployed += sum(1 for h in checked if h["agent"]["deployed"])
        samples["fabric"].append(fabric_run(info, hosts))
        samples["ansible"].append(
            ansible_ping(ansible, ansible_inv, info.known_hosts, len(hosts), work, run)
        )
        phases.append(jackin_phases(inventory, "bench", env))
        print(
            f"run {run}: jackin {samples['jackin'][-1]:.2f} s, fabric {samples['fabric'][-1]:.2f}"
            f" s, ansible {samples['ansible'][-1]:.2f} s",
            flush=True,
        )

    warm: dict[str, Any] = {}
    for size in sizes:
        names = ",".join(h.name for h in info.hosts[:size])
        setup, rounds = asyncio.run(warm_rounds(warm_inventory, names, args.rounds))
        warm[str(size)] = {**Stats.of(rounds).as_dict(), "setup_s": setup}

    jackin, fabric = Stats.of(samples["jackin"]), Stats.of(samples["fabric"])
    ansible_stats = Stats.of(samples["ansible"])
    result["machine"]["loadavg_end"] = list(os.getloadavg())
    result.update(
        {
            "hosts": len(hosts),
            "runs": args.runs,
            "rounds": args.rounds,
            "host_root": BENCH_ROOT,
            "versions": {**versions(), "ansible": ansible_version(ansible)},
            "warmup": {"wall_s": warm_wall, "deployed": deployed},
            "deploys_in_timed_runs": redeployed,
            "jackin_check": jackin.as_dict(),
            "fabric_uptime": fabric.as_dict(),
            "ansible_ping": ansible_stats.as_dict(),
            "ratio_jackin_over_fabric": jackin.median / fabric.median,
            "ratio_ansible_over_jackin": ansible_stats.median / jackin.median,
            "phases": {key: statistics.median(p[key] for p in phases) for key in phases[0]},
            "warm": warm,
        }
    )
    result["goals"] = goals(result)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--hosts", type=int, default=10, help="hosts for the cold runs")
    parser.add_argument("--runs", type=int, default=5, help="cold runs per tool")
    parser.add_argument("--rounds", type=int, default=50, help="warm RPC rounds")
    args = parser.parse_args()
    if args.hosts < 1 or args.runs < 1 or args.rounds < 1:
        parser.error("--hosts, --runs and --rounds must be at least 1")
    BENCH_DIR.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="jkb-hosts-") as tmp:
        result = bench(args, Path(tmp))
    out = BENCH_DIR / "hosts.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(report(result))
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
