"""Get a role's image onto a host: ask, upload the build context if needed, build if needed.

The context travels as one deterministic .tar.gz on the command's stdin, is unpacked into a
temp dir under the host root and renamed into place (atomic: a build never sees half a role).
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from agent_host import layout
from agent_host.protocol import E_DOCKER_UNAVAILABLE, Message
from agent_host.roles import PROGRESS
from agent_host.wire import DEFAULT_BUILD_NETWORK
from jackin_remote.agent.deploy import root_prelude
from jackin_remote.errors import AgentCallError, JackinError
from jackin_remote.roles import tree
from jackin_remote.roles.manifest import RoleError
from jackin_remote.roles.role import Role

if TYPE_CHECKING:
    from jackin_remote.fleet import HostLink

UPLOAD_TIMEOUT = 600.0
# Renames without replacing: if another upload won the race, its (identical) copy stays.
_RENAME = "import os,sys; os.rename(sys.argv[1], sys.argv[2])"


class RoleBuildError(JackinError):
    """A role could not be uploaded to or built on one host."""


def host_role_subpath(role: Role) -> str:
    """The role's build context relative to the host root, as agent_host.layout names it."""
    return layout.role_dir("", role.name, role.content_hash)


def role_archive(role: Role) -> bytes:
    """The role directory as shipped: read again, and refused if it changed since load_role."""
    entries = tree.snapshot(role.directory)
    if tree.content_hash(entries) != role.content_hash:
        raise RoleError(
            f"{role.directory}: the role changed while it was being used",
            hint="run the command again once the role's files are saved",
        )
    return tree.archive(entries)


def upload_script(root: str, role: Role) -> str:
    """sh that unpacks stdin into the role's context dir (stdin is drained if it is there)."""
    sub = host_role_subpath(role)
    parent = os.path.dirname(sub)
    return root_prelude(root) + (
        f'dest="$root"/{shlex.quote(sub)}\n'
        'if [ -d "$dest" ]; then cat >/dev/null; exit 0; fi\n'
        f'umask 077; mkdir -p "$root"/{shlex.quote(parent)} || exit 1\n'
        f'tmp=$(mktemp -d "$root"/{shlex.quote(parent)}/.incoming.XXXXXX) || exit 1\n'
        'if ! tar -xzf - -C "$tmp" --no-same-owner; then rm -rf "$tmp"; exit 1; fi\n'
        f'if ! python3 -I -c {shlex.quote(_RENAME)} "$tmp" "$dest" 2>/dev/null; then\n'
        '  rm -rf "$tmp"\n'
        '  [ -d "$dest" ] || { echo "cannot move the role into $dest" >&2; exit 1; }\n'
        "fi\n"
    )


async def ensure_role_image(
    link: HostLink,
    role: Role,
    on_progress: Callable[[str], None] | None = None,
    network: str = DEFAULT_BUILD_NETWORK,
) -> dict[str, Any]:
    """Make sure `role`'s image exists on the link's host; a build runs on `network`
    ("none" or "default", the operator's choice; an image already there is reused as it is).

    Returns {"image", "built", "uploaded", "uid", "gid", "network"} (uid/gid: the role user in
    the image, present when the host checked it, i.e. whenever a build was asked for; network:
    what the build ran with, None when nothing was built).
    """
    host = link.host.name
    params: Message = {"name": role.name, "hash": role.content_hash}
    status = await _call(link, "role.status", params, role)
    if status.get("present"):
        return {"image": status["image"], "built": False, "uploaded": False, "network": None}
    uploaded = False
    if not status.get("uploaded"):
        data = role_archive(role)
        done = await link.transport.run(
            upload_script(link.host.root, role), input=data, timeout=UPLOAD_TIMEOUT
        )
        if done.returncode != 0:
            raise RoleBuildError(
                f"{host}: uploading role {role.name} failed: {done.stderr_text or done.returncode}",
                hint="check free disk space and permissions under the host's root "
                f"({link.host.root})",
            )
        uploaded = True

    def forward(method: str, event: Message) -> None:
        if method == PROGRESS and on_progress is not None:
            on_progress(str(event.get("line", "")))

    build_params = {**params, "dockerfile": role.dockerfile, "user": role.user, "network": network}
    result = await _call(link, "role.build", build_params, role, on_event=forward, network=network)
    return {
        "image": result["image"],
        "built": bool(result["built"]),
        "uploaded": uploaded,
        "uid": result.get("uid"),
        "gid": result.get("gid"),
        "network": result.get("network"),
    }


async def _call(
    link: HostLink,
    method: str,
    params: Message,
    role: Role,
    on_event: Callable[[str, Message], None] | None = None,
    network: str | None = None,
) -> dict[str, Any]:
    try:
        result: dict[str, Any] = await link.agent.call(method, params, on_event=on_event)
    except AgentCallError as exc:
        hint = (
            "start the docker engine on the host, and let the ssh user use it (docker group)"
            if exc.code == E_DOCKER_UNAVAILABLE
            else f"fix the role ({role.manifest_path}) or the host, then try again"
        )
        if network == "none" and exc.code != E_DOCKER_UNAVAILABLE:
            # The most likely cause of a build that works elsewhere: a RUN step that downloads.
            hint += (
                "; the build had no network (--build-network none, the default): if the "
                "Dockerfile downloads, pass --build-network default to give it the engine's "
                "network"
            )
        raise RoleBuildError(
            f"{link.host.name}: role {role.name}: {exc.reason}", hint=hint
        ) from None
    return result
