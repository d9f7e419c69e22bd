"""Launch defaults: the operator's config file, and a workspace's own once the operator approves it.

    <config dir>/config.toml           the operator's (JACKIN_HOME/config/config.toml when set;
                                       else platformdirs' user_config_dir, ~/.config/jackin-remote)
    <workspace>/.jackin/config.toml    the workspace's: applied only once approved

Both files hold the same keys:

    [launch]
    role = "roles/agent-clis"   # a directory (relative: to the file's place, see below) or git URL
    runtime = "claude"
    on = "builders"             # host, group, label:X or all
    [limits]                    # each sandbox's, replacing the inventory's for these launches
    memory = "4g"
    cpus = 2.0
    pids = 512
    nofile = 4096

A relative `role` in the operator's file is read against that file's directory; in a workspace's
file, against the workspace (the directory holding `.jackin/`). Precedence, per value: the
command-line flag > an approved workspace file > the operator's file > the builtin default.

A workspace file comes with the code (a clone of someone else's repository), and it chooses
where the code goes and what runs: it applies only once the operator has approved its exact
content. Approvals are sha256 digests of the file, kept on the laptop (`<state>/approved-configs
.json`); a changed file needs a new approval. A run without a terminal never prompts: it refuses,
naming the command that approves.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import tempfile
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent_host.wire import LIMIT_NAMES
from jackin_remote import paths
from jackin_remote.errors import LocatedError, UsageError
from jackin_remote.inventory.loader import LIMIT_VALIDATORS
from jackin_remote.inventory.toml_lines import index_source
from jackin_remote.inventory.values import ValueProblem, expect_str, shown, toml_type_name
from jackin_remote.roles.manifest import RUNTIMES

CONFIG_NAME = "config.toml"
WORKSPACE_CONFIG = Path(".jackin") / CONFIG_NAME
APPROVALS_NAME = "approved-configs.json"
MAX_CONFIG_BYTES = 64 * 1024

BUILTIN_ON = "local"  # a launch never sends a workspace to a server nobody named
SECTIONS: dict[str, tuple[str, ...]] = {
    "launch": ("role", "runtime", "on"),
    "limits": LIMIT_NAMES,
}
KEYS = ("on", "role", "runtime", *(f"limits.{name}" for name in LIMIT_NAMES))
# Read and approved elsewhere: [egress] by workspace_rules.py (`policy approve`).
OTHER_SECTIONS = ("egress",)
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_EXAMPLES = {
    "role": 'role = "roles/agent-clis"',
    "runtime": 'runtime = "claude"',
    "on": 'on = "all"',
    "memory": 'memory = "4g"',
    "cpus": "cpus = 2.0",
    "pids": "pids = 512",
    "nofile": "nofile = 4096",
}


class ConfigError(LocatedError):
    unnamed_file = "<config>"


# -- one file --------------------------------------------------------------------------------
@dataclass(frozen=True)
class ConfigFile:
    path: Path
    digest: str  # sha256 of the bytes: what an approval is of
    values: dict[str, Any]  # "on", "role", "runtime", "limits.memory", ...
    lines: dict[str, int | None]  # where each value is written

    def where(self, key: str) -> str:
        line = self.lines.get(key)
        return f"{self.path}:{line}" if line is not None else str(self.path)


def operator_config_path() -> Path:
    return paths.config_dir() / CONFIG_NAME


def workspace_config_path(workspace: Path) -> Path:
    return workspace.expanduser().absolute() / WORKSPACE_CONFIG


def read_config(path: Path, *, relative_to: Path) -> ConfigFile | None:
    """The validated file at `path`, or None when there is none. A relative role is made
    absolute against `relative_to`."""
    try:
        data = path.read_bytes()[: MAX_CONFIG_BYTES + 1]
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", file=str(path)) from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"larger than {MAX_CONFIG_BYTES} bytes", file=str(path))
    values, lines = parse_config(str(path), data)
    if "role" in values:
        values["role"] = resolve_role(values["role"], relative_to)
    return ConfigFile(path, hashlib.sha256(data).hexdigest(), values, lines)


def parse_config(file: str, data: bytes) -> tuple[dict[str, Any], dict[str, int | None]]:
    """Validate a config file's content; every problem is `file:line: field: message`. Pure."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError("not UTF-8 text", file=file, line=line, hint="save it as UTF-8") from None
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"\(at line (\d+), column (\d+)\)$", str(exc))
        reason = str(exc)[: match.start()].strip() if match else str(exc)
        raise ConfigError(
            f"invalid TOML: {reason}", file=file, line=int(match.group(1)) if match else None,
            hint="fix the TOML syntax (see https://toml.io)",
        ) from None  # fmt: skip
    index = index_source(text)

    def error(path: tuple[str, ...], message: str, hint: str | None) -> ConfigError:
        return ConfigError(
            message, file=file, line=index.line_of(path), field=".".join(path), hint=hint
        )

    values: dict[str, Any] = {}
    lines: dict[str, int | None] = {}
    for section, table in document.items():
        if section in OTHER_SECTIONS:
            continue
        if section not in SECTIONS:
            raise error((section,), "unknown section", _suggest(section, tuple(SECTIONS)))
        if not isinstance(table, dict):
            raise error((section,), f"expected a table, got {toml_type_name(table)}",
                        f"write it as [{section}]")  # fmt: skip
        for key, raw in table.items():
            if key not in SECTIONS[section]:
                raise error((section, key), "unknown key", _suggest(key, SECTIONS[section]))
            try:
                value = _VALIDATORS[key](raw)
            except ValueProblem as problem:
                raise error((section, key), problem.message,
                            problem.hint or f"for example: {_EXAMPLES[key]}") from None  # fmt: skip
            name = key if section == "launch" else f"{section}.{key}"
            values[name] = value
            lines[name] = index.line_of((section, key))
    return values, lines


def _suggest(word: str, choices: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"did you mean `{close[0]}`?" if close else "known: " + ", ".join(choices)


def _text(value: object) -> str:
    text = expect_str(value)
    if not text.strip() or _CONTROL_RE.search(text):
        raise ValueProblem(f"must be a non-empty line of text, got {shown(text)}")
    return text


def _runtime(value: object) -> str:
    text = expect_str(value)
    if text not in RUNTIMES:
        raise ValueProblem(f"unknown runtime {shown(text)}", hint="one of: " + ", ".join(RUNTIMES))
    return text


_VALIDATORS: dict[str, Callable[[object], Any]] = {
    "role": _text,
    "on": _text,
    "runtime": _runtime,
    **LIMIT_VALIDATORS,
}


def resolve_role(role: str, base: Path) -> str:
    """A role path made absolute against `base` (the cwd for --role, the file's place for a
    config); a git URL is left as it is."""
    from jackin_remote.roles.source import parse_git_source

    if parse_git_source(role) is not None:
        return role
    path = Path(role).expanduser()
    return str(path if path.is_absolute() else base / path)


# -- approvals -------------------------------------------------------------------------------
def approvals_path() -> Path:
    return paths.state_dir() / APPROVALS_NAME


def _approvals() -> dict[str, str]:
    try:
        data = json.loads(approvals_path().read_text())
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, str)} if isinstance(data, dict) else {}


def is_approved(file: ConfigFile) -> bool:
    return _approvals().get(str(file.path)) == file.digest


def approval_status(file: ConfigFile | None) -> str:
    if file is None:
        return "absent"
    if is_approved(file):
        return "approved"
    return "changed since approved" if str(file.path) in _approvals() else "not approved"


def approve(file: ConfigFile) -> None:
    """Record that the operator approves this exact content of the file."""
    approvals = _approvals()
    approvals[str(file.path)] = file.digest
    target = approvals_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".approved-", dir=target.parent)
    with os.fdopen(fd, "w") as handle:
        json.dump(approvals, handle, indent=2, sort_keys=True)
    os.replace(tmp, target)


def approve_command(workspace: Path) -> str:
    return f"jackin-remote config approve {workspace}"


def unapproved_error(file: ConfigFile, workspace: Path) -> UsageError:
    changed = approval_status(file) == "changed since approved"
    return UsageError(
        f"{file.path}: this workspace's config "
        f"{'changed since you approved it' if changed else 'is not approved'}; "
        "it would choose the role, runtime, hosts or limits of this launch",
        hint=f"read it, then run `{approve_command(workspace)}`; or launch with "
        "--ignore-workspace-config",
    )


# -- the values in effect --------------------------------------------------------------------
@dataclass(frozen=True)
class Setting:
    value: Any
    source: str  # "--flag", "<file>:<line>", "builtin", "inventory"
    note: str = ""


def effective(
    operator: ConfigFile | None,
    workspace: ConfigFile | None,
    flags: Mapping[str, Any] | None = None,
) -> dict[str, Setting]:
    """Every value with where it came from. Pure: `workspace` is given only when it applies
    (approved). Flags (name -> value, None when not given) win over the files."""
    flags = flags or {}
    out: dict[str, Setting] = {}
    for key in KEYS:
        if flags.get(key) is not None:
            out[key] = Setting(flags[key], f"--{key.split('.')[-1]}")
            continue
        for file in (workspace, operator):
            if file is not None and key in file.values:
                out[key] = Setting(file.values[key], file.where(key))
                break
        else:
            out[key] = _builtin(key)
    return out


def _builtin(key: str) -> Setting:
    if key == "on":
        return Setting(BUILTIN_ON, "builtin")
    if key == "runtime":
        return Setting(None, "builtin", "inferred when the role declares exactly one runtime")
    if key == "role":
        return Setting(None, "builtin", "required: --role or `role` under [launch]")
    return Setting(None, "inventory", "each host's limits in the inventory")


def limit_overrides(settings: Mapping[str, Setting]) -> tuple[tuple[str, Any, str], ...]:
    """(limit, value, where it was set) for each limit a flag or a config sets: they replace the
    inventory's for this launch. `where` is the flag (`--cpus`) or the file and line."""
    return tuple(
        (key.split(".", 1)[1], setting.value, setting.source)
        for key, setting in settings.items()
        if key.startswith("limits.") and setting.source != "inventory"
    )


def choose_runtime(given: str | None, role_name: str, runtimes: tuple[str, ...]) -> str:
    """The runtime to launch: the one given, else the role's only one. Never a silent default:
    a role with several runtimes needs the operator's choice."""
    if given is not None:
        return given
    if len(runtimes) == 1:
        return runtimes[0]
    return _runtime_required(role_name, runtimes)


def _runtime_required(role_name: str, runtimes: tuple[str, ...]) -> str:
    raise UsageError(
        f"--runtime is required: role {role_name} declares {len(runtimes)} runtimes "
        f"({', '.join(runtimes)})",
        hint=f"pass --runtime {runtimes[0]} (or another of them), or set `runtime` under "
        f"[launch] in {operator_config_path()}",
    )
