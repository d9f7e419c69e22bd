"""A session's CPU, memory, pids and OOM kills from its cgroup v2 or v1 files
(agent_host/resources.py): the paths from /proc/<pid>/cgroup, which hierarchy is read, each
file's parsing, CPU% from two scripted readings with one wait for every session, and the
sessions left to docker stats. Fake /proc and cgroup trees in tmp_path; nothing sleeps and no
docker. One check reads this process's own cgroup (v2 or v1) when it can."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from agent_host import resources
from agent_host.resources import Reading, Target
from agent_host.wire import SessionRecord, SpecError
from jackin_remote.ui.sessions import COLUMNS, sessions_table

CID = "ab" * 32  # a container id as the engine gives it
OTHER = "cd" * 32
SYSTEMD = f"/system.slice/docker-{CID}.scope"
CGROUPFS = f"/docker/{CID}"
V1 = f"12:pids:/docker/{CID}\n4:memory:/docker/{CID}\n1:name=systemd:/docker/{CID}\n"


class Tree:
    """A fake /proc and cgroup v2 mount."""

    def __init__(self, root: Path) -> None:
        self.proc = root / "proc"
        self.cgroup = root / "cgroup"
        self.cgroup.mkdir(parents=True)
        (self.cgroup / "cgroup.controllers").write_text("cpu memory pids\n")

    def process(self, pid: int, text: str) -> None:
        (self.proc / str(pid)).mkdir(parents=True, exist_ok=True)
        (self.proc / str(pid) / "cgroup").write_text(text)

    def group(self, path: str, **files: str) -> Path:
        directory = self.cgroup / path.lstrip("/")
        directory.mkdir(parents=True, exist_ok=True)
        for name, content in files.items():
            (directory / name.replace("_", ".", 1)).write_text(content)
        return directory

    def container(self, pid: int, path: str, usage: int = 0, memory: int = 300 << 20,
                  limit: str = str(2 << 30), pids: int = 3, ooms: int = 0) -> Path:  # fmt: skip
        self.process(pid, f"0::{path}\n")
        return self.group(
            path,
            cpu_stat=f"usage_usec {usage}\nuser_usec {usage}\nsystem_usec 0\n",
            memory_current=f"{memory}\n",
            memory_max=f"{limit}\n",
            pids_current=f"{pids}\n",
            memory_events=f"low 0\nhigh 0\nmax 4\noom 1\noom_kill {ooms}\n",
        )

    def dir(self, pid: object, container_id: str | None = CID) -> str | None:
        return resources.cgroup_dir(pid, container_id, str(self.proc), str(self.cgroup))


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    return Tree(tmp_path)


# -- the cgroup directory ------------------------------------------------------------------
@pytest.mark.parametrize("path", [SYSTEMD, CGROUPFS, f"/user.slice/user-1000.slice/docker-{CID}"])
def test_a_containers_cgroup_is_found_from_its_init_pid(tree: Tree, path: str) -> None:
    expected = tree.container(42, path)
    assert tree.dir(42) == os.path.realpath(expected)
    assert tree.dir(42, container_id=None) == os.path.realpath(expected)


def test_a_process_in_a_child_cgroup_reads_the_containers_own(tree: Tree) -> None:
    scope = tree.container(42, SYSTEMD)
    tree.process(42, f"0::{SYSTEMD}/init.scope/{CID}\n")  # made inside, named like it: the
    tree.group(f"{SYSTEMD}/init.scope/{CID}")  # outermost part that names the container wins
    assert tree.dir(42) == os.path.realpath(scope)


@pytest.mark.parametrize(
    "text",
    [
        V1,  # cgroup v1: no `0::` line
        "",
        "garbage\n",
        f"0::docker/{CID}\n",  # not absolute
        f"0::/../../docker/{CID}\n",  # another cgroup namespace: it would escape the root
        f"0::/docker/../docker/{CID}\n",
        f"0::/docker/./{CID}\n",
        f"0::/docker/{CID}\n0::/docker/{OTHER}\n",  # two answers: neither is trusted
        f"0::/docker/{OTHER}\n",  # not this container: a rootless engine's or reused pid
        "0::/\n",
    ],
)
def test_a_cgroup_file_that_does_not_name_the_containers_v2_cgroup_gives_none(
    tree: Tree, text: str
) -> None:
    tree.container(7, CGROUPFS)
    tree.group(f"/docker/{OTHER}")
    tree.process(7, text)
    assert tree.dir(7) is None


def test_a_dotdot_path_is_refused_even_without_a_container_id(tree: Tree) -> None:
    tree.container(7, CGROUPFS)
    tree.process(7, f"0::/docker/{CID}/../../..\n")
    assert tree.dir(7, container_id=None) is None
    assert resources.cgroup_path(f"0::/a/../{CID}\n", None) is None
    assert resources.cgroup_path(f"0::/docker/{CID}/\n", CID) == f"docker/{CID}"


def test_a_path_that_resolves_outside_the_root_is_refused(tree: Tree, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere" / f"docker-{CID}.scope"
    outside.mkdir(parents=True)
    (outside / "memory.current").write_text("1\n")
    os.symlink(outside, tree.cgroup / "escape")
    tree.process(9, "0::/escape\n")
    assert tree.dir(9, container_id=None) is None


@pytest.mark.parametrize("pid", [0, -1, None, True, "42", 4.2])
def test_no_pid_no_cgroup(tree: Tree, pid: object) -> None:
    tree.container(42, CGROUPFS)
    assert tree.dir(pid) is None


def test_an_unreadable_proc_entry_a_missing_directory_or_a_v1_mount_gives_none(
    tree: Tree,
) -> None:
    assert tree.dir(404) is None  # no such process
    tree.process(5, f"0::/docker/{CID}\n")
    assert tree.dir(5) is None  # its cgroup is gone
    tree.container(6, CGROUPFS)
    (tree.cgroup / "cgroup.controllers").unlink()  # the hybrid layout's tmpfs: not a v2 mount
    assert tree.dir(6) is None
    assert tree.dir(6, container_id="") is None


# -- each file -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "value"),
    [("123\n", 123), ("0", 0), (" 7 \n", 7), ("max\n", None), ("", None), ("-1", None),
     ("1.5", None), ("12 34", None), ("\u0662", None), ("9" * 21, None), (None, None)],
)  # fmt: skip
def test_a_number_file(text: str | None, value: int | None) -> None:
    assert resources.unsigned(text) == value
    assert resources.limit(text) == value  # memory.max: "max" is no limit


def test_keyed_files() -> None:
    cpu = "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnr_periods 0\n"
    assert resources.keyed(cpu, "usage_usec") == 1500
    assert resources.keyed(cpu, "usage") is None
    assert resources.keyed("oom 3\noom_kill 2\noom_group_kill 0\n", "oom_kill") == 2
    for bad in ("usage_usec\n", "usage_usec x\n", "usage_usec 1 2\n", "", None, "\x00\xff"):
        assert resources.keyed(bad, "usage_usec") is None, bad


def test_a_reading_of_every_file(tree: Tree) -> None:
    directory = tree.container(1, CGROUPFS, usage=5000, memory=123, pids=4, ooms=2)
    assert resources.read(str(directory), clock=lambda: 9.0) == Reading(
        usage_usec=5000, memory_bytes=123, memory_limit_bytes=2 << 30, pids=4, oom_kills=2, at=9.0
    )


def test_missing_and_malformed_files_give_none_for_that_value_only(tree: Tree) -> None:
    directory = tree.container(1, CGROUPFS, usage=5000, limit="max")
    (directory / "pids.current").unlink()
    (directory / "memory.events").write_bytes(b"oom_kill \xff\xfe\n")
    (directory / "memory.current").write_text("lots\n")
    reading = resources.read(str(directory), clock=lambda: 1.0)
    assert reading == Reading(5000, None, None, None, None, 1.0)
    (directory / "cpu.stat").unlink()
    (directory / "cpu.stat").mkdir()  # unreadable as a file
    assert resources.read(str(directory), clock=lambda: 1.0).usage_usec is None
    assert resources.read(str(directory / "gone"), clock=lambda: 1.0) == Reading(
        None, None, None, None, None, 1.0
    )


# -- CPU% and the one wait -----------------------------------------------------------------
def reading(usage: int | None, at: float) -> Reading:
    return Reading(usage, 1, None, 1, 0, at)


@pytest.mark.parametrize(
    ("first", "second", "percent"),
    [
        (reading(1_000_000, 10.0), reading(1_250_000, 10.25), 100.0),  # one full core
        (reading(0, 0.0), reading(500_000, 0.25), 200.0),  # two cores
        (reading(0, 0.0), reading(12_345, 0.25), 4.9),
        (reading(7, 0.0), reading(7, 0.25), 0.0),
        (reading(None, 0.0), reading(7, 0.25), None),
        (reading(7, 0.0), reading(None, 0.25), None),
        (reading(9, 0.0), reading(7, 0.25), None),  # went back
        (reading(0, 1.0), reading(7, 1.0), None),  # no time passed
    ],
)
def test_cpu_percent(first: Reading, second: Reading, percent: float | None) -> None:
    assert resources.cpu_percent(first, second) == percent


class Clock:
    """Scripted time: `sleep` advances it and lets the sessions run meanwhile."""

    def __init__(self, during: Any = None) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []
        self.during = during

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        if self.during is not None:
            self.during()


def sample(tree: Tree, targets: list[Target], clock: Clock) -> resources.Sampled:
    return resources.sample(targets, sleep=clock.sleep, clock=clock,
                            proc_root=str(tree.proc), cgroup_root=str(tree.cgroup))  # fmt: skip


def test_many_sessions_one_wait(tree: Tree) -> None:
    ids = [f"{n:02x}" * 32 for n in range(5)]
    groups = [tree.container(100 + n, f"/docker/{cid}", usage=1000) for n, cid in enumerate(ids)]

    def run() -> None:  # session n used n/4 of a core during the wait
        for n, group in enumerate(groups):
            (group / "cpu.stat").write_text(f"usage_usec {1000 + n * 62_500}\n")
            (group / "pids.current").write_text(f"{n + 1}\n")

    clock = Clock(run)
    targets = [Target(f"s{n}", 100 + n, cid) for n, cid in enumerate(ids)]
    sampled = sample(tree, targets, clock)
    assert clock.sleeps == [resources.INTERVAL]
    assert sampled.unread == []
    assert [sampled.stats[f"s{n}"]["cpu_percent"] for n in range(5)] == [0, 25, 50, 75, 100]
    assert sampled.stats["s4"] == {
        "cpu_percent": 100.0, "memory_bytes": 300 << 20, "memory_limit_bytes": 2 << 30,
        "pids": 5, "oom_kills": 0,
    }  # fmt: skip
    assert set(sampled.stats["s0"]) == set(resources.STAT_KEYS)


def test_what_cannot_be_read_is_left_to_docker_stats(tree: Tree) -> None:
    tree.container(1, CGROUPFS)
    tree.process(2, V1)  # cgroup v1
    tree.container(3, f"/docker/{OTHER}")  # its pid is someone else's
    no_memory = tree.container(4, f"/system.slice/docker-{OTHER}.scope")
    (no_memory / "memory.current").unlink()  # its memory controller is off: docker may know
    clock = Clock()
    sampled = sample(tree, [Target("ok", 1, CID), Target("v1", 2, CID), Target("other", 3, CID),
                            Target("nomem", 4, OTHER), Target("gone", 0, CID)], clock)  # fmt: skip
    assert sorted(sampled.stats) == ["ok"]
    assert sampled.unread == ["v1", "other", "nomem", "gone"]
    assert clock.sleeps == [resources.INTERVAL]


def test_no_readable_session_no_wait(tree: Tree) -> None:
    tree.process(2, V1)
    clock = Clock()
    assert sample(tree, [Target("v1", 2, CID)], clock) == resources.Sampled({}, ["v1"])
    assert sample(tree, [], clock) == resources.Sampled({}, [])
    assert clock.sleeps == []


def test_a_container_gone_during_the_wait_keeps_its_first_reading(tree: Tree) -> None:
    group = tree.container(1, CGROUPFS, memory=77, ooms=1)

    def vanish() -> None:
        for child in group.iterdir():
            child.unlink()
        group.rmdir()

    sampled = sample(tree, [Target("s", 1, CID)], Clock(vanish))
    assert sampled.stats["s"] == {
        "cpu_percent": None, "memory_bytes": 77, "memory_limit_bytes": 2 << 30, "pids": 3,
        "oom_kills": 1,
    }  # fmt: skip


# -- cgroup v1 (and the hybrid layout) -------------------------------------------------------
SYSTEMD_V1 = (f"12:pids:/system.slice/docker-{CID}.scope\n"
              f"4:memory:/system.slice/docker-{CID}.scope\n"
              f"3:cpu,cpuacct:/system.slice/docker-{CID}.scope\n"
              f"1:name=systemd:/system.slice/docker-{CID}.scope\n")  # fmt: skip
CGROUPFS_V1 = (
    f"8:pids:/docker/{CID}\n4:memory:/docker/{CID}\n2:cpuacct:/docker/{CID}\n"
    f"1:cpu:/docker/{CID}\n0::/docker/{CID}\n"
)  # fmt: skip  (this machine's)


class V1Tree:
    """A fake /proc and cgroup v1 root: a tmpfs-like directory with one directory a
    controller. `combined`: cpu and cpuacct share `cpu,cpuacct`, `cpuacct` a symlink to it."""

    def __init__(self, root: Path, combined: bool = False, unified: bool = True) -> None:
        self.proc = root / "proc"
        self.cgroup = root / "cgroup"
        self.cpu = self.cgroup / ("cpu,cpuacct" if combined else "cpuacct")
        for directory in (self.cpu, self.cgroup / "memory", self.cgroup / "pids"):
            directory.mkdir(parents=True)
        if combined:
            os.symlink("cpu,cpuacct", self.cgroup / "cpuacct")
            os.symlink("cpu,cpuacct", self.cgroup / "cpu")
        if unified:  # the hybrid layout: a v2 mount beside them, without the memory controller
            (self.cgroup / "unified").mkdir()
            (self.cgroup / "unified" / "cgroup.controllers").write_text("")

    def process(self, pid: int, text: str) -> None:
        (self.proc / str(pid)).mkdir(parents=True, exist_ok=True)
        (self.proc / str(pid) / "cgroup").write_text(text)

    def container(self, pid: int, path: str, text: str | None = None, usage_ns: int = 0,
                  memory: int = 300 << 20, inactive: int = 0, limit: int = 2 << 30,
                  pids: int = 3, oom_control: str = "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n",
                  ) -> dict[str, Path]:  # fmt: skip
        """A container in `path` of every controller; its init's /proc/<pid>/cgroup is `text`,
        else the cgroupfs driver's lines for `path`."""
        self.process(pid, text or f"8:pids:{path}\n4:memory:{path}\n2:cpuacct:{path}\n0::{path}\n")
        relative = path.lstrip("/")
        dirs = {"cpu": self.cpu / relative, "memory": self.cgroup / "memory" / relative,
                "pids": self.cgroup / "pids" / relative}  # fmt: skip
        for directory in dirs.values():
            directory.mkdir(parents=True, exist_ok=True)
        (dirs["cpu"] / "cpuacct.usage").write_text(f"{usage_ns}\n")
        (dirs["memory"] / "memory.usage_in_bytes").write_text(f"{memory}\n")
        (dirs["memory"] / "memory.stat").write_text(
            f"cache {inactive}\nrss {memory - inactive}\ninactive_file 0\n"
            f"total_cache {inactive}\ntotal_inactive_file {inactive}\n")  # fmt: skip
        (dirs["memory"] / "memory.limit_in_bytes").write_text(f"{limit}\n")
        (dirs["memory"] / "memory.oom_control").write_text(oom_control)
        (dirs["pids"] / "pids.current").write_text(f"{pids}\n")
        return dirs

    def groups(self, pid: object, container_id: str | None = CID) -> resources.Groups | None:
        return resources.groups(pid, container_id, str(self.proc), str(self.cgroup))


def real(path: Path) -> str:
    return os.path.realpath(path)


def test_v1_paths_from_proc_cgroup() -> None:
    assert resources.v1_paths(CGROUPFS_V1, CID) == {
        "cpuacct": ("cpuacct", f"docker/{CID}"), "memory": ("memory", f"docker/{CID}"),
        "pids": ("pids", f"docker/{CID}"),
    }  # fmt: skip
    scope = f"system.slice/docker-{CID}.scope"
    assert resources.v1_paths(SYSTEMD_V1, CID) == {
        "cpuacct": ("cpu,cpuacct", scope),
        "memory": ("memory", scope),
        "pids": ("pids", scope),
    }
    inner = f"4:memory:/docker/{CID}/init\n"  # a process in a child cgroup: the container's own
    assert resources.v1_paths(inner, CID) == {"memory": ("memory", f"docker/{CID}")}
    assert resources.v1_paths(inner, None) == {"memory": ("memory", f"docker/{CID}/init")}
    assert resources.v1_paths("4:memory:/\n", None) == {"memory": ("memory", "")}


@pytest.mark.parametrize(
    "text",
    [
        f"0::/docker/{CID}\n",  # v2 only: no v1 line
        f"4:memory:docker/{CID}\n",  # not absolute
        f"4:memory:/../../docker/{CID}\n",  # another cgroup namespace
        f"4:memory:/docker/{CID}/..\n",
        f"4:memory:/docker/./{CID}\n",
        f"4:memory:/docker/{OTHER}\n",  # not this container
        f"4:memory:/docker/{CID}\n5:memory:/docker/{OTHER}\n",  # two answers: neither trusted
        f"4:memory:/docker/{CID}\n5:memory:/docker/{CID}/../x\n",
        f"4:memory,../x:/docker/{CID}\n",  # a controller list no kernel writes
        f"4:/memory:/docker/{CID}\n",
        "4:memory\n", "", "garbage\n", "\x00\xff",
    ],
)  # fmt: skip
def test_a_v1_line_that_does_not_name_the_containers_cgroup_is_left_out(text: str) -> None:
    assert "memory" not in resources.v1_paths(text, CID)


def test_v1_paths_of_no_text() -> None:
    assert resources.v1_paths(None, CID) == {}


@pytest.mark.parametrize("path", [CGROUPFS, SYSTEMD])
def test_a_v1_containers_cgroups_are_found_cgroupfs_and_systemd(tmp_path: Path, path: str) -> None:
    tree = V1Tree(tmp_path)
    dirs = tree.container(42, path)
    assert tree.groups(42) == resources.Groups(
        True, real(dirs["cpu"]), real(dirs["memory"]), real(dirs["pids"])
    )


def test_cpu_and_cpuacct_mounted_together_are_found_by_either_name(tmp_path: Path) -> None:
    tree = V1Tree(tmp_path, combined=True)
    dirs = tree.container(42, SYSTEMD, text=SYSTEMD_V1)  # `3:cpu,cpuacct:...`
    found = tree.groups(42)
    assert found is not None and found.cpu == real(dirs["cpu"])
    assert found.cpu == real(tree.cgroup / "cpu,cpuacct" / SYSTEMD.lstrip("/"))
    os.rename(tree.cgroup / "cpu,cpuacct", tree.cgroup / "cpuacct.real")  # the listed name is
    (tree.cgroup / "cpuacct").unlink()  # gone: the controller's own name, a symlink, is used
    os.symlink("cpuacct.real", tree.cgroup / "cpuacct")
    found = tree.groups(42)
    assert found is not None and found.cpu == real(tree.cgroup / "cpuacct.real" / SYSTEMD[1:])
    os.rename(tree.cgroup / "cpuacct", tree.cgroup / "elsewhere")  # no name that fits: no CPU
    found = tree.groups(42)
    assert found is not None and found.cpu is None and found.memory is not None


def test_the_hybrid_layout_reads_v1(tmp_path: Path) -> None:
    tree = V1Tree(tmp_path)  # the root is a tmpfs with no cgroup.controllers; `unified` is v2
    dirs = tree.container(42, CGROUPFS, text=CGROUPFS_V1)
    unified = tree.cgroup / "unified" / "docker" / CID  # v2 files there: never read
    unified.mkdir(parents=True)
    (unified / "memory.current").write_text("1\n")
    (unified / "cpu.stat").write_text("usage_usec 1\n")
    found = tree.groups(42)
    assert found is not None and found.v1 and found.memory == real(dirs["memory"])
    assert resources.cgroup_dir(42, CID, str(tree.proc), str(tree.cgroup)) is None


def test_a_v2_root_is_read_as_v2_even_with_v1_lines(tree: Tree) -> None:
    directory = tree.container(42, CGROUPFS)
    tree.process(42, f"4:memory:/docker/{CID}\n0::/docker/{CID}\n")
    found = resources.groups(42, CID, str(tree.proc), str(tree.cgroup))
    assert found == resources.Groups(False, real(directory), real(directory), real(directory))
    tree.process(42, f"4:memory:/docker/{CID}\n")  # no v2 line on a v2 root: nothing
    assert resources.groups(42, CID, str(tree.proc), str(tree.cgroup)) is None


def test_v1_escapes_are_refused(tmp_path: Path) -> None:
    tree = V1Tree(tmp_path)
    outside = tmp_path / "elsewhere" / CID
    outside.mkdir(parents=True)
    (outside / "memory.usage_in_bytes").write_text("1\n")
    (tree.cgroup / "memory" / "docker").mkdir()
    os.symlink(outside, tree.cgroup / "memory" / "docker" / CID)  # the cgroup leaves its mount
    tree.process(1, f"4:memory:/docker/{CID}\n")
    assert tree.groups(1) is None
    tree.process(2, f"4:memory:/docker/../../elsewhere/{CID}\n")
    assert tree.groups(2, container_id=None) is None
    os.rename(tree.cgroup / "pids", tmp_path / "pids")  # a mount that resolves outside the root
    os.symlink(tmp_path / "pids", tree.cgroup / "pids")
    dirs = tree.container(3, f"/docker/{OTHER}")
    found = tree.groups(3, OTHER)
    assert found is not None and found.memory == real(dirs["memory"]) and found.pids is None
    os.symlink(".", tree.cgroup / "cpu,cpuacct")  # a "mount" that is the cgroup root itself
    tree.process(4, f"3:cpu,cpuacct:/cpuacct/docker/{OTHER}\n4:memory:/docker/{OTHER}\n")
    found = tree.groups(4, OTHER)
    assert found is not None and found.cpu is None and found.memory == real(dirs["memory"])


def test_no_v1_cgroup_no_groups(tmp_path: Path) -> None:
    tree = V1Tree(tmp_path)
    tree.container(1, CGROUPFS)
    assert tree.groups(0) is None and tree.groups(404) is None
    assert tree.groups(1, OTHER) is None  # not that container's pid
    tree.process(2, f"8:pids:/docker/{CID}\n")  # pids alone: neither CPU nor memory
    assert tree.groups(2) is None


def test_a_v1_reading(tmp_path: Path) -> None:
    tree = V1Tree(tmp_path)
    tree.container(1, CGROUPFS, usage_ns=5_000_999, memory=300 << 20, inactive=100 << 20,
                   limit=512 << 20, pids=4,
                   oom_control="oom_kill_disable 0\nunder_oom 0\noom_kill 2\n")  # fmt: skip
    where = tree.groups(1)
    assert where is not None
    assert resources.take(where, clock=lambda: 3.0) == Reading(
        usage_usec=5000, memory_bytes=200 << 20, memory_limit_bytes=512 << 20, pids=4,
        oom_kills=2, at=3.0,
    )  # fmt: skip


def test_v1_no_limit_old_kernels_and_missing_files(tmp_path: Path) -> None:
    tree = V1Tree(tmp_path)
    dirs = tree.container(1, CGROUPFS, memory=5000, inactive=0, limit=9223372036854771712,
                          oom_control="oom_kill_disable 0\nunder_oom 0\n")  # fmt: skip
    where = tree.groups(1)
    assert where is not None
    reading = resources.read_v1(where, clock=lambda: 1.0)
    assert (reading.memory_limit_bytes, reading.oom_kills) == (None, None)  # unlimited; < 4.13
    assert reading.memory_bytes == 5000
    (dirs["memory"] / "memory.stat").unlink()  # no cache figure: the usage as it is
    (dirs["pids"] / "pids.current").write_text("max\n")
    (dirs["cpu"] / "cpuacct.usage").write_text("-1\n")
    assert resources.read_v1(where, clock=lambda: 1.0) == Reading(None, 5000, None, None, None, 1.0)
    nowhere = resources.Groups(True, None, None, None)
    assert resources.take(nowhere, clock=lambda: 1.0) == Reading(None, None, None, None, None, 1.0)


def test_v1_sessions_share_the_one_wait(tmp_path: Path) -> None:
    tree = V1Tree(tmp_path, combined=True)
    a = tree.container(1, f"/docker/{CID}", usage_ns=1_000)
    b = tree.container(2, f"/system.slice/docker-{OTHER}.scope", usage_ns=0,
                       text=SYSTEMD_V1.replace(CID, OTHER))  # fmt: skip
    tree.process(3, f"4:memory:/docker/{'ef' * 32}\n")  # its memory directory does not exist

    def run() -> None:  # a used half a core and b two cores during the wait
        (a["cpu"] / "cpuacct.usage").write_text(f"{1_000 + 125_000_000}\n")
        (b["cpu"] / "cpuacct.usage").write_text(f"{500_000_000}\n")

    clock = Clock(run)
    sampled = resources.sample([Target("a", 1, CID), Target("b", 2, OTHER),
                                Target("c", 3, "ef" * 32)], sleep=clock.sleep, clock=clock,
                               proc_root=str(tree.proc), cgroup_root=str(tree.cgroup))  # fmt: skip
    assert clock.sleeps == [resources.INTERVAL]
    assert sampled.unread == ["c"]
    assert sampled.stats["a"] == {
        "cpu_percent": 50.0, "memory_bytes": 300 << 20, "memory_limit_bytes": 2 << 30,
        "pids": 3, "oom_kills": 0,
    }  # fmt: skip
    assert sampled.stats["b"]["cpu_percent"] == 200.0


# -- memory as docker stats shows it ---------------------------------------------------------
@pytest.mark.parametrize(
    ("usage", "inactive", "shown"),
    [(1000, 300, 700), (1000, 0, 1000), (1000, None, 1000), (None, 5, None),
     (1000, 1000, 1000), (1000, 2000, 1000)],  # the docker CLI: not smaller, not subtracted
)  # fmt: skip
def test_working_set(usage: int | None, inactive: int | None, shown: int | None) -> None:
    assert resources.working_set(usage, inactive) == shown


def test_v2_memory_leaves_out_the_inactive_file_cache(tree: Tree) -> None:
    directory = tree.container(1, CGROUPFS, memory=300 << 20)
    (directory / "memory.stat").write_text(
        "anon 1\nfile 9\nactive_file 5\ninactive_file 104857600\n"
    )
    assert resources.read(str(directory), clock=lambda: 1.0).memory_bytes == 200 << 20


@pytest.mark.parametrize(
    ("text", "value"),
    [("9223372036854771712\n", None), (f"{2**62}", None), (f"{2**62 - 1}", 2**62 - 1),
     ("4294967296\n", 4 << 30), ("max\n", None)],
)  # fmt: skip
def test_memory_limits(text: str, value: int | None) -> None:
    assert resources.limit(text) == value


# -- the host agent's use of it: docker stats only for the unread --------------------------
class FakeContainer:
    def __init__(self, cid: str, pid: int, memory: int = 0) -> None:
        self.id = cid
        self.attrs = {"State": {"Pid": pid}, "HostConfig": {"Memory": memory}}
        self.stats_calls = 0

    def stats(self, stream: bool) -> dict[str, Any]:
        self.stats_calls += 1
        return {"cpu_stats": {"cpu_usage": {"total_usage": 300}, "system_cpu_usage": 1000,
                              "online_cpus": 2},
                "precpu_stats": {"cpu_usage": {"total_usage": 100}, "system_cpu_usage": 0},
                "memory_stats": {"usage": 5 << 20}, "pids_stats": {"current": 2}}  # fmt: skip


def test_list_sessions_asks_docker_only_for_what_the_cgroups_did_not_give(
    tree: Tree, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agent_host import sessions

    tree.container(1, CGROUPFS, memory=9)
    clock = Clock()
    real = resources.sample
    monkeypatch.setattr(resources, "sample", lambda targets: real(
        targets, sleep=clock.sleep, clock=clock, proc_root=str(tree.proc),
        cgroup_root=str(tree.cgroup)))  # fmt: skip
    read, v1 = FakeContainer(CID, 1), FakeContainer(OTHER, 2, memory=1 << 30)
    out = [{"id": "s1"}, {"id": "s2"}, {"id": "s3"}]
    sessions._attach_stats([({"id": "s1"}, read), ({"id": "s2"}, v1)], out)
    assert (read.stats_calls, v1.stats_calls) == (0, 1)
    assert out[0]["memory_bytes"] == 9 and out[0]["memory_limit_bytes"] == 2 << 30
    assert out[1] == {"id": "s2", "cpu_percent": 40.0, "memory_bytes": 5 << 20,
                      "memory_limit_bytes": 1 << 30, "pids": 2}  # fmt: skip
    assert out[2] == {"id": "s3"}
    assert clock.sleeps == [resources.INTERVAL]


# -- on the wire and in the table ----------------------------------------------------------
def test_the_wire_carries_the_new_values_and_checks_them() -> None:
    base = {"id": "abcd2345", "workspace": "app", "role": "r", "runtime": "shell",
            "container": "c", "mode": "task", "isolation": "clone", "state": "running",
            "created_at": 1.0}  # fmt: skip
    entry = {**base, "memory_limit_bytes": 2 << 30, "pids": 3, "oom_kills": 0}
    record = SessionRecord.from_wire(entry)
    assert (record.memory_limit_bytes, record.pids, record.oom_kills) == (2 << 30, 3, 0)
    assert SessionRecord.from_wire(base).pids is None  # an older host: unknown
    for name in ("memory_limit_bytes", "pids", "oom_kills"):
        for bad in ("3", 1.5, True):
            with pytest.raises(SpecError) as refused:
                SessionRecord.from_wire({**base, name: bad})
            assert refused.value.field == f"session.{name}"


def test_the_mem_cell_shows_the_limit_when_known() -> None:
    mem = [spec.name for spec in COLUMNS].index("mem")
    row = {"id": "abcd2345", "host": "h", "workspace": "w", "role": "r", "runtime": "shell",
           "state": "running", "memory_bytes": 300 << 20}  # fmt: skip

    def cell(**fields: Any) -> str:
        return sessions_table([{**row, **fields}]).rows[0][mem].plain

    assert cell() == "300M"
    assert cell(memory_limit_bytes=2 << 30) == "300M/2.0G"
    assert cell(memory_limit_bytes=512 << 20) == "300M/512M"
    assert cell(memory_limit_bytes=None) == cell(memory_limit_bytes="lots") == "300M"
    assert cell(memory_limit_bytes=2 << 30, memory_bytes=None) == "-/2.0G"
    assert cell(memory_limit_bytes=2 << 30, state="exited") == "-"


# -- this machine --------------------------------------------------------------------------
def test_this_process_own_cgroup_reads_on_this_machine() -> None:
    """This process's own cgroup, v2 or v1 (hybrid): it is in no container, so no container id
    to match; `groups` finds its directories from /proc/self/cgroup as it would a container's."""
    try:
        text = Path("/proc/self/cgroup").read_text()
    except OSError as exc:
        pytest.skip(f"no /proc/self/cgroup: {exc}")
    where = resources.groups(os.getpid())
    if where is None:
        pytest.skip(f"neither a v2 nor a v1 layout is readable here: {text!r}")
    reading = resources.take(where)
    if reading.memory_bytes is None or reading.usage_usec is None:
        pytest.skip(f"{where} gives no memory or CPU usage (controller off or unreadable)")
    assert reading.memory_bytes > 0
    assert reading.usage_usec > 0
    assert reading.pids is None or reading.pids >= 1
    if where.v1:
        assert not os.path.isfile(os.path.join(resources.CGROUP_ROOT, "cgroup.controllers"))
        assert where.memory is not None and os.path.isfile(
            os.path.join(where.memory, "memory.usage_in_bytes")
        )
