"""Where sessions go: the least-loaded host with free capacity, among the hosts that answered.
Pure: the caller asks the hosts first and passes what they said (or why they did not answer)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from jackin_remote.errors import UsageError

EXIT_HOSTS_FAILED = 3  # the CLI's "some hosts failed": the refusal is caused by dead hosts


@dataclass(frozen=True)
class Slot:
    """One candidate host as placement sees it. `error` says why it did not answer (None: it
    answered, or was not asked); a host that did not answer is never picked."""

    host: str
    capacity: int
    running: int
    error: str | None = None

    @property
    def answered(self) -> bool:
        return self.error is None

    def as_dict(self) -> dict[str, object]:
        return {"host": self.host, "running": self.running, "capacity": self.capacity,
                "answered": self.answered, "error": self.error}  # fmt: skip


class PlacementError(UsageError):
    """The sessions cannot all be placed; raised before any is started. Exit code 3 when hosts
    that did not answer are why (as for any failed host), else 2 (a usage problem: capacity)."""

    def __init__(self, message: str, *, hint: str, dead: Sequence[Slot]) -> None:
        super().__init__(message, hint=hint)
        self.dead = tuple(dead)
        self.exit_code = EXIT_HOSTS_FAILED if dead else 2


def free_slots(slot: Slot) -> int:
    return max(0, slot.capacity - slot.running) if slot.answered else 0


def place(slots: Sequence[Slot], count: int = 1) -> list[str]:
    """Hosts for `count` new sessions, one pick at a time, each time on the least-loaded host
    (running / capacity; ties go to inventory order). Hosts at capacity or that did not answer
    are never picked. All or nothing: when the `count` sessions do not fit, nothing is placed."""
    slots = list(slots)
    dead = [s for s in slots if not s.answered]
    if sum(free_slots(s) for s in slots) < count:
        raise _refusal(slots, dead, count)
    load = {slot.host: slot.running for slot in slots}
    picks = []
    for _ in range(count):
        free = [s for s in slots if s.answered and load[s.host] < s.capacity]
        best = min(free, key=lambda s: (load[s.host] / s.capacity, slots.index(s)))
        load[best.host] += 1
        picks.append(best.host)
    return picks


def _refusal(slots: list[Slot], dead: list[Slot], count: int) -> PlacementError:
    live = [s for s in slots if s.answered]
    free = sum(free_slots(s) for s in live)
    loads = ", ".join(f"{s.host} {s.running}/{s.capacity}" for s in live)
    parts = [f"cannot place {count} session(s): "
             + (f"{free} free slot(s) on the hosts that answered ({loads})" if live
                else "no host answered")]  # fmt: skip
    if dead:
        parts.append("did not answer: " + "; ".join(f"{s.host} ({s.error})" for s in dead))
    if not slots:
        parts = [f"cannot place {count} session(s): no hosts"]
    hint = "nothing was started; "
    if dead:
        hint += (f"start or fix {', '.join(s.host for s in dead)} (`jackin-remote hosts check`), "
                 "or launch fewer sessions (--count) or on other hosts (--on)")  # fmt: skip
    else:
        hint += "stop or rm sessions, raise capacity in the inventory, or add hosts"
    return PlacementError(". ".join(parts), hint=hint, dead=dead)
