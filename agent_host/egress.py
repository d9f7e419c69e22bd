"""Egress policy: which destinations a sandbox's proxy lets through, and by which rule. Pure.

A rule is `allow` or `deny` of a pattern:

    example.com          that host exactly (any port)
    *.example.com        one label under it: a.example.com, not a.b.example.com nor example.com
    **.example.com       any depth under it: a.example.com, a.b.example.com (not example.com)
    example.com:443      any of the above, on that port only
    10.0.0.5:8080        an IP literal, exactly (IPv6 in brackets: [::1]:80)

Deny always wins: a destination is allowed only when an allow rule matches and no deny rule does.
Nothing matches: denied (the default). Both sides call this module: the controller to show and
check the rules (`policy check`), the host's proxy to decide. Python 3.9 compatible.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Tuple

from agent_host.protocol import SpecError

MAX_PATTERN = 260
MAX_RULES = 512
_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z")
_PORT = re.compile(r"^[0-9]{1,5}\Z")

# The presets: named sets of allow patterns. A runtime's model API is allowed for its sessions.
PRESETS: Dict[str, Tuple[str, ...]] = {
    "anthropic": ("api.anthropic.com:443",),
    "openai": ("api.openai.com:443", "chatgpt.com:443", "auth.openai.com:443"),
    "google-ai": ("generativelanguage.googleapis.com:443", "oauth2.googleapis.com:443"),
    "amp": ("ampcode.com:443", "**.ampcode.com:443"),
    "registries": (
        "registry.npmjs.org:443",
        "registry.yarnpkg.com:443",
        "pypi.org:443",
        "files.pythonhosted.org:443",
        "crates.io:443",
        "static.crates.io:443",
        "index.crates.io:443",
        "proxy.golang.org:443",
        "sum.golang.org:443",
        "rubygems.org:443",
        "repo.maven.apache.org:443",
        "deb.debian.org:80",
        "deb.debian.org:443",
    ),
    "code-hosts": (
        "github.com:443",
        "api.github.com:443",
        "codeload.github.com:443",
        "objects.githubusercontent.com:443",
        "raw.githubusercontent.com:443",
        "gitlab.com:443",
        "bitbucket.org:443",
    ),
}
RUNTIME_PRESETS: Dict[str, Tuple[str, ...]] = {
    "claude": ("anthropic",),
    "codex": ("openai",),
    "gemini": ("google-ai",),
    "amp": ("amp",),
    "opencode": ("anthropic", "openai"),
}
DEFAULT_PRESETS = ("registries", "code-hosts")  # every allowlist session, besides its model API


@dataclass(frozen=True)
class Pattern:
    """A parsed destination pattern. `kind`: exact | one (`*.`) | any (`**.`) | ip."""

    kind: str
    host: str  # the name (without the wildcard prefix) or the normalised IP
    port: Optional[int]

    def __str__(self) -> str:
        prefix = {"one": "*.", "any": "**."}.get(self.kind, "")
        host = "[%s]" % self.host if ":" in self.host else self.host
        return "%s%s%s" % (prefix, host, "" if self.port is None else ":%d" % self.port)

    def matches(self, host: str, port: int) -> bool:
        if self.port is not None and port != self.port:
            return False
        if self.kind in ("exact", "ip"):
            return host == self.host
        if not host.endswith("." + self.host):
            return False
        extra = host[: -len(self.host) - 1]
        return "." not in extra if self.kind == "one" else bool(extra)


@dataclass(frozen=True)
class Rule:
    action: str  # allow | deny
    pattern: Pattern
    source: str  # where it comes from: "preset registries", "--allow", "inventory ...:12"

    def __str__(self) -> str:
        return "%s %s (%s)" % (self.action, self.pattern, self.source)

    def to_wire(self) -> Dict[str, str]:
        return {"action": self.action, "pattern": str(self.pattern), "source": self.source}

    @classmethod
    def from_wire(cls, data: object, field: str = "egress.rules[]") -> "Rule":
        if not isinstance(data, dict) or set(data) != {"action", "pattern", "source"}:
            raise SpecError(field, "must be an object with action, pattern and source")
        action, pattern, source = data["action"], data["pattern"], data["source"]
        if action not in ("allow", "deny"):
            raise SpecError(field + ".action", "must be allow or deny")
        if not isinstance(source, str) or not source or len(source) > 1200:
            raise SpecError(field + ".source", "must be a string of 1 to 1200 characters")
        if any(ord(c) < 32 or ord(c) == 127 for c in source):
            raise SpecError(field + ".source", "must not hold control characters")
        return cls(action, parse_pattern(pattern, field + ".pattern"), source)


@dataclass(frozen=True)
class Decision:
    allowed: bool
    rule: str  # the rule that decided, as text; or why nothing allowed it

    def to_wire(self) -> Dict[str, object]:
        return {"allowed": self.allowed, "rule": self.rule}


DEFAULT_DENY = "no rule allows it (deny by default)"


def parse_pattern(text: object, field: str = "pattern") -> Pattern:
    """A pattern from its text; SpecError naming `field` when it is not one."""
    if not isinstance(text, str) or not text or len(text) > MAX_PATTERN:
        raise SpecError(field, "must be a host pattern of 1 to %d characters" % MAX_PATTERN)
    value = text.strip().lower()
    port: Optional[int] = None
    if value.startswith("["):  # [v6] or [v6]:port
        end = value.find("]")
        if end < 0:
            raise SpecError(field, "%r: an IPv6 address ends with ']'" % text)
        host, rest = value[1:end], value[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise SpecError(field, "%r: expected ':PORT' after ']'" % text)
            port = _port(rest[1:], text, field)
        return Pattern("ip", _ip(host, text, field), port)
    if value.count(":") == 1:
        value, port_text = value.split(":")
        port = _port(port_text, text, field)
    elif ":" in value:
        raise SpecError(field, "%r: write an IPv6 address in brackets, e.g. [::1]:443" % text)
    kind = "exact"
    if value.startswith("**."):
        kind, value = "any", value[3:]
    elif value.startswith("*."):
        kind, value = "one", value[2:]
    if _is_ip(value):
        if kind != "exact":
            raise SpecError(field, "%r: an IP address takes no wildcard" % text)
        return Pattern("ip", str(ipaddress.ip_address(value)), port)
    value = check_host_name(value, field, shown=text)  # a trailing dot dropped, as hosts are
    if kind != "exact" and "." not in value:
        raise SpecError(field, "%r: a wildcard needs a domain with a dot under it" % text)
    return Pattern(kind, value, port)


def check_host_name(value: str, field: str, shown: Optional[str] = None) -> str:
    """A DNS name: dot-separated labels of a-z, 0-9 and '-'; no wildcard, no empty label."""
    shown = value if shown is None else shown
    name = value[:-1] if value.endswith(".") else value
    if not name or len(name) > 253 or not all(_LABEL.match(label) for label in name.split(".")):
        raise SpecError(
            field,
            "%r is not a host name (labels of a-z, 0-9 and '-', e.g. api.example.com; "
            "wildcards only as a leading '*.' or '**.')" % shown,
        )
    return name


def _port(text: str, shown: str, field: str) -> int:
    if not _PORT.match(text) or not 1 <= int(text) <= 65535:
        raise SpecError(field, "%r: the port must be a number from 1 to 65535" % shown)
    return int(text)


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _ip(value: str, shown: str, field: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise SpecError(field, "%r is not an IP address" % shown) from None


def normalise_host(host: str) -> str:
    """The form rules are matched against: lowercase, no trailing dot, IPs normalised."""
    value = host.strip().lower()
    if value.startswith("[") and value.endswith("]"):
        value = value[1:-1]
    if _is_ip(value):
        return str(ipaddress.ip_address(value))
    return value[:-1] if value.endswith(".") else value


def decide(host: str, port: int, rules: Iterable[Rule]) -> Decision:
    """Deny wins; then the first allow that matches, one that names the port before any that
    does not (the proxy opens a CONNECT off port 443 only through a rule naming its port: see
    rule_port); else denied by default."""
    name = normalise_host(host)
    allowed: Optional[Rule] = None
    for rule in rules:
        if not rule.pattern.matches(name, port):
            continue
        if rule.action == "deny":
            return Decision(False, str(rule))
        if allowed is None or (allowed.pattern.port is None and rule.pattern.port is not None):
            allowed = rule
    if allowed is not None:
        return Decision(True, str(allowed))
    return Decision(False, DEFAULT_DENY)


def rule_port(text: str) -> Optional[int]:
    """The port the pattern of a rule names, from the rule's text as decide() reports it
    (`str(Rule)`: `allow PATTERN (SOURCE)`); None when the pattern names none, or when `text` is
    not a rule's text (the default deny, a proxy's own reason)."""
    action, _, rest = text.partition(" ")
    pattern, _, source = rest.partition(" ")
    if action not in ("allow", "deny") or not (source.startswith("(") and source.endswith(")")):
        return None
    try:
        return parse_pattern(pattern).port
    except SpecError:
        return None


def preset_rules(names: Iterable[str]) -> List[Rule]:
    rules = []
    for name in names:
        if name not in PRESETS:
            raise SpecError("preset", "unknown preset %r (known: %s)" % (name, ", ".join(PRESETS)))
        rules += [Rule("allow", parse_pattern(p), "preset " + name) for p in PRESETS[name]]
    return rules


def rules_from_wire(data: object, field: str = "egress.rules") -> Tuple[Rule, ...]:
    if not isinstance(data, list) or len(data) > MAX_RULES:
        raise SpecError(field, "must be a list of at most %d rules" % MAX_RULES)
    return tuple(Rule.from_wire(item, "%s[%d]" % (field, i)) for i, item in enumerate(data))
