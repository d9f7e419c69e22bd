"""Build the host agent zipapp: agent_host/ plus its pure-Python dependencies, vendored.

The archive is byte-for-byte reproducible (sorted entries, fixed timestamps), so its content hash
names it: a host that already has `jackin-agent-<hash>` needs nothing sent.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import io
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import agent_host
from jackin_remote import paths

# Imported by the agent on the host (docker SDK and what it needs to reach the local socket).
VENDORED = ("docker", "requests", "urllib3", "idna", "certifi", "charset_normalizer")
HASH_LEN = 16
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)

# Runs from the archive or, as deployed, from its unpacked directory: jackin-agent-<hash>[.pyz].
MAIN = """\
import os, sys
_archive = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [_archive, os.path.join(_archive, "_vendor")]
import warnings
warnings.filterwarnings("ignore", module="requests")
from agent_host.main import main
_name = os.path.basename(_archive)
if _name.endswith(".pyz"):
    _name = _name[: -len(".pyz")]
_hash = _name[len("jackin-agent-"):] if _name.startswith("jackin-agent-") else None
sys.exit(main(agent_hash=_hash))
"""


@dataclass(frozen=True)
class AgentArtifact:
    path: Path
    content_hash: str

    @property
    def dirname(self) -> str:
        """The unpacked, byte-compiled copy a host runs (a zipapp cannot cache bytecode)."""
        return f"jackin-agent-{self.content_hash}"

    def read(self) -> bytes:
        return self.path.read_bytes()


def _package_files(package_dir: Path, arc_prefix: str) -> list[tuple[str, Path]]:
    """Every file of a package except compiled code: the archive must load on any CPython."""
    files = []
    for path in sorted(package_dir.rglob("*")):
        if not path.is_file() or "__pycache__" in path.parts:
            continue
        if path.suffix in {".pyc", ".so", ".pyd"}:
            continue
        files.append((f"{arc_prefix}/{path.relative_to(package_dir).as_posix()}", path))
    return files


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"cannot vendor {name!r} into the host agent: it is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def archive_members() -> list[tuple[str, Path]]:
    members = _package_files(Path(agent_host.__file__).parent, "agent_host")
    for name in VENDORED:
        members += _package_files(_package_dir(name), f"_vendor/{name}")
    return members


def _source_key(members: list[tuple[str, Path]]) -> str:
    """Cheap key for the build cache: names, sizes and mtimes of the inputs."""
    digest = hashlib.sha256()
    for arcname, path in members:
        stat = path.stat()
        digest.update(f"{arcname}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    for name in VENDORED:
        try:
            digest.update(f"{name}={importlib.metadata.version(name)}\n".encode())
        except importlib.metadata.PackageNotFoundError:
            digest.update(f"{name}=?\n".encode())
    return digest.hexdigest()[:24]


def build_zip(members: list[tuple[str, Path]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        entries = [("__main__.py", MAIN.encode())]
        entries += [(arcname, path.read_bytes()) for arcname, path in members]
        for arcname, data in sorted(entries):
            info = zipfile.ZipInfo(arcname, date_time=_ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, data)
    return buffer.getvalue()


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:HASH_LEN]


def build_agent(cache: Path | None = None) -> AgentArtifact:
    """The current agent zipapp, built once per change of its inputs and cached on disk."""
    cache = cache or paths.cache_dir() / "agent"
    members = archive_members()
    key = _source_key(members)
    for existing in cache.glob(f"{key}-*.pyz") if cache.exists() else ():
        return AgentArtifact(existing, existing.stem.split("-", 1)[1])
    data = build_zip(members)
    digest = content_hash(data)
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / f"{key}-{digest}.pyz"
    tmp = target.with_suffix(f".tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, target)
    return AgentArtifact(target, digest)
