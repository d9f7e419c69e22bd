"""Idle cleanup on a host: stop the sessions that sat idle longer than their idle timeout.

A session launched with an idle timeout (`LaunchSpec.idle_timeout`, from the inventory's
`idle_timeout` or `launch --idle-timeout`) is stopped by its host once it has been idle that
long: its container, its egress proxy and its private docker daemon stop; its checkout, its
snapshots and its record stay (`jackin-remote start` brings it back). Idle means:

- interactive: no tmux activity (the later of the session's and the window's activity time,
  i.e. keys typed or output printed) for that long; the start time counts as activity;
- task: it has exited. A task that ended is "done": the reconciliation `ls` does (stop the
  proxy and the daemon of every session that is no longer active) handles it, at once.

The resident host agent (agent_host/resident.py) runs the passes on a thread of its own
(`run_in_resident`). Beside an agent per command (JACKIN_AGENT_RESIDENT=0, a test hook) the host
runs one small detached janitor process per host root instead, started when a session with an
idle timeout is created or started (and by `ls` if it is missing): `python3 -I -c ...
jackin-janitor --root ROOT`. Either runs a pass every PASS_EVERY seconds: the reconciliation
of `session.list`, then `decide` (pure: records + now + activity -> which to stop) and the
stops, each recorded in the audit. It exits once no session of the root is active. One per
root: it holds `<root>/janitor/lock` (flock) for its life; its pid file is trusted only if
/proc/<pid>/cmdline carries MARK (or the resident agent's) and the root.

RPC `host.janitor` runs one pass now. Tests never wait for time to pass: they set
JACKIN_TEST_CLOCK_OFFSET (agent_host/testhooks.py) for that one command, and the pass sees a
clock that far ahead. Python 3.9 compatible.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence

from agent_host import audit, testhooks
from agent_host.protocol import RemoteError
from agent_host.wire import ACTIVE_STATES, TMUX_SESSION, EndReason

MARK = "jackin-janitor"  # in the janitor's argv: a pid is the janitor only if its cmdline says so
RESIDENT_MARK = "jackin-agent-resident"  # agent_host/resident.py MARK: it runs the passes itself
PASS_EVERY = 60.0  # seconds between two passes of the resident janitor
READY_TIMEOUT = 30.0  # the janitor says `ready` (or `busy`) at once; this bounds a loaded host
MAX_LOG = 1 << 20  # the janitor's log is emptied at its start once it is larger than this


@dataclass(frozen=True)
class IdleStop:
    session: str
    idle_for: float  # seconds since the last activity
    timeout: int


def decide(
    records: Sequence[Mapping[str, Any]], now: float, activity: Mapping[str, Optional[float]]
) -> List[IdleStop]:
    """Which sessions to stop for being idle. Pure: records (as the host db holds them, after
    reconciliation), the time, and each interactive session's last tmux activity (None: not
    known). Only running interactive sessions with an idle timeout are ever idle-stopped: a
    task is working until it exits, and an ended session has nothing left running but what
    reconciliation stops."""
    stops = []
    for record in records:
        timeout = (record.get("spec") or {}).get("idle_timeout")
        if not timeout or record.get("state") != "running" or record.get("mode") != "interactive":
            continue
        last = max(activity.get(record["id"]) or 0.0, record.get("started_at") or 0.0)
        if last <= 0:
            continue  # nothing says when it last did anything: never stopped on a guess
        idle_for = now - last
        if idle_for >= timeout:
            stops.append(IdleStop(record["id"], idle_for, int(timeout)))
    return stops


ACTIVITY_BYTES = 128  # what is read of tmux's answer: two timestamps fit many times over
ACTIVITY_SECONDS = 10  # how long the sandbox's tmux may take to answer


def tmux_activity(client: Any, container: str, now: Optional[float] = None) -> Optional[float]:
    """The session's last activity as tmux tells it (epoch seconds), or None. The sandbox owns
    its tmux server, so the answer is bounded in time and size and never later than now (an
    agent can still keep itself "active" by printing: an idle timeout is for forgotten
    sessions, not a containment)."""
    fmt = "#{session_activity} #{window_activity}"
    from agent_host.sandbox_exec import bounded_exec

    argv = ["tmux", "display-message", "-p", "-t", TMUX_SESSION, fmt]
    try:  # bounded by the host, not by a `timeout` the sandbox could stop
        _, answer = bounded_exec(client.containers.get(container), argv, ACTIVITY_SECONDS,
                                 ACTIVITY_BYTES)  # fmt: skip
    except Exception:
        return None
    return activity_from(answer[:ACTIVITY_BYTES], time.time() if now is None else now)


def activity_from(answer: bytes, now: float) -> Optional[float]:
    """The latest timestamp in tmux's answer, at most `now`; None if it holds none. Pure."""
    numbers = [int(word) for word in answer.decode(errors="replace").split()
               if word.isdigit() and len(word) <= 12]  # fmt: skip
    return float(min(max(numbers), now)) if numbers else None


class _Context:
    """What the session handlers read from a request's context: the root (no streaming)."""

    def __init__(self, root: str, resident: Any = None) -> None:
        self.root = root
        self.resident = resident  # the resident agent whose thread runs the pass, if any
        self.cancelled = False

    def streaming(self) -> None:
        pass


def run_pass(root: str, now: Optional[float] = None, resident: Any = None) -> Dict[str, Any]:
    """One pass: reconcile (as `ls` does), then stop the idle sessions. What it stopped, and
    whether any session of the root is still active."""
    from agent_host import sessions
    from agent_host.state import Store

    ctx: Any = _Context(root, resident)
    sessions.list_sessions(ctx, {"stats": False})
    store = Store(root)
    try:
        records = store.all()
    finally:
        store.close()
    now = time.time() if now is None else now
    watched = [r for r in records if r["state"] == "running" and r["mode"] == "interactive"
               and (r.get("spec") or {}).get("idle_timeout")]  # fmt: skip
    activity: Dict[str, Optional[float]] = {}
    if watched:
        client = sessions._docker()
        try:
            activity = {r["id"]: tmux_activity(client, r["container"]) for r in watched}
        finally:
            client.close()
    stopped: List[Dict[str, Any]] = []
    if _read_only(root):  # a full disk: its view may be stale, and nothing could be recorded
        return {"stopped": stopped, "active": _any_active(root)}
    for idle in decide(records, now, activity):
        try:
            sessions.stop(ctx, {"id": idle.session})
        except RemoteError as exc:
            _log(root, "could not stop %s: %s" % (idle.session, exc.message))
            continue
        store = Store(root)
        try:
            store.update(idle.session, reason=EndReason.IDLE.value)
        finally:
            store.close()
        what = "%s (idle %ds, timeout %ds)" % (idle.session, idle.idle_for, idle.timeout)
        audit.record(root, idle.session, "session.idle-stop", what,
                     "jackin-remote start %s" % idle.session)  # fmt: skip
        stopped.append({"id": idle.session, "idle_for": round(idle.idle_for, 1),
                        "timeout": idle.timeout})  # fmt: skip
    return {"stopped": stopped, "active": _any_active(root)}


def _read_only(root: str) -> bool:
    from agent_host.state import Store

    store = Store(root)
    try:
        return store.read_only
    finally:
        store.close()


def _any_active(root: str) -> bool:
    from agent_host.state import Store

    store = Store(root)
    try:
        return any(record["state"] in ACTIVE_STATES for record in store.all())
    finally:
        store.close()


# -- the resident process ------------------------------------------------------------------------
def janitor_dir(root: str) -> str:
    return os.path.join(root, "janitor")


def pid_file(root: str) -> str:
    return os.path.join(janitor_dir(root), "pid")


def lock_file(root: str) -> str:
    return os.path.join(janitor_dir(root), "lock")


def log_file(root: str) -> str:
    return os.path.join(janitor_dir(root), "log")


def running_pid(root: str) -> Optional[int]:
    """The pid of this root's janitor, or None (a pid file alone proves nothing)."""
    try:
        with open(pid_file(root)) as handle:
            pid = int(handle.read().strip() or "0")
        with open("/proc/%d/cmdline" % pid, "rb") as handle:
            argv = handle.read().split(b"\0")
    except (OSError, ValueError):
        return None
    marks = (MARK.encode(), RESIDENT_MARK.encode())  # its own process, or the resident agent
    if not any(mark in argv for mark in marks) or root.encode() not in argv:
        return None
    return pid if _lock_held(root) else None  # argv can be copied by any process; the lock not


def _lock_held(root: str) -> bool:
    """Whether a janitor holds this root's lock (it does for its whole life)."""
    try:
        fd = os.open(lock_file(root), os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # closing drops a lock we got
    return False


def ensure_running(root: str) -> Optional[int]:
    """Start this root's janitor unless one runs; its pid (None if it could not start: the
    sessions then stop only when a controller asks, and the log says why)."""
    pid = running_pid(root)
    if pid is not None:
        return pid
    os.makedirs(janitor_dir(root), mode=0o700, exist_ok=True)
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = "import sys; sys.path.insert(0, sys.argv[1]); from agent_host.janitor import main; " \
        "sys.exit(main(sys.argv[2:]))"  # fmt: skip
    argv = [sys.executable, "-I", "-c", code, package_parent, MARK, "--root", root]
    env = {key: value for key, value in os.environ.items() if not key.startswith("JACKIN_TEST")}
    with open(log_file(root), "ab") as log:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, env=env,
            start_new_session=True, close_fds=True,
        )  # fmt: skip
    assert proc.stdout is not None
    line = _first_line(proc)
    proc.stdout.close()
    if line.startswith("ready "):
        audit.record(root, None, "janitor.start", "pid %d (%s)" % (proc.pid, janitor_dir(root)),
                     "kill %d (it exits by itself once no session is active); rm -rf %s"
                     % (proc.pid, janitor_dir(root)))  # fmt: skip
        return proc.pid
    if line == "busy":  # another one won the race: it holds the lock
        return running_pid(root)
    proc.kill()
    _log(root, "the janitor did not start: %s" % (line or "it exited"))
    return None


def _first_line(proc: "subprocess.Popen[bytes]") -> str:
    import selectors

    assert proc.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        if not selector.select(READY_TIMEOUT):
            return "no answer within %ds" % READY_TIMEOUT
    return proc.stdout.readline(200).decode("utf-8", "replace").strip()


def _log(root: str, message: str) -> None:
    with contextlib.suppress(OSError):
        os.makedirs(janitor_dir(root), mode=0o700, exist_ok=True)
        with open(log_file(root), "a") as handle:
            handle.write("%s %s\n" % (time.strftime("%Y-%m-%dT%H:%M:%S"), message[:2000]))


def say_to_starter(text: str) -> None:
    """A detached process's one line to whoever started it, then stdout goes nowhere (the
    starter stopped reading). The janitor's and the resident agent's `ready`/`busy`."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # the starter stops reading: nothing else goes there
    os.close(devnull)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog=MARK)
    parser.add_argument("mark", choices=[MARK])
    parser.add_argument("--root", required=True)
    args = parser.parse_args(argv)
    root = args.root
    os.makedirs(janitor_dir(root), mode=0o700, exist_ok=True)
    with contextlib.suppress(OSError):
        if os.path.getsize(log_file(root)) > MAX_LOG:
            os.truncate(log_file(root), 0)
    with open(lock_file(root), "a") as lock:  # held for the janitor's life: one per root
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            say_to_starter("busy")
            return 0
        return _serve(root)


def _serve(root: str) -> int:
    _write_pid(root)
    say_to_starter("ready %d" % os.getpid())
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    return serve_passes(root, done)


def claim_for_resident(root: str) -> Optional[Any]:
    """The janitor's lock and pid file taken for the resident agent, before it returns to the
    request that asked (so whoever looks next finds the janitor running); the lock's file, to
    hand to `run_in_resident`. None when another janitor holds the lock."""
    os.makedirs(janitor_dir(root), mode=0o700, exist_ok=True)
    lock = open(lock_file(root), "a")  # noqa: SIM115 - held until run_in_resident ends
    try:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.close()
        return None
    try:
        _write_pid(root)
        audit.record(root, None, "janitor.start", "pid %d (%s), a thread of the resident agent"
                     % (os.getpid(), janitor_dir(root)),
                     "rm -rf %s (it stops by itself once no session is active)"
                     % janitor_dir(root))  # fmt: skip
    except BaseException:
        release_claim(root, lock)
        raise
    return lock


def release_claim(root: str, lock: Any) -> None:
    """Undo `claim_for_resident` (its thread could not start, say): pid file and lock."""
    if running_pid(root) == os.getpid():
        with contextlib.suppress(OSError):
            os.unlink(pid_file(root))
    lock.close()


def run_in_resident(
    root: str, lock: Any, done: threading.Event, quitting: threading.Event, resident: Any
) -> None:
    """The resident agent's janitor thread: the passes, under the lock `claim_for_resident`
    took, until no session of the root is active (or the agent stops). `quitting` is set while
    it decides to leave: whoever wants a janitor then waits for this one to end."""
    try:
        serve_passes(root, done, quitting, resident)
    finally:
        lock.close()  # releases the flock


def serve_passes(
    root: str,
    done: threading.Event,
    quitting: Optional[threading.Event] = None,
    resident: Any = None,
) -> int:
    """A pass every PASS_EVERY seconds until `done`, the code is replaced, or nothing is active."""
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    while not done.is_set() and os.path.isdir(package_parent):  # gone: a newer agent took over
        try:
            active = run_pass(root, resident=resident)["active"]
        except Exception as exc:  # the engine down, say: tried again at the next pass
            _log(root, "pass failed: %s: %s" % (type(exc).__name__, exc))
            active = True
        if not active:
            # Whoever creates a session after this check finds no pid file and starts another
            # janitor (which waits for our lock), or it was already recorded and is seen here.
            with contextlib.suppress(OSError):
                os.unlink(pid_file(root))
            if quitting is not None:
                quitting.set()  # from here, whoever wants a janitor waits for this one to end
            if not _any_active(root):  # read after `quitting`: a session made before is seen
                break
            if quitting is not None:
                quitting.clear()
            _write_pid(root)
        done.wait(PASS_EVERY)
    if running_pid(root) == os.getpid():
        with contextlib.suppress(OSError):
            os.unlink(pid_file(root))
    audit.record(root, None, "janitor.stop", "pid %d" % os.getpid(), "")
    return 0


def _write_pid(root: str) -> None:
    tmp = "%s.tmp%d" % (pid_file(root), os.getpid())
    with open(tmp, "w") as handle:
        handle.write("%d\n" % os.getpid())
    os.replace(tmp, pid_file(root))


# -- RPC handler (`host.janitor`) ----------------------------------------------------------------
def janitor_pass(ctx: Any, params: Any) -> Dict[str, Any]:
    """Run one pass now (what the resident janitor does every PASS_EVERY seconds). A test may
    move this pass's clock ahead (testhooks.CLOCK_ENV); nothing else can."""
    now = time.time() + testhooks.clock_offset()
    result = run_pass(ctx.root, now, getattr(ctx, "resident", None))
    result["janitor"] = running_pid(ctx.root)
    return result


HANDLERS = {"host.janitor": janitor_pass}
