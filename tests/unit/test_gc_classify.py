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
