"""What a running session uses: CPU, memory against its limit, pids and OOM kills, read from
its container's cgroup files: cgroup v2, or v1 (also the hybrid layout: v1 controllers with a
unified mount beside them, where the v1 ones hold the numbers).

`docker stats` costs about 2 s a host (the engine samples twice, 1 s apart). This reads the
kernel's own files instead: one sample of every session, ONE short wait for all of them
together, a second sample. A container whose cgroup cannot be found or read here (another
cgroup or pid namespace, a rootless engine, a v1 controller mounted under another name,
permissions) is named in `Sampled.unread`, and the caller asks docker for those.

Memory is what `docker stats` shows: the usage less the inactive page cache (memory.stat's
`inactive_file` on v2, `total_inactive_file` on v1), as the docker CLI computes it.

The decisions are small pure functions over text (the tests build a fake /proc and cgroup tree);
every file is parsed tolerantly: missing or malformed gives None for that value, never an error.
"""

from __future__ import annotations

import os
import re
import time
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

PROC_ROOT = "/proc"
CGROUP_ROOT = "/sys/fs/cgroup"
INTERVAL = 0.25  # seconds between the two CPU samples: one wait per `ls`, not per session
MAX_READ = 64 * 1024  # cgroup files are a few hundred bytes; never read more than this
STAT_KEYS = ("cpu_percent", "memory_bytes", "memory_limit_bytes", "pids", "oom_kills")

UNLIMITED = 2**62  # v1's memory.limit_in_bytes without a limit: 9223372036854771712 (page-rounded)
V1_CONTROLLERS = ("cpuacct", "memory", "pids")  # the v1 hierarchies read here

_UNSIGNED = re.compile(r"[0-9]{1,20}")
_CONTROLLER_LIST = re.compile(r"[a-z0-9_]+(?:,[a-z0-9_]+)*")  # "memory", "cpu,cpuacct"


class Target(NamedTuple):
    session_id: str
    pid: object  # the container's init pid, as the engine reported it (State.Pid): checked here
    container_id: Optional[str] = None  # when known, its cgroup path must name it


class Groups(NamedTuple):
    """Where a container's files are: on cgroup v2 one directory holds them all; on v1 each
    controller has its own (None: that one was not found)."""

    v1: bool
    cpu: Optional[str]
    memory: Optional[str]
    pids: Optional[str]


class Reading(NamedTuple):
    """One read of a cgroup's files; `at` is the clock (seconds) when the CPU usage was read."""

    usage_usec: Optional[int]
    memory_bytes: Optional[int]
    memory_limit_bytes: Optional[int]
    pids: Optional[int]
    oom_kills: Optional[int]
    at: float


class Sampled(NamedTuple):
    stats: Dict[str, Dict[str, Any]]  # session id -> {STAT_KEYS}, None where unknown
    unread: List[str]  # session ids whose cgroup could not be read: ask docker for those


# -- parsing (pure) ------------------------------------------------------------------------
def unsigned(text: Optional[str]) -> Optional[int]:
    """A file holding one decimal number ("memory.current", "pids.current"), else None."""
    if text is None:
        return None
    value = text.strip()
    return int(value) if _UNSIGNED.fullmatch(value) else None


def limit(text: Optional[str]) -> Optional[int]:
    """memory.max (v2: a number of bytes, or "max") or memory.limit_in_bytes (v1: a number, near
    2**63 for no limit): None for no limit, as for anything malformed."""
    value = unsigned(text)  # "max" is not a number
    return None if value is None or value >= UNLIMITED else value


def working_set(usage: Optional[int], inactive: Optional[int]) -> Optional[int]:
    """Memory as `docker stats` shows it: the usage less the inactive file cache, when that is
    known and smaller (the docker CLI's calculateMemUsageUnixNoCache), else the usage."""
    if usage is None or inactive is None or inactive >= usage:
        return usage
    return usage - inactive


def keyed(text: Optional[str], key: str) -> Optional[int]:
    """The value of `key` in a flat keyed file ("usage_usec 123" in cpu.stat, "oom_kill 2" in
    memory.events), else None."""
    if text is None:
        return None
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == key:
            return unsigned(parts[1])
    return None


def _relative(path: str, container_id: Optional[str]) -> Optional[str]:
    """A cgroup path from /proc/<pid>/cgroup made relative to its hierarchy's root, or None: not
    absolute, `.`/`..` in it, or (with `container_id`) not naming the container. It is cut at
    its first part that names the container: a process inside may sit in a child cgroup."""
    if not path.startswith("/"):
        return None
    parts = [part for part in path.split("/") if part]
    if any(part in (".", "..") for part in parts):
        return None
    if container_id is not None:
        if not container_id:
            return None
        named = [index for index, part in enumerate(parts) if container_id in part]
        if not named:
            return None
        parts = parts[: named[0] + 1]
    return "/".join(parts)


def cgroup_path(text: Optional[str], container_id: Optional[str] = None) -> Optional[str]:
    """The cgroup v2 path, relative to the cgroup root, in the text of /proc/<pid>/cgroup (the
    line `0::/system.slice/docker-<id>.scope`), or None: no v2 line (cgroup v1), a path that is
    not absolute or has `.`/`..` in it (another cgroup namespace shows `/../..`: it must not
    escape the root). With `container_id`, the path is cut at its first part that names the
    container (a process inside may sit in a child cgroup of the container's own), and a path
    that does not name it at all is None: the pid is not that container's (a rootless engine's
    or another pid namespace's pid, or a reused one)."""
    if text is None:
        return None
    lines = [line[3:] for line in text.splitlines() if line.startswith("0::")]
    if len(lines) != 1:
        return None
    return _relative(lines[0], container_id)


def v1_paths(text: Optional[str], container_id: Optional[str] = None) -> Dict[str, Tuple[str, str]]:
    """The cgroup v1 paths in the text of /proc/<pid>/cgroup: for each of V1_CONTROLLERS on a
    line `N:controllers:/path` (`4:memory:/docker/<id>`, `3:cpu,cpuacct:/system.slice/docker-
    <id>.scope`), its controller list as written and its path relative to the hierarchy's root,
    under the same rules as cgroup_path. A controller on two lines, on a malformed line, or
    whose path is refused is left out."""
    seen: Dict[str, int] = {}
    paths: Dict[str, Tuple[str, str]] = {}
    for line in (text or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3 or not _CONTROLLER_LIST.fullmatch(parts[1]):
            continue  # the v2 line `0::/...` (no controllers), `name=systemd`, or garbage
        relative = _relative(parts[2], container_id)
        for name in parts[1].split(","):
            if name in V1_CONTROLLERS:
                seen[name] = seen.get(name, 0) + 1
                if relative is not None:
                    paths[name] = (parts[1], relative)
    return {name: place for name, place in paths.items() if seen[name] == 1}


def cpu_percent(first: Reading, second: Reading) -> Optional[float]:
    """CPU use between two readings, as docker stats shows it: 100.0 is one full core."""
    if first.usage_usec is None or second.usage_usec is None:
        return None
    used = second.usage_usec - first.usage_usec
    wall = (second.at - first.at) * 1_000_000
    if used < 0 or wall <= 0:  # a counter that went back: another cgroup under the same path
        return None
    return round(used / wall * 100.0, 1)


def stats(first: Reading, second: Optional[Reading]) -> Dict[str, Any]:
    """The wire's values from the two readings: the latest known value of each."""
    latest = second or first

    def pick(name: str) -> Optional[int]:
        value: Optional[int] = getattr(latest, name)
        return getattr(first, name) if value is None else value

    return {
        "cpu_percent": None if second is None else cpu_percent(first, second),
        "memory_bytes": pick("memory_bytes"),
        "memory_limit_bytes": pick("memory_limit_bytes"),
        "pids": pick("pids"),
        "oom_kills": pick("oom_kills"),
    }


# -- files ---------------------------------------------------------------------------------
def _read(path: str) -> Optional[str]:
    try:
        with open(path, "rb") as handle:
            return handle.read(MAX_READ).decode("ascii")
    except (OSError, UnicodeDecodeError, ValueError):
        return None


def _file(directory: Optional[str], name: str) -> Optional[str]:
    return None if directory is None else _read(os.path.join(directory, name))


def _inside(root: str, relative: str) -> Optional[str]:
    """The directory `relative` under `root`, resolved, when it exists and stays inside."""
    root = os.path.realpath(root)
    directory = os.path.realpath(os.path.join(root, relative))
    if directory != root and not directory.startswith(root + os.sep):
        return None
    return directory if os.path.isdir(directory) else None


def _v1_dir(cgroup_root: str, controllers: str, name: str, relative: str) -> Optional[str]:
    """The directory of a v1 cgroup: under the hierarchy mounted at `<root>/<controllers>`
    ("cpu,cpuacct") or else at `<root>/<name>` ("cpuacct", often a symlink to the former). The
    mount itself must resolve inside the cgroup root, and not to the root."""
    root = os.path.realpath(cgroup_root)
    for mount in dict.fromkeys((controllers, name)):
        real = os.path.realpath(os.path.join(root, mount))
        if real.startswith(root + os.sep) and os.path.isdir(real):
            return _inside(real, relative)
    return None


def _valid_pid(pid: object) -> bool:
    return not isinstance(pid, bool) and isinstance(pid, int) and pid > 0


def cgroup_dir(
    pid: object,
    container_id: Optional[str] = None,
    proc_root: str = PROC_ROOT,
    cgroup_root: str = CGROUP_ROOT,
) -> Optional[str]:
    """The cgroup v2 directory of process `pid` (a container's init), or None when it cannot be
    found or read here, or the cgroup root is not a v2 mount."""
    if not _valid_pid(pid):
        return None  # State.Pid is 0 for a container that is not running
    relative = cgroup_path(_read(os.path.join(proc_root, str(pid), "cgroup")), container_id)
    if relative is None or not os.path.isfile(os.path.join(cgroup_root, "cgroup.controllers")):
        return None  # no v2 line; or v1, or the hybrid layout's tmpfs: not a v2 mount
    return _inside(cgroup_root, relative)


def groups(
    pid: object,
    container_id: Optional[str] = None,
    proc_root: str = PROC_ROOT,
    cgroup_root: str = CGROUP_ROOT,
) -> Optional[Groups]:
    """Where process `pid`'s cgroup files are. A cgroup root that is a v2 mount (it has
    cgroup.controllers) is read as v2; any other (v1, or the hybrid layout's tmpfs, whose
    unified mount has no memory controller) by the process's v1 controller lines. None when
    neither the CPU nor the memory directory is found."""
    if not _valid_pid(pid):
        return None
    if os.path.isfile(os.path.join(cgroup_root, "cgroup.controllers")):
        directory = cgroup_dir(pid, container_id, proc_root, cgroup_root)
        return None if directory is None else Groups(False, directory, directory, directory)
    paths = v1_paths(_read(os.path.join(proc_root, str(pid), "cgroup")), container_id)
    found = {
        name: _v1_dir(cgroup_root, controllers, name, relative)
        for name, (controllers, relative) in paths.items()
    }
    if found.get("cpuacct") is None and found.get("memory") is None:
        return None
    return Groups(True, found.get("cpuacct"), found.get("memory"), found.get("pids"))


def read(directory: Optional[str], clock: Callable[[], float] = time.monotonic) -> Reading:
    """One reading of a cgroup v2 directory; each value None when its file is missing or bad."""
    cpu = _file(directory, "cpu.stat")
    at = clock()
    return Reading(
        usage_usec=keyed(cpu, "usage_usec"),
        memory_bytes=working_set(
            unsigned(_file(directory, "memory.current")),
            keyed(_file(directory, "memory.stat"), "inactive_file"),
        ),
        memory_limit_bytes=limit(_file(directory, "memory.max")),
        pids=unsigned(_file(directory, "pids.current")),
        oom_kills=keyed(_file(directory, "memory.events"), "oom_kill"),
        at=at,
    )


def read_v1(where: Groups, clock: Callable[[], float] = time.monotonic) -> Reading:
    """One reading of a cgroup v1 container's controller directories: cpuacct.usage counts
    nanoseconds; memory.oom_control has no `oom_kill` line before Linux 4.13 (None)."""
    nanoseconds = unsigned(_file(where.cpu, "cpuacct.usage"))
    at = clock()
    return Reading(
        usage_usec=None if nanoseconds is None else nanoseconds // 1000,
        memory_bytes=working_set(
            unsigned(_file(where.memory, "memory.usage_in_bytes")),
            keyed(_file(where.memory, "memory.stat"), "total_inactive_file"),
        ),
        memory_limit_bytes=limit(_file(where.memory, "memory.limit_in_bytes")),
        pids=unsigned(_file(where.pids, "pids.current")),
        oom_kills=keyed(_file(where.memory, "memory.oom_control"), "oom_kill"),
        at=at,
    )


def take(where: Groups, clock: Callable[[], float] = time.monotonic) -> Reading:
    """One reading of wherever the files are."""
    if where.v1:
        return read_v1(where, clock)
    return read(where.cpu, clock)


def sample(
    targets: Sequence[Target],
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    proc_root: str = PROC_ROOT,
    cgroup_root: str = CGROUP_ROOT,
    interval: float = INTERVAL,
) -> Sampled:
    """Every target's use: one reading of each, one wait of `interval` for all, another
    reading. A target is unread when its cgroup is not found, or gives no CPU usage or no
    memory (docker stats may: the caller asks it)."""
    first: Dict[str, Reading] = {}
    places: Dict[str, Groups] = {}
    unread: List[str] = []
    for target in targets:
        where = groups(target.pid, target.container_id, proc_root, cgroup_root)
        if where is None:
            unread.append(target.session_id)
            continue
        reading = take(where, clock)
        if reading.usage_usec is None or reading.memory_bytes is None:
            unread.append(target.session_id)
            continue
        first[target.session_id] = reading
        places[target.session_id] = where
    if first:
        sleep(interval)
    out: Dict[str, Dict[str, Any]] = {}
    for session_id, where in places.items():
        out[session_id] = stats(first[session_id], take(where, clock))
    return Sampled(out, unread)
