"""Role images built through the real host agent (local mode, and one SSH test host).

Each test copies roles/test-agent under a unique role name, so the images it makes are its own
and are removed afterwards. The base image comes from `scripts/fleet images`.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from jackin_remote.errors import AgentCallError
from jackin_remote.fleet import Pool
from jackin_remote.inventory import load_inventory
from jackin_remote.roles import Role, RoleBuildError, ensure_role_image, image_tag, load_role
from tests import fleet as fleet_mod

pytestmark = pytest.mark.docker

REPO = Path(__file__).resolve().parents[2]
BASE_IMAGE = "jackin-test-base:latest"


def docker(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check)


@pytest.fixture(scope="module")
def base_image() -> str:
    if shutil.which("docker") is None or docker("info", check=False).returncode != 0:
        pytest.skip("no docker engine answers here")
    if docker("image", "inspect", BASE_IMAGE, check=False).returncode != 0:
        pytest.skip(f"{BASE_IMAGE} is not built: run `scripts/fleet images` first")
    return BASE_IMAGE


@pytest.fixture
def role_dir(tmp_path: Path, base_image: str) -> Iterator[Path]:
    """roles/test-agent under a unique name; every image labelled with that name is removed."""
    name = f"test-agent-t{secrets.token_hex(4)}"
    directory = tmp_path / "role"
    shutil.copytree(REPO / "roles" / "test-agent", directory)
    manifest = directory / "jackin.role.toml"
    manifest.write_text(manifest.read_text().replace('name = "test-agent"', f'name = "{name}"'))
    yield directory
    images = docker("images", "-q", "--filter", f"label=jackin.role={name}", check=False)
    for image_id in sorted(set(images.stdout.split())):
        docker("rmi", "-f", image_id, check=False)


def candidate_tags(tag: str) -> list[str]:
    """The build's own candidate tags (`<tag>-candidate-<random>`) still on the engine."""
    listed = docker("images", "--format", "{{.Repository}}:{{.Tag}}", tag.split(":")[0]).stdout
    return [ref for ref in listed.split() if ref.startswith(f"{tag}-candidate")]


def image_labels(tag: str) -> dict[str, str]:
    out = docker("image", "inspect", "--format", "{{json .Config.Labels}}", tag).stdout
    labels: dict[str, str] = json.loads(out)
    return labels


async def build(inventory_dir: Path, role: Role) -> tuple[dict[str, object], list[str]]:
    inventory = load_inventory(inventory_dir)
    host = inventory.host("local")
    assert host is not None
    lines: list[str] = []
    async with Pool(inventory) as pool:
        link = await pool.agent(host)
        result = await ensure_role_image(link, role, lines.append)
    return result, lines


async def test_test_agent_role_builds_once_and_its_agent_commits(
    laptop: Path, local_inventory: Path, role_dir: Path, tmp_path: Path
) -> None:
    role = load_role(role_dir)
    tag = image_tag(role)

    first, lines = await build(local_inventory, role)
    assert first["image"] == tag
    assert first["built"] is True and first["uploaded"] is True
    assert (first["uid"], first["gid"]) == (1000, 1000)
    assert any(line.startswith("Step 1/") and BASE_IMAGE in line for line in lines), lines
    assert any("useradd" in line for line in lines), lines
    labels = image_labels(tag)
    assert labels["jackin.managed"] == "true"
    assert labels["jackin.role"] == role.name
    assert labels["jackin.role.hash"] == role.content_hash
    assert labels["jackin.role.build-network"] == first["network"] == "none"
    # The context landed where agent_host.layout says, complete, with no temp dir left over.
    roles_root = tmp_path / "host-root" / "roles" / role.name
    context = roles_root / role.content_hash
    assert (context / "Dockerfile").read_bytes() == (role_dir / "Dockerfile").read_bytes()
    assert os.access(context / "jackin-demo-agent", os.X_OK)
    assert [p.name for p in roles_root.iterdir()] == [role.content_hash]
    # The candidate tag used while checking the user is gone.
    assert candidate_tags(tag) == []

    second, again = await build(local_inventory, role)
    assert second == {"image": tag, "built": False, "uploaded": False, "network": None}
    assert again == []

    repo = tmp_path / "work"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    user_args: list[str] = []
    if os.getuid() == 0:
        shutil.chown(repo, 1000, 1000)
        for path in repo.rglob("*"):
            os.lchown(path, 1000, 1000)
    else:  # cannot chown: run as ourselves instead of the role user
        user_args = ["--user", f"{os.getuid()}:{os.getgid()}"]
    run = docker(
        "run", "--rm", "--network", "none", *user_args, "-v", f"{repo}:/work", "-w", "/work",
        tag, "jackin-demo-agent", "write a.txt: hi",
    )  # fmt: skip
    assert "jackin-demo-agent: committing" in run.stdout, run.stdout + run.stderr
    assert run.stdout.rstrip().endswith("<jackin:status>done</jackin:status>")
    git = ["git", "-c", "safe.directory=*", "-C", str(repo)]
    log = subprocess.run([*git, "log", "--format=%an %s", "main"], capture_output=True, text=True)
    assert log.stdout.strip() == "jackin-demo-agent jackin-demo-agent: write a.txt: hi", log
    shown = subprocess.run([*git, "show", "main:a.txt"], capture_output=True, text=True)
    assert shown.stdout == "hi\n"
    task = subprocess.run([*git, "show", "main:DEMO_AGENT.md"], capture_output=True, text=True)
    assert "write a.txt: hi" in task.stdout


async def test_a_changed_role_is_a_new_image(
    laptop: Path, local_inventory: Path, role_dir: Path
) -> None:
    before = load_role(role_dir)
    await build(local_inventory, before)
    with (role_dir / "Dockerfile").open("a") as fh:
        fh.write('LABEL demo.changed="yes"\n')
    after = load_role(role_dir)
    assert image_tag(after) != image_tag(before)
    result, _ = await build(local_inventory, after)
    assert result["built"] is True and result["uploaded"] is True
    assert image_labels(image_tag(after))["demo.changed"] == "yes"
    assert "demo.changed" not in image_labels(image_tag(before))


async def test_a_failing_build_reports_its_last_lines_and_leaves_no_image(
    laptop: Path, local_inventory: Path, role_dir: Path
) -> None:
    with (role_dir / "Dockerfile").open("a") as fh:
        fh.write("RUN echo about-to-fail && exit 7\n")
    role = load_role(role_dir)
    with pytest.raises(RoleBuildError) as caught:
        await build(local_inventory, role)
    text = str(caught.value)
    assert text.startswith(f"local: role {role.name}: docker build failed"), text
    assert "about-to-fail" in text and "7" in text
    assert caught.value.hint
    assert docker("image", "inspect", image_tag(role), check=False).returncode != 0
    assert candidate_tags(image_tag(role)) == []


async def test_a_role_whose_user_is_uid_0_in_the_image_is_refused(
    laptop: Path, local_inventory: Path, role_dir: Path
) -> None:
    # The manifest says "agent", but the Dockerfile makes that name uid 0: caught on the host.
    dockerfile = role_dir / "Dockerfile"
    dockerfile.write_text(
        dockerfile.read_text().replace(
            "useradd --create-home --uid 1000 --user-group", "useradd --create-home -o --uid 0"
        )
    )
    role = load_role(role_dir)
    with pytest.raises(RoleBuildError) as caught:
        await build(local_inventory, role)
    assert "uid 0" in str(caught.value) and "must not run as root" in str(caught.value)
    assert docker("image", "inspect", image_tag(role), check=False).returncode != 0
    assert candidate_tags(image_tag(role)) == []


async def test_building_a_role_that_was_never_uploaded_is_not_found(
    laptop: Path, local_inventory: Path, role_dir: Path
) -> None:
    role = load_role(role_dir)
    inventory = load_inventory(local_inventory)
    host = inventory.host("local")
    assert host is not None
    async with Pool(inventory) as pool:
        link = await pool.agent(host)
        params = {"name": role.name, "hash": role.content_hash}
        status = await link.agent.call("role.status", params)
        with pytest.raises(AgentCallError) as caught:
            await link.agent.call(
                "role.build", {**params, "dockerfile": "Dockerfile", "user": "agent"}
            )
    assert status == {"image": image_tag(role), "present": False, "uploaded": False}
    assert caught.value.code == "not_found" and "not uploaded" in caught.value.reason


@pytest.mark.fleet
async def test_role_builds_on_an_ssh_host(
    laptop: Path, fleet: fleet_mod.FleetInfo, role_dir: Path
) -> None:
    """Over SSH: the context is uploaded under ~jackin/.jackin (a `~` root) and built in the
    host's own dockerd, FROM the base image preloaded there."""
    inventory = load_inventory(fleet.inventory)
    host = inventory.host("fleet-1")
    assert host is not None
    role = load_role(role_dir)
    lines: list[str] = []
    async with Pool(inventory) as pool:
        link = await pool.agent(host)
        try:
            first = await ensure_role_image(link, role, lines.append)
            second = await ensure_role_image(link, role)
            listed = await link.transport.run(
                f"ls ~/.jackin/roles/{role.name}; docker image inspect --format "
                "'{{index .Config.Labels \"jackin.managed\"}}' " + image_tag(role)
            )
        finally:
            await link.transport.run(
                f"docker rmi -f {image_tag(role)}; rm -rf ~/.jackin/roles/{role.name}"
            )
    assert first["built"] is True and first["uploaded"] is True, first
    assert any(line.startswith("Step 1/") for line in lines), lines
    assert first["network"] == "none"  # the default: the build had no network
    assert second == {"image": image_tag(role), "built": False, "uploaded": False, "network": None}
    assert listed.returncode == 0, listed.stderr_text
    assert listed.stdout.decode().split() == [role.content_hash, "true"]
