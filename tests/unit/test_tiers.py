"""Backends as risk tiers (core/tiers.py): what the contract says of each, which one a session's
needs call for, and what a host can run, decided without a host; plus the wiring that reads the
engine's runtimes (the probe's lines, the facts) and where the backend was chosen."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from jackin_remote.core.capacity import Capacity, EngineRuntime, parse_probe, parse_runtimes
from jackin_remote.core.contract import (
    LaunchRequest,
    RoleRef,
    TargetRef,
    WorkspaceRef,
    resolve_contract,
)
from jackin_remote.core.tiers import (
    GVISOR,
    BackendOrigin,
    Needs,
    backend_misfits,
    backends_words,
    first_warning,
    host_backends,
    network_none_only,
    recommend,
    routing,
)
from jackin_remote.hostcheck import backend_origin
from jackin_remote.inventory.model import Host, Inventory
from jackin_remote.launch import Prepared, judge_fit, limit_misfits
from jackin_remote.ui.hosts import check_table
from tests.unit.test_render import HOSTILE, assert_inert, check_entry, plain, render

RUNC = EngineRuntime("runc", "runc")
RUNSC_NO_NET = EngineRuntime("runsc", "/usr/bin/runsc", ("--network=none",))
RUNSC = EngineRuntime("runsc", "/usr/bin/runsc")
FLAG = BackendOrigin("flag")
FILE = BackendOrigin("inventory", "/ops/hosts.toml:4 hosts.build-1.backend")


def capacity(*runtimes: EngineRuntime) -> Capacity:
    return Capacity(cpus=4, runtimes=runtimes)


# -- the recommendation --------------------------------------------------------------------------
def test_a_closed_watched_session_without_a_key_is_recommended_docker() -> None:
    chosen = recommend(Needs("none", credential=False, unattended=False))
    assert chosen.backend == "docker"
    assert "faster" in chosen.because[0] and "only boundary" in chosen.because[0]


@pytest.mark.parametrize(
    ("needs", "reason"),
    [
        (Needs("open", False, False), "network open"),
        (Needs("allowlist", False, False), "network allowlist"),
        (Needs("none", True, False), "credential"),
        (Needs("none", False, True), "unattended (task mode)"),
        (Needs("none", False, False, docker_access="private"), "microVM"),
    ],
)
def test_each_need_that_raises_the_stakes_calls_for_gvisor(needs: Needs, reason: str) -> None:
    chosen = recommend(needs)
    assert chosen.backend == GVISOR
    assert any(reason in because for because in chosen.because), chosen


def test_every_reason_is_given_not_only_the_first() -> None:
    chosen = recommend(Needs("open", credential=True, unattended=True))
    said = " ".join(chosen.because)
    assert "network open" in said and "credential" in said and "unattended" in said


# -- the routing section and the first warning ---------------------------------------------------
def test_routing_names_the_tier_the_alternatives_and_what_would_be_stronger() -> None:
    docker = routing("docker", FLAG, Needs("open", True, True))
    assert docker["risk_tier"] == "container (runc): shared host kernel, namespaces + cgroups"
    assert docker["why"] == "docker chosen by --backend"
    assert docker["alternatives"][0].startswith("gvisor (runsc)")
    assert "microVM" in docker["stronger"] and "not in this version" in docker["stronger"]
    assert docker["recommended"] == "gvisor" and "--backend gvisor" in docker["advice"]
    assert docker["session_needs"] == (
        "network open, a credential, unattended (task mode), docker access none"
    )
    gvisor = routing("gvisor", FILE, Needs("none", False, True))
    assert gvisor["risk_tier"].startswith("gVisor (runsc): a user-space kernel between the agent")
    assert "syscalls the host kernel sees are gVisor's own" in gvisor["risk_tier"]
    assert gvisor["why"] == "gvisor set at /ops/hosts.toml:4 hosts.build-1.backend"
    assert gvisor["alternatives"][0].startswith("docker (runc)")
    assert gvisor["recommended"] == "gvisor" and "what this session's needs" in gvisor["advice"]
    relaxed = routing("gvisor", BackendOrigin("default"), Needs("none", False, False))
    assert relaxed["recommended"] == "docker" and "docker would do" in relaxed["advice"]
    assert relaxed["why"].startswith("gvisor by default")


def test_the_first_warning_is_the_backends_own() -> None:
    assert first_warning("docker").startswith("A Docker container is not a microVM")
    gvisor = first_warning("gvisor")
    assert "not a microVM" in gvisor and "gVisor escape plus a host kernel bug" in gvisor
    assert "Docker container" not in gvisor


ROLE = RoleRef("test-agent", "ab" * 32, "jackin-role-test-agent:abababababab", "agent",
               ("shell",), "/roles/test-agent")  # fmt: skip
WORKSPACE = WorkspaceRef("/home/me/app", "app-123abc", True, "c0ffee" * 6 + "abcd", "main", False,
                         12, 3400)  # fmt: skip


def target(backend: str, host: str = "build-1") -> TargetRef:
    return TargetRef(host, "ssh", "10.0.0.5", "~/.jackin", backend, "2g", 1.5, 256)


def test_the_contract_carries_the_backend_its_tier_and_its_warning() -> None:
    request = LaunchRequest("shell", task="make test", network="none")
    contract = resolve_contract("abcd2345", target("gvisor"), ROLE, WORKSPACE, request)
    assert contract.spec.backend.value == "gvisor"
    assert contract.routing["backend"] == "gvisor"
    assert contract.routing["risk_tier"].startswith("gVisor (runsc)")
    assert contract.routing["recommended"] == "gvisor"  # task mode: unattended
    assert "gVisor escape plus a host kernel bug" in contract.warnings[0]
    assert not any("A Docker container" in w for w in contract.warnings)
    docker = resolve_contract("abcd2345", target("docker"), ROLE, WORKSPACE,
                              LaunchRequest("shell", network="none"))  # fmt: skip
    assert docker.warnings[0].startswith("A Docker container is not a microVM")
    assert docker.routing["recommended"] == "docker"  # interactive, closed, no key


# -- what a host can run -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "none_only"),
    [
        (("--network=none",), True),
        (("-network=none",), True),
        (("--debug", "--network", "none"), True),
        (("--network=sandbox",), False),
        (("--network=host",), False),
        ((), False),
        (("--network",), False),
    ],
)
def test_network_none_only_reads_runscs_flag(args: tuple[str, ...], none_only: bool) -> None:
    assert network_none_only(args) is none_only


def test_docker_needs_nothing_from_the_runtimes() -> None:
    assert backend_misfits("build-1", "docker", FLAG, "open", capacity()) == []
    assert backend_misfits("build-1", "docker", FLAG, "open", Capacity()) == []


def test_gvisor_without_runsc_is_refused_naming_host_backend_and_origin() -> None:
    (flag,) = backend_misfits("build-1", "gvisor", FLAG, "none", capacity(RUNC))
    assert flag.blocking
    assert flag.message == (
        "build-1 cannot run gVisor (backend gvisor chosen by --backend): its docker engine has "
        "no `runsc` runtime"
    )
    assert "register runsc on build-1" in flag.hint and "--backend docker" in flag.hint
    assert "docs/backends.md" in flag.hint
    (inventory,) = backend_misfits("build-1", "gvisor", FILE, "none", capacity(RUNC))
    assert "(backend gvisor set at /ops/hosts.toml:4 hosts.build-1.backend)" in inventory.message
    assert "or change /ops/hosts.toml:4 hosts.build-1.backend" in inventory.hint


@pytest.mark.parametrize("network", ["open", "allowlist"])
def test_gvisor_registered_without_a_network_refuses_a_session_that_needs_one(
    network: str,
) -> None:
    (misfit,) = backend_misfits("build-1", "gvisor", FLAG, network, capacity(RUNC, RUNSC_NO_NET))
    assert misfit.blocking
    assert "build-1 runs gVisor only without a network" in misfit.message
    assert "registered with --network=none" in misfit.message
    assert f"this session's network is {network}" in misfit.message
    assert "(backend gvisor chosen by --backend)" in misfit.message
    assert "--network none" in misfit.hint and "--backend docker" in misfit.hint


def test_gvisor_fits_where_runsc_can_give_what_the_session_asks() -> None:
    assert backend_misfits("b", "gvisor", FLAG, "none", capacity(RUNC, RUNSC_NO_NET)) == []
    assert backend_misfits("b", "gvisor", FLAG, "open", capacity(RUNC, RUNSC)) == []
    # hosts check: no session, so only whether runsc is there at all
    assert backend_misfits("b", "gvisor", FILE, None, capacity(RUNC, RUNSC_NO_NET)) == []


def test_runtimes_that_could_not_be_read_are_a_warning_not_a_refusal() -> None:
    unread = Capacity(cpus=2, runtimes_error="permission denied")
    (misfit,) = backend_misfits("build-1", "gvisor", FLAG, "open", unread)
    assert not misfit.blocking
    assert "not checked whether build-1 can run gVisor (backend gvisor" in misfit.message
    assert "permission denied" in misfit.message and "hosts check build-1" in misfit.hint


# -- the probe's lines and the agent's facts -----------------------------------------------------
def test_the_probe_gives_the_engines_runtimes_and_kvm() -> None:
    output = (
        "cpus 2\n"
        'runtimes {"runc":{"path":"runc"},"runsc":{"path":"/usr/bin/runsc",'
        '"runtimeArgs":["--network=none"]}}\n'
        "kvm 1\n"
    )
    found = parse_probe(output)
    assert found.cpus == 2 and found.kvm is True
    assert found.runtimes == (RUNC, RUNSC_NO_NET)
    assert found.runtime("runsc") == RUNSC_NO_NET and found.runtime("kata") is None


def test_a_probe_without_runtimes_says_why_and_junk_is_not_runtimes() -> None:
    unread = parse_probe("runtimes_error Cannot connect to the Docker daemon\nkvm 0\n")
    assert unread.runtimes is None and unread.kvm is False
    assert unread.runtimes_error == "Cannot connect to the Docker daemon"
    junk = parse_probe("runtimes not json\nkvm maybe\n")
    assert junk.runtimes is None and junk.runtimes_error and junk.kvm is None
    assert parse_probe("runtimes [1, 2]\n").runtimes is None
    assert parse_probe("cpus 1\n").runtimes is None  # an older probe: not said, not checked


def test_runtimes_of_the_wrong_shape_are_skipped() -> None:
    found = parse_runtimes({"runc": {"path": "runc"}, "bad": "x", "worse": {"path": 3},
                            "args": {"path": "/x", "runtimeArgs": "--network=none"}})  # fmt: skip
    assert found == (RUNC,)
    assert parse_runtimes(None) is None and parse_runtimes(["runc"]) is None


RUNTIME_FACTS = {
    "runc": {"path": "runc", "runtimeArgs": []},
    "runsc": {"path": "/usr/bin/runsc", "runtimeArgs": ["--network=none"]},
}


def test_hosts_check_reports_each_backend_from_the_facts() -> None:
    facts = {"docker": {"access": True, "runtimes": RUNTIME_FACTS},
             "kvm": {"present": True, "access": False}}  # fmt: skip
    backends = host_backends(facts)
    assert backends["docker"] == {"runtime": "runc", "available": True}
    assert backends["gvisor"] == {"runtime": "runsc", "available": True,
                                  "path": "/usr/bin/runsc", "args": ["--network=none"],
                                  "network": "none only"}  # fmt: skip
    assert backends["kvm"] is True and backends["runtimes"] == ["runc", "runsc"]
    plain_docker = host_backends({"docker": {"access": True, "runtimes": {"runc": {"path": "r"}}},
                                  "kvm": {"present": False}})  # fmt: skip
    assert plain_docker["gvisor"] == {"runtime": "runsc", "available": False}
    assert plain_docker["kvm"] is False


def test_hosts_check_says_unknown_where_the_host_did_not_say() -> None:
    older = host_backends({"docker": {"access": True, "version": "20.10"}})  # an older agent
    assert older["docker"]["available"] is True and older["gvisor"]["available"] is None
    assert older["kvm"] is None
    no_engine = host_backends({"docker": {"access": False}})
    assert no_engine["docker"]["available"] is False and no_engine["gvisor"]["available"] is False
    hostile = host_backends({"docker": HOSTILE, "kvm": [HOSTILE]})
    assert hostile["docker"]["available"] is False and hostile["kvm"] is None


def test_the_backends_cell_shows_what_the_host_can_run() -> None:
    facts = {"docker": {"access": True, "runtimes": RUNTIME_FACTS}, "kvm": {"present": True}}
    words = backends_words(host_backends(facts))
    assert words == [("docker", True), ("gvisor (network none only)", True), ("kvm", True)]
    entry = check_entry()
    runc_only = {"runc": RUNTIME_FACTS["runc"]}
    entry["backends"] = host_backends({"docker": {"access": True, "runtimes": runc_only}})
    output = render(check_table([entry], wide=True), 200, crop=False)
    assert "docker, no gvisor, kvm ?" in output
    assert "backends" in output
    entry["backends"] = {"docker": {"available": HOSTILE}, "gvisor": HOSTILE, "kvm": HOSTILE}
    hostile = render(check_table([entry], wide=True), 200, crop=False, terminal=True)
    assert_inert(hostile)
    assert "docker ?, gvisor ?, kvm ?" in plain(hostile)


# -- where the backend was chosen ----------------------------------------------------------------
def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_the_origin_is_the_hosts_table_its_files_defaults_or_the_default(tmp_path: Path) -> None:
    own = write(tmp_path / "a.toml", '[defaults]\nbackend = "docker"\n\n[hosts.b1]\n'
                'address = "x"\nbackend = "gvisor"\n')  # fmt: skip
    host = Host("b1", backend="gvisor", source_file=own)
    assert backend_origin(host) == BackendOrigin("inventory", f"{own}:6 hosts.b1.backend")
    shared = write(tmp_path / "b.toml", '[defaults]\nbackend = "gvisor"\n\n[hosts.b2]\n')
    host = Host("b2", backend="gvisor", source_file=shared)
    assert backend_origin(host) == BackendOrigin("inventory", f"{shared}:2 defaults.backend")
    bare = write(tmp_path / "c.toml", '[hosts.b3]\naddress = "x"\n')
    assert backend_origin(Host("b3", source_file=bare)) == BackendOrigin("default")
    assert backend_origin(Host("local", transport="local")) == BackendOrigin("default")


def test_a_backend_that_differs_from_the_inventorys_came_from_the_flag(tmp_path: Path) -> None:
    declared = Host("b1", source_file=write(tmp_path / "a.toml", '[hosts.b1]\naddress = "x"\n'))
    chosen = dataclasses.replace(declared, backend="gvisor")
    assert backend_origin(chosen, declared) == BackendOrigin("flag")
    assert backend_origin(declared, declared) == BackendOrigin("default")


# -- launch's wiring: refused before any work, a warning in explain, the why filled in ----------
def prepared(tmp_path: Path, backend: str, network: str) -> Prepared:
    declared = Host(
        "build-1",
        address="10.0.0.5",
        source_file=write(tmp_path / "h.toml", '[hosts.build-1]\naddress = "x"\n'),
    )
    chosen = dataclasses.replace(declared, backend=backend)  # as --backend makes it
    inventory = Inventory({"build-1": declared}, {})
    scan: Any = SimpleNamespace(total_bytes=1000)
    return Prepared(inventory, [chosen], None, scan,  # type: ignore[arg-type]
                    LaunchRequest("shell", task="true", network=network))  # fmt: skip


def plan(backend: str, network: str) -> list[Any]:
    request = LaunchRequest("shell", task="true", network=network)
    return [resolve_contract("abcd2345", target(backend), ROLE, WORKSPACE, request)]


def test_launch_refuses_gvisor_where_runsc_has_no_network_and_explain_warns(
    tmp_path: Path,
) -> None:
    ready = prepared(tmp_path, "gvisor", "open")
    capacities: dict[str, Capacity | str] = {"build-1": capacity(RUNC, RUNSC_NO_NET)}
    (refused,) = limit_misfits(ready, capacities)
    assert refused.blocking and "this session's network is open" in refused.message
    assert "chosen by --backend" in refused.message
    checked, blocking = judge_fit(ready, plan("gvisor", "open"), capacities)
    assert [m.message for m in blocking] == [refused.message]
    assert any("runs gVisor only without a network" in w for w in checked[0].warnings)
    assert checked[0].routing["why"] == "gvisor chosen by --backend"


def test_launch_refuses_gvisor_where_the_engine_has_no_runsc(tmp_path: Path) -> None:
    ready = prepared(tmp_path, "gvisor", "none")
    (refused,) = limit_misfits(ready, {"build-1": capacity(RUNC)})
    assert refused.blocking and "has no `runsc` runtime" in refused.message
    assert limit_misfits(ready, {"build-1": capacity(RUNC, RUNSC_NO_NET)}) == []


def test_a_docker_launch_is_not_held_by_gvisors_facts(tmp_path: Path) -> None:
    ready = prepared(tmp_path, "docker", "open")
    assert limit_misfits(ready, {"build-1": capacity(RUNC)}) == []
    checked, blocking = judge_fit(ready, plan("docker", "open"), {"build-1": capacity(RUNC)})
    assert blocking == []
    why = "docker by default (neither the inventory nor --backend sets one)"
    assert checked[0].routing["why"] == why
