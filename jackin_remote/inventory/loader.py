"""Load inventory TOML files into a validated `Inventory`.

Sources, first match wins: an explicit path (a .toml file, or a directory whose *.toml files are
read in name order, non-recursively, dotfiles skipped) > $JACKIN_INVENTORY > ./inventory/ if it
exists. No inventory at all means the laptop alone: the builtin `local` host.

Several files merge into one inventory. A host or group lives in exactly one file. A file's
`[defaults]` apply to the hosts declared in that same file only, so moving a file in or out of
the directory never changes the hosts of another file.

Every problem in file content becomes an InventoryError located as `file:line: field: message`
with a hint; no other exception escapes for any bytes a file may hold.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from agent_host.wire import (
    LIMIT_NAMES,
    MAX_CPUS,
    MAX_NOFILE,
    MAX_PIDS,
    MIN_CPUS,
    MIN_NOFILE,
    MIN_PIDS,
    SpecError,
    memory_bytes,
)
from jackin_remote.core.names import NAME_RULE, is_valid_name
from jackin_remote.errors import InventoryError
from jackin_remote.inventory.hostkey import HostKeyFormatError, parse_public_key
from jackin_remote.inventory.model import (
    BUILTIN_LOCAL,
    LOCAL_HOST_NAME,
    Host,
    Inventory,
    Limits,
)
from jackin_remote.inventory.toml_lines import KeyPath, SourceIndex, index_source
from jackin_remote.inventory.values import ValueProblem as _Problem
from jackin_remote.inventory.values import expect_str as _expect_str
from jackin_remote.inventory.values import shown as _show
from jackin_remote.inventory.values import toml_type_name

ENV_VAR = "JACKIN_INVENTORY"
DEFAULT_DIR = Path("inventory")

TOP_LEVEL_KEYS = ("defaults", "hosts", "groups")
HOST_KEYS = (
    "address",
    "port",
    "user",
    "identity_file",
    "jump",
    "host_key",
    "transport",
    "labels",
    "capacity",
    "root",
    "backend",
    "disk_budget",
    "disk_floor",
    "limits",
    "egress",
    "host_mounts",
    "private_docker_image",
    "private_docker_privilege",
    "idle_timeout",
    "snapshot_keep",
    "snapshot_max_age",
    "snapshot_excludes",
)
EGRESS_KEYS = ("allow", "deny")  # [hosts.<name>.egress] / [defaults.egress]: rule patterns
GROUP_KEYS = ("members", "egress")  # [groups.<name>]: the table form of a group
PER_HOST_ONLY_KEYS = ("address", "host_key")  # never in [defaults]: they identify one machine
DEFAULT_KEYS = tuple(key for key in HOST_KEYS if key not in PER_HOST_ONLY_KEYS)
SSH_ONLY_KEYS = ("address", "port", "user", "identity_file", "jump", "host_key")
LIMIT_KEYS = LIMIT_NAMES
EgressRule = tuple[str, str, str]
RESERVED_NAMES = ("all",)
RESERVED_PREFIX = "label"  # keeps `label:X` selectors unambiguous

MAX_CAPACITY = 1024

SECRETS_HINT = (
    "keep secrets out of the inventory; credentials come from named sources on the laptop "
    "(see docs/credentials.md)"
)
# Matched against a key lowercased with '-', '_' and '.' removed, so `api-key`, `apiKey`,
# `db_password` and `github_token` are all caught.
_SECRET_WORDS = (
    "password",
    "passwd",
    "passphrase",
    "token",
    "secret",
    "apikey",
    "privatekey",
    "credential",
)

# Characters that reach ssh/rsync argv: a conservative charset, never a leading '-'.
_ADDRESS_RE = re.compile(r"^[A-Za-z0-9._:-]{1,253}\Z")
_USER_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}\Z")
_JUMP_RE = re.compile(
    r"^(?:(?P<user>[A-Za-z_][A-Za-z0-9_.-]{0,63})@)?(?P<host>[A-Za-z0-9._-]{1,253})"
    r"(?::(?P<port>[0-9]{1,5}))?$"
)
_PATH_CHARS_RE = re.compile(r"^[A-Za-z0-9._/~-]+\Z")
_IDENTITY_FILE_RE = re.compile(r"^[A-Za-z0-9._/~@+=,-]{1,4096}\Z")
_NAME_HINT = f"names use {NAME_RULE}"


# ---- sources -------------------------------------------------------------------------------


def load_inventory(
    path: str | Path | None = None, *, env: Mapping[str, str] | None = None
) -> Inventory:
    """Load the inventory from `path`, $JACKIN_INVENTORY or ./inventory/ (see module doc).

    Each file's [defaults] apply to the hosts declared in that file only."""
    source = resolve_source(path, env=os.environ if env is None else env)
    if source is None:
        return parse_inventory([])
    return parse_inventory((str(file), _read_bytes(file)) for file in inventory_files(source))


def resolve_source(path: str | Path | None, *, env: Mapping[str, str]) -> Path | None:
    """The file or directory to read, or None for "no inventory: just the laptop"."""
    if path is not None:
        return _existing_source(str(path), given_by="the inventory path given")
    from_env = env.get(ENV_VAR, "")
    if from_env:
        return _existing_source(from_env, given_by=f"${ENV_VAR}")
    return DEFAULT_DIR if DEFAULT_DIR.is_dir() else None


def _existing_source(raw: str, *, given_by: str) -> Path:
    hint = "point it at a .toml file or a directory of .toml files"
    if not raw.strip():
        raise InventoryError(f"{given_by} is empty", hint=hint)
    path = Path(raw).expanduser()
    if not path.exists():
        raise InventoryError(f"inventory not found ({given_by})", file=str(path), hint=hint)
    if not (path.is_file() or path.is_dir()):
        raise InventoryError("not a file or directory", file=str(path), hint=hint)
    return path


def inventory_files(source: Path) -> list[Path]:
    """A file is read as given; a directory contributes its *.toml files, sorted, non-recursive.
    Dotfiles are skipped (editor swap files, our own temp files)."""
    if source.is_file():
        return [source]
    try:
        entries = list(source.iterdir())
    except OSError as exc:
        raise InventoryError(f"cannot list directory: {exc.strerror}", file=str(source)) from exc
    return sorted(
        (entry for entry in entries if _is_inventory_file(entry)), key=lambda entry: entry.name
    )


def _is_inventory_file(path: Path) -> bool:
    return path.suffix == ".toml" and not path.name.startswith(".") and path.is_file()


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InventoryError(
            f"cannot read: {exc.strerror}", file=str(path), hint="check the file's permissions"
        ) from exc


# ---- parsing one file ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Place:
    """Where a host or group was declared."""

    file: str
    line: int | None

    def __str__(self) -> str:
        return self.file if self.line is None else f"{self.file}:{self.line}"


@dataclass(frozen=True)
class _Group:
    name: str
    members: tuple[str, ...]
    place: _Place
    egress: tuple[EgressRule, ...] = ()  # [groups.<name>.egress]: for its members' sessions


@dataclass(frozen=True)
class _FileInventory:
    file: str
    hosts: tuple[Host, ...]
    groups: tuple[_Group, ...]
    # Where each host's jump is written, so merge-time jump errors point at it.
    jump_lines: dict[str, int | None]
    # How many of each host's egress rules are its file's [defaults.egress] (they come first):
    # its groups' rules go between those and its own.
    default_egress: int = 0


@dataclass(frozen=True)
class _HostSpec:
    """Validated keys of one host table (or of [defaults]), limits kept apart: they merge
    key by key with the defaults."""

    fields: dict[str, object]
    limits: dict[str, object]
    egress: tuple[EgressRule, ...] = ()  # (action, pattern, where: file:line)


@dataclass(frozen=True)
class _FileContext:
    file: str
    source: SourceIndex

    def line_of(self, path: KeyPath) -> int | None:
        return self.source.line_of(path)

    def error(self, path: KeyPath, message: str, *, hint: str | None = None) -> InventoryError:
        return InventoryError(
            message,
            file=self.file,
            line=self.line_of(path),
            field=".".join(path) or None,
            hint=hint,
        )


def parse_inventory(sources: Iterable[tuple[str, bytes | str]]) -> Inventory:
    """Validate and merge (file name, content) pairs. Used by the loader and the editor, which
    validates a change in memory before writing it."""
    files = [_parse_file(name, content) for name, content in sources]
    return _merge(files)


def _parse_file(file: str, content: bytes | str) -> _FileInventory:
    text = _decode(file, content)
    document = _parse_toml(file, text)
    ctx = _FileContext(file, index_source(text))
    _refuse_secrets(document, ctx)
    _check_keys(document, TOP_LEVEL_KEYS, (), ctx, what="top-level key")
    defaults = _defaults_section(document.get("defaults"), ctx)
    hosts = _hosts_section(document.get("hosts"), defaults, ctx)
    groups = _groups_section(document.get("groups"), ctx)
    return _FileInventory(
        file=file,
        hosts=tuple(host for host, _ in hosts),
        groups=groups,
        jump_lines={host.name: line for host, line in hosts},
        default_egress=len(defaults.egress),
    )


def _decode(file: str, content: bytes | str) -> str:
    if isinstance(content, str):
        return content
    try:
        return content.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = content[: exc.start].count(b"\n") + 1
        raise InventoryError(
            "not UTF-8 text", file=file, line=line, hint="save the file as UTF-8"
        ) from exc


_TOMLKIT_LOCATION_RE = re.compile(r" at line \d+ col \d+$")


def _parse_toml(file: str, text: str) -> dict[str, Any]:
    # Imported here: with no inventory file (the builtin local host) nothing is parsed.
    import tomlkit
    from tomlkit.exceptions import KeyAlreadyPresent, ParseError

    hint = "fix the TOML syntax (see https://toml.io)"
    try:
        return tomlkit.parse(text).unwrap()
    except ParseError as exc:
        reason = _TOMLKIT_LOCATION_RE.sub("", str(exc))
        raise InventoryError(
            f"invalid TOML: {reason} (column {exc.col})", file=file, line=exc.line, hint=hint
        ) from exc
    except KeyAlreadyPresent as exc:
        # tomlkit gives no position for this one; our scanner finds the second declaration.
        redeclared = index_source(text).redeclared
        line = min(redeclared.values()) if redeclared else None
        raise InventoryError(
            f"invalid TOML: {exc}", file=file, line=line, hint="declare each key and table once"
        ) from exc
    except Exception as exc:
        # tomlkit is a third-party parser fed arbitrary bytes; any other failure in it
        # (RecursionError on deep nesting, ValueError on giant numbers...) still just means
        # "this file is not TOML we can use".
        raise InventoryError(f"invalid TOML: {type(exc).__name__}", file=file, hint=hint) from exc


# ---- secrets --------------------------------------------------------------------------------


def looks_like_secret_key(key: str) -> bool:
    squashed = re.sub(r"[-_.\s]", "", key.lower())
    return any(word in squashed for word in _SECRET_WORDS)


def _is_name_position(path: KeyPath, value: object) -> bool:
    """`[hosts.NAME]`, `groups.NAME = [...]` and `[groups.NAME]` keys are names, not fields."""
    if len(path) != 2:
        return False
    return (path[0] == "hosts" and isinstance(value, dict)) or (
        path[0] == "groups" and isinstance(value, list | dict)
    )


def _refuse_secrets(document: dict[str, Any], ctx: _FileContext) -> None:
    # Iterative walk: a hostile file may nest deeper than Python's recursion limit.
    stack: list[tuple[KeyPath, object]] = [((), document)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, dict):
            for key, child in value.items():
                child_path = (*path, str(key))
                if looks_like_secret_key(str(key)) and not _is_name_position(child_path, child):
                    raise ctx.error(
                        child_path, "inventory files never hold secrets", hint=SECRETS_HINT
                    )
                stack.append((child_path, child))
        elif isinstance(value, list):
            stack.extend((path, item) for item in value)
        elif isinstance(value, str) and "PRIVATE KEY" in value:
            raise ctx.error(
                path,
                "inventory files never hold secrets (this is a private key)",
                hint=SECRETS_HINT,
            )


# ---- generic checks ------------------------------------------------------------------------


def _suggest(word: str, choices: Sequence[str]) -> str | None:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"did you mean `{close[0]}`?" if close else None


def _check_keys(
    table: Mapping[str, object],
    allowed: Sequence[str],
    path: KeyPath,
    ctx: _FileContext,
    *,
    what: str,
) -> None:
    for key in table:
        if key not in allowed:
            hint = _suggest(key, allowed) or "known keys: " + ", ".join(allowed)
            raise ctx.error((*path, key), f"unknown {what} {_show(key)}", hint=hint)


def _expect_table(value: object, path: KeyPath, ctx: _FileContext) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ctx.error(
            path,
            f"expected a table, got {toml_type_name(value)}",
            hint=f"write it as [{'.'.join(path)}] with keys below it",
        )
    return value


def _check_name(name: str, path: KeyPath, ctx: _FileContext, *, what: str) -> None:
    if not is_valid_name(name):
        raise ctx.error(path, f"invalid {what} name {_show(name)}", hint=_NAME_HINT)
    if name in RESERVED_NAMES or name.startswith(RESERVED_PREFIX):
        raise ctx.error(
            path,
            f"{what} name {_show(name)} is reserved",
            hint="`all` and names starting with `label` are selector words; pick another name",
        )


# ---- value validators (pure: raise _Problem, the caller adds the location) ------------------


def _expect_int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Problem(f"expected integer, got {toml_type_name(value)}")
    return value


def _int_in_range(value: object, low: int, high: int, *, unit: str = "") -> int:
    number = _expect_int(value)
    if not low <= number <= high:
        raise _Problem(f"must be between {low} and {high}{unit}")
    return number


def _port(value: object) -> int:
    return _int_in_range(value, 1, 65535)


def _address(value: object) -> str:
    text = _expect_str(value)
    if not _ADDRESS_RE.match(text) or text.startswith("-"):
        raise _Problem(
            f"invalid address {_show(text)}",
            hint="a DNS name, an IPv4/IPv6 address or a ~/.ssh/config alias "
            "(letters, digits, '.', ':', '-', '_'; not starting with '-')",
        )
    return text


def _user(value: object) -> str:
    text = _expect_str(value)
    if not _USER_RE.match(text):
        raise _Problem(
            f"invalid user {_show(text)}",
            hint="a login name: letters, digits, '_', '.', '-', starting with a letter or '_'",
        )
    return text


def _identity_file(value: object) -> str:
    text = _expect_str(value)
    if not _IDENTITY_FILE_RE.match(text) or text.startswith("-") or "~" in text[1:]:
        raise _Problem(
            f"invalid identity_file {_show(text)}",
            hint='a path like "~/.ssh/id_ed25519": letters, digits and ._/~@+=,- only, '
            "no spaces (it reaches ssh and rsync command lines)",
        )
    return text


def _jump(value: object) -> str:
    text = _expect_str(value)
    match = _JUMP_RE.match(text)
    if match is None or match.group("host").startswith("-"):
        raise _Problem(
            f"invalid jump {_show(text)}",
            hint="an inventory host name or [user@]host[:port]; for an IPv6 jump host declare "
            "it as an inventory host and name it here",
        )
    port = match.group("port")
    if port is not None and not 1 <= int(port) <= 65535:
        raise _Problem("the jump port must be between 1 and 65535")
    return text


def _host_key(value: object) -> str:
    text = _expect_str(value)
    try:
        return parse_public_key(text)
    except HostKeyFormatError as exc:
        raise _Problem(
            f"invalid host_key: {exc}",
            hint="paste the public key line, e.g. the output of `ssh-keyscan -t ed25519 HOST` "
            'without the host name: "ssh-ed25519 AAAA..."',
        ) from exc


def _transport(value: object) -> str:
    text = _expect_str(value)
    if text not in ("ssh", "local"):
        raise _Problem(f"unknown transport {_show(text)}", hint='use "ssh" or "local"')
    return text


def _labels(value: object) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise _Problem(f"expected array of strings, got {toml_type_name(value)}")
    labels: list[str] = []
    for item in value:
        if not isinstance(item, str):
            raise _Problem(f"expected array of strings, got an item of type {toml_type_name(item)}")
        if not is_valid_name(item):
            raise _Problem(f"invalid label {_show(item)}", hint=f"labels use {NAME_RULE}")
        if item not in labels:
            labels.append(item)
    return tuple(labels)


def _capacity(value: object) -> int:
    return _int_in_range(value, 1, MAX_CAPACITY, unit=" concurrent sessions")


def _root(value: object) -> str:
    text = _expect_str(value)
    hint = 'an absolute path or one under the home directory, e.g. "~/.jackin" or "/srv/jackin"'
    if not _PATH_CHARS_RE.match(text):
        raise _Problem(
            f"invalid root {_show(text)}: only letters, digits and ._/~- are allowed", hint=hint
        )
    if not (text.startswith("/") or text.startswith("~/")) or "~" in text[1:]:
        raise _Problem(f"invalid root {_show(text)}: must start with '/' or '~/'", hint=hint)
    parts = [part for part in text.split("/")[1:] if part]
    if any(part in (".", "..") for part in parts):
        raise _Problem(f"invalid root {_show(text)}: no '.' or '..' components", hint=hint)
    if not parts:
        raise _Problem(f"invalid root {_show(text)}: use a directory of its own", hint=hint)
    return text.rstrip("/")


def _host_mounts(value: object) -> tuple[str, ...]:
    """Host directories a session may mount (read-only) with --mount host:DIR:TARGET."""
    from agent_host.wire import SpecError, check_mount_path

    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _Problem(f"expected a list of paths, got {toml_type_name(value)}")
    for path in value:
        try:
            check_mount_path(path, "host_mounts")
        except SpecError as exc:
            raise _Problem(exc.problem) from None
        if path == "/":
            raise _Problem("'/' cannot be mounted: name the directories")
    return tuple(value)


def _image_ref(value: object) -> str:
    from agent_host.wire import check_image_ref

    text = _expect_str(value)
    try:
        return check_image_ref(text, "private_docker_image")
    except SpecError:
        raise _Problem(
            f"invalid image reference {_show(text)}",
            hint='e.g. "docker:27-dind" (an image with sh, openssl and dockerd)',
        ) from None


def _privilege(value: object) -> str:
    text = _expect_str(value)
    if text not in ("privileged", "capabilities"):
        raise _Problem(f"unknown privilege {_show(text)}", hint='"privileged" or "capabilities"')
    return text


def _snapshot_keep(value: object) -> int:
    from agent_host.wire import MAX_SNAPSHOT_KEEP

    return _int_in_range(value, 1, MAX_SNAPSHOT_KEEP, unit=" snapshots per session")


def _snapshot_max_age(value: object) -> str:
    from agent_host.wire import age_seconds

    text = _expect_str(value)
    try:
        age_seconds(text)
    except SpecError:
        raise _Problem(
            f"invalid age {_show(text)}", hint='e.g. "30m", "12h", "7d" or "2w"'
        ) from None
    return text


def _snapshot_excludes(value: object) -> tuple[str, ...]:
    """Names (any depth) or paths from the checkout's top that snapshots leave out, besides
    the rebuildable defaults; "!name" keeps a default."""
    from agent_host.wire import MAX_SNAPSHOT_EXCLUDES, check_exclude

    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _Problem(f"expected a list of names or paths, got {toml_type_name(value)}")
    if len(value) > MAX_SNAPSHOT_EXCLUDES:
        raise _Problem(f"at most {MAX_SNAPSHOT_EXCLUDES} patterns")
    for pattern in value:
        try:
            check_exclude(pattern, "snapshot_excludes")
        except SpecError as exc:
            raise _Problem(exc.problem) from None
    return tuple(value)


def _idle_timeout(value: object) -> int | None:
    """How long a session may sit idle before its host stops it: "30m", "2h", "1d"; "off"."""
    from agent_host.wire import duration_seconds

    text = _expect_str(value)
    if text == "off":
        return None
    try:
        return duration_seconds(text)
    except SpecError as exc:
        problem = exc.problem if exc.problem.startswith("must") else "not a duration"
        raise _Problem(
            f"invalid idle timeout {_show(text)}: {problem}",
            hint='a duration from 1m to 30d, e.g. "30m", "2h" or "1d"; or "off"',
        ) from None


IDLE_TIMEOUT = _idle_timeout  # --idle-timeout is checked by the same rule


def _backend(value: object) -> str:
    text = _expect_str(value)
    if text not in ("docker", "gvisor"):
        raise _Problem(f"unknown backend {_show(text)}", hint='"docker" or "gvisor"')
    return text


def _disk_size(value: object) -> str:
    """disk_budget / disk_floor: a size with a binary unit, like the memory limit's."""
    from jackin_remote.core.disk import SizeError, parse_size

    text = _expect_str(value)
    try:
        parse_size(text)
    except SizeError:
        raise _Problem(
            f"invalid size {_show(text)}",
            hint='a number with an optional unit k, m, g or t, more than 0, e.g. "50g" or "500m"',
        ) from None
    return text


def _memory(value: object) -> str:
    text = _expect_str(value)
    try:
        memory_bytes(text)  # the host's own rule: what the inventory accepts, a host accepts
    except SpecError:
        raise _Problem(
            f"invalid memory {_show(text)}",
            hint='a number with an optional unit k, m or g, at least 6m, e.g. "512m" or "4g"',
        ) from None
    return text


def _cpus(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Problem(f"expected number, got {toml_type_name(value)}")
    if isinstance(value, int) and not 0 < value <= MAX_CPUS:  # before float(): ints may be huge
        raise _Problem(f"must be at least {MIN_CPUS:g} and at most {MAX_CPUS:g}")
    number = float(value)
    if not (math.isfinite(number) and MIN_CPUS <= number <= MAX_CPUS):
        raise _Problem(f"must be at least {MIN_CPUS:g} and at most {MAX_CPUS:g}")
    return number


def _pids(value: object) -> int:
    return _int_in_range(value, MIN_PIDS, MAX_PIDS)


def _nofile(value: object) -> int:
    return _int_in_range(value, MIN_NOFILE, MAX_NOFILE)


_HOST_VALIDATORS: dict[str, Callable[[object], object]] = {
    "address": _address,
    "port": _port,
    "user": _user,
    "identity_file": _identity_file,
    "jump": _jump,
    "host_key": _host_key,
    "transport": _transport,
    "labels": _labels,
    "capacity": _capacity,
    "root": _root,
    "backend": _backend,
    "disk_budget": _disk_size,
    "disk_floor": _disk_size,
    "host_mounts": _host_mounts,
    "private_docker_image": _image_ref,
    "private_docker_privilege": _privilege,
    "idle_timeout": _idle_timeout,
    "snapshot_keep": _snapshot_keep,
    "snapshot_max_age": _snapshot_max_age,
    "snapshot_excludes": _snapshot_excludes,
}
LIMIT_VALIDATORS: dict[str, Callable[[object], object]] = {
    "memory": _memory,
    "cpus": _cpus,
    "pids": _pids,
    "nofile": _nofile,
}
# Shown when a value has the wrong type: one correct line says more than a type name.
_EXAMPLES = {
    "address": 'address = "10.0.0.5"',
    "port": "port = 22",
    "user": 'user = "ops"',
    "identity_file": 'identity_file = "~/.ssh/id_ed25519"',
    "jump": 'jump = "bastion"',
    "host_key": 'host_key = "ssh-ed25519 AAAA..."',
    "transport": 'transport = "ssh"',
    "labels": 'labels = ["gpu", "linux"]',
    "capacity": "capacity = 4",
    "root": 'root = "~/.jackin"',
    "backend": 'backend = "docker"',
    "disk_budget": 'disk_budget = "50g"',
    "disk_floor": 'disk_floor = "5g"',
    "host_mounts": 'host_mounts = ["/srv/pip-cache", "/opt/toolchains"]',
    "private_docker_image": 'private_docker_image = "docker:27-dind"',
    "private_docker_privilege": 'private_docker_privilege = "privileged"',
    "idle_timeout": 'idle_timeout = "2h"',
    "snapshot_keep": "snapshot_keep = 20",
    "snapshot_max_age": 'snapshot_max_age = "7d"',
    "snapshot_excludes": 'snapshot_excludes = ["*.log", "data/cache", "!build"]',
    "memory": 'memory = "4g"',
    "cpus": "cpus = 2.0",
    "pids": "pids = 512",
    "nofile": "nofile = 4096",
}


# ---- sections ------------------------------------------------------------------------------


def _validated(
    table: Mapping[str, object],
    validators: Mapping[str, Callable[[object], object]],
    path: KeyPath,
    ctx: _FileContext,
) -> dict[str, object]:
    fields: dict[str, object] = {}
    for key, raw in table.items():
        try:
            fields[key] = validators[key](raw)
        except _Problem as problem:
            hint = problem.hint or f"for example: {_EXAMPLES[key]}"
            raise ctx.error((*path, key), problem.message, hint=hint) from None
    return fields


def _host_spec(
    table: dict[str, Any], allowed: Sequence[str], path: KeyPath, ctx: _FileContext
) -> _HostSpec:
    for key in table:
        if key in PER_HOST_ONLY_KEYS and key not in allowed:
            raise ctx.error(
                (*path, key),
                f"{key} cannot be a default: it identifies one machine",
                hint=f"set {key} on each host",
            )
    _check_keys(table, allowed, path, ctx, what="host key")
    plain = {key: value for key, value in table.items() if key not in ("limits", "egress")}
    fields = _validated(plain, _HOST_VALIDATORS, path, ctx)
    egress = _egress(table["egress"], (*path, "egress"), ctx) if "egress" in table else ()
    if "limits" not in table:
        return _HostSpec(fields, {}, egress)
    limits_path = (*path, "limits")
    limits = _expect_table(table["limits"], limits_path, ctx)
    _check_keys(limits, LIMIT_KEYS, limits_path, ctx, what="limit")
    return _HostSpec(fields, _validated(limits, LIMIT_VALIDATORS, limits_path, ctx), egress)


def _egress(value: object, path: KeyPath, ctx: _FileContext) -> tuple[EgressRule, ...]:
    """`allow` and `deny`: lists of destination patterns (agent_host/egress.py), each checked,
    each remembered with the file and line it is written on (the contract names them)."""
    from agent_host.egress import parse_pattern
    from agent_host.wire import SpecError

    table = _expect_table(value, path, ctx)
    _check_keys(table, EGRESS_KEYS, path, ctx, what="egress key")
    rules: list[EgressRule] = []
    for action in EGRESS_KEYS:
        if action not in table:
            continue
        key_path = (*path, action)
        patterns = table[action]
        if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
            example = f'{action} = ["**.example.com", "pypi.org:443"]'
            raise ctx.error(key_path, "expected a list of patterns", hint=f"for example: {example}")
        line = ctx.line_of(key_path)
        where = ctx.file if line is None else f"{ctx.file}:{line}"
        for index, pattern in enumerate(patterns):
            try:
                parse_pattern(pattern, f"{'.'.join(key_path)}[{index}]")
            except SpecError as exc:
                hint = "a host, *.domain, **.domain, host:port or an IP"
                raise ctx.error(key_path, f"[{index}]: {exc.problem}", hint=hint) from None
            rules.append((action, pattern, where))
    return tuple(rules)


_NO_DEFAULTS = _HostSpec({}, {})


def _defaults_section(value: object, ctx: _FileContext) -> _HostSpec:
    if value is None:
        return _NO_DEFAULTS
    table = _expect_table(value, ("defaults",), ctx)
    return _host_spec(table, DEFAULT_KEYS, ("defaults",), ctx)


def _hosts_section(
    value: object, defaults: _HostSpec, ctx: _FileContext
) -> list[tuple[Host, int | None]]:
    """Each host with the line its jump is written on (its own or the default one)."""
    if value is None:
        return []
    table = _expect_table(value, ("hosts",), ctx)
    hosts: list[tuple[Host, int | None]] = []
    for name, raw in table.items():
        path = ("hosts", name)
        _check_name(name, path, ctx, what="host")
        own = _host_spec(_expect_table(raw, path, ctx), HOST_KEYS, path, ctx)
        jump_path = (*path, "jump") if "jump" in own.fields else ("defaults", "jump")
        hosts.append((_build_host(name, own, defaults, ctx), ctx.line_of(jump_path)))
    return hosts


def apply_defaults(name: str, own: _HostSpec, defaults: _HostSpec) -> _HostSpec:
    """A host's keys with its file's defaults filled in; limits merge key by key. The `local`
    host takes no ssh defaults, and a default jump is not applied to the jump host itself."""
    fields = dict(own.fields)
    for key, value in defaults.fields.items():
        if key in own.fields:
            continue
        if name == LOCAL_HOST_NAME and (key in SSH_ONLY_KEYS or key == "transport"):
            continue
        if key == "jump" and value == name:
            continue
        fields[key] = value
    return _HostSpec(fields, {**defaults.limits, **own.limits}, defaults.egress + own.egress)


def _build_host(name: str, own: _HostSpec, defaults: _HostSpec, ctx: _FileContext) -> Host:
    path = ("hosts", name)
    merged = apply_defaults(name, own, defaults)
    fields = merged.fields

    def where(key: str) -> KeyPath:
        return (*path, key) if key in own.fields else ("defaults", key)

    transport = fields.setdefault("transport", "local" if name == LOCAL_HOST_NAME else "ssh")
    if name == LOCAL_HOST_NAME and transport != "local":
        raise ctx.error(
            where("transport"),
            'the host named `local` is this laptop: its transport is "local"',
            hint="give the ssh host another name",
        )
    if name != LOCAL_HOST_NAME and transport == "local":
        raise ctx.error(
            where("transport"),
            'only the host named `local` uses transport "local"',
            hint="declare [hosts.local] to tune this laptop; other hosts use ssh",
        )
    if transport == "local":
        for key in SSH_ONLY_KEYS:
            if key in own.fields:
                raise ctx.error(
                    (*path, key),
                    f"{key} applies to ssh hosts only",
                    hint="remove it: the local host runs sessions on this laptop",
                )

    kwargs: dict[str, Any] = dict(fields)
    return Host(
        name=name,
        limits=Limits(**{**_model_limits(), **merged.limits}),
        egress=merged.egress,
        source_file=ctx.file,
        source_line=ctx.line_of(path),
        **kwargs,
    )


def _model_limits() -> dict[str, Any]:
    default = Limits()
    return {name: getattr(default, name) for name in LIMIT_KEYS}


def _groups_section(value: object, ctx: _FileContext) -> tuple[_Group, ...]:
    """`NAME = ["host", ...]`, or the table form `[groups.NAME]` with `members = [...]` and an
    optional `[groups.NAME.egress]` (allow / deny, like a host's)."""
    if value is None:
        return ()
    table = _expect_table(value, ("groups",), ctx)
    groups: list[_Group] = []
    for name, raw in table.items():
        path = ("groups", name)
        _check_name(name, path, ctx, what="group")
        egress: tuple[EgressRule, ...] = ()
        if isinstance(raw, dict):
            _check_keys(raw, GROUP_KEYS, path, ctx, what="group key")
            if "members" not in raw:
                raise ctx.error(path, "a group table needs `members`",
                                hint=f'for example: [groups.{name}] members = ["web-1", '
                                '"web-2"]')  # fmt: skip
            members = _group_members(raw["members"], (*path, "members"), ctx)
            if "egress" in raw:
                egress = _egress(raw["egress"], (*path, "egress"), ctx)
        else:
            members = _group_members(raw, path, ctx)
        groups.append(_Group(name, members, _Place(ctx.file, ctx.line_of(path)), egress))
    return tuple(groups)


def _group_members(value: object, path: KeyPath, ctx: _FileContext) -> tuple[str, ...]:
    hint = (
        'a group is an array of host or group names, e.g. web = ["web-1", "web-2"] (or, in a '
        "[groups.web] table, members = [...])"
    )
    if not isinstance(value, list):
        raise ctx.error(path, f"expected array of strings, got {toml_type_name(value)}", hint=hint)
    members: list[str] = []
    for item in value:
        if not isinstance(item, str):
            raise ctx.error(
                path,
                f"expected array of strings, got an item of type {toml_type_name(item)}",
                hint=hint,
            )
        if not is_valid_name(item):
            raise ctx.error(path, f"invalid member name {_show(item)}", hint=_NAME_HINT)
        if item not in members:
            members.append(item)
    return tuple(members)


# ---- merging files -------------------------------------------------------------------------


def _merge(files: Sequence[_FileInventory]) -> Inventory:
    hosts = _merge_hosts(files)
    groups = _merge_groups(files)
    _check_groups(groups, hosts)
    _check_jumps(hosts, {name: line for file in files for name, line in file.jump_lines.items()})
    hosts = _with_group_egress(hosts, groups, files)
    return Inventory(
        hosts=hosts,
        groups={name: group.members for name, group in groups.items()},
        files=tuple(file.file for file in files),
    )


def _with_group_egress(
    hosts: dict[str, Host], groups: Mapping[str, _Group], files: Sequence[_FileInventory]
) -> dict[str, Host]:
    """Each host's egress rules in order: its file's [defaults.egress], then the rules of every
    group it belongs to (directly or through a group of groups), in the order the groups are
    declared (files in name order), then its own."""
    if not any(group.egress for group in groups.values()):
        return hosts
    graph = {name: group.members for name, group in groups.items()}
    under = {name: _members_of(graph, name) for name, group in groups.items() if group.egress}
    split = {host.name: file.default_egress for file in files for host in file.hosts}
    result = dict(hosts)
    for name, host in hosts.items():
        extra = tuple(rule for group, members in under.items() if name in members
                      for rule in groups[group].egress)  # fmt: skip
        if extra:
            at = split.get(name, 0)
            result[name] = replace(host, egress=host.egress[:at] + extra + host.egress[at:])
    return result


def _members_of(graph: Mapping[str, Sequence[str]], group: str) -> set[str]:
    """The host names under `group`, through nested groups (the loader refused loops already;
    this walk is safe anyway)."""
    hosts: set[str] = set()
    seen: set[str] = set()
    stack = [group]
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        for member in graph.get(name, ()):
            if member in graph:
                stack.append(member)
            else:
                hosts.add(member)
    return hosts


def _duplicate(what: str, name: str, first: _Place, second: _Place) -> InventoryError:
    return InventoryError(
        f"{what} `{name}` is declared twice: at {first} and at {second}",
        file=second.file,
        line=second.line,
        field=f"{what}s.{name}",
        hint=f"each {what} lives in exactly one file; keep one declaration",
    )


def _merge_hosts(files: Sequence[_FileInventory]) -> dict[str, Host]:
    hosts: dict[str, Host] = {}
    for file in files:
        for host in file.hosts:
            if host.name in hosts:
                first = hosts[host.name]
                raise _duplicate(
                    "host",
                    host.name,
                    _Place(first.source_file, first.source_line),
                    _Place(host.source_file, host.source_line),
                )
            hosts[host.name] = host
    if LOCAL_HOST_NAME not in hosts:
        # The laptop is always a host; it goes first so `all` lists it first.
        hosts = {LOCAL_HOST_NAME: BUILTIN_LOCAL, **hosts}
    return hosts


def _merge_groups(files: Sequence[_FileInventory]) -> dict[str, _Group]:
    groups: dict[str, _Group] = {}
    for file in files:
        for group in file.groups:
            if group.name in groups:
                raise _duplicate("group", group.name, groups[group.name].place, group.place)
            groups[group.name] = group
    return groups


def _group_error(group: _Group, message: str, hint: str | None) -> InventoryError:
    return InventoryError(
        message,
        file=group.place.file,
        line=group.place.line,
        field=f"groups.{group.name}",
        hint=hint,
    )


def _check_groups(groups: Mapping[str, _Group], hosts: Mapping[str, Host]) -> None:
    known = [*hosts, *groups]
    for group in groups.values():
        if group.name in hosts:
            raise _group_error(
                group,
                f"group `{group.name}` has the same name as a host (declared at "
                f"{hosts[group.name].where})",
                "hosts and groups share one namespace; rename the group",
            )
        for member in group.members:
            if member not in hosts and member not in groups:
                hint = _suggest(member, known) or "members are host or group names: " + ", ".join(
                    known
                )
                raise _group_error(group, f"unknown member `{member}`", hint)
    cycle = find_cycle({name: group.members for name, group in groups.items()})
    if cycle is not None:
        raise _group_error(
            groups[cycle[0]],
            "groups include each other in a loop: " + " -> ".join(cycle),
            "a group may include another group, but never itself, directly or not",
        )


def find_cycle(graph: Mapping[str, Sequence[str]]) -> list[str] | None:
    """First cycle in a name -> names graph, as a path that ends where it starts."""
    done: set[str] = set()
    for start in graph:
        if start in done:
            continue
        # Iterative DFS; `trail` is the current path, `pending` the unexplored edges per level.
        trail: list[str] = [start]
        pending: list[list[str]] = [list(graph.get(start, ()))]
        while trail:
            if not pending[-1]:
                done.add(trail.pop())
                pending.pop()
                continue
            nxt = pending[-1].pop(0)
            if nxt in trail:
                return [*trail[trail.index(nxt) :], nxt]
            if nxt in done or nxt not in graph:
                continue
            trail.append(nxt)
            pending.append(list(graph[nxt]))
    return None


def is_host_reference(jump: str) -> bool:
    """A jump without '@', '.' or ':' names an inventory host; anything else is an ssh
    destination ([user@]host[:port])."""
    return not any(char in jump for char in "@.:")


def _check_jumps(hosts: Mapping[str, Host], jump_lines: Mapping[str, int | None]) -> None:
    def error(host: Host, message: str, hint: str) -> InventoryError:
        return InventoryError(
            message,
            file=host.source_file,
            line=jump_lines.get(host.name) or host.source_line,
            field=f"hosts.{host.name}.jump",
            hint=hint,
        )

    graph: dict[str, list[str]] = {}
    for host in hosts.values():
        if host.jump is None or not is_host_reference(host.jump):
            continue
        target = hosts.get(host.jump)
        if target is None:
            raise error(
                host,
                f"unknown jump host `{host.jump}`",
                _suggest(host.jump, list(hosts))
                or f"a jump without '@', '.' or ':' names an inventory host: declare "
                f'[hosts.{host.jump}] (address = "...") or write user@{host.jump}',
            )
        if target.name == host.name:
            raise error(host, "a host cannot jump through itself", "remove the jump")
        if target.is_local:
            raise error(host, "the local host cannot be a jump host", "jump through an ssh host")
        graph[host.name] = [target.name]
    cycle = find_cycle(graph)
    if cycle is not None:
        raise error(
            hosts[cycle[0]],
            "jump hosts form a loop: " + " -> ".join(cycle),
            "the last host of a jump chain connects directly",
        )
