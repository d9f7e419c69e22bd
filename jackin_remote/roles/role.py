"""load_role: a role directory (or git URL) -> a validated Role with its content hash."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from agent_host.wire import image_tag as _host_image_tag
from jackin_remote.inventory.toml_lines import SourceIndex, index_source
from jackin_remote.roles import tree
from jackin_remote.roles.manifest import (
    DOCS_HINT,
    MANIFEST_NAME,
    MAX_MANIFEST_BYTES,
    Manifest,
    RoleError,
    parse_manifest,
)
from jackin_remote.roles.source import fetch_git_role, parse_git_source


@dataclass(frozen=True)
class Role:
    name: str
    version: int
    dockerfile: str  # relative posix path inside `directory`
    runtimes: tuple[str, ...]
    user: str
    directory: Path
    content_hash: str  # sha256 hex of the directory's content (tree.content_hash)
    manifest_path: Path
    description: str = ""
    source: str = ""  # what the user gave: a path or a git URL
    origin: str = "directory"  # "directory" or "git" (fetched from `source`)

    @property
    def shown_source(self) -> str:
        """Where the role came from, as the contract names it: the git URL, or the directory."""
        return self.source if self.origin == "git" else str(self.directory)


def image_tag(role: Role) -> str:
    """`jackin-role-<name>:<hash[:12]>`: a changed role is a new tag, an unchanged one is reused."""
    return _host_image_tag(role.name, role.content_hash)


def load_role(source: str | Path, cache: Path | None = None) -> Role:
    """Read and validate a role from a directory (or its manifest file) or a git URL.

    A git URL is fetched into the laptop's role cache, or into `cache` (explain passes a
    temporary directory: it must leave nothing behind)."""
    text = str(source)
    git = parse_git_source(text) if isinstance(source, str) else None
    directory = fetch_git_role(git, cache) if git is not None else _local_directory(Path(source))
    manifest_path = directory / MANIFEST_NAME
    manifest, index = _read_manifest(manifest_path)
    _check_dockerfile(directory, manifest, manifest_path, index)
    entries = tree.snapshot(directory)
    return Role(
        name=manifest.name,
        version=manifest.version,
        dockerfile=manifest.dockerfile,
        runtimes=manifest.runtimes,
        user=manifest.user,
        directory=directory,
        content_hash=tree.content_hash(entries),
        manifest_path=manifest_path,
        description=manifest.description,
        source=text,
        origin="git" if git is not None else "directory",
    )


def _local_directory(path: Path) -> Path:
    path = path.expanduser()
    if path.name == MANIFEST_NAME and path.is_file():
        path = path.parent
    if not path.exists():
        raise RoleError(
            f"{path}: no such role directory",
            hint="give a role directory (holding jackin.role.toml) or a git URL like "
            "git+file:///path#ref",
        )
    if not path.is_dir():
        raise RoleError(f"{path}: not a directory", hint="give the role's directory")
    return path.resolve()


def _read_manifest(path: Path) -> tuple[Manifest, SourceIndex]:
    if not path.exists() and not path.is_symlink():
        raise RoleError(
            f"{path.parent}: not a role: no {MANIFEST_NAME}",
            hint=f"a role directory holds {MANIFEST_NAME} and a Dockerfile; {DOCS_HINT}",
        )
    data = tree.read_regular_file(path, limit=MAX_MANIFEST_BYTES)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise RoleError(
            "not UTF-8 text", file=str(path), line=line, hint="save it as UTF-8"
        ) from None
    return parse_manifest(str(path), text), index_source(text)


def _check_dockerfile(
    directory: Path, manifest: Manifest, manifest_path: Path, lines: SourceIndex
) -> None:
    """The dockerfile must be a regular file that really lives inside the role directory."""
    candidate = directory / manifest.dockerfile
    hint = f"create {manifest.dockerfile} in {directory}, or point `dockerfile` at the right file"
    resolved = candidate.resolve()
    if resolved != directory and directory not in resolved.parents:
        message = f"{manifest.dockerfile!r} resolves outside the role directory"
    elif not resolved.is_file():
        what = "is not a regular file" if resolved.exists() else "does not exist"
        message = f"{manifest.dockerfile!r} {what}"
    else:
        return
    line = lines.line_of(("dockerfile",))
    raise RoleError(message, file=str(manifest_path), line=line, field="dockerfile", hint=hint)
