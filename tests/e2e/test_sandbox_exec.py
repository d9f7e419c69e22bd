"""The host's reads inside a sandbox (agent_host/sandbox_exec.py) end whatever the sandbox does:
a command that never ends, a FIFO where a file was, a flood of output. Real docker, the test
base image."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import docker
import pytest

from agent_host.sandbox_exec import bounded_exec

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def box() -> Iterator[Any]:
    client = docker.from_env()
    container = client.containers.run("jackin-test-base:latest", ["sleep", "infinity"],
                                      detach=True, remove=True)  # fmt: skip
    try:
        yield container
    finally:
        container.kill()


def test_a_command_that_ends_gives_its_output_and_exit_code(box: Any) -> None:
    code, output = bounded_exec(box, ["sh", "-c", "echo out; echo err >&2; exit 3"], 60)
    # stdout and stderr are two streams: the engine may send either first
    assert (code, sorted(output.splitlines())) == (3, [b"err", b"out"])


def test_a_command_that_never_ends_is_left_at_the_deadline(box: Any) -> None:
    code, output = bounded_exec(box, ["sh", "-c", "echo started; exec sleep infinity"], 1.0)
    assert code is None and b"started\n".startswith(output)  # however far it got by then


def test_a_fifo_swapped_in_for_the_status_file_holds_nothing(box: Any) -> None:
    bounded_exec(box, ["sh", "-c", "rm -f /tmp/f; mkfifo /tmp/f"], 60)
    code, output = bounded_exec(box, ["head", "-c", "200", "/tmp/f"], 1.0)  # no writer: blocks
    assert (code, output) == (None, b"")


def test_a_flood_of_output_is_cut_at_the_cap(box: Any) -> None:
    code, output = bounded_exec(box, ["yes"], 60, cap=100_000)
    assert code is None and output == b"y\n" * 50_000
