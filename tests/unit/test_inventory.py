"""Inventory loader: sources, parsing, validation (each error located as file:line: field)."""

from __future__ import annotations

import base64
import struct
from pathlib import Path
from textwrap import dedent

import pytest

from jackin_remote.errors import InventoryError
from jackin_remote.inventory import BUILTIN_LOCAL, Inventory, Limits, load_inventory
from jackin_remote.inventory.loader import SECRETS_HINT, parse_inventory

REPO = Path(__file__).resolve().parents[2]


# ---- helpers -------------------------------------------------------------------------------


def write(directory: Path, text: str, name: str = "fleet.toml") -> Path:
    path = directory / name
    path.write_text(dedent(text))
    return path


def line_of(path: Path, fragment: str) -> int:
    """1-based line of the first line containing `fragment`."""
    for number, line in enumerate(path.read_text().split("\n"), start=1):
        if fragment in line:
            return number
    raise AssertionError(f"{fragment!r} not in {path}")


def load_error(path: Path) -> InventoryError:
    with pytest.raises(InventoryError) as caught:
        load_inventory(path)
    return caught.value


def assert_error(
    err: InventoryError, path: Path, line: int | None, field: str | None, *fragments: str
) -> None:
    text = str(err)
    where = f"{path}:{line}" if line is not None else str(path)
    assert text.startswith(f"{where}: " + (f"{field}: " if field else "")), text
    assert err.file == str(path) and err.line == line and err.field == field
    for fragment in fragments:
        assert fragment in text, (fragment, text)
    assert err.hint, f"no hint: {text}"


def error_at(tmp_path: Path, text: str, fragment: str, field: str, *more: str) -> None:
    """Load `text`; expect an error on the line containing `fragment`, for `field`."""
    path = write(tmp_path, text)
    assert_error(load_error(path), path, line_of(path, fragment), field, *more)


def ssh_blob(*fields: bytes) -> str:
    return base64.b64encode(b"".join(struct.pack(">I", len(f)) + f for f in fields)).decode()


ED25519 = "ssh-ed25519 " + ssh_blob(b"ssh-ed25519", bytes(range(32)))


# ---- sources -------------------------------------------------------------------------------


def test_no_inventory_anywhere_is_just_local(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    inv = load_inventory(env={})
    assert inv == Inventory(hosts={"local": BUILTIN_LOCAL}, groups={}, files=())


def test_default_dir_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "inventory").mkdir()
    write(tmp_path / "inventory", "[hosts.web]\n")
    monkeypatch.chdir(tmp_path)
    assert list(load_inventory(env={}).hosts) == ["local", "web"]


def test_env_var_beats_default_dir_and_explicit_path_beats_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "inventory").mkdir()
    write(tmp_path / "inventory", "[hosts.from-default]\n")
    from_env = write(tmp_path, "[hosts.from-env]\n", "env.toml")
    explicit = write(tmp_path, "[hosts.from-arg]\n", "arg.toml")
    monkeypatch.chdir(tmp_path)
    env = {"JACKIN_INVENTORY": str(from_env)}
    assert "from-env" in load_inventory(env=env).hosts
    assert "from-arg" in load_inventory(explicit, env=env).hosts
    assert "from-arg" in load_inventory(str(explicit), env=env).hosts


def test_missing_explicit_path_is_an_error_with_hint(tmp_path: Path) -> None:
    err = load_error(tmp_path / "nope.toml")
    assert "inventory not found" in str(err) and err.hint


def test_missing_env_path_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(InventoryError, match=r"JACKIN_INVENTORY"):
        load_inventory(env={"JACKIN_INVENTORY": str(tmp_path / "missing")})


def test_empty_directory_is_just_local(tmp_path: Path) -> None:
    assert list(load_inventory(tmp_path).hosts) == ["local"]


def test_directory_reads_toml_files_sorted_non_recursive(tmp_path: Path) -> None:
    write(tmp_path, "[hosts.bbb]\n", "b.toml")
    write(tmp_path, "[hosts.aaa]\n", "a.toml")
    write(tmp_path, "[hosts.hidden]\n", ".swap.toml")
    write(tmp_path, "[hosts.notes]\n", "notes.txt")
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub", "[hosts.nested]\n")
    inv = load_inventory(tmp_path)
    assert list(inv.hosts) == ["local", "aaa", "bbb"]
    assert inv.files == (str(tmp_path / "a.toml"), str(tmp_path / "b.toml"))


def test_examples_dir_holds_no_toml_at_top_so_default_is_just_local() -> None:
    assert not list((REPO / "inventory").glob("*.toml"))


@pytest.mark.parametrize("name", ["local.toml", "fleet.toml"])
def test_example_files_load_cleanly(name: str) -> None:
    inv = load_inventory(REPO / "inventory" / "examples" / name)
    assert "local" in inv.hosts


def test_example_fleet_content() -> None:
    inv = load_inventory(REPO / "inventory" / "examples" / "fleet.toml")
    assert inv.hosts["ci-1"].jump == "bastion"
    assert inv.hosts["bastion"].host_key is not None
    assert inv.groups["builders"] == ("ci-1", "ci-2")


# ---- hosts ---------------------------------------------------------------------------------


def test_full_host_is_parsed(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""\
        # fleet
        [hosts.web]
        address = "10.0.0.1"
        port = 2222
        user = "ops"
        identity_file = "~/.ssh/id_ed25519"
        jump = "admin@bastion.example.com:22"
        host_key = "{ED25519} root@web"
        labels = ["gpu", "big", "gpu"]
        capacity = 8
        root = "/srv/jackin/"
        backend = "docker"
        limits = {{ memory = "16g", cpus = 4, pids = 1024 }}
        """,
    )
    host = load_inventory(path).hosts["web"]
    assert host.transport == "ssh"
    assert (host.address, host.port, host.user) == ("10.0.0.1", 2222, "ops")
    assert host.identity_file == "~/.ssh/id_ed25519"  # `~` is expanded at use, not here
    assert host.jump == "admin@bastion.example.com:22"
    assert host.host_key == ED25519  # normalized: comment dropped
    assert host.labels == ("gpu", "big")
    assert (host.capacity, host.root, host.backend) == (8, "/srv/jackin", "docker")
    assert host.limits == Limits(memory="16g", cpus=4.0, pids=1024)
    assert (host.source_file, host.source_line) == (str(path), 2)


def test_host_with_no_keys_uses_model_defaults(tmp_path: Path) -> None:
    host = load_inventory(write(tmp_path, "[hosts.web]\n")).hosts["web"]
    assert host.ssh_address == "web" and host.limits == Limits() and host.capacity == 4


def test_inline_hosts_table_is_located(tmp_path: Path) -> None:
    path = write(tmp_path, '[hosts]\nweb = { address = "a" }\ndb = { port = "x" }\n')
    assert_error(load_error(path), path, 3, "hosts.db.port", "expected integer, got string")


# ---- local ---------------------------------------------------------------------------------


def test_declared_local_replaces_builtin(tmp_path: Path) -> None:
    path = write(tmp_path, '[hosts.local]\ncapacity = 2\nlimits.memory = "6g"\n')
    local = load_inventory(path).hosts["local"]
    assert local.is_local and local.capacity == 2 and local.limits.memory == "6g"
    assert local.where == f"{path}:1"


def test_local_with_ssh_transport_is_an_error(tmp_path: Path) -> None:
    error_at(tmp_path, '[hosts.local]\ntransport = "ssh"\n', "transport", "hosts.local.transport")


def test_only_local_may_use_local_transport(tmp_path: Path) -> None:
    error_at(
        tmp_path, '[hosts.box]\ntransport = "local"\n', "transport", "hosts.box.transport", "only"
    )


def test_local_refuses_ssh_keys(tmp_path: Path) -> None:
    error_at(tmp_path, '[hosts.local]\nuser = "me"\n', "user", "hosts.local.user", "ssh hosts only")


def test_ssh_defaults_do_not_apply_to_local(tmp_path: Path) -> None:
    path = write(tmp_path, '[defaults]\nuser = "ops"\ncapacity = 3\n[hosts.local]\n[hosts.web]\n')
    inv = load_inventory(path)
    assert inv.hosts["local"].user is None and inv.hosts["local"].capacity == 3
    assert inv.hosts["web"].user == "ops"


# ---- defaults ------------------------------------------------------------------------------


def test_defaults_fill_unset_keys_and_limits_merge_per_key(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        [defaults]
        user = "ops"
        capacity = 2
        limits = { memory = "8g", pids = 100 }
        [hosts.a]
        capacity = 5
        limits = { cpus = 1.5 }
        """,
    )
    host = load_inventory(path).hosts["a"]
    assert (host.user, host.capacity) == ("ops", 5)
    assert host.limits == Limits(memory="8g", cpus=1.5, pids=100)


def test_defaults_apply_to_their_own_file_only(tmp_path: Path) -> None:
    write(tmp_path, '[defaults]\nuser = "alice"\n[hosts.a]\n', "a.toml")
    write(tmp_path, "[hosts.b]\n", "b.toml")
    inv = load_inventory(tmp_path)
    assert inv.hosts["a"].user == "alice" and inv.hosts["b"].user is None


@pytest.mark.parametrize("key", ["address", "host_key"])
def test_per_host_keys_cannot_be_defaults(tmp_path: Path, key: str) -> None:
    error_at(tmp_path, f'[defaults]\n{key} = "x"\n', key, f"defaults.{key}", "cannot be a default")


def test_default_jump_is_not_applied_to_the_jump_host(tmp_path: Path) -> None:
    path = write(tmp_path, '[defaults]\njump = "bastion"\n[hosts.bastion]\n[hosts.web]\n')
    inv = load_inventory(path)
    assert inv.hosts["bastion"].jump is None and inv.hosts["web"].jump == "bastion"


def test_default_transport_local_points_at_defaults(tmp_path: Path) -> None:
    error_at(
        tmp_path,
        '[defaults]\ntransport = "local"\n[hosts.web]\n',
        "transport",
        "defaults.transport",
    )


# ---- syntax and structure ------------------------------------------------------------------


def test_toml_syntax_error_has_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, '[hosts.web]\naddress = "a"\nport = = 3\n')
    err = load_error(path)
    assert_error(err, path, 3, None, "invalid TOML")


def test_duplicate_key_in_one_file_is_a_syntax_error(tmp_path: Path) -> None:
    path = write(tmp_path, "[hosts.web]\nport = 1\nport = 2\n")
    assert_error(load_error(path), path, 3, None, "invalid TOML")


def test_non_utf8_file_is_located(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_bytes(b"[hosts.web]\naddress = '\xff'\n")
    assert_error(load_error(path), path, 2, None, "UTF-8")


def test_unknown_top_level_key_suggests_closest(tmp_path: Path) -> None:
    error_at(tmp_path, "[host.web]\n", "[host.web]", "host", "unknown top-level key", "`hosts`")


def test_unknown_host_key_suggests_closest(tmp_path: Path) -> None:
    path = write(tmp_path, '[hosts.web]\nadress = "1.2.3.4"\n')
    err = load_error(path)
    assert_error(err, path, 2, "hosts.web.adress", "unknown host key")
    assert err.hint == "did you mean `address`?"


def test_unknown_key_without_close_match_lists_known_keys(tmp_path: Path) -> None:
    path = write(tmp_path, '[hosts.web]\nzzz = "x"\n')
    assert "known keys: address, port" in (load_error(path).hint or "")


def test_unknown_limit_key(tmp_path: Path) -> None:
    error_at(tmp_path, "[hosts.web.limits]\nmemroy = 1\n", "memroy", "hosts.web.limits.memroy")


@pytest.mark.parametrize(
    ("text", "fragment", "field", "message"),
    [
        ('[hosts.web]\nport = "22"\n', "port", "hosts.web.port", "expected integer, got string"),
        ("[hosts.web]\nport = true\n", "port", "hosts.web.port", "expected integer, got boolean"),
        ("[hosts.web]\ncapacity = 2.5\n", "capacity", "hosts.web.capacity", "got float"),
        ('[hosts.web]\nlabels = "gpu"\n', "labels", "hosts.web.labels", "got string"),
        ("[hosts.web]\nlabels = [1]\n", "labels", "hosts.web.labels", "item of type integer"),
        ("[hosts.web]\naddress = 1979-05-27\n", "address", "hosts.web.address", "got date"),
        ('[hosts.web]\ncpus = "2"\n', "cpus", "hosts.web.cpus", "unknown host key"),
        ('[hosts.web.limits]\ncpus = "2"\n', "cpus", "hosts.web.limits.cpus", "expected number"),
        ('[hosts.web]\nlimits = "big"\n', "limits", "hosts.web.limits", "expected a table"),
        ('hosts = "web"\n', "hosts", "hosts", "expected a table, got string"),
        ('[hosts]\nweb = "1.2.3.4"\n', "web", "hosts.web", "expected a table, got string"),
        ('defaults = ["x"]\n', "defaults", "defaults", "expected a table, got array"),
        ('[groups]\nprod = "web"\n', "prod", "groups.prod", "expected array of strings"),
        ("[groups]\nprod = [1]\n", "prod", "groups.prod", "item of type integer"),
    ],
)
def test_wrong_types(tmp_path: Path, text: str, fragment: str, field: str, message: str) -> None:
    error_at(tmp_path, text, fragment, field, message)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("port", "0", "between 1 and 65535"),
        ("port", "65536", "between 1 and 65535"),
        ("port", "99999999999999999999999999", "between 1 and 65535"),
        ("capacity", "0", "between 1 and 1024"),
        ("transport", '"mosh"', "unknown transport"),
        ("backend", '"podman"', "unknown backend"),
    ],
)
def test_host_value_ranges(tmp_path: Path, key: str, value: str, message: str) -> None:
    error_at(tmp_path, f"[hosts.web]\n{key} = {value}\n", f"{key} =", f"hosts.web.{key}", message)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("memory", '"4GB"', "invalid memory"),
        ("memory", '"0"', "invalid memory"),
        ("memory", '"-1g"', "invalid memory"),
        ("memory", "4", "expected string"),
        ("cpus", "0", "at least 0.01"),
        ("cpus", "0.001", "at least 0.01"),
        ("memory", '"1k"', "at least 6m"),
        ("cpus", "-1.5", "at least 0.01"),
        ("cpus", "inf", "at least 0.01"),
        ("cpus", "nan", "at least 0.01"),
        ("cpus", "100000000000000000000000", "at least 0.01"),
        ("pids", "15", "between 16"),
    ],
)
def test_limit_values(tmp_path: Path, key: str, value: str, message: str) -> None:
    error_at(
        tmp_path, f"[hosts.web.limits]\n{key} = {value}\n", f"{key} =", f"hosts.web.limits.{key}",
        message,
    )  # fmt: skip


@pytest.mark.parametrize("memory", ["7000000", "6144k", "512m", "4g"])
def test_memory_units(tmp_path: Path, memory: str) -> None:
    path = write(tmp_path, f'[hosts.web.limits]\nmemory = "{memory}"\n')
    assert load_inventory(path).hosts["web"].limits.memory == memory


# ---- strings that reach ssh argv or host paths ---------------------------------------------


@pytest.mark.parametrize(
    "root", ["jackin", "./jackin", "/srv/../etc", "~/a/./b", "/srv/ja ckin", "/srv/x;rm", "~x/y",
             "/", "~/", "/srv/$HOME", "/srv/a~b"],
)  # fmt: skip
def test_bad_roots(tmp_path: Path, root: str) -> None:
    error_at(tmp_path, f"[hosts.web]\nroot = '{root}'\n", "root", "hosts.web.root", "invalid root")


@pytest.mark.parametrize("root", ["~/.jackin", "/srv/jackin", "/data/jk-1/x_y.z"])
def test_good_roots(tmp_path: Path, root: str) -> None:
    assert (
        load_inventory(write(tmp_path, f"[hosts.web]\nroot = '{root}'\n")).hosts["web"].root == root
    )


@pytest.mark.parametrize(
    "address", ["-oProxyCommand=sh", "a b", "a;b", "host$(x)", "", "user@host", "[::1]"]
)
def test_bad_addresses(tmp_path: Path, address: str) -> None:
    error_at(tmp_path, f"[hosts.web]\naddress = '{address}'\n", "address", "hosts.web.address")


@pytest.mark.parametrize("address", ["10.0.0.1", "::1", "fe80::1", "web.example.com", "my_alias"])
def test_good_addresses(tmp_path: Path, address: str) -> None:
    path = write(tmp_path, f"[hosts.web]\naddress = '{address}'\n")
    assert load_inventory(path).hosts["web"].address == address


@pytest.mark.parametrize("user", ["-oX", "root;id", "a b", "", "1abc"])
def test_bad_users(tmp_path: Path, user: str) -> None:
    error_at(tmp_path, f"[hosts.web]\nuser = '{user}'\n", "user", "hosts.web.user", "invalid user")


@pytest.mark.parametrize("identity", ["-i", "~/my key", "~/.ssh/id;rm", "/a/~b"])
def test_bad_identity_files(tmp_path: Path, identity: str) -> None:
    error_at(
        tmp_path,
        f"[hosts.web]\nidentity_file = '{identity}'\n",
        "identity",
        "hosts.web.identity_file",
    )


@pytest.mark.parametrize("jump", ["a b", "-J", "user@", "@host", "host:0", "host:70000", "a@b@c"])
def test_bad_jump_syntax(tmp_path: Path, jump: str) -> None:
    error_at(tmp_path, f"[hosts.web]\njump = '{jump}'\n", "jump", "hosts.web.jump")


def test_jump_to_unknown_inventory_host(tmp_path: Path) -> None:
    error_at(
        tmp_path, '[hosts.web]\njump = "bastoin"\n[hosts.bastion]\n', "jump", "hosts.web.jump",
        "unknown jump host", "did you mean `bastion`?",
    )  # fmt: skip


def test_jump_to_itself(tmp_path: Path) -> None:
    error_at(tmp_path, '[hosts.web]\njump = "web"\n', "jump", "hosts.web.jump", "itself")


def test_jump_to_local(tmp_path: Path) -> None:
    error_at(tmp_path, '[hosts.web]\njump = "local"\n', "jump", "hosts.web.jump", "local host")


def test_jump_loop_reports_the_cycle(tmp_path: Path) -> None:
    text = '[hosts.a]\njump = "b"\n[hosts.b]\njump = "c"\n[hosts.c]\njump = "a"\n'
    error_at(tmp_path, text, 'jump = "b"', "hosts.a.jump", "a -> b -> c -> a")


def test_jump_across_files(tmp_path: Path) -> None:
    write(tmp_path, '[hosts.web]\njump = "bastion"\n', "a.toml")
    write(tmp_path, '[hosts.bastion]\naddress = "b.example.com"\n', "b.toml")
    assert load_inventory(tmp_path).hosts["web"].jump == "bastion"


# ---- host keys -----------------------------------------------------------------------------


def ecdsa_key(curve: str, size: int) -> str:
    key_type = f"ecdsa-sha2-{curve}"
    point = b"\x04" + bytes(size - 1)
    return f"{key_type} {ssh_blob(key_type.encode(), curve.encode(), point)}"


GOOD_KEYS = [
    ED25519,
    ecdsa_key("nistp256", 65),
    ecdsa_key("nistp384", 97),
    ecdsa_key("nistp521", 133),
    "ssh-rsa " + ssh_blob(b"ssh-rsa", b"\x01\x00\x01", b"\x00\xc1" + bytes(255)),
    "sk-ssh-ed25519@openssh.com " + ssh_blob(b"sk-ssh-ed25519@openssh.com", bytes(32), b"ssh:"),
    "sk-ecdsa-sha2-nistp256@openssh.com "
    + ssh_blob(b"sk-ecdsa-sha2-nistp256@openssh.com", b"nistp256", b"\x04" + bytes(64), b"ssh:"),
]


@pytest.mark.parametrize("key", GOOD_KEYS)
def test_good_host_keys_are_normalized(tmp_path: Path, key: str) -> None:
    path = write(tmp_path, f'[hosts.web]\nhost_key = "  {key}   a comment with spaces "\n')
    assert load_inventory(path).hosts["web"].host_key == key


ED_BODY = ED25519.split()[1]
ECDSA_256 = ecdsa_key("nistp256", 65)
assert ECDSA_256.endswith("A=")
TRUNCATED_BLOB = base64.b64encode(
    struct.pack(">I", 11) + b"ssh-ed25519" + struct.pack(">I", 32) + bytes(10)
).decode()
BAD_KEYS = [
    ("ssh-dss " + ssh_blob(b"ssh-dss", b"x"), "unsupported key type"),
    ("ssh-ed25519", "TYPE BASE64"),
    ("ssh-ed25519 not*base64", "not valid base64"),
    ("ssh-ed25519 " + ED_BODY[:-4], "truncated"),
    (ECDSA_256[:-2] + "B=", "canonical"),  # stray bits in the padding
    ("ssh-rsa " + ED_BODY, "does not start with its type"),
    ("ssh-ed25519 " + ssh_blob(b"ssh-ed25519", bytes(31)), "32 bytes"),
    ("ssh-ed25519 " + ssh_blob(b"ssh-ed25519", bytes(32), b"extra"), "number of fields"),
    ("ssh-ed25519 " + TRUNCATED_BLOB, "truncated"),  # says 32 bytes follow, has 10
    ("web.example.com " + ED25519, "known_hosts"),
    (ecdsa_key("nistp256", 97).replace("nistp256 ", "nistp384 ", 1), "does not start"),
    ("ssh-rsa " + ssh_blob(b"ssh-rsa", b"\x01\x00\x01", b"\x80" + bytes(5)), "modulus"),
]


@pytest.mark.parametrize(("key", "message"), BAD_KEYS)
def test_bad_host_keys(tmp_path: Path, key: str, message: str) -> None:
    error_at(
        tmp_path, f'[hosts.web]\nhost_key = "{key}"\n', "host_key", "hosts.web.host_key",
        "invalid host_key", message,
    )  # fmt: skip


def test_host_key_with_newline_is_refused(tmp_path: Path) -> None:
    error_at(
        tmp_path, f'[hosts.web]\nhost_key = "{ED25519}\\nssh-rsa AAAA"\n', "host_key",
        "hosts.web.host_key", "one line",
    )  # fmt: skip


# ---- names ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["Web", "web_1", "1web", "web-", '"a.b"', '"web host"'])
def test_bad_host_names(tmp_path: Path, name: str) -> None:
    path = write(tmp_path, f"[hosts.{name}]\n")
    err = load_error(path)
    assert err.line == 1 and "invalid host name" in str(err) and "lowercase" in (err.hint or "")


@pytest.mark.parametrize("name", ["all", "label", "labels", "label-x"])
def test_reserved_host_and_group_names(tmp_path: Path, name: str) -> None:
    error_at(tmp_path, f"[hosts.{name}]\n", name, f"hosts.{name}", "reserved")
    error_at(tmp_path, f"[groups]\n{name} = []\n", name, f"groups.{name}", "reserved")


def test_bad_group_name(tmp_path: Path) -> None:
    error_at(tmp_path, '[groups]\nProd = ["web"]\n', "Prod", "groups.Prod", "invalid group name")


def test_bad_label(tmp_path: Path) -> None:
    error_at(tmp_path, '[hosts.web]\nlabels = ["GPU"]\n', "labels", "hosts.web.labels", "label")


def test_bad_member_name(tmp_path: Path) -> None:
    error_at(tmp_path, '[groups]\nprod = ["Web"]\n', "prod", "groups.prod", "invalid member")


# ---- groups --------------------------------------------------------------------------------


def test_groups_are_kept_unexpanded_and_deduped(tmp_path: Path) -> None:
    path = write(tmp_path, '[hosts.a]\n[hosts.b]\n[groups]\nx = ["a", "a", "y"]\ny = ["b"]\n')
    assert load_inventory(path).groups == {"x": ("a", "y"), "y": ("b",)}


def test_unknown_group_member_suggests(tmp_path: Path) -> None:
    path = write(tmp_path, '[hosts.web]\n\n[groups]\nprod = ["wbe"]\n')
    err = load_error(path)
    assert_error(err, path, 4, "groups.prod", "unknown member `wbe`")
    assert err.hint == "did you mean `web`?"


def test_group_named_like_a_host(tmp_path: Path) -> None:
    error_at(tmp_path, '[hosts.web]\n[groups]\nweb = ["web"]\n', "web = ", "groups.web", "host")


def test_group_named_local_collides_with_builtin(tmp_path: Path) -> None:
    error_at(tmp_path, "[groups]\nlocal = []\n", "local", "groups.local", "<builtin>")


def test_group_loop_reports_cycle_path(tmp_path: Path) -> None:
    text = '[hosts.h]\n[groups]\na = ["b"]\nb = ["h", "a"]\n'
    error_at(tmp_path, text, "a = ", "groups.a", "a -> b -> a")


def test_group_including_itself(tmp_path: Path) -> None:
    error_at(tmp_path, '[groups]\na = ["a"]\n', "a = ", "groups.a", "a -> a")


def test_groups_may_reference_hosts_in_other_files(tmp_path: Path) -> None:
    write(tmp_path, '[groups]\nprod = ["web"]\n', "a.toml")
    write(tmp_path, "[hosts.web]\n", "b.toml")
    assert load_inventory(tmp_path).groups == {"prod": ("web",)}


# ---- secrets -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "fragment", "field"),
    [
        ('[hosts.web]\npassword = "hunter2"\n', "password", "hosts.web.password"),
        ('[defaults]\ngithub_token = "x"\n', "github_token", "defaults.github_token"),
        ('[hosts.web.auth]\napi-key = "x"\n', "api-key", "hosts.web.auth.api-key"),
        ('secret = "x"\n', "secret", "secret"),
        ('[hosts.web]\napiKey = "x"\n', "apiKey", "hosts.web.apiKey"),
        ('[hosts.web]\nssh_passphrase = "x"\n', "passphrase", "hosts.web.ssh_passphrase"),
        ('[hosts.web]\nprivate_key = "x"\n', "private_key", "hosts.web.private_key"),
        ('[hosts.web]\ncredentials = ["x"]\n', "credentials", "hosts.web.credentials"),
        ('[hosts]\ntoken = "abc"\n', "token", "hosts.token"),
        ('[[x]]\ny = [{ password = "p" }]\n', "y =", "x.y.password"),
    ],
)
def test_secret_keys_are_refused(tmp_path: Path, text: str, fragment: str, field: str) -> None:
    path = write(tmp_path, text)
    err = load_error(path)
    assert_error(err, path, line_of(path, fragment), field, "inventory files never hold secrets")
    assert err.hint == SECRETS_HINT


def test_private_key_material_is_refused(tmp_path: Path) -> None:
    text = '[hosts.web]\nhost_key = "-----BEGIN OPENSSH PRIVATE KEY----- b3Blbn"\n'
    error_at(tmp_path, text, "host_key", "hosts.web.host_key", "never hold secrets")


def test_host_named_like_a_secret_word_is_a_name_not_a_field(tmp_path: Path) -> None:
    path = write(tmp_path, '[hosts.token-box]\n[groups]\nsecrets = ["token-box"]\n')
    assert "token-box" in load_inventory(path).hosts


# ---- several files -------------------------------------------------------------------------


def test_files_merge(tmp_path: Path) -> None:
    write(tmp_path, '[hosts.a]\n[groups]\nall-a = ["a"]\n', "1.toml")
    write(tmp_path, '[hosts.b]\n[groups]\nboth = ["all-a", "b"]\n', "2.toml")
    inv = load_inventory(tmp_path)
    assert list(inv.hosts) == ["local", "a", "b"]
    assert inv.hosts["b"].where == f"{tmp_path / '2.toml'}:1"
    assert inv.groups == {"all-a": ("a",), "both": ("all-a", "b")}


def test_duplicate_host_across_files_names_both(tmp_path: Path) -> None:
    first = write(tmp_path, "[hosts.a]\n\n[hosts.web]\n", "1.toml")
    second = write(tmp_path, "# x\n[hosts.web]\n", "2.toml")
    err = load_error(tmp_path)
    assert_error(err, second, 2, "hosts.web", f"{first}:3", f"{second}:2", "declared twice")


def test_duplicate_group_across_files_names_both(tmp_path: Path) -> None:
    first = write(tmp_path, "[groups]\nprod = []\n", "1.toml")
    second = write(tmp_path, "[groups]\n\nprod = []\n", "2.toml")
    err = load_error(tmp_path)
    assert_error(err, second, 3, "groups.prod", f"{first}:2", f"{second}:3")


def test_local_declared_in_two_files(tmp_path: Path) -> None:
    write(tmp_path, "[hosts.local]\n", "1.toml")
    write(tmp_path, "[hosts.local]\n", "2.toml")
    assert "declared twice" in str(load_error(tmp_path))


def test_parse_inventory_accepts_text_and_bytes() -> None:
    inv = parse_inventory([("a.toml", "[hosts.a]\n"), ("b.toml", b"[hosts.b]\n")])
    assert inv.files == ("a.toml", "b.toml") and set(inv.hosts) == {"local", "a", "b"}


# ---- hostile shapes ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "a = " + "[" * 5000 + "]" * 5000,
        "a = " + "{b = " * 3000 + "1" + "}" * 3000,
        "[" + "a." * 3000 + "a]",
        "x = 1" + "0" * 10000,
        "[hosts.web]\nport = 1" + "0" * 5000 + "\n",
        "\x00",
        "[hosts.web]\n" + "\n" * 10000 + "oops",
    ],
)
def test_hostile_content_is_only_ever_an_inventory_error(text: str) -> None:
    with pytest.raises(InventoryError):
        parse_inventory([("x.toml", text)])


# ---- group tables and their egress rules ---------------------------------------------------


def test_group_table_form_is_read_like_the_list_form(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        [hosts.a]
        [hosts.b]
        [groups]
        listed = ["a"]

        [groups.tabled]
        members = ["b", "listed"]
        """)  # fmt: skip
    assert load_inventory(path).groups == {"listed": ("a",), "tabled": ("b", "listed")}


def test_group_egress_applies_to_members_between_defaults_and_host(tmp_path: Path) -> None:
    write(tmp_path, """\
        [defaults.egress]
        deny = ["metadata.internal"]

        [hosts.a.egress]
        allow = ["own.example.com"]

        [hosts.b]
        """, "1.toml")  # fmt: skip
    second = write(tmp_path, """\
        [hosts.c]

        [groups]
        plain = ["c"]

        [groups.inner]
        members = ["a"]
        [groups.inner.egress]
        allow = ["inner.example.com"]

        [groups.outer]
        members = ["inner", "b"]
        egress = { deny = ["outer.example.com"] }
        """, "2.toml")  # fmt: skip
    inv = load_inventory(tmp_path)
    first = tmp_path / "1.toml"
    inner = f"{second}:{line_of(second, 'inner.example.com')}"
    outer = f"{second}:{line_of(second, 'outer.example.com')}"
    assert inv.hosts["a"].egress == (
        ("deny", "metadata.internal", f"{first}:2"),  # defaults
        ("allow", "inner.example.com", inner),  # groups, in the order they are declared
        ("deny", "outer.example.com", outer),  # (a is in outer through inner)
        ("allow", "own.example.com", f"{first}:5"),  # the host's own
    )
    assert inv.hosts["b"].egress == (("deny", "metadata.internal", f"{first}:2"),
                                     ("deny", "outer.example.com", outer))  # fmt: skip
    assert inv.hosts["c"].egress == ()  # a group without rules, a file without defaults
    assert inv.hosts["local"].egress == ()


def test_group_table_errors_are_located(tmp_path: Path) -> None:
    error_at(tmp_path, "[hosts.a]\n[groups.g]\nmembres = [\"a\"]\n", "membres", "groups.g.membres",
             "unknown group key", "did you mean `members`?")  # fmt: skip
    error_at(tmp_path, "[hosts.a]\n[groups.g]\n[groups.g.egress]\nallow = [\"x.com\"]\n",
             "[groups.g]", "groups.g", "needs `members`")  # fmt: skip
    error_at(tmp_path, "[hosts.a]\n[groups.g]\nmembers = \"a\"\n", "members", "groups.g.members",
             "expected array of strings")  # fmt: skip
    error_at(tmp_path, "[hosts.a]\n[groups.g]\nmembers = [\"a\"]\n[groups.g.egress]\n"
             "allow = [\"a b.com\"]\n", "allow", "groups.g.egress.allow", "[0]",
             "is not a host")  # fmt: skip
    error_at(tmp_path, "[hosts.a]\n[groups.g]\nmembers = [\"a\"]\n[groups.g.egress]\n"
             "permit = [\"x.com\"]\n", "permit", "groups.g.egress.permit",
             "unknown egress key")  # fmt: skip
    error_at(tmp_path, "[hosts.a]\n[groups.g]\nmembers = [\"zz\"]\n", "[groups.g]", "groups.g",
             "unknown member `zz`")  # fmt: skip


def test_group_table_named_like_a_secret_word_is_a_name(tmp_path: Path) -> None:
    path = write(tmp_path, '[hosts.a]\n[groups.tokens]\nmembers = ["a"]\n')
    assert load_inventory(path).groups == {"tokens": ("a",)}
