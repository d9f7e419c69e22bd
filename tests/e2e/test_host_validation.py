"""The host agent trusts nothing it is sent: a tampered spec is refused before anything exists.

A compromised or buggy controller talks to the real host agent (local mode here) with the spec
`explain` resolved, each time with one field tampered with. Every one must be refused as
invalid_params, naming the field, with no session record and no container made for it. Then the
same checks through the CLI: a role whose user is root inside its image, and the kill switch
(`rm --force`) against an agent that wrecked its checkout.
"""

from __future__ import annotations

import copy
import secrets
import shutil
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pytest

from agent_host import layout
from agent_host.protocol import E_INVALID_PARAMS
from agent_host.wire import CROCKFORD, LABEL_SESSION, image_tag
from jackin_remote.errors import AgentCallError
from jackin_remote.fleet import Pool
from jackin_remote.inventory import load_inventory
from tests.conftest import CLI
from tests.e2e.helpers import TEST_ROLE, launch, make_workspace, session_row, wait_for

REPO = Path(__file__).resolve().parents[2]
ROOT_USER_STEP = "\nUSER root\nRUN useradd -o -u 0 -g 0 -M sneaky\n"


def _set(path: str, value: Any) -> Any:
    def apply(spec: dict[str, Any]) -> None:
        *parents, leaf = path.split(".")
        target = spec
        for part in parents:
            target = target[part]
        target[leaf] = value

    return apply


def _drop(key: str) -> Any:
    return lambda spec: spec.pop(key)


# (what is tampered, how). Extra keys that name hardening are refused as unknown fields: no
# field on the wire can weaken what the host always applies.
TAMPERS = [
    ("read_only", _set("read_only", False)),
    ("image", _set("image", "alpine:latest")),
    ("workdir", _set("workdir", "/")),
    ("labels", _set("labels", {"jackin.managed": "false", "jackin.session": "zzzzzzzz"})),
    ("cap_drop", _set("cap_drop", [])),
    ("privileged", _set("privileged", True)),
    ("volumes", _set("volumes", {"/var/run/docker.sock": {"bind": "/s", "mode": "rw"}})),
    ("pids", _set("limits.pids", -1)),
    ("pids", _set("limits.pids", 0)),
    ("memory", _set("limits.memory", "0")),
    ("memory", _set("limits.memory", "-1g")),
    ("memory", _set("limits.memory", "1k")),
    ("cpus", _set("limits.cpus", 0)),
    ("cpus", _set("limits.cpus", "2")),
    ("limits", _set("limits.swap", "1g")),
    ("user", _set("user", "root")),
    ("user", _set("user", "0")),
    ("user", _set("user", "0:0")),
    ("user", _set("user", "agent;id")),
    ("session_id", _set("session_id", "../../etc")),
    ("session_id", _set("session_id", "ILOU0000")),
    ("workspace", _set("workspace", "../mirror")),
    ("workspace", _set("workspace", "9lives")),
    ("role", _set("role", "x/../y")),
    ("role_hash", _set("role_hash", "not-hex")),
    ("network", _set("network", "host")),
    ("isolation", _set("isolation", "shared")),
    ("mode", _set("mode", "daemon")),
    ("command", _set("command", [])),
    ("command", _set("command", "rm -rf /")),
    ("env", _set("env", {"BAD NAME": "x"})),
    ("env", _set("env", {"X": "a\nb"})),
    ("env", _set("env", {"X": 1})),
    ("secret_env", _set("secret_env", ["HOME"])),
    ("base_commit", _set("base_commit", "HEAD; rm -rf /")),
    ("name", _set("name", "$(id)")),
    ("host", _set("host", "a b")),
    ("spec", _drop("runtime")),
]


@pytest.fixture
def explained_spec(cli: CLI, local_inventory: Path, tmp_path: Path) -> dict[str, Any]:
    ws = make_workspace(tmp_path / "ws")
    data = cli.json("-i", str(local_inventory), "explain", "--role", TEST_ROLE, "--runtime",
                    "shell", "--network", "none", "--task", "true", str(ws))  # fmt: skip
    (contract,) = data["contracts"]
    spec: dict[str, Any] = contract["spec"]
    return spec


def _fresh_id() -> str:
    return "".join(secrets.choice(CROCKFORD) for _ in range(8))


def _records(root: Path) -> set[str]:
    db = Path(layout.state_db(str(root)))
    if not db.exists():
        return set()
    with sqlite3.connect(db) as conn:
        return {row[0] for row in conn.execute("SELECT id FROM sessions")}


def _containers_of(session_id: str) -> str:
    return subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label={LABEL_SESSION}={session_id}"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip


async def test_every_tampered_field_is_refused_before_anything_is_made(
    laptop: Path, local_inventory: Path, explained_spec: dict[str, Any], tmp_path: Path
) -> None:
    inventory = load_inventory(local_inventory)
    host = inventory.hosts["local"]
    root = tmp_path / "host-root"
    async with Pool(inventory) as pool:
        link = await pool.agent(host)
        for field, tamper in TAMPERS:
            spec = copy.deepcopy(explained_spec)
            spec["session_id"] = _fresh_id()
            tamper(spec)
            with pytest.raises(AgentCallError) as info:
                await link.agent.call("session.create", {"spec": spec, "secret_env": {}})
            assert info.value.code == E_INVALID_PARAMS, (field, info.value.reason)
            assert field in info.value.reason, (field, info.value.reason)
            session_id = spec.get("session_id")
            if isinstance(session_id, str):
                assert session_id not in _records(root), field
                assert _containers_of(session_id) == "", field
        # Secret values must match the names the spec declares, and obey the same value rules.
        spec = copy.deepcopy(explained_spec)
        spec["session_id"] = _fresh_id()
        for secrets_sent in ({"ANTHROPIC_API_KEY": "x"}, {"HOME": "/root"}):
            with pytest.raises(AgentCallError) as info:
                await link.agent.call("session.create", {"spec": spec, "secret_env": secrets_sent})
            assert info.value.code == E_INVALID_PARAMS
        assert spec["session_id"] not in _records(root)


def test_a_role_user_that_is_root_inside_its_image_is_refused_at_launch(
    cli: CLI, local_inventory: Path, tmp_path: Path
) -> None:
    """The manifest names a harmless-looking user; the image makes it uid 0. Refused, with the
    reason, and no container."""
    role = tmp_path / "role"
    shutil.copytree(REPO / "roles" / "test-agent", role)
    name = f"sneaky-{secrets.token_hex(3)}"
    manifest = role / "jackin.role.toml"
    manifest.write_text(
        manifest.read_text()
        .replace('name = "test-agent"', f'name = "{name}"')
        .replace('user = "agent"', 'user = "sneaky"')
    )
    dockerfile = role / "Dockerfile"
    dockerfile.write_text(dockerfile.read_text() + ROOT_USER_STEP)
    ws = make_workspace(tmp_path / "ws")
    try:
        data = cli.json("-i", str(local_inventory), "launch", "--role", str(role), "--runtime",
                        "shell", "--network", "none", "--task", "id -u", str(ws),
                        ok_codes=(1, 3))  # fmt: skip
        (entry,) = data["sessions"]
        assert entry["state"] in ("not_started", "failed_setup")
        assert "uid 0" in entry["error"]
        assert _containers_of(entry["id"]) == ""
    finally:
        _remove_images(f"label=jackin.role={name}")


async def test_the_host_refuses_a_root_image_user_even_when_the_controller_skips_its_check(
    laptop: Path, local_inventory: Path, explained_spec: dict[str, Any], tmp_path: Path
) -> None:
    """A controller that never asked role.build: the image under the role's tag makes the user
    uid 0. session.create finds out before it makes a checkout or a container."""
    role, role_hash = f"sneaky-{secrets.token_hex(3)}", secrets.token_hex(32)
    tag = image_tag(role, role_hash)
    subprocess.run(["docker", "build", "-q", "-t", tag, "--network", "none", "-"],
                   input=f"FROM jackin-test-base:latest{ROOT_USER_STEP}", text=True,
                   capture_output=True, check=True)  # fmt: skip
    spec = dict(explained_spec, role=role, role_hash=role_hash, user="sneaky")
    inventory = load_inventory(local_inventory)
    try:
        async with Pool(inventory) as pool:
            link = await pool.agent(inventory.hosts["local"])
            with pytest.raises(AgentCallError) as info:
                await link.agent.call("session.create", {"spec": spec, "secret_env": {}})
        assert "root (uid 0" in info.value.reason
        assert _containers_of(spec["session_id"]) == ""
        root = tmp_path / "host-root"
        assert not Path(layout.work_dir(str(root), spec["session_id"])).exists()
    finally:
        _remove_images(f"reference={tag}*")


def _remove_images(reference: str) -> None:
    images = subprocess.run(["docker", "images", "-q", "--filter", reference],
                            capture_output=True, text=True).stdout.split()  # fmt: skip
    for image in set(images):
        subprocess.run(["docker", "rmi", "-f", image], capture_output=True)


@pytest.mark.parametrize(
    "wreck",
    [
        "rm -rf .git",
        "git init -q nested && echo x > nested/f && chmod 000 .git",
        "rm -rf .git && mkdir .git && echo 'ref: refs/heads/x' > .git/HEAD",
    ],
)
def test_rm_force_always_removes_the_sandbox_of_an_agent_that_wrecked_its_checkout(
    cli: CLI, local_inventory: Path, tmp_path: Path, wreck: str
) -> None:
    ws = make_workspace(tmp_path / "ws")
    (session,) = launch(cli, local_inventory, ws, "--runtime", "shell", "--network", "none",
                        "--task", f"echo work > agent.txt; {wreck}; touch wrecked; "
                        "exec sleep 100000")  # fmt: skip
    sid = session["id"]
    work = Path(layout.work_dir(str(tmp_path / "host-root"), sid))
    wait_for(cli, local_inventory, sid, {"running"})
    # The agent is still running, its checkout wrecked (waiting on a file it made: no timing).
    for _ in range(600):
        if (work / "wrecked").exists():
            break
        assert session_row(cli, local_inventory, sid)["state"] == "running"
    assert (work / "wrecked").exists()
    refused = cli.run("-i", str(local_inventory), "rm", sid)
    assert refused.returncode != 0
    assert _containers_of(sid) != "", "rm without --force must not remove anything"
    forced = cli.json("-i", str(local_inventory), "rm", "--force", sid)
    assert _containers_of(sid) == "", "rm --force leaves no container behind"
    assert not work.exists()
    assert forced["discarded_unpulled"] is True
    assert forced["not_inspected"], "what could not be inspected is reported"
