"""Host facts for `hosts check`: what this machine is and whether it can run sandboxes.

Python 3.9 compatible. Every probe is independent and bounded: one missing tool never hides
the others.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional

from agent_host import AGENT_VERSION

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

    conn = _unix_http(socket_path)
    try:
        conn.request("GET", "/version")
        reply = conn.getresponse()
        body = reply.read()
        if reply.status != 200:
            raise OSError("HTTP %d from the engine" % reply.status)
        version = json.loads(body.decode())
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
    finally:
        conn.close()
    return {
        "installed": True,
        "version": version.get("Version"),
        "api_version": version.get("ApiVersion"),
        "access": True,
        "error": None,
    }


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
        "rsync": version_word(_first_line(["rsync", "--version"]), 2),
        "git": version_word(_first_line(["git", "--version"]), 2),
        "agent_version": AGENT_VERSION,
        "user": _user(),
        "time": time.time(),
    }


def _user() -> Optional[str]:
    try:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_name
    except (ImportError, KeyError):
        return os.environ.get("USER")
