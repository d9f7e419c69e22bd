"""Issue 6 item 8: a role build runs the role's RUN steps as root on the host's engine. Unless
the operator says otherwise, it must not reach anything: not the host, not the docker bridge
gateway (where metadata services and internal hosts would be), whether the role is a local
directory or was fetched from a git URL. The contract says which network the build has.

The attack: a role whose Dockerfile RUN step calls a test HTTP server listening on the docker
bridge gateway of this machine (docker0). The server records every request it gets; a RUN step
that cannot connect records its failure in the image and the build goes on, so the launch
itself succeeds either way and the server's log is the verdict (no timing involved: the build
is over when launch returns).
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests import fleet as fleet_mod
from tests.conftest import CLI
from tests.e2e.helpers import REPO, git, make_workspace
from tests.e2e.test_sandbox_truth import docker0_address

PROBE_RUN = (
    "RUN python3 -c 'import sys, urllib.request; "
    'urllib.request.urlopen(sys.argv[1], timeout=10).read(); print("BUILD-PROBE reached")\' '
    "{url} > /build-probe 2>&1 || echo 'BUILD-PROBE blocked' >> /build-probe\n"
)


class _Recorder(ThreadingHTTPServer):
    hits: list[str]


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        assert isinstance(self.server, _Recorder)
        self.server.hits.append(self.path)
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[_Recorder]:
    """An HTTP server on the docker bridge gateway: what a build on the default network reaches."""
    server = _Recorder((docker0_address(), 0), _Handler)
    server.hits = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


def probing_role(base: Path, server: _Recorder) -> tuple[Path, str]:
    """roles/test-agent under a unique name, with a RUN step that calls `server`."""
    name = f"build-probe-{secrets.token_hex(4)}"
    directory = base / name
    shutil.copytree(REPO / "roles" / "test-agent", directory)
    manifest = directory / "jackin.role.toml"
    manifest.write_text(manifest.read_text().replace('name = "test-agent"', f'name = "{name}"'))
    host, port = server.server_address[:2]
    url = f"http://{host!s}:{port}/{name}"
    dockerfile = directory / "Dockerfile"
    text = dockerfile.read_text()
    # Right after FROM: the step runs as root, as an attacker's role would.
    head, rest = text.split("\n\nRUN useradd", 1)
    dockerfile.write_text(head + "\n\n" + PROBE_RUN.format(url=url) + "\nRUN useradd" + rest)
    return directory, name


def as_git_url(directory: Path) -> str:
    """The role committed in a git repo of its own, given as a git+file:// URL."""
    git(directory, "init", "-q", "-b", "main")
    git(directory, "add", ".")
    git(directory, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "role")
    return f"git+file://{directory}#main"


def remove_role_images(name: str, *docker_prefix: str) -> None:
    images = subprocess.run(
        [*docker_prefix, "docker", "images", "-q", "--filter", f"label=jackin.role={name}"],
        capture_output=True, text=True, check=False,
    ).stdout.split()  # fmt: skip
    for image in sorted(set(images)):
        subprocess.run([*docker_prefix, "docker", "rmi", "-f", image], capture_output=True,
                       check=False)  # fmt: skip


def launch_role(cli: CLI, inventory: Path, ws: Path, role: str, *args: str) -> dict[str, Any]:
    """Launch one task session with `role`; remove the session; return its contract."""
    data = cli.json("-i", str(inventory), "launch", "--role", role, "--runtime", "shell",
                    "--task", "true", *args, str(ws))  # fmt: skip
    (session,) = data["sessions"]
    assert session["error"] is None, session
    cli.run("-i", str(inventory), "rm", "--force", session["id"], check=True)
    contract: dict[str, Any] = session["contract"]
    return contract


@pytest.mark.parametrize("origin", ["directory", "git"])
def test_a_role_build_reaches_nothing_by_default(
    cli: CLI, local_inventory: Path, tmp_path: Path, recorder: _Recorder, origin: str
) -> None:
    directory, name = probing_role(tmp_path / "roles", recorder)
    role = as_git_url(directory) if origin == "git" else str(directory)
    ws = make_workspace(tmp_path / "ws")
    try:
        explained = cli.json("-i", str(local_inventory), "explain", "--role", role,
                             "--runtime", "shell", str(ws))["contracts"][0]  # fmt: skip
        contract = launch_role(cli, local_inventory, ws, role)
    finally:
        remove_role_images(name)
    assert recorder.hits == [], "the role build reached the host's bridge gateway"
    for said in (explained, contract):
        build = said["build"]
        assert build["network"] == "none" and build["reaches"] == []
        assert build["role_origin"] == origin
        assert (role if origin == "git" else str(directory)) in build["role_source"]
        assert "build network: none" in " ".join(e["action"] for e in said["plan"])


def test_a_role_build_has_the_network_only_when_the_operator_gives_it(
    cli: CLI, local_inventory: Path, tmp_path: Path, recorder: _Recorder
) -> None:
    """The same probe does reach the server when asked: the test above can see a leak."""
    directory, name = probing_role(tmp_path / "roles", recorder)
    ws = make_workspace(tmp_path / "ws")
    try:
        contract = launch_role(cli, local_inventory, ws, str(directory),
                               "--build-network", "default")  # fmt: skip
    finally:
        remove_role_images(name)
    assert recorder.hits == [f"/{name}"]
    assert contract["build"]["network"] == "default" and contract["build"]["reaches"]
    assert any("role build has the network" in w for w in contract["warnings"])


def test_a_build_that_needs_the_network_fails_with_a_hint_naming_the_flag(
    cli: CLI, local_inventory: Path, tmp_path: Path, recorder: _Recorder
) -> None:
    directory, name = probing_role(tmp_path / "roles", recorder)
    dockerfile = directory / "Dockerfile"
    # The same download, now required: the build fails instead of recording the failure.
    dockerfile.write_text(dockerfile.read_text().replace(" || echo 'BUILD-PROBE blocked' >> "
                                                         "/build-probe", ""))  # fmt: skip
    ws = make_workspace(tmp_path / "ws")
    try:
        data = cli.json("-i", str(local_inventory), "launch", "--role", str(directory),
                        "--runtime", "shell", "--task", "true", str(ws), ok_codes=(3,))  # fmt: skip
    finally:
        remove_role_images(name)
    (session,) = data["sessions"]
    assert session["state"] == "not_started"
    assert "--build-network default" in session["error"]
    assert recorder.hits == []


def test_an_unknown_build_network_is_refused(
    cli: CLI, local_inventory: Path, tmp_path: Path
) -> None:
    ws = make_workspace(tmp_path / "ws")
    role = str(REPO / "roles" / "test-agent")
    proc = cli.run("-i", str(local_inventory), "explain", "--role", role, "--runtime", "shell",
                   "--build-network", "host", str(ws))  # fmt: skip
    assert proc.returncode != 0
    assert "--build-network 'host'" in proc.stderr + proc.stdout


@pytest.mark.parametrize(("args", "reached"), [((), False), (("--build-network", "default"), True)])
def test_a_git_role_build_on_an_ssh_host_has_the_network_the_operator_gave(
    cli: CLI, fleet: fleet_mod.FleetInfo, fleet_inventory: Path, tmp_path: Path,
    recorder: _Recorder, args: tuple[str, ...], reached: bool,
) -> None:  # fmt: skip
    """Over SSH the build runs in the host's own engine (nested in a fleet container, whose
    default network still reaches this machine's bridge gateway): the same default holds."""
    directory, name = probing_role(tmp_path / "roles", recorder)
    role = as_git_url(directory)
    ws = make_workspace(tmp_path / "ws")
    try:
        contract = launch_role(cli, fleet_inventory, ws, role, "--on", "fleet-1", *args)
    finally:
        remove_role_images(name, "docker", "exec", fleet.host("fleet-1").container)
    assert recorder.hits == ([f"/{name}"] if reached else [])
    assert contract["build"]["network"] == ("default" if reached else "none")
    assert contract["build"]["role_origin"] == "git"
