"""The gvisor backend for real, local mode and over SSH: a gvisor session's sandbox runs on
gVisor's kernel (seen from inside: dmesg's "Starting gVisor...", a kernel release that is not the
host's; seen from the host: the container's runtime is runsc) while a docker one runs on the
host's kernel; `hosts check` reports runsc; a gvisor launch asking a network the host's runsc
cannot give is refused before any work, naming the host, the reason and where gvisor was chosen.

The test machines register runsc with `--network=none` (scripts/setup, scripts/fleet): gVisor's
own sandbox networking fails where the machine is itself a container (TESTBED.md).
"""

from __future__ import annotations

import secrets
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests import fleet as fleet_mod
from tests.conftest import CLI, add_host_copy
from tests.e2e.helpers import TEST_ROLE, launch, make_workspace, wait_for

# What the sandbox says about its kernel. dmesg: gVisor's own boot lines; under runc, the host's
# kernel log is closed to the agent (no capabilities), so only an error.
PROBE = "echo KERNEL=$(uname -r); uname -a; dmesg 2>&1 | head -n 5; echo PROBE_DONE"


def _on_host(machine: str, *argv: str) -> str:
    prefix = [] if machine == "local" else ["docker", "exec", fleet_mod.container(machine)]
    done = subprocess.run([*prefix, *argv], capture_output=True, text=True, check=True)
    return done.stdout


def _exists(machine: str, path: str) -> bool:
    return (
        _on_host(machine, "sh", "-c", f"test -e '{path}' && echo yes || echo no").strip() == "yes"
    )


@pytest.fixture(params=["local", "fleet-1"])
def gvisor_host(
    request: pytest.FixtureRequest, tmp_path: Path, local_inventory: Path
) -> tuple[str, Path, str, str]:
    """(host name, inventory dir, host root, machine): a host with a root of this test's own;
    `machine` is where its engine runs (local, or the fleet host's container)."""
    if request.param == "local":
        return "local", local_inventory, str(tmp_path / "host-root"), "local"
    inventory = request.getfixturevalue("fleet_inventory")
    name, root = "gv", f"/home/jackin/gv-{secrets.token_hex(4)}"
    add_host_copy(inventory, request.param, name, root)
    return name, inventory, root, request.param


def _host_file(inventory: Path, name: str) -> Path:
    return inventory / ("local.toml" if name == "local" else f"{name}.toml")


def test_a_gvisor_session_runs_on_gvisors_kernel_and_a_docker_one_does_not(
    cli: CLI, gvisor_host: tuple[str, Path, str, str], tmp_path: Path
) -> None:
    name, inventory, _, machine = gvisor_host
    ws = make_workspace(tmp_path / "ws")
    common = ("--on", name, "--runtime", "shell", "--network", "none", "--task", PROBE)
    made: list[str] = []
    try:
        (gvisor,) = launch(cli, inventory, ws, *common, "--backend", "gvisor")
        made.append(gvisor["id"])
        (docker,) = launch(cli, inventory, ws, *common, "--backend", "docker")
        made.append(docker["id"])
        routing = gvisor["contract"]["routing"]
        assert routing["backend"] == "gvisor" and routing["why"] == "gvisor chosen by --backend"
        assert routing["risk_tier"].startswith("gVisor (runsc)")
        assert gvisor["contract"]["spec"]["backend"] == "gvisor"
        assert "gVisor escape plus a host kernel bug" in gvisor["contract"]["warnings"][0]
        assert docker["contract"]["routing"]["risk_tier"].startswith("container (runc)")

        host_kernel = _on_host(machine, "uname", "-r").strip()
        said: dict[str, str] = {}
        for session in (gvisor, docker):
            row = wait_for(cli, inventory, session["id"], on=name)
            assert row["state"] == "exited", row
            logs = cli.run("-i", str(inventory), "logs", "--raw", session["id"], check=True)
            assert "PROBE_DONE" in logs.stdout, logs.stdout
            said[session["id"]] = logs.stdout
            runtime = _on_host(machine, "docker", "inspect", "--format",
                               "{{.HostConfig.Runtime}}", row["container"]).strip()  # fmt: skip
            assert runtime == ("runsc" if session is gvisor else "runc"), (session["id"], runtime)
        inside, outside = said[gvisor["id"]], said[docker["id"]]
        assert "Starting gVisor..." in inside, inside
        assert f"KERNEL={host_kernel}\n" not in inside, (host_kernel, inside)
        assert "Starting gVisor" not in outside, outside
        assert f"KERNEL={host_kernel}\n" in outside, (host_kernel, outside)
    finally:
        for session_id in made:
            cli.run("-i", str(inventory), "rm", "--force", session_id, check=True)


def test_hosts_check_reports_which_backends_a_host_can_run(
    cli: CLI, gvisor_host: tuple[str, Path, str, str]
) -> None:
    name, inventory, _, machine = gvisor_host
    checked = cli.json("-i", str(inventory), "hosts", "check", "--on", name, ok_codes=(0, 3))
    (entry,) = checked["hosts"]
    assert entry["status"] == "ok", entry
    backends: dict[str, Any] = entry["backends"]
    assert backends["docker"] == {"runtime": "runc", "available": True}, backends
    gvisor = backends["gvisor"]
    assert gvisor["available"] is True and gvisor["runtime"] == "runsc", backends
    assert "--network=none" in gvisor["args"] and gvisor["network"] == "none only", backends
    assert backends["kvm"] is _exists(machine, "/dev/kvm"), backends
    assert {"runc", "runsc"} <= set(backends["runtimes"]), backends
    assert entry["facts"]["docker"]["runtimes"]["runsc"]["path"] == gvisor["path"]
    wide = cli.run("-i", str(inventory), "hosts", "check", "--on", name, "--wide").stdout
    assert "gvisor (network none only)" in " ".join(wide.split()), wide


def test_gvisor_with_a_network_its_runsc_cannot_give_is_refused_before_any_work(
    cli: CLI, gvisor_host: tuple[str, Path, str, str], tmp_path: Path
) -> None:
    name, inventory, root, machine = gvisor_host
    ws = make_workspace(tmp_path / "ws")
    base = ["-i", str(inventory)]
    args = ["--role", TEST_ROLE, "--runtime", "shell", "--task", "true", "--on", name, str(ws)]
    reason = (f"{name} runs gVisor only without a network (its runsc is registered with "
              "--network=none), but this session's network is open")  # fmt: skip

    # explain: the contract says so as a warning, and makes nothing.
    explained = cli.json(*base, "explain", "--backend", "gvisor", "--network", "open", *args)
    (contract,) = explained["contracts"]
    warnings = " ".join(contract["warnings"])
    assert reason in warnings and "(backend gvisor chosen by --backend)" in warnings, warnings
    assert not _exists(machine, root)

    # Without --network: the default is allowlist where the host can enforce it; this host's
    # runsc has no network, so the session gets none, and the contract says why.
    defaulted = cli.json(*base, "explain", "--backend", "gvisor", *args)
    (contract,) = defaulted["contracts"]
    assert contract["network"]["policy"] == "none", contract["network"]
    assert "runsc --network=none" in contract["network"]["chosen"], contract["network"]
    assert not any("runs gVisor only without a network" in w for w in contract["warnings"])
    docker = cli.json(*base, "explain", "--backend", "docker", *args)["contracts"][0]
    assert docker["network"]["policy"] == "allowlist", docker["network"]
    assert docker["network"]["chosen"].startswith("default: allowlist"), docker["network"]

    # launch, --backend gvisor: refused before the agent, the sync, the build or the create.
    refused = cli.run(*base, "launch", "--backend", "gvisor", "--network", "open", *args)
    said = " ".join(refused.stderr.split())
    assert refused.returncode not in (0, 3), (refused.stdout, refused.stderr)
    assert "cannot launch, nothing was started" in said, said
    assert reason in said and "(backend gvisor chosen by --backend)" in said, said
    assert "--network none" in said and "--backend docker" in said, said
    assert not _exists(machine, root)

    # The inventory's backend: the refusal names its file and line; allowlist is refused too.
    host_file = _host_file(inventory, name)
    host_file.write_text(host_file.read_text() + 'backend = "gvisor"\n')
    line = len(host_file.read_text().splitlines())
    as_json = cli.json(*base, "launch", "--network", "allowlist", *args, ok_codes=(1, 2))
    message = as_json["error"]["message"]
    assert f"{name} runs gVisor only without a network" in message, message
    assert "this session's network is allowlist" in message, message
    assert f"(backend gvisor set at {host_file}:{line} hosts.{name}.backend)" in message, message
    assert not _exists(machine, root)
    listed = cli.json(*base, "ls", "--on", name, ok_codes=(0, 3))["sessions"]
    assert listed == [], listed

    # --backend docker wins over the inventory's gvisor: nothing is refused.
    ok = cli.json(*base, "explain", "--backend", "docker", "--network", "open", *args)
    (contract,) = ok["contracts"]
    assert contract["routing"]["backend"] == "docker", contract["routing"]
    assert contract["routing"]["why"] == "docker chosen by --backend"
    assert not any("gVisor" in w for w in contract["warnings"]), contract["warnings"]
