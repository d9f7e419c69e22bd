"""The test-only pause points are inert unless asked for, and a misspelt step is an error."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent_host import testhooks
from jackin_remote.agent.build import AgentArtifact
from jackin_remote.agent.deploy import serve_script


async def test_unset_pauses_nowhere(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(testhooks.ENV, raising=False)
    for step in testhooks.CONTROLLER_STEPS:
        await testhooks.pause(step)  # returns at once
    for step in testhooks.HOST_STEPS:
        testhooks.pause_host(step, str(tmp_path))
    assert testhooks.agent_env({}) == ""


async def test_a_misspelt_step_is_an_error_not_a_silent_pass(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(testhooks.ENV, "create")
    with pytest.raises(ValueError, match="create-send"):
        await testhooks.pause("agent")
    with pytest.raises(ValueError):
        testhooks.agent_env()


def test_only_host_steps_travel_to_the_agent(monkeypatch: pytest.MonkeyPatch) -> None:
    artifact = AgentArtifact(Path("/nonexistent"), "0" * 16)
    assert testhooks.agent_env({testhooks.ENV: "create-send"}) == ""
    assert testhooks.HOST_STEPS == ("host-create", "host-list")
    for host_step in testhooks.HOST_STEPS:
        assert testhooks.agent_env({testhooks.ENV: host_step}) == f"{testhooks.ENV}={host_step} "
        monkeypatch.setenv(testhooks.ENV, host_step)
        assert f"{testhooks.ENV}={host_step} python3" in serve_script("~/.jackin", artifact)


async def test_a_paused_launch_with_a_resume_file_carries_on_once_it_exists(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import asyncio

    resume = tmp_path / "go"
    monkeypatch.setenv(testhooks.ENV, "sync")
    monkeypatch.setenv(testhooks.RESUME_ENV, str(resume))
    paused = asyncio.ensure_future(testhooks.pause("sync"))
    while testhooks.MARKER + "sync" not in capsys.readouterr().err:
        await asyncio.sleep(0)  # until it announced the step
    for _ in range(20):
        await asyncio.sleep(0)
    assert not paused.done()  # still waiting: the file is not there
    resume.touch()
    await asyncio.wait_for(paused, 30)
