#!/usr/bin/env python3
"""Benchmark: what a stronger box costs at launch, against the plain docker backend.

    .venv/bin/python scripts/bench_backends.py [--runs 5]

Local mode (this machine's engine; no SSH, so the figures are the backends' own), a small git
workspace, one `jackin-remote launch` process per sample, each followed by an untimed
`rm --force`:

  plain       --backend docker --network none                    the baseline
  allowlist   --backend docker --network allowlist               + the session's network and proxy
  gvisor      --backend gvisor --network none                    runsc as the engine's runtime
  private     --backend docker --network none --docker private   + the dockerd sidecar, up to TLS

Every variant's first launch (role image build) is untimed. Each launch waits for what it
creates (the private daemon answers over TLS before the sandbox starts), so a sample is the time
to a running session. Medians, and each median as a ratio of the plain one, measured in the same
run. Results go to .bench/backends.json. Needs `scripts/fleet images` (jackin-test-dind).
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

from bench_common import BENCH_DIR, ROOT, Stats, jackin_cli, machine, timed_run

ROLE_DIR = ROOT / "roles" / "test-agent"
COMMON = ["--role", str(ROLE_DIR), "--runtime", "demo", "--task", "write a.txt: hi", "--json"]
VARIANTS = {
    "plain": ["--backend", "docker", "--network", "none"],
    "allowlist": ["--backend", "docker", "--network", "allowlist"],
    "gvisor": ["--backend", "gvisor", "--network", "none"],
    "private": ["--backend", "docker", "--network", "none", "--docker", "private"],
}


def workspace(path: Path) -> Path:
    path.mkdir()
    for i in range(20):
        (path / f"mod{i}.py").write_text(f"VALUE = {i}\n")
    ident = ["-c", "user.name=bench", "-c", "user.email=bench@example.invalid"]
    for argv in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "bench"]):
        subprocess.run(["git", "-C", str(path), *ident, *argv], check=True)
    return path


def launch_and_rm(env: dict[str, str], work: Path, inventory: Path, ws: Path,
                  flags: list[str]) -> float:  # fmt: skip
    argv = [jackin_cli(), "-i", str(inventory), "launch", "--on", "local", *COMMON, *flags]
    wall, done = timed_run([*argv, str(ws)], env=env, cwd=work, what="launch")
    (session,) = json.loads(done.stdout)["sessions"]
    if session["error"]:
        raise SystemExit(f"launch {flags}: {session['error']}")
    rm = [jackin_cli(), "-i", str(inventory), "rm", "--force", session["id"], "--json"]
    timed_run(rm, env=env, cwd=work, what="rm")
    return wall


def bench(runs: int, work: Path) -> dict[str, Any]:
    env = dict(os.environ, JACKIN_HOME=str(work / "jh"))
    inventory = work / "local.toml"
    inventory.write_text(
        f'[hosts.local]\ntransport = "local"\nroot = "{work / "root"}"\n'
        'private_docker_image = "jackin-test-dind:latest"\n'
        'private_docker_privilege = "capabilities"\n'
    )
    ws = workspace(work / "ws")
    for name, flags in VARIANTS.items():  # warm: the role image, the sidecar image's layers
        print(f"warming {name}: {launch_and_rm(env, work, inventory, ws, flags):.2f} s", flush=True)
    samples: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for i in range(1, runs + 1):
        for name, flags in VARIANTS.items():  # interleaved: a load spike hits every variant
            samples[name].append(launch_and_rm(env, work, inventory, ws, flags))
        print(f"run {i}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in samples.items()),
              flush=True)  # fmt: skip
    stats = {name: Stats.of(values) for name, values in samples.items()}
    base = stats["plain"].median
    return {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "machine": {**machine(), "loadavg_end": list(os.getloadavg())},
        "runs": runs,
        "launch": {name: s.as_dict() for name, s in stats.items()},
        "ratio_to_plain": {name: s.median / base for name, s in stats.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="jb-") as scratch:
        result = bench(args.runs, Path(scratch))
    BENCH_DIR.mkdir(exist_ok=True)
    (BENCH_DIR / "backends.json").write_text(json.dumps(result, indent=2) + "\n")
    print("\nlaunch to a running session, median of", args.runs, "(ratio to plain docker):")
    for name, value in result["launch"].items():
        ratio = result["ratio_to_plain"][name]
        print(f"  {name:<10} {value['median_s']:6.2f} s   {ratio:4.2f}x")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
