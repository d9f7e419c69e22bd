"""The egress rules a launch gives an allowlist session. Pure.

Deny rules come first only for reading: deny wins wherever it is (agent_host/egress.py). The
allow rules are the runtime's model API, the common registries and code hosts (presets), the
inventory's (`[defaults.egress]`, the host's groups', the host's own), an approved workspace's
(`.jackin/config.toml`), then the operator's own (`--allow`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from agent_host.egress import (
    DEFAULT_PRESETS,
    RUNTIME_PRESETS,
    Rule,
    parse_pattern,
    preset_rules,
)

EgressRule = tuple[str, str, str]  # (allow | deny, pattern, where it is written)

# What a workspace's rules are to a launch (WorkspaceRules.status).
ABSENT = "absent"  # no file, or no rule in it
APPROVED = "approved"
NOT_APPROVED = "not approved"
CHANGED = "changed since approved"
IGNORED = "ignored"  # --workspace-rules ignore (or --ignore-workspace-config)
NOT_USED = "not used"  # the session's network is not allowlist
PENDING = (NOT_APPROVED, CHANGED)


@dataclass(frozen=True)
class WorkspaceRules:
    """The `[egress]` rules of a workspace's `.jackin/config.toml` and what a launch does with
    them: only `approved` ones apply (jackin_remote/workspace_rules.py reads and judges)."""

    status: str
    rules: tuple[EgressRule, ...] = ()  # (action, pattern, ".jackin/config.toml:LINE")
    file: str = ".jackin/config.toml"  # where they are written (the laptop's path)
    approve: str = ""  # the command that approves them
    problem: str = ""  # NOT_USED: why the file could not be read (it does not matter here)

    @property
    def applied(self) -> tuple[EgressRule, ...]:
        return self.rules if self.status == APPROVED else ()

    def section(self, network: str) -> dict[str, Any]:
        """The network section's `workspace_rules` entry: where, what, and whether it applies."""
        status = self.status
        if network != "allowlist" and status != IGNORED:
            status = NOT_USED  # whatever their approval: nothing to apply them to
        notes = {
            APPROVED: "applied: approved with this exact content",
            NOT_APPROVED: f"NOT applied: not approved yet (run `{self.approve}`)",
            CHANGED: f"NOT applied: the file changed since it was approved (run `{self.approve}`)",
            IGNORED: "NOT applied: --workspace-rules ignore",
            NOT_USED: f"not used: workspace rules apply to --network allowlist only (this "
            f"session: --network {network})" + (f"; {self.problem}" if self.problem else ""),
        }
        return {
            "file": self.file,
            "status": status,
            "applied": status == APPROVED,
            "rules": [f"{a} {p} (workspace {where})" for a, p, where in self.rules],
            "note": notes.get(status, status),
        }

    def warnings(self, network: str) -> list[str]:
        if self.status not in PENDING or network != "allowlist":
            return []
        why = "is not approved" if self.status == NOT_APPROVED else "changed since approved"
        return [
            f"The workspace's {self.file} has {len(self.rules)} egress rule(s) and {why}: they "
            f"are NOT applied, and launch refuses until `{self.approve}` (or --workspace-rules "
            "ignore)."
        ]


def launch_rules(
    runtime: str,
    allow: Sequence[str],
    deny: Sequence[str],
    inventory: Sequence[EgressRule] = (),
    workspace: Sequence[EgressRule] = (),
) -> tuple[Rule, ...]:
    """The rules for a session of `runtime`: the host's from the inventory (`[defaults.egress]`,
    its groups', then `[hosts.<name>.egress]`: (action, pattern, file:line)), the presets, an
    approved workspace's (action, pattern, `.jackin/config.toml:LINE`), and the operator's
    `--allow` and `--deny`. Patterns are checked (SpecError naming the flag or file:line)."""
    from_inventory = [Rule(a, parse_pattern(p, where), "inventory " + where)
                      for a, p, where in inventory]  # fmt: skip
    from_workspace = [Rule(a, parse_pattern(p, where), "workspace " + where)
                      for a, p, where in workspace]  # fmt: skip
    rules = [Rule("deny", parse_pattern(p, "--deny"), "--deny") for p in deny]
    rules += [rule for rule in from_inventory if rule.action == "deny"]
    rules += [rule for rule in from_workspace if rule.action == "deny"]
    rules += preset_rules(RUNTIME_PRESETS.get(runtime, ()) + DEFAULT_PRESETS)
    rules += [rule for rule in from_inventory if rule.action == "allow"]
    rules += [rule for rule in from_workspace if rule.action == "allow"]
    rules += [Rule("allow", parse_pattern(p, "--allow"), "--allow") for p in allow]
    return tuple(rules)
