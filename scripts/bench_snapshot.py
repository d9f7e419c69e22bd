#!/usr/bin/env python3
"""Benchmark: an incremental snapshot of a session's checkout vs a full `cp -a`, time and space.

    .venv/bin/python scripts/bench_snapshot.py [--files 5000] [--changed 10] [--runs 5]

A checkout of --files files (a git repository, committed: its .git is part of the checkout) is
made under a temporary host root, as `<root>/sessions/<id>/work`, and snapshotted once (the
first, full snapshot). Then, --runs times: --changed files are rewritten, and, interleaved,

  snapshot   agent_host.snapshots.take(): what `jackin-remote snapshot` runs on the host (the
             agent process is already up there; the RPC round trip is not counted)
  cp -a      `cp -a work copy`: a full copy of the same checkout, the usual "just copy it"

Time is the wall clock of each. Space is what each adds on disk: `du -s -B1 previous new`,
where du counts an inode hard-linked into the new snapshot only under the previous one (the
snapshot's directories, manifest and changed files are what it adds), and `du -s -B1 copy`.

Goals (issue 8): snapshot space <= 0.1x and time <= 0.2x of cp -a. Prints medians, ratios and
PASS/MISS; writes .bench/snapshot.json. A script, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_common import BENCH_DIR, Stats, load_note, machine  # noqa: E402

from agent_host import layout, snapshots  # noqa: E402
from agent_host.wire import SnapshotPolicy  # noqa: E402

SESSION = "bench234"
SPACE_GOAL, TIME_GOAL = 0.1, 0.2


def make_checkout(work: Path, files: int, rng: random.Random) -> list[Path]:
    """`files` files of 1-16 KB in 100 directories two levels deep, committed with git."""
    made = []
    for index in range(files):
        folder = work / f"pkg{index % 10}" / f"mod{index % 100 // 10}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"file{index}.py"
        path.write_bytes(rng.randbytes(rng.randint(512, 8192)).hex().encode())
        made.append(path)
    env = {**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b",
           "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@b"}  # fmt: skip
    for argv in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "bench"], ["gc", "-q"]):
        subprocess.run(["git", "-C", str(work), *argv], env=env, check=True)
    return made


def du(*paths: Path) -> list[int]:
    """Bytes on disk per path, an inode counted once, under the first path that holds it."""
    done = subprocess.run(["du", "-s", "-B1", *map(str, paths)], capture_output=True,
                          text=True, check=True)  # fmt: skip
    return [int(line.split()[0]) for line in done.stdout.splitlines()]


def change(paths: list[Path], count: int, rng: random.Random) -> None:
    for path in rng.sample(paths, count):
        path.write_bytes(rng.randbytes(rng.randint(512, 8192)).hex().encode())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--changed", type=int, default=10)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    info = machine()
    rng = random.Random(8)
    policy = SnapshotPolicy(keep=args.runs + 2)
    with tempfile.TemporaryDirectory(prefix="jackin-bench-snapshot-") as scratch:
        root = Path(scratch) / "root"
        work = Path(layout.work_dir(str(root), SESSION))
        work.mkdir(parents=True)
        paths = make_checkout(work, args.files, rng)
        checkout_bytes = du(work)[0]
        start = time.perf_counter()
        first = snapshots.take(str(root), SESSION, "before-start", policy)
        first_s = time.perf_counter() - start
        snap_times, snap_space, copy_times, copy_space = [], [], [], []
        for run in range(args.runs):
            change(paths, args.changed, rng)
            copy = Path(scratch) / f"copy{run}"
            order = ("snapshot", "cp") if run % 2 == 0 else ("cp", "snapshot")
            for what in order:
                if what == "cp":
                    start = time.perf_counter()
                    subprocess.run(["cp", "-a", str(work), str(copy)], check=True)
                    copy_times.append(time.perf_counter() - start)
                    copy_space.append(du(copy)[0])
                    shutil.rmtree(copy)
                else:
                    previous = snapshots.infos(str(root), SESSION)[-1].id
                    start = time.perf_counter()
                    taken = snapshots.take(str(root), SESSION, "manual", policy)
                    snap_times.append(time.perf_counter() - start)
                    base = Path(layout.snapshots_dir(str(root), SESSION))
                    snap_space.append(du(base / previous, base / taken.id)[1])
                    assert taken.files_new == args.changed, taken
        snapshots.purge(str(root), SESSION)
    info["loadavg_end"] = list(os.getloadavg())
    snap_t, copy_t = Stats.of(snap_times), Stats.of(copy_times)
    space, full = statistics.median(snap_space), statistics.median(copy_space)
    time_ratio, space_ratio = snap_t.median / copy_t.median, space / full
    result: dict[str, Any] = {
        "files": args.files, "changed": args.changed, "runs": args.runs,
        "checkout_bytes": checkout_bytes, "first_snapshot_s": first_s,
        "first_snapshot": first.to_wire(), "snapshot": {**snap_t.as_dict(), "bytes": snap_space},
        "cp_a": {**copy_t.as_dict(), "bytes": copy_space},
        "time_ratio": time_ratio, "space_ratio": space_ratio, "machine": info,
    }  # fmt: skip
    BENCH_DIR.mkdir(exist_ok=True)
    (BENCH_DIR / "snapshot.json").write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"checkout: {args.files} files, {checkout_bytes / 2**20:.1f} MiB on disk (.git "
        f"included); first snapshot {first_s * 1000:.0f} ms"
    )
    print(f"after {args.changed} changed files, median of {args.runs}:")
    print(
        f"  snapshot  {snap_t.median * 1000:7.1f} ms (p95 {snap_t.p95 * 1000:.1f})  "
        f"{space / 2**10:8.0f} KiB new on disk"
    )
    print(
        f"  cp -a     {copy_t.median * 1000:7.1f} ms (p95 {copy_t.p95 * 1000:.1f})  "
        f"{full / 2**10:8.0f} KiB"
    )
    for name, ratio, goal in (("time", time_ratio, TIME_GOAL), ("space", space_ratio,
                                                                 SPACE_GOAL)):  # fmt: skip
        verdict = "PASS" if ratio <= goal else "MISS"
        print(f"  {name}: snapshot / cp -a = {ratio:.3f}x (goal <= {goal}x) {verdict}")
    print(load_note(info))


if __name__ == "__main__":
    main()
