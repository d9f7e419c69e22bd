"""The sync progress bar: bars only for hosts that rsync, shown only on a terminal."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

from jackin_remote.sync import SyncProgress, is_big_sync
from jackin_remote.ui.progress import SyncProgressBar, wants_progress
from jackin_remote.workspace import WorkspaceScan


def scan(files: int, size: int) -> WorkspaceScan:
    return WorkspaceScan(
        path=Path("/w"), name="w-abcdef", is_git=False, head=None, branch=None, dirty=False,
        files=tuple(f"f{i}" for i in range(files)), excluded_secrets=(), tracked_secrets=(),
        skipped=(), manifest_hash="0" * 64, total_bytes=size,
    )  # fmt: skip


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_only_big_syncs_on_a_terminal_get_a_bar() -> None:
    assert not is_big_sync(scan(10, 1000))
    assert is_big_sync(scan(1001, 10)) and is_big_sync(scan(1, 6 * 1024 * 1024))
    assert wants_progress(scan(2000, 10), Tty())
    assert not wants_progress(scan(2000, 10), io.StringIO())
    assert not wants_progress(scan(10, 10), Tty())


def test_bar_follows_events_per_host() -> None:
    out = io.StringIO()
    with SyncProgressBar(Console(file=out, width=80, force_terminal=True)) as bar:
        bar(SyncProgress("fleet-1", "skipped"))  # in sync: no bar
        bar(SyncProgress("fleet-2", "rsync", 0.0))
        bar(SyncProgress("fleet-2", "progress", 0.5, 10))
        tasks = {task.description: task for task in bar._progress.tasks}
        assert set(tasks) == {"fleet-2"} and tasks["fleet-2"].completed == 50
        bar(SyncProgress("fleet-3", "rsync", 0.0))
        bar(SyncProgress("fleet-3", "failed"))
        bar(SyncProgress("fleet-2", "done"))
        tasks = {task.description: task for task in bar._progress.tasks}
        assert tasks["fleet-2"].completed == 100 and tasks["fleet-2"].fields["status"] == "done"
        assert "failed" in tasks["fleet-3"].fields["status"]
    assert "fleet-2" in out.getvalue()
