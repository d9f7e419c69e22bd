"""What an agent says of itself reaches the operator, and nothing else does: a shell agent prints
tags (a PR link, a status), waits for the test, then ends; `ls` shows blocked, then done, with
the link, locally and over SSH. Tags in code, unsafe URLs and terminal escapes are not taken,
and `open` hands the laptop's opener only the checked link."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from tests import fleet as fleet_mod
from tests.conftest import CLI
from tests.e2e.helpers import launch, make_workspace, session_row, wait_for

PR = "https://example.test/acme/app/pull/7"
# The agent: a real PR tag; tags quoted in code, unsafe and hostile ones that must be dropped;
# blocked until the test lets it go (a file in its /tmp), then working, then it ends.
TASK = (
    "echo 'opened <jackin:pr>" + PR + "</jackin:pr>'; "
    "echo 'example: `<jackin:issue>https://example.test/quoted</jackin:issue>`'; "
    "echo '> <jackin:repo>https://example.test/quoted-line</jackin:repo>'; "
    "echo '<jackin:link>javascript:alert(1)</jackin:link>'; "
    "printf '<jackin:link>https://example.test/\\033]8;;x\\007</jackin:link>\\n'; "
    "echo '<jackin:status>blocked</jackin:status> which database?'; "
    "until [ -e /tmp/go ]; do sleep 0.2; done; "
    "echo '<jackin:status>working</jackin:status>'"
)


def on_host(host: str) -> tuple[str, ...]:
    return () if host == "local" else ("docker", "exec", fleet_mod.container(host))


@pytest.fixture(params=["local", "fleet-1"])
def target(request: pytest.FixtureRequest, local_inventory: Path) -> tuple[str, Path]:
    if request.param == "local":
        return "local", local_inventory
    return request.param, request.getfixturevalue("fleet_inventory")


def _until_status(cli: CLI, inventory: Path, sid: str, status: str) -> dict:
    for _ in range(600):  # a bound on the agent getting there, never a timing expectation
        row = session_row(cli, inventory, sid)
        if row["agent_status"] == status:
            return row
        assert row["state"] in ("starting", "running"), row
        time.sleep(0.5)
    raise AssertionError(f"{sid} never showed {status}: {row}")


def test_an_agents_tags_show_as_status_and_links_and_nothing_unsafe_gets_through(
    cli: CLI, target: tuple[str, Path], tmp_path: Path
) -> None:
    host, inventory = target
    ws = make_workspace(tmp_path / "ws")
    (session,) = launch(cli, inventory, ws, "--on", host, "--runtime", "shell",
                        "--network", "none", "--memory", "300m", "--task", TASK)  # fmt: skip
    sid = session["id"]

    row = _until_status(cli, inventory, sid, "blocked")
    assert row["links"] == {"pr": [PR]}, row["links"]
    # Its resources, read from its cgroup (OOM kills are known only there, not to docker stats).
    assert row["pids"] >= 1 and row["memory_limit_bytes"] == 300 * 1024**2, row
    assert row["oom_kills"] == 0 and row["memory_bytes"] > 0, row
    listing = cli.json("-i", str(inventory), "ls", "--on", host)
    (summary,) = listing["hosts"]
    assert summary["agents"] == "blocked" and listing["fleet"]["agents"] == "blocked"
    table = cli.run("-i", str(inventory), "ls", "--on", host, "--wide", check=True).stdout
    assert "blocked" in table and PR in table and "\x1b" not in table

    # ls --watch over held connections: the blocked agent rings the bell and runs the notify
    # command (the session in its environment); the test hook ends the watch once it has.
    heard = tmp_path / "heard"
    notify = tmp_path / "notify"
    notify.write_text(f'#!/bin/sh\necho "$JACKIN_SESSION $JACKIN_HOST $JACKIN_STATUS" >> {heard}\n')
    notify.chmod(0o755)
    cli.env.update(JACKIN_TEST_WATCH_UNTIL_BLOCKED="1", JACKIN_TEST_WATCH_ROUNDS="3")
    watched = cli.run("-i", str(inventory), "ls", "--watch", "--on", host, "--notify",
                      str(notify), "--json", check=True).stdout  # fmt: skip
    (round_,) = [json.loads(line) for line in watched.splitlines()]
    assert round_["blocked"] == [sid] and round_["fleet"]["agents"] == "blocked"
    assert [r["links"] for r in round_["sessions"] if r["id"] == sid] == [{"pr": [PR]}]
    assert heard.read_text() == f"{sid} {host} blocked\n"
    rung = cli.run("-i", str(inventory), "ls", "--watch", "--on", host, check=True).stdout
    assert "\a" in rung and "blocked" in rung
    del cli.env["JACKIN_TEST_WATCH_UNTIL_BLOCKED"], cli.env["JACKIN_TEST_WATCH_ROUNDS"]

    subprocess.run([*on_host(host), "docker", "exec", row["container"], "touch", "/tmp/go"],
                   check=True)  # fmt: skip
    done = wait_for(cli, inventory, sid)
    assert (done["state"], done["agent_status"]) == ("exited", "done")
    assert done["links"] == {"pr": [PR]}
    cached = cli.json("-i", str(inventory), "ls", "--cached")
    assert [r["links"] for r in cached["sessions"] if r["id"] == sid] == [{"pr": [PR]}]

    printed = cli.run("-i", str(inventory), "open", sid, "--print", check=True).stdout
    assert printed.strip() == PR
    missing = cli.run("-i", str(inventory), "open", sid, "issue", "--json")
    assert missing.returncode != 0
    assert "has not named a link of kind issue" in json.loads(missing.stdout)["error"]["message"]
    # Without --print the URL goes to the laptop's opener ($BROWSER), as one argument.
    seen = tmp_path / "opened"
    opener = tmp_path / "opener"
    opener.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$@\" > {seen}\n")
    opener.chmod(0o755)
    cli.env["BROWSER"] = f"{opener} %s"
    cli.run("-i", str(inventory), "open", sid, check=True)
    assert seen.read_text() == PR + "\n"
    cli.run("-i", str(inventory), "rm", "--force", sid, check=True)
