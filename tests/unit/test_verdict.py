from typing import Any

from jackin_remote.core.verdict import problems, verdict

GOOD: dict[str, Any] = {
    "docker": {"installed": True, "access": True, "version": "24.0"},
    "python": "3.11.2", "rsync": "3.2.7", "git": "2.39.5",
    "disk": {"free": 50 * 1024**3, "path": "/home/u"}, "user": "u",
}  # fmt: skip


def test_a_good_host_is_ready() -> None:
    assert verdict(problems(GOOD, 0.1)) == "ready"


def test_docker_permission_points_at_the_docker_group() -> None:
    facts = {
        **GOOD,
        "docker": {
            "installed": True,
            "access": False,
            "error": "permission denied on the docker socket",
        },
    }
    found = problems(facts, 0.0)
    assert verdict(found) == "unusable"
    assert "docker group" in found[0].hint


def test_old_python_missing_tools_low_disk_and_skew() -> None:
    facts = {**GOOD, "python": "3.8.10", "rsync": None, "disk": {"free": 1024, "path": "/"}}
    messages = " | ".join(p.message for p in problems(facts, -7.5))
    assert "3.8.10 is too old" in messages
    assert "rsync not installed" in messages
    assert "GiB free" in messages
    assert "-7.5 s" in messages


def test_warnings_only_degrade() -> None:
    assert verdict(problems(GOOD, 10.0)) == "degraded"
