"""Sync progress is reported only for syncs big enough to wait for."""

from __future__ import annotations

from pathlib import Path

from jackin_remote.sync import is_big_sync
from jackin_remote.workspace import WorkspaceScan


def scan(files: int, size: int) -> WorkspaceScan:
    return WorkspaceScan(
        path=Path("/w"), name="w-abcdef", is_git=False, head=None, branch=None, dirty=False,
        files=tuple(f"f{i}" for i in range(files)), excluded_secrets=(), tracked_secrets=(),
        skipped=(), manifest_hash="0" * 64, total_bytes=size,
    )  # fmt: skip


def test_only_big_syncs_report_progress() -> None:
    assert not is_big_sync(scan(10, 1000))
    assert is_big_sync(scan(1001, 10)) and is_big_sync(scan(1, 6 * 1024 * 1024))
