"""Strict host-key policy for SSH, which asyncssh leaves to us.

Order of trust: a key pinned in the inventory, else ~/.ssh/known_hosts plus the known_hosts file
jackin owns. Anything else is refused before authentication: an unknown key with its fingerprint
and the command to trust it, a changed key loudly. accept-new (trust on first use) is opt-in and
fails closed: it applies only when every known_hosts file was read without trouble and no line
of any of them mentions the host in any way (another key, another port, @cert-authority,
@revoked, a wildcard, a hash of its name). Anything else is treated as a changed key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh


@dataclass(frozen=True)
class TrustSources:
    pinned: str | None  # "TYPE BASE64" from the inventory
    known_hosts_files: tuple[Path, ...]
    # Other names the host goes by (the inventory address, maybe a ~/.ssh/config alias): a
    # known_hosts line about any of them counts as knowing the host.
    names: tuple[str, ...] = ()


@dataclass(frozen=True)
class KnownHostsLine:
    where: str  # "path:N", for messages
    marker: str | None  # "cert-authority", "revoked" or None
    patterns: str  # the host field, as written
    text: str  # the whole line, for asyncssh


@dataclass(frozen=True)
class KnownHostsFile:
    lines: tuple[KnownHostsLine, ...]  # the lines asyncssh can use
    mentions: tuple[KnownHostsLine, ...]  # every line with a host field, usable or not
    trouble: tuple[str, ...]  # "path:N: why": anything we could not read or understand


_MARKERS = ("cert-authority", "revoked")


def read_known_hosts(path: Path) -> KnownHostsFile:
    """Every line of a known_hosts file, sorted into usable ones and trouble.

    A missing file is empty; an unreadable one is trouble, and so is each line we (or asyncssh)
    cannot parse: they must never make a host look unknown."""
    try:
        text = path.read_text()
    except (FileNotFoundError, NotADirectoryError):
        return KnownHostsFile((), (), ())
    except (OSError, UnicodeDecodeError) as exc:
        return KnownHostsFile((), (), (f"{path}: cannot be read ({type(exc).__name__})",))
    usable: list[KnownHostsLine] = []
    mentions: list[KnownHostsLine] = []
    trouble: list[str] = []
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        where = f"{path}:{number}"
        marker: str | None = None
        fields = stripped.split(None, 1)
        if stripped.startswith("@"):
            fields = stripped.split(None, 2)
            marker = fields[0][1:]
            fields = fields[1:]
        if len(fields) < 2:
            trouble.append(f"{where}: not a known_hosts line")
            continue
        line = KnownHostsLine(where, marker, fields[0], stripped)
        mentions.append(line)
        if marker is not None and marker not in _MARKERS:
            trouble.append(f"{where}: unknown marker @{marker}")
        elif not _parses(stripped, fields[1]):
            trouble.append(f"{where}: cannot parse this entry")
        else:
            usable.append(line)
    return KnownHostsFile(tuple(usable), tuple(mentions), tuple(trouble))


def _parses(line: str, data: str) -> bool:
    """Whether asyncssh reads this line, key included (it silently skips keys it cannot)."""
    try:
        asyncssh.import_known_hosts(line)
    except (ValueError, asyncssh.KeyImportError):
        return False
    for load in (asyncssh.import_public_key, asyncssh.import_certificate):
        try:
            load(data)
        except (ValueError, asyncssh.KeyImportError):
            continue
        return True
    return False


def mentions_host(patterns: str, names: tuple[str, ...], port: int | None) -> bool:
    """Whether a known_hosts host field says anything at all about one of `names`.

    Deliberately wider than OpenSSH's matching: any port (`[name]:2222` mentions `name`),
    negations (`!name` mentions it too) and wildcards. A hashed name can only be checked for
    the port we connect to."""
    if patterns.startswith("|"):
        return _hashed_matches(patterns, names, port)
    for item in patterns.split(","):
        item = item.lstrip("!")
        bracketed = re.fullmatch(r"\[(.*)\](?::\d*)?", item)
        if bracketed is not None:
            item = bracketed.group(1)
        if any(_glob(item.lower(), name.lower()) for name in names):
            return True
    return False


def _glob(pattern: str, name: str) -> bool:
    regex = re.escape(pattern).replace(r"\*", ".*").replace(r"\?", ".")
    return re.fullmatch(regex, name) is not None


def _hashed_matches(pattern: str, names: tuple[str, ...], port: int | None) -> bool:
    try:
        magic, salt, digest = pattern[1:].split("|")
        salt_bytes = base64.b64decode(salt, validate=True)
        expected = base64.b64decode(digest, validate=True)
    except (ValueError, binascii.Error):
        return True  # cannot tell: count it as a mention
    if magic != "1":
        return True
    forms = {name for name in names}
    forms |= {f"[{name}]:{port or 22}" for name in names}
    return any(
        hmac.compare_digest(hmac.new(salt_bytes, form.encode(), hashlib.sha1).digest(), expected)
        for form in forms
    )


@dataclass
class KeyWitness:
    """What one handshake saw: filled in by asyncssh's callbacks, read after it fails or works."""

    sources: TrustSources
    accept_new: bool = False
    lookup_host: str | None = None
    lookup_port: int | None = None
    trusted: list[asyncssh.SSHKey] = field(default_factory=list)
    mentions: list[str] = field(default_factory=list)  # "path:N (@marker)" about this host
    trouble: list[str] = field(default_factory=list)  # known_hosts problems (any host)
    presented: asyncssh.SSHKey | None = None  # a key no source trusts (set by validate)
    accepted_new: bool = False
    verified: asyncssh.SSHKey | None = None  # the trusted key a handshake that went through saw

    def known_hosts(
        self, host: str, addr: str, port: int | None
    ) -> tuple[list[asyncssh.SSHKey], list[asyncssh.SSHKey], list[asyncssh.SSHKey]]:
        """asyncssh's known_hosts callable: the keys we trust for this host."""
        self.lookup_host, self.lookup_port = host, port
        if self.sources.pinned:
            self.trusted = [asyncssh.import_public_key(self.sources.pinned)]
            return self.trusted, [], []
        names = tuple(dict.fromkeys(n for n in (host, addr, *self.sources.names) if n))
        trusted: list[asyncssh.SSHKey] = []
        cas: list[asyncssh.SSHKey] = []
        revoked: list[asyncssh.SSHKey] = []
        for path in self.sources.known_hosts_files:
            scan = read_known_hosts(path)
            self.trouble += scan.trouble
            self.mentions += [
                line.where + (f" (@{line.marker})" if line.marker else "")
                for line in scan.mentions
                if mentions_host(line.patterns, names, port)
            ]
            table = asyncssh.import_known_hosts("\n".join(line.text for line in scan.lines))
            keys, ca_keys, revoked_keys, *_ = table.match(host, addr, port)
            trusted += keys
            cas += ca_keys
            revoked += revoked_keys
        self.trusted = trusted
        return trusted, cas, revoked

    def validate(self, key: asyncssh.SSHKey) -> bool:
        """Called by asyncssh only for a key that is not in the trusted set."""
        self.presented = key
        if self.accept_new and self.nothing_known:
            self.accepted_new = True
            return True
        return False

    @property
    def nothing_known(self) -> bool:
        """Trust on first use is safe only if no source says anything about this host, and
        every source could be read in full (fail closed)."""
        looked_up = self.lookup_host is not None
        return (
            looked_up
            and not self.sources.pinned
            and not self.trusted
            and not self.mentions
            and not self.trouble
        )

    @property
    def changed(self) -> bool:
        """The host presented a key other than what some source knows it by."""
        return self.presented is not None and bool(self.trusted or self.mentions)

    def pattern(self) -> str:
        return known_hosts_pattern(self.lookup_host or "", self.lookup_port)


# OpenSSH's order of plain host key algorithms (ssh_config(5) HostKeyAlgorithms): ed25519 first,
# RSA last. asyncssh's own default starts with RSA, so a host nobody knows yet showed its RSA key
# while the docs (and ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub) talk about ed25519.
PREFERRED_HOST_KEY_ALGS: tuple[str, ...] = (
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
    "rsa-sha2-512",
    "rsa-sha2-256",
    "ssh-rsa",
)


def host_key_algorithms(known: list[str], supported: list[str]) -> list[str]:
    """What to offer for the server's host key, best first, as OpenSSH does: the algorithms of
    keys already known for the host first (so a host known by its RSA key is not refused for
    showing its ed25519 one), then the preferred order. Only what asyncssh `supported`."""
    order = [*known, *PREFERRED_HOST_KEY_ALGS]
    return [alg for alg in dict.fromkeys(order) if alg in supported]


def known_key_algorithms(
    sources: TrustSources, names: tuple[str, ...], port: int | None
) -> list[str] | None:
    """Signature algorithms of the keys known for `names` before connecting (pinned key, else
    known_hosts), for `host_key_algorithms`. None when a certificate authority is known for
    the host: then certificates must be offered, as asyncssh does by itself."""
    if sources.pinned:
        return _sig_algorithms([asyncssh.import_public_key(sources.pinned)])
    keys: list[asyncssh.SSHKey] = []
    for path in sources.known_hosts_files:
        scan = read_known_hosts(path)
        table = asyncssh.import_known_hosts("\n".join(line.text for line in scan.lines))
        for name in names:
            found, cas, *_ = table.match(name, "", port)
            if cas:
                return None
            keys += found
    return _sig_algorithms(keys)


def _sig_algorithms(keys: list[asyncssh.SSHKey]) -> list[str]:
    return [alg.decode() for key in keys for alg in key.sig_algorithms]


def known_hosts_pattern(host: str, port: int | None) -> str:
    return host if port in (None, 22) else f"[{host}]:{port}"


def fingerprint(key: asyncssh.SSHKey) -> str:
    return str(key.get_fingerprint("sha256"))


def describe_key(key: asyncssh.SSHKey) -> str:
    """ "ssh-ed25519 SHA256:...": the type goes with the fingerprint, as ssh-keygen -l shows it."""
    return f"{key.get_algorithm()} {fingerprint(key)}"


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
