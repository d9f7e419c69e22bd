"""`jackin.role.toml`: strict validation, every error located as `<file>:<line>: <field>: ...`.

Pure: text in, Manifest out. Whether the dockerfile exists is checked by the loader, which has
the directory. A role describes a toolchain image and nothing else: keys that would widen what a
sandbox may do are refused with a pointer to where the operator decides that.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from agent_host.wire import USER_RE, SpecError, check_role_user, names_root
from jackin_remote.core.names import NAME_RULE, is_valid_name
from jackin_remote.errors import LocatedError
from jackin_remote.inventory.toml_lines import KeyPath, SourceIndex, index_source
from jackin_remote.inventory.values import ValueProblem as _Problem
from jackin_remote.inventory.values import expect_str as _expect_str
from jackin_remote.inventory.values import shown as _show
from jackin_remote.inventory.values import toml_type_name

MANIFEST_NAME = "jackin.role.toml"
MANIFEST_VERSION = 1
MAX_MANIFEST_BYTES = 64 * 1024
RUNTIMES = ("claude", "codex", "amp", "opencode", "gemini", "shell", "demo")
REQUIRED_KEYS = ("version", "name", "dockerfile", "runtimes", "user")
OPTIONAL_KEYS = ("description",)
KNOWN_KEYS = REQUIRED_KEYS + OPTIONAL_KEYS
DOCS_HINT = "see roles/README.md for the manifest fields"

# Each privilege a role might ask for, and who decides it instead. Matched at any depth, case and
# '-'/'_' insensitive, before any other check: the answer is the same whatever the value.
# Each pointer names only what exists (a test checks every flag against the CLI).
_NET = "launch --network open|none"
_CREDS = (
    "launch --key-from VAR: the runtime's API key, read from a laptop environment variable "
    "(values never live in a role)"
)
_ENV = "launch --env NAME=VALUE"
_DOCKER = "the host's backend in the inventory (`backend`); the host docker socket is never offered"
_CAPS = "the host's backend in the inventory (`backend`); sandboxes get no extra capabilities"
_LIMITS = (
    "the inventory's [hosts.<name>.limits] (memory, cpus, pids, nofile), a config's [limits], "
    "or launch --memory/--cpus/--pids/--nofile"
)
_MOUNTS = "nobody: the session's own checkout, at /workspace, is the only mount"
PRIVILEGE_KEYS: dict[str, str] = {
    "network": _NET,
    "egress": _NET,
    "allow": _NET,
    "credentials": _CREDS,
    "secrets": _CREDS,
    "env": _ENV,
    "environment": _ENV,
    "docker": _DOCKER,
    "docker_socket": _DOCKER,
    "privileged": _CAPS,
    "cap_add": _CAPS,
    "capabilities": _CAPS,
    "devices": _CAPS,
    "security_opt": _CAPS,
    "sudo": "nobody: the agent always runs as the role's non-root `user`",
    "limits": _LIMITS,
    "memory": _LIMITS,
    "cpus": _LIMITS,
    "pids": _LIMITS,
    "nofile": _LIMITS,
    "ulimits": _LIMITS,
    "mounts": _MOUNTS,
    "volumes": _MOUNTS,
    "ports": "nobody: a sandbox publishes no ports",
}

_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f\\]")

_EXAMPLES = {
    "version": "version = 1",
    "name": 'name = "my-role"',
    "dockerfile": 'dockerfile = "Dockerfile"',
    "runtimes": 'runtimes = ["claude", "shell"]',
    "user": 'user = "agent"',
    "description": 'description = "Claude Code and Codex on Debian"',
}


class RoleError(LocatedError):
    """A bad role: where (`file:line`), which field, what is wrong, and what to do."""


@dataclass(frozen=True)
class Manifest:
    version: int
    name: str
    dockerfile: str  # normalized relative posix path
    runtimes: tuple[str, ...]
    user: str
    description: str = ""


@dataclass(frozen=True)
class _Where:
    file: str
    index: SourceIndex

    def error(self, path: KeyPath, message: str, hint: str | None) -> RoleError:
        return RoleError(
            message,
            file=self.file,
            line=self.index.line_of(path),
            field=".".join(path) or None,
            hint=hint,
        )


def parse_manifest(file: str, text: str) -> Manifest:
    """Validate manifest text; `file` names it in errors."""
    document = _parse_toml(file, text)
    where = _Where(file, index_source(text))
    _refuse_privileges(document, where)
    for key in document:
        if key not in KNOWN_KEYS:
            close = difflib.get_close_matches(key, KNOWN_KEYS, n=1, cutoff=0.6)
            hint = (
                f"did you mean `{close[0]}`?" if close else "known keys: " + ", ".join(KNOWN_KEYS)
            )
            raise where.error((key,), f"unknown key {_show(key)}", hint)
    for key in REQUIRED_KEYS:
        if key not in document:
            raise RoleError(
                "missing required key", file=file, field=key,
                hint=f"add `{_EXAMPLES[key]}` ({DOCS_HINT})",
            )  # fmt: skip
    values: dict[str, Any] = {}
    for key, check in _VALIDATORS.items():
        if key not in document:
            continue
        try:
            values[key] = check(document[key])
        except _Problem as problem:
            hint = problem.hint or f"for example: {_EXAMPLES[key]}"
            raise where.error((key,), problem.message, hint) from None
    return Manifest(**values)


def _parse_toml(file: str, text: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib says "... (at line 3, column 7)": lift the line into our prefix.
        message = str(exc)
        match = re.search(r"\(at line (\d+), column (\d+)\)$", message)
        line = int(match.group(1)) if match else None
        reason = message[: match.start()].strip() if match else message
        raise RoleError(
            f"invalid TOML: {reason}", file=file, line=line,
            hint="fix the TOML syntax (see https://toml.io)",
        ) from None  # fmt: skip


def _normalized_key(key: str) -> str:
    return key.strip().lower().replace("-", "_")


def _refuse_privileges(document: dict[str, Any], where: _Where) -> None:
    # Iterative: a hostile file may nest deeper than the recursion limit. Report the first one
    # in the file so the message points where the reader starts.
    found: list[tuple[int, KeyPath, str]] = []
    stack: list[tuple[KeyPath, object]] = [((), document)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, dict):
            for key, child in value.items():
                child_path = (*path, str(key))
                if _normalized_key(str(key)) in PRIVILEGE_KEYS:
                    line = where.index.line_of(child_path) or 0
                    found.append((line, child_path, str(key)))
                stack.append((child_path, child))
        elif isinstance(value, list):
            stack.extend((path, item) for item in value)
    if found:
        _, path, key = min(found)
        decider = PRIVILEGE_KEYS[_normalized_key(key)]
        raise where.error(
            path,
            f"roles cannot grant themselves privileges: `{key}` is the operator's decision "
            f"({decider})",
            f"remove `{key}` from the role; a role only describes the agent's toolchain image",
        )


# ---- value validators (pure: raise _Problem) -------------------------------------------------


def _version(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Problem(f"expected integer, got {toml_type_name(value)}")
    if value != MANIFEST_VERSION:
        raise _Problem(
            f"unsupported manifest version {value}",
            hint=f"this jackin-remote reads version = {MANIFEST_VERSION}; upgrade it or the role",
        )
    return value


def _name(value: object) -> str:
    text = _expect_str(value)
    if not is_valid_name(text):
        raise _Problem(
            f"invalid role name {_show(text)}",
            hint=f"a role name is {NAME_RULE} (it becomes part of image and container names)",
        )
    return text


def check_dockerfile_path(value: object) -> str:
    """A relative path inside the role: no absolute path, no `..`, no control characters."""
    text = _expect_str(value)
    hint = 'a path relative to the role directory, like "Dockerfile" or "docker/agent.Dockerfile"'
    if not text.strip():
        raise _Problem("must not be empty", hint=hint)
    if _CONTROL_RE.search(text):
        raise _Problem(f"invalid path {_show(text)}: control character or backslash", hint=hint)
    if text.startswith(("/", "~")):
        raise _Problem(f"must be relative, got {_show(text)}", hint=hint)
    path = PurePosixPath(text)
    if ".." in path.parts:
        raise _Problem(f"must stay inside the role directory, got {_show(text)} (`..`)", hint=hint)
    if path.as_posix() == ".":
        raise _Problem(f"names a directory, not a file: {_show(text)}", hint=hint)
    return path.as_posix()


def _runtimes(value: object) -> tuple[str, ...]:
    hint = "a non-empty list from: " + ", ".join(RUNTIMES)
    if not isinstance(value, list):
        raise _Problem(f"expected array, got {toml_type_name(value)}", hint=hint)
    if not value:
        raise _Problem("must list at least one runtime", hint=hint)
    seen: list[str] = []
    for item in value:
        if not isinstance(item, str):
            raise _Problem(f"expected strings, got {toml_type_name(item)}", hint=hint)
        if item not in RUNTIMES:
            close = difflib.get_close_matches(item, RUNTIMES, n=1, cutoff=0.6)
            better = f"did you mean `{close[0]}`? " if close else ""
            raise _Problem(f"unknown runtime {_show(item)}", hint=better + hint)
        if item in seen:
            raise _Problem(f"runtime {_show(item)} is listed twice", hint=hint)
        seen.append(item)
    return tuple(seen)


def check_user(value: object) -> str:
    """The non-root user the agent runs as: `name`, `uid`, `name:group` or `uid:gid`.

    The rule is the host's own (agent_host.wire.check_role_user): a role the manifest accepts
    is never refused at launch."""
    text = _expect_str(value)
    hint = 'a non-root user the Dockerfile creates, e.g. "agent" (RUN useradd -m -u 1000 agent)'
    if USER_RE.match(text) and names_root(text):
        raise _Problem(f"the agent must not run as root (got {_show(text)})", hint=hint)
    try:
        return check_role_user(text)
    except SpecError:
        raise _Problem(f"invalid user {_show(text)}", hint=hint) from None


def _description(value: object) -> str:
    text = _expect_str(value)
    if len(text) > 200 or _CONTROL_RE.search(text.replace("\\", "")):
        raise _Problem("must be one line of at most 200 characters")
    return text


_VALIDATORS: dict[str, Callable[[object], Any]] = {
    "version": _version,
    "name": _name,
    "dockerfile": check_dockerfile_path,
    "runtimes": _runtimes,
    "user": check_user,
    "description": _description,
}
