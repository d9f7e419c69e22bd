"""`--secret NAME=SOURCE`: named sources read on the laptop at launch (env, file, command and the
1Password CLI, here a stand-in `op` that answers as the real one does), delivered as files on a
tmpfs and exported into the agent's process only; looked for everywhere else, and redacted from
logs."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import CLI
from tests.e2e.helpers import TEST_ROLE, make_workspace, wait_for

OP_CANARY = "ghp_opcanary_7Qe2LxT0v9"
FILE_CANARY = "file-canary-4b7d1e"
CMD_CANARY = "cmd-canary-93ac20"
ENV_CANARY = "env-canary-1f0e88"
CANARIES = (OP_CANARY, FILE_CANARY, CMD_CANARY, ENV_CANARY)

# Answers like `op read` of the 1Password CLI: the field's value, or an [ERROR] line and exit 1.
STAND_IN_OP = f"""#!/bin/sh
[ "$1" = read ] || {{ echo "[ERROR] unknown command \\"$1\\"" >&2; exit 1; }}
shift
[ "$1" = --no-newline ] && shift
case "$1" in
  op://dev/github/token) printf '%s' '{OP_CANARY}' ;;
  *) echo "[ERROR] could not read secret '$1': isn't an item in any vault" >&2; exit 1 ;;
esac
"""

TASK = (
    "echo GT=$GITHUB_TOKEN FF=$FROM_FILE FC=$FROM_CMD FE=$FROM_ENV; "
    "echo MODE=$(stat -c '%a %u' /run/jackin/secrets/GITHUB_TOKEN) ME=$(id -u); "
    "echo PID1=$(tr '\\0' '\\n' < /proc/1/environ | grep -c GITHUB_TOKEN); "
    "touch /run/jackin/secrets/x 2>/dev/null && echo WRITABLE || echo READONLY"
)


@pytest.fixture
def stand_in_op(cli: CLI, tmp_path: Path) -> None:
    """`op` on the CLI's PATH: the stand-in above."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "op").write_text(STAND_IN_OP)
    (bin_dir / "op").chmod(0o755)
    cli.env["PATH"] = f"{bin_dir}:{cli.env.get('PATH', os.environ['PATH'])}"


@pytest.mark.usefixtures("stand_in_op")
def test_secrets_come_from_named_sources_and_reach_only_the_agent(
    cli: CLI, local_inventory: Path, tmp_path: Path, laptop: Path
) -> None:
    cli.env["MY_VAR"] = ENV_CANARY
    (tmp_path / "token.txt").write_text(FILE_CANARY + "\n")
    marker = tmp_path / "command-ran"
    ws = make_workspace(tmp_path / "ws")
    inv = str(local_inventory)
    secrets = ["--secret", "GITHUB_TOKEN=op://dev/github/token",
               "--secret", f"FROM_FILE=file:{tmp_path / 'token.txt'}",
               # The command line is shown as the source: it must not hold the value whole.
               "--secret", f"FROM_CMD=command:sh -c 'touch {marker}; printf cmd-canary-%s "
                           f"{CMD_CANARY.rsplit('-', 1)[1]}'",
               "--secret", "FROM_ENV=env:MY_VAR"]  # fmt: skip
    base = ["-i", inv, "--role", TEST_ROLE, "--runtime", "shell", "--network", "none"]

    # explain names every secret and runs no command (nor op) to do it.
    explained = cli.json(base[0], base[1], "explain", *base[2:], *secrets, "--task", TASK,
                         str(ws))["contracts"][0]  # fmt: skip
    assert not marker.exists()
    names = [c["name"] for c in explained["credentials"]]
    assert names == ["GITHUB_TOKEN", "FROM_FILE", "FROM_CMD", "FROM_ENV"]
    assert all(c["delivery"] == "file" and c["value"] == "<redacted>"
               for c in explained["credentials"])  # fmt: skip
    mounts = {m["container"]: m for m in explained["filesystem"]["mounts"]}
    assert mounts["/run/jackin/secrets"]["mode"] == "ro"

    launched = cli.run(base[0], base[1], "launch", *base[2:], *secrets, "--task", TASK, "--json",
                       str(ws))  # fmt: skip
    assert launched.returncode == 0, launched.stderr
    assert marker.exists()
    (session,) = json.loads(launched.stdout)["sessions"]
    row = wait_for(cli, local_inventory, session["id"])
    logs = cli.run("-i", inv, "logs", "--raw", session["id"], check=True).stdout
    assert row["state"] == "exited", logs
    # The agent's process had each value (it printed them); logs never carry them.
    assert ("GT=<redacted:GITHUB_TOKEN> FF=<redacted:FROM_FILE> FC=<redacted:FROM_CMD> "
            "FE=<redacted:FROM_ENV>") in logs  # fmt: skip
    assert f"MODE=400 {row['uid']} ME={row['uid']}" in logs
    assert "PID1=0" in logs and "READONLY" in logs

    inspect = subprocess.run(["docker", "inspect", row["container"]], capture_output=True,
                             text=True, check=True).stdout  # fmt: skip
    ps = subprocess.run(["ps", "-eww", "-o", "args"], capture_output=True, text=True).stdout
    ls_json = cli.run("-i", inv, "ls", "--json", check=True).stdout
    for text in (inspect, ps, launched.stdout, launched.stderr, logs, ls_json,
                 json.dumps(explained)):  # fmt: skip
        for canary in CANARIES:
            assert canary not in text
    for path in [*laptop.rglob("*"), *(tmp_path / "host-root").rglob("*")]:
        if path.is_file():
            data = path.read_bytes()
            assert not [c for c in CANARIES if c.encode() in data], path
    held = Path(f"/dev/shm/jackin-secrets-{session['id']}")
    assert held.is_dir()
    cli.run("-i", inv, "rm", "--force", session["id"], check=True)
    assert not held.exists()


@pytest.mark.usefixtures("stand_in_op")
def test_a_source_that_fails_stops_the_launch_before_any_work(
    cli: CLI, local_inventory: Path, tmp_path: Path
) -> None:
    ws = make_workspace(tmp_path / "ws")
    base = ["-i", str(local_inventory), "launch", "--role", TEST_ROLE, "--runtime", "shell",
            "--task", "true"]  # fmt: skip
    for secret, said in (
        ("X=op://dev/nope/field", "--secret X: op://dev/nope/field failed (exit 1): [ERROR] "
                                  "could not read secret"),
        ("X=env:NOT_SET_ANYWHERE", "--secret X: the laptop variable NOT_SET_ANYWHERE is not set"),
        (f"X=file:{tmp_path / 'missing'}", "--secret X: cannot read"),
        ("X=command:false", "--secret X: command:false failed (exit 1)"),
        ("HOME=env:PATH", "--secret HOME: HOME is already set another way"),
        ("1BAD=env:PATH", "expected NAME=SOURCE"),
        ("X=ftp:thing", "is not a credential source"),
    ):  # fmt: skip
        done = cli.run(*base, "--secret", secret, str(ws))
        assert done.returncode == 2, (secret, done.stderr)
        assert said in " ".join(done.stderr.split()), (secret, done.stderr)
    assert not (tmp_path / "host-root").exists()
