"""Disk budget and floor (core/disk.py, the inventory keys, the probe), the checks on host
answers to du and gc (jackin_remote/disk.py), and how they are shown (ui/disk.py)."""

from __future__ import annotations

import copy
import io
import re
from pathlib import Path
from textwrap import dedent
from typing import Any

import pytest
from rich.console import Console

from jackin_remote.core.capacity import Capacity, parse_probe
from jackin_remote.core.disk import (
    DiskSetting,
    SizeError,
    budget_misfits,
    floor_misfits,
    human,
    parse_size,
    recovery,
)
from jackin_remote.disk import BadAnswer, checked_du, checked_gc
from jackin_remote.errors import InventoryError
from jackin_remote.hostcheck import host_disk_misfits
from jackin_remote.inventory import load_inventory
from jackin_remote.inventory.model import Host
from jackin_remote.ui.disk import du_view, gc_view, session_total

GIB = 1024**3
HOSTILE = "x[/b]\x1b]52;c;cHduZWQ=\x07\x1b[2J\rY\u202eZ"


def test_sizes() -> None:
    assert parse_size("50g") == 50 * GIB
    assert parse_size("512M") == 512 * 1024**2
    assert parse_size("1.5t") == 3 * 1024**4 // 2
    assert parse_size("4096") == 4096
    for bad in ("", "0", "-1g", "5gb", "1.2.3g", "g", "2000t", "1e3"):
        with pytest.raises(SizeError):
            parse_size(bad)
    assert human(0) == "0 B" and human(1536) == "1.5 KiB" and human(3 * GIB) == "3.0 GiB"
    assert human(None) == "?"


def setting(key: str, text: str) -> DiskSetting:
    return DiskSetting(key, text, f"hosts.toml:7 hosts.h.{key}")


def test_over_budget_is_a_warning_naming_where_the_budget_is_set() -> None:
    capacity = Capacity(disk_path="/r", root_usage=60 * GIB)
    (misfit,) = budget_misfits("h", capacity, setting("disk_budget", "50g"))
    assert not misfit.blocking
    assert "60.0 GiB under /r, over its disk_budget of 50.0 GiB (hosts.toml:7" in misfit.message
    assert "jackin-remote du --on h" in misfit.hint and "gc --on h" in misfit.hint
    assert budget_misfits("h", Capacity(root_usage=GIB), setting("disk_budget", "50g")) == []
    (after,) = budget_misfits(
        "h", Capacity(root_usage=49 * GIB), setting("disk_budget", "50g"), needed=2 * GIB
    )
    assert "this launch writes about 2.0 GiB, taking jackin to 51.0 GiB" in after.message
    (unknown,) = budget_misfits(
        "h", Capacity(root_usage_error="du gave no total"), setting("disk_budget", "1g")
    )
    assert "not checked on h: du gave no total" in unknown.message
    assert budget_misfits("h", Capacity(root_usage=60 * GIB), None) == []


def test_the_floor_refuses_a_launch_and_warns_elsewhere() -> None:
    capacity = Capacity(disk_path="/r", disk_free=6 * GIB)
    floor = setting("disk_floor", "5g")
    assert floor_misfits("h", capacity, floor, needed=GIB // 2) == []
    (refusal,) = floor_misfits("h", capacity, floor, needed=2 * GIB)
    assert refusal.blocking
    assert refusal.message == (
        "h has 6.0 GiB free under /r; this launch writes about 2.0 GiB, leaving 4.0 GiB, "
        "below its disk_floor of 5.0 GiB (hosts.toml:7 hosts.h.disk_floor)"
    )
    assert "--ignore-disk-floor" in refusal.hint and "gc --on h" in refusal.hint
    (ignored,) = floor_misfits("h", capacity, floor, needed=2 * GIB, ignored=True)
    assert not ignored.blocking and ignored.message.endswith("(ignored: --ignore-disk-floor)")
    (check,) = floor_misfits("h", capacity, setting("disk_floor", "10g"), launching=False)
    assert not check.blocking and "launch refuses it until space is freed" in check.message
    (unknown,) = floor_misfits("h", Capacity(), floor)
    assert not unknown.blocking and "free space is unknown" in unknown.message


def test_the_probe_reads_the_roots_usage() -> None:
    assert parse_probe("disk_free_kb 10\nroot_usage_kb 4\n").root_usage == 4096
    error = parse_probe("root_usage_error du gave no total within 60 s\n")
    assert error.root_usage is None and error.root_usage_error == "du gave no total within 60 s"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "hosts.toml"
    path.write_text(dedent(text))
    return path


def test_the_inventory_keys_with_their_file_and_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        [defaults]
        disk_floor = "5g"

        [hosts.a]
        address = "10.0.0.1"
        disk_budget = "50g"

        [hosts.b]
        address = "10.0.0.2"
        disk_floor = "1g"
        """,
    )
    hosts = load_inventory(path).hosts
    assert (hosts["a"].disk_budget, hosts["a"].disk_floor) == ("50g", "5g")
    assert (hosts["b"].disk_budget, hosts["b"].disk_floor) == (None, "1g")
    found = host_disk_misfits(hosts["a"], Capacity(disk_free=GIB, root_usage=51 * GIB))
    assert [m.blocking for m in found] == [False, False]
    assert f"{path}:2 defaults.disk_floor" in found[0].message
    assert f"{path}:6 hosts.a.disk_budget" in found[1].message
    (launch,) = host_disk_misfits(hosts["b"], Capacity(disk_free=GIB), GIB // 2, launching=True)
    assert launch.blocking and f"{path}:10 hosts.b.disk_floor" in launch.message


@pytest.mark.parametrize(
    ("value", "message"),
    [('"50gb"', "invalid size '50gb'"), ("50", "expected string"), ('"0"', "invalid size")],
)
def test_a_bad_disk_size_is_located(tmp_path: Path, value: str, message: str) -> None:
    path = write(tmp_path, f'[hosts.a]\naddress = "10.0.0.1"\n\ndisk_budget = {value}\n')
    with pytest.raises(InventoryError) as caught:
        load_inventory(path)
    error = caught.value
    assert (error.file, error.line, error.field) == (str(path), 4, "hosts.a.disk_budget")
    assert message in str(error) and error.hint


# -- host answers --------------------------------------------------------------------------------
SID = "0123abcd"


def figure(size: int = 0, shared: int = 0) -> dict[str, int]:
    return {"bytes": size, "shared": shared, "entries": 1}


def du_answer(name: str = "jk-0123abcd-v0") -> dict[str, Any]:
    return {
        "root": "/r",
        "walk": {
            "entries": 9,
            "max_entries": 100,
            "truncated": False,
            "unreadable": 0,
            "other_filesystems": 0,
        },
        "totals": {"checkouts": figure(3000), "root": figure(9000)},
        "workspaces": [{"name": "ws", **figure(100), "sessions": 1}],
        "roles": [],
        "images": [
            {
                "id": "sha256:x",
                "tags": ["jackin-role-r:aaaaaaaaaaaa"],
                "size": 300,
                "role": "r",
                "sessions": [SID],
            }
        ],
        "sessions": [
            {
                "id": SID,
                "state": "running",
                "workspace": "ws",
                "role": "r",
                "checkout": figure(3000),
                "mounts": figure(10),
                "files": figure(20),
                "snapshots": {**figure(500, 100), "count": 2},
                "image": {
                    "ref": "jackin-role-r:aaaaaaaaaaaa",
                    "size": 300,
                    "split": 3,
                    "share": 100,
                },
                "containers": [
                    {
                        "name": "jk-0123abcd-ws-r",
                        "part": "sandbox",
                        "state": "running",
                        "writable": 7,
                        "logs": {"bytes": 40, "basis": "output", "error": None},
                    }
                ],
                "volumes": [{"name": name, "bytes": 1000, "basis": "walk", "error": None}],
            }
        ],
        "engine_error": None,
    }


def test_a_du_answer_is_checked_field_by_field() -> None:
    checked = checked_du(du_answer())
    assert session_total(checked["sessions"][0]) == 3000 + 10 + 20 + 500 + 100 + 7 + 40 + 1000
    for path, value in [
        (("sessions", 0, "id"), "../etc"),
        (("sessions", 0, "checkout", "bytes"), -1),
        (("sessions", 0, "checkout", "bytes"), True),
        (("sessions", 0, "volumes", 0, "basis"), "guess"),
        (("walk",), []),
        (("sessions",), {}),
    ]:
        answer = copy.deepcopy(du_answer())
        target: Any = answer
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        with pytest.raises(BadAnswer):
            checked_du(answer)


def gc_answer(**item: Any) -> dict[str, Any]:
    base = {
        "kind": "container",
        "what": "sandbox",
        "name": "jk-x",
        "session": SID,
        "bytes": 10,
        "reason": "no record",
        "action": "remove",
        "kept_because": None,
        "recover": None,
        "removed": None,
        "error": None,
    }
    base.update(item)
    return {
        "applied": False,
        "items": [base],
        "other_roots": 0,
        "unattributed": [],
        "engine_error": None,
    }


def test_a_gc_answer_is_checked_field_by_field() -> None:
    assert checked_gc(gc_answer())["items"][0]["name"] == "jk-x"
    for bad in (
        {"kind": "rootkit"},
        {"action": "explode"},
        {"session": "x;rm"},
        {"recover": {"path": "/p", "commit": "$(reboot)"}},
        {"bytes": "big"},
    ):
        with pytest.raises(BadAnswer):
            checked_gc(gc_answer(**bad))


def render(renderable: Any, width: int = 160) -> str:
    console = Console(file=io.StringIO(), width=width)
    console.print(renderable)
    text = console.file.getvalue()  # type: ignore[attr-defined]
    return re.sub(r"\x1b\[[0-9;]*m", "", str(text))


def test_du_shows_shares_shared_figures_and_hostile_text_inertly() -> None:
    answer = checked_du(du_answer(name=HOSTILE))
    answer["root"] = "/r/" + HOSTILE
    host = Host("fleet-1", disk_budget="8k")
    shown = render(du_view([(host, answer)]))
    assert "100B (300B / 3)" in shown  # the image's share and how it is split
    assert "500B (100B shared) in 2 snapshot(s)" in shown
    assert "disk_budget 8k: 8.8 KiB of 8.0 KiB (109%)" in shown and "over budget" in shown
    assert "their output bytes are shown" in shown
    for char in ("\x1b]", "\x07", "\r", "\u202e"):
        assert char not in shown


def test_gc_lists_what_it_would_remove_and_how_to_recover_what_it_keeps() -> None:
    answer = checked_gc(gc_answer())
    kept = gc_answer(
        kind="directory",
        what="session-dir",
        name="/r/sessions/" + SID,
        action="keep",
        kept_because="it holds work that was never pulled",
        recover={"path": "/r/sessions/" + SID + "/work", "commit": "a" * 40, "clone": True},
    )["items"][0]
    answer["items"].append(checked_gc({**gc_answer(), "items": [kept]})["items"][0])
    host = Host("fleet-1", address="10.0.0.1", user="ops", port=2222)
    shown = render(gc_view([(host, answer)], applied=False), width=240)
    assert "remove" in shown and "kept" in shown and "dry run" in shown
    assert "1 item(s), 10 B, would be removed: run with --apply" in shown
    assert (
        "rsync -a -e 'ssh -p 2222' ops@10.0.0.1:/r/sessions/0123abcd/work/ "
        "./recovered-0123abcd/" in shown
    )
    assert "(commit aaaaaaaaaaaa)" in shown and "rm -rf /r/sessions/0123abcd/work" in shown
    assert recovery("/p q", None, False, None, None).startswith("copy it off the host: `cp -a")
