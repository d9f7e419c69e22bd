"""A workspace's own egress rules: `[egress]` in `<workspace>/.jackin/config.toml`.

    [egress]
    allow = ["**.internal.example.com", "pypi.mirror.local:8443"]
    deny = ["secrets.internal.example.com"]

The file comes with the code (often a clone of someone else's repository), so it is untrusted:
its rules apply to `--network allowlist` sessions only once the operator has approved that exact
content (`jackin-remote policy approve`), recorded in the laptop's store as the sha256 of the
file's bytes for the workspace's resolved path. A changed file needs a new approval. Until then
`launch` refuses (naming the file and the command), `explain` shows them as pending, and
`--workspace-rules ignore` launches without them.

The file is opened without following links: a `.jackin` or `config.toml` that is a symbolic
link is refused (each step is opened relative to the one before, so the file read is the one
inside the workspace), so is anything but a regular file, a file over MAX_BYTES and more than
MAX_RULES rules. `[launch]` and `[limits]` of the same file are config.py's (approved by
`config approve`); any other section is refused here.
"""

from __future__ import annotations

import difflib
import errno
import hashlib
import os
import re
import stat
import tomllib
from dataclasses import dataclass
from pathlib import Path

from jackin_remote.core.egress_rules import (
    APPROVED,
    CHANGED,
    IGNORED,
    NOT_APPROVED,
    NOT_USED,
    EgressRule,
    WorkspaceRules,
)
from jackin_remote.errors import LocatedError, UsageError
from jackin_remote.inventory.toml_lines import index_source, split_lines
from jackin_remote.inventory.values import shown, toml_type_name
from jackin_remote.ui.safe import visible

DIR_NAME = ".jackin"
FILE_NAME = "config.toml"
RULES_FILE = f"{DIR_NAME}/{FILE_NAME}"  # workspace-relative: rule origins are written so
MAX_BYTES = 64 * 1024
MAX_RULES = 100
SECTIONS = ("launch", "limits", "egress")  # launch and limits: config.py reads them
EGRESS_KEYS = ("allow", "deny")
MODES = ("apply", "ignore")  # --workspace-rules
PATTERN_HINT = 'a host, *.domain, **.domain, host:port or an IP, e.g. "**.corp.example.com"'


class WorkspaceRulesError(LocatedError):
    unnamed_file = RULES_FILE


@dataclass(frozen=True)
class RulesFile:
    """The file as read: where, the sha256 of its bytes (what an approval is of), its rules."""

    workspace: Path  # resolved
    path: Path
    digest: str
    rules: tuple[EgressRule, ...]  # (action, pattern, ".jackin/config.toml:LINE")


def workspace_key(workspace: Path) -> str:
    """The workspace as approvals name it: its resolved absolute path."""
    return str(workspace.expanduser().resolve())


def approve_command(workspace: Path) -> str:
    return f"jackin-remote policy approve {workspace_key(workspace)}"


# -- reading ---------------------------------------------------------------------------------
def read_rules_file(workspace: Path) -> RulesFile | None:
    """The workspace's rules file, validated; None when there is none. Refuses links, anything
    but a regular file, and a file over MAX_BYTES (WorkspaceRulesError naming the file)."""
    root = Path(workspace_key(workspace))
    path = root / DIR_NAME / FILE_NAME
    data = _read_inside(root, path)
    if data is None:
        return None
    rules = parse_rules(data, str(path))
    return RulesFile(root, path, hashlib.sha256(data).hexdigest(), rules)


def _read_inside(root: Path, path: Path) -> bytes | None:
    flags = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)
    nofollow = getattr(os, "O_NOFOLLOW", 0)
    try:
        top = os.open(root, flags | os.O_DIRECTORY)
    except OSError:
        return None  # no workspace: the workspace scan says so
    try:
        folder = _open_step(top, DIR_NAME, flags | os.O_DIRECTORY | nofollow, path.parent)
        if folder is None:
            return None
        try:
            fd = _open_step(folder, FILE_NAME, flags | nofollow | os.O_NONBLOCK, path)
            if fd is None:
                return None
            try:
                info = os.fstat(fd)
                if not stat.S_ISREG(info.st_mode):
                    raise WorkspaceRulesError("not a regular file: refused", file=str(path))
                if info.st_size > MAX_BYTES:
                    raise _too_big(path)
                chunks = []
                size = 0
                while size <= MAX_BYTES:
                    chunk = os.read(fd, MAX_BYTES + 1 - size)
                    if not chunk:
                        break
                    chunks.append(chunk)
                    size += len(chunk)
                if size > MAX_BYTES:
                    raise _too_big(path)
                return b"".join(chunks)
            finally:
                os.close(fd)
        finally:
            os.close(folder)
    finally:
        os.close(top)


def _open_step(parent: int, name: str, flags: int, shown_path: Path) -> int | None:
    """`name` opened relative to the directory `parent`, never through a link; None when it
    does not exist."""
    try:
        return os.open(name, flags, dir_fd=parent)
    except FileNotFoundError:
        return None
    except OSError as exc:
        try:
            info = os.lstat(name, dir_fd=parent)
        except OSError:
            info = None
        if info is not None and stat.S_ISLNK(info.st_mode):
            raise WorkspaceRulesError(
                "is a symbolic link: refused (a workspace's config must be a file inside it)",
                file=str(shown_path),
                hint="replace the link with the file itself, or launch with --workspace-rules "
                "ignore",
            ) from None
        if exc.errno == errno.ENOTDIR:
            raise WorkspaceRulesError("not a directory: refused", file=str(shown_path)) from None
        raise WorkspaceRulesError(f"cannot read: {exc.strerror}", file=str(shown_path)) from None


def _too_big(path: Path) -> WorkspaceRulesError:
    return WorkspaceRulesError(f"larger than {MAX_BYTES // 1024} KiB: refused", file=str(path))


def parse_rules(data: bytes, file: str) -> tuple[EgressRule, ...]:
    """The `[egress]` rules of a workspace config's bytes, each with the line it is written on.
    Pure; every problem is `file:line: field: message` (WorkspaceRulesError)."""
    from agent_host.egress import parse_pattern
    from agent_host.wire import SpecError

    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad_line = data[: exc.start].count(b"\n") + 1
        raise WorkspaceRulesError("not UTF-8 text", file=file, line=bad_line,
                                  hint="save it as UTF-8") from None  # fmt: skip
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"\(at line (\d+), column (\d+)\)$", str(exc))
        reason = str(exc)[: match.start()].strip() if match else str(exc)
        raise WorkspaceRulesError(
            f"invalid TOML: {reason}", file=file, line=int(match.group(1)) if match else None,
            hint="fix the TOML syntax (see https://toml.io)",
        ) from None  # fmt: skip
    index = index_source(text)

    def error(path: tuple[str, ...], message: str, hint: str, line: int | None = None) -> Exception:
        field = visible(".".join(path), multiline=False)  # a key may hold any character
        return WorkspaceRulesError(message, file=file, line=line or index.line_of(path),
                                   field=field, hint=hint)  # fmt: skip

    for section in document:
        if section not in SECTIONS:
            hint = _suggest(section, SECTIONS)
            if section in EGRESS_KEYS:
                hint = "rules go under [egress]"
            raise error((section,), f"unknown section {shown(section)}", hint)
    table = document.get("egress", {})
    if not isinstance(table, dict):
        hint = "write it as [egress] with allow = [...] and deny = [...] below it"
        raise error(("egress",), f"expected a table, got {toml_type_name(table)}", hint)
    for key in table:
        if key not in EGRESS_KEYS:
            raise error(("egress", key), f"unknown key {shown(key)}", _suggest(key, EGRESS_KEYS))
    rules: list[EgressRule] = []
    for action in EGRESS_KEYS:
        if action not in table:
            continue
        key_path = ("egress", action)
        patterns = table[action]
        example = f'for example: {action} = ["**.corp.example.com", "pypi.mirror.local:8443"]'
        if not isinstance(patterns, list):
            raise error(key_path, f"expected a list of patterns, got {toml_type_name(patterns)}",
                        example)  # fmt: skip
        key_line = index.exact.get(key_path) or index.line_of(key_path)
        lines: list[int | None] = [*_string_lines(text, key_line)] if key_line else []
        if len(lines) != len(patterns):
            lines = [key_line] * len(patterns)  # one line per rule when we can tell, else its key's
        for number, (pattern, line) in enumerate(zip(patterns, lines, strict=True)):
            field = (*key_path[:-1], f"{action}[{number}]")
            if not isinstance(pattern, str):
                raise error(field, f"expected a pattern (string), got {toml_type_name(pattern)}",
                            example, line)  # fmt: skip
            try:
                parse_pattern(pattern, ".".join(field))
            except SpecError as exc:
                raise error(field, exc.problem, PATTERN_HINT, line) from None
            if len(rules) >= MAX_RULES:
                raise error(field, f"more than {MAX_RULES} rules", "keep a workspace's rules to "
                            "what its code needs; a team's go in the inventory", line)  # fmt: skip
            where = RULES_FILE if line is None else f"{RULES_FILE}:{line}"
            rules.append((action, pattern, where))
    return tuple(rules)


def _suggest(word: str, choices: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"did you mean `{close[0]}`?" if close else "known: " + ", ".join(choices)


def _string_lines(text: str, key_line: int) -> list[int]:
    """The line of each string in the array whose key is written on `key_line` (1-based). Best
    effort on text tomllib accepted: [] when the value is not a plain array of strings."""
    lines = split_lines(text)
    if not 0 < key_line <= len(lines):
        return []
    first = lines[key_line - 1]
    equals = _outside_quotes(first, "=")
    if equals is None:
        return []
    rest = "\n".join([first[equals + 1 :], *lines[key_line:]])
    found: list[int] = []
    line, pos, depth = key_line, 0, 0
    while pos < len(rest):
        char = rest[pos]
        if char == "\n":
            line += 1
        elif char == "#":
            end = rest.find("\n", pos)
            pos = len(rest) if end < 0 else end
            continue
        elif char == "[":
            depth += 1
            if depth > 1:
                return []
        elif char == "]":
            return found if depth == 1 else []
        elif char in "\"'" and depth == 1:
            found.append(line)
            after = _string_end(rest, pos)
            if after is None:
                return []
            line += rest.count("\n", pos, after)
            pos = after
            continue
        elif char in "{[":
            return []
        elif char not in " \t\r," and depth == 1:  # a number, a boolean, a date: one token
            found.append(line)
            while pos < len(rest) and rest[pos] not in " \t\r\n,]#":
                pos += 1
            continue
        elif char not in " \t\r,":
            return []
        pos += 1
    return []


def _outside_quotes(line: str, wanted: str) -> int | None:
    quote = None
    for pos, char in enumerate(line):
        if quote is None and char == wanted:
            return pos
        if char in "\"'" and quote in (None, char):
            quote = None if quote == char else char
    return None


def _string_end(text: str, start: int) -> int | None:
    """The index after the TOML string starting at `start`."""
    for delimiter in ('"""', "'''", '"', "'"):
        if text.startswith(delimiter, start):
            break
    pos = start + len(delimiter)
    while pos < len(text):
        if delimiter[0] == '"' and text[pos] == "\\":
            pos += 2
            continue
        if text.startswith(delimiter, pos):
            end = pos + len(delimiter)
            while len(delimiter) == 3 and text.startswith(delimiter[0], end) and end - pos < 5:
                end += 1  # """a"""" : up to two quotes belong to the string
            return end
        if len(delimiter) == 1 and text[pos] == "\n":
            return None
        pos += 1
    return None


# -- approvals -------------------------------------------------------------------------------
def approved_digest(workspace: Path) -> str | None:
    """The sha256 the operator approved for this workspace's file, if any. Reads only: no
    database is created to find none."""
    from jackin_remote.store import Store

    store = Store.open_existing()
    return None if store is None else store.workspace_rules_digest(workspace_key(workspace))


def status_of(found: RulesFile, approved: str | None) -> str:
    if approved == found.digest:
        return APPROVED
    return NOT_APPROVED if approved is None else CHANGED


def judge(
    workspace: Path, *, mode: str = "apply", network: str = "allowlist"
) -> WorkspaceRules | None:
    """What a launch does with the workspace's rules: None when there are none (no file, or no
    rule in it). With another network than allowlist they do not matter: a file that cannot be
    read is then only mentioned, not refused."""
    if mode not in MODES:
        raise UsageError(f"--workspace-rules {mode!r}: expected apply or ignore")
    root = Path(workspace_key(workspace))
    file = str(root / DIR_NAME / FILE_NAME)
    command = approve_command(root)
    if mode == "ignore":
        if not os.path.lexists(file):
            return None
        return WorkspaceRules(IGNORED, (), file, command)
    if network != "allowlist":
        try:
            found = read_rules_file(root)
        except WorkspaceRulesError as exc:
            return WorkspaceRules(
                NOT_USED, (), file, command, problem=f"it is invalid: {exc.message}"
            )
        if found is None or not found.rules:
            return None
        return WorkspaceRules(NOT_USED, found.rules, file, command)
    found = read_rules_file(root)
    if found is None or not found.rules:
        return None
    return WorkspaceRules(status_of(found, approved_digest(root)), found.rules, file, command)


def refusal(rules: WorkspaceRules) -> UsageError:
    """launch's error for rules that are not approved: the file, the command, the way around."""
    why = "are not approved" if rules.status == NOT_APPROVED else "changed since you approved them"
    return UsageError(
        f"{rules.file}: this workspace's egress rules {why} ({len(rules.rules)} rule(s): they "
        "would widen or narrow what the sandbox reaches)",
        hint=f"read them, then run `{rules.approve}`; or launch without them: "
        "--workspace-rules ignore",
    )


def is_pending(rules: WorkspaceRules | None) -> bool:
    return rules is not None and rules.status in (NOT_APPROVED, CHANGED)
