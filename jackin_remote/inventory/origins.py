"""Where a host's limits were set: the file, line and key, for messages like
`hosts.toml:17 defaults.limits.cpus = 4, but build-1 has 2 CPUs`.

The loader merges a file's [defaults] under each host table key by key, so a limit comes from
`[hosts.<name>.limits]` (or an inline `limits = {...}`), else from that file's
`[defaults.limits]`, else from the built-in defaults. This reads the host's own file again
(read-only) and asks the same line index the loader's errors use.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent_host.wire import LIMIT_NAMES
from jackin_remote.core.capacity import Setting
from jackin_remote.core.disk import DiskSetting
from jackin_remote.inventory.model import Host
from jackin_remote.inventory.toml_lines import KeyPath, index_source

LIMIT_KEYS = LIMIT_NAMES


def limit_settings(
    host: Host, declared: Host | None = None, sources: Mapping[str, str] | None = None
) -> list[Setting]:
    """The limits `host` will get, each with where it was set. `declared` is the host as the
    inventory has it: a limit that differs from it was set elsewhere, by a flag or a config file
    (`sources`: limit -> `--cpus` or file:line)."""
    declared = declared or host
    sources = sources or {}
    document, index = _read(host.source_file)
    settings: list[Setting] = []
    for key in LIMIT_KEYS:
        value = getattr(host.limits, key)
        if value is None:
            continue
        if key in sources or value != getattr(declared.limits, key):
            source = sources.get(key, "")
            if source.startswith("--"):
                settings.append(Setting(key, value, source))
            elif source:
                settings.append(Setting(key, value, f"limits.{key}", source))
            else:
                settings.append(Setting(key, value, f"limits.{key} (operator config)"))
            continue
        path = _path_of(document, host.name, key)
        if path is None:
            settings.append(Setting(key, value, f"the built-in default limits.{key}"))
            continue
        line = index.line_of(path) if index is not None else None
        where = host.source_file if line is None else f"{host.source_file}:{line}"
        settings.append(Setting(key, value, ".".join(path), where))
    return settings


def _read(file: str) -> tuple[dict[str, Any], Any]:
    try:
        text = Path(file).read_text(encoding="utf-8")
        return tomllib.loads(text), index_source(text)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return {}, None  # "<builtin>", or a file changed since it was loaded


def _table(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _path_of(document: dict[str, Any], name: str, key: str) -> KeyPath | None:
    own = _table(_table(_table(document.get("hosts")).get(name)).get("limits"))
    if key in own:
        return ("hosts", name, "limits", key)
    if key in _table(_table(document.get("defaults")).get("limits")):
        return ("defaults", "limits", key)
    return None


def disk_setting(host: Host, key: str) -> DiskSetting | None:
    """`disk_budget` or `disk_floor` of `host` with where it was set (its own table, else its
    file's [defaults]); None when it has none."""
    value = getattr(host, key)
    if value is None:
        return None
    document, index = _read(host.source_file)
    path: KeyPath = (
        ("hosts", host.name, key)
        if key in _table(_table(document.get("hosts")).get(host.name))
        else ("defaults", key)
    )
    line = index.line_of(path) if index is not None else None
    where = host.source_file if line is None else f"{host.source_file}:{line}"
    return DiskSetting(key, str(value), f"{where} {'.'.join(path)}")
