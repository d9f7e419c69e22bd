"""The resident agent's own sampling: every SAMPLE_EVERY seconds, the host (CPU, memory, disk
under the root, load) and each running session (CPU%, memory against its limit, pids, OOM kills,
from its cgroup files: agent_host/resources.py), kept as a short history.

CPU% is the change between two rounds, so a round costs file reads and no wait. Which
containers to read is asked of the engine every REFRESH_EVERY rounds, not every round.
The host numbers are small pure functions over /proc text. Python 3.9 compatible.
"""

from __future__ import annotations

import collections
import os
import threading
import time
from typing import Any, Deque, Dict, List, NamedTuple, Optional, Tuple

SAMPLE_EVERY = 2.0  # seconds between rounds
HISTORY = 150  # rounds kept: five minutes
REFRESH_EVERY = 5  # rounds between asking the engine which sessions run (and their pids)
PROC_ROOT = "/proc"
Samples = List[Dict[str, Any]]


class CpuTimes(NamedTuple):
    busy: int
    total: int


def cpu_times(stat_text: Optional[str]) -> Optional[CpuTimes]:
    """The aggregate `cpu` line of /proc/stat; None when absent or malformed. Pure."""
    for line in (stat_text or "").splitlines():
        words = line.split()
        if not words or words[0] != "cpu":
            continue
        try:
            values = [int(word) for word in words[1:9]]
        except ValueError:
            return None
        if len(values) < 4:
            return None
        idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
        return CpuTimes(sum(values) - idle, sum(values))
    return None


def host_cpu_percent(first: Optional[CpuTimes], second: Optional[CpuTimes]) -> Optional[float]:
    """Busy share of all cores between two readings, 0..100. Pure."""
    if first is None or second is None or second.total <= first.total:
        return None
    busy = second.busy - first.busy
    if busy < 0:
        return None
    return round(100.0 * busy / (second.total - first.total), 1)


def memory(meminfo_text: Optional[str]) -> Dict[str, Optional[int]]:
    """MemTotal and MemAvailable of /proc/meminfo, in bytes. Pure."""
    found: Dict[str, Optional[int]] = {"memory_total_bytes": None, "memory_available_bytes": None}
    keys = {"MemTotal:": "memory_total_bytes", "MemAvailable:": "memory_available_bytes"}
    for line in (meminfo_text or "").splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] in keys and words[1].isdigit() and len(words[1]) <= 15:
            found[keys[words[0]]] = int(words[1]) * 1024
    return found


def load(loadavg_text: Optional[str]) -> Optional[List[float]]:
    """The 1, 5 and 15 minute load averages. Pure."""
    words = (loadavg_text or "").split()
    try:
        return [float(word) for word in words[:3]] if len(words) >= 3 else None
    except ValueError:
        return None


def _read(path: str) -> Optional[str]:
    try:
        with open(path, "rb") as handle:
            return handle.read(256 * 1024).decode("utf-8", "replace")
    except OSError:
        return None


def disk(path: str) -> Dict[str, Optional[int]]:
    try:
        st = os.statvfs(path)
    except OSError:
        return {"disk_total_bytes": None, "disk_free_bytes": None}
    return {"disk_total_bytes": st.f_blocks * st.f_frsize,
            "disk_free_bytes": st.f_bavail * st.f_frsize}  # fmt: skip


class Sampler:
    """One thread; `latest()` and `history()` are safe to call from any request thread."""

    def __init__(self, root: str, proc_root: str = PROC_ROOT) -> None:
        self.root = root
        self.proc_root = proc_root
        self._lock = threading.Lock()
        self._host: Deque[Dict[str, Any]] = collections.deque(maxlen=HISTORY)
        self._sessions: Dict[str, Deque[Dict[str, Any]]] = {}
        self._targets: List[Any] = []
        self._readings: Dict[str, Any] = {}
        self._cpu: Optional[CpuTimes] = None
        self._round = 0
        self.stop = threading.Event()
        self.errors = 0

    def round(self, now: Optional[float] = None) -> Dict[str, Any]:
        """One round: read everything, record it. Returns the host sample."""
        from agent_host import resources

        now = time.time() if now is None else now
        cpu = cpu_times(_read(os.path.join(self.proc_root, "stat")))
        host: Dict[str, Any] = {
            "at": now,
            "cpu_percent": host_cpu_percent(self._cpu, cpu),
            "load": load(_read(os.path.join(self.proc_root, "loadavg"))),
        }
        host.update(memory(_read(os.path.join(self.proc_root, "meminfo"))))
        host.update(disk(self.root))
        self._cpu = cpu
        if self._round % REFRESH_EVERY == 0:
            self._targets = self._running_targets()
        self._round += 1
        sessions: Dict[str, Dict[str, Any]] = {}
        readings: Dict[str, Any] = {}
        for target in self._targets:
            where = resources.groups(target.pid, target.container_id)
            if where is None:
                continue
            reading = resources.take(where)
            readings[target.session_id] = reading
            before = self._readings.get(target.session_id)
            values = resources.stats(before, reading) if before else resources.stats(reading, None)
            values["at"] = now
            sessions[target.session_id] = values
        self._readings = readings
        with self._lock:
            self._host.append(host)
            for session_id, values in sessions.items():
                self._sessions.setdefault(
                    session_id, collections.deque(maxlen=HISTORY)).append(values)  # fmt: skip
            for gone in set(self._sessions) - set(sessions):
                del self._sessions[gone]
        return host

    def _running_targets(self) -> List[Any]:
        from agent_host import resources, sessions

        try:
            client = sessions._docker()
        except Exception:
            return []
        try:
            found = sessions._container_states(client)
        except Exception:
            return []
        finally:
            client.close()
        return [resources.Target(sid, ((info["container"].attrs or {}).get("State") or {})
                                 .get("Pid"), info["container"].id)
                for sid, info in found.items() if info.get("status") == "running"]  # fmt: skip

    def latest(self, session_id: str, fresh_within: float) -> Optional[Dict[str, Any]]:
        """A session's newest sample if it has a CPU% and is younger than `fresh_within` s."""
        with self._lock:
            samples = self._sessions.get(session_id)
            last = dict(samples[-1]) if samples else None
        if last is None or last.get("cpu_percent") is None:
            return None
        if time.time() - float(last["at"]) > fresh_within:
            return None
        return last

    def history(self, session_id: Optional[str] = None) -> Tuple[Samples, Dict[str, Samples]]:
        """The host's rounds, and each running session's (or only `session_id`'s)."""
        with self._lock:
            host = [dict(sample) for sample in self._host]
            chosen = {key: value for key, value in self._sessions.items()
                      if session_id is None or key == session_id}  # fmt: skip
            sessions = {key: [dict(s) for s in value] for key, value in chosen.items()}
        return host, sessions

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.round()
            except Exception:  # an unreadable /proc or engine: the next round tries again
                self.errors += 1
            self.stop.wait(SAMPLE_EVERY)


def start(root: str) -> Sampler:
    sampler = Sampler(root)
    threading.Thread(target=sampler.run, name="sampler", daemon=True).start()
    return sampler


# -- RPC handler (`host.samples`) ----------------------------------------------------------------
def samples(ctx: Any, params: Any) -> Dict[str, Any]:
    """The resident agent's history: the host's rounds and each running session's."""
    from agent_host.protocol import E_FAILED, RemoteError

    resident = getattr(ctx, "resident", None)
    sampler = getattr(resident, "sampler", None)
    if sampler is None:
        raise RemoteError(E_FAILED, "this agent is not resident: it keeps no samples",
                          {"hint": "the resident agent starts on the next command"})  # fmt: skip
    session_id = params.get("session")
    host, sessions = sampler.history(session_id if isinstance(session_id, str) else None)
    return {"every": SAMPLE_EVERY, "host": host, "sessions": sessions}


HANDLERS = {"host.samples": samples}
