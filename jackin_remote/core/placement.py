"""Where sessions go: the least-loaded host with free capacity. Pure."""

from __future__ import annotations

from dataclasses import dataclass

from jackin_remote.errors import UsageError


@dataclass(frozen=True)
class Slot:
    host: str
    capacity: int
    running: int


def place(slots: list[Slot], count: int = 1) -> list[str]:
    """Hosts for `count` new sessions, one pick at a time, each time on the least-loaded host
    (running / capacity; ties go to inventory order). Hosts at capacity are never picked."""
    load = {slot.host: slot.running for slot in slots}
    picks = []
    for _ in range(count):
        free = [s for s in slots if load[s.host] < s.capacity]
        if not free:
            summary = ", ".join(f"{s.host} {load[s.host]}/{s.capacity}" for s in slots)
            raise UsageError(
                f"no host has free capacity for {count} session(s) ({summary or 'no hosts'})",
                hint="stop or rm sessions, raise capacity in the inventory, or add hosts",
            )
        best = min(free, key=lambda s: (load[s.host] / s.capacity, slots.index(s)))
        load[best.host] += 1
        picks.append(best.host)
    return picks
