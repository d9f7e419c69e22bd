"""Host selectors: which hosts a command runs on.

NAME         one host
GROUP        a group, expanded recursively
label:X      every host labelled X
all          every host, `local` included
a,b,label:x  the union of the above, first appearance order, no duplicates
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from jackin_remote.errors import UsageError
from jackin_remote.inventory.model import Host, Inventory

ALL = "all"
LABEL_PREFIX = "label:"
SELECTOR_HINT = "a selector is a host, a group, label:X or all; join several with ','"


def select_hosts(inv: Inventory, selector: str) -> list[Host]:
    """Hosts matched by `selector`, in the order the selector names them, each once."""
    terms = [term.strip() for term in selector.split(",")]
    if any(not term for term in terms):
        raise UsageError(f"empty host selector in {selector!r}", hint=SELECTOR_HINT)
    chosen: dict[str, Host] = {}
    for term in terms:
        for host in _resolve_term(inv, term):
            chosen.setdefault(host.name, host)
    return list(chosen.values())


def _resolve_term(inv: Inventory, term: str) -> list[Host]:
    if term == ALL:
        return list(inv.hosts.values())
    if term.startswith(LABEL_PREFIX):
        return _hosts_with_label(inv, term.removeprefix(LABEL_PREFIX))
    if term in inv.hosts:
        return [inv.hosts[term]]
    if term in inv.groups:
        return [_host_or_fail(inv, name) for name in expand_group(inv, term)]
    raise UsageError(f"unknown host or group `{term}`", hint=_unknown_hint(inv, term))


def _hosts_with_label(inv: Inventory, label: str) -> list[Host]:
    hosts = [host for host in inv.hosts.values() if label in host.labels]
    if not hosts:
        known = sorted({label for host in inv.hosts.values() for label in host.labels})
        raise UsageError(
            f"no host has the label `{label}`",
            hint=_suggestion(label, known) or _listing("known labels", known),
        )
    return hosts


def expand_group(inv: Inventory, group: str) -> list[str]:
    """Host names of a group, depth first in member order, each once. Cycle-safe even for an
    Inventory built by hand (the loader already refuses loops)."""
    hosts: list[str] = []
    seen_groups: set[str] = set()

    def visit(name: str) -> None:
        if name in seen_groups:
            return
        seen_groups.add(name)
        for member in inv.groups[name]:
            if member in inv.groups:
                visit(member)
            elif member not in hosts:
                hosts.append(member)

    visit(group)
    return hosts


def _host_or_fail(inv: Inventory, name: str) -> Host:
    host = inv.hosts.get(name)
    if host is None:
        raise UsageError(
            f"a group names the unknown host `{name}`", hint="fix the inventory's [groups]"
        )
    return host


def _unknown_hint(inv: Inventory, term: str) -> str:
    suggestion = _suggestion(term, [*inv.hosts, *inv.groups, ALL])
    listing = "; ".join(
        part
        for part in (
            _listing("known hosts", inv.hosts),
            _listing("groups", inv.groups) if inv.groups else "",
        )
        if part
    )
    return f"{suggestion} {listing}" if suggestion else listing


def _suggestion(word: str, choices: Iterable[str]) -> str | None:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"did you mean `{close[0]}`?" if close else None


def _listing(title: str, names: Iterable[str]) -> str:
    names = list(names)
    if not names:
        return f"{title}: none"
    return f"{title}: " + ", ".join(names)
