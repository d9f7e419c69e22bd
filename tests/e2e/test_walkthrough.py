"""docs/two-servers.md, run as written against two fleet hosts (issue 10: the docs cannot drift
from the tool again).

Every ```sh block of the doc runs, command by command, in a fake laptop (HOME and JACKIN_HOME
under tmp), each in bash with the `cd` and `export`s of the ones before, stdin a terminal (as a
person at a shell: `hosts trust` asks). A ```toml block is appended to the file its marker names.
Only a block the doc marks `<!-- walkthrough: skip (...) -->` is not run; this test does what
the marker says instead. Placeholders a reader fills in (`<id>`) get the session launch made.

The doc's machines map onto the fleet only through the fake HOME's ~/.ssh/config, as a real
user's would: 203.0.113.10 is fleet-1, build-2.internal is fleet-2 (reached from the bastion by
its docker address), bastion.example.com is fleet-3; the doc's user `dev` is an account the test
makes on fleet-1 and fleet-2 (its own home, so its own host root: other tests' files are never
met). The doc's role (roles/agent-clis) installs the agent CLIs from npm and cannot build here:
each host gets a stand-in image under that role's tag and content hash (so it is reused exactly
as a real build would be), whose `claude` edits the workspace the way the task asks.
"""

from __future__ import annotations

import io
import json
import os
import pty
import re
import selectors
import shutil
import signal
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent_host.wire import image_tag
from jackin_remote.roles.role import load_role
from tests import fleet as fleet_mod
from tests.conftest import CLI
from tests.e2e.helpers import REPO, git

pytestmark = pytest.mark.fleet

DOC = REPO / "docs" / "two-servers.md"
USER = "dev"
HOSTS = {"build-1": "fleet-1", "build-2": "fleet-2", "bastion": "fleet-3"}
FAKE_KEY = "sk-ant-walkthrough-not-a-real-key"
PROMPT = "Trust this key?"

MARKER = re.compile(r"<!--\s*walkthrough:\s*([^<>]*?)\s*-->\s*\Z")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)


@dataclass(frozen=True)
class Block:
    lang: str
    body: str
    marker: str  # the walkthrough marker right above the block, or ""


def doc_blocks(text: str) -> list[Block]:
    found = []
    for match in FENCE.finditer(text):
        marker = MARKER.search(text[: match.start()])
        said = " ".join(marker.group(1).split()) if marker else ""
        found.append(Block(match.group(1), match.group(2), said))
    return found


def doc_commands(body: str) -> list[str]:
    """One entry per command line as a person types it (backslash continuations joined)."""
    commands: list[str] = []
    pending = ""
    for raw in body.splitlines():
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        command = (pending + raw).strip()
        pending = ""
        if command and not command.startswith("#"):
            commands.append(command)
    return commands


@dataclass
class Ran:
    command: str
    returncode: int
    stdout: str
    stderr: str


Responder = Callable[[str], str]


class Shell:
    """bash, one command at a time, carrying the working directory and the environment."""

    def __init__(self, env: dict[str, str], cwd: Path, state: Path) -> None:
        self.env, self.cwd, self.state = env, cwd, state
        state.mkdir(parents=True, exist_ok=True)

    def run(self, command: str, answer: Responder | None = None, timeout: float = 900) -> Ran:
        env_file, cwd_file = self.state / "env", self.state / "cwd"
        script = f"{command}\nrc=$?\nenv -0 > {env_file}\npwd > {cwd_file}\nexit $rc\n"
        master, slave = pty.openpty()  # stdin is a terminal, as for a person at a shell
        proc = subprocess.Popen(
            ["bash", "-c", script], env=self.env, cwd=self.cwd, stdin=slave,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
        )  # fmt: skip
        os.close(slave)
        out, err = bytearray(), bytearray()
        answered = False
        deadline = time.monotonic() + timeout  # a bound on a hang, never an expectation
        try:
            with selectors.DefaultSelector() as sel:
                assert proc.stdout is not None and proc.stderr is not None
                sel.register(proc.stdout, selectors.EVENT_READ, out)
                sel.register(proc.stderr, selectors.EVENT_READ, err)
                while sel.get_map():
                    if time.monotonic() > deadline:
                        os.killpg(proc.pid, signal.SIGKILL)
                        raise AssertionError(f"{command!r} still running after {timeout}s")
                    for key, _ in sel.select(timeout=5):
                        chunk = os.read(key.fd, 65536)
                        if not chunk:
                            sel.unregister(key.fileobj)
                            continue
                        key.data.extend(chunk)
                    if not answered and PROMPT in err.decode(errors="replace"):
                        assert answer is not None, f"{command!r} asked: {err.decode()}"
                        os.write(master, answer(err.decode(errors="replace")).encode())
                        answered = True
            proc.wait()
        finally:
            os.close(master)
        if env_file.exists():
            pairs = env_file.read_bytes().split(b"\0")
            self.env = dict(p.decode().split("=", 1) for p in pairs if b"=" in p)
            self.cwd = Path(cwd_file.read_text().strip())
        ran = Ran(command, proc.returncode, out.decode(), err.decode())
        print(f"$ {command}\n{ran.stdout}{ran.stderr}[exit {ran.returncode}]")  # shown on failure
        return ran


def flat(text: str) -> str:
    return " ".join(text.split())


def docker_ip(fleet_name: str) -> str:
    box = fleet_mod.container(fleet_name)
    out = subprocess.run(
        ["docker", "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}",
         box], capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert out, f"{box} has no address"
    return out[0]


# ---- the servers: a `dev` account and a stand-in for the agent-clis image ---------------------

# As the doc's user `dev` (a user that may use Docker), with the fleet's key. Serialized with
# flock: two runs of this test may meet on a host.
ADD_DEV = f"""
flock /etc/jackin-walkthrough.lock sh -c '
id {USER} >/dev/null 2>&1 || useradd --create-home --shell /bin/bash --groups docker {USER}
install -d -m 700 -o {USER} -g {USER} /home/{USER}/.ssh
install -m 600 -o {USER} -g {USER} /home/jackin/.ssh/authorized_keys /home/{USER}/.ssh/
'
"""

# Claude Code's stand-in: does what the doc's task asks (fix the failing test) in the checkout
# it is started in, and says so as Claude Code's stream-json would.
STAND_IN_CLAUDE = """#!/bin/sh
sed -i 's/assert add(1, 1) == 3/assert add(1, 1) == 2/' tests/test_api.py
echo '{"type":"result","subtype":"success","is_error":false,"result":"fixed tests/test_api.py"}'
"""

STAND_IN_DOCKERFILE = """FROM jackin-test-base:latest
RUN useradd --create-home --uid 1001 --user-group --shell /bin/bash agent
COPY claude /usr/local/bin/claude
USER agent
WORKDIR /home/agent
CMD ["/bin/bash"]
"""


def _context_tar() -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, text, mode in (("Dockerfile", STAND_IN_DOCKERFILE, 0o644),
                                 ("claude", STAND_IN_CLAUDE, 0o755)):  # fmt: skip
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
    return raw.getvalue()


def stand_in_image(fleet_name: str, tag: str, content_hash: str) -> None:
    """The role's image as a reused build would find it: its tag and its content hash label."""
    labels = {"jackin.managed": "true", "jackin.role": "agent-clis",
              "jackin.role.hash": content_hash, "jackin.role.build-network": "default"}  # fmt: skip
    argv = ["docker", "exec", "-i", fleet_mod.container(fleet_name), "docker", "build", "-q",
            "--network", "none", "-t", tag,
            *[f"--label={k}={v}" for k, v in labels.items()], "-"]  # fmt: skip
    done = subprocess.run(argv, input=_context_tar(), capture_output=True, timeout=600)
    assert done.returncode == 0, done.stderr.decode()


def remove_images(fleet_name: str, repository: str, version: str) -> None:
    """The stand-in and the derived per-uid image a launch made from it (`<tag>-u<uid>`)."""
    box = fleet_mod.container(fleet_name)
    tags = fleet_mod.docker_exec(box, "docker", "images", "--format",
                                 "{{.Repository}}:{{.Tag}}", repository).stdout.split()  # fmt: skip
    mine = [t for t in tags if t.split(":", 1)[1].startswith(version)]
    if mine:
        fleet_mod.docker_exec(box, "docker", "rmi", *mine, check=False)


def session_containers(fleet_name: str, session_id: str) -> list[str]:
    return fleet_mod.docker_exec(
        fleet_mod.container(fleet_name), "docker", "ps", "-aq",
        "--filter", f"label=jackin.session={session_id}",
    ).stdout.split()  # fmt: skip


# ---- the laptop -----------------------------------------------------------------------------


def laptop_home(home: Path, fleet: fleet_mod.FleetInfo) -> None:
    """What a real user's laptop has before the doc starts: a key, ~/.ssh/config naming the
    servers, the bastion already known (they ssh through it), git's identity, and a project."""
    ssh = home / ".ssh"
    ssh.mkdir(mode=0o700)
    shutil.copy(fleet.identity_file, ssh / "id_ed25519")
    (ssh / "id_ed25519").chmod(0o600)
    build_1, bastion = fleet.host(HOSTS["build-1"]), fleet.host(HOSTS["bastion"])
    bastion_ip = docker_ip(HOSTS["bastion"])
    (ssh / "config").write_text(
        "Host 203.0.113.10\n"
        f"    HostName {fleet_mod.ADDRESS}\n    Port {build_1.port}\n"
        "Host build-2.internal\n"  # reached from the bastion, as on a private network
        f"    HostName {docker_ip(HOSTS['build-2'])}\n    Port 22\n"
        # By its docker address: were it 127.0.0.1 too, its known_hosts line would mention
        # build-1's address (any port counts), and build-1's key would be taken as changed.
        "Host bastion.example.com\n"
        f"    HostName {bastion_ip}\n    Port 22\n    User {fleet_mod.USER}\n"
        # OpenSSH (rsync, attach) looks for default keys in the passwd entry's home, not in
        # $HOME as asyncssh does: name the key, as it is where a real user's HOME is.
        f"Host *\n    ConnectTimeout 10\n    IdentityFile {ssh / 'id_ed25519'}\n"
    )
    # OpenSSH records a host under its HostName: what `ssh bastion.example.com` left there.
    (ssh / "known_hosts").write_text(f"{bastion_ip} {bastion.host_key}\n")
    (home / ".gitconfig").write_text("[user]\n\tname = Dev\n\temail = dev@example.com\n")
    app = home / "src" / "myapp"
    (app / "tests").mkdir(parents=True)
    (app / "api.py").write_text("def add(a, b):\n    return a + b\n")
    (app / "tests" / "test_api.py").write_text(
        "from api import add\n\n\ndef test_add():\n    assert add(1, 1) == 3\n"
    )
    git(app, "init", "-q", "-b", "main")
    git(app, "add", ".")
    git(app, "commit", "-qm", "myapp")
    (app / ".env").write_text("API_TOKEN=stays-on-the-laptop\n")
    (home / "jackin-remote").symlink_to(REPO)  # the doc's step 1 (a clone), without the network


@pytest.fixture
def servers(fleet: fleet_mod.FleetInfo) -> Iterator[str]:
    """`dev` on build-1 and build-2, and the stand-in role image there; yields the image tag."""
    role = load_role(REPO / "roles" / "agent-clis")
    tag = image_tag(role.name, role.content_hash)
    for name in (HOSTS["build-1"], HOSTS["build-2"]):
        fleet_mod.docker_exec(fleet_mod.container(name), "sh", "-c", ADD_DEV)
        stand_in_image(name, tag, role.content_hash)
    yield tag
    repository, version = tag.split(":", 1)
    for name in (HOSTS["build-1"], HOSTS["build-2"]):
        remove_images(name, repository, version)


def trust_answer(fleet_of: dict[str, str]) -> Responder:
    """A person comparing the shown key with `ssh-keygen -lf` on the server's console."""

    def answer(stderr: str) -> str:
        match = re.search(r"(\S+) \(\S+\) presents (\S+) (SHA256:\S+)", flat(stderr))
        assert match, stderr
        name, key_type, seen = match.groups()
        expected = fleet_mod.ed25519_fingerprint(fleet_of[name])
        return "y\n" if (key_type, seen) == ("ssh-ed25519", expected) else "n\n"

    return answer


def test_the_two_server_walkthrough_runs_as_written(
    cli: CLI, laptop: Path, fleet: fleet_mod.FleetInfo, servers: str
) -> None:
    home = laptop / "home"
    laptop_home(home, fleet)
    env = {**cli.env, "ANTHROPIC_API_KEY": FAKE_KEY, "COLUMNS": "120",
           "PATH": f"{REPO / '.venv' / 'bin'}:{cli.env['PATH']}"}  # fmt: skip
    env.pop("JACKIN_INVENTORY", None)
    shell = Shell(env, home / "jackin-remote", laptop / "shell-state")
    fingerprints = {name: fleet_mod.ed25519_fingerprint(box) for name, box in HOSTS.items()}
    ids: list[str] = []  # as launch printed them, in its order
    blocks = doc_blocks(DOC.read_text())
    # Only the install step is skipped, and the doc itself says so.
    assert [b.marker.split()[0] for b in blocks if b.marker] == ["skip", "append"], blocks
    assert blocks[0].marker.startswith("skip (needs the network"), blocks[0]

    try:
        for block in blocks:
            if block.marker.startswith("skip"):
                continue
            if block.lang == "toml":
                target = block.marker.removeprefix("append to ").replace("~", str(home), 1)
                with open(target, "a") as file:
                    file.write("\n" + block.body)
                continue
            assert block.lang == "sh", block
            for command in doc_commands(block.body):
                if "<id>" in command:
                    assert ids, f"{command!r}: no session launched yet"
                    command = command.replace("<id>", ids[0])
                assert not re.search(r"<[a-z ]+>", command), f"placeholder left: {command}"
                done = shell.run(command, answer=trust_answer(HOSTS))
                check_outcome(done, fingerprints)
                if " launch " in f" {command} ":
                    placed = dict(re.findall(r"^launched (\S+) on (\S+) ", done.stdout, re.M))
                    ids = list(placed)
                    # One session on each server (capacity 4 each, least loaded first)...
                    assert sorted(placed.values()) == ["build-1", "build-2"], done.stdout
                    for sid, host in placed.items():
                        # ...on the fleet host that ~/.ssh/config maps the doc's name to: the
                        # example addresses were never contacted (nothing else serves them).
                        assert session_containers(HOSTS[host], sid), (sid, host)
        assert len(ids) == 2, "the doc launches two sessions"
        app = home / "src" / "myapp"
        assert git(app, "show", f"jackin/{ids[0]}:tests/test_api.py").endswith("== 2")
        # `rm` "refuses until pulled": the other session's work was not pulled.
        refused = shell.run(f"jackin-remote rm {ids[1]}")
        assert refused.returncode != 0 and "pull" in refused.stderr, refused
        assert session_containers(HOSTS[placed[ids[1]]], ids[1])
    finally:
        # This run's sessions, launched or not (a launch that failed half-way made some): by the
        # workspace, never another run's on the same hosts.
        for sid in this_workspace_sessions(shell):
            shell.run(f"jackin-remote rm --force {sid}")


def this_workspace_sessions(shell: Shell) -> list[str]:
    """Sessions the hosts report for ~/src/myapp of this laptop (its workspace name is unique
    to its path). Run from ~/ops, where the doc's inventory is the default."""
    from jackin_remote.workspace import workspace_name

    name = workspace_name((Path(shell.env["HOME"]) / "src" / "myapp").resolve())
    ops = Path(shell.env["HOME"]) / "ops"
    if not (ops / "inventory").is_dir():
        return []
    proc = subprocess.run(
        ["jackin-remote", "ls", "--json"],
        env=shell.env, cwd=ops, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    rows = json.loads(proc.stdout)["sessions"] if proc.stdout.startswith("{") else []
    return [row["id"] for row in rows if row.get("workspace") == name]


def check_outcome(done: Ran, fingerprints: dict[str, str]) -> None:
    """What the doc says each command does."""
    cmd, out, err = done.command, flat(done.stdout), flat(done.stderr)
    both = out + " " + err
    if "unknown keys are refused" in cmd:
        assert done.returncode == 3, (cmd, out, err)
        for name in ("build-1", "build-2"):
            assert f"ssh-ed25519 {fingerprints[name]}" in both, (name, both)
        assert "host_key_unknown" in both
        return
    assert done.returncode == 0, (cmd, done.returncode, done.stdout, done.stderr)
    if " hosts trust " in f" {cmd} ":
        name = cmd.split()[3]
        assert f"presents ssh-ed25519 {fingerprints[name]}" in err, err
        assert f"{name}: recorded ssh-ed25519 {fingerprints[name]}" in out, out
    elif cmd.startswith("jackin-remote hosts check"):
        assert "build-1" in out and "build-2" in out and "ready" in out, out
    elif cmd.startswith("jackin-remote explain"):
        assert FAKE_KEY not in both and "ANTHROPIC_API_KEY" in out, out
        assert "clone" in out and "jackin/" in out and "default" in out, out
        assert "kept back .env" in out, out  # ".env files stay home"
    if cmd.startswith(("jackin-remote explain", "jackin-remote launch")):
        # Words, not Python: `Isolation.CLONE`, True/False were shown once.
        assert not re.search(r"\b[A-Z][a-z]+\.[A-Z_]{2,}\b|\b(True|False)\b", out), out
    elif cmd.startswith("jackin-remote ls"):
        assert "build-1" in out and "build-2" in out, out
    elif cmd.startswith("jackin-remote pull"):
        assert "jackin/" in out, out
    elif cmd.startswith("git -C ~/src/myapp diff"):
        assert "+    assert add(1, 1) == 2" in done.stdout, done.stdout
