"""What a fresh `jackin-remote` process imports (goal P3: a bare `--version` and `ls --cached`
are cheap). Each command runs in a subprocess, as the entry point runs it; the probe then lists
`sys.modules`. No timing is asserted: scripts/bench_startup.py measures that."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from jackin_remote import __version__

# The console script's body (`from jackin_remote.cli import main; sys.exit(main())`), then the
# modules it imported, written to the file named by the first argument.
PROBE = """
import json, sys
report = sys.argv.pop(1)
sys.argv[0] = "jackin-remote"
code = 0
try:
    from jackin_remote.cli import main
    code = main()
except SystemExit as exit:
    code = exit.code
with open(report, "w") as fh:
    json.dump({"code": code, "modules": sorted(sys.modules)}, fh)
"""

NEVER = ("asyncssh", "asyncio", "jackin_remote.agent", "jackin_remote.fleet",
         "jackin_remote.config", "jackin_remote.launch", "docker")  # fmt: skip


def _run(tmp_path: Path, *args: str) -> tuple[int, list[str], str]:
    """(exit code, modules imported, stdout) of `jackin-remote ARGS` in a fresh process."""
    report = tmp_path / "modules.json"
    env = {k: v for k, v in os.environ.items() if k not in ("JACKIN_INVENTORY", "COLUMNS")}
    done = subprocess.run([sys.executable, "-c", PROBE, str(report), *args], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    data: dict[str, Any] = json.loads(report.read_text())
    return data["code"], data["modules"], done.stdout


def _loaded(modules: list[str], *prefixes: str) -> list[str]:
    return [m for m in modules if any(m == p or m.startswith(p + ".") for p in prefixes)]


def test_bare_version_imports_neither_typer_nor_any_command(laptop: Path, tmp_path: Path) -> None:
    code, modules, out = _run(tmp_path, "--version")
    assert code in (0, None)
    assert out == f"jackin-remote {__version__}\n"
    assert _loaded(modules, "typer", "click", "rich", "pydantic", "jackin_remote.cli.common",
                   "jackin_remote.inventory", "jackin_remote.store", *NEVER) == []  # fmt: skip


def test_version_among_other_options_is_typer_s_and_answers_the_same(
    laptop: Path, tmp_path: Path
) -> None:
    code, modules, out = _run(tmp_path, "--inventory", str(tmp_path / "none.toml"), "--version")
    assert code == 0
    assert out == f"jackin-remote {__version__}\n"
    assert "typer" in modules


@pytest.mark.parametrize("recorded", [False, True], ids=["no-store", "store"])
def test_ls_cached_imports_no_network_code_and_no_asyncio(
    laptop: Path, tmp_path: Path, recorded: bool
) -> None:
    if recorded:
        from jackin_remote.store import Store

        Store().record("local", {"id": "abc123", "state": "running", "created_at": time.time()})
    code, modules, out = _run(tmp_path, "ls", "--cached", "--json")
    assert code == 0
    assert [row["id"] for row in json.loads(out)["sessions"]] == (["abc123"] if recorded else [])
    assert _loaded(modules, *NEVER) == []
    code, modules, out = _run(tmp_path, "ls", "--cached")
    assert code == 0
    assert ("abc123" in out) == recorded
    assert _loaded(modules, *NEVER) == []
