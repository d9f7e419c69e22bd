"""Workspace sync end to end: real git, real rsync, the real host agent; locally and over SSH."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from agent_host import layout
from agent_host.workspaces import LAUNCH_COMMIT_MESSAGE, make_checkout
from jackin_remote.errors import HostKeyError
from jackin_remote.fleet import HostResult, Pool
from jackin_remote.inventory import Inventory
from jackin_remote.inventory.loader import load_inventory, parse_inventory
from jackin_remote.sync import SyncOutcome, SyncProgress, openssh_target, sync_workspace
from jackin_remote.transport.openssh import SSHTarget, ensure_master, master_alive, stop_master
from jackin_remote.workspace import WorkspaceScan, scan_workspace
from tests import fleet as fleet_mod
from tests.conftest import STABLE_HOSTS


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return done.stdout.strip()


def write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "laptop-repo"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    write(root, ".gitignore", "dist/\n.env\n")
    write(root, "src/app.py", "print('committed')\n")
    write(root, "docs/old.md", "old\n")
    write(root, "run.sh", "#!/bin/sh\necho run\n")
    (root / "run.sh").chmod(0o755)
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "init")
    git(root, "remote", "add", "origin", "https://user:s3cr3t-token@example.invalid/r.git")
    write(root, "src/app.py", "print('uncommitted edit')\n")
    write(root, "src/new_module.py", "NEW = 1\n")  # untracked, not ignored
    write(root, "dist/bundle.js", "built\n")  # ignored
    write(root, ".env", "API_KEY=do-not-ship\n")  # ignored and secret-shaped
    write(root, ".env.production", "API_KEY=do-not-ship\n")  # secret-shaped, not ignored
    return root


def local_inv(tmp_path: Path) -> tuple[Inventory, Path]:
    root = tmp_path / "host-root"
    text = f'[hosts.local]\ntransport = "local"\nroot = "{root}"\n'
    return parse_inventory([("local.toml", text)]), root


async def sync(
    inventory: Inventory, names: Sequence[str], scan: WorkspaceScan
) -> list[HostResult[SyncOutcome]]:
    hosts = [inventory.hosts[name] for name in names]
    async with Pool(inventory) as pool:
        results = await sync_workspace(pool, hosts, scan)
    for result in results:
        assert result.ok, result.error
    return results


def tree(root: Path) -> dict[str, str]:
    """Relative path -> content (or '-> target' for links), .git left out."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != ".git"]
        for name in filenames:
            path = Path(dirpath, name)
            rel = path.relative_to(root).as_posix()
            found[rel] = f"-> {os.readlink(path)}" if path.is_symlink() else path.read_text()
    return found


# -- local mode -------------------------------------------------------------------------------


async def test_local_sync_mirror_skip_prune_and_clone(
    repo: Path, tmp_path: Path, laptop: Path
) -> None:
    inventory, host_root = local_inv(tmp_path)
    scan = scan_workspace(repo)
    [first] = await sync(inventory, ["local"], scan)
    assert first.value is not None and not first.value.skipped
    mirror = Path(layout.mirror_dir(str(host_root), scan.name))
    assert Path(first.value.mirror) == mirror
    assert tree(mirror) == {
        ".gitignore": "dist/\n.env\n",
        "src/app.py": "print('uncommitted edit')\n",
        "src/new_module.py": "NEW = 1\n",
        "docs/old.md": "old\n",
        "run.sh": "#!/bin/sh\necho run\n",
    }
    assert os.access(mirror / "run.sh", os.X_OK)
    config = (mirror / ".git" / "config").read_text()
    assert "s3cr3t-token" not in config and "[core]" in config  # a fresh config, not the laptop's

    # Nothing changed: no rsync, no commit (the manifest file is not even rewritten).
    manifest = Path(layout.manifest_file(str(host_root), scan.name))
    stamp = (manifest.stat().st_mtime_ns, (mirror / "src" / "app.py").stat().st_mtime_ns)
    [second] = await sync(inventory, ["local"], scan_workspace(repo))
    assert second.value is not None and second.value.skipped
    assert (manifest.stat().st_mtime_ns, (mirror / "src" / "app.py").stat().st_mtime_ns) == stamp

    # A local deletion is pruned on the host; a same-size edit in the same second travels.
    (repo / "docs" / "old.md").unlink()
    app = repo / "src" / "app.py"
    before = app.stat()
    app.write_text("print('uncommitted EDIT')\n")
    os.utime(app, ns=(before.st_atime_ns, before.st_mtime_ns + 1))
    [third] = await sync(inventory, ["local"], scan_workspace(repo))
    assert third.value is not None and not third.value.skipped and third.value.pruned >= 1
    assert not (mirror / "docs").exists()
    assert (mirror / "src" / "app.py").read_text() == "print('uncommitted EDIT')\n"

    # The session's clone: the laptop's HEAD, then its working tree as one commit on top.
    laptop_head = git(repo, "rev-parse", "HEAD")
    done = make_checkout(str(host_root), scan.name, "s1d2e3f4", "clone")
    work = Path(done["work_dir"])
    assert work == Path(layout.work_dir(str(host_root), "s1d2e3f4"))
    assert done["branch"] == "jackin/s1d2e3f4" and done["base_commit"] == laptop_head
    assert git(work, "symbolic-ref", "--short", "HEAD") == "jackin/s1d2e3f4"
    assert git(work, "rev-parse", "HEAD") == done["launch_commit"]
    assert git(work, "rev-parse", "HEAD^") == laptop_head
    assert git(work, "log", "-1", "--format=%s %an <%ae>") == (
        f"{LAUNCH_COMMIT_MESSAGE} jackin <jackin@localhost>"
    )
    assert git(work, "show", "HEAD:src/app.py") == "print('uncommitted EDIT')"
    changed = git(work, "diff", "--name-status", "HEAD^", "HEAD").splitlines()
    assert sorted(changed) == ["A\tsrc/new_module.py", "D\tdocs/old.md", "M\tsrc/app.py"]
    assert git(work, "status", "--porcelain") == ""
    assert git(work, "remote") == ""
    assert tree(work) == tree(mirror)
    assert not (work / ".env").exists() and not (work / ".env.production").exists()


async def test_clean_clone_has_no_extra_commit(tmp_path: Path, laptop: Path) -> None:
    root = tmp_path / "clean"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    write(root, "a.txt", "a\n")
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "one")
    inventory, host_root = local_inv(tmp_path)
    scan = scan_workspace(root)
    await sync(inventory, ["local"], scan)
    done = make_checkout(str(host_root), scan.name, "a1b2c3d4", "clone")
    assert done["launch_commit"] == done["base_commit"] == scan.head
    assert (Path(done["work_dir"]) / "a.txt").read_text() == "a\n"


async def test_plain_directory_syncs_and_copies(tmp_path: Path, laptop: Path) -> None:
    root = tmp_path / "notes"
    write(root, "a.md", "a\n")
    write(root, "sub/b.md", "b\n")
    write(root, ".env", "S=1\n")
    (root / "link").symlink_to("sub/b.md")
    inventory, host_root = local_inv(tmp_path)
    scan = scan_workspace(root)
    await sync(inventory, ["local"], scan)
    with pytest.raises(Exception, match="not a git repository"):
        make_checkout(str(host_root), scan.name, "c1c2c3c4", "clone")
    done = make_checkout(str(host_root), scan.name, "c1c2c3c4", "copy")
    assert tree(Path(done["work_dir"])) == {"a.md": "a\n", "sub/b.md": "b\n", "link": "-> sub/b.md"}


async def test_progress_events_for_a_big_sync(tmp_path: Path, laptop: Path) -> None:
    root = tmp_path / "big"
    for i in range(1100):
        write(root, f"d{i % 10}/f{i}.txt", f"{i}\n")
    inventory, _ = local_inv(tmp_path)
    events: list[SyncProgress] = []
    async with Pool(inventory) as pool:
        [result] = await sync_workspace(
            pool, [inventory.hosts["local"]], scan_workspace(root), progress=events.append
        )
    assert result.ok and result.value is not None and result.value.files_sent == 1100
    phases = [event.phase for event in events]
    assert phases[0] == "rsync" and phases[-1] == "done"
    fractions = [e.fraction for e in events if e.phase == "progress"]
    assert fractions and fractions[-1] == 1.0


async def test_a_failing_host_does_not_stop_the_others(tmp_path: Path, laptop: Path) -> None:
    root = tmp_path / "ws"
    write(root, "a.txt", "a\n")
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExCSxoR0OlpMM834iMb6daMpF6thf5W81/r52zH/nQP"
    text = (
        f'[hosts.local]\ntransport = "local"\nroot = "{tmp_path / "host-root"}"\n'
        f'[hosts.gone]\naddress = "127.0.0.1"\nport = 1\nhost_key = "{key}"\n'
    )
    inventory = parse_inventory([("two.toml", text)])
    hosts = [inventory.hosts["gone"], inventory.hosts["local"]]
    async with Pool(inventory) as pool:
        gone, good = await sync_workspace(pool, hosts, scan_workspace(root))
    assert gone.state == "unreachable" and gone.error is not None
    assert good.ok and good.value is not None and not good.value.skipped


async def test_rsync_failure_is_a_host_error_with_its_stderr(tmp_path: Path, laptop: Path) -> None:
    root = tmp_path / "ws"
    write(root, "a.txt", "a\n")
    scan = scan_workspace(root)
    root.rename(tmp_path / "moved-away")  # after the scan, before the rsync
    inventory, host_root = local_inv(tmp_path)
    async with Pool(inventory) as pool:
        [result] = await sync_workspace(pool, [inventory.hosts["local"]], scan)
    assert not result.ok and result.error is not None
    assert "rsync failed" in result.error.message and str(root) in result.error.message
    # No manifest was recorded: the next sync will not be skipped.
    assert not Path(layout.manifest_file(str(host_root), scan.name)).exists()


# -- over SSH (the test fleet) ----------------------------------------------------------------


def host_cat(container: str, path: str) -> str:
    return fleet_mod.docker_exec(container, "cat", path).stdout


@contextlib.asynccontextmanager
async def fleet_pool(inventory_dir: Path) -> AsyncIterator[Pool]:
    inventory = load_inventory(inventory_dir)
    async with Pool(inventory) as pool:
        targets: list[SSHTarget] = []
        try:
            yield pool
        finally:
            for name in STABLE_HOSTS:
                with contextlib.suppress(Exception):
                    targets.append(await openssh_target(pool, inventory.hosts[name]))
            for target in targets:  # our masters; leave no ssh process behind
                await stop_master(target)


async def test_sync_to_two_hosts_over_openssh(
    repo: Path, fleet: fleet_mod.FleetInfo, fleet_inventory: Path, laptop: Path
) -> None:
    scan = scan_workspace(repo)
    names = ["fleet-1", "fleet-2"]
    async with fleet_pool(fleet_inventory) as pool:
        hosts = [pool.inventory.hosts[name] for name in names]
        results = await sync_workspace(pool, hosts, scan)
        for result in results:
            assert result.ok, result.error
            assert result.value is not None and not result.value.skipped
            assert result.value.files_sent == len(scan.files) + 3  # + HEAD, pack, idx
            container = fleet_mod.container(result.host.name)
            mirror = result.value.mirror
            assert mirror == f"/home/jackin/.jackin/workspaces/{scan.name}/mirror"
            assert host_cat(container, f"{mirror}/src/app.py") == "print('uncommitted edit')\n"
            listing = fleet_mod.docker_exec(container, "ls", "-A", mirror).stdout.split()
            assert ".env" not in listing and ".env.production" not in listing
            assert "dist" not in listing
            assert "s3cr3t-token" not in host_cat(container, f"{mirror}/.git/config")
            target = await openssh_target(pool, result.host)
            assert await master_alive(target)  # the rsync went through our ControlMaster
        again = await sync_workspace(pool, hosts, scan_workspace(repo))
        assert [r.value.skipped for r in again if r.value] == [True, True]


async def test_openssh_refuses_a_key_other_than_the_verified_one(
    fleet: fleet_mod.FleetInfo, fleet_inventory: Path, laptop: Path
) -> None:
    inventory = load_inventory(fleet_inventory)
    host = inventory.hosts["fleet-3"]
    wrong = fleet.host("fleet-1").host_key  # a real key, of another host
    assert wrong != fleet.host("fleet-3").host_key
    target = SSHTarget(host, wrong)
    assert not await master_alive(target)
    with pytest.raises(HostKeyError) as err:
        await ensure_master(target)
    assert "refusing" in err.value.message
    assert not await master_alive(target)


async def test_sync_through_a_jump_host(
    repo: Path, fleet: fleet_mod.FleetInfo, fleet_inventory: Path, laptop: Path
) -> None:
    inner = fleet.host("fleet-3")
    if not inner.ip:
        pytest.skip("fleet-3 has no bridge address")
    jump_entry = (
        f'[hosts.inner]\naddress = "{inner.ip}"\nport = 22\nuser = "jackin"\n'
        f'identity_file = "{fleet.identity_file}"\nhost_key = "{inner.host_key}"\n'
        'jump = "fleet-1"\n'
    )
    (fleet_inventory / "jump.toml").write_text(jump_entry)
    scan = scan_workspace(repo)
    async with fleet_pool(fleet_inventory) as pool:
        inner_host = pool.inventory.hosts["inner"]
        [result] = await sync_workspace(pool, [inner_host], scan)
        assert result.ok, result.error
        assert result.value is not None and result.value.files_sent == len(scan.files) + 3
        target = await openssh_target(pool, inner_host)
        assert target.jump is not None and target.jump.host.name == "fleet-1"
        await stop_master(target)
    mirror = f"/home/jackin/.jackin/workspaces/{scan.name}/mirror"
    assert host_cat(inner.container, f"{mirror}/src/new_module.py") == "NEW = 1\n"
