"""Inventory editor: comments and order survive, duplicates are refused, errors write nothing."""

from __future__ import annotations

import os
import re
from pathlib import Path
from textwrap import dedent

import pytest

from jackin_remote.errors import InventoryError
from jackin_remote.inventory import load_inventory
from jackin_remote.inventory.editor import add_host, remove_host

FLEET = dedent(
    """\
    # Fleet for the build farm.
    [defaults]
    user = "ops"  # shared login

    # The web server.
    [hosts.web]
    address = "10.0.0.1" # primary

    # The database.
    [hosts.db]
    address = "10.0.0.2"

    [hosts.db.limits]
    memory = "8g"

    # Who is who.
    [groups]
    prod = [
      "web", # front
      "db",
    ]
    """
)


@pytest.fixture
def fleet(tmp_path: Path) -> Path:
    path = tmp_path / "fleet.toml"
    path.write_text(FLEET)
    return path


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file in the directory, hidden ones included (a leftover temp file would show)."""
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}


# ---- add -----------------------------------------------------------------------------------


def test_add_inserts_after_last_host_keeping_everything_else(fleet: Path) -> None:
    add_host(fleet, "cache", {"address": "10.0.0.3", "labels": ["fast"], "port": None})
    expected = FLEET.replace(
        '[hosts.db.limits]\nmemory = "8g"\n\n',
        '[hosts.db.limits]\nmemory = "8g"\n\n[hosts.cache]\naddress = "10.0.0.3"\n'
        'labels = ["fast"]\n\n',
    )
    assert fleet.read_text() == expected
    host = load_inventory(fleet).hosts["cache"]
    assert (host.address, host.user, host.labels) == ("10.0.0.3", "ops", ("fast",))


def test_add_writes_limits_as_an_inline_table(fleet: Path) -> None:
    add_host(fleet, "big", {"limits": {"memory": "64g", "cpus": 16.0}, "capacity": 8})
    assert 'limits = {memory = "64g", cpus = 16.0}' in fleet.read_text()
    assert load_inventory(fleet).hosts["big"].limits.memory == "64g"


def test_add_creates_a_missing_file_and_directory(tmp_path: Path) -> None:
    path = tmp_path / "inventory" / "new.toml"
    add_host(path, "web", {"address": "web.example.com"})
    assert path.read_text() == '[hosts.web]\naddress = "web.example.com"\n'
    assert path.stat().st_mode & 0o777 == 0o644


def test_add_to_a_file_without_hosts_appends(tmp_path: Path) -> None:
    path = tmp_path / "a.toml"
    path.write_text("# only comments\n\n\n")
    add_host(path, "web", {})
    assert path.read_text() == "# only comments\n\n[hosts.web]\n"


def test_add_refuses_a_duplicate_in_another_file_and_writes_nothing(
    fleet: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other.toml"
    before = snapshot(tmp_path)
    with pytest.raises(InventoryError, match=re.escape(f"already exists (declared at {fleet}:6)")):
        add_host(other, "web", {"address": "x"})
    assert snapshot(tmp_path) == before


def test_add_refuses_a_duplicate_in_the_same_file(fleet: Path, tmp_path: Path) -> None:
    before = snapshot(tmp_path)
    with pytest.raises(InventoryError, match="already exists"):
        add_host(fleet, "db", {})
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(
    ("name", "fields", "message"),
    [
        ("Bad_Name", {}, "invalid host name"),
        ("all", {}, "reserved"),
        ("prod", {}, "same name as a host"),
        ("new", {"port": "22"}, "hosts.new.port: expected integer"),
        ("new", {"adress": "x"}, "did you mean"),
        ("new", {"password": "x"}, "never hold secrets"),
        ("new", {"jump": "nowhere"}, "unknown jump host"),
        ("new", {"address": object()}, "cannot write"),
    ],
)
def test_invalid_additions_leave_files_untouched(
    fleet: Path, tmp_path: Path, name: str, fields: dict[str, object], message: str
) -> None:
    before = snapshot(tmp_path)
    with pytest.raises(InventoryError, match=message):
        add_host(fleet, name, fields)
    assert snapshot(tmp_path) == before


def test_add_refuses_when_the_inventory_is_already_broken(fleet: Path, tmp_path: Path) -> None:
    (tmp_path / "broken.toml").write_text("[hosts.x]\nport = 'no'\n")
    before = snapshot(tmp_path)
    with pytest.raises(InventoryError, match=r"broken\.toml:2"):
        add_host(fleet, "new", {})
    assert snapshot(tmp_path) == before


def test_add_checks_the_given_inventory_scope(tmp_path: Path) -> None:
    inventory = tmp_path / "inv"
    inventory.mkdir()
    (inventory / "a.toml").write_text("[hosts.web]\n")
    with pytest.raises(InventoryError, match="already exists"):
        add_host(tmp_path / "elsewhere.toml", "web", {}, inventory=inventory)


def test_add_declares_local(tmp_path: Path) -> None:
    path = tmp_path / "local.toml"
    add_host(path, "local", {"transport": "local", "capacity": 2})
    assert load_inventory(path).hosts["local"].capacity == 2


def test_add_keeps_file_mode_and_crlf(tmp_path: Path) -> None:
    path = tmp_path / "a.toml"
    path.write_bytes(b"# crlf\r\n[hosts.a]\r\n")
    os.chmod(path, 0o600)
    add_host(path, "b", {})
    assert path.read_bytes() == b"# crlf\r\n[hosts.a]\r\n\r\n[hosts.b]\r\n"
    assert path.stat().st_mode & 0o777 == 0o600


# ---- remove --------------------------------------------------------------------------------


def test_remove_takes_the_table_its_comment_and_its_group_entries(fleet: Path) -> None:
    assert remove_host(fleet, "web") == fleet
    assert fleet.read_text() == dedent(
        """\
        # Fleet for the build farm.
        [defaults]
        user = "ops"  # shared login

        # The database.
        [hosts.db]
        address = "10.0.0.2"

        [hosts.db.limits]
        memory = "8g"

        # Who is who.
        [groups]
        prod = [
          "db",
        ]
        """
    )


def test_remove_takes_sub_tables_and_keeps_the_next_tables_comment(fleet: Path) -> None:
    remove_host(fleet, "db")
    text = fleet.read_text()
    assert "[hosts.db" not in text and "The database" not in text and "8g" not in text
    assert '# Who is who.\n[groups]\nprod = [\n  "web", # front\n]\n' in text
    assert "# The web server.\n[hosts.web]\n" in text


def test_remove_from_a_directory_finds_the_file_and_edits_groups_everywhere(
    fleet: Path, tmp_path: Path
) -> None:
    groups = tmp_path / "groups.toml"
    groups.write_text('[groups]\nfront = ["web"]  # keep me\nall-db = ["db"]\n')
    assert remove_host(tmp_path, "web") == fleet
    assert groups.read_text() == '[groups]\nfront = []  # keep me\nall-db = ["db"]\n'
    inv = load_inventory(tmp_path)
    assert "web" not in inv.hosts and inv.groups["front"] == ()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_remove_inline_and_dotted_hosts(tmp_path: Path) -> None:
    path = tmp_path / "a.toml"
    path.write_text('[hosts]\n# inline\na = { port = 22 }\nb.port = 23\nb.user = "x"\nc = {}\n')
    remove_host(path, "a")
    remove_host(path, "b")
    assert list(load_inventory(path).hosts) == ["local", "c"]
    assert "[hosts]" in path.read_text()


def test_remove_unknown_host(fleet: Path) -> None:
    with pytest.raises(InventoryError, match="no host `nope`") as caught:
        remove_host(fleet, "nope")
    assert "web, db" in (caught.value.hint or "")


def test_remove_builtin_local_is_not_found(fleet: Path) -> None:
    with pytest.raises(InventoryError, match="no host `local`"):
        remove_host(fleet, "local")


def test_remove_from_the_wrong_file(fleet: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.toml"
    other.write_text("[hosts.other]\n")
    before = snapshot(tmp_path)
    with pytest.raises(InventoryError, match=re.escape(f"declared at {fleet}:6, not in this file")):
        remove_host(other, "web")
    assert snapshot(tmp_path) == before


def test_remove_refuses_a_jump_host_in_use(tmp_path: Path) -> None:
    path = tmp_path / "a.toml"
    path.write_text('[hosts.bastion]\n[hosts.web]\njump = "bastion"\n')
    before = snapshot(tmp_path)
    with pytest.raises(InventoryError, match="jump host of web") as caught:
        remove_host(path, "bastion")
    assert caught.value.hint == "change or remove their jump first"
    assert snapshot(tmp_path) == before


def test_remove_then_add_round_trips(fleet: Path) -> None:
    remove_host(fleet, "web")
    add_host(fleet, "web", {"address": "10.0.0.1"})
    assert load_inventory(fleet).hosts["web"].address == "10.0.0.1"


def test_egress_rules_go_into_their_tables_keeping_comments_with_their_tables(
    tmp_path: Path,
) -> None:
    from jackin_remote.inventory import load_inventory
    from jackin_remote.inventory.editor import add_egress_rule

    file = tmp_path / "hosts.toml"
    file.write_text(
        "# ops inventory\n[defaults]\ncapacity = 2   # two at a time\n\n"
        '[hosts.web]\naddress = "10.0.0.5"  # the web box\n\n'
        '# the db box\n[hosts.db]\naddress = "10.0.0.6"\n'
    )
    assert add_egress_rule(file, "allow", "**.corp.example.com", "web") == (file, True)
    assert add_egress_rule(file, "deny", "metadata.google.internal", None) == (file, True)
    assert add_egress_rule(file, "deny", "x.corp.example.com", "web") == (file, True)
    assert add_egress_rule(file, "allow", "y.corp.example.com", "web") == (file, True)
    assert add_egress_rule(file, "allow", "y.corp.example.com", "web") == (file, False)
    assert file.read_text() == (
        "# ops inventory\n[defaults]\ncapacity = 2   # two at a time\n\n"
        '[defaults.egress]\ndeny = ["metadata.google.internal"]\n\n'
        '[hosts.web]\naddress = "10.0.0.5"  # the web box\n\n'
        '[hosts.web.egress]\nallow = ["**.corp.example.com", "y.corp.example.com"]\n'
        'deny = ["x.corp.example.com"]\n\n'
        '# the db box\n[hosts.db]\naddress = "10.0.0.6"\n'
    )
    web = load_inventory(str(file)).host("web")
    assert web is not None and [r[:2] for r in web.egress] == [
        ("deny", "metadata.google.internal"),  # [defaults] first, then the host's own
        ("allow", "**.corp.example.com"),
        ("allow", "y.corp.example.com"),
        ("deny", "x.corp.example.com"),
    ]
    before = file.read_text()
    with pytest.raises(InventoryError, match=r"hosts\.db\.egress\.allow: \[0\]"):
        add_egress_rule(file, "allow", "not a host", "db")
    assert file.read_text() == before


def test_remove_edits_a_table_form_groups_members_too(tmp_path: Path) -> None:
    inv = tmp_path / "hosts.toml"
    inv.write_text(
        '[hosts.web]\naddress = "10.0.0.1"\n\n[hosts.db]\naddress = "10.0.0.2"\n\n'
        '[groups.prod]  # table form\nmembers = ["web", "db"]\n\n'
        '[groups.prod.egress]\nallow = ["pypi.org"]\n'
    )
    remove_host(inv, "web")
    text = inv.read_text()
    assert "[hosts.web]" not in text and 'members = ["db"]' in text
    assert "# table form" in text and 'allow = ["pypi.org"]' in text
    assert load_inventory(inv).groups["prod"] == ("db",)
