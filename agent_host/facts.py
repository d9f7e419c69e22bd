"""Host facts for `hosts check`: what this machine is and whether it can run sandboxes.

Python 3.9 compatible. Every probe is independent and bounded: one missing tool never hides
the others.
"""

from __future__ import annotations

import binascii
import contextlib
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Tuple

from agent_host import AGENT_VERSION, layout
from agent_host.wire import IDENTITY_RE, HostIdentity

PROBE_TIMEOUT = 5.0


def _first_line(argv: List[str]) -> Optional[str]:
    """First line of a command's output, or None if it is missing or fails."""
    if shutil.which(argv[0]) is None:
        return None
    try:
        done = subprocess.run(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=PROBE_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    text = done.stdout.decode(errors="replace").strip()
    return text.splitlines()[0] if text else None


def os_release() -> Optional[str]:
    try:
        with open("/etc/os-release", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return None


def memory_bytes() -> Dict[str, Optional[int]]:
    total = available = None
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                key, _, rest = line.partition(":")
                if key == "MemTotal":
                    total = int(rest.split()[0]) * 1024
                elif key == "MemAvailable":
                    available = int(rest.split()[0]) * 1024
    except (OSError, ValueError):
        pass
    return {"total": total, "available": available}


def disk_free(root: str) -> Dict[str, Any]:
    # The root may not exist yet (first contact): measure its nearest existing parent.
    path = os.path.expanduser(root)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    try:
        usage = shutil.disk_usage(path)
    except OSError:
        return {"path": path, "free": None, "total": None}
    return {"path": path, "free": usage.free, "total": usage.total}


def version_word(line: Optional[str], index: int) -> Optional[str]:
    if not line:
        return None
    words = line.split()
    return words[index] if len(words) > index else line


DOCKER_SOCKET = "/var/run/docker.sock"


def _unix_http(path: str) -> Any:
    """An http.client connection over a unix socket (imported here: `serve` starts fast)."""
    import http.client

    class UnixHTTPConnection(http.client.HTTPConnection):
        def connect(self) -> None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(PROBE_TIMEOUT)
            sock.connect(path)
            self.sock = sock

    return UnixHTTPConnection("localhost", timeout=PROBE_TIMEOUT)


def docker_facts(socket_path: str = DOCKER_SOCKET) -> Dict[str, Any]:
    """Engine version and whether this user may use it, asked on the engine's own socket.

    Plain http.client, not the docker SDK: importing the SDK costs more CPU than the rest of
    `hosts check` on a small host.
    """
    installed = shutil.which("dockerd") is not None or os.path.exists(socket_path)
    import http.client

    try:
        version = _engine_get(socket_path, "/version")
    except PermissionError:
        return {
            "installed": installed,
            "version": None,
            "access": False,
            "error": "permission denied on the docker socket",
        }
    except (OSError, ValueError, http.client.HTTPException) as exc:
        return {
            "installed": installed,
            "version": None,
            "access": False,
            "error": (str(exc) or type(exc).__name__)[:300],
        }
    runtimes, runtimes_error = engine_runtimes(socket_path)
    return {
        "installed": True,
        "version": version.get("Version"),
        "api_version": version.get("ApiVersion"),
        "access": True,
        "error": None,
        "runtimes": runtimes,
        "runtimes_error": runtimes_error,
    }


def _engine_get(socket_path: str, path: str) -> Any:
    """GET `path` of the engine's API on its socket, parsed; raises OSError (PermissionError
    when the socket is not ours), ValueError or HTTPException."""
    conn = _unix_http(socket_path)
    try:
        conn.request("GET", path)
        reply = conn.getresponse()
        body = reply.read()
        if reply.status != 200:
            raise OSError("HTTP %d from the engine" % reply.status)
        return json.loads(body.decode())
    finally:
        conn.close()


def engine_runtimes(
    socket_path: str = DOCKER_SOCKET,
) -> Tuple[Optional[Dict[str, Any]], Optional[str]]:
    """The engine's OCI runtimes as `docker info` lists them (`runc`, and `runsc` where the
    operator registered gVisor), name -> {"path", "runtimeArgs"}; or None and why not."""
    import http.client

    try:
        info = _engine_get(socket_path, "/info")
    except (OSError, ValueError, http.client.HTTPException) as exc:
        return None, (str(exc) or type(exc).__name__)[:300]
    found = info.get("Runtimes") if isinstance(info, dict) else None
    if not isinstance(found, dict):
        return None, "the engine listed no runtimes"
    runtimes: Dict[str, Any] = {}
    for name, entry in found.items():
        if isinstance(entry, dict):
            args = entry.get("runtimeArgs")
            runtimes[str(name)] = {
                "path": entry.get("path"),
                "runtimeArgs": list(args) if isinstance(args, list) else [],
            }
    return runtimes, None


KVM_DEVICE = "/dev/kvm"


def kvm_facts(device: str = KVM_DEVICE) -> Dict[str, bool]:
    """Whether the machine offers KVM (a later microVM backend needs it), and whether this
    account may open it."""
    present = os.path.exists(device)
    return {"present": present, "access": present and os.access(device, os.R_OK | os.W_OK)}


TOOL_VERSION_TTL = 60.0  # seconds a resident agent keeps a tool's version before asking again
_tool_versions: Dict[str, Tuple[float, Optional[str]]] = {}


def _tool_version(tool: str) -> Optional[str]:
    """`tool --version`'s version word; a resident agent asks once a minute, not per check."""
    now = time.monotonic()
    cached = _tool_versions.get(tool)
    if cached is not None and now - cached[0] < TOOL_VERSION_TTL:
        return cached[1]
    version = version_word(_first_line([tool, "--version"]), 2)
    _tool_versions[tool] = (now, version)
    return version


def usable_cpus() -> Optional[int]:
    """The CPUs this process may run on (what `nproc` says), or None."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count()


def pid_max() -> Optional[int]:
    try:
        with open("/proc/sys/kernel/pid_max", encoding="ascii") as fh:
            return int(fh.read(32).strip())
    except (OSError, ValueError):
        return None


def collect(root: str) -> Dict[str, Any]:
    uname = platform.uname()
    try:
        load = list(os.getloadavg())
    except OSError:
        load = None
    return {
        "hostname": uname.node,
        "os": os_release() or uname.system,
        "kernel": uname.release,
        "arch": uname.machine,
        "cpus": os.cpu_count(),
        "memory": memory_bytes(),
        "disk": disk_free(root),
        "load": load,
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "docker": docker_facts(),
        "kvm": kvm_facts(),
        "cpus_usable": usable_cpus(),
        "pid_max": pid_max(),
        "rsync": _tool_version("rsync"),
        "git": _tool_version("git"),
        "agent_version": AGENT_VERSION,
        "user": _user(),
        "time": time.time(),
    }


MACHINE_ID_FILES = ("/etc/machine-id", "/var/lib/dbus/machine-id")


def _read_id(path: str) -> Optional[str]:
    """A 32-hex id from `path`, or None if it is missing, unreadable or not one."""
    try:
        with open(path, encoding="ascii", errors="replace") as fh:
            value = fh.read(64).strip().lower()
    except OSError:
        return None
    return value if IDENTITY_RE.match(value) else None


def machine_id() -> Optional[str]:
    """/etc/machine-id where the system has one ("uninitialized", empty or absent: None)."""
    for path in MACHINE_ID_FILES:
        value = _read_id(path)
        if value is not None:
            return value
    return None


def root_id(root: str) -> Optional[str]:
    """This root's own random id, made on first use. Written to a private file and hard-linked
    into place, so two agents asking at once (one root under two names, in one `ls`) both read
    the one complete id that won; an existing id is never replaced."""
    path = layout.root_id_file(root)
    value = _read_id(path)
    if value is not None:
        return value
    if os.path.lexists(path):
        # Damaged (never trusted: None again), or linked by another agent since the read above:
        # the link is atomic, so a second read sees its complete id.
        return _read_id(path)
    os.makedirs(root, mode=0o700, exist_ok=True)
    fd, scratch = tempfile.mkstemp(prefix=".root-id.", dir=root)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write(binascii.hexlify(os.urandom(16)).decode() + "\n")
        with contextlib.suppress(FileExistsError):  # another agent made it first: theirs wins
            os.link(scratch, path)
    finally:
        os.unlink(scratch)
    return _read_id(path)


def identity(root: str) -> Dict[str, Any]:
    """The `identity` method: the same machine or root under two inventory names (see
    wire.HostIdentity)."""
    return HostIdentity(machine_id=machine_id(), root_id=root_id(root)).to_wire()


def _user() -> Optional[str]:
    try:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_name
    except (ImportError, KeyError):
        return os.environ.get("USER")
