"""`pull` at the boundary, attacked end to end through the CLI (issue 6, items 7, 10 and 13).

- A host does not choose where files land on the laptop: a compromised host that reports another
  workspace path for its sessions gets nothing written there; a session this laptop did not
  launch is pulled only into a repository the user names.
- A pull is bounded (`--max-size`) and streamed: a copy session holding a 64 MB sparse file is
  refused under a 1M limit, with nothing left behind on either side, and pulled whole under the
  default limit without the laptop process ever holding it in memory.
- Links in a copy session that point outside the pulled tree are reported (human output, escaped;
  `--json`, a list) and never made.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import fleet as fleet_mod
from tests.conftest import CLI
from tests.e2e.helpers import git, launch, make_workspace, wait_for

MB = 1024 * 1024


@pytest.fixture(params=["local", "fleet-1"])
def target(request: pytest.FixtureRequest, local_inventory: Path) -> tuple[str, Path]:
    if request.param == "local":
        return "local", local_inventory
    return request.param, request.getfixturevalue("fleet_inventory")


Sessions = list[tuple[CLI, Path, str]]


@pytest.fixture
def sessions() -> Iterator[Sessions]:
    """Sessions a test made, removed at the end (the fleet hosts are shared)."""
    made: Sessions = []
    yield made
    for cli, inventory, sid in made:
        cli.run("-i", str(inventory), "rm", "--force", sid)


def host_root(inventory: Path) -> Path:
    text = (inventory / "local.toml").read_text()
    return Path(text.split('root = "', 1)[1].split('"', 1)[0])


def session_files(host: str, inventory: Path, sid: str) -> list[str]:
    """The names in the host's session directory (where the transfer files live)."""
    if host == "local":
        return sorted(os.listdir(host_root(inventory) / "sessions" / sid))
    done = fleet_mod.docker_exec(fleet_mod.container(host), "sh", "-c",
                                 f"ls -A ~{fleet_mod.USER}/.jackin/sessions/{sid}")  # fmt: skip
    return sorted(done.stdout.split())


def plain_workspace(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "data.txt").write_text("input\n")
    return path


def copy_session(
    cli: CLI, inventory: Path, host: str, ws: Path, task: str, sessions: Sessions
) -> str:
    (session,) = launch(cli, inventory, ws, "--on", host, "--runtime", "shell",
                        "--network", "none", "--task", task)  # fmt: skip
    sessions.append((cli, inventory, session["id"]))
    row = wait_for(cli, inventory, session["id"])
    assert row["state"] == "exited", row
    return str(session["id"])


def compromise_local_host(inventory: Path, claimed: Path) -> None:
    """What a host that is not trustworthy can do: answer anything. Here every session it lists
    claims its workspace lives at `claimed` on the laptop. The deployed agent is patched in place
    (a compromised host owns those files), at the one function every reply goes through."""
    (agent,) = (host_root(inventory) / "agent").glob("jackin-agent-*")
    protocol = agent / "agent_host" / "protocol.py"
    assert "def encode(" in protocol.read_text()
    with protocol.open("a") as handle:
        handle.write(
            "\n_honest_encode = encode\n\n"
            "def encode(message):\n"
            "    result = message.get('result')\n"
            "    if isinstance(result, dict) and isinstance(result.get('sessions'), list):\n"
            "        for entry in result['sessions']:\n"
            f"            entry['workspace_path'] = {str(claimed)!r}\n"
            "    return _honest_encode(message)\n"
        )
    for cached in (agent / "agent_host" / "__pycache__").glob("protocol.*"):
        cached.unlink()


# Runs the CLI as `python -m jackin_remote` does, and at exit writes the peak resident memory of
# this process alone (not the local host agent or the git and tar it runs) to argv[1].
_MEASURED = """
import atexit, resource, runpy, sys
out = sys.argv.pop(1)
def report():
    with open(out, "w") as handle:
        handle.write(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024))
atexit.register(report)
sys.argv[0] = "jackin_remote"
runpy.run_module("jackin_remote", run_name="__main__", alter_sys=True)
"""


def run_measured(cli: CLI, tmp_path: Path, *args: str) -> tuple[int, str, str, int]:
    """Run the CLI: (exit code, stdout, stderr, peak resident memory of the CLI process)."""
    peak_file = tmp_path / "peak-rss"
    proc = subprocess.run([sys.executable, "-c", _MEASURED, str(peak_file), *args],
                          env=cli.env, cwd=cli.cwd, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    return proc.returncode, proc.stdout, proc.stderr, int(peak_file.read_text())


# -- item 7: a host's answers do not choose laptop paths --------------------------------------


@pytest.mark.parametrize("isolation", ["clone", "copy"])
def test_a_compromised_host_cannot_choose_where_pull_writes(
    cli: CLI, local_inventory: Path, tmp_path: Path, isolation: str, sessions: Sessions
) -> None:
    inventory = local_inventory
    if isolation == "clone":
        ws = make_workspace(tmp_path / "ws")
        (session,) = launch(cli, inventory, ws, "--runtime", "demo", "--network", "none",
                            "--task", "write agent.txt: from the agent")  # fmt: skip
        sid = session["id"]
        sessions.append((cli, inventory, sid))
        assert wait_for(cli, inventory, sid)["state"] == "exited"
        # The victim is another clone of the same repository, so a pull into it would work.
        victim = tmp_path / "victim"
        subprocess.run(["git", "clone", "-q", str(ws), str(victim)], check=True)
    else:
        ws = plain_workspace(tmp_path / "ws")
        sid = copy_session(cli, inventory, "local", ws, "echo from the agent > agent.txt", sessions)
        victim = tmp_path / "victim"
        victim.mkdir()
    victim_before = sorted(str(p.relative_to(victim)) for p in victim.rglob("*"))

    compromise_local_host(inventory, victim)
    # The claim reaches the laptop through a merge and through a rebuild of the local view.
    for args in (("ls",), ("ls", "--rebuild")):
        listed = cli.json("-i", str(inventory), *args, ok_codes=(0, 3))
        rows = [row for row in listed["sessions"] if row["id"] == sid]
        assert [row["workspace_path"] for row in rows] == [str(ws)], "a host set a laptop path"

    pulled = cli.json("-i", str(inventory), "pull", sid)
    assert sorted(str(p.relative_to(victim)) for p in victim.rglob("*")) == victim_before
    if isolation == "clone":
        assert git(ws, "show", f"jackin/{sid}:agent.txt") == "from the agent"
        listed_branches = git(victim, "branch", "--list", f"jackin/{sid}")
        assert listed_branches == "", "the pull wrote into the repository the host named"
    else:
        assert pulled["path"] == str(ws / ".jackin" / "pulled" / sid)
        assert (ws / ".jackin" / "pulled" / sid / "agent.txt").read_text() == "from the agent\n"


def test_a_session_launched_elsewhere_is_pulled_only_where_the_user_says(
    cli: CLI, local_inventory: Path, tmp_path: Path, sessions: Sessions
) -> None:
    """Another laptop launched it: this one has no record of its workspace, and the host's claim
    is no substitute. Without --into, pull refuses (naming the host) and writes nothing."""
    inventory = local_inventory
    other = CLI(env={**cli.env, "JACKIN_HOME": str(tmp_path / "other-laptop")}, cwd=cli.cwd)
    ws = plain_workspace(tmp_path / "ws")
    sid = copy_session(other, inventory, "local", ws, "echo from the agent > agent.txt",
                       sessions)  # fmt: skip
    victim = tmp_path / "victim"
    victim.mkdir()
    compromise_local_host(inventory, victim)
    cwd_before = sorted(os.listdir(cli.cwd))

    refused = cli.run("-i", str(inventory), "pull", sid)
    assert refused.returncode != 0
    assert "local" in refused.stderr and "--into" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr
    assert os.listdir(victim) == [] and sorted(os.listdir(cli.cwd)) == cwd_before

    into = tmp_path / "chosen"
    into.mkdir()
    cli.run("-i", str(inventory), "pull", sid, "--into", str(into), check=True)
    assert (into / ".jackin" / "pulled" / sid / "agent.txt").read_text() == "from the agent\n"
    assert os.listdir(victim) == []


# -- item 10: bounded, streamed pulls ---------------------------------------------------------


def test_a_pull_over_the_size_limit_is_refused_and_leaves_nothing(
    cli: CLI, target: tuple[str, Path], tmp_path: Path, sessions: Sessions
) -> None:
    host, inventory = target
    ws = plain_workspace(tmp_path / "ws")
    sid = copy_session(cli, inventory, host, ws,
                       "truncate -s 64M big.bin && echo small > small.txt",
                       sessions)  # fmt: skip
    pulled = ws / ".jackin" / "pulled"

    code, _, stderr, _ = run_measured(cli, tmp_path, "-i", str(inventory), "pull", sid,
                                      "--max-size", "1M")  # fmt: skip
    assert code != 0 and "Traceback" not in stderr
    assert "--max-size" in stderr and "1M" in stderr, stderr
    assert not pulled.exists() or os.listdir(pulled) == [], "partial files left on the laptop"
    assert not [name for name in session_files(host, inventory, sid) if "pull.tar" in name]

    refused = cli.json("-i", str(inventory), "pull", sid, "--max-size", "1M", ok_codes=(1,))
    assert "--max-size" in refused["error"]["message"] + (refused["error"]["hint"] or "")

    bad = cli.run("-i", str(inventory), "pull", sid, "--max-size", "lots")
    assert bad.returncode == 2 and "--max-size" in bad.stderr

    # Under the default limit it arrives whole, streamed: the laptop never holds the 64 MB.
    _, _, _, baseline = run_measured(cli, tmp_path, "-i", str(inventory), "ls", "--json")
    code, _, stderr, peak = run_measured(cli, tmp_path, "-i", str(inventory), "pull", sid,
                                         "--json")  # fmt: skip
    assert code == 0, stderr
    big = pulled / sid / "big.bin"
    assert big.stat().st_size == 64 * MB and (pulled / sid / "small.txt").read_text() == "small\n"
    assert peak < baseline + 32 * MB, f"pull peaked at {peak // MB} MB, ls at {baseline // MB} MB"
    assert os.listdir(pulled) == [sid]
    assert not [name for name in session_files(host, inventory, sid) if "pull.tar" in name]


# -- item 13: links out of the pulled tree ----------------------------------------------------

LINKS_TASK = (
    "mkdir -p sub/deep && echo x > data.txt"
    " && ln -s /home/agent/.ssh keys"  # absolute
    " && ln -s ../../etc/passwd up"  # climbs out from the top
    " && ln -s ../../../x sub/deep/up3"  # climbs out from two levels down
    " && ln -s . self && ln -s self/../escape trick"  # out only through another link
    " && ln -s /etc \"$(printf 'esc\\033]0;owned\\007')\""  # a name with a terminal sequence
    " && ln -s sub/deep/../../data.txt fine && ln -s sub/.. top"  # inside: kept
)
OUTSIDE = {
    "keys": "/home/agent/.ssh",
    "up": "../../etc/passwd",
    "sub/deep/up3": "../../../x",
    "trick": "self/../escape",
    "esc\x1b]0;owned\x07": "/etc",
}


def test_links_out_of_the_pulled_tree_are_reported_and_not_made(
    cli: CLI, target: tuple[str, Path], tmp_path: Path, sessions: Sessions
) -> None:
    host, inventory = target
    ws = plain_workspace(tmp_path / "ws")
    sid = copy_session(cli, inventory, host, ws, LINKS_TASK, sessions)
    dest = ws / ".jackin" / "pulled" / sid

    data: dict[str, Any] = cli.json("-i", str(inventory), "pull", sid)
    assert {e["path"]: e["target"] for e in data["outside_links"]} == OUTSIDE
    for name in OUTSIDE:
        assert not os.path.lexists(dest / name), f"{name!r} was made"
    assert os.readlink(dest / "fine") == "sub/deep/../../data.txt"
    assert (dest / "fine").read_text() == "x\n"
    assert os.readlink(dest / "self") == "." and os.readlink(dest / "top") == "sub/.."

    human = cli.run("-i", str(inventory), "pull", sid, check=True)
    for name, link_target in OUTSIDE.items():
        if name.startswith("esc"):
            continue
        assert f"{name} -> {link_target}" in human.stderr, human.stderr
    # The hostile name is shown, escaped: no raw ESC/BEL reaches the terminal.
    assert "\x1b" not in human.stderr + human.stdout and "\x07" not in human.stderr
    assert "esc\\x1b]0;owned\\x07 -> /etc" in human.stderr, human.stderr


def test_links_out_of_the_repository_on_a_pulled_branch_are_reported(
    cli: CLI, local_inventory: Path, tmp_path: Path, sessions: Sessions
) -> None:
    """A clone session's links stay blobs in git, but a checkout of the branch would make them:
    the ones the session added that point outside the repository are reported too."""
    ws = make_workspace(tmp_path / "ws")
    task = ("ln -s /home/agent/.ssh keys && ln -s ../../x up && ln -s . self"
            " && ln -s self/../out trick && ln -s README.md ok")  # fmt: skip
    (session,) = launch(cli, local_inventory, ws, "--runtime", "shell", "--network", "none",
                        "--task", task)  # fmt: skip
    sid = session["id"]
    sessions.append((cli, local_inventory, sid))
    assert wait_for(cli, local_inventory, sid)["state"] == "exited"

    data = cli.json("-i", str(local_inventory), "pull", sid)
    expected = {"keys": "/home/agent/.ssh", "up": "../../x", "trick": "self/../out"}
    assert {e["path"]: e["target"] for e in data["outside_links"]} == expected
    assert git(ws, "cat-file", "-p", f"jackin/{sid}:keys") == "/home/agent/.ssh"
    assert not os.path.lexists(ws / "keys"), "the user's working tree was touched"
    human = cli.run("-i", str(local_inventory), "pull", sid, check=True)
    for name, link_target in expected.items():
        assert f"{name} -> {link_target} points outside" in human.stderr, human.stderr


def test_a_large_diff_arrives_whole_over_ssh(
    cli: CLI, fleet_inventory: Path, tmp_path: Path, sessions: Sessions
) -> None:
    """A reply line longer than the SSH channel's receive window (2 MB) used to arrive in pieces
    that the client dropped as noise: the call then waited for ever."""
    ws = make_workspace(tmp_path / "ws")
    task = "seq 1 600000 > numbers.txt"  # about 3.9 MB of diff text
    (session,) = launch(cli, fleet_inventory, ws, "--on", "fleet-1", "--runtime", "shell",
                        "--network", "none", "--task", task)  # fmt: skip
    sid = session["id"]
    sessions.append((cli, fleet_inventory, sid))
    assert wait_for(cli, fleet_inventory, sid)["state"] == "exited"
    data = cli.json("-i", str(fleet_inventory), "diff", sid, timeout=300)
    assert "+600000\n" in data["text"] and not data["truncated"]
