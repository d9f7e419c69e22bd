"""The pure parts of pull's boundary: where a link lands, the byte limit of an extraction, the
size flag, and the laptop-owned fields of the local store."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from jackin_remote.errors import StateError, UsageError
from jackin_remote.review import parse_size, pull_target
from jackin_remote.safe_extract import TooLarge, resolve_inside, safe_extract
from jackin_remote.store import Store


def _tar(*entries: tuple[str, bytes | str]) -> io.BytesIO:
    """(name, bytes) is a file; (name, "->target") a symlink; (name, "=>target") a hard link."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, body in entries:
            info = tarfile.TarInfo(name)
            if isinstance(body, str):
                info.type = tarfile.SYMTYPE if body.startswith("->") else tarfile.LNKTYPE
                info.linkname = body[2:]
                archive.addfile(info)
            else:
                info.size = len(body)
                archive.addfile(info, io.BytesIO(body))
    buffer.seek(0)
    return buffer


@pytest.mark.parametrize(
    ("parent", "target", "links", "landed"),
    [
        ((), "a/b", {}, ("a", "b")),
        (("d",), "../x", {}, ("x",)),
        (("d", "e"), "../../x", {}, ("x",)),
        ((), "sub/..", {}, ()),
        ((), "l/x", {("l",): "d/e"}, ("d", "e", "x")),
        ((), "l/../y", {("l",): "d/e"}, ("d", "y")),  # `..` after a link is physical
    ],
)
def test_links_that_stay_inside(
    parent: tuple[str, ...], target: str, links: dict[tuple[str, ...], str], landed: tuple[str, ...]
) -> None:
    assert resolve_inside(parent, target, links) == landed


@pytest.mark.parametrize(
    ("parent", "target", "links"),
    [
        ((), "/home/me/.ssh", {}),
        ((), "../x", {}),
        (("d", "e"), "../../../x", {}),
        ((), "self/../x", {("self",): "."}),  # lexically inside, out through a link
        ((), "a/x", {("a",): "b", ("b",): "/etc"}),  # through a chain to an absolute path
        ((), "loop", {("loop",): "loop"}),  # never resolves: treated as out
        ((), "", {}),
    ],
)
def test_links_that_leave(
    parent: tuple[str, ...], target: str, links: dict[tuple[str, ...], str]
) -> None:
    assert resolve_inside(parent, target, links) is None


def test_outside_links_are_reported_and_removed_on_the_final_tree(tmp_path: Path) -> None:
    report = safe_extract(
        _tar(("self", "->."), ("trick", "->self/../x"), ("keys", "->/root/.ssh"),
             ("replaced", "->/etc"), ("replaced", b"a file now"), ("ok", "->self/f"),
             ("f", b"f")),
        tmp_path,
    )  # fmt: skip
    assert sorted(report.outside_links) == [("keys", "/root/.ssh"), ("trick", "self/../x")]
    assert sorted(os.listdir(tmp_path)) == ["f", "ok", "replaced", "self"]
    assert (tmp_path / "ok").read_bytes() == b"f"
    assert report.symlinks == 2


def test_extraction_stops_at_the_byte_limit_hard_link_copies_included(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    assert safe_extract(_tar(("f", b"x" * 100)), tmp_path / "a", max_bytes=100).bytes == 100
    (tmp_path / "b").mkdir()
    with pytest.raises(TooLarge):
        safe_extract(_tar(("f", b"x" * 101)), tmp_path / "b", max_bytes=100)
    assert os.listdir(tmp_path / "b") == []  # refused before a byte was written
    (tmp_path / "c").mkdir()
    bomb = _tar(("f", b"x" * 60), *((f"copy{i}", "=>f") for i in range(100)))
    with pytest.raises(TooLarge):
        safe_extract(bomb, tmp_path / "c", max_bytes=100)
    assert sum(p.stat().st_size for p in (tmp_path / "c").iterdir()) <= 100


def test_a_compressed_archive_is_refused(tmp_path: Path) -> None:
    """Only plain tar is read: a small gzip could expand without bound."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        info = tarfile.TarInfo("f")
        info.size = 3
        archive.addfile(info, io.BytesIO(b"abc"))
    buffer.seek(0)
    with pytest.raises(tarfile.ReadError):
        safe_extract(buffer, tmp_path)


@pytest.mark.parametrize(
    ("text", "size"),
    [("1048576", 1 << 20), ("1M", 1 << 20), ("2G", 2 << 30), ("64k", 64 << 10), ("1GiB", 1 << 30)],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "0", "-1M", "lots", "1.5G", "1X"])
def test_parse_size_refuses(text: str) -> None:
    with pytest.raises(UsageError, match="--max-size"):
        parse_size(text)


def test_pull_target_is_the_laptop_record_or_the_users_choice(tmp_path: Path) -> None:
    row = {"id": "abcd1234", "workspace_path": str(tmp_path)}
    assert pull_target("h", row, None) == tmp_path
    assert pull_target("h", row, tmp_path / "x") == tmp_path / "x"
    with pytest.raises(StateError, match=r"^h: .*abcd1234") as caught:
        pull_target("h", {"id": "abcd1234", "workspace_path": None}, None)
    assert caught.value.hint is not None and "--into" in caught.value.hint


def test_a_host_entry_never_sets_a_laptop_owned_field(tmp_path: Path) -> None:
    store = Store(tmp_path / "jackin.db")
    store.record("h", {"id": "abcd1234", "state": "running"}, workspace_path="/laptop/ws")
    claimed = {"id": "abcd1234", "state": "exited", "workspace_path": "/elsewhere"}
    store.merge_host("h", [claimed])
    assert store.find("abcd1234")["workspace_path"] == "/laptop/ws"
    store.record("h", claimed)
    store.clear()  # ls --rebuild
    store.merge_host("h", [claimed, {**claimed, "id": "efgh5678"}])
    assert [(row["id"], row["workspace_path"]) for row in store.sessions()] == [
        ("abcd1234", "/laptop/ws"), ("efgh5678", None),
    ]  # fmt: skip
    store.forget("h/abcd1234")
    store.merge_host("h", [claimed])
    assert store.find("abcd1234")["workspace_path"] is None
