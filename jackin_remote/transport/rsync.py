"""The laptop's rsync: which one it is, the argv we give it, and how to read what it prints.

macOS 15+ ships openrsync, which rejects `--info=*` and `--modify-window`: we detect it once
per process and keep to the common subset there.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from dataclasses import dataclass

from jackin_remote.errors import JackinError

RSYNC_TIMEOUT_S = 60  # a stalled transfer fails instead of hanging
# Itemized change, file length, name: one line per entry rsync touched.
OUT_FORMAT = "%i %l %n"
_ITEM_RE = re.compile(r"^([<>ch.*])([fdLDS])\S* (\d+) (.*)$")
_PROGRESS_RE = re.compile(r"^\s*([\d,.]+)\s+(\d+)%")


@dataclass(frozen=True)
class RsyncInfo:
    path: str
    version: str  # first line of `rsync --version`
    openrsync: bool


@functools.cache
def rsync_info() -> RsyncInfo:
    path = shutil.which("rsync")
    if path is None:
        raise JackinError("rsync is not installed on this machine", hint="install rsync")
    try:
        done = subprocess.run([path, "--version"], capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise JackinError(f"cannot run {path} --version: {exc}") from None
    text = (done.stdout + done.stderr).decode(errors="replace")
    first = text.strip().splitlines()[0] if text.strip() else "unknown"
    return RsyncInfo(path, first, "openrsync" in text.lower())


def rsync_argv(
    info: RsyncInfo,
    source_dir: str,
    dest: str,
    *,
    remote_shell: str | None = None,
    progress: bool = False,
) -> list[str]:
    """Copy the NUL-separated relative paths given on stdin from source_dir into dest.

    No -r: only the listed files travel (their parent dirs are implied). No -z: it costs more
    than it saves on a LAN. Deletions are not rsync's job here (the host prunes to the list).
    """
    argv = [info.path, "-lpt", "--files-from=-", "--from0", f"--timeout={RSYNC_TIMEOUT_S}"]
    if not info.openrsync:
        # Compare nanoseconds too: an edit within the same second as the last sync, with the
        # same size, must not be skipped by the quick check.
        argv += ["--modify-window=-1", f"--out-format={OUT_FORMAT}"]
        if progress:
            argv.append("--info=progress2")
    if remote_shell is not None:
        argv += ["-e", remote_shell]
    return [*argv, "--", source_dir.rstrip("/") + "/", dest]


@dataclass
class RsyncTally:
    """What rsync reported as it went: entries sent, bytes of sent files, progress."""

    files: int = 0
    bytes: int = 0
    fraction: float | None = None

    def feed(self, line: str) -> bool:
        """Account for one output line; True if it changed the progress fraction."""
        item = _ITEM_RE.match(line)
        if item is not None:
            kind, what, length = item.group(1), item.group(2), int(item.group(3))
            if kind in "<>c" and what in "fL":
                self.files += 1
                self.bytes += length if what == "f" else 0
            return False
        progress = _PROGRESS_RE.match(line)
        if progress is not None:
            self.fraction = min(int(progress.group(2)), 100) / 100
            return True
        return False
