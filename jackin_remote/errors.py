"""The one error tree of jackin-remote.

Third-party exceptions (asyncssh, docker, tomlkit, OSError...) are mapped to these at the edge,
so callers and the CLI handle only our own types:

    JackinError                 anything we raise on purpose; message + hint for a person
    ├── LocatedError            a bad file we read: file, line, field
    │   └── InventoryError      (the role manifest's RoleError is one too)
    ├── UsageError              bad command-line input (names, selectors, flags)
    ├── HostError               one host failed; carries its HostState
    │   └── HostKeyError        host key unknown (host_key_unknown) or changed
    │                           (host_key_mismatch): never connect on these
    ├── AgentCallError          the host agent answered a request with an error (its code,
    │                           mapped once, in agent/client.py)
    ├── AgentProtocolError      the host agent answered something we cannot use
    └── StateError              local store / session bookkeeping problems
"""

from __future__ import annotations

from jackin_remote.core.hoststate import HostState


class JackinError(Exception):
    """Base error: `message` says what went wrong, `hint` what to do about it."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class UsageError(JackinError):
    exit_code = 2


class AgentCallError(JackinError):
    """An error reply from a host agent: `code` is one of agent_host.protocol's error codes,
    `reason` the agent's message, `hint` the agent's hint if it gave one."""

    def __init__(self, host: str | None, code: str, reason: str, data: object = None) -> None:
        hint = data.get("hint") if isinstance(data, dict) else None
        super().__init__(
            f"{host}: {reason}" if host else reason, hint=hint if isinstance(hint, str) else None
        )
        self.host = host
        self.code = code
        self.reason = reason
        self.data = data


class LocatedError(JackinError):
    """A problem in a file we read, located as precisely as we can: file:line, field."""

    exit_code = 2
    unnamed_file: str | None = None  # what to call the file when none is known

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        field: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.file = file
        self.line = line
        self.field = field
        self.reason = message
        where = file or self.unnamed_file
        prefix = ""
        if where is not None:
            prefix = f"{where}:{line}: " if line is not None else f"{where}: "
        if field:
            prefix += f"{field}: "
        super().__init__(prefix + message, hint=hint)


class InventoryError(LocatedError):
    unnamed_file = "<inventory>"


class HostError(JackinError):
    """A failure on one host. `state` is what `hosts check` and the fleet view report."""

    def __init__(
        self,
        host: str,
        state: HostState,
        message: str,
        *,
        hint: str | None = None,
        transient: bool = False,
    ) -> None:
        super().__init__(f"{host}: {message}", hint=hint)
        self.host = host
        self.state = state
        self.reason = message
        # A dropped handshake (sshd MaxStartups, a reset) that is worth one more try.
        self.transient = transient


class HostKeyError(HostError):
    def __init__(
        self,
        host: str,
        message: str,
        *,
        fingerprint: str | None,
        changed: bool,
        hint: str | None = None,
    ) -> None:
        state = HostState.HOST_KEY_MISMATCH if changed else HostState.HOST_KEY_UNKNOWN
        super().__init__(host, state, message, hint=hint)
        self.fingerprint = fingerprint
        self.changed = changed


class AgentProtocolError(JackinError):
    pass


class StateError(JackinError):
    pass
