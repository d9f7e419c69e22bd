"""Bad input gets a clear error naming what is wrong, and leaves no half-made session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import CLI
from tests.e2e.helpers import TEST_ROLE, make_workspace, workspace_containers


def role_dir(tmp_path: Path, manifest: str) -> Path:
    role = tmp_path / "role"
    role.mkdir()
    (role / "Dockerfile").write_text("FROM jackin-test-base:latest\n")
    (role / "jackin.role.toml").write_text(manifest)
    return role


BASE = 'version = 1\nname = "bad"\nruntimes = ["shell"]\nuser = "agent"\n'


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("dotdot", "jackin.role.toml:"),
        ("privileged", "operator"),
        ("name", "session name"),
        ("missing-ws", "does-not-exist"),
        ("unknown-host", "nowhere"),
        ("secret-env", "looks like a secret"),
    ],
)
def test_bad_launch_input_is_refused_before_any_effect(
    cli: CLI, local_inventory: Path, tmp_path: Path, laptop: Path, case: str, expected: str
) -> None:
    ws = make_workspace(tmp_path / "ws")
    role = TEST_ROLE
    extra: list[str] = []
    target = str(ws)
    if case == "dotdot":
        role = str(role_dir(tmp_path, BASE + 'dockerfile = "../Dockerfile"\n'))
    elif case == "privileged":
        role = str(role_dir(tmp_path, BASE + 'dockerfile = "Dockerfile"\nprivileged = true\n'))
    elif case == "name":
        extra = ["--name", "x; rm -rf ~"]
    elif case == "missing-ws":
        target = str(tmp_path / "does-not-exist")
    elif case == "unknown-host":
        extra = ["--on", "nowhere"]
    elif case == "secret-env":
        extra = ["--env", "GITHUB_TOKEN=ghp_x"]
    proc = cli.run("-i", str(local_inventory), "launch", "--role", role, "--runtime", "shell",
                   "--task", "true", *extra, target)  # fmt: skip
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert expected in proc.stderr, proc.stderr
    assert "hint" in proc.stderr or case in ("missing-ws",)
    # Nothing was made: no host root, no laptop state, no container.
    assert not (tmp_path / "host-root").exists()
    assert not (laptop / "jackin").exists()
    assert workspace_containers(Path(target)) == set()
    as_json = cli.run("-i", str(local_inventory), "launch", "--role", role, "--runtime", "shell",
                      "--task", "true", *extra, "--json", target)  # fmt: skip
    assert as_json.returncode == 2
    assert '"schema_version": "v1"' in as_json.stdout and expected in as_json.stdout


def test_a_bad_inventory_names_file_line_and_field(cli: CLI, tmp_path: Path) -> None:
    inv = tmp_path / "inv.toml"
    inv.write_text('[hosts.web]\naddress = "10.0.0.1"\nport = "twenty-two"\n')
    proc = cli.run("-i", str(inv), "hosts", "list")
    assert proc.returncode == 2
    assert f"{inv}:3" in proc.stderr and "port" in proc.stderr
