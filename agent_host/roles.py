"""Role images on this host: is it built, build it (streaming the output), and which uid/gid the
role's user has inside it.

The build context is <root>/roles/<name>/<hash>/ (layout.role_dir), uploaded by the controller.
An image is tagged `jackin-role-<name>:<hash[:12]>` and labelled with the full hash, so an
unchanged role is never rebuilt. A build is first tagged as a candidate and only takes the real
tag once its user is checked to be non-root: a role cannot make its agent run as root.

A build runs the role's RUN steps as root on this host. Its network is the operator's choice:
"none" (the default: the steps get only a loopback interface, so a role cannot reach metadata
services or internal hosts while it builds) or "default" (the engine's bridge). The classic
builder has no way to drop capabilities, which is why the network is what we close.

Python 3.9 compatible. The docker SDK is imported inside functions: `serve` must start fast.
"""

from __future__ import annotations

import binascii
import contextlib
import json
import os
import re
import tempfile
import time
from collections import deque
from typing import Any, Deque, Dict, Iterator, Optional, Tuple

from agent_host import audit, layout
from agent_host.protocol import (
    E_DOCKER_UNAVAILABLE,
    E_FAILED,
    E_INVALID_PARAMS,
    E_NOT_FOUND,
    Message,
    RemoteError,
)
from agent_host.server import Context
from agent_host.wire import (
    BUILD_NETWORKS,
    DEFAULT_BUILD_NETWORK,
    LABEL_MANAGED,
    LABEL_ROLE,
    check_role_user,
    image_tag,
)

__all__ = ["BUILD_NETWORKS", "DEFAULT_BUILD_NETWORK", "image_tag"]

LABEL_HASH = "jackin.role.hash"
LABEL_BUILD_NETWORK = "jackin.role.build-network"
BUILD_TIMEOUT = 3600  # seconds without any output from the engine before a build is given up
PROBE_TIMEOUT = 120
TAIL_LINES = 20
CACHE_ENTRIES = 256
PROGRESS = "role.build.progress"

_ROLE_HASH = re.compile(r"^[0-9a-f]{64}\Z")
# Prints "<uid> <gid>" of $1 (group $2 if given) as the image sees them.
_ID_SCRIPT = (
    'uid=$(id -u "$1") || exit 3\n'
    'if [ -z "$2" ]; then gid=$(id -g "$1") || exit 3\n'
    'else case "$2" in *[!0-9]*) gid=$(getent group "$2" | cut -d: -f3) ;; *) gid=$2 ;; esac\n'
    "fi\n"
    '[ -n "$gid" ] || exit 4\n'
    'echo "$uid $gid"\n'
)


def user_ids_file(root: str) -> str:
    """Cache of image_user_ids answers, keyed by image id (content-addressed, never stale)."""
    return os.path.join(root, "roles", ".user-ids.json")


# ---- params ---------------------------------------------------------------------------------


def _role_params(params: Message) -> Tuple[str, str]:
    name = layout.check_name(params.get("name"), "role")
    content_hash = layout.check_hash(params.get("hash"))
    if not _ROLE_HASH.match(content_hash):
        raise RemoteError(E_INVALID_PARAMS, "a role hash is 64 hex digits: %r" % content_hash)
    return name, content_hash


def check_dockerfile(context_dir: str, value: object) -> str:
    """Checked again here, whatever the controller did: relative, no `..`, a file inside."""
    if not isinstance(value, str) or not value or value.startswith("/") or "\\" in value:
        raise RemoteError(E_INVALID_PARAMS, "bad dockerfile path: %r" % (value,))
    parts = value.split("/")
    if ".." in parts or any(ord(ch) < 32 for ch in value):
        raise RemoteError(E_INVALID_PARAMS, "bad dockerfile path: %r" % (value,))
    top = os.path.realpath(context_dir)
    full = os.path.realpath(os.path.join(top, value))
    if not full.startswith(top + os.sep) or not os.path.isfile(full):
        raise RemoteError(E_INVALID_PARAMS, "dockerfile %r is not a file in the role" % value)
    return value


def check_build_network(value: object) -> str:
    """Absent means the safe default; anything else must be one of BUILD_NETWORKS."""
    if value is None:
        return DEFAULT_BUILD_NETWORK
    if value not in BUILD_NETWORKS:
        raise RemoteError(
            E_INVALID_PARAMS, "bad build network %r: expected none or default" % (value,)
        )
    return str(value)


def _check_user(value: object) -> str:
    return check_role_user(value, "user")


# ---- docker ---------------------------------------------------------------------------------


def _api(timeout: int) -> Any:
    """A low-level docker APIClient; E_DOCKER_UNAVAILABLE when the engine does not answer."""
    try:
        import docker
        from docker.errors import DockerException
    except ImportError as exc:  # pragma: no cover - the zipapp vendors it
        raise RemoteError(E_DOCKER_UNAVAILABLE, "docker SDK missing: %s" % exc) from None
    try:
        return docker.from_env(timeout=timeout).api
    except DockerException as exc:
        raise RemoteError(
            E_DOCKER_UNAVAILABLE, "cannot reach the docker engine: %s" % _short(exc)
        ) from None


def _short(exc: BaseException, limit: int = 300) -> str:
    text = str(exc).strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _engine_error(exc: Exception, doing: str) -> Optional[RemoteError]:
    """A docker SDK / requests failure as a typed error; None for anything else (a bug)."""
    import importlib

    from docker.errors import APIError

    # Imported by name: requests ships no type stubs.
    requests_errors = importlib.import_module("requests.exceptions")
    if isinstance(exc, APIError):
        return RemoteError(E_FAILED, "%s failed: %s" % (doing, _short(exc)))
    if isinstance(exc, requests_errors.ReadTimeout):
        return RemoteError(E_FAILED, "%s: the engine gave no answer in time" % doing)
    if isinstance(exc, requests_errors.ConnectionError):
        return RemoteError(E_DOCKER_UNAVAILABLE, "docker engine: %s" % _short(exc))
    return None


def present_image(api: Any, tag: str, content_hash: str) -> Optional[str]:
    """The image id under `tag` if it was built from exactly this role content."""
    from docker.errors import NotFound

    try:
        info = api.inspect_image(tag)
    except NotFound:
        return None
    labels = (info.get("Config") or {}).get("Labels") or {}
    if labels.get(LABEL_HASH) != content_hash:
        return None  # a 12-hex prefix collision, or an image we did not build
    return str(info["Id"])


class _Lines:
    """Docker's build stream in arbitrary chunks -> whole lines, sent as progress events."""

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._pending = ""
        self.tail: Deque[str] = deque(maxlen=TAIL_LINES)

    def feed(self, text: str) -> None:
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            self.emit(line)

    def emit(self, line: str) -> None:
        line = line.rstrip("\r")
        if line.strip():
            self.tail.append(line)
            self._ctx.notify(PROGRESS, {"line": line})

    def flush(self) -> None:
        self.emit(self._pending)
        self._pending = ""


def _stream_build(
    api: Any,
    ctx: Context,
    context_dir: str,
    dockerfile: str,
    tag: str,
    labels: Dict[str, str],
    network: str,
) -> Optional[str]:
    lines = _Lines(ctx)
    image_id = None
    stream: Iterator[Dict[str, Any]] = api.build(
        path=context_dir,
        dockerfile=dockerfile,
        tag=tag,
        rm=True,
        forcerm=True,
        decode=True,
        pull=False,
        labels=labels,
        # None: the engine's default network; "none": RUN steps get only a loopback interface.
        network_mode="none" if network == "none" else None,
    )
    for chunk in stream:
        if "error" in chunk:
            lines.flush()
            raise RemoteError(
                E_FAILED,
                _failure(str(chunk["error"]).strip(), lines.tail),
                {"lines": list(lines.tail)},
            )
        if "stream" in chunk:
            lines.feed(str(chunk["stream"]))
        elif "status" in chunk and not chunk.get("progressDetail"):
            lines.emit(" ".join(str(chunk[k]) for k in ("status", "id") if chunk.get(k)))
        aux = chunk.get("aux")
        if isinstance(aux, dict) and aux.get("ID"):
            image_id = str(aux["ID"])
    lines.flush()
    return image_id


def _failure(reason: str, tail: "Deque[str]") -> str:
    shown = [line for line in tail if line.strip() != reason][-8:]
    return "docker build failed: %s%s" % (
        reason,
        "".join("\n  | " + line for line in shown) if shown else "",
    )


def _remove_quietly(api: Any, ref: str) -> None:
    with contextlib.suppress(Exception):  # best effort: a leftover candidate tag is harmless
        api.remove_image(ref, force=True)


# ---- the image's user -----------------------------------------------------------------------


def image_user_ids(root: str, image: str, user: str, api: Any = None) -> Tuple[int, int]:
    """(uid, gid) that `user` ("name", "uid", "name:group" or "uid:gid") has inside `image`.

    Asks the image itself with a throwaway container (no network, no capabilities), once per
    image: answers are kept in user_ids_file(root), keyed by image id.
    """
    cache_file = user_ids_file(root)
    user = _check_user(user)
    name, _, group = user.partition(":")
    if name.isdigit() and group.isdigit():
        return int(name), int(group)
    own = api is None
    if own:
        api = _api(PROBE_TIMEOUT)
    try:
        image_id = str(api.inspect_image(image)["Id"])
        key = "%s %s" % (image_id, user)
        cached = _read_cache(cache_file).get(key)
        if isinstance(cached, list) and len(cached) == 2:
            return int(cached[0]), int(cached[1])
        ids = _probe_ids(api, image_id, name, group)
        _write_cache(cache_file, key, ids)
        return ids
    finally:
        if own:
            api.close()


def _probe_ids(api: Any, image_id: str, name: str, group: str) -> Tuple[int, int]:
    host_config = api.create_host_config(
        network_mode="none",
        cap_drop=["ALL"],
        security_opt=["no-new-privileges"],
        mem_limit="128m",
        pids_limit=64,
    )
    container = api.create_container(
        image_id,
        entrypoint=["/bin/sh", "-c", _ID_SCRIPT, "sh", name, group],
        command=[],
        host_config=host_config,
        labels={LABEL_MANAGED: "true"},
        network_disabled=True,
    )
    cid = container["Id"]
    try:
        api.start(cid)
        status = api.wait(cid, timeout=PROBE_TIMEOUT).get("StatusCode")
        out = api.logs(cid, stdout=True, stderr=False).decode(errors="replace").split()
        err = api.logs(cid, stdout=False, stderr=True).decode(errors="replace").strip()
    finally:
        with contextlib.suppress(Exception):  # already gone
            api.remove_container(cid, force=True)
    if status != 0 or len(out) != 2 or not all(part.isdigit() for part in out):
        raise RemoteError(
            E_FAILED,
            "user %r does not exist in the role image (%s); the Dockerfile must create it, "
            "e.g. RUN useradd -m -u 1000 %s" % (
                name + (":" + group if group else ""), err[-200:] or "id failed", name
            ),
        )  # fmt: skip
    return int(out[0]), int(out[1])


def _read_cache(cache_file: str) -> Dict[str, Any]:
    try:
        with open(cache_file, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(cache_file: str, key: str, ids: Tuple[int, int]) -> None:
    data = _read_cache(cache_file)
    data.pop(key, None)
    data[key] = list(ids)  # newest last: the oldest go first when the cache is trimmed
    data = dict(list(data.items())[-CACHE_ENTRIES:])
    directory = os.path.dirname(cache_file)
    new = not os.path.exists(cache_file)
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".ids.", dir=directory)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh)
        os.replace(tmp, cache_file)
    except OSError:
        return  # a cache: the next call asks the image again
    if new:  # <root>/roles/.user-ids.json
        root = os.path.dirname(directory)
        audit.record(root, None, "cache.create", cache_file, "rm %s" % cache_file)


# ---- handlers -------------------------------------------------------------------------------


def role_status(ctx: Context, params: Message) -> Dict[str, Any]:
    name, content_hash = _role_params(params)
    tag = image_tag(name, content_hash)
    api = _api(PROBE_TIMEOUT)
    try:
        present = present_image(api, tag, content_hash) is not None
    except RemoteError:
        raise
    except Exception as exc:
        mapped = _engine_error(exc, "reading the image")
        if mapped is None:
            raise
        raise mapped from None
    finally:
        api.close()
    return {
        "image": tag,
        "present": present,
        "uploaded": os.path.isdir(layout.role_dir(ctx.root, name, content_hash)),
    }


def role_build(ctx: Context, params: Message) -> Dict[str, Any]:
    """Build the role's image unless it is already there; either way report the user's ids."""
    name, content_hash = _role_params(params)
    user = _check_user(params.get("user"))
    network = check_build_network(params.get("network"))
    tag = image_tag(name, content_hash)
    context_dir = layout.role_dir(ctx.root, name, content_hash)
    started = time.time()
    api = _api(BUILD_TIMEOUT)
    try:
        image_id = present_image(api, tag, content_hash)
        built = image_id is None
        if image_id is None:
            if not os.path.isdir(context_dir):
                raise RemoteError(
                    E_NOT_FOUND, "role %s (%s) is not uploaded to this host" % (name, content_hash)
                )
            dockerfile = check_dockerfile(context_dir, params.get("dockerfile"))
            image_id = _build_checked(
                api, ctx, context_dir, dockerfile, tag, (name, content_hash), user, network
            )
            audit.record(ctx.root, None, "image.build", "%s (build network %s)" % (tag, network),
                         "docker rmi %s" % tag)  # fmt: skip
        uid, gid = image_user_ids(ctx.root, image_id, user, api)
    except RemoteError:
        raise
    except Exception as exc:
        mapped = _engine_error(exc, "docker build of role %s" % name)
        if mapped is None:
            raise
        raise mapped from None
    finally:
        api.close()
    if os.path.isdir(context_dir):  # the controller uploads it (over the transport) before this
        audit.record(ctx.root, None, "role.context", context_dir + " (uploaded by the controller)",
                     "rm -rf %s" % context_dir)  # fmt: skip
    return {
        "image": tag,
        "built": built,
        "network": network if built else None,  # None: an existing image was reused as it is
        "seconds": round(time.time() - started, 3),
        "uid": uid,
        "gid": gid,
    }


def _build_checked(
    api: Any,
    ctx: Context,
    context_dir: str,
    dockerfile: str,
    tag: str,
    role: Tuple[str, str],
    user: str,
    network: str,
) -> str:
    """Build under a candidate tag; only a non-root user earns the real tag.

    The candidate tag is this build's own: two controllers building the same role on one engine
    at once must not remove or retag each other's candidate."""
    candidate = "%s-candidate-%s" % (tag, binascii.hexlify(os.urandom(4)).decode())
    name, content_hash = role
    labels = {
        LABEL_MANAGED: "true",
        LABEL_ROLE: name,
        LABEL_HASH: content_hash,
        LABEL_BUILD_NETWORK: network,
    }
    try:
        image_id = _stream_build(api, ctx, context_dir, dockerfile, candidate, labels, network)
        if image_id is None:
            image_id = str(api.inspect_image(candidate)["Id"])
        uid, _ = image_user_ids(ctx.root, image_id, user, api)
        if uid == 0:
            raise RemoteError(
                E_FAILED,
                "user %r is uid 0 in the image; the agent must not run as root "
                "(create a normal user, e.g. RUN useradd -m -u 1000 agent)" % (user,),
            )
        repository, _, version = tag.partition(":")
        api.tag(image_id, repository, version)
    except BaseException:
        _remove_quietly(api, candidate)
        raise
    _untag(api, candidate)
    return image_id


def _untag(api: Any, ref: str) -> None:
    with contextlib.suppress(Exception):
        api.remove_image(ref, noprune=True)  # the image keeps its real tag


HANDLERS = {"role.status": role_status, "role.build": role_build}
