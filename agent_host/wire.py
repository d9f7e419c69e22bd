"""The typed boundary between the controller and the host agent. Imported by both sides.

Everything the two programs must agree on lives here, once: the launch spec and the session
record that cross the wire, the state and status enums, the validators the host runs on
everything it receives, and the constants (labels, names, paths inside the sandbox, hardening).

Rules of the boundary:
- A spec carries only the operator's *choices*. What is never a choice (read-only root, dropped
  capabilities, no-new-privileges, the workdir, the labels, the image tag, the container name,
  the only bind mount) is derived from the spec on each side by the same functions, so no field
  on the wire can weaken it.
- `from_wire` is strict: unknown keys, wrong types and bad values are refused with the field's
  name. The host parses every spec it receives with it; the controller parses every record a
  host returns with it (a host is not trusted either).

Python 3.9 compatible, stdlib only (runs on hosts).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Any, Dict, List, Mapping, Optional, Tuple
from urllib.parse import urlsplit

from agent_host.egress import Rule, normalise_host, parse_pattern, rules_from_wire
from agent_host.protocol import SpecError as SpecError  # re-exported: the wire's error

# -- constants -------------------------------------------------------------------------------
LABEL_MANAGED = "jackin.managed"
LABEL_SESSION = "jackin.session"
LABEL_WORKSPACE = "jackin.workspace"
LABEL_ROLE = "jackin.role"
LABEL_RUNTIME = "jackin.runtime"
MANAGED_FILTER = LABEL_MANAGED + "=true"

TMUX_SESSION = "jackin"  # interactive agents run in this tmux session inside the sandbox
# Where an interactive agent's hooks write its latest status tag (claude's, core/runtimes.py):
# the host reads it after the session's screen, so it outranks a status tag on the screen.
STATUS_FILE = "/tmp/jackin-agent-status"
STATUS_FILE_BYTES = 200  # read at most this much of it
CONTAINER_WORKDIR = "/workspace"  # where the session checkout is mounted
MAX_CONTAINER_NAME = 58
ROLE_IMAGE_PREFIX = "jackin-role-"
# The network of a role build, as the operator chose it (launch --build-network).
BUILD_NETWORKS = ("none", "default")
DEFAULT_BUILD_NETWORK = "none"
CONTAINER_PREFIX = "jk-"

# Hardening that is never a choice: the host applies it to every sandbox.
CAP_DROP = ("ALL",)
SECURITY_OPT = ("no-new-privileges",)
READ_ONLY_ROOT = True
TMPFS_OPTIONS = "rw,nosuid,nodev,size=1g"
SHM_SIZE = "64m"  # docker's default /dev/shm, stated rather than assumed
# Container logs are rotated by the engine: an agent that prints forever cannot fill the disk.
LOG_MAX_SIZE = "10m"
LOG_MAX_FILES = 3
# On a root host the sandbox runs under a uid that no host account uses (found at create time,
# starting here, skipping /etc/passwd and every /etc/subuid range).
SANDBOX_UID_BASE = 935000000

# Bounds of the limits a spec may carry.
MIN_MEMORY_BYTES = 6 * 1024 * 1024  # the engine refuses less
MIN_CPUS = 0.01
MAX_CPUS = 1024.0
MIN_PIDS = 16
MAX_PIDS = 4194304
MIN_NOFILE = 64
MAX_NOFILE = 1048576  # Linux's default fs.nr_open: the engine cannot give more on most hosts
LIMIT_NAMES = ("memory", "cpus", "pids", "nofile")  # every limit, in the order they are shown
MAX_TASK_BYTES = 1024 * 1024
MAX_ENV_VALUE_BYTES = 64 * 1024


class SessionState(str, Enum):
    """The lifecycle of a session (DESIGN.md). `lost` is the laptop's word, never a host's."""

    STARTING = "starting"
    RUNNING = "running"
    EXITED = "exited"
    CRASHED = "crashed"
    FAILED_SETUP = "failed_setup"
    STOPPED = "stopped"
    PURGED = "purged"


ACTIVE_STATES = (SessionState.STARTING.value, SessionState.RUNNING.value)


class EndReason(str, Enum):
    """Why a session ended, when the host knows more than the exit code says."""

    OOM = "oom"  # the kernel killed a process of the sandbox: it reached its memory limit
    IDLE = "idle"  # stopped by the host: idle longer than its idle timeout (agent_host/janitor.py)
    ENGINE_RESTART = "engine_restart"  # the host's docker engine stopped (a reboot) while it ran


class AgentStatus(str, Enum):
    """What the agent is doing. Roll-up order for a fleet view: blocked > done > working > idle
    > unknown."""

    WORKING = "working"
    BLOCKED = "blocked"
    DONE = "done"
    IDLE = "idle"
    UNKNOWN = "unknown"


class Backend(str, Enum):
    """What runs the sandbox: `docker` (runc: namespaces and cgroups on the host kernel) or
    `gvisor` (runsc as docker's runtime: a user-space kernel between the agent and the host)."""

    DOCKER = "docker"
    GVISOR = "gvisor"


class Network(str, Enum):
    OPEN = "open"
    NONE = "none"
    ALLOWLIST = "allowlist"  # an internal network; the host's egress proxy is the only way out


class DockerPrivilege(str, Enum):
    """How a private docker daemon's sidecar is allowed to run its own containers: `privileged`
    (docker's --privileged, the usual way on a server) or `capabilities` (every capability but
    CAP_SYS_RESOURCE, seccomp and AppArmor unconfined: for hosts that are themselves containers).
    Either is elevated on the host; neither mounts the host's docker socket."""

    PRIVILEGED = "privileged"
    CAPABILITIES = "capabilities"


class Isolation(str, Enum):
    CLONE = "clone"
    COPY = "copy"


class Mode(str, Enum):
    TASK = "task"
    INTERACTIVE = "interactive"


# -- validators ------------------------------------------------------------------------------
NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,62}\Z")
NAME_RULE = "lowercase letters, digits and '-', starting with a letter, at most 63 characters"
CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"  # base32 without i, l, o, u
SESSION_ID_LEN = 8
SESSION_ID_RE = re.compile(r"^[%s]{%d}\Z" % (CROCKFORD, SESSION_ID_LEN))
HASH_RE = re.compile(r"^[0-9a-f]{8,64}\Z")
COMMIT_RE = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?\Z")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}\Z")
# A role user: `name`, `uid`, `name:group` or `uid:gid` (names as useradd takes them).
_USER_PART = r"(?:[a-z_][a-z0-9_-]{0,31}|[0-9]{1,10})"
USER_RE = re.compile(r"^%s(?::%s)?\Z" % (_USER_PART, _USER_PART))
ROOT_WORDS = frozenset({"root", "0"})
MEMORY_RE = re.compile(r"^([0-9]{1,15})([kmg]?)\Z")
_MEMORY_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
# Set by jackin itself; an operator may not override them.
RESERVED_ENV = frozenset({"HOME", "USER", "PATH", "JACKIN_SESSION", "JACKIN_HOST"})
SECRETS_MOUNT = "/run/jackin/secrets"  # in the sandbox: one file per secret, read-only, 0400
MAX_SECRET_FILES = 32
# Run before the agent's own command: each secret file becomes a variable of the agent's process
# only (never the container's configuration, so never in `docker inspect` or the host's `ps`).
SECRET_EXPORTS = (
    'for f in %s/*; do [ -f "$f" ] && export "${f##*/}=$(cat "$f")"; done; exec "$@"'
    % SECRETS_MOUNT
)


def is_valid_name(value: object) -> bool:
    return isinstance(value, str) and bool(NAME_RE.match(value)) and not value.endswith("-")


def check_name(value: object, field_name: str) -> str:
    """Workspace, role, host and session names: they reach paths, docker names and shells."""
    if not is_valid_name(value):
        raise SpecError(field_name, "%r is not a valid name (%s)" % (value, NAME_RULE))
    return str(value)


def is_session_id(value: object) -> bool:
    return isinstance(value, str) and bool(SESSION_ID_RE.match(value))


def check_session_id(value: object, field_name: str = "session_id") -> str:
    if not is_session_id(value):
        raise SpecError(field_name, "%r is not a session id (8 Crockford base32 chars)" % (value,))
    return str(value)


def check_hash(value: object, field_name: str = "hash") -> str:
    if not isinstance(value, str) or not HASH_RE.match(value):
        raise SpecError(field_name, "%r is not a content hash (8-64 hex digits)" % (value,))
    return value


# -- idle timeout: how long a session may sit idle before its host stops it -------------------
MIN_IDLE_TIMEOUT = 60  # seconds
MAX_IDLE_TIMEOUT = 30 * 86400
_DURATION_RE = re.compile(r"^([1-9][0-9]{0,6})([smhd])\Z")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration_seconds(value: object, field_name: str = "idle_timeout") -> int:
    """'90s', '30m', '2h', '1d' -> seconds, within MIN_IDLE_TIMEOUT..MAX_IDLE_TIMEOUT."""
    match = _DURATION_RE.match(value) if isinstance(value, str) else None
    if match is None:
        raise SpecError(field_name, "%r is not a duration like 30m, 2h or 1d" % (value,))
    seconds = int(match.group(1)) * _DURATION_UNITS[match.group(2)]
    check_idle_timeout(seconds, field_name)
    return seconds


def check_idle_timeout(value: object, field_name: str = "idle_timeout") -> Optional[int]:
    """Seconds (None: no idle timeout): at least a minute, at most 30 days."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(field_name, "must be a number of seconds")
    if not MIN_IDLE_TIMEOUT <= value <= MAX_IDLE_TIMEOUT:
        raise SpecError(field_name, "must be from 1m to 30d (%d to %d seconds)"
                        % (MIN_IDLE_TIMEOUT, MAX_IDLE_TIMEOUT))  # fmt: skip
    return value


def check_commit(value: object, field_name: str) -> Optional[str]:
    if value is None:
        return None
    if not isinstance(value, str) or not COMMIT_RE.match(value):
        raise SpecError(field_name, "%r is not a full git commit id" % (value,))
    return value


def check_role_user(value: object, field_name: str = "user") -> str:
    """The role's non-root user: `name`, `uid`, `name:group` or `uid:gid`."""
    if not isinstance(value, str) or not USER_RE.match(value):
        raise SpecError(
            field_name, "%r is not a user (name, uid, name:group or uid:gid)" % (value,)
        )
    if names_root(value):
        raise SpecError(field_name, "the agent never runs as root (got %r)" % (value,))
    return value


def names_root(user: str) -> bool:
    name = user.split(":")[0]
    return name in ROOT_WORDS or (name.isdigit() and int(name) == 0)


def check_env_name(value: object, field_name: str = "env") -> str:
    if not isinstance(value, str) or not ENV_NAME_RE.match(value):
        raise SpecError(field_name, "%r is not an environment variable name" % (value,))
    return value


def check_env_value(value: object, field_name: str) -> str:
    if not isinstance(value, str):
        raise SpecError(field_name, "must be a string")
    if "\0" in value or "\n" in value:
        raise SpecError(field_name, "may not contain NUL or newlines")
    if len(value.encode("utf-8", "surrogatepass")) > MAX_ENV_VALUE_BYTES:
        raise SpecError(field_name, "longer than %d bytes" % MAX_ENV_VALUE_BYTES)
    return value


def memory_bytes(value: object, field_name: str = "limits.memory") -> int:
    """'512m' -> bytes. At least the engine's minimum; no zero, no negative, no junk."""
    match = MEMORY_RE.match(value) if isinstance(value, str) else None
    if match is None:
        raise SpecError(field_name, "%r is not a size like 512m or 4g" % (value,))
    size = int(match.group(1)) * _MEMORY_UNITS[match.group(2)]
    if size < MIN_MEMORY_BYTES:
        raise SpecError(field_name, "%r is below the engine's minimum of 6m" % (value,))
    return size


def _check_cpus(value: object) -> Optional[float]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpecError("limits.cpus", "must be a number")
    number = float(value)
    if not (MIN_CPUS <= number <= MAX_CPUS):  # NaN fails this too
        raise SpecError("limits.cpus", "%r must be between %g and %g" % (value, MIN_CPUS, MAX_CPUS))
    return number


def _check_pids(value: object) -> Optional[int]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not MIN_PIDS <= value <= MAX_PIDS:
        raise SpecError(
            "limits.pids", "%r must be an integer from %d to %d" % (value, MIN_PIDS, MAX_PIDS)
        )
    return value


def _check_nofile(value: object) -> Optional[int]:
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or not MIN_NOFILE <= value <= MAX_NOFILE
    ):
        raise SpecError(
            "limits.nofile",
            "%r must be an integer from %d to %d" % (value, MIN_NOFILE, MAX_NOFILE),
        )
    return value


def _check_str(value: object, field_name: str, optional: bool = False, limit: int = 4096) -> Any:
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise SpecError(field_name, "must be a string")
    if "\0" in value or len(value.encode("utf-8", "surrogatepass")) > limit:
        raise SpecError(field_name, "holds NUL or is longer than %d bytes" % limit)
    return value


def _check_enum(value: object, enum: Any, field_name: str) -> Any:
    try:
        return enum(value)
    except ValueError:
        choices = ", ".join(member.value for member in enum)
        raise SpecError(field_name, "%r is not one of: %s" % (value, choices)) from None


def _check_keys(data: object, allowed: Tuple[str, ...], what: str) -> Mapping[str, Any]:
    if not isinstance(data, dict):
        raise SpecError(what, "must be an object")
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise SpecError(what, "unknown field(s): %s" % ", ".join(map(str, unknown)))
    return data


# -- names derived from a spec (both sides call these; never sent) ----------------------------
def image_tag(role: str, content_hash: str) -> str:
    """`jackin-role-<name>:<hash[:12]>`: a changed role is a new tag, an unchanged one reused."""
    return "%s%s:%s" % (ROLE_IMAGE_PREFIX, check_name(role, "role"), check_hash(content_hash)[:12])


GVISOR_RUNTIME = "runsc"  # the runtime name a host registers gVisor under in daemon.json
PROXY_PORT = 3128  # the egress proxy's port, on the session network's gateway address


def egress_network(session_id: str) -> str:
    """The internal docker network of a `network allowlist` session."""
    return "jk-%s-egress" % check_session_id(session_id)


def container_name(session_id: str, workspace: str, role: str) -> str:
    """`jk-<id>-<workspace>-<role>`, DNS-safe and at most 58 characters."""
    base = "%s%s-" % (CONTAINER_PREFIX, session_id)
    room = MAX_CONTAINER_NAME - len(base) - 1
    ws_room = max(room - min(len(role), room // 2), 1)
    ws = workspace[:ws_room].rstrip("-")
    rl = role[: room - len(ws)].rstrip("-")
    return ("%s%s-%s" % (base, ws, rl)).rstrip("-")


def agent_home(user: str) -> str:
    """The agent's $HOME inside the sandbox (a tmpfs)."""
    name = user.split(":")[0]
    return "/home/agent" if name.isdigit() else "/home/" + name


def session_branch(session_id: str) -> str:
    return "jackin/" + check_session_id(session_id)


# -- operator mounts ---------------------------------------------------------------------------
# Names that hold credentials: a mount that is one, is inside one or contains one is refused
# unless the operator acknowledges that name (`--ack-sensitive NAME`).
SENSITIVE_NAMES = (
    ".ssh", ".aws", ".gnupg", ".kube", ".docker", ".config/gh", ".netrc", ".npmrc",
    ".git-credentials", ".config/gcloud", ".config/op",
)  # fmt: skip
# Never a mount target: the checkout, the secrets, and what the engine or the system owns.
_RESERVED_TARGETS = ("/", CONTAINER_WORKDIR, SECRETS_MOUNT, "/proc", "/sys", "/dev", "/etc",
                     "/usr", "/bin", "/sbin", "/lib", "/lib64", "/run", "/tmp")  # fmt: skip
_MOUNT_PATH_RE = re.compile(r"^/[A-Za-z0-9._/+@-]*\Z")
MAX_MOUNTS = 16
MAX_TMPFS_BYTES = 64 * 1024**3


def check_mount_path(value: object, field_name: str) -> str:
    """An absolute, normal path: no '.', '..', '//' or trailing '/', plain characters only."""
    if not isinstance(value, str) or not _MOUNT_PATH_RE.match(value) or len(value) > 512:
        raise SpecError(field_name, "%r must be an absolute path of letters, digits and ._/+@-"
                        % (value,))  # fmt: skip
    parts = value.split("/")[1:]
    if value != "/" and (not all(parts) or any(p in (".", "..") for p in parts)):
        raise SpecError(field_name, "%r must be a normal path (no '.', '..', '//' or a "
                        "trailing '/')" % value)  # fmt: skip
    return value


def sensitive_names(path: str) -> List[str]:
    """The sensitive names `path` is, or is inside (by its own components)."""
    parts = path.strip("/").split("/")
    found = []
    for name in SENSITIVE_NAMES:
        pieces = name.split("/")
        for start in range(len(parts) - len(pieces) + 1):
            if parts[start : start + len(pieces)] == pieces:
                found.append(name)
                break
    return found


SENSITIVE_DEPTH = 2  # /home holds alice/.ssh: a mount's children are looked into as well


def held_sensitive(directory: str, depth: int = SENSITIVE_DEPTH) -> List[str]:
    """The credential stores (SENSITIVE_NAMES) in `directory` or in its subdirectories down to
    `depth` levels (symlinks not followed). The host checks a directory it mounts with it, the
    laptop a directory it syncs. A name of two parts is found from its first part as well:
    ~/.config holds .config/gh when ~/.config/gh exists."""
    found: set[str] = set()
    level = [directory]
    for _ in range(depth):
        for base in level:
            found.update(name for name in SENSITIVE_NAMES if _holds(base, name))
        level = [
            os.path.join(base, entry.name)
            for base in level
            for entry in _dir_entries(base)
            if entry.is_dir(follow_symlinks=False)
        ]
    return sorted(found)


def _holds(base: str, name: str) -> bool:
    """`base` holds `name`: base/name exists, or base already ends with its first part(s)."""
    pieces = name.split("/")
    parts = base.rstrip("/").split("/")
    for given in range(len(pieces)):
        if given and parts[-given:] != pieces[:given]:
            continue
        if os.path.lexists(os.path.join(base, *pieces[given:])):
            return True
    return False


def _dir_entries(path: str) -> List[Any]:
    try:
        with os.scandir(path) as listing:
            return list(listing)
    except OSError:
        return []


SYNCED_MODES = ("ro", "rw")  # a synced laptop directory: read-only (the default) or writable
MAX_LAPTOP_PATH = 4096


def check_laptop_path(value: object, field_name: str) -> str:
    """A laptop directory as the controller resolved it (realpath): absolute and normal, no
    control characters. Shown and checked for sensitive names; never used as a host path."""
    if (
        not isinstance(value, str)
        or not value.startswith("/")
        or len(value) > MAX_LAPTOP_PATH
        or any(ord(char) < 0x20 or ord(char) == 0x7F for char in value)
    ):
        raise SpecError(field_name, "%r must be an absolute laptop path" % (value,))
    parts = value.split("/")[1:]
    if value == "/" or not all(parts) or any(p in (".", "..") for p in parts):
        raise SpecError(field_name, "%r must be a normal directory path, not / (no '.', '..', "
                        "'//' or a trailing '/')" % value)  # fmt: skip
    return value


@dataclass(frozen=True)
class Mount:
    """An operator mount: `host` (a host directory the inventory allows, read-only), `synced`
    (a laptop directory copied to the host for this session, ro or rw), `tmpfs` (in memory, of a
    size) or `volume` (an engine volume of its own, removed with the session).

    A synced mount's copy is at `layout.synced_dir(root, session, index)`: the host derives it
    from the session id and the mount's index; `source` (the laptop path) is never a host path."""

    kind: str
    target: str
    source: Optional[str] = None  # host: the host directory; synced: the laptop directory
    size: Optional[str] = None  # tmpfs: e.g. "512m"
    mode: Optional[str] = None  # synced: ro | rw

    def __post_init__(self) -> None:
        check_mount_path(self.target, "mounts.target")
        if self.target in _RESERVED_TARGETS or any(
            self.target.startswith(reserved + "/")
            for reserved in (CONTAINER_WORKDIR, SECRETS_MOUNT, "/proc", "/sys", "/dev")
        ):
            raise SpecError("mounts.target", "%s is the sandbox's own: pick another path"
                            % self.target)  # fmt: skip
        if self.mode is not None and self.kind != "synced":
            raise SpecError("mounts.mode", "only a synced directory has a mode")
        if self.kind == "host":
            check_mount_path(self.source, "mounts.source")
            if str(self.source).rstrip("/").rsplit("/", 1)[-1] in ENGINE_SOCKETS:
                raise SpecError("mounts.source", "%s: a container engine's socket is never "
                                "mounted (it is root on the host); --docker private gives the "
                                "sandbox a daemon of its own" % self.source)  # fmt: skip
            if self.size is not None:
                raise SpecError("mounts.size", "only a tmpfs has a size")
        elif self.kind == "synced":
            check_laptop_path(self.source, "mounts.source")
            if self.size is not None:
                raise SpecError("mounts.size", "only a tmpfs has a size")
            if self.mode not in SYNCED_MODES:
                raise SpecError("mounts.mode", "a synced directory is mounted ro or rw")
        elif self.kind == "tmpfs":
            if self.source is not None:
                raise SpecError("mounts.source", "a tmpfs has no source")
            size = memory_bytes(self.size or "", "mounts.size")
            if size > MAX_TMPFS_BYTES:
                raise SpecError("mounts.size", "at most 64g")
        elif self.kind == "volume":
            if self.source is not None or self.size is not None:
                raise SpecError("mounts", "a volume has no source and no size")
        else:
            raise SpecError("mounts.kind", "must be host, synced, tmpfs or volume")

    def to_wire(self) -> Dict[str, Optional[str]]:
        data = {"kind": self.kind, "target": self.target, "source": self.source, "size": self.size}
        if self.mode is not None:
            data["mode"] = self.mode
        return data

    @classmethod
    def from_wire(cls, data: object) -> "Mount":
        data = _check_keys(data, ("kind", "target", "source", "size", "mode"), "mounts[]")
        return cls(data.get("kind"), data.get("target"), data.get("source"), data.get("size"),  # type: ignore[arg-type]
                   data.get("mode"))  # fmt: skip


# -- the model API, reached through the proxy -------------------------------------------------
_HEADER_NAME_RE = re.compile(r"^[A-Za-z0-9-]{1,64}\Z")
MODEL_PREFIX = "/jackin-model"  # the proxy's own path for the model API (proxy.py)
MODEL_KEY_PLACEHOLDER = "jackin-proxy-adds-the-key"  # what the sandbox holds instead of the key


@dataclass(frozen=True)
class ModelApi:
    """A runtime's model API for a `network allowlist` session: the sandbox calls it through its
    proxy (`<base_url_env>=http://<proxy>/jackin-model`), and the proxy adds the key, so the key
    never enters the sandbox. The key's value travels beside the spec, as `key_env` of
    secret_env, and goes to the proxy only."""

    upstream: str  # http(s)://host[:port][/path]
    header: str  # the header the upstream reads its key from: x-api-key, authorization
    prefix: str  # "" or "Bearer "
    key_env: str
    base_url_env: str

    def __post_init__(self) -> None:
        split_upstream(self.upstream)
        if not _HEADER_NAME_RE.match(self.header) or self.prefix not in ("", "Bearer "):
            raise SpecError("model_api.header", "must be a header name, with no or a Bearer prefix")
        check_env_name(self.key_env, "model_api.key_env")
        check_env_name(self.base_url_env, "model_api.base_url_env")

    def to_wire(self) -> Dict[str, str]:
        return {item.name: getattr(self, item.name) for item in fields(self)}

    @classmethod
    def from_wire(cls, data: object) -> "ModelApi":
        names = tuple(item.name for item in fields(cls))
        data = _check_keys(data, names, "model_api")
        if set(data) != set(names) or not all(isinstance(v, str) for v in data.values()):
            raise SpecError("model_api", "needs %s, as strings" % ", ".join(names))
        return cls(**data)


# Container engines' sockets: whoever holds one is root on the host. Never a mount's source.
ENGINE_SOCKETS = ("docker.sock", "containerd.sock", "podman.sock", "crio.sock", "dockershim.sock")
# A docker image reference: [registry[:port]/]name[/name...][:tag][@sha256:digest].
_IMAGE_REF_RE = re.compile(
    r"^(?:[a-z0-9](?:[a-z0-9.-]{0,252}[a-z0-9])?(?::[0-9]{1,5})?/)?"
    r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9._-]{0,127})?(?:@sha256:[0-9a-f]{64})?\Z"
)
# Set in the sandbox by `docker private`: the operator's env cannot point them elsewhere.
PRIVATE_DOCKER_ENV = ("DOCKER_HOST", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH")
PRIVATE_DOCKER_CERTS = "/run/jackin/docker"  # in the sandbox: the client's TLS files, read-only
PRIVATE_DOCKER_PORT = 2376


def check_image_ref(value: object, where: str) -> str:
    if not isinstance(value, str) or len(value) > 256 or not _IMAGE_REF_RE.match(value):
        raise SpecError(where, "must be a docker image reference, e.g. docker:27-dind")
    return value


@dataclass(frozen=True)
class PrivateDocker:
    """`docker private`: a docker daemon of the session's own, in a sidecar container that only
    the sandbox reaches (over TLS, with a client certificate). The image must hold sh, openssl and
    dockerd (e.g. docker:27-dind). The host's own docker socket is never offered."""

    image: str
    privilege: DockerPrivilege = DockerPrivilege.PRIVILEGED

    def __post_init__(self) -> None:
        check_image_ref(self.image, "private_docker.image")
        if not isinstance(self.privilege, DockerPrivilege):
            raise SpecError("private_docker.privilege", "must be privileged or capabilities")

    def to_wire(self) -> Dict[str, str]:
        return {"image": self.image, "privilege": self.privilege.value}

    @classmethod
    def from_wire(cls, data: object) -> "PrivateDocker":
        data = _check_keys(data, ("image", "privilege"), "private_docker")
        privilege = _check_enum(
            data.get("privilege", "privileged"), DockerPrivilege, "private_docker.privilege"
        )
        return cls(check_image_ref(data.get("image"), "private_docker.image"), privilege)


def split_upstream(url: object) -> Tuple[str, str, int, str]:
    """(scheme, host, port, path without a trailing '/') of a model API URL; SpecError if it is
    not a plain http(s) URL of a host (no user, query or fragment)."""
    problem = "must be an http:// or https:// URL of a host, e.g. https://api.anthropic.com"
    if not isinstance(url, str) or len(url) > 512 or any(ord(c) <= 32 for c in url):
        raise SpecError("model_api.upstream", problem)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise SpecError("model_api.upstream", problem) from None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username is not None:
        raise SpecError("model_api.upstream", problem)
    if parts.query or parts.fragment or "@" in parts.netloc:
        raise SpecError("model_api.upstream", problem)
    pattern = parse_pattern(parts.hostname, "model_api.upstream")
    if pattern.kind not in ("exact", "ip"):
        raise SpecError("model_api.upstream", problem)
    default = 443 if parts.scheme == "https" else 80
    return parts.scheme, normalise_host(pattern.host), port or default, parts.path.rstrip("/")


# -- snapshots of a session's checkout (agent_host/snapshots.py) -----------------------------
SNAPSHOT_REASONS = ("before-start", "manual", "before-restore")
SNAPSHOT_ID_RE = re.compile(r"^s[1-9][0-9]{0,8}\Z")
DEFAULT_SNAPSHOT_KEEP = 20
MAX_SNAPSHOT_KEEP = 1000
# Rebuildable trees a snapshot leaves out, at any depth (never inside the top-level .git). An
# operator adds names or paths (`snapshot_excludes`), or keeps one of these with "!name".
DEFAULT_SNAPSHOT_EXCLUDES = (
    "node_modules", ".venv", "venv", "target", "build", "dist", "__pycache__", ".tox", ".nox",
    ".mypy_cache", ".pytest_cache", ".ruff_cache", ".gradle", ".next",
)  # fmt: skip
MAX_SNAPSHOT_EXCLUDES = 64
MAX_SKIPPED_SAMPLE = 20  # paths a snapshot names among those it could not take
_AGE_RE = re.compile(r"^([1-9][0-9]{0,5})([mhdw])\Z")
_AGE_UNITS = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def check_snapshot_id(value: object, field_name: str = "snapshot") -> str:
    if not isinstance(value, str) or not SNAPSHOT_ID_RE.match(value):
        raise SpecError(field_name, "%r is not a snapshot id (s1, s2, ...)" % (value,))
    return value


def age_seconds(value: object, field_name: str = "snapshot_max_age") -> int:
    """'7d' -> seconds. Units m(inutes), h(ours), d(ays), w(eeks)."""
    match = _AGE_RE.match(value) if isinstance(value, str) else None
    if match is None:
        raise SpecError(field_name, "%r is not an age like 30m, 12h, 7d or 2w" % (value,))
    return int(match.group(1)) * _AGE_UNITS[match.group(2)]


def check_snapshot_keep(value: object, field_name: str = "snapshot_keep") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_SNAPSHOT_KEEP:
        raise SpecError(field_name, "%r must be a whole number from 1 to %d"
                        % (value, MAX_SNAPSHOT_KEEP))  # fmt: skip
    return value


def check_exclude(value: object, field_name: str = "snapshot_excludes") -> str:
    """An exclude: a name (matched at any depth: `node_modules`, `*.log`) or a path from the
    checkout's top (`data/cache`), with `*` and `?` as the only wildcards (never across '/');
    `!name` keeps one of the defaults. Never '.', '..', '**', a leading or trailing '/'."""
    if not isinstance(value, str) or not 0 < len(value) <= 256:
        raise SpecError(field_name, "%r must be a name or a relative path" % (value,))
    if any(ord(char) < 0x20 or ord(char) == 0x7F or char in "\\[]" for char in value):
        raise SpecError(field_name, "%r: no control characters, '\\', '[' or ']'" % (value,))
    body = value[1:] if value.startswith("!") else value
    if value.startswith("!") and body not in DEFAULT_SNAPSHOT_EXCLUDES:
        raise SpecError(field_name, "%r: '!' keeps one of the defaults (%s)"
                        % (value, ", ".join(DEFAULT_SNAPSHOT_EXCLUDES)))  # fmt: skip
    parts = body.split("/")
    if not all(parts) or any(p in (".", "..") or "**" in p for p in parts):
        raise SpecError(field_name, "%r must be a name or a relative path (no '.', '..', '**', "
                        "empty, leading or trailing '/')" % (value,))  # fmt: skip
    return value


@dataclass(frozen=True)
class SnapshotPolicy:
    """When a session's checkout is snapshotted and what is kept: before the agent starts
    (`before_start`, launch --no-snapshot turns it off), the newest `keep`, none older than
    `max_age` ("7d"), leaving out the default rebuildable trees and `excludes`."""

    before_start: bool = True
    keep: int = DEFAULT_SNAPSHOT_KEEP
    max_age: Optional[str] = None
    excludes: Tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.before_start, bool):
            raise SpecError("snapshots.before_start", "must be true or false")
        check_snapshot_keep(self.keep, "snapshots.keep")
        if self.max_age is not None:
            age_seconds(self.max_age, "snapshots.max_age")
        if not isinstance(self.excludes, tuple) or len(self.excludes) > MAX_SNAPSHOT_EXCLUDES:
            raise SpecError("snapshots.excludes", "at most %d patterns" % MAX_SNAPSHOT_EXCLUDES)
        for pattern in self.excludes:
            check_exclude(pattern, "snapshots.excludes")

    @property
    def max_age_seconds(self) -> Optional[int]:
        return None if self.max_age is None else age_seconds(self.max_age)

    @property
    def patterns(self) -> Tuple[str, ...]:
        """What is left out: the defaults, less those kept with "!name", plus the operator's."""
        kept = {p[1:] for p in self.excludes if p.startswith("!")}
        own = [p for p in self.excludes if not p.startswith("!")]
        merged = [p for p in DEFAULT_SNAPSHOT_EXCLUDES if p not in kept] + own
        return tuple(dict.fromkeys(merged))

    def to_wire(self) -> Dict[str, Any]:
        return {"before_start": self.before_start, "keep": self.keep, "max_age": self.max_age,
                "excludes": list(self.excludes)}  # fmt: skip

    @classmethod
    def from_wire(cls, data: object) -> "SnapshotPolicy":
        data = _check_keys(data, ("before_start", "keep", "max_age", "excludes"), "snapshots")
        return cls(
            before_start=data.get("before_start", True),
            keep=data.get("keep", DEFAULT_SNAPSHOT_KEEP),
            max_age=data.get("max_age"),
            excludes=tuple(_string_list(data.get("excludes") or [], "snapshots.excludes")),
        )


@dataclass(frozen=True)
class SnapshotInfo:
    """One snapshot as a host reports it (`snapshot.list`, `snapshot.take`); `files_linked`
    files are hard links to the previous snapshot's, `bytes_new` is what it added on disk."""

    id: str
    session: str
    taken_at: float
    reason: str
    files: int = 0
    dirs: int = 0
    links: int = 0
    bytes: int = 0
    files_new: int = 0
    files_linked: int = 0
    bytes_new: int = 0
    bytes_linked: int = 0
    excluded: int = 0  # entries left out by the excludes (a tree counts once)
    skipped: int = 0  # entries it could not take: special files, too deep, too many, too large
    skipped_sample: Tuple[str, ...] = ()
    excludes: Tuple[str, ...] = ()

    COUNTS = ("files", "dirs", "links", "bytes", "files_new", "files_linked", "bytes_new",
              "bytes_linked", "excluded", "skipped")  # fmt: skip

    def to_wire(self) -> Dict[str, Any]:
        data: Dict[str, Any] = {item.name: getattr(self, item.name) for item in fields(self)}
        data["skipped_sample"] = list(self.skipped_sample)
        data["excludes"] = list(self.excludes)
        return data

    @classmethod
    def from_wire(cls, data: object) -> "SnapshotInfo":
        """A host's answer, checked field by field (the host is not trusted)."""
        if not isinstance(data, dict):
            raise SpecError("snapshot", "must be an object")
        if data.get("reason") not in SNAPSHOT_REASONS:
            raise SpecError("snapshot.reason", "must be one of %s" % ", ".join(SNAPSHOT_REASONS))
        counts = {}
        for name in cls.COUNTS:
            value = _integer(data.get(name, 0), "snapshot." + name)
            if value is None or value < 0:
                raise SpecError("snapshot." + name, "must be a number >= 0")
            counts[name] = value
        sample = _string_list(data.get("skipped_sample") or [], "snapshot.skipped_sample")
        excludes = _string_list(data.get("excludes") or [], "snapshot.excludes")
        if len(sample) > MAX_SKIPPED_SAMPLE or any(len(s) > 4096 for s in sample):
            raise SpecError("snapshot.skipped_sample", "too long")
        if len(excludes) > len(DEFAULT_SNAPSHOT_EXCLUDES) + MAX_SNAPSHOT_EXCLUDES:
            raise SpecError("snapshot.excludes", "too many")
        return cls(
            id=check_snapshot_id(data.get("id"), "snapshot.id"),
            session=check_session_id(data.get("session"), "snapshot.session"),
            taken_at=_number(data.get("taken_at"), "snapshot.taken_at", optional=False),
            reason=str(data["reason"]),
            skipped_sample=tuple(sample),
            excludes=tuple(_check_str(p, "snapshot.excludes", limit=256) for p in excludes),
            **counts,
        )


# -- the launch spec -------------------------------------------------------------------------
@dataclass(frozen=True)
class Limits:
    """Per-sandbox limits. None: the engine's default (unlimited)."""

    memory: Optional[str] = None  # "512m", "4g"
    cpus: Optional[float] = None
    pids: Optional[int] = None
    nofile: Optional[int] = None  # open files per process (soft and hard)

    def __post_init__(self) -> None:
        if self.memory is not None:
            memory_bytes(self.memory)
        _check_cpus(self.cpus)
        _check_pids(self.pids)
        _check_nofile(self.nofile)

    def to_wire(self) -> Dict[str, Any]:
        return {name: getattr(self, name) for name in LIMIT_NAMES}

    @classmethod
    def from_wire(cls, data: object) -> "Limits":
        data = _check_keys(data, LIMIT_NAMES, "limits")
        return cls(*(data.get(name) for name in LIMIT_NAMES))  # checked by __post_init__

    @property
    def memory_bytes(self) -> Optional[int]:
        return None if self.memory is None else memory_bytes(self.memory)


@dataclass(frozen=True)
class LaunchSpec:
    """What the host agent creates for one session: the operator's choices, nothing more."""

    session_id: str
    workspace: str
    role: str
    role_hash: str
    user: str  # the role's user (the host maps it to a safe uid)
    runtime: str
    mode: Mode
    command: Tuple[str, ...]
    isolation: Isolation
    network: Network
    host: str  # the inventory name of the target host (JACKIN_HOST)
    name: Optional[str] = None
    task: Optional[str] = None
    env: Tuple[Tuple[str, str], ...] = ()
    secret_env: Tuple[str, ...] = ()  # names only; values travel beside the spec, never in it
    # Names of secrets delivered as files (SECRETS_MOUNT/NAME) and exported to the agent only.
    secret_files: Tuple[str, ...] = ()
    mounts: Tuple[Mount, ...] = ()  # the operator's, besides the checkout
    acknowledged: Tuple[str, ...] = ()  # sensitive names the operator allowed a mount to hold
    base_commit: Optional[str] = None
    limits: Limits = field(default_factory=Limits)
    egress: Tuple[Rule, ...] = ()  # the allowlist's rules, in order (deny wins)
    backend: Backend = Backend.DOCKER
    model_api: Optional[ModelApi] = None  # allowlist: the proxy adds the runtime's key
    private_docker: Optional[PrivateDocker] = None  # docker private: the session's own daemon
    # Seconds idle (interactive: no tmux activity) before the host stops it; None: never.
    idle_timeout: Optional[int] = None
    # Snapshots of the checkout: before the agent starts (or not), retention, excludes.
    snapshots: SnapshotPolicy = field(default_factory=SnapshotPolicy)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Every rule of the boundary. Runs on construction: a bad spec cannot exist."""
        check_session_id(self.session_id, "session_id")
        check_name(self.workspace, "workspace")
        check_name(self.role, "role")
        check_hash(self.role_hash, "role_hash")
        check_role_user(self.user, "user")
        check_name(self.runtime, "runtime")
        check_name(self.host, "host")
        if self.name is not None:
            check_name(self.name, "name")
        _check_str(self.task, "task", optional=True, limit=MAX_TASK_BYTES)
        if self.mode is Mode.TASK and not self.task:
            raise SpecError("task", "a task session needs a task")
        if not self.command:
            raise SpecError("command", "must be a non-empty list of strings")
        for index, arg in enumerate(self.command):
            _check_str(arg, "command[%d]" % index, limit=MAX_TASK_BYTES + 4096)
        seen = set()
        for env_name, value in self.env:
            check_env_name(env_name, "env")
            check_env_value(value, "env." + env_name)
            seen.add(env_name)
        for env_name in self.secret_env:
            check_env_name(env_name, "secret_env")
            if env_name in seen or env_name in RESERVED_ENV:
                raise SpecError("secret_env", "%s is also set as a plain variable" % env_name)
        if len(seen) != len(self.env):
            raise SpecError("env", "a variable is set twice")
        if len(self.secret_files) > MAX_SECRET_FILES:
            raise SpecError("secret_files", "at most %d secrets" % MAX_SECRET_FILES)
        for env_name in self.secret_files:
            check_env_name(env_name, "secret_files")
            if env_name in seen or env_name in RESERVED_ENV or env_name in self.secret_env:
                raise SpecError("secret_files", "%s is also set another way" % env_name)
        if len(set(self.secret_files)) != len(self.secret_files):
            raise SpecError("secret_files", "a secret is named twice")
        if len(self.mounts) > MAX_MOUNTS or not all(isinstance(m, Mount) for m in self.mounts):
            raise SpecError("mounts", "at most %d mounts" % MAX_MOUNTS)
        targets = [m.target for m in self.mounts]
        for index, target in enumerate(targets):
            if any(target == other or target.startswith(other + "/") or other.startswith(
                    target + "/") for other in targets[:index]):  # fmt: skip
                raise SpecError("mounts", "%s overlaps another mount" % target)
        for name in self.acknowledged:
            if name not in SENSITIVE_NAMES:
                raise SpecError("acknowledged", "%r is not a sensitive name (%s)"
                                % (name, ", ".join(SENSITIVE_NAMES)))  # fmt: skip
        for mount in self.mounts:
            if mount.target == self.home or self.home.startswith(mount.target + "/"):
                raise SpecError("mounts", "%s would hide the agent's home" % mount.target)
            unacknowledged = [n for n in sensitive_names(mount.source or "")
                              if n not in self.acknowledged]  # fmt: skip
            if unacknowledged:
                raise SpecError("mounts", "%s is sensitive (%s): acknowledge it by name"
                                % (mount.source, ", ".join(unacknowledged)))  # fmt: skip
        check_commit(self.base_commit, "base_commit")
        check_idle_timeout(self.idle_timeout, "idle_timeout")
        if self.egress and self.network is not Network.ALLOWLIST:
            raise SpecError("egress", "rules apply only to network allowlist")
        if not all(isinstance(rule, Rule) for rule in self.egress):
            raise SpecError("egress", "must be a list of rules")
        if self.model_api is not None:
            if self.network is not Network.ALLOWLIST:
                raise SpecError("model_api", "the proxy adds the key only with network allowlist")
            if self.model_api.key_env not in self.secret_env:
                raise SpecError("model_api", "its key_env is not among secret_env")
            if self.model_api.base_url_env in dict(self.env):
                raise SpecError("env", "%s is set by the proxy route" % self.model_api.base_url_env)
        if self.private_docker is not None:
            if not isinstance(self.private_docker, PrivateDocker):
                raise SpecError("private_docker", "must be an image and a privilege")
            taken = [name for name in PRIVATE_DOCKER_ENV if name in dict(self.env)]
            if taken:
                raise SpecError("env", "%s is set by docker private" % ", ".join(taken))
            if any(m.target == PRIVATE_DOCKER_CERTS or m.target.startswith(PRIVATE_DOCKER_CERTS
                                                                            + "/")
                   for m in self.mounts):  # fmt: skip
                raise SpecError("mounts", "%s is the private docker's" % PRIVATE_DOCKER_CERTS)
        if not isinstance(self.snapshots, SnapshotPolicy):
            raise SpecError("snapshots", "must be a snapshot policy")

    # Derived, identical on both sides.
    @property
    def image(self) -> str:
        return image_tag(self.role, self.role_hash)

    @property
    def container(self) -> str:
        return container_name(self.session_id, self.workspace, self.role)

    @property
    def branch(self) -> Optional[str]:
        return session_branch(self.session_id) if self.isolation is Isolation.CLONE else None

    @property
    def home(self) -> str:
        return agent_home(self.user)

    @property
    def workdir(self) -> str:
        return CONTAINER_WORKDIR

    @property
    def labels(self) -> Dict[str, str]:
        return {
            LABEL_MANAGED: "true",
            LABEL_SESSION: self.session_id,
            LABEL_WORKSPACE: self.workspace,
            LABEL_ROLE: self.role,
            LABEL_RUNTIME: self.runtime,
        }

    @property
    def tmpfs(self) -> Dict[str, str]:
        return {"/tmp": TMPFS_OPTIONS, self.home: TMPFS_OPTIONS}

    @property
    def environment(self) -> Dict[str, str]:
        """The sandbox's plain environment (secrets are added by the host, from elsewhere)."""
        env = dict(self.env)
        env.update({"HOME": self.home, "JACKIN_SESSION": self.session_id, "JACKIN_HOST": self.host})
        return env

    def to_wire(self) -> Dict[str, Any]:
        data: Dict[str, Any] = {}
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, Enum):
                value = value.value
            elif isinstance(value, Limits):
                value = value.to_wire()
            elif item.name == "egress":
                value = [rule.to_wire() for rule in value]
            elif isinstance(value, (ModelApi, PrivateDocker, SnapshotPolicy)):
                value = value.to_wire()
            elif item.name == "mounts":
                value = [mount.to_wire() for mount in value]
            elif item.name == "env":
                value = dict(value)
            elif isinstance(value, tuple):
                value = list(value)
            data[item.name] = value
        return data

    @classmethod
    def from_wire(cls, data: object) -> "LaunchSpec":
        names = tuple(item.name for item in fields(cls))
        data = _check_keys(data, names, "spec")
        missing = [name for name in ("session_id", "workspace", "role", "role_hash", "user",
                                     "runtime", "mode", "command", "isolation", "network", "host")
                   if name not in data]  # fmt: skip
        if missing:
            raise SpecError("spec", "missing field(s): %s" % ", ".join(missing))
        env = data.get("env") or {}
        if not isinstance(env, dict):
            raise SpecError("env", "must be an object")
        command = data["command"]
        if not isinstance(command, list):
            raise SpecError("command", "must be a non-empty list of strings")
        secret_env = data.get("secret_env") or []
        if not isinstance(secret_env, list):
            raise SpecError("secret_env", "must be a list of names")
        for key in ("session_id", "workspace", "role", "role_hash", "user", "runtime", "host"):
            _check_str(data[key], key)
        return cls(
            session_id=data["session_id"],
            workspace=data["workspace"],
            role=data["role"],
            role_hash=data["role_hash"],
            user=data["user"],
            runtime=data["runtime"],
            mode=_check_enum(data["mode"], Mode, "mode"),
            command=tuple(command),
            isolation=_check_enum(data["isolation"], Isolation, "isolation"),
            network=_check_enum(data["network"], Network, "network"),
            host=data["host"],
            name=data.get("name"),
            task=data.get("task"),
            env=tuple((str(k), v) for k, v in env.items()),
            secret_env=tuple(secret_env),
            secret_files=tuple(_string_list(data.get("secret_files") or [], "secret_files")),
            mounts=tuple(Mount.from_wire(m) for m in _list(data.get("mounts") or [], "mounts")),
            acknowledged=tuple(_string_list(data.get("acknowledged") or [], "acknowledged")),
            base_commit=data.get("base_commit"),
            limits=Limits.from_wire(data.get("limits") or {}),
            egress=rules_from_wire(data.get("egress") or [], "egress"),
            backend=_check_enum(data.get("backend", "docker"), Backend, "backend"),
            model_api=None
            if data.get("model_api") is None
            else ModelApi.from_wire(data["model_api"]),
            private_docker=None
            if data.get("private_docker") is None
            else PrivateDocker.from_wire(data["private_docker"]),
            idle_timeout=data.get("idle_timeout"),
            snapshots=SnapshotPolicy.from_wire(data.get("snapshots") or {}),
        )


# -- what a host's egress proxies decided (`egress.log`) ---------------------------------------
@dataclass(frozen=True)
class EgressEntry:
    session: str
    host: str
    port: int
    decision: str  # allowed | denied | failed
    rule: str
    bytes_up: int
    bytes_down: int
    count: int
    first_seen: float
    last_seen: float

    @classmethod
    def from_wire(cls, data: object) -> "EgressEntry":
        """A host's answer, checked field by field (the host is not trusted)."""
        if not isinstance(data, dict):
            raise SpecError("egress", "must be an object")
        decision = data.get("decision")
        if decision not in ("allowed", "denied", "failed"):
            raise SpecError("egress.decision", "must be allowed, denied or failed")
        port = _integer(data.get("port"), "egress.port")
        if port is None or not 0 <= port <= 65535:  # 0: the row counting many destinations
            raise SpecError("egress.port", "must be a number from 0 to 65535")
        counts = [_integer(data.get(k), "egress." + k) for k in ("bytes_up", "bytes_down", "count")]
        if any(c is None or c < 0 for c in counts):
            raise SpecError("egress", "bytes_up, bytes_down and count must be numbers >= 0")
        return cls(
            session=check_session_id(data.get("session"), "egress.session"),
            host=_check_str(data.get("host"), "egress.host", limit=260),
            port=port,
            decision=str(decision),
            rule=_check_str(data.get("rule"), "egress.rule", limit=1024),
            bytes_up=int(counts[0] or 0),
            bytes_down=int(counts[1] or 0),
            count=int(counts[2] or 0),
            first_seen=_number(data.get("first_seen"), "egress.first_seen", optional=False),
            last_seen=_number(data.get("last_seen"), "egress.last_seen", optional=False),
        )


# -- what an agent says of itself (agent_host/agent_events.py) -------------------------------
LINK_KINDS = ("pr", "issue", "repo", "link")  # the tag protocol's links: <jackin:pr>URL</jackin:pr>
MAX_LINKS = 20  # per kind and session: further distinct links are dropped (first seen wins)
MAX_URL = 2048
USAGE_COUNTS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens")
MAX_TOKENS = 2**53  # beyond any real count; keeps the number exact in JSON
MAX_COST_USD = 1e9


_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
# scheme://host[:port][/path?query#fragment]: no userinfo (`https://github.com@evil.test/`
# goes to evil.test), a DNS name, an IPv4 or a bracketed IPv6 host, a decimal port. A regex,
# not urlsplit: its answers differ between the host's Python (3.9) and the laptop's.
_URL_RE = re.compile(
    r"https?://(?:%s(?:\.%s)*\.?|\[[0-9A-Fa-f:.]{2,45}\])(?::([0-9]{1,5}))?(?:[/?#][\x21-\x7e]*)?\Z"
    % (_LABEL, _LABEL)
)


def valid_url(value: object) -> bool:
    """What a link from an agent may be: an http(s) URL with a host and no userinfo,
    printable ASCII only (no spaces, quotes, backslashes, backticks or angle brackets: it
    reaches a terminal and the laptop's opener), a decimal port up to 65535 if any, at most
    MAX_URL characters. An internationalised name comes as punycode."""
    if not isinstance(value, str) or not 0 < len(value) <= MAX_URL:
        return False
    if any(not 0x21 <= ord(char) <= 0x7E or char in "\\\"'<>`" for char in value):
        return False
    match = _URL_RE.match(value)
    return match is not None and (match.group(1) is None or int(match.group(1)) <= 65535)


def check_links(value: object, field_name: str) -> Optional[Dict[str, List[str]]]:
    """An agent's links by kind, as a host reports them (see valid_url)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise SpecError(field_name, "must be an object")
    links: Dict[str, List[str]] = {}
    for kind, urls in value.items():
        if kind not in LINK_KINDS:
            raise SpecError(field_name, "unknown link kind %r" % (kind,))
        if not isinstance(urls, list) or len(urls) > MAX_LINKS:
            limit = "must be a list of at most %d" % MAX_LINKS
            raise SpecError("%s.%s" % (field_name, kind), limit)
        for url in urls:
            if not valid_url(url):
                raise SpecError("%s.%s" % (field_name, kind), "holds something not an http(s) URL")
        links[kind] = list(urls)
    return links


def check_usage(value: object, field_name: str) -> Optional[Dict[str, Any]]:
    """Tokens and cost a runtime reported for a session: counts (whole, not negative) and
    `cost_usd` (None when the runtime reports no cost, as codex does)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise SpecError(field_name, "must be an object")
    unknown = set(value) - set(USAGE_COUNTS) - {"cost_usd"}
    if unknown:
        raise SpecError(field_name, "unknown fields: %s" % ", ".join(sorted(map(str, unknown))))
    usage: Dict[str, Any] = {}
    for name in USAGE_COUNTS:
        count = value.get(name, 0)
        if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= MAX_TOKENS:
            raise SpecError("%s.%s" % (field_name, name), "must be a whole number of tokens")
        usage[name] = count
    cost = value.get("cost_usd")
    if cost is not None:
        if isinstance(cost, bool) or not isinstance(cost, (int, float)):
            raise SpecError(field_name + ".cost_usd", "must be a number")
        if not 0 <= cost <= MAX_COST_USD:  # NaN fails this too
            raise SpecError(field_name + ".cost_usd", "must be between 0 and %g" % MAX_COST_USD)
        cost = float(cost)
    usage["cost_usd"] = cost
    return usage


# -- the session record (what a host says about a session) -----------------------------------
@dataclass(frozen=True)
class SessionRecord:
    """One session as a host reports it (`session.list`, `session.create`, ...)."""

    id: str
    workspace: str
    role: str
    runtime: str
    container: str
    mode: Mode
    isolation: Isolation
    state: SessionState
    agent_status: AgentStatus
    created_at: float
    name: Optional[str] = None
    image: Optional[str] = None
    network: Optional[Network] = None
    task: Optional[str] = None
    branch: Optional[str] = None
    base_commit: Optional[str] = None
    launch_commit: Optional[str] = None
    pulled_commit: Optional[str] = None
    uid: Optional[int] = None
    exit_code: Optional[int] = None
    reason: Optional[EndReason] = None
    error: Optional[str] = None
    started_at: Optional[float] = None
    finished_at: Optional[float] = None
    updated_at: Optional[float] = None
    cpu_percent: Optional[float] = None
    memory_bytes: Optional[int] = None
    memory_limit_bytes: Optional[int] = None  # its cgroup's memory.max; None: no limit/unknown
    pids: Optional[int] = None
    oom_kills: Optional[int] = None
    snapshots: Optional[int] = None  # how many snapshots of its checkout the host keeps
    links: Optional[Dict[str, List[str]]] = None  # what the agent's tags named (LINK_KINDS)
    usage: Optional[Dict[str, Any]] = None  # tokens and cost its runtime reported

    def to_wire(self) -> Dict[str, Any]:
        data: Dict[str, Any] = {}
        for item in fields(self):
            value = getattr(self, item.name)
            data[item.name] = value.value if isinstance(value, Enum) else value
        return data

    @classmethod
    def from_wire(cls, data: object) -> "SessionRecord":
        """Parse a host's answer: the host is not trusted, so every field is checked."""
        names = tuple(item.name for item in fields(cls))
        if not isinstance(data, dict):
            raise SpecError("session", "must be an object")
        known = {key: value for key, value in data.items() if key in names}
        try:
            return cls(
                id=check_session_id(known.get("id"), "id"),
                workspace=check_name(known.get("workspace"), "workspace"),
                role=check_name(known.get("role"), "role"),
                runtime=check_name(known.get("runtime"), "runtime"),
                container=_check_str(known.get("container"), "container", limit=256),
                mode=_check_enum(known.get("mode"), Mode, "mode"),
                isolation=_check_enum(known.get("isolation"), Isolation, "isolation"),
                state=_check_enum(known.get("state"), SessionState, "state"),
                agent_status=_check_enum(
                    known.get("agent_status", "unknown"), AgentStatus, "agent_status"
                ),
                created_at=_number(known.get("created_at"), "created_at", optional=False),
                name=None if known.get("name") is None else check_name(known["name"], "name"),
                image=_check_str(known.get("image"), "image", optional=True, limit=512),
                network=None
                if known.get("network") is None
                else _check_enum(known["network"], Network, "network"),
                task=_check_str(known.get("task"), "task", optional=True, limit=MAX_TASK_BYTES),
                branch=_check_str(known.get("branch"), "branch", optional=True, limit=256),
                base_commit=check_commit(known.get("base_commit"), "base_commit"),
                launch_commit=check_commit(known.get("launch_commit"), "launch_commit"),
                pulled_commit=check_commit(known.get("pulled_commit"), "pulled_commit"),
                uid=_integer(known.get("uid"), "uid"),
                exit_code=_integer(known.get("exit_code"), "exit_code"),
                reason=None
                if known.get("reason") is None
                else _check_enum(known["reason"], EndReason, "reason"),
                error=_check_str(known.get("error"), "error", optional=True, limit=8192),
                started_at=_number(known.get("started_at"), "started_at"),
                finished_at=_number(known.get("finished_at"), "finished_at"),
                updated_at=_number(known.get("updated_at"), "updated_at"),
                cpu_percent=_number(known.get("cpu_percent"), "cpu_percent"),
                memory_bytes=_integer(known.get("memory_bytes"), "memory_bytes"),
                memory_limit_bytes=_integer(known.get("memory_limit_bytes"), "memory_limit_bytes"),
                pids=_integer(known.get("pids"), "pids"),
                oom_kills=_integer(known.get("oom_kills"), "oom_kills"),
                snapshots=_integer(known.get("snapshots"), "snapshots"),
                links=check_links(known.get("links"), "links"),
                usage=check_usage(known.get("usage"), "usage"),
            )
        except SpecError as exc:
            raise SpecError("session." + exc.field, exc.problem) from None


def _list(value: object, field_name: str) -> List[Any]:
    if not isinstance(value, list):
        raise SpecError(field_name, "must be a list")
    return value


def _string_list(value: object, field_name: str) -> List[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise SpecError(field_name, "must be a list of names")
    return list(value)


def _number(value: object, field_name: str, optional: bool = True) -> Any:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise SpecError(field_name, "must be a number")
    return float(value)


def _integer(value: object, field_name: str) -> Optional[int]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(field_name, "must be an integer")
    return value


def records_from_wire(items: object) -> List[SessionRecord]:
    if not isinstance(items, list):
        raise SpecError("sessions", "must be a list")
    return [SessionRecord.from_wire(item) for item in items]


# -- who a host is (the `identity` method) -----------------------------------------------------
IDENTITY_RE = re.compile(r"^[0-9a-f]{32}\Z")


def _check_identity(value: object, field_name: str) -> Optional[str]:
    if value is None:
        return None
    if not isinstance(value, str) or not IDENTITY_RE.match(value):
        raise SpecError(field_name, "must be 32 lowercase hex digits")
    return value


@dataclass(frozen=True)
class HostIdentity:
    """What lets the laptop tell one machine, and one host root, under two inventory names.

    `machine_id` is /etc/machine-id (None where there is none, as in most containers);
    `root_id` a random id the agent made once under its root: two names reporting the same
    root_id read the same root, so the same sessions. The host key, the other half of the
    proof, is not the host's word: the laptop takes it from the connection it verified."""

    machine_id: Optional[str]
    root_id: Optional[str]

    def to_wire(self) -> Dict[str, Any]:
        return {"machine_id": self.machine_id, "root_id": self.root_id}

    @classmethod
    def from_wire(cls, data: object) -> "HostIdentity":
        known = _check_keys(data, ("machine_id", "root_id"), "identity")
        try:
            return cls(
                machine_id=_check_identity(known.get("machine_id"), "machine_id"),
                root_id=_check_identity(known.get("root_id"), "root_id"),
            )
        except SpecError as exc:
            raise SpecError("identity." + exc.field, exc.problem) from None
