#!/usr/bin/env python3
"""Benchmark: how the host agent reads running sessions' CPU and memory for `ls`.

    .venv/bin/python scripts/bench_resources.py [--sessions 3] [--rounds 7]

Local mode, no fleet. Setup (untimed): a temporary directory holding an inventory whose `local`
host keeps its root under it, HOME and JACKIN_HOME, and a throwaway git workspace; then
--sessions sessions, each launched with

    python -m jackin_remote launch --role roles/test-agent --runtime shell --network none
        --task "sleep 900" --json WORKSPACE

One untimed `ls --json` names their containers. Each of --rounds rounds then measures, in an
order that rotates from round to round:

  docker stats    the old path: `_stats` of agent_host/sessions.py (the engine's `docker stats`,
                  stream=False) for every container, in a thread pool of up to 8, as the
                  fallback in `_attach_stats` runs it; containers from the docker SDK
  resources       the new path: agent_host/resources.py `sample(...)` over
                  Target(session id, State.Pid, container id): the cgroup files, one short wait
  ls --json       a whole `python -m jackin_remote ls --json` process with the sessions running
                  (one that exits 3, a host error, is run again: on an engine shared with other
                  roots, a container can vanish while `ls` lists them all)

Wall time and CPU seconds: time.process_time() of this process for the two in-process paths
(the docker engine's own work for `docker stats` is in dockerd, not counted), and the child's
rusage from os.wait4 for `ls --json` (it includes the agent process it waits for). Medians of
the rounds, and the ratio new/old. The comparison means something only if `sample` read every
container's cgroup (its `unread` list empty): the script says which layout it read (v1 or v2
files, per session) and warns when any session was left to docker.

Always cleans up (in a `finally`): `rm --force`, then `rm --purge`, for every session, then the
temporary directory. Results go to .bench/resources.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench_common import BENCH_DIR, ROOT, Stats, load_note, machine

sys.path.insert(0, str(ROOT))

import docker

from agent_host import resources
from agent_host.sessions import _stats
from agent_host.wire import MANAGED_FILTER

ROLE_DIR = ROOT / "roles" / "test-agent"
LAUNCH_ARGS = ["--role", str(ROLE_DIR), "--runtime", "shell", "--network", "none",
               "--task", "sleep 900", "--json"]  # fmt: skip
LS_TRIES = 3
OLD, NEW, LS = "docker stats (old)", "resources.sample (new)", "ls --json (whole process)"


class Laptop:
    """The temporary laptop and host root, and the CLI run against them."""

    def __init__(self, work: Path, sessions: int) -> None:
        self.work = work
        self.workspace = work / "ws"
        inventory = work / "inventory"
        for folder in (inventory, work / "home", self.workspace):
            folder.mkdir(parents=True)
        root = json.dumps(str(work / "host-root"))
        (inventory / "local.toml").write_text(
            f'[hosts.local]\ntransport = "local"\nroot = {root}\ncapacity = {max(sessions, 4)}\n'
        )
        env = {key: value for key, value in os.environ.items() if key not in ("COLUMNS", "LINES")}
        env.update(JACKIN_HOME=str(work / "jh"), HOME=str(work / "home"),
                   JACKIN_INVENTORY=str(inventory))  # fmt: skip
        self.env = env
        self.ids: list[str] = []

    def make_workspace(self) -> None:
        (self.workspace / "README.md").write_text("bench workspace\n")
        ident = ["-c", "user.name=bench", "-c", "user.email=bench@example.invalid"]
        for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "init"]):
            subprocess.run(["git", "-C", str(self.workspace), *ident, *args], check=True,
                           env=self.env, capture_output=True)  # fmt: skip

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "jackin_remote", *args], env=self.env, cwd=self.work,
            capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        if check and done.returncode != 0:
            raise SystemExit(f"jackin-remote {' '.join(args)} exited {done.returncode}\n"
                             f"{done.stdout}{done.stderr}")  # fmt: skip
        return done

    def launch(self) -> str:
        done = self.cli("launch", *LAUNCH_ARGS, str(self.workspace), check=False)
        try:
            sessions = json.loads(done.stdout)["sessions"]
        except (ValueError, KeyError):
            sessions = []
        self.ids += [s["id"] for s in sessions if s.get("id")]
        if done.returncode != 0 or len(sessions) != 1 or sessions[0].get("error"):
            raise SystemExit(f"launch exited {done.returncode}\n{done.stdout}{done.stderr}")
        return str(sessions[0]["id"])

    def listed(self, check: bool = True) -> list[dict[str, Any]]:
        """`ls --json`'s sessions. Without `check`, also those of a run that exited 3 (a host
        error: on the shared engine another root's container may vanish mid-listing)."""
        sessions: list[dict[str, Any]] = json.loads(self.cli("ls", "--json", check=check).stdout)[
            "sessions"
        ]
        return sessions

    def cleanup(self) -> list[str]:
        """Remove every session of this root (`rm --force`, then `rm --purge`) and the
        directory; what could not be removed."""
        problems = []
        ids = list(dict.fromkeys(self.ids))
        try:
            ids += [s["id"] for s in self.listed(check=False) if s["id"] not in ids]
        except (ValueError, KeyError, subprocess.TimeoutExpired) as exc:
            problems.append(f"ls before cleanup: {str(exc)[:300]}")
        for flag in ("--force", "--purge"):
            for session in ids:
                try:
                    done = self.cli("rm", flag, session, "--json", check=False)
                except subprocess.TimeoutExpired as exc:
                    problems.append(f"rm {flag} {session}: {exc}")
                    continue
                if done.returncode != 0:
                    problems.append(f"rm {flag} {session} exited {done.returncode}: "
                                    f"{(done.stdout + done.stderr).strip()[:300]}")  # fmt: skip
        left: list[str] = []
        shutil.rmtree(self.work, onerror=lambda _f, path, _e: left.append(path))
        if left:
            problems.append(f"{len(left)} paths left under {self.work}, e.g. {left[0]}")
        return problems


def spawn(argv: Sequence[str], env: dict[str, str], cwd: Path) -> tuple[float, float, int, str]:
    """(wall seconds, CPU seconds from os.wait4, exit status, stdout) of one whole process."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(list(argv), env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=err)  # fmt: skip
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if proc.returncode not in (0, 3):  # 3: a host error, reported in the JSON
        raise SystemExit(f"{list(argv)} failed ({proc.returncode}):\n{stdout}{stderr}")
    return wall, usage.ru_utime + usage.ru_stime, proc.returncode, stdout


def in_process(work: Callable[[], Any]) -> tuple[float, float, Any]:
    """(wall seconds, this process's CPU seconds, result) of one call."""
    start, cpu = time.perf_counter(), time.process_time()
    result = work()
    return time.perf_counter() - start, time.process_time() - cpu, result


def docker_stats(containers: Sequence[Any]) -> list[dict[str, Any]]:
    """The old path, as `_attach_stats` runs it for the sessions sample() could not read."""
    with ThreadPoolExecutor(max_workers=min(8, len(containers))) as pool:
        return list(pool.map(_stats, containers))


def cgroup_layout() -> str:
    root = Path(resources.CGROUP_ROOT)
    if (root / "cgroup.controllers").is_file():
        return "v2 (unified)"
    if (root / "unified").is_dir():
        return "v1 hybrid (v1 controllers, a unified mount beside them)"
    return "v1"


def uptime() -> str:
    done = subprocess.run(["uptime"], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    if args.sessions < 1 or args.rounds < 1:
        raise SystemExit("--sessions and --rounds must be at least 1")
    info = machine()
    info["uptime_start"] = uptime()
    laptop = Laptop(Path(tempfile.mkdtemp(prefix="jackin-bench-res-")), args.sessions)
    try:
        laptop.make_workspace()
        for _ in range(args.sessions):
            laptop.launch()
        listed = {s["id"]: s for s in laptop.listed()}  # untimed: also warms the agent
        not_running = {sid: listed.get(sid, {}).get("state") for sid in laptop.ids
                       if listed.get(sid, {}).get("state") != "running"}  # fmt: skip
        if not_running:
            raise SystemExit(f"sessions not running after launch: {not_running}")
        client = docker.from_env()
        containers = [client.containers.get(listed[sid]["container"]) for sid in laptop.ids]
        targets = [resources.Target(sid, (c.attrs.get("State") or {}).get("Pid"), c.id)
                   for sid, c in zip(laptop.ids, containers, strict=True)]  # fmt: skip
        managed = len(client.containers.list(all=True, sparse=True,
                                             filters={"label": MANAGED_FILTER}))  # fmt: skip
        places = {t.session_id: resources.groups(t.pid, t.container_id) for t in targets}
        ls_argv = [sys.executable, "-m", "jackin_remote", "ls", "--json"]
        walls: dict[str, list[float]] = {OLD: [], NEW: [], LS: []}
        cpus: dict[str, list[float]] = {OLD: [], NEW: [], LS: []}
        unread: set[str] = set()
        last: dict[str, Any] = {}
        ls_filled: list[int] = []
        ls_errors: list[str | None] = []
        order = [OLD, NEW, LS]
        for round_ in range(args.rounds):
            turn = order[round_ % 3 :] + order[: round_ % 3]  # rotate who goes first
            for name in turn:
                if name == OLD:
                    wall, cpu, result = in_process(lambda: docker_stats(containers))
                    last[OLD] = dict(zip(laptop.ids, result, strict=True))
                elif name == NEW:
                    wall, cpu, sampled = in_process(lambda: resources.sample(targets))
                    unread |= set(sampled.unread)
                    last[NEW] = sampled.stats
                else:
                    for _ in range(LS_TRIES):  # a host error is not a sample: run it again
                        wall, cpu, code, stdout = spawn(ls_argv, laptop.env, laptop.work)
                        if code == 0:
                            break
                        ls_errors.append(json.loads(stdout)["hosts"][0].get("error"))
                    else:
                        raise SystemExit(f"ls --json: a host error {LS_TRIES} times: {ls_errors}")
                    sessions = json.loads(stdout)["sessions"]
                    ls_filled.append(sum(s.get("memory_bytes") is not None for s in sessions))
                walls[name].append(wall)
                cpus[name].append(cpu)
    finally:
        problems = laptop.cleanup()
        for problem in problems:
            print(f"cleanup: {problem}", file=sys.stderr)
    info["loadavg_end"] = list(os.getloadavg())
    info["uptime_end"] = uptime()

    rows: dict[str, dict[str, Any]] = {}
    for name in walls:
        rows[name] = {**Stats.of(walls[name]).as_dict(),
                      "cpu_median_s": statistics.median(cpus[name]),
                      "cpu_samples_s": cpus[name]}  # fmt: skip
    old, new = rows[OLD], rows[NEW]
    cpu_old = old["cpu_median_s"]
    ratio = {"wall": new["median_s"] / old["median_s"],
             "cpu": new["cpu_median_s"] / cpu_old if cpu_old else None}  # fmt: skip
    read_by = {sid: None if where is None else ("v1" if where.v1 else "v2")
               for sid, where in places.items()}  # fmt: skip
    valid = not unread and all(read_by.values())
    result = {
        "sessions": args.sessions, "rounds": args.rounds, "cgroup_layout": cgroup_layout(),
        "sample_read": read_by, "sample_unread": sorted(unread), "comparison_valid": valid,
        "interval_s": resources.INTERVAL, "ls_sessions_with_memory": ls_filled,
        "ls_host_errors_retried": ls_errors, "managed_containers_on_engine": managed,
        "rows": rows, "ratio_new_over_old": ratio, "last_values": last, "machine": info,
        "cleanup_problems": problems,
    }  # fmt: skip
    BENCH_DIR.mkdir(exist_ok=True)
    (BENCH_DIR / "resources.json").write_text(json.dumps(result, indent=2, default=str) + "\n")

    print(f"{args.sessions} running sessions, medians of {args.rounds} rounds, ms")
    print(f"{'path':28} {'wall':>7} {'p95':>7} {'CPU':>7}")
    for name, row in rows.items():
        print(f"{name:28} {row['median_s'] * 1000:7.1f} {row['p95_s'] * 1000:7.1f} "
              f"{row['cpu_median_s'] * 1000:7.1f}")  # fmt: skip
    cpu_ratio = "n/a" if ratio["cpu"] is None else f"{ratio['cpu']:.3f}"
    print(f"ratio new/old: wall {ratio['wall']:.3f}, CPU {cpu_ratio}")
    print(f"cgroup layout: {result['cgroup_layout']}; sample read: {read_by}")
    if not valid:
        print(f"WARNING: sample() could not read {sorted(unread) or 'some'} sessions' cgroups "
              "(it left them to docker stats): the comparison does not mean anything")  # fmt: skip
    print(f"ls --json: sessions with memory filled in, per round: {ls_filled}; "
          f"{len(ls_errors)} runs with a host error, run again; the engine holds {managed} "
          "jackin containers (all roots), which every `ls` lists and inspects")  # fmt: skip
    print(f"uptime at start: {info['uptime_start']}")
    print(f"uptime at end:   {info['uptime_end']}")
    print(load_note(info))


if __name__ == "__main__":
    main()
