"""`hosts check` reads a host's capacity from its agent's facts instead of running the probe
(core/capacity.capacity_from_facts): the same numbers as the probe on this machine, and a
hostile or older agent's facts never become wrong numbers."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from agent_host import facts
from jackin_remote.agent.deploy import root_prelude
from jackin_remote.core.capacity import capacity_from_facts, parse_probe
from jackin_remote.hostcheck import PROBE_SCRIPT


def test_the_facts_say_what_the_probe_says_on_this_machine(tmp_path: Path) -> None:
    root = str(tmp_path / "root")
    probe = subprocess.run(["sh", "-c", root_prelude(root) + PROBE_SCRIPT], capture_output=True,
                           text=True, check=True).stdout  # fmt: skip
    by_probe = parse_probe(probe)
    by_facts = capacity_from_facts(facts.collect(root))
    assert by_facts is not None
    for name in ("cpus", "memory", "pid_max", "disk_path", "kvm"):
        assert getattr(by_facts, name) == getattr(by_probe, name), name
    assert by_facts.disk_free and by_probe.disk_free
    assert abs(by_facts.disk_free - by_probe.disk_free) < 256 * 1024**2  # df rounds to KiB
    if by_probe.runtimes is not None and by_facts.runtimes is not None:  # both reached the engine
        assert {r.name for r in by_facts.runtimes} == {r.name for r in by_probe.runtimes}


def test_an_older_agent_is_probed_instead() -> None:
    assert capacity_from_facts({"cpus": 4, "memory": {"total": 1}}) is None
    assert capacity_from_facts(["not", "facts"]) is None


@pytest.mark.parametrize(
    "hostile",
    [
        {"cpus_usable": "4", "pid_max": True, "memory": {"total": -1}, "disk": "/"},
        {"cpus_usable": 10**400, "pid_max": 2**63, "memory": {"total": 10**30},
         "disk": {"path": "/x\x1b[2J", "free": 10**400}},
        {"cpus_usable": 2.5, "pid_max": None, "memory": [], "disk": {"path": 7, "free": "x"},
         "docker": {"runtimes": {"runc": "nope"}}, "kvm": {"present": "yes"}},
    ],
)  # fmt: skip
def test_facts_of_the_wrong_shape_are_not_numbers(hostile: dict[str, object]) -> None:
    found = capacity_from_facts(hostile)
    assert found is not None
    assert (found.cpus, found.memory, found.pid_max, found.disk_path, found.disk_free,
            found.kvm) == (None,) * 6  # fmt: skip
    assert found.runtimes is None or found.runtimes == ()
