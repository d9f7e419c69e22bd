#!/usr/bin/env python3
"""Benchmark: the CLI's start-up cost, `--version` and `ls --cached`, as whole fresh processes.

    .venv/bin/python scripts/bench_startup.py [--runs 21] [--src DIR] [--before DIR]

No fleet and no docker: every command runs on a temporary laptop (HOME and the XDG_*_HOME
directories under a temporary directory, JACKIN_HOME and JACKIN_INVENTORY unset, a working
directory without ./inventory/, so the inventory is the builtin local host). Before the runs,
an untimed setup records 3 sessions of the local host in the laptop's store, so `ls --cached`
opens a real database and prints a real table.

Each of --runs runs executes, in turn, each command below as a whole fresh process (the
installed `jackin-remote` entry point, as a user runs it), after one untimed warm-up round:

  python -c pass      the baseline: the interpreter's own start (site, the editable finder)
  --version           `jackin-remote --version`
  ls --cached         `jackin-remote ls --cached`
  ls --cached --json  `jackin-remote ls --cached --json`
  floors (diagnostic, not jackin): `import typer`; a minimal typer app (a callback with one
                      option, a command `ls --cached`: typer coerces parameters through pydantic);
                      `import sqlite3` (the store); `import rich.console` (every table)

Measured for each: the wall time, and the CPU seconds of the process (user + system, from
os.wait4). On a shared, loaded 2-core machine the wall clock counts everyone else's load: the
CPU seconds and the difference to the baseline, measured in the same run, hold up better.
Each jackin command is also run once with PYTHONPROFILEIMPORTTIME to count the modules it
imports and to say which heavy ones are among them.

--src DIR runs jackin-remote from another source tree (DIR on PYTHONPATH, ahead of the
editable install). --before DIR adds the three jackin commands run from DIR to every run, rows
named "before: ...", so that a change is compared under the same load, e.g. with
`git archive HEAD jackin_remote agent_host | tar -x -C DIR` for the tree before the change.

Goal P3 (from the issue): `jackin-remote --version` and `jackin-remote ls --cached` each take at
most 150 ms as a whole fresh process, and neither imports asyncssh. Prints medians and PASS or
MISS; the exit status is 0 either way. Results go to .bench/startup.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench_common import BENCH_DIR, ROOT, Stats, jackin_cli, load_note, machine

GOAL_S = 0.150
HEAVY = ("typer", "pydantic", "asyncio", "asyncssh", "sqlite_utils", "rich", "tomlkit", "docker")
# (sqlite_utils is no dependency any more: listed so that a run from an older tree shows it.)

# Three sessions of the builtin local host in the laptop's store (setup, untimed).
SETUP = """
import time
from jackin_remote.store import Store
store = Store()
now = time.time()
for number, state in enumerate(("running", "running", "exited")):
    store.record("local", {
        "id": f"bench{number}", "name": f"s{number}", "workspace": "/tmp/ws", "role": "bench",
        "runtime": "shell", "image": "jackin-role-bench", "container": f"jackin-bench{number}",
        "mode": "task", "isolation": "clone", "state": state, "agent_status": "unknown",
        "exit_code": 0 if state == "exited" else None, "created_at": now - 60 * number,
        "started_at": now - 60 * number, "network": "none",
    })
"""

# The floor of any typer command: the same shape as jackin's (a callback with an option, a
# command with options), nothing else.
TYPER_APP = """
import typer
app = typer.Typer()
@app.callback()
def root(inventory: str | None = typer.Option(None, "--inventory", "-i")) -> None:
    pass
@app.command()
def ls(on: str = typer.Option("all", "--on"), cached: bool = typer.Option(False, "--cached"),
       as_json: bool = typer.Option(False, "--json")) -> None:
    print("ok")
@app.command()
def other(name: str = typer.Argument(...)) -> None:
    pass
app(["ls", "--cached"], prog_name="typer-floor")
"""


def spawn(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float, str, str]:
    """(wall seconds, CPU seconds, stdout, stderr) of one whole process; a failure stops the
    bench, showing the command."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=err)  # fmt: skip
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if proc.returncode != 0:
        raise SystemExit(f"{argv} failed ({proc.returncode}):\n{stdout}{stderr}")
    return wall, usage.ru_utime + usage.ru_stime, stdout, stderr


def imported(argv: list[str], env: dict[str, str], cwd: Path) -> dict[str, Any]:
    """The modules one run imports (PYTHONPROFILEIMPORTTIME), and which heavy ones."""
    _, _, _, stderr = spawn(argv, {**env, "PYTHONPROFILEIMPORTTIME": "1"}, cwd)
    names = [line.rsplit("|", 1)[1].strip() for line in stderr.splitlines()
             if line.startswith("import time:") and "|" in line]  # fmt: skip
    names = [name for name in names if name != "imported package"]  # the header line
    return {"modules": len(names),
            "heavy": sorted({name.split(".")[0] for name in names} & set(HEAVY))}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=21)
    parser.add_argument("--src", type=Path, help="run jackin-remote from this source tree")
    parser.add_argument("--before", type=Path, help="also run it from this tree, to compare")
    args = parser.parse_args()
    info = machine()
    python, cli = sys.executable, jackin_cli()
    with tempfile.TemporaryDirectory(prefix="jackin-bench-startup-") as scratch:
        laptop = Path(scratch)
        cwd = laptop / "cwd"  # no ./inventory/ here: the builtin local host
        for folder in ("home", "cwd", "config", "state", "cache", "data"):
            (laptop / folder).mkdir()
        env = {key: value for key, value in os.environ.items()
               if key not in ("JACKIN_HOME", "JACKIN_INVENTORY", "PYTHONPATH", "COLUMNS",
                              "LINES", "PYTHONPROFILEIMPORTTIME")}  # fmt: skip
        env.update(HOME=str(laptop / "home"), XDG_CONFIG_HOME=str(laptop / "config"),
                   XDG_STATE_HOME=str(laptop / "state"), XDG_CACHE_HOME=str(laptop / "cache"),
                   XDG_DATA_HOME=str(laptop / "data"))  # fmt: skip
        jackin_env = {**env, "PYTHONPATH": str(args.src.resolve())} if args.src else env
        spawn([python, "-c", SETUP], jackin_env, cwd)
        (laptop / "typer_floor.py").write_text(TYPER_APP)
        commands: dict[str, tuple[list[str], dict[str, str]]] = {
            "python -c pass": ([python, "-c", "pass"], env),
            "--version": ([cli, "--version"], jackin_env),
            "ls --cached": ([cli, "ls", "--cached"], jackin_env),
            "ls --cached --json": ([cli, "ls", "--cached", "--json"], jackin_env),
        }
        if args.before is not None:
            before_env = {**env, "PYTHONPATH": str(args.before.resolve())}
            for name in ("--version", "ls --cached", "ls --cached --json"):
                commands[f"before: {name}"] = (commands[name][0], before_env)
        commands.update({
            "floor: import typer": ([python, "-c", "import typer"], env),
            "floor: typer app": ([python, str(laptop / "typer_floor.py")], env),
            "floor: import sqlite3": ([python, "-c", "import sqlite3"], env),
            "floor: import rich.console": ([python, "-c", "import rich.console"], env),
        })  # fmt: skip
        version = spawn([python, "-c", "import jackin_remote; print(jackin_remote.__version__)"],
                        jackin_env, cwd)[2].strip()  # fmt: skip
        checks: dict[str, Callable[[str], bool]] = {
            "--version": lambda out: out == f"jackin-remote {version}\n",
            "ls --cached": lambda out: all(f"bench{n}" in out for n in range(3)),
            "ls --cached --json": lambda out: len(json.loads(out)["sessions"]) == 3,
        }
        checks.update({f"before: {name}": check for name, check in list(checks.items())
                       if args.before is not None})  # fmt: skip
        walls: dict[str, list[float]] = {name: [] for name in commands}
        cpus: dict[str, list[float]] = {name: [] for name in commands}
        for run in range(args.runs + 1):  # run 0: a warm-up (page cache, bytecode), untimed
            for name, (argv, run_env) in commands.items():
                wall, cpu, stdout, _ = spawn(argv, run_env, cwd)
                if name in checks and not checks[name](stdout):
                    raise SystemExit(f"{name}: unexpected output:\n{stdout}")
                if run:
                    walls[name].append(wall)
                    cpus[name].append(cpu)
        modules = {name: imported(commands[name][0], commands[name][1], cwd) for name in checks}
    info["loadavg_end"] = list(os.getloadavg())
    base = "python -c pass"
    rows: dict[str, dict[str, Any]] = {}
    for name in commands:
        over = [w - b for w, b in zip(walls[name], walls[base], strict=True)]
        over_cpu = [c - b for c, b in zip(cpus[name], cpus[base], strict=True)]
        rows[name] = {
            **Stats.of(walls[name]).as_dict(),
            "cpu_median_s": statistics.median(cpus[name]),
            "cpu_samples_s": cpus[name],
            "over_baseline_median_s": statistics.median(over),
            "cpu_over_baseline_median_s": statistics.median(over_cpu),
            **modules.get(name, {}),
        }
    verdicts = {}
    for name in ("--version", "ls --cached"):
        row = rows[name]
        verdicts[name] = {
            "wall": row["median_s"] <= GOAL_S,
            "cpu": row["cpu_median_s"] <= GOAL_S,
            "no_asyncssh": "asyncssh" not in row["heavy"],
        }
    result = {"runs": args.runs, "src": str(args.src or ROOT),
              "before": None if args.before is None else str(args.before), "goal_s": GOAL_S,
              "commands": rows, "verdicts": verdicts, "machine": info}  # fmt: skip
    BENCH_DIR.mkdir(exist_ok=True)
    (BENCH_DIR / "startup.json").write_text(json.dumps(result, indent=2) + "\n")

    print(f"jackin-remote from {args.src or ROOT}; medians of {args.runs} runs, ms")
    print(f"{'whole fresh process':28} {'wall':>6} {'p95':>6} {'CPU':>6} {'wall-base':>9} "
          f"{'CPU-base':>8}  imports")  # fmt: skip
    for name, row in rows.items():
        what = ""
        if "modules" in row:
            what = f"{row['modules']} modules; " + (", ".join(row["heavy"]) or "none heavy")
        print(f"{name:28} {row['median_s'] * 1000:6.0f} {row['p95_s'] * 1000:6.0f} "
              f"{row['cpu_median_s'] * 1000:6.0f} {row['over_baseline_median_s'] * 1000:9.0f} "
              f"{row['cpu_over_baseline_median_s'] * 1000:8.0f}  {what}")  # fmt: skip
    for name, verdict in verdicts.items():
        shown = {key: "PASS" if ok else "MISS" for key, ok in verdict.items()}
        print(f"goal P3, {name}: wall <= {GOAL_S * 1000:.0f} ms {shown['wall']}; CPU <= "
              f"{GOAL_S * 1000:.0f} ms {shown['cpu']}; asyncssh not imported "
              f"{shown['no_asyncssh']}")  # fmt: skip
    print(load_note(info))


if __name__ == "__main__":
    main()
