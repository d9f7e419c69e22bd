"""Words, not Python: `hosts show` through the real CLI prints no reprs (None, tuples, dicts)."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import CLI


def test_hosts_show_prints_words_not_python_reprs(cli: CLI, local_inventory: Path) -> None:
    (local_inventory / "web.toml").write_text(
        '[hosts.web-1]\naddress = "10.0.0.5"\nlabels = ["gpu", "eu"]\n'
        '[hosts.web-1.limits]\nmemory = "2g"\n'
    )
    proc = cli.run("-i", str(local_inventory), "hosts", "show", "web-1")
    assert proc.returncode == 0, proc.stderr
    for repr_ in ("None", "('", "{'", "['", "True", "False"):
        assert repr_ not in proc.stdout, (repr_, proc.stdout)
    assert "gpu, eu" in proc.stdout and "memory 2g" in proc.stdout, proc.stdout
