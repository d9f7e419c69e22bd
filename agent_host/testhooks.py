"""Test-only pause points: stop a launch at a named step, deterministically.

A test that must kill the controller "in the middle of a launch" cannot do it with a sleep: a
launch on an idle machine finishes before the signal arrives. Instead it sets
JACKIN_TEST_PAUSE_AT=<step> for one command. When that command reaches the step, it announces it
and waits; the test sees the announcement, then kills, inspects or resumes.

- Controller steps (`CONTROLLER_STEPS`): the controller flushes its output, writes
  `MARKER + step` as one line on stderr, and blocks for ever (the test SIGKILLs it).
- Host steps (`HOST_STEPS`): the agent runs under `env -i`, so the controller passes the
  variable on only when it names a host step (`agent_env`). The agent creates
  `<root>/test-pause/<step>.reached`, then waits until the test creates
  `<root>/test-pause/<step>.resume` and carries on: "the host got the request and finishes anyway".

Unset (production), each pause point costs one environment lookup. A value outside `STEPS` is
an error, so a misspelt step can never let a test pass without pausing. Python 3.9 compatible.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import sys
import time
from typing import Mapping, Optional

ENV = "JACKIN_TEST_PAUSE_AT"
# Controller steps: with this set to a path, the paused launch carries on once the file exists
# (the test disturbed a host meanwhile); unset, it waits for ever (the test kills it).
RESUME_ENV = "JACKIN_TEST_RESUME_FILE"
MARKER = "jackin-test-pause: reached "
PAUSE_DIR = "test-pause"  # under the host root
# Seconds a `host.janitor` pass adds to its clock (agent_host/janitor.py): a test sees idle
# cleanup decide "later" without waiting. Passed to the agent like a host step.
CLOCK_ENV = "JACKIN_TEST_CLOCK_OFFSET"

# In launch order. Keep this list, the hook calls and docs/ARCHITECTURE.md in step.
CONTROLLER_STEPS = (
    "agent",  # launch.py: before the host agent is started (nothing touched on the host yet)
    "sync",  # sync.py: the files are rsynced into the host's mirror, not yet committed there
    "role-image",  # launch.py: workspace synced, before the role image is checked or built
    "create-send",  # launch.py: right before session.create is sent
    "create-reply",  # launch.py: the host recorded and answered; before the laptop records it
)
HOST_STEPS = (
    "host-create",  # sessions.create: the `starting` record is written; no checkout, no container
    "host-list",  # sessions.list: before anything is read (a host that does not answer)
)
STEPS = CONTROLLER_STEPS + HOST_STEPS
# The steps a launch passes (tests/e2e/test_resilience.py stops a launch at each); `host-list`
# belongs to listing, not to a launch.
LAUNCH_STEPS = (*CONTROLLER_STEPS, "host-create")


def _wanted(environ: Mapping[str, str]) -> Optional[str]:
    step = environ.get(ENV)
    if step is not None and step not in STEPS:
        raise ValueError("%s=%r is not one of %s" % (ENV, step, ", ".join(STEPS)))
    return step


async def pause(step: str) -> None:
    """Controller side: announce `step` on stderr and wait for ever, if the test asked for it.

    The wait is on the event loop, not a blocked thread: SIGKILL ends the process and Ctrl-C
    (SIGINT) interrupts the launch as it would at that step."""
    if os.environ.get(ENV) is None:
        return
    if _wanted(os.environ) != step:
        return
    sys.stdout.flush()  # what was printed so far (the contract) must reach the test
    sys.stderr.write(MARKER + step + "\n")
    sys.stderr.flush()
    resume = os.environ.get(RESUME_ENV)
    if not resume:
        await asyncio.get_running_loop().create_future()  # never set
    while not os.path.exists(str(resume)):  # a state the test sets (it disturbed a host)
        await asyncio.sleep(0.05)


def agent_env(environ: Optional[Mapping[str, str]] = None) -> str:
    """The `NAME=value ` words to add to the agent's `env -i` line: empty unless a test asked
    for a host step or a clock offset."""
    environ = os.environ if environ is None else environ
    clock = "" if environ.get(CLOCK_ENV) is None else "%s=%s " % (
        CLOCK_ENV, shlex.quote(repr(clock_offset(environ))))  # fmt: skip
    if environ.get(ENV) is None:
        return clock
    step = _wanted(environ)
    return clock + ("%s=%s " % (ENV, shlex.quote(step)) if step in HOST_STEPS else "")


def clock_offset(environ: Optional[Mapping[str, str]] = None) -> float:
    """CLOCK_ENV's seconds (0 unset). A value that is not a number is an error, so a misspelt
    offset can never let a test pass on the real clock."""
    environ = os.environ if environ is None else environ
    value = environ.get(CLOCK_ENV)
    if value is None:
        return 0.0
    try:
        return float(value)
    except ValueError:
        raise ValueError("%s=%r is not a number of seconds" % (CLOCK_ENV, value)) from None


def pause_host(step: str, root: str) -> None:
    """Host side: mark `step` reached under the host root, then wait for the test's resume file."""
    if os.environ.get(ENV) != step:
        return
    directory = os.path.join(root, PAUSE_DIR)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, step + ".reached"), "w"):
        pass
    resume = os.path.join(directory, step + ".resume")
    while not os.path.exists(resume):  # waits for a state the test sets, not for a duration
        time.sleep(0.05)
