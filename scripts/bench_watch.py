#!/usr/bin/env python3
"""Benchmark (issue 9, P8 in part): what keeping the fleet view fresh costs the laptop at rest.

    .venv/bin/python scripts/bench_watch.py [--sessions 5] [--rounds 15] [--interval 2]

Local mode, no fleet (the laptop is the host). Setup (untimed), as scripts/bench_resources.py:
a temporary laptop and host root, then --sessions sessions running `sleep 900`. Then, in turn:

  pushed     one `ls --watch --json --interval I` process for --seconds: the resident host
             agent pushes the sessions when they change (jackin_remote/feed.py); halfway, one
             session is stopped and the time until the watch prints it is measured. The
             console is fed by the same loop. CPU: the watch's rusage plus the resident
             agent's (read from /proc: it is not the watch's child).
  new each   --rounds separate `ls --json` processes, I seconds apart: a view kept fresh by
             running a new command each round (a new process, agent and channel each time)

For `new each`: CPU seconds per round (the child's rusage, plus what a resident agent spent)
and wall time. Results go to .bench/watch.json. Always cleans up its sessions and directory.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_common import BENCH_DIR, ROOT, load_note, machine
from bench_resources import Laptop


def _waited(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float, str]:
    """(wall seconds, CPU seconds of the process and what it waited for, stdout)."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)  # fmt: skip
    assert proc.stdout is not None
    out = proc.stdout.read().decode(errors="replace")
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    if code not in (0, 3):
        raise SystemExit(f"{' '.join(argv)} exited {code}")
    return wall, usage.ru_utime + usage.ru_stime, out


def resident_cpu(root: Path) -> float:
    """CPU seconds so far of the resident host agents of `root` (agent_host/resident.py): the
    watch's host side, detached from it, so not in its rusage."""
    total = 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            if b"jackin-agent-resident" not in argv or str(root).encode() not in argv:
                continue
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return total


def held(laptop: Laptop, seconds: float, interval: float) -> dict[str, Any]:
    """One `ls --watch --json` for `seconds`: at rest for the first half, then one session is
    stopped, and the time until the watch shows it is the freshness. CPU: the watch's own
    (rusage) plus the resident agent's (it does the host's side of the watch)."""
    import signal
    import threading

    argv = [sys.executable, "-m", "jackin_remote", "ls", "--watch", "--json", "--interval",
            str(interval)]  # fmt: skip
    root = laptop.work / "host-root"
    agent_before = resident_cpu(root)
    start = time.perf_counter()
    proc = subprocess.Popen(argv, env=laptop.env, cwd=laptop.work, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)  # fmt: skip
    assert proc.stdout is not None
    lines: list[tuple[float, dict[str, Any]]] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.strip():
                lines.append((time.perf_counter(), json.loads(line)))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    time.sleep(seconds / 2)
    rest = (len(lines), time.perf_counter() - start)
    victim = laptop.ids[0]
    laptop.cli("stop", victim, "--json")
    stopped_at = time.perf_counter()
    time.sleep(seconds / 2)
    proc.send_signal(signal.SIGINT)
    _, _, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    reader.join(10)
    cpu = usage.ru_utime + usage.ru_stime
    agent = resident_cpu(root) - agent_before
    shown = [at for at, view in lines if at >= stopped_at and any(
        row["id"] == victim and row["state"] != "running" for row in view["sessions"])]  # fmt: skip
    return {"wall_s": wall, "cpu_s": cpu, "agent_cpu_s": agent, "rounds": len(lines),
            "rounds_at_rest": rest[0], "cpu_per_round_s": (cpu + agent) / max(len(lines), 1),
            "cpu_percent_at_rest": 100 * (cpu + agent) / wall,
            "controller_cpu_percent": 100 * cpu / wall,
            "change_shown_after_s": shown[0] - stopped_at if shown else None}  # fmt: skip


def new_each(laptop: Laptop, rounds: int, interval: float) -> dict[str, Any]:
    argv = [sys.executable, "-m", "jackin_remote", "ls", "--json"]
    agent_before = resident_cpu(laptop.work / "host-root")
    walls, cpus = [], []
    for index in range(rounds):
        if index:
            time.sleep(interval)
        wall, cpu, _ = _waited(argv, laptop.env, laptop.work)
        walls.append(wall)
        cpus.append(cpu)
    agent = resident_cpu(laptop.work / "host-root") - agent_before
    cpu, span = sum(cpus) + agent, sum(walls) + (rounds - 1) * interval
    return {"wall_s": sum(walls), "cpu_s": cpu, "cpu_per_round_s": cpu / rounds,
            "round_s": sum(walls) / rounds, "cpu_percent_at_rest": 100 * cpu / span}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=15, help="new-each rounds")
    parser.add_argument("--seconds", type=float, default=30.0, help="how long the watch runs")
    parser.add_argument("--interval", type=float, default=2.0)
    args = parser.parse_args()
    info = machine()
    work = Path(tempfile.mkdtemp(prefix="bench-watch-"))
    laptop = Laptop(work, args.sessions)
    results: dict[str, Any] = {"machine": info, "sessions": args.sessions,
                               "rounds": args.rounds, "interval_s": args.interval}  # fmt: skip
    try:
        laptop.make_workspace()
        for _ in range(args.sessions):
            laptop.launch()
        laptop.listed()  # untimed: the first look at each session reads its output whole
        results["held"] = held(laptop, args.seconds, args.interval)
        results["new_each"] = new_each(laptop, args.rounds, args.interval)
    finally:
        problems = laptop.cleanup()
        if problems:
            print("cleanup:", *problems, sep="\n  ", file=sys.stderr)
    info["loadavg_end"] = list(os.getloadavg())
    h, n = results["held"], results["new_each"]
    BENCH_DIR.mkdir(exist_ok=True)
    (BENCH_DIR / "watch.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"{args.sessions} sessions, interval {args.interval:g} s ({load_note(info)})")
    print(f"  pushed (ls --watch, {h['wall_s']:.0f} s): {h['rounds']} views, "
          f"{h['rounds_at_rest']} in the first half at rest; CPU {h['cpu_s']:.2f} s here + "
          f"{h['agent_cpu_s']:.2f} s resident agent = {h['cpu_percent_at_rest']:.1f}% "
          f"({h['controller_cpu_percent']:.1f}% the watch alone)")  # fmt: skip
    changed = h["change_shown_after_s"]
    print("  a stopped session shows after " + ("never" if changed is None else
          f"{changed:.2f} s") + "; goal <= 2 s, <= 5% CPU at rest")  # fmt: skip
    print(f"  new each (ls --json, {args.rounds} runs): CPU/round "
          f"{n['cpu_per_round_s'] * 1000:.0f} ms, {n['cpu_percent_at_rest']:.1f}% at one a "
          f"{args.interval:g} s")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
