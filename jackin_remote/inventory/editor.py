"""Add and remove hosts in inventory files, keeping the operator's comments and order.

Host tables are cut and inserted as whole lines (a comment block directly above a table belongs
to it): tomlkit alone would attach the comment above `[hosts.b]` to the end of `[hosts.a]`, and
lose it when `a` is removed. tomlkit renders the new table and edits group arrays.

Every change is computed in memory, validated by loading the whole resulting inventory, and only
then written, each file atomically (temp file + os.replace). An inventory that does not load
before the change is refused as well: its error is shown instead.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tomlkit
from tomlkit.exceptions import TOMLKitError
from tomlkit.items import Array

from jackin_remote.core.names import NAME_RULE, is_valid_name
from jackin_remote.errors import InventoryError
from jackin_remote.inventory.loader import inventory_files, parse_inventory
from jackin_remote.inventory.model import BUILTIN_LOCAL, Host, Inventory
from jackin_remote.inventory.toml_lines import blocks_under, index_source, split_lines

NEW_FILE_MODE = 0o644  # inventories hold no secrets and are meant to be checked in


# ---- public API ----------------------------------------------------------------------------


def add_host(
    file: Path, name: str, fields: Mapping[str, object], *, inventory: Path | None = None
) -> None:
    """Declare host `name` with `fields` (TOML keys of a host table; None values are skipped)
    in `file`, creating it if missing. `inventory` is the file or directory whose hosts must not
    already include `name`; it defaults to the file's directory."""
    if not is_valid_name(name):
        raise InventoryError(
            f"invalid host name {name!r}",
            file=str(file),
            field=f"hosts.{name}",
            hint=f"names use {NAME_RULE}",
        )
    texts = _inventory_texts(inventory or file.parent, file)
    existing = _declared_host(parse_inventory(_as_sources(texts)), name)
    if existing is not None:
        raise InventoryError(
            f"host `{name}` already exists (declared at {existing.where})",
            file=str(file),
            field=f"hosts.{name}",
            hint="pick another name, or remove the existing host first",
        )
    target = _key_for(texts, file)
    changed = {target: insert_host_table(texts[target], name, fields)}
    _validate({**texts, **changed})
    _write_all(changed)


def remove_host(file_or_dir: Path, name: str, *, inventory: Path | None = None) -> Path:
    """Remove host `name`: its table, and its name from every group list in the inventory.
    Given a file, the host must be declared there (its directory's other files are searched for
    group lists); given a directory, it is found there. Returns the file that declared it."""
    if file_or_dir.is_dir():
        texts = _inventory_texts(inventory or file_or_dir, None)
    else:
        texts = _inventory_texts(inventory or file_or_dir.parent, file_or_dir)
    current = parse_inventory(_as_sources(texts))
    host = _declared_host(current, name)
    if host is None:
        raise InventoryError(
            f"no host `{name}` is declared in the inventory",
            file=str(file_or_dir),
            hint="known hosts: " + ", ".join(current.hosts),
        )
    host_file = next(path for path in texts if str(path) == host.source_file)
    if not file_or_dir.is_dir() and host_file.resolve() != file_or_dir.resolve():
        raise InventoryError(
            f"host `{name}` is declared at {host.where}, not in this file", file=str(file_or_dir)
        )
    _refuse_if_jump_host(current, host)

    changed: dict[Path, str] = {}
    for path, text in texts.items():
        new_text = drop_group_member(text, name)
        if path == host_file:
            new_text = drop_host_table(new_text, name)
        if new_text != text:
            changed[path] = new_text
    _validate({**texts, **changed})
    # Group edits first, the host's own file last: if a write fails midway the inventory
    # still loads (the host exists, merely out of some groups).
    _write_all(dict(sorted(changed.items(), key=lambda item: item[0] == host_file)))
    return host_file


# ---- pure text edits -----------------------------------------------------------------------


def render_host_table(name: str, fields: Mapping[str, object]) -> list[str]:
    """`[hosts.NAME]` and its keys as TOML lines; a dict value (limits) becomes an inline table."""
    table = tomlkit.table()
    try:
        for key, value in fields.items():
            if value is None:
                continue
            if isinstance(value, Mapping):
                inline = tomlkit.inline_table()
                inline.update(value)
                table.add(key, inline)
            else:
                table.add(key, tomlkit.item(list(value) if isinstance(value, tuple) else value))
        hosts = tomlkit.table(is_super_table=True)
        hosts.append(name, table)
        document = tomlkit.document()
        document.add("hosts", hosts)
        rendered = tomlkit.dumps(document)
    except (TOMLKitError, TypeError, ValueError) as exc:
        raise InventoryError(
            f"cannot write these fields as TOML: {exc}", field=f"hosts.{name}"
        ) from exc
    return rendered.strip("\n").split("\n")


def insert_host_table(text: str, name: str, fields: Mapping[str, object]) -> str:
    """Text with a new host table after the last existing host table (or at the end)."""
    lines = _trim_trailing_blanks(split_lines(text))
    blocks = blocks_under(lines, index_source(text).headers, ("hosts",))
    at = min(blocks[-1].stop, len(lines)) if blocks else len(lines)
    before = _trim_trailing_blanks(lines[:at])
    after = _trim_leading_blanks(lines[at:])
    new_lines = [*before, *([""] if before else []), *render_host_table(name, fields)]
    if after:
        new_lines += ["", *after]
    return _join(new_lines, like=text)


def drop_host_table(text: str, name: str) -> str:
    """Text without host `name`: its [hosts.NAME] (and [hosts.NAME.*]) blocks with the comments
    directly above them, or its key under [hosts] when written inline or dotted."""
    lines = split_lines(text)
    blocks = blocks_under(lines, index_source(text).headers, ("hosts", name))
    if not blocks:
        return _drop_inline_host(text, name)
    for block in reversed(blocks):
        del lines[block.start : block.stop]
        _squeeze_blank_at(lines, block.start)
    return _join(_trim_trailing_blanks(lines), like=text)


def drop_group_member(text: str, name: str) -> str:
    """Text with `name` removed from every group array; unchanged text if it is in none."""
    try:
        document = tomlkit.parse(text)
    except TOMLKitError as exc:
        raise InventoryError(f"invalid TOML: {exc}") from exc
    groups = document.get("groups")
    if not isinstance(groups, Mapping):
        return text
    changed = False
    for group in groups.values():
        # `NAME = [...]`, or a table `[groups.NAME]` with `members = [...]`
        members = group.get("members") if isinstance(group, Mapping) else group
        while isinstance(members, Array) and name in members:
            members.remove(name)
            changed = True
    return tomlkit.dumps(document) if changed else text


def _drop_inline_host(text: str, name: str) -> str:
    document = tomlkit.parse(text)
    hosts = document.get("hosts")
    if isinstance(hosts, Mapping) and name in hosts:
        del document["hosts"][name]
    return tomlkit.dumps(document)


def _trim_trailing_blanks(lines: list[str]) -> list[str]:
    end = len(lines)
    while end and not lines[end - 1].strip():
        end -= 1
    return lines[:end]


def _trim_leading_blanks(lines: list[str]) -> list[str]:
    start = 0
    while start < len(lines) and not lines[start].strip():
        start += 1
    return lines[start:]


def _squeeze_blank_at(lines: list[str], cut: int) -> None:
    """Cutting a table out can leave two blank lines where there was one (or a blank first
    line); drop the extra one at the cut, and nowhere else."""
    previous_blank = cut == 0 or not lines[cut - 1].strip()
    while previous_blank and cut < len(lines) and not lines[cut].strip():
        del lines[cut]


def _join(lines: list[str], *, like: str) -> str:
    newline = "\r\n" if "\r\n" in like else "\n"
    return newline.join(lines) + newline if lines else ""


# ---- inventory files -----------------------------------------------------------------------


def _inventory_texts(scope: Path, target: Path | None) -> dict[Path, str]:
    """Current text of every file of the inventory at `scope`, plus `target` ("" if missing)."""
    files = inventory_files(scope) if scope.exists() else []
    if target is not None and not any(_same_file(path, target) for path in files):
        files.append(target)
    return {path: _read_text(path) for path in files}


def _same_file(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve()


def _key_for(texts: Mapping[Path, str], file: Path) -> Path:
    return next(path for path in texts if _same_file(path, file))


def _read_text(path: Path) -> str:
    if not path.exists():
        return ""
    try:
        return path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise InventoryError(f"cannot read: {exc.strerror}", file=str(path)) from exc
    except UnicodeDecodeError as exc:
        raise InventoryError("not UTF-8 text", file=str(path)) from exc


def _as_sources(texts: Mapping[Path, str]) -> list[tuple[str, str]]:
    return [(str(path), text) for path, text in texts.items()]


def _validate(texts: Mapping[Path, str]) -> Inventory:
    return parse_inventory(_as_sources(texts))


def _declared_host(inventory: Inventory, name: str) -> Host | None:
    """The host as declared in a file; the builtin `local` does not count."""
    host = inventory.hosts.get(name)
    return host if host is not None and host.source_file != BUILTIN_LOCAL.source_file else None


def _refuse_if_jump_host(inventory: Inventory, host: Host) -> None:
    riders = [other.name for other in inventory.hosts.values() if other.jump == host.name]
    if riders:
        raise InventoryError(
            f"host `{host.name}` is the jump host of " + ", ".join(riders),
            file=host.source_file,
            line=host.source_line,
            field=f"hosts.{host.name}",
            hint="change or remove their jump first",
        )


# ---- writing -------------------------------------------------------------------------------


def _write_all(changed: Mapping[Path, str]) -> None:
    for path, text in changed.items():
        write_atomic(path, text)


def write_atomic(path: Path, text: str) -> None:
    """Replace `path` (through symlinks) with `text` in one step; readers see old or new."""
    real = path.resolve()
    try:
        real.parent.mkdir(parents=True, exist_ok=True)
        mode = stat.S_IMODE(real.stat().st_mode) if real.exists() else NEW_FILE_MODE
        fd, tmp = tempfile.mkstemp(dir=real.parent, prefix=f".{real.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, mode)
            os.replace(tmp, real)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
    except OSError as exc:
        raise InventoryError(f"cannot write: {exc.strerror}", file=str(path)) from exc


# ---- egress rules (`policy allow|deny`) ----------------------------------------------------


def add_egress_rule(
    file: Path, action: str, pattern: str, host: str | None, *, inventory: Path | None = None
) -> tuple[Path, bool]:
    """Add `pattern` to the `allow` or `deny` list of host `host`'s `[hosts.<name>.egress]` (in
    the file declaring it), or of `file`'s `[defaults.egress]` (they apply to that file's
    hosts). Comments and order are kept (tomlkit); the result is validated as a whole inventory
    before anything is written. Returns (the file, whether it changed: False if already there)."""
    if action not in ("allow", "deny"):
        raise ValueError(action)
    scope = inventory or file.parent
    texts = _inventory_texts(scope, None if host else file)
    if host is not None:
        declared = _declared_host(parse_inventory(_as_sources(texts)), host)
        if declared is None:
            raise InventoryError(f"no host `{host}` is declared in the inventory",
                                 file=str(scope),
                                 hint="see `jackin-remote hosts list`")  # fmt: skip
        file = Path(declared.source_file)
    target = _key_for(texts, file)
    path = ("hosts", host, "egress") if host is not None else ("defaults", "egress")
    text = texts[target]
    document = tomlkit.parse(text)
    table: Any = document
    for key in path:
        table = table.get(key) if hasattr(table, "get") else None
        if table is None:
            break
    if table is not None:  # the list's table exists: add to it in place
        patterns = table.get(action)
        if patterns is not None and pattern in [str(p) for p in patterns]:
            return target, False
        if patterns is None:
            new_text = _insert_egress_key(text, path, action, pattern) or ""
            if not new_text:  # an inline or dotted table: tomlkit places the key
                table[action] = tomlkit.array()
                table[action].append(pattern)
                new_text = tomlkit.dumps(document)
        else:
            patterns.append(pattern)  # in place: the array's own line changes
            new_text = tomlkit.dumps(document)
    else:
        new_text = _insert_egress_table(text, path, action, pattern)
    changed = {target: new_text}
    _validate({**texts, **changed})
    _write_all(changed)
    return target, True


def _insert_egress_key(text: str, path: tuple[str, ...], action: str, pattern: str) -> str | None:
    """Text with `action = [pattern]` as the last key of the `[<path>]` table written as a
    header; None when there is no such header (an inline or dotted table)."""
    lines = _trim_trailing_blanks(split_lines(text))
    blocks = [b for b in blocks_under(lines, index_source(text).headers, path)]
    if not blocks:
        return None
    block = blocks[0]
    end = block.stop
    while end > block.start + 1 and (not lines[end - 1].strip()
                                     or lines[end - 1].lstrip().startswith("#")):  # fmt: skip
        end -= 1
    value = tomlkit.item([pattern]).as_string()
    return _join([*lines[:end], f"{action} = {value}", *lines[end:]], like=text)


def _insert_egress_table(text: str, path: tuple[str, ...], action: str, pattern: str) -> str:
    """Text with a new `[<path>]` table holding `action = [pattern]`, right after the blocks of
    its parent table (so a comment above the next table stays with it); at the end when the
    parent has no table of its own here."""
    lines = _trim_trailing_blanks(split_lines(text))
    blocks = blocks_under(lines, index_source(text).headers, path[:-1])
    at = min(blocks[-1].stop, len(lines)) if blocks else len(lines)
    before = _trim_trailing_blanks(lines[:at])
    after = _trim_leading_blanks(lines[at:])
    value = tomlkit.item([pattern]).as_string()
    new_lines = [*before, *([""] if before else []), f"[{'.'.join(path)}]", f"{action} = {value}"]
    if after:
        new_lines += ["", *after]
    return _join(new_lines, like=text)
