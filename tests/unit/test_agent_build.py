"""The agent zipapp: reproducible, named by content, and loadable by python3 3.9."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import zipfile
from pathlib import Path

import agent_host
from jackin_remote.agent.build import VENDORED, archive_members, build_agent, build_zip


def test_build_is_reproducible_and_cached(tmp_path: Path) -> None:
    members = archive_members()
    assert build_zip(members) == build_zip(members)
    first = build_agent(tmp_path)
    again = build_agent(tmp_path)
    assert first == again
    assert first.dirname == f"jackin-agent-{first.content_hash}"


def test_archive_vendors_its_dependencies_without_compiled_code(tmp_path: Path) -> None:
    names = zipfile.ZipFile(build_agent(tmp_path).path).namelist()
    assert "__main__.py" in names
    for package in ("docker", "requests", "urllib3"):
        assert f"_vendor/{package}/__init__.py" in names
    assert not [n for n in names if n.endswith((".so", ".pyc"))]


def test_agent_sources_parse_as_python_3_9() -> None:
    for path in Path(agent_host.__file__).parent.rglob("*.py"):
        ast.parse(path.read_text(), filename=str(path), feature_version=(3, 9))


def test_vendored_distributions_support_python_3_9() -> None:
    for name in VENDORED:
        spec = importlib.metadata.metadata(name).get("Requires-Python") or ""
        match = re.search(r">=\s*3\.(\d+)", spec)
        assert match is None or int(match.group(1)) <= 9, f"{name} requires {spec}"
