"""The tar extractor for pulled work: hostile archives must not write outside the destination.

Every "outside" target is a directory of the test's own: a broken extractor run as root must
not be able to damage the machine (an `a -> /etc` link is modelled as `a -> <tmp>/outside/etc`).
"""

from __future__ import annotations

import io
import os
import stat
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from jackin_remote.safe_extract import ExtractReport, UnsafeEntry, entry_parts, safe_extract


def _file(name: str, data: bytes = b"x", mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    return info, data


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, None


def _special(name: str, kind: bytes) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    return info, None


def _dir(name: str, mode: int = 0o755) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = mode
    return info, None


def tarball(*entries: tuple[tarfile.TarInfo, bytes | None]) -> io.BytesIO:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for info, data in entries:
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    buffer.seek(0)
    return buffer


def snapshot(top: Path, skip: Path) -> dict[str, bytes | str]:
    """Everything under `top` except `skip`: names -> content or link target, links unfollowed."""
    seen: dict[str, bytes | str] = {}
    for base, dirs, files in os.walk(top):
        dirs[:] = [d for d in dirs if Path(base) / d != skip]  # never descend into dest
        for name in dirs + files:
            path = Path(base) / name
            if path.is_symlink():
                seen[str(path)] = "-> " + os.readlink(path)
            elif path.is_file():
                seen[str(path)] = path.read_bytes()
            else:
                seen[str(path)] = "dir"
    return seen


@pytest.fixture
def area(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(dest, outside): dest is nested so '../x' and '../../x' would land in watched places."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("do not touch\n")
    (outside / "etc").mkdir()
    (outside / "etc" / "passwd").write_text("root:x:0:0\n")
    dest = tmp_path / "pulled" / "dest"
    dest.mkdir(parents=True)
    before = snapshot(tmp_path, dest)
    yield dest, outside
    assert snapshot(tmp_path, dest) == before, "something was written outside dest"


def skipped_names(report: ExtractReport) -> set[str]:
    return {name for name, _ in report.skipped}


def test_parent_escape_and_absolute_names_are_refused(area: tuple[Path, Path]) -> None:
    dest, outside = area
    report = safe_extract(
        tarball(
            _file("../escape", b"up one"),
            _file("../../escape2", b"up two"),
            _file("ok/../../escape3", b"sneaky"),
            _file(str(outside / "abs.txt"), b"absolute"),
            _file("fine.txt", b"kept"),
        ),
        dest,
    )
    assert skipped_names(report) == {
        "../escape", "../../escape2", "ok/../../escape3", str(outside / "abs.txt"),
    }  # fmt: skip
    assert (dest / "fine.txt").read_bytes() == b"kept"
    assert sorted(os.listdir(dest)) == ["fine.txt"]


def test_symlinked_dir_then_file_inside_it_is_not_written_through(
    area: tuple[Path, Path],
) -> None:
    dest, outside = area
    report = safe_extract(
        tarball(
            _link("a", str(outside / "etc")),  # the classic a -> /etc, then a/passwd
            _file("a/passwd", b"pwned"),
            _link("b", str(outside)),
            _file("b/secret.txt", b"pwned"),
            _dir("b/newdir"),
            _link("c", "../../outside"),
            _file("c/secret.txt", b"pwned"),
        ),
        dest,
        keep_outside_links=True,  # the links stay on disk: the walk must still not follow them
    )
    assert skipped_names(report) == {"a/passwd", "b/secret.txt", "b/newdir", "c/secret.txt"}
    assert all("symlink" in why for _, why in report.skipped)
    # The links themselves arrive as links, their targets exactly as written.
    assert os.readlink(dest / "a") == str(outside / "etc")
    assert os.readlink(dest / "b") == str(outside)
    assert os.readlink(dest / "c") == "../../outside"
    assert report.symlinks == 3
    assert (outside / "etc" / "passwd").read_text() == "root:x:0:0\n"


def test_file_entry_over_a_symlink_replaces_the_link_not_its_target(
    area: tuple[Path, Path],
) -> None:
    dest, outside = area
    report = safe_extract(
        tarball(_link("out", str(outside / "secret.txt")), _file("out", b"new content")),
        dest,
    )
    assert report.skipped == []
    assert not (dest / "out").is_symlink()
    assert (dest / "out").read_bytes() == b"new content"
    assert (outside / "secret.txt").read_text() == "do not touch\n"


def test_symlink_chain_through_itself_is_refused(area: tuple[Path, Path]) -> None:
    dest, _ = area
    report = safe_extract(tarball(_link("loop", "."), _file("loop/loop/x", b"x")), dest)
    assert skipped_names(report) == {"loop/loop/x"}
    assert sorted(os.listdir(dest)) == ["loop"]


def test_hard_links_copy_inside_files_and_refuse_everything_else(
    area: tuple[Path, Path],
) -> None:
    dest, outside = area
    report = safe_extract(
        tarball(
            _file("real.txt", b"shared", mode=0o640),
            _link("copy.txt", "real.txt", tarfile.LNKTYPE),
            _link("abs", str(outside / "secret.txt"), tarfile.LNKTYPE),
            _link("up", "../../outside/secret.txt", tarfile.LNKTYPE),
            _link("missing", "never-extracted", tarfile.LNKTYPE),
            _link("sym", str(outside / "secret.txt")),
            _link("via-sym", "sym", tarfile.LNKTYPE),
        ),
        dest,
    )
    assert skipped_names(report) == {"abs", "up", "missing", "via-sym"}
    assert (dest / "copy.txt").read_bytes() == b"shared"
    assert os.stat(dest / "copy.txt").st_ino != os.stat(dest / "real.txt").st_ino
    assert stat.S_IMODE(os.stat(dest / "copy.txt").st_mode) == 0o640
    for name in ("abs", "up", "missing", "via-sym"):
        assert not os.path.lexists(dest / name)


def test_setuid_setgid_sticky_bits_are_dropped(area: tuple[Path, Path]) -> None:
    dest, _ = area
    safe_extract(
        tarball(
            _file("suid", b"#!/bin/sh\n", mode=0o4755),
            _file("sgid", b"x", mode=0o2750),
            _dir("sticky", mode=0o1777),
            _file("readonly", b"x", mode=0o444),
        ),
        dest,
    )
    assert stat.S_IMODE(os.stat(dest / "suid").st_mode) == 0o755
    assert stat.S_IMODE(os.stat(dest / "sgid").st_mode) == 0o750
    assert stat.S_IMODE(os.stat(dest / "sticky").st_mode) == 0o777
    # Owner write is kept so the user can always tidy up what was pulled.
    assert stat.S_IMODE(os.stat(dest / "readonly").st_mode) == 0o644


def test_devices_and_fifos_are_skipped(area: tuple[Path, Path]) -> None:
    dest, _ = area
    report = safe_extract(
        tarball(
            _special("null", tarfile.CHRTYPE),
            _special("disk", tarfile.BLKTYPE),
            _special("pipe", tarfile.FIFOTYPE),
            _file("normal", b"x"),
        ),
        dest,
    )
    assert skipped_names(report) == {"null", "disk", "pipe"}
    assert sorted(os.listdir(dest)) == ["normal"]


def test_a_directory_entry_does_not_replace_a_file_or_follow_it(area: tuple[Path, Path]) -> None:
    dest, _ = area
    report = safe_extract(tarball(_file("x", b"file"), _dir("x"), _file("x/y", b"in")), dest)
    assert skipped_names(report) == {"x", "x/y"}
    assert (dest / "x").read_bytes() == b"file"


def test_deep_nesting_beyond_path_max_is_extracted_by_directory_fds(
    area: tuple[Path, Path],
) -> None:
    dest, _ = area
    depth = 400  # 400 * 11 characters: longer than PATH_MAX, fine one component at a time
    name = "/".join(["d" * 10] * depth) + "/leaf.txt"
    assert len(name) > 4096
    report = safe_extract(tarball(_file(name, b"deep")), dest)
    assert report.skipped == [] and report.files == 1
    fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            child = os.open("d" * 10, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = child
        leaf = os.open("leaf.txt", os.O_RDONLY, dir_fd=fd)
        assert os.read(leaf, 10) == b"deep"
        os.close(leaf)
    finally:
        os.close(fd)


def test_real_gnu_tar_round_trip_keeps_links_as_links(tmp_path: Path) -> None:
    source = tmp_path / "src"
    (source / "pkg").mkdir(parents=True)
    (source / "pkg" / "mod.py").write_text("print('hi')\n")
    (source / "run.sh").write_text("#!/bin/sh\n")
    (source / "run.sh").chmod(0o755)
    os.symlink("pkg/mod.py", source / "rel-link")
    os.symlink("/nonexistent/abs-target", source / "abs-link")
    os.symlink("does-not-exist", source / "dangling")
    done = subprocess.run(["tar", "-C", str(source), "-cf", "-", "."], capture_output=True)
    assert done.returncode == 0, done.stderr
    dest = tmp_path / "dest"
    dest.mkdir()
    report = safe_extract(io.BytesIO(done.stdout), dest, keep_outside_links=True)
    assert report.skipped == []
    assert report.outside_links == [("abs-link", "/nonexistent/abs-target")]
    assert (report.files, report.symlinks) == (2, 3)
    assert (dest / "pkg" / "mod.py").read_text() == "print('hi')\n"
    assert stat.S_IMODE(os.stat(dest / "run.sh").st_mode) == 0o755
    assert os.readlink(dest / "rel-link") == "pkg/mod.py"
    assert os.readlink(dest / "abs-link") == "/nonexistent/abs-target"
    assert os.readlink(dest / "dangling") == "does-not-exist"


def test_destination_that_is_a_symlink_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    os.symlink(real, tmp_path / "dest")
    with pytest.raises(OSError):
        safe_extract(tarball(_file("x")), tmp_path / "dest")
    assert os.listdir(real) == []


@pytest.mark.parametrize(
    ("name", "parts"),
    [("a/b", ("a", "b")), ("./a/./b/", ("a", "b")), (".", ()), ("a//b", ("a", "b"))],
)
def test_entry_parts_accepts_relative_names(name: str, parts: tuple[str, ...]) -> None:
    assert entry_parts(name) == parts


@pytest.mark.parametrize("name", ["/etc/passwd", "..", "a/../b", "a/..", "x\0y", "//x"])
def test_entry_parts_refuses_unsafe_names(name: str) -> None:
    with pytest.raises(UnsafeEntry):
        entry_parts(name)
