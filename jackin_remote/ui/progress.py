"""A progress bar per host for big workspace syncs, on stderr, only when stderr is a terminal.

Fed plain SyncProgress events by jackin_remote.sync (which never renders anything itself).
"""

from __future__ import annotations

import sys
from types import TracebackType
from typing import TextIO

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from jackin_remote.sync import SyncProgress, is_big_sync
from jackin_remote.ui.safe import visible
from jackin_remote.workspace import WorkspaceScan


def wants_progress(scan: WorkspaceScan, stream: TextIO | None = None) -> bool:
    """A bar only helps a person watching a sync long enough to wonder."""
    stream = stream if stream is not None else sys.stderr
    return is_big_sync(scan) and stream.isatty()


class SyncProgressBar:
    """A context manager and a progress callback: `with SyncProgressBar() as bar: ...`."""

    def __init__(self, console: Console | None = None) -> None:
        self._progress = Progress(
            # No markup: the description is a host name, shown literally (ui/safe.py).
            TextColumn("{task.description}", style="bold", markup=False),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}%"),
            TextColumn("{task.fields[status]}", markup=False),
            TimeElapsedColumn(),
            console=console or Console(stderr=True),
            transient=True,
        )
        self._tasks: dict[str, TaskID] = {}

    def __call__(self, event: SyncProgress) -> None:
        task = self._tasks.get(event.host)
        if event.phase == "rsync":
            if task is None:
                self._tasks[event.host] = self._progress.add_task(
                    visible(event.host, multiline=False), total=100, status="syncing"
                )
            return
        if task is None:
            return  # skipped hosts and small syncs get no bar
        if event.phase == "progress" and event.fraction is not None:
            self._progress.update(task, completed=event.fraction * 100)
        elif event.phase == "done":
            self._progress.update(task, completed=100, status="done")
        elif event.phase == "failed":
            self._progress.update(task, status="failed")

    def __enter__(self) -> SyncProgressBar:
        self._progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._progress.stop()
