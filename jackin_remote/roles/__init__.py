"""Roles: a directory (or git repo) with `jackin.role.toml` and a Dockerfile that defines the
agent's toolchain image. Roles cannot grant themselves privileges: those are operator decisions.

    manifest.py   strict jackin.role.toml validation (pure)
    tree.py       reading the directory safely: content hash, deterministic archive
    source.py     directory or git URL (shallow fetch into the laptop cache)
    role.py       load_role, Role, image_tag
    transfer.py   ensure_role_image: upload the context and build on a host
"""

from jackin_remote.roles.manifest import MANIFEST_NAME, RUNTIMES, RoleError
from jackin_remote.roles.role import Role, image_tag, load_role
from jackin_remote.roles.transfer import RoleBuildError, ensure_role_image

__all__ = [
    "MANIFEST_NAME",
    "RUNTIMES",
    "Role",
    "RoleBuildError",
    "RoleError",
    "ensure_role_image",
    "image_tag",
    "load_role",
]
