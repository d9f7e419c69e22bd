"""The resident host agent: one process per host root and agent version, serving the RPC
protocol on a Unix socket to every controller command, so a command costs a connection, not a
Python start and the imports of the docker SDK.

- `connect --root R` (what the controller's exec runs) finds `<root>/run/agent-<hash>.sock`,
  starts the resident agent when nothing answers there, and relays stdin/stdout to it: the exec
  bridge. A controller that can open the socket itself (an SSH direct-streamlocal channel)
  skips even that.
- The resident agent holds `<root>/run/agent-<hash>.lock` for its whole life (one per root and
  version), serves each connection with its own `Server`, and samples the host and its sessions
  every SAMPLE_EVERY seconds (agent_host/sampler.py).
- It stays up while a controller is connected or a session is active, and LINGER seconds after
  that. A newer agent version has its own socket: the old one sees its code directory removed by
  the install and exits once its last connection closes. Session state lives in the host
  database and the engine, never in this process: killing it loses nothing, and the next
  command starts it again.

Python 3.9 compatible.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Dict, List, Optional

MARK = "jackin-agent-resident"
RUN_DIR = "run"
LINGER = 900.0  # seconds the agent stays after its last connection with no session active
LINGER_ENV = "JACKIN_AGENT_LINGER"  # tests shorten it; reaches the agent as --linger
CHECK_EVERY = 1.0  # seconds between the accept loop's looks at whether it should exit
READY_TIMEOUT = 20.0  # seconds `connect` waits for a starting agent to say "ready"
CHUNK = 65536
JANITOR_JOIN = 120.0  # seconds a leaving agent waits for a janitor pass under way


def run_dir(root: str) -> str:
    return os.path.join(root, RUN_DIR)


def socket_name(agent_hash: Optional[str]) -> str:
    return "agent-%s.sock" % (agent_hash or "source")


def socket_path(root: str, agent_hash: Optional[str]) -> str:
    return os.path.join(run_dir(root), socket_name(agent_hash))


def lock_path(root: str, agent_hash: Optional[str]) -> str:
    return os.path.join(run_dir(root), "agent-%s.lock" % (agent_hash or "source"))


def log_path(root: str) -> str:
    return os.path.join(run_dir(root), "agent.log")


def should_exit(
    connections: int, code_present: bool, idle_for: float, linger: float, active: bool
) -> bool:
    """Whether the resident agent leaves now. Pure.

    Never while a connection is open. With its code gone (a newer version replaced it), as soon
    as the last one closes; otherwise once idle for `linger` with no session active."""
    if connections > 0:
        return False
    if not code_present:
        return True
    return idle_for >= linger and not active


# -- connecting (the exec bridge) ----------------------------------------------------------------
def _connect(root: str, agent_hash: Optional[str]) -> Optional[socket.socket]:
    """A connection to the resident agent, or None when none answers. The socket is reached
    through its directory (a path may exceed the 108 bytes a Unix socket address holds)."""
    directory = run_dir(root)
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect("/proc/self/fd/%d/%s" % (fd, socket_name(agent_hash)))
    except OSError:
        sock.close()
        return None
    finally:
        os.close(fd)
    return sock


def private_run_dir(root: str) -> str:
    """`<root>/run`, made if missing, and refused unless it is a directory of ours that nobody
    else may enter (no symlink): whoever could, could put their socket in place of ours."""
    directory = run_dir(root)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    st = os.lstat(directory)
    import stat

    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        raise OSError("%s is not a directory of this user's" % directory)
    if st.st_mode & 0o077:
        os.chmod(directory, 0o700)
    return directory


def start(root: str, agent_hash: Optional[str], linger: float) -> str:
    """Start the resident agent detached (its own session, stdio away from the caller's);
    its first line: `ready PID`, `busy` (another holds the lock) or why it could not start."""
    try:
        private_run_dir(root)
    except OSError as exc:
        return str(exc)
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    words = [MARK, "--root", root, "--hash", agent_hash or "source", "--linger", repr(linger)]
    if os.path.isfile(os.path.join(package_parent, "__main__.py")):  # the deployed agent
        argv = [sys.executable, "-I", package_parent, *words]
    else:  # run from a source tree (tests)
        code = ("import sys; sys.path.insert(0, sys.argv[1]); from agent_host.resident import "
                "main; sys.exit(main(sys.argv[2:]))")  # fmt: skip
        argv = [sys.executable, "-I", "-c", code, package_parent, *words]
    with open(log_path(root), "ab") as log:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log,
            start_new_session=True, close_fds=True,
        )  # fmt: skip
    assert proc.stdout is not None
    import selectors

    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        ready = selector.select(READY_TIMEOUT)
    line = proc.stdout.readline(200).decode("utf-8", "replace").strip() if ready else ""
    proc.stdout.close()
    if not line.startswith("ready ") and line != "busy":
        proc.kill()
        return line or "no answer within %ds" % READY_TIMEOUT
    return line


def connect(root: str, agent_hash: Optional[str], linger: float) -> int:
    """The exec bridge: relay this process's stdin/stdout to the resident agent, starting it
    when none answers. Exits 0 when the agent closes the connection after our stdin ended."""
    sock = _connect(root, agent_hash)
    deadline = time.monotonic() + READY_TIMEOUT
    said = ""
    while sock is None:
        # Nobody answers: start one. "busy": another holds the lock, still starting or just
        # leaving; either way a look again settles it (bounded).
        said = start(root, agent_hash, linger)
        sock = _connect(root, agent_hash)
        if sock is None and (not said.startswith(("ready ", "busy"))
                             or time.monotonic() > deadline):  # fmt: skip
            sys.stderr.write("jackin: the resident agent did not start: %s (log: %s)\n"
                             % (said, log_path(root)))  # fmt: skip
            return 1
        if sock is None:
            time.sleep(0.05)
    return relay(sock, 0, 1)


def relay(sock: socket.socket, fd_in: int, fd_out: int) -> int:
    """Copy fd_in to the socket (then half-close it) and the socket to fd_out, until the agent
    closes its side. 0 when our side ended first, 1 when the agent went away mid-conversation."""
    ended = threading.Event()

    def upstream() -> None:
        try:
            while True:
                data = os.read(fd_in, CHUNK)
                if not data:
                    break
                sock.sendall(data)
        except OSError:
            pass
        ended.set()
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)

    threading.Thread(target=upstream, daemon=True).start()
    try:
        while True:
            data = sock.recv(CHUNK)
            if not data:
                break
            view = memoryview(data)
            while view:
                view = view[os.write(fd_out, view) :]
    except OSError:
        return 1
    finally:
        sock.close()
    if not ended.is_set():
        sys.stderr.write("jackin: the resident agent closed the connection\n")
        return 1
    return 0


# -- the resident agent --------------------------------------------------------------------------
class Resident:
    """The accept loop and its bookkeeping; each connection is served on its own thread."""

    def __init__(self, root: str, agent_hash: Optional[str], linger: float) -> None:
        from agent_host import main as agent_main

        self.root = root
        self.agent_hash = agent_hash
        self.linger = linger
        self.handlers = agent_main.handlers()
        self.package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        self._lock = threading.Lock()
        self.connections = 0
        self.served = 0
        self.last_closed = time.monotonic()
        self.started_at = time.time()
        self.stopping = threading.Event()
        self.sampler: Any = None
        self._janitor: Optional[threading.Thread] = None
        self._janitor_lock = threading.Lock()
        self._janitor_quitting = threading.Event()

    def ensure_janitor(self) -> None:
        """Idle cleanup in this process (agent_host/janitor.py), on a thread of its own, while
        a session of the root is active: no separate janitor process next to a resident agent."""
        from agent_host import janitor

        with self._janitor_lock:  # not self._lock: connections never wait on this file work
            running = self._janitor
            if running is not None and running.is_alive():
                if not self._janitor_quitting.is_set():
                    return
                running.join(JANITOR_JOIN)  # it is leaving: a new one follows it
            lock = janitor.claim_for_resident(self.root)
            if lock is None:
                return  # a janitor process of an earlier agent runs: it does the passes
            self._janitor_quitting = threading.Event()
            thread = threading.Thread(
                target=janitor.run_in_resident, name="janitor", daemon=True,
                args=(self.root, lock, self.stopping, self._janitor_quitting, self),
            )  # fmt: skip
            try:
                thread.start()
            except RuntimeError:  # no thread left (a pids limit): nobody holds the claim
                janitor.release_claim(self.root, lock)
                raise
            self._janitor = thread

    def finish_janitor(self) -> None:
        """Let a pass under way end (its stops recorded) before the process goes."""
        self.stopping.set()
        thread = self._janitor
        if thread is not None and thread.is_alive():
            thread.join(JANITOR_JOIN)

    def info(self) -> Dict[str, Any]:
        with self._lock:
            return {"pid": os.getpid(), "connections": self.connections, "served": self.served,
                    "started_at": self.started_at,
                    "socket": socket_path(self.root, self.agent_hash)}  # fmt: skip

    def serve_connection(self, conn: socket.socket) -> None:
        from agent_host.server import Server

        rfile = conn.makefile("rb")
        wfile = conn.makefile("wb")
        try:
            server = Server(self.root, self.handlers, wfile, agent_hash=self.agent_hash,
                            resident=self)  # fmt: skip
            server.serve(rfile)
        except Exception as exc:  # a bug in one connection must not end the agent
            _log(self.root, "connection failed: %s: %s" % (type(exc).__name__, exc))
        finally:
            for stream in (wfile, rfile):
                with contextlib.suppress(OSError, ValueError):
                    stream.close()
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
            with self._lock:
                self.connections -= 1
                self.last_closed = time.monotonic()

    def run(self, listener: socket.socket) -> None:
        listener.settimeout(CHECK_EVERY)
        while not self.stopping.is_set():
            try:
                conn, _ = listener.accept()
            except socket.timeout:
                if self._should_exit():
                    break
                continue
            except OSError:
                continue
            if not os.path.isdir(self.package_parent):
                # Our code was removed (an upgrade, or by hand): serve nobody new. The socket's
                # name goes at once, so the next command's bridge starts a new agent (which
                # waits for our lock); we leave once the connections under way end.
                conn.close()
                _unlink_socket(self.root, self.agent_hash)
                if self._should_exit():
                    break
                continue
            self._serve_in_thread(conn)
        # Leaving: the socket's name goes first (a command from now on starts a new agent, which
        # waits for our lock), then whatever queued meanwhile is served, not reset.
        _unlink_socket(self.root, self.agent_hash)
        listener.setblocking(False)
        threads = []
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                break
            threads.append(self._serve_in_thread(conn))
        for thread in threads:
            thread.join()

    def _serve_in_thread(self, conn: socket.socket) -> threading.Thread:
        conn.setblocking(True)
        with self._lock:
            self.connections += 1
            self.served += 1
        thread = threading.Thread(target=self.serve_connection, args=(conn,), daemon=True)
        thread.start()
        return thread

    def _should_exit(self) -> bool:
        with self._lock:
            connections = self.connections
            idle_for = time.monotonic() - self.last_closed
        code_present = os.path.isdir(self.package_parent)
        if connections or (code_present and idle_for < self.linger):
            return False  # the common case: no database read
        return should_exit(connections, code_present, idle_for, self.linger, _any_active(self.root))


def _any_active(root: str) -> bool:
    try:
        from agent_host.janitor import _any_active as active

        return active(root)
    except Exception:  # the database unreadable: stay, a later look decides
        return True


def _log(root: str, message: str) -> None:
    with contextlib.suppress(OSError), open(log_path(root), "a") as handle:
        handle.write("%s %s\n" % (time.strftime("%Y-%m-%dT%H:%M:%S"), message[:2000]))


def _audit(root: str, action: str, target: str, undo: str) -> None:
    """A host-side change in the root's audit (`jackin-remote audit`): it never stops the agent."""
    try:
        from agent_host import audit

        audit.record(root, None, action, target, undo)
    except Exception as exc:  # a full disk, say: the log still says it
        _log(root, "audit: %s: %s" % (type(exc).__name__, exc))


def _unlink_socket(root: str, agent_hash: Optional[str]) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(run_dir(root), os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            os.unlink(socket_name(agent_hash), dir_fd=fd)
        finally:
            os.close(fd)


def _listen(root: str, agent_hash: Optional[str]) -> socket.socket:
    """Bind the socket (we hold the lock: a file there is a dead agent's), via the directory."""
    directory = run_dir(root)
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(socket_name(agent_hash), dir_fd=fd)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            listener.bind("/proc/self/fd/%d/%s" % (fd, socket_name(agent_hash)))
        finally:
            os.umask(old)
    finally:
        os.close(fd)
    listener.listen(64)
    return listener


def main(argv: Optional[List[str]] = None) -> int:
    """`jackin-agent-resident --root R --hash H [--linger S]`: be this root's resident agent."""
    parser = argparse.ArgumentParser(prog=MARK)
    parser.add_argument("mark", choices=[MARK])
    parser.add_argument("--root", required=True)
    parser.add_argument("--hash", required=True)
    parser.add_argument("--linger", type=float, default=LINGER)
    args = parser.parse_args(argv)
    from agent_host.janitor import say_to_starter  # the janitor's own `ready`/`busy` line

    root = args.root
    agent_hash = None if args.hash == "source" else args.hash
    private_run_dir(root)
    with open(lock_path(root, agent_hash), "a") as lock:  # held for the agent's life
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            say_to_starter("busy")
            return 0
        resident = Resident(root, agent_hash, args.linger)
        listener = _listen(root, agent_hash)
        signal.signal(signal.SIGTERM, lambda *_: resident.stopping.set())
        from agent_host import sampler

        resident.sampler = sampler.start(root)
        _log(root, "started pid %d (%s)" % (os.getpid(), socket_name(agent_hash)))
        # First: a busy database must not outlast READY_TIMEOUT.
        say_to_starter("ready %d" % os.getpid())
        _audit(root, "resident.start", "pid %d on %s (stop it: kill %d; it also leaves by "
               "itself once idle)" % (os.getpid(), socket_path(root, agent_hash), os.getpid()),
               "rm -rf %s" % run_dir(root))  # fmt: skip
        try:
            resident.run(listener)
            resident.finish_janitor()
        finally:
            _unlink_socket(root, agent_hash)
            listener.close()
            _log(root, "stopped pid %d after %d connections" % (os.getpid(), resident.served))
            _audit(root, "resident.stop", "pid %d after %d connections"
                   % (os.getpid(), resident.served), "")  # fmt: skip
    sys.stderr.flush()
    os._exit(0)  # streams a closed connection abandoned (logs -f) end with the process
