"""Who a linked host is: the host key our connection verified plus the ids its agent reports
(agent_host/wire.HostIdentity), for core/aliases.py to tell one machine under two names."""

from __future__ import annotations

from jackin_remote.core.aliases import Identity
from jackin_remote.core.hoststate import HostState
from jackin_remote.errors import HostError
from jackin_remote.fleet import HostLink


def verified_host_key(link: HostLink) -> str | None:
    """ "ssh-ed25519 SHA256:..." of the key asyncssh verified (this command's connection, or the
    laptop daemon's); None for the local host."""
    return link.transport.verified_key()


async def host_identity(link: HostLink) -> Identity:
    """Needs the agent started (Pool.agent). The host's answer is parsed: it is not trusted."""
    from agent_host.wire import HostIdentity, SpecError

    try:
        said = HostIdentity.from_wire(await link.agent.call("identity"))
    except SpecError as exc:
        raise HostError(
            link.host.name, HostState.AGENT_ERROR,
            f"the host sent an invalid identity ({exc.message})",
            hint="the host agent is damaged or not ours; run `jackin-remote hosts check` on it",
        ) from None  # fmt: skip
    return Identity(link.host.name, verified_host_key(link), said.machine_id, said.root_id,
                    link.host.root)  # fmt: skip
