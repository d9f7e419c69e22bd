"""Strict host-key policy for SSH, which asyncssh leaves to us.

Order of trust: a key pinned in the inventory, else ~/.ssh/known_hosts plus the known_hosts file
jackin owns. Anything else is refused before authentication: an unknown key with its fingerprint
and the command to trust it, a changed key loudly. accept-new (trust on first use) is opt-in and
never applies to a changed key.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh


@dataclass(frozen=True)
class TrustSources:
    pinned: str | None  # "TYPE BASE64" from the inventory
    known_hosts_files: tuple[Path, ...]


@dataclass
class KeyWitness:
    """What one handshake saw: filled in by asyncssh's callbacks, read after it fails or works."""

    sources: TrustSources
    accept_new: bool = False
    lookup_host: str | None = None
    lookup_port: int | None = None
    trusted: list[asyncssh.SSHKey] = field(default_factory=list)
    presented: asyncssh.SSHKey | None = None
    accepted_new: bool = False

    def known_hosts(
        self, host: str, addr: str, port: int | None
    ) -> tuple[list[asyncssh.SSHKey], list[asyncssh.SSHKey], list[asyncssh.SSHKey]]:
        """asyncssh's known_hosts callable: the keys we trust for this host."""
        self.lookup_host, self.lookup_port = host, port
        if self.sources.pinned:
            self.trusted = [asyncssh.import_public_key(self.sources.pinned)]
            return self.trusted, [], []
        trusted: list[asyncssh.SSHKey] = []
        cas: list[asyncssh.SSHKey] = []
        revoked: list[asyncssh.SSHKey] = []
        for path in self.sources.known_hosts_files:
            table = _read_known_hosts(path)
            if table is None:
                continue
            keys, ca_keys, revoked_keys, *_ = table.match(host, addr, port)
            trusted += keys
            cas += ca_keys
            revoked += revoked_keys
        self.trusted = trusted
        return trusted, cas, revoked

    def validate(self, key: asyncssh.SSHKey) -> bool:
        """Called by asyncssh only for a key that is not in the trusted set."""
        self.presented = key
        if self.accept_new and not self.trusted and not self.sources.pinned:
            self.accepted_new = True
            return True
        return False

    @property
    def changed(self) -> bool:
        return bool(self.trusted) and self.presented is not None

    def pattern(self) -> str:
        return known_hosts_pattern(self.lookup_host or "", self.lookup_port)


def _read_known_hosts(path: Path) -> asyncssh.SSHKnownHosts | None:
    try:
        text = path.read_text()
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return None
    try:
        return asyncssh.import_known_hosts(text)
    except (ValueError, asyncssh.KeyImportError):
        # One bad line in a user's known_hosts must not open the door: trust nothing from it.
        return None


def known_hosts_pattern(host: str, port: int | None) -> str:
    return host if port in (None, 22) else f"[{host}]:{port}"


def fingerprint(key: asyncssh.SSHKey) -> str:
    return str(key.get_fingerprint("sha256"))


def key_line(key: asyncssh.SSHKey) -> str:
    """The "TYPE BASE64" form used in known_hosts and inventory pins."""
    kind, blob, *_ = key.export_public_key("openssh").decode().split()
    return f"{kind} {blob}"


def record_trust(path: Path, pattern: str, key: asyncssh.SSHKey, *, replace: bool = False) -> None:
    """Append (or with replace, swap in) `pattern key` in a known_hosts file we own."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = path.read_text().splitlines() if path.exists() else []
    if replace:
        lines = [line for line in lines if line.split(" ", 1)[0] != pattern]
    lines.append(f"{pattern} {key_line(key)}")
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text("\n".join(lines) + "\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
