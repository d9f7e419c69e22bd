"""The egress rules a launch gives an allowlist session. Pure.

Deny rules come first only for reading: deny wins wherever it is (agent_host/egress.py). The
allow rules are the runtime's model API, the common registries and code hosts (presets), then
the operator's own (`--allow`).
"""

from __future__ import annotations

from collections.abc import Sequence

from agent_host.egress import (
    DEFAULT_PRESETS,
    RUNTIME_PRESETS,
    Rule,
    parse_pattern,
    preset_rules,
)


def launch_rules(
    runtime: str,
    allow: Sequence[str],
    deny: Sequence[str],
    inventory: Sequence[tuple[str, str, str]] = (),
) -> tuple[Rule, ...]:
    """The rules for a session of `runtime`: the host's from the inventory (`[defaults.egress]`
    then `[hosts.<name>.egress]`: (action, pattern, file:line)), the presets, and the operator's
    `--allow` and `--deny`. Patterns are checked (SpecError naming the flag)."""
    from_inventory = [Rule(a, parse_pattern(p, where), "inventory " + where)
                      for a, p, where in inventory]  # fmt: skip
    rules = [Rule("deny", parse_pattern(p, "--deny"), "--deny") for p in deny]
    rules += [rule for rule in from_inventory if rule.action == "deny"]
    rules += preset_rules(RUNTIME_PRESETS.get(runtime, ()) + DEFAULT_PRESETS)
    rules += [rule for rule in from_inventory if rule.action == "allow"]
    rules += [Rule("allow", parse_pattern(p, "--allow"), "--allow") for p in allow]
    return tuple(rules)
