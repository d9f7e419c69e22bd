"""Pool.map: a host whose answer breaks the code reading it fails alone, named, as an agent
error; the other hosts' results stand."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from jackin_remote.core.hoststate import HostState
from jackin_remote.fleet import Pool
from jackin_remote.inventory import load_inventory


def test_a_host_with_a_malformed_answer_fails_alone(tmp_path: Path) -> None:
    (tmp_path / "hosts.toml").write_text(
        '[hosts.local]\ntransport = "local"\n[hosts.bad]\naddress = "192.0.2.1"\n'
    )
    inventory = load_inventory(str(tmp_path / "hosts.toml"))
    pool = Pool(inventory)
    answers: dict[str, Any] = {"local": {"sessions": []}, "bad": ["not", "an", "object"]}

    async def agent(host: Any) -> Any:  # no agent started: the answer is what is under test
        return SimpleNamespace(host=host)

    async def work(link: Any) -> Any:
        return answers[link.host.name].get("sessions")

    pool.agent = agent  # type: ignore[method-assign]
    good, bad = asyncio.run(pool.map(list(inventory.hosts.values()), work))
    assert (good.host.name, good.ok, good.value) == ("local", True, [])
    assert (bad.host.name, bad.ok, bad.state) == ("bad", False, HostState.AGENT_ERROR)
    assert "unexpected answer: AttributeError" in str(getattr(bad.error, "reason", bad.error))
