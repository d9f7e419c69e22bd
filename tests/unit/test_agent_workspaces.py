"""Host side of workspaces: the paths that decide deletions are validated, pruning stays inside
the mirror and never follows symlinks, checkouts refuse what they cannot do."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest

from agent_host import layout, workspaces
from agent_host.protocol import RemoteError
from agent_host.server import Context


class Ctx:
    def __init__(self, root: Path) -> None:
        self.root = str(root)


def ctx(root: Path) -> Context:
    return cast(Context, Ctx(root))


HASH = "a" * 64


@pytest.mark.parametrize(
    "bad", ["/etc/passwd", "../x", "a/../../x", "a//b", "./a", "a/.", "", "a\0b", 7, None]
)
def test_file_paths_that_decide_deletion_are_validated(tmp_path: Path, bad: Any) -> None:
    layout_dir = Path(layout.mirror_dir(str(tmp_path), "ws-abc123"))
    layout_dir.mkdir(parents=True)
    with pytest.raises(RemoteError) as err:
        workspaces.commit(ctx(tmp_path), {"workspace": "ws-abc123", "manifest_hash": HASH,
                                          "files": ["ok.txt", bad]})  # fmt: skip
    assert err.value.code == "invalid_params"


@pytest.mark.parametrize("bad", ["../etc", "UPPER", "a/b", "-x", ""])
def test_workspace_names_are_validated(tmp_path: Path, bad: str) -> None:
    with pytest.raises(RemoteError) as err:
        workspaces.status(ctx(tmp_path), {"workspace": bad})
    assert err.value.code == "invalid_params"


def test_prune_keeps_listed_and_never_follows_links(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep me")
    mirror = tmp_path / "mirror"
    (mirror / "a" / "deep").mkdir(parents=True)
    (mirror / "a" / "keep.txt").write_text("k")
    (mirror / "a" / "deep" / "gone.txt").write_text("g")
    (mirror / "empty").mkdir()
    (mirror / "link-out").symlink_to(outside)  # a dir symlink not in the list
    (mirror / "kept-link").symlink_to("a")
    removed = workspaces.prune_mirror(str(mirror), {"a/keep.txt", "kept-link"})
    assert sorted(p.relative_to(mirror).as_posix() for p in mirror.rglob("*")) == [
        "a", "a/keep.txt", "kept-link",
    ]  # fmt: skip
    assert (outside / "precious").read_text() == "keep me"
    assert removed == 4  # gone.txt, deep/, empty/, link-out


def test_status_readies_the_mirror_and_forgets_a_stale_manifest(tmp_path: Path) -> None:
    first = workspaces.status(ctx(tmp_path), {"workspace": "ws-abc123"})
    assert first["manifest_hash"] is None and not first["in_sync"]
    assert not Path(first["mirror"]).exists()  # a bare query changes nothing
    ready = workspaces.status(ctx(tmp_path), {"workspace": "ws-abc123", "manifest_hash": HASH})
    assert Path(ready["mirror"]).is_dir() and not ready["in_sync"]
    workspaces.commit(ctx(tmp_path), {"workspace": "ws-abc123", "manifest_hash": HASH,
                                      "files": []})  # fmt: skip
    again = workspaces.status(ctx(tmp_path), {"workspace": "ws-abc123", "manifest_hash": HASH})
    assert again["in_sync"] and again["manifest_hash"] == HASH
    other = "b" * 64
    moving = workspaces.status(ctx(tmp_path), {"workspace": "ws-abc123", "manifest_hash": other})
    assert moving["manifest_hash"] == HASH and not moving["in_sync"]
    # An rsync may now be half done: until commit, no hash (not even the old one) matches.
    back = workspaces.status(ctx(tmp_path), {"workspace": "ws-abc123", "manifest_hash": HASH})
    assert back["manifest_hash"] is None and not back["in_sync"]


def test_checkout_refuses_unsynced_bad_isolation_and_clone_of_plain_dir(tmp_path: Path) -> None:
    root = str(tmp_path)
    with pytest.raises(RemoteError, match="not synced"):
        workspaces.make_checkout(root, "ws-abc123", "abcd1234", "clone")
    with pytest.raises(RemoteError, match="bad isolation"):
        workspaces.make_checkout(root, "ws-abc123", "abcd1234", "shared")
    with pytest.raises(RemoteError, match="session id"):
        workspaces.make_checkout(root, "ws-abc123", "../../x", "copy")
    workspaces.status(ctx(tmp_path), {"workspace": "ws-abc123", "manifest_hash": HASH})
    Path(layout.mirror_dir(root, "ws-abc123"), "a.txt").write_text("a")
    workspaces.commit(ctx(tmp_path), {"workspace": "ws-abc123", "manifest_hash": HASH,
                                      "files": ["a.txt"]})  # fmt: skip
    with pytest.raises(RemoteError, match="not a git repository"):
        workspaces.make_checkout(root, "ws-abc123", "abcd1234", "clone")
    assert not Path(layout.work_dir(root, "abcd1234")).exists()  # nothing half made
    done = workspaces.make_checkout(root, "ws-abc123", "abcd1234", "copy")
    assert Path(done["work_dir"], "a.txt").read_text() == "a" and done["branch"] is None
    with pytest.raises(RemoteError, match="already has a checkout"):
        workspaces.make_checkout(root, "ws-abc123", "abcd1234", "copy")


def test_manifest_hash_is_read_from_the_prefix_or_the_whole_file(tmp_path: Path) -> None:
    workspaces.status(ctx(tmp_path), {"workspace": "ws-abc123", "manifest_hash": HASH})
    workspaces.commit(ctx(tmp_path), {"workspace": "ws-abc123", "manifest_hash": HASH,
                                      "files": []})  # fmt: skip
    path = Path(layout.manifest_file(str(tmp_path), "ws-abc123"))
    assert path.read_text().startswith('{"manifest_hash":"' + HASH)
    assert workspaces.read_manifest_hash(str(tmp_path), "ws-abc123") == HASH
    path.write_text('{\n  "files": [],\n  "manifest_hash": "' + "c" * 64 + '"\n}')
    assert workspaces.read_manifest_hash(str(tmp_path), "ws-abc123") == "c" * 64
    path.write_text("not json")
    assert workspaces.read_manifest_hash(str(tmp_path), "ws-abc123") is None
