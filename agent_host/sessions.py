"""Sessions on this host: create the sandbox a contract describes, list, logs, stop, rm.

The host is the source of truth. A session is recorded (state `starting`) before anything is
made for it, so a controller that dies mid-launch leaves a record, never an unknown container.
Python 3.9 compatible.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from typing import Any, Dict, List, Optional, Tuple

from agent_host import layout
from agent_host.protocol import (
    E_CONFLICT,
    E_DOCKER_UNAVAILABLE,
    E_FAILED,
    E_INVALID_PARAMS,
    E_NOT_FOUND,
    Message,
    RemoteError,
)
from agent_host.server import Context
from agent_host.state import COLUMNS, Store

_IMAGE = re.compile(r"^[a-z0-9][a-z0-9._/-]*(:[A-Za-z0-9._-]+)?$")
_CONTAINER = re.compile(r"^jk-[0-9a-z]{8}(-[a-z0-9-]+)?$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_TMPFS_OPTS = re.compile(r"^[a-z0-9=,]+$")
_MEMORY = re.compile(r"^\d+[kmg]?$")
SETUP_GRACE = 600.0  # a `starting` record older than this, whose setter-upper is gone, failed
STOP_TIMEOUT = 10
ALLOWED_CAPS_DROP = ("ALL",)
ALLOWED_SECURITY_OPT = ("no-new-privileges",)


def _docker() -> Any:
    try:
        import docker
        from docker.errors import DockerException
    except ImportError as exc:  # pragma: no cover - vendored in the zipapp
        raise RemoteError(E_DOCKER_UNAVAILABLE, "docker SDK missing: %s" % exc) from None
    try:
        return docker.from_env(timeout=120)
    except DockerException as exc:
        raise RemoteError(E_DOCKER_UNAVAILABLE, "docker engine not usable: %s" % exc) from None


def _not_found() -> Any:
    from docker.errors import NotFound

    return NotFound


# -- spec validation: the agent re-checks what reaches docker, whatever the controller sent ---
def check_spec(spec: Message) -> Message:
    def need(key: str, pattern: "re.Pattern[str]") -> str:
        value = spec.get(key)
        if not isinstance(value, str) or not pattern.match(value):
            raise RemoteError(E_INVALID_PARAMS, "spec.%s is invalid: %r" % (key, value))
        return value

    layout.check_session_id(spec.get("session_id"))
    need("image", _IMAGE)
    need("container", _CONTAINER)
    need("user", _USER)
    layout.check_name(spec.get("workspace"), "workspace")
    layout.check_name(spec.get("role"), "role")
    if spec.get("user") in ("root", "0"):
        raise RemoteError(E_INVALID_PARAMS, "the agent never runs as root")
    if spec.get("network") not in ("open", "none"):
        raise RemoteError(E_INVALID_PARAMS, "spec.network must be open or none")
    if spec.get("isolation") not in ("clone", "copy"):
        raise RemoteError(E_INVALID_PARAMS, "spec.isolation must be clone or copy")
    if spec.get("cap_drop") != list(ALLOWED_CAPS_DROP):
        raise RemoteError(E_INVALID_PARAMS, "spec.cap_drop must be ['ALL']")
    if spec.get("security_opt") != list(ALLOWED_SECURITY_OPT):
        raise RemoteError(E_INVALID_PARAMS, "spec.security_opt must be ['no-new-privileges']")
    command = spec.get("command")
    if not isinstance(command, list) or not command or not all(isinstance(a, str) for a in command):
        raise RemoteError(E_INVALID_PARAMS, "spec.command must be a non-empty list of strings")
    for name, value in (spec.get("env") or {}).items():
        if not _ENV_NAME.match(name) or not isinstance(value, str):
            raise RemoteError(E_INVALID_PARAMS, "bad env entry %r" % name)
    for path, options in (spec.get("tmpfs") or {}).items():
        if not path.startswith("/") or ".." in path.split("/") or not _TMPFS_OPTS.match(options):
            raise RemoteError(E_INVALID_PARAMS, "bad tmpfs entry %r" % path)
    memory = spec.get("memory")
    if memory is not None and not _MEMORY.match(str(memory)):
        raise RemoteError(E_INVALID_PARAMS, "bad memory limit %r" % memory)
    return spec


# -- create ----------------------------------------------------------------------------------
def create(ctx: Context, params: Message) -> Dict[str, Any]:
    spec = check_spec(params.get("spec") or {})
    secrets = params.get("secret_env") or {}
    if set(secrets) != set(spec.get("secret_env") or []):
        raise RemoteError(E_INVALID_PARAMS, "secret_env values must match spec.secret_env names")
    session_id = spec["session_id"]
    store = Store(ctx.root)
    try:
        if store.get(session_id) is not None:
            raise RemoteError(E_CONFLICT, "session %s already exists" % session_id)
        client = _docker()
        store.insert(_record(spec, os.getpid()))
        try:
            checkout = _checkout(ctx.root, spec)
            store.update(
                session_id,
                base_commit=spec.get("base_commit"),
                spec=_spec_with(spec, launch_commit=checkout.get("launch_commit")),
            )
            image, uid, gid = _image_for_host_user(ctx, client, spec)
            work = layout.work_dir(ctx.root, session_id)
            if os.getuid() == 0 and uid != 0:
                _chown_tree(work, uid, gid)
            container = _run_container(client, spec, secrets, image, work, uid, gid)
        except Exception as exc:
            message = (
                exc.message
                if isinstance(exc, RemoteError)
                else "%s: %s" % (type(exc).__name__, exc)
            )
            store.update(
                session_id,
                state="failed_setup",
                error=message[:2000],
                finished_at=time.time(),
                owner_pid=None,
            )
            raise
        store.update(
            session_id,
            state="running",
            started_at=time.time(),
            owner_pid=None,
            image=image,
            agent_status=agent_status("running", spec["mode"]),
        )
        return _public(store.get(session_id), {"container_id": container.id[:12]})
    finally:
        store.close()


def _record(spec: Message, pid: int) -> Dict[str, Any]:
    return {
        "id": spec["session_id"], "name": spec.get("name"), "workspace": spec["workspace"],
        "role": spec["role"], "runtime": spec["runtime"], "image": spec["image"],
        "container": spec["container"], "mode": spec["mode"], "isolation": spec["isolation"],
        "state": "starting", "agent_status": "unknown", "branch": spec.get("branch"),
        "base_commit": spec.get("base_commit"), "owner_pid": pid, "spec": spec,
    }  # fmt: skip


def _spec_with(spec: Message, **extra: Any) -> Message:
    merged = dict(spec)
    merged.update(extra)
    return merged


def _checkout(root: str, spec: Message) -> Dict[str, Any]:
    from agent_host.workspaces import make_checkout

    if not os.path.isdir(layout.mirror_dir(root, spec["workspace"])):
        raise RemoteError(E_NOT_FOUND, "workspace %s was never synced here" % spec["workspace"])
    return make_checkout(root, spec["workspace"], spec["session_id"], spec["isolation"])


def _chown_tree(path: str, uid: int, gid: int) -> None:
    os.lchown(path, uid, gid)
    for base, dirs, files in os.walk(path):
        for name in dirs + files:
            os.lchown(os.path.join(base, name), uid, gid)


def _image_for_host_user(ctx: Context, client: Any, spec: Message) -> Tuple[str, int, int]:
    """The image to run, and the uid/gid the agent has in it.

    The session checkout belongs to the host user. When that user is not root and its uid
    differs from the role user's, a thin derived image gives the role user the host user's
    uid/gid, so the agent can write its checkout without any chmod on the host.
    """
    from agent_host.roles import image_user_ids

    image = spec["image"]
    uid, gid = image_user_ids(ctx.root, image, spec["user"])
    host_uid, host_gid = os.getuid(), os.getgid()
    if host_uid == 0 or (uid, gid) == (host_uid, host_gid):
        return image, uid, gid
    derived = "%s-u%d" % (image, host_uid)
    try:
        client.images.get(derived)
    except _not_found():
        _build_uid_image(client, image, derived, spec["user"], host_uid, host_gid)
    return derived, host_uid, host_gid


def _build_uid_image(client: Any, base: str, tag: str, user: str, uid: int, gid: int) -> None:
    import io

    dockerfile = (
        "FROM %s\nUSER root\n"
        "RUN sed -i -E 's/^(%s:[^:]*):[0-9]+:[0-9]+:/\\1:%d:%d:/' /etc/passwd && "
        'grp=$(id -gn %s) && sed -i -E "s/^($grp:[^:]*):[0-9]+:/\\1:%d:/" /etc/group && '
        "home=$(getent passwd %s | cut -d: -f6) && "
        '{ [ ! -d "$home" ] || chown -R %d:%d "$home"; }\n'
        "USER %s\n" % (base, user, uid, gid, user, gid, user, uid, gid, user)
    ).encode()
    try:
        client.images.build(
            fileobj=io.BytesIO(dockerfile),
            tag=tag,
            rm=True,
            forcerm=True,
            labels={"jackin.managed": "true"},
            pull=False,
        )
    except Exception as exc:
        raise RemoteError(E_FAILED, "could not map %s to the host uid: %s" % (user, exc)) from None


def _run_container(
    client: Any, spec: Message, secrets: Dict[str, str], image: str, work: str, uid: int, gid: int
) -> Any:
    env = dict(spec.get("env") or {})
    env.update(secrets)
    tmpfs = {}
    for path, options in (spec.get("tmpfs") or {}).items():
        if path != "/tmp":
            options = "%s,uid=%d,gid=%d,mode=0700" % (options, uid, gid)
        tmpfs[path] = options
    kwargs: Dict[str, Any] = {
        "command": spec["command"],
        "name": spec["container"],
        "user": spec["user"],
        "working_dir": spec.get("workdir") or "/workspace",
        "environment": env,
        "labels": dict(spec.get("labels") or {}),
        # The only bind mount: the session's own checkout. Never the docker socket.
        "volumes": {work: {"bind": spec.get("workdir") or "/workspace", "mode": "rw"}},
        "tmpfs": tmpfs,
        "read_only": bool(spec.get("read_only", True)),
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "network_mode": "none" if spec["network"] == "none" else "bridge",
        "init": True,
        "detach": True,
    }
    if spec.get("memory"):
        kwargs["mem_limit"] = spec["memory"]
        kwargs["memswap_limit"] = spec["memory"]
    if spec.get("cpus"):
        kwargs["nano_cpus"] = int(float(spec["cpus"]) * 1e9)
    if spec.get("pids"):
        kwargs["pids_limit"] = int(spec["pids"])
    from docker.errors import DockerException

    try:
        return client.containers.run(image, **kwargs)
    except DockerException as exc:
        raise RemoteError(E_FAILED, "docker could not start the sandbox: %s" % exc) from None


# -- list / reconcile ------------------------------------------------------------------------
def _container_states(client: Any) -> Dict[str, Dict[str, Any]]:
    states = {}
    for container in client.containers.list(all=True, filters={"label": "jackin.managed=true"}):
        session_id = container.labels.get("jackin.session")
        if not session_id:
            continue
        info = container.attrs.get("State") or {}
        states[session_id] = {
            "container": container,
            "status": info.get("Status"),
            "exit_code": info.get("ExitCode"),
            "finished_at": info.get("FinishedAt"),
            "oom": info.get("OOMKilled"),
        }
    return states


def derive_state(
    record: Dict[str, Any], container: Optional[Dict[str, Any]], now: float, owner_alive: bool
) -> Tuple[str, Optional[int]]:
    """The lifecycle state a record has given what docker says. Pure: tested without docker."""
    state = record["state"]
    if state in ("failed_setup", "purged"):
        return state, record.get("exit_code")
    if container is None:
        if state == "starting":
            if owner_alive and now - record["created_at"] < SETUP_GRACE:
                return "starting", None
            return "failed_setup", None
        if state in ("stopped", "exited", "crashed"):
            return state, record.get("exit_code")
        return "crashed", record.get("exit_code")  # running but its container vanished
    status = container["status"]
    if status in ("created", "running", "restarting", "paused"):
        return ("running" if status != "created" else "starting"), None
    code = container["exit_code"]
    if state == "stopped":
        return "stopped", code
    return ("exited" if code == 0 else "crashed"), code


def _pid_alive(pid: Optional[int]) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def agent_status(state: str, mode: str) -> str:
    if state == "running":
        return "working" if mode == "task" else "idle"
    if state == "exited":
        return "done"
    return "unknown"


def _stats(container: Any) -> Dict[str, Any]:
    try:
        stats = container.stats(stream=False)
    except Exception:
        return {}
    cpu = stats.get("cpu_stats") or {}
    pre = stats.get("precpu_stats") or {}
    cpu_delta = (cpu.get("cpu_usage") or {}).get("total_usage", 0) - (
        pre.get("cpu_usage") or {}
    ).get("total_usage", 0)
    system_delta = cpu.get("system_cpu_usage", 0) - pre.get("system_cpu_usage", 0)
    online = cpu.get("online_cpus") or 1
    percent = (cpu_delta / system_delta) * online * 100.0 if system_delta > 0 else 0.0
    memory = (stats.get("memory_stats") or {}).get("usage")
    return {"cpu_percent": round(percent, 1), "memory_bytes": memory}


def list_sessions(ctx: Context, params: Message) -> Dict[str, Any]:
    store = Store(ctx.root)
    try:
        client = _docker()
        containers = _container_states(client)
        now = time.time()
        records = store.all(include_purged=bool(params.get("all")))
        known = set()
        out = []
        want_stats = bool(params.get("stats", True))
        running = []
        for record in records:
            known.add(record["id"])
            container = containers.get(record["id"])
            state, code = derive_state(record, container, now, _pid_alive(record["owner_pid"]))
            if state != record["state"] or code != record["exit_code"]:
                fields: Dict[str, Any] = {"state": state, "exit_code": code}
                if state in ("exited", "crashed", "failed_setup") and not record["finished_at"]:
                    fields["finished_at"] = now
                fields["agent_status"] = agent_status(state, record["mode"])
                store.update(record["id"], **fields)
                record.update(fields)
            if state == "running" and container is not None and want_stats:
                running.append((record, container["container"]))
            out.append(_public(record))
        if running:
            _attach_stats(running, out)
        orphans = [
            {"session_id": sid, "container": info["container"].name, "status": info["status"]}
            for sid, info in containers.items()
            if sid not in known
        ]
        return {"sessions": out, "orphans": orphans, "running": store.running_count()}
    finally:
        store.close()


def _attach_stats(running: List[Tuple[Dict[str, Any], Any]], out: List[Dict[str, Any]]) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(8, len(running))) as pool:
        results = list(pool.map(lambda pair: _stats(pair[1]), running))
    ids = [record["id"] for record, _ in running]
    by_id = dict(zip(ids, results))  # noqa: B905 - python 3.9 has no zip(strict=)
    for entry in out:
        entry.update(by_id.get(entry["id"], {}))


PUBLIC_COLUMNS = tuple(c for c in COLUMNS if c not in ("owner_pid", "spec"))


def _public(
    record: Optional[Dict[str, Any]], extra: Optional[Dict[str, Any]] = None
) -> Dict[str, Any]:
    """A record as the controller sees it: no spec internals beyond what `ls` shows."""
    if record is None:
        raise RemoteError(E_NOT_FOUND, "no such session")
    spec = record.get("spec") or {}
    entry = {key: record.get(key) for key in PUBLIC_COLUMNS}
    entry["task"] = spec.get("task")
    entry["network"] = spec.get("network")
    entry["launch_commit"] = spec.get("launch_commit")
    if extra:
        entry.update(extra)
    return entry


def _get(store: Store, params: Message) -> Dict[str, Any]:
    session_id = layout.check_session_id(params.get("id"))
    record = store.get(session_id)
    if record is None:
        raise RemoteError(E_NOT_FOUND, "no session %s on this host" % session_id)
    return record


def get_session(ctx: Context, params: Message) -> Dict[str, Any]:
    store = Store(ctx.root)
    try:
        return _public(_get(store, params))
    finally:
        store.close()


# -- logs ------------------------------------------------------------------------------------
def logs(ctx: Context, params: Message) -> Dict[str, Any]:
    store = Store(ctx.root)
    try:
        record = _get(store, params)
    finally:
        store.close()
    tail = params.get("tail")
    tail = int(tail) if isinstance(tail, int) and tail >= 0 else "all"
    client = _docker()
    try:
        container = client.containers.get(record["container"])
    except _not_found():
        raise RemoteError(E_NOT_FOUND, "the container of %s is gone" % record["id"]) from None
    if record["mode"] == "interactive":
        return {"text": _tmux_capture(container)}
    if not params.get("follow"):
        data = container.logs(stdout=True, stderr=True, tail=tail)
        return {"text": data.decode(errors="replace")}
    ctx.streaming()
    for chunk in container.logs(stdout=True, stderr=True, stream=True, follow=True, tail=tail):
        ctx.notify("session.log", {"data": chunk.decode(errors="replace")})
    return {"text": ""}


def _tmux_capture(container: Any) -> str:
    result = container.exec_run(["tmux", "capture-pane", "-p", "-t", "jackin", "-S", "-2000"])
    return str(result.output.decode(errors="replace"))


# -- stop / rm -------------------------------------------------------------------------------
def stop(ctx: Context, params: Message) -> Dict[str, Any]:
    store = Store(ctx.root)
    try:
        record = _get(store, params)
        client = _docker()
        try:
            container = client.containers.get(record["container"])
            container.stop(timeout=STOP_TIMEOUT)
            container.reload()
            code = (container.attrs.get("State") or {}).get("ExitCode")
        except _not_found():
            code = record.get("exit_code")
        if record["state"] in ("starting", "running"):
            store.update(
                record["id"],
                state="stopped",
                exit_code=code,
                finished_at=time.time(),
                agent_status="unknown",
            )
        return _public(store.get(record["id"]))
    finally:
        store.close()


def work_status(ctx: Context, record: Dict[str, Any]) -> Dict[str, Any]:
    """Whether the session holds work that was never pulled (then rm refuses).

    Read through review.snapshot, which never runs git inside the agent's own .git (the agent
    controls that repository's config and hooks).
    """
    from agent_host import review

    if not os.path.isdir(layout.work_dir(ctx.root, record["id"])):
        return {"unpulled": False, "commit": None}
    snap = review.snapshot(ctx, {"id": record["id"]})
    launch = (record.get("spec") or {}).get("launch_commit")
    untouched = record["isolation"] == "clone" and snap["commit"] == launch
    return {"unpulled": not (snap["pulled"] or untouched), "commit": snap["commit"]}


def remove(ctx: Context, params: Message) -> Dict[str, Any]:
    store = Store(ctx.root)
    try:
        record = _get(store, params)
        status = work_status(ctx, record)
        if status["unpulled"] and not params.get("force"):
            raise RemoteError(
                E_CONFLICT,
                "session %s has work that was not pulled" % record["id"],
                {
                    "hint": "run `jackin-remote pull %s` first, or rm --force to discard it"
                    % record["id"]
                },
            )
        client = _docker()
        try:
            client.containers.get(record["container"]).remove(force=True)
        except _not_found():
            pass
        session_path = layout.session_dir(ctx.root, record["id"])
        if os.path.isdir(session_path):
            _rmtree(session_path)
        store.update(record["id"], state="purged", finished_at=record["finished_at"] or time.time())
        return {"id": record["id"], "removed": True, "discarded_unpulled": status["unpulled"]}
    finally:
        store.close()


def _rmtree(path: str) -> None:
    def retry_writable(func: Any, target: str, _exc: Any) -> None:
        os.chmod(os.path.dirname(target), 0o700)
        func(target)

    shutil.rmtree(path, onerror=retry_writable)


def attach_command(root: str, session_id: str) -> List[str]:
    """docker argv to attach the caller's terminal to a session's tmux (used by `attach`)."""
    store = Store(root)
    try:
        record = store.get(layout.check_session_id(session_id))
    finally:
        store.close()
    if record is None:
        raise RemoteError(E_NOT_FOUND, "no session %s on this host" % session_id)
    if record["mode"] != "interactive":
        raise RemoteError(
            E_CONFLICT, "session %s runs headless on a task: use logs -f" % session_id
        )
    return ["docker", "exec", "-it", record["container"], "tmux", "attach", "-t", "jackin"]


HANDLERS = {
    "session.create": create,
    "session.list": list_sessions,
    "session.get": get_session,
    "session.logs": logs,
    "session.stop": stop,
    "session.rm": remove,
}
