"""What `gc` calls an orphan, and what it keeps (agent_host/gc.py): the pure decisions, and the
unpulled-work check against real git repositories."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from agent_host import gc, ownership

SID, GONE, PURGED, ENDED = "0123abcd", "4567efgh", "89abcdef", "zzzzzzzz"
RECORDS = {SID: "running", PURGED: "purged", ENDED: "exited"}
OUR_ID, THEIR_ID = "a" * 32, "b" * 32
NOW = 1_000_000.0


def obj(kind: str, name: str, session: str | None, labels: dict[str, str] | None = None) -> Any:
    return {"kind": kind, "name": name, "id": name, "session": session, "labels": labels or {}}


def ours() -> dict[str, str]:
    return {ownership.LABEL_ROOT: OUR_ID, ownership.LABEL_ROOT_PATH: "/r"}


def test_engine_objects_without_a_live_record_are_orphans() -> None:
    objects = [
        obj("container", "live", SID, ours()),
        obj("container", "no-record", GONE, ours()),
        obj("network", "jk-89abcdef-egress", PURGED, ours()),
        obj("volume", "jk-zzzzzzzz-v0", ENDED, ours()),  # an ended session still owns it
        obj(
            "container",
            "theirs",
            GONE,
            {ownership.LABEL_ROOT: THEIR_ID, ownership.LABEL_ROOT_PATH: "/theirs"},
        ),
        obj(
            "container",
            "gone-root",
            GONE,
            {ownership.LABEL_ROOT: THEIR_ID, ownership.LABEL_ROOT_PATH: "/gone"},
        ),
        obj("volume", "unlabelled-known", PURGED),
        obj("network", "unlabelled-unknown", GONE),
    ]
    read = {"/theirs": THEIR_ID, "/gone": ownership.ROOT_MISSING}.__getitem__
    found, others, unattributed = gc.classify_engine(objects, RECORDS, set(), OUR_ID, "/r", read)
    reasons = {f["name"]: f["reason"] for f in found}
    assert set(reasons) == {"no-record", "jk-89abcdef-egress", "gone-root", "unlabelled-known"}
    assert "no record of session 4567efgh" in reasons["no-record"]
    assert "purged" in reasons["jk-89abcdef-egress"]
    assert "/gone, which is gone" in reasons["gone-root"]
    assert others == 1
    assert unattributed == [{"kind": "network", "name": "unlabelled-unknown", "session": GONE}]
    assert all(f["action"] == gc.REMOVE for f in found)


def test_an_unlabelled_object_is_ours_when_its_session_has_a_directory_here() -> None:
    found, _, unattributed = gc.classify_engine(
        [obj("container", "c", GONE)], RECORDS, {GONE}, OUR_ID, "/r"
    )
    assert [f["name"] for f in found] == ["c"] and not unattributed


def test_session_dirs_and_snapshots() -> None:
    dirs = [
        {
            "kind": "session-dir",
            "session": SID,
            "path": "/r/sessions/" + SID,
            "bytes": 1,
            "newest": 0.0,
        },
        {
            "kind": "session-dir",
            "session": GONE,
            "path": "/r/sessions/" + GONE,
            "bytes": 2,
            "newest": 0.0,
        },
        {
            "kind": "session-dir",
            "session": PURGED,
            "path": "/r/sessions/" + PURGED,
            "bytes": 3,
            "newest": NOW - 5,
        },
        {
            "kind": "snapshots",
            "session": PURGED,
            "path": "/r/snapshots/" + PURGED,
            "bytes": 4,
            "newest": 0.0,
        },  # rm keeps a removed session's snapshots
        {
            "kind": "snapshots",
            "session": GONE,
            "path": "/r/snapshots/" + GONE,
            "bytes": 5,
            "newest": 0.0,
        },
    ]
    found = {f["name"]: f for f in gc.classify_dirs(dirs, RECORDS, NOW, 600)}
    assert set(found) == {"/r/sessions/" + GONE, "/r/sessions/" + PURGED, "/r/snapshots/" + GONE}
    recent = found["/r/sessions/" + PURGED]
    assert recent["action"] == gc.KEEP and "changed 5s ago" in recent["kept_because"]
    assert found["/r/sessions/" + GONE]["action"] == gc.REMOVE
    assert gc.classify_dirs(dirs[2:3], RECORDS, NOW, 0)[0]["action"] == gc.REMOVE


def test_role_contexts_keep_the_used_and_the_newest_of_each_role() -> None:
    contexts = [
        {"role": "r", "hash": "1", "path": "/r/roles/r/1", "bytes": 1, "newest": 10.0},
        {"role": "r", "hash": "2", "path": "/r/roles/r/2", "bytes": 1, "newest": 30.0},
        {"role": "r", "hash": "3", "path": "/r/roles/r/3", "bytes": 1, "newest": 20.0},
        {"role": "s", "hash": "9", "path": "/r/roles/s/9", "bytes": 1, "newest": 5.0},
    ]
    found = gc.classify_role_contexts(contexts, {("r", "3")}, NOW, 600)
    assert [f["name"] for f in found] == ["/r/roles/r/1"]


def test_mirrors_no_session_uses() -> None:
    mirrors = [
        {"workspace": "a", "path": "/r/workspaces/a", "bytes": 1, "newest": 0.0},
        {"workspace": "b", "path": "/r/workspaces/b", "bytes": 1, "newest": NOW},
    ]
    found = gc.classify_mirrors(mirrors, set(), NOW, 600)
    assert [(f["name"], f["action"]) for f in found] == [
        ("/r/workspaces/a", gc.REMOVE),
        ("/r/workspaces/b", gc.KEEP),
    ]
    assert gc.classify_mirrors(mirrors, {"a", "b"}, NOW, 600) == []


def image(tags: list[str], created: float, role: str = "r", image_id: str = "") -> Any:
    return {
        "id": image_id or "sha256:" + (tags[0] if tags else str(created)),
        "tags": tags,
        "size": 100,
        "created": created,
        "role": role,
    }


def test_role_images_keep_the_used_and_the_newest_base_with_its_derived_ones() -> None:
    newest = "jackin-role-r:bbbbbbbbbbbb"
    images = [
        image(["jackin-role-r:aaaaaaaaaaaa"], 10),
        image([newest], 20),
        image([newest + "-u935000000"], 21),
        image(["jackin-role-r:cccccccccccc"], 5),  # used by a record
        image(["jackin-role-r:dddddddddddd-u1000"], 6, image_id="sha256:in-use"),  # a container
        image(["jackin-role-r:eeeeeeeeeeee-candidate-1a2b3c4d"], NOW - 10),  # a build running
        image([], 7),  # untagged
    ]
    found = gc.classify_images(images, {"jackin-role-r:cccccccccccc"}, {"sha256:in-use"}, NOW, 600)
    by_name = {f["name"]: f for f in found}
    assert set(by_name) == {
        "jackin-role-r:aaaaaaaaaaaa",
        "jackin-role-r:eeeeeeeeeeee-candidate-1a2b3c4d",
        "sha256:7",
    }
    assert by_name["jackin-role-r:eeeeeeeeeeee-candidate-1a2b3c4d"]["action"] == gc.KEEP
    assert by_name["sha256:7"]["reason"] == "an untagged role image"
    assert gc.base_tag_of(newest + "-u935000000") == newest
    assert gc.base_tag_of("jackin-role-r:eeeeeeeeeeee-candidate-1a2b3c4d") == (
        "jackin-role-r:eeeeeeeeeeee"
    )
    assert gc.base_tag_of("other:tag") is None


def test_proxies_of_ended_or_unknown_sessions_are_leftovers() -> None:
    proxies = [
        {"pid": 10, "session": SID},
        {"pid": 11, "session": ENDED},
        {"pid": 12, "session": GONE},
        {"pid": 13, "session": PURGED},
    ]
    found = {f["pid"]: f["reason"] for f in gc.classify_proxies(proxies, RECORDS)}
    assert set(found) == {11, 12, 13} and found[11] == f"session {ENDED} is exited"


def test_secrets_go_only_when_no_container_of_the_session_is_on_the_engine() -> None:
    entries = [
        {"session": s, "path": "/dev/shm/jackin-secrets-" + s, "bytes": 8, "newest": 0.0}
        for s in (SID, GONE, PURGED, ENDED)
    ]
    found = gc.classify_secrets(entries, RECORDS, {PURGED}, NOW, 600)
    assert [f["session"] for f in found] == [GONE]


def test_an_egress_proxys_argv_is_recognised() -> None:
    argv = [
        b"python3",
        b"-I",
        b"-c",
        b"code",
        b"/pkg",
        b"jackin-egress-proxy",
        b"--root",
        b"/r",
        b"--session",
        SID.encode(),
        b"--listen",
        b"10.0.0.1",
        b"",
    ]
    assert gc.proxy_argv(argv) == ("/r", SID)
    assert gc.proxy_argv([b"python3", b"--root", b"/r", b"--session", SID.encode()]) is None
    assert gc.proxy_argv([b"jackin-egress-proxy", b"--root", b"/r", b"--session", b"bad"]) is None


# -- unpulled work, with real git ----------------------------------------------------------------
def git(repo: Path, *args: str) -> str:
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(repo),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    done = subprocess.run(
        ["git", "-C", str(repo), *args], env=env, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A host root with one workspace mirror (one commit) and a checkout cloned from it."""
    root = tmp_path / "root"
    mirror = root / "workspaces" / "ws" / "mirror"
    mirror.mkdir(parents=True)
    git(mirror, "init", "-q", "-b", "main")
    (mirror / "README").write_text("hi\n")
    git(mirror, "add", ".")
    git(mirror, "commit", "-qm", "base")
    work = root / "sessions" / SID / "work"
    work.parent.mkdir(parents=True)
    git(root, "clone", "-q", str(mirror), str(work))
    return root


def verdict(root: Path, record: dict[str, Any] | None = None) -> dict[str, Any]:
    work = str(root / "sessions" / SID / "work")
    return gc.work_verdict(str(root), work, record, gc.mirror_object_dirs(str(root)))


def test_a_checkout_at_its_base_holds_nothing_unpulled(root: Path) -> None:
    assert verdict(root)["state"] == "pulled"
    assert not [p for p in root.iterdir() if p.name.startswith(".gc-")]  # scratch repos gone


def test_a_commit_beyond_the_mirror_is_unpulled_without_a_record(root: Path) -> None:
    work = root / "sessions" / SID / "work"
    (work / "agent.txt").write_text("work\n")
    git(work, "add", ".")
    git(work, "commit", "-qm", "agent")
    found = verdict(root)
    assert found["state"] == "unpulled" and found["commit"] == git(work, "rev-parse", "HEAD")


def test_uncommitted_changes_are_unpulled(root: Path) -> None:
    (root / "sessions" / SID / "work" / "README").write_text("changed\n")
    assert verdict(root)["state"] == "unpulled"


def test_with_a_record_its_pulled_commit_decides(root: Path) -> None:
    work = root / "sessions" / SID / "work"
    (work / "agent.txt").write_text("work\n")
    git(work, "add", ".")
    git(work, "commit", "-qm", "agent")
    head = git(work, "rev-parse", "HEAD")
    assert verdict(root, {"pulled_commit": head})["state"] == "pulled"
    assert verdict(root, {"pulled_commit": None, "launch_commit": head})["state"] == "pulled"
    assert verdict(root, {"pulled_commit": None})["state"] == "unpulled"


def test_a_copy_checkout_without_a_record_cannot_be_told(root: Path) -> None:
    work = root / "sessions" / GONE / "work"
    work.mkdir(parents=True)
    (work / "f").write_text("x")
    found = gc.work_verdict(str(root), str(work), None, [])
    assert found["state"] == "unknown" and found["why"] == "a copy checkout with no record"
    (work / "f").unlink()
    assert gc.work_verdict(str(root), str(work), None, [])["state"] == "empty"
    assert gc.work_verdict(str(root), str(work / "none"), None, [])["state"] == "none"


def test_a_wrecked_git_dir_is_kept_as_unknown(root: Path) -> None:
    work = root / "sessions" / SID / "work"
    git_dir = work / ".git"
    os.rename(git_dir, work / "elsewhere")
    git_dir.symlink_to(work / "elsewhere")
    assert verdict(root)["state"] in ("unknown", "unpulled")


def test_guard_work_keeps_a_directory_with_unpulled_work_and_says_how_to_recover(
    root: Path,
) -> None:
    work = root / "sessions" / SID / "work"
    (work / "agent.txt").write_text("work\n")
    found = gc.item("directory", str(root / "sessions" / SID), SID, "no record", 1, "session-dir")
    gc.guard_work(str(root), found, {}, gc.mirror_object_dirs(str(root)))
    assert found["action"] == gc.KEEP and "never pulled" in found["kept_because"]
    assert found["recover"]["path"] == str(work) and found["recover"]["clone"] is True


def test_a_copy_checkout_with_a_git_dir_and_ignored_files_is_unpulled_without_a_record(
    root: Path,
) -> None:
    """A copy of a git workspace has a .git too: only a tree that is HEAD's whole, ignored
    files included, counts as pulled."""
    work = root / "sessions" / SID / "work"
    mirror = root / "workspaces" / "ws" / "mirror"
    (mirror / ".gitignore").write_text("*.log\n")
    git(mirror, "add", ".")
    git(mirror, "commit", "-qm", "ignore logs")
    git(work, "pull", "-q")
    assert verdict(root)["state"] == "pulled"
    (work / "results.log").write_text("the agent's only output\n")
    found = verdict(root)
    assert found["state"] == "unpulled" and "ignored" in found["why"]
    assert found["commit"] == git(work, "rev-parse", "HEAD")


def test_a_full_disk_under_the_scratch_repository_keeps_the_item(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(**_: Any) -> str:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(gc.tempfile, "mkdtemp", full)
    found = verdict(root)
    assert found["state"] == "unknown" and "No space left on device" in found["why"]
    kept = gc.item("directory", str(root / "sessions" / SID), SID, "no record", 1, "session-dir")
    gc.guard_work(str(root), kept, {}, [])
    assert kept["action"] == gc.KEEP and "No space left" in kept["kept_because"]
    assert verdict(root, {"pulled_commit": None})["state"] == "unknown"


# -- what runs, what the engine could not say, what removal must not follow ----------------------
def test_a_gone_roots_running_container_and_what_it_uses_are_kept() -> None:
    gone = {ownership.LABEL_ROOT: THEIR_ID, ownership.LABEL_ROOT_PATH: "/home/else/root"}
    objects = [
        dict(obj("container", "up", GONE, gone), running=True),
        dict(obj("container", "down", GONE, gone), running=False),
        dict(obj("volume", "jk-4567efgh-v0", GONE, gone), in_use=True),
        dict(obj("network", "jk-4567efgh-egress", GONE, gone), in_use=True),
        dict(obj("network", "jk-4567efgh-docker", GONE, gone), in_use=False),
        dict(obj("container", "ours-up", ENDED, ours()), running=True),
    ]
    missing = {"/home/else/root": ownership.ROOT_MISSING}.__getitem__
    found, _, _ = gc.classify_engine(objects, RECORDS, set(), OUR_ID, "/r", missing)
    by_name = {f["name"]: f for f in found}
    for name in ("up", "jk-4567efgh-v0", "jk-4567efgh-egress"):
        assert by_name[name]["action"] == gc.KEEP
        assert by_name[name]["kept_because"].startswith("running")
    assert by_name["down"]["action"] == by_name["jk-4567efgh-docker"]["action"] == gc.REMOVE


class _Engine:
    """The engine's low-level answers, as disk.Engine gives them."""

    def containers(self, all: bool = False, filters: Any = None) -> Any:
        gone = {ownership.LABEL_ROOT: THEIR_ID, ownership.LABEL_ROOT_PATH: "/gone",
                "jackin.session": GONE}  # fmt: skip
        user = {"Id": "u1", "Names": ["/user"], "State": "running", "Labels": {},
                "Mounts": [{"Type": "volume", "Name": "jk-4567efgh-v0"}],
                "NetworkSettings": {"Networks": {"x": {"NetworkID": "net-egress"}}}}  # fmt: skip
        sandbox = {"Id": "c1", "Names": ["/jk-4567efgh"], "State": "exited", "Labels": gone}
        return [sandbox] if filters else [user, sandbox]

    def networks(self) -> Any:
        labels = {ownership.LABEL_ROOT: THEIR_ID, ownership.LABEL_ROOT_PATH: "/gone"}
        return [{"Name": "jk-4567efgh-egress", "Id": "net-egress", "Labels": labels},
                {"Name": "jk-4567efgh-docker", "Id": "net-docker", "Labels": labels}]  # fmt: skip

    def volumes(self) -> Any:
        return {"Volumes": [{"Name": n, "Labels": {}} for n in ("jk-4567efgh-v0",
                                                                "jk-4567efgh-v1")]}  # fmt: skip


def test_the_engine_listing_says_what_runs_and_what_running_containers_use() -> None:
    objects, _, sessions = gc.engine_objects(_Engine())
    found = {o["name"]: o for o in objects}
    assert found["jk-4567efgh"]["running"] is False and sessions == {GONE}
    assert found["jk-4567efgh-egress"]["in_use"] and not found["jk-4567efgh-docker"]["in_use"]
    assert found["jk-4567efgh-v0"]["in_use"] and not found["jk-4567efgh-v1"]["in_use"]


def test_without_the_engines_containers_every_secrets_directory_is_kept() -> None:
    entries = [
        {"session": s, "path": "/dev/shm/jackin-secrets-" + s, "bytes": 8, "newest": 0.0}
        for s in (SID, GONE, PURGED)
    ]
    found = gc.classify_secrets(entries, RECORDS, None, NOW, 600, "socket refused")
    assert [f["session"] for f in found] == [GONE, PURGED]
    assert all(f["action"] == gc.KEEP and "socket refused" in f["kept_because"] for f in found)


def secrets_item(path: Path) -> dict[str, Any]:
    (entry,) = [e for e in gc.secret_dirs(str(path.parent)) if e["path"] == str(path)]
    return gc.classify_secrets([entry], {}, set(), NOW, 0)[0]


def test_secrets_removal_never_follows_a_link_swapped_in(tmp_path: Path) -> None:
    shm = tmp_path / "shm"
    path = shm / ("jackin-secrets-" + GONE)
    path.mkdir(parents=True)
    (path / "TOKEN").write_text("s3cret")
    os.chmod(path / "TOKEN", 0o400)
    os.chmod(path, 0o500)
    found = secrets_item(path)
    # Swapped after the listing: a link to a directory gc must never chmod or empty.
    victim = tmp_path / "etc"
    victim.mkdir()
    (victim / "passwd").write_text("root\n")
    os.chmod(victim, 0o755)
    path.rename(shm / "listed")  # still there: a new directory cannot reuse its inode
    path.symlink_to(victim)
    with pytest.raises(gc.RemoteError, match="not a plain directory"):
        gc.remove_secrets(found)
    assert (victim / "passwd").exists() and (victim.stat().st_mode & 0o777) == 0o755
    # Another directory put in its place (not the one listed) is left alone too.
    path.unlink()
    path.mkdir()
    (path / "x").write_text("x")
    with pytest.raises(gc.RemoteError, match="not the directory gc listed"):
        gc.remove_secrets(found)
    assert (path / "x").exists()


def test_secrets_removal_empties_the_listed_directory_through_its_descriptor(
    tmp_path: Path,
) -> None:
    path = tmp_path / "shm" / ("jackin-secrets-" + GONE)
    path.mkdir(parents=True)
    for name in ("A", "B"):
        (path / name).write_text("v")
        os.chmod(path / name, 0o400)
    (path / "link").symlink_to(tmp_path)  # unlinked, never followed
    os.chmod(path, 0o500)
    gc.remove_secrets(secrets_item(path))
    assert not path.exists() and tmp_path.exists()
    gc.remove_secrets(gc.item("secrets", str(path), GONE, "gone"))  # already gone: nothing


def test_a_sessions_directories_stay_while_one_of_its_containers_does(tmp_path: Path) -> None:
    root = tmp_path / "root"
    session_dir = root / "sessions" / GONE
    (session_dir / "mounts").mkdir(parents=True)
    items = [
        gc.item("container", "jk-" + GONE, GONE, "no record", id="c1", what="sandbox"),
        gc.item("directory", str(session_dir), GONE, "no record", 1, "session-dir"),
    ]
    gc.remove_all(str(root), None, items)  # the engine is unreachable: the container stays
    assert items[0]["removed"] is False and session_dir.is_dir()
    assert items[1]["action"] == gc.KEEP and "remains" in items[1]["kept_because"]
    assert "not reachable" in items[1]["kept_because"]
    kept = [gc.keep(gc.item("container", "up", GONE, "gone root", id="c2"), "running"),
            gc.item("directory", str(session_dir), GONE, "no record", 1, "snapshots")]  # fmt: skip
    gc.hold_session_dirs(kept)
    assert kept[1]["action"] == gc.KEEP and "up is kept: running" in kept[1]["kept_because"]


class _ReadOnlyStore:
    read_only = True

    def __init__(self, root: str) -> None:
        pass

    def all(self, include_purged: bool = False) -> list[dict[str, Any]]:
        return []

    def close(self) -> None:
        pass


def test_gc_on_a_read_only_state_db_refuses_apply_and_doubts_missing_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "root"
    session_dir = root / "sessions" / GONE
    (session_dir / "mounts").mkdir(parents=True)

    def no_engine() -> Any:
        raise OSError("no engine here")

    monkeypatch.setattr(gc, "Store", _ReadOnlyStore)
    monkeypatch.setattr(gc.disk, "_api", no_engine)
    monkeypatch.setattr(gc, "secret_dirs", lambda: [])
    monkeypatch.setattr(gc, "proxy_processes", lambda root: [])
    ctx = type("Ctx", (), {"root": str(root)})()
    with pytest.raises(gc.RemoteError, match=r"disk is full.*free space"):
        gc.collect(ctx, {"apply": True, "min_age": 0})  # type: ignore[arg-type]
    assert session_dir.is_dir()
    answer = gc.collect(ctx, {"min_age": 0})  # type: ignore[arg-type]
    (found,) = [f for f in answer["items"] if f["name"] == str(session_dir)]
    assert found["action"] == gc.KEEP and "read-only" in found["kept_because"]
