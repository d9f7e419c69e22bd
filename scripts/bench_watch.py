#!/usr/bin/env python3
"""Benchmark (issue 9, P8 in part): what keeping the fleet view fresh costs the laptop at rest.

    .venv/bin/python scripts/bench_watch.py [--sessions 5] [--rounds 15] [--interval 2]

Local mode, no fleet (the laptop is the host). Setup (untimed), as scripts/bench_resources.py:
a temporary laptop and host root, then --sessions sessions running `sleep 900`. Then, in turn:

  held       one `ls --watch --json --interval I` process for --rounds rounds (the test hook
             JACKIN_TEST_WATCH_ROUNDS ends it): one agent channel held for the whole watch,
             one `session.list` per round. The console refreshes with this same loop.
  new each   --rounds separate `ls --json` processes, I seconds apart: a view kept fresh by
             running a new command each round (a new process, agent and channel each time)

Per round: controller CPU seconds (the child's rusage from os.wait4, which includes the host
agent it runs and waits for: in local mode, the laptop's whole cost) and wall time. For `held`,
CPU% at rest is CPU seconds over the watch's wall time, and the time a round takes is the wall
time less the intervals, over the rounds: a change shows within one interval plus one round.
The ratio held/new-each of CPU per round is the number to compare. Results go to
.bench/watch.json. Always cleans up its sessions and directory.
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


def held(laptop: Laptop, rounds: int, interval: float) -> dict[str, Any]:
    env = {**laptop.env, "JACKIN_TEST_WATCH_ROUNDS": str(rounds)}
    argv = [sys.executable, "-m", "jackin_remote", "ls", "--watch", "--json", "--interval",
            str(interval)]  # fmt: skip
    wall, cpu, out = _waited(argv, env, laptop.work)
    seen = [json.loads(line) for line in out.splitlines() if line.strip()]
    if len(seen) != rounds:
        raise SystemExit(f"the watch printed {len(seen)} rounds, not {rounds}")
    listed = {len(r["sessions"]) for r in seen}
    return {"wall_s": wall, "cpu_s": cpu, "cpu_per_round_s": cpu / rounds,
            "cpu_percent_at_rest": 100 * cpu / wall,
            "round_s": max(0.0, wall - (rounds - 1) * interval) / rounds,
            "sessions_listed": sorted(listed)}  # fmt: skip


def new_each(laptop: Laptop, rounds: int, interval: float) -> dict[str, Any]:
    argv = [sys.executable, "-m", "jackin_remote", "ls", "--json"]
    walls, cpus = [], []
    for index in range(rounds):
        if index:
            time.sleep(interval)
        wall, cpu, _ = _waited(argv, laptop.env, laptop.work)
        walls.append(wall)
        cpus.append(cpu)
    cpu, span = sum(cpus), sum(walls) + (rounds - 1) * interval
    return {"wall_s": sum(walls), "cpu_s": cpu, "cpu_per_round_s": cpu / rounds,
            "round_s": sum(walls) / rounds, "cpu_percent_at_rest": 100 * cpu / span}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=15)
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
        results["held"] = held(laptop, args.rounds, args.interval)
        results["new_each"] = new_each(laptop, args.rounds, args.interval)
    finally:
        problems = laptop.cleanup()
        if problems:
            print("cleanup:", *problems, sep="\n  ", file=sys.stderr)
    info["loadavg_end"] = list(os.getloadavg())
    h, n = results["held"], results["new_each"]
    results["ratio_cpu_per_round"] = h["cpu_per_round_s"] / n["cpu_per_round_s"]
    BENCH_DIR.mkdir(exist_ok=True)
    (BENCH_DIR / "watch.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"{args.sessions} sessions, {args.rounds} rounds, {args.interval:g} s apart "
          f"({load_note(info)})")  # fmt: skip
    for name, row in (("held (ls --watch)", h), ("new each (ls --json)", n)):
        print(f"  {name:22} CPU/round {row['cpu_per_round_s'] * 1000:7.0f} ms   "
              f"round {row['round_s'] * 1000:6.0f} ms   CPU at rest "
              f"{row['cpu_percent_at_rest']:5.1f}%")  # fmt: skip
    print(f"  held / new each, CPU per round: {results['ratio_cpu_per_round']:.2f}x")
    print(f"  a change shows within {args.interval:g} s + one round "
          f"({args.interval + h['round_s']:.2f} s); goal 2 s, <=5% CPU at rest")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
