"""`--docker private` for real, locally and over SSH: the sandbox runs a container on a daemon of
its own (a sidecar, over TLS with a client certificate), and never sees the host's docker
socket, with `--docker private` or `none`; whatever is asked, the host's socket is not mounted.

The probe (tests/e2e/private_docker_probe.py) runs inside the sandbox and speaks the Engine API
itself (an image imported from a tiny root filesystem, a container created, started, waited for
and its output read), as `docker run` does. The test machines' sidecar image is
jackin-test-dind (scripts/fleet), run with `capabilities` (TESTBED.md: --privileged fails here).
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
from pathlib import Path

import pytest

from tests import fleet as fleet_mod
from tests.conftest import CLI, add_host_copy
from tests.e2e.helpers import TEST_ROLE, git, launch, make_workspace, wait_for

PROBE = Path(__file__).with_name("private_docker_probe.py")
SIDECAR_SETTINGS = (
    'private_docker_image = "jackin-test-dind:latest"\nprivate_docker_privilege = "capabilities"\n'
)


def _on_host(machine: str, *argv: str) -> str:
    prefix = [] if machine == "local" else ["docker", "exec", fleet_mod.container(machine)]
    return subprocess.run([*prefix, *argv], capture_output=True, text=True, check=True).stdout


@pytest.fixture(params=["local", "fleet-1"])
def docker_host(
    request: pytest.FixtureRequest, tmp_path: Path, local_inventory: Path
) -> tuple[str, Path, str]:
    """(host name, inventory dir, machine): a host whose sidecar image is the test one."""
    if request.param == "local":
        (local_inventory / "local.toml").write_text(
            (local_inventory / "local.toml").read_text() + SIDECAR_SETTINGS
        )
        return "local", local_inventory, "local"
    inventory = request.getfixturevalue("fleet_inventory")
    name = "pd"
    add_host_copy(inventory, request.param, name, f"/home/jackin/pd-{secrets.token_hex(4)}")
    host_file = inventory / f"{name}.toml"
    host_file.write_text(host_file.read_text() + SIDECAR_SETTINGS)
    return name, inventory, request.param


def _workspace(tmp_path: Path) -> Path:
    ws = make_workspace(tmp_path / "ws")
    shutil.copy(PROBE, ws / "probe.py")
    git(ws, "add", "probe.py")
    git(ws, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "probe")
    return ws


def _said(cli: CLI, inventory: Path, session_id: str, on: str) -> dict[str, str]:
    row = wait_for(cli, inventory, session_id, on=on)
    assert row["state"] == "exited", row
    out = cli.run("-i", str(inventory), "logs", "--raw", session_id, check=True).stdout
    assert "PROBE_DONE" in out, out
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def test_a_private_daemon_runs_containers_and_no_session_sees_the_host_socket(
    cli: CLI, docker_host: tuple[str, Path, str], tmp_path: Path
) -> None:
    name, inventory, machine = docker_host
    ws = _workspace(tmp_path)
    common = ("--on", name, "--runtime", "shell", "--task", "python3 /workspace/probe.py")
    made: list[str] = []
    try:
        (private,) = launch(cli, inventory, ws, *common, "--docker", "private")
        made.append(private["id"])
        (plain,) = launch(cli, inventory, ws, *common)
        made.append(plain["id"])

        contract = private["contract"]
        access = contract["docker_access"]
        assert access["access"] == "private", access
        assert "elevated on the host" in access["privileges"], access
        assert "CAP_SYS_RESOURCE" in access["privileges"], access  # the test hosts' setting
        assert access["host_socket"].startswith("never mounted"), access
        sidecar = f"jk-{private['id']}-dockerd"
        assert sidecar in access["daemon"], access
        assert contract["spec"]["private_docker"] == {
            "image": "jackin-test-dind:latest",
            "privilege": "capabilities",
        }
        actions = " | ".join(effect["action"] for effect in contract["plan"])
        assert f"create and start sidecar {sidecar}" in actions, actions
        assert any("elevated privileges on the host" in w for w in contract["warnings"])
        assert plain["contract"]["docker_access"]["access"] == "none"

        inside = _said(cli, inventory, private["id"], name)
        assert inside["SOCKET"] == "absent", inside
        assert inside["DOCKER_HOST"] == f"tcp://{sidecar}:2376", inside
        assert inside["VERSION"][:1].isdigit(), inside  # the daemon answered, over TLS
        assert inside["NOCERT"] == "refused", inside  # and only to its client certificate
        assert inside["HELLO"] == "hello from inner" and inside["EXIT"] == "0", inside

        none = _said(cli, inventory, plain["id"], name)
        assert none["SOCKET"] == "absent" and none["DOCKER_HOST"] == "", none

        # The session ended: its daemon was stopped with it (ls reconciles).
        status = _on_host(machine, "docker", "inspect", "--format", "{{.State.Status}}", sidecar)
        assert status.strip() == "exited", status

        # rm takes the sidecar, its network and the client's volume.
        cli.run("-i", str(inventory), "rm", "--force", private["id"], check=True)
        made.remove(private["id"])
        session = private["id"]
        script = (
            f"docker ps -aq --filter name={sidecar}; "
            f"docker network ls -q --filter name=jk-{session}-docker; "
            f"docker volume ls -q --filter name=jk-{session}-docker-client"
        )
        left = _on_host(machine, "sh", "-c", script)
        assert left.strip() == "", left
    finally:
        for session_id in made:
            cli.run("-i", str(inventory), "rm", "--force", session_id, check=True)


def test_the_host_docker_socket_is_never_mounted_whatever_is_asked(
    cli: CLI, local_inventory: Path, tmp_path: Path
) -> None:
    ws = _workspace(tmp_path)
    host_file = local_inventory / "local.toml"
    host_file.write_text(host_file.read_text() + 'host_mounts = ["/var/run", "/srv"]\n')
    base = ["-i", str(local_inventory), "launch", "--role", TEST_ROLE, "--runtime", "shell",
            "--task", "true"]  # fmt: skip
    for source in ("/var/run/docker.sock", "/run/docker.sock", "/srv/x/containerd.sock"):
        refused = cli.run(*base, "--mount", f"host:{source}:/var/run/docker.sock", str(ws))
        said = " ".join(refused.stderr.split())
        assert refused.returncode == 2, (source, refused.stdout, refused.stderr)
        assert "a container engine's socket is never mounted" in said, said
        assert "--docker private" in said, said
    # The socket's directory is refused on the host, whatever the inventory allows.
    host_file.write_text(host_file.read_text().replace('"/var/run"', '"/run"'))
    done = cli.run(*base, "--json", "--mount", "host:/run:/x", str(ws))
    (record,) = json.loads(done.stdout)["sessions"]
    assert record["state"] == "failed_setup", record
    assert "never mounted (it is or holds /run" in (record["error"] or ""), record
    listed = subprocess.run(["docker", "ps", "-aq", "--filter", f"name=jk-{record['id']}-"],
                            capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert listed.strip() == "", listed
