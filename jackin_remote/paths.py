"""Where jackin-remote keeps its own files on the laptop.

JACKIN_HOME (if set) holds everything: handy for tests and for keeping several setups apart.
Otherwise the platform's config/state/cache directories are used.
"""

from __future__ import annotations

import os
from pathlib import Path

APP = "jackin-remote"


def _home_override() -> Path | None:
    value = os.environ.get("JACKIN_HOME")
    return Path(value).expanduser() if value else None


def config_dir() -> Path:
    if (home := _home_override()) is not None:
        return home / "config"
    import platformdirs

    return Path(platformdirs.user_config_dir(APP))


def state_dir() -> Path:
    if (home := _home_override()) is not None:
        return home / "state"
    import platformdirs

    return Path(platformdirs.user_state_dir(APP))


def cache_dir() -> Path:
    if (home := _home_override()) is not None:
        return home / "cache"
    import platformdirs

    return Path(platformdirs.user_cache_dir(APP))


def known_hosts_file() -> Path:
    """The known_hosts file jackin owns; `hosts trust` writes here, never to ~/.ssh."""
    return config_dir() / "known_hosts"


def user_known_hosts_file() -> Path:
    return Path.home() / ".ssh" / "known_hosts"
