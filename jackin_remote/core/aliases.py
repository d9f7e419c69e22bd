"""One machine, or one host root, under two inventory names: pure decisions.

A name's identity is the host key the laptop verified (SSH only: the local host has none), the
machine's /etc/machine-id (None in most containers) and the random id the agent made once under
its root. Two names are one machine when every piece of evidence both have agrees and at least
one of host key and machine id is there to compare; one root (so the same sessions) when they
are one machine and report the same root id. A host cannot fake another's host key, so a host
lying about its ids cannot merge itself with an SSH host it is not.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Identity:
    name: str
    host_key: str | None = None  # "ssh-ed25519 SHA256:...", as verified by the connection
    machine_id: str | None = None
    root_id: str | None = None
    root: str | None = None  # the inventory's root path, for messages

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Identity:
        """From the laptop's `hosts` table (columns name, host_key, machine_id, root_id)."""
        return cls(row["name"], row.get("host_key"), row.get("machine_id"), row.get("root_id"))


def same_machine(a: Identity, b: Identity) -> bool:
    compared = False
    for mine, theirs in ((a.host_key, b.host_key), (a.machine_id, b.machine_id)):
        if mine is not None and theirs is not None:
            if mine != theirs:
                return False
            compared = True
    return compared


def same_root(a: Identity, b: Identity) -> bool:
    return a.root_id is not None and a.root_id == b.root_id and same_machine(a, b)


@dataclass(frozen=True)
class Alias:
    """Two names of one machine; `same_root`: also one root, so one set of sessions."""

    first: Identity
    second: Identity
    same_root: bool

    @property
    def names(self) -> tuple[str, str]:
        return (self.first.name, self.second.name)

    def evidence(self) -> str:
        """What proves them one machine, for the message."""
        shown = []
        if self.first.host_key and self.first.host_key == self.second.host_key:
            shown.append(f"host key {self.first.host_key}")
        if self.first.machine_id and self.first.machine_id == self.second.machine_id:
            shown.append(f"machine-id {self.first.machine_id}")
        return " and ".join(shown)


def aliases(identities: Iterable[Identity]) -> list[Alias]:
    """Every pair of names that are one machine, in the order given."""
    found = []
    items = list(identities)
    for index, first in enumerate(items):
        for second in items[index + 1 :]:
            if first.name != second.name and same_machine(first, second):
                found.append(Alias(first, second, same_root(first, second)))
    return found


def root_groups(identities: Iterable[Identity]) -> dict[str, str]:
    """Each name -> the first (sorted) name of the names that reach its root (itself if none)."""
    items = sorted(identities, key=lambda item: item.name)
    group = {item.name: item.name for item in items}
    for alias in aliases(items):
        if alias.same_root:
            keep, drop = sorted((group[alias.first.name], group[alias.second.name]))
            for name, leader in group.items():
                if leader == drop:
                    group[name] = keep
    return group
