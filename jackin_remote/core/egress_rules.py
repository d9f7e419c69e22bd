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


def launch_rules(runtime: str, allow: Sequence[str], deny: Sequence[str]) -> tuple[Rule, ...]:
    """The rules for a session of `runtime`, with the operator's `--allow` and `--deny`.
    Patterns are checked (SpecError naming the flag)."""
    rules = [Rule("deny", parse_pattern(p, "--deny"), "--deny") for p in deny]
    rules += preset_rules(RUNTIME_PRESETS.get(runtime, ()) + DEFAULT_PRESETS)
    rules += [Rule("allow", parse_pattern(p, "--allow"), "--allow") for p in allow]
    return tuple(rules)
