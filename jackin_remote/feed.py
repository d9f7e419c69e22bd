"""The fleet's sessions kept fresh in the local store, for `ls --watch` and the console.

Over held connections (one `Pool`): the first round asks every host (`session.list`, as `ls`
does). Then each host whose agent is resident pushes its sessions whenever they change
(`session.watch`): nothing is sent to it again, and a round returns as soon as a push arrives.
A host that cannot push (an agent of its own per command, an older agent, a broken channel)
is asked once every `interval`, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from typing import Any

from jackin_remote.errors import HostError
from jackin_remote.fleet import HostLink, HostResult, Pool
from jackin_remote.inventory.model import Host
from jackin_remote.store import Store


class Feed:
    def __init__(self, pool: Pool, hosts: Sequence[Host], store: Store) -> None:
        self.pool = pool
        self.hosts = list(hosts)
        self.store = store
        self._pushed: dict[str, Any] = {}  # host -> its newest pushed answer, not merged yet
        self._arrived = asyncio.Event()
        self._watches: dict[str, asyncio.Task[None]] = {}
        self._results: dict[str, HostResult[Any]] = {}
        self._asked_at = 0.0
        self.pushes = 0  # pushed answers merged (tests and benchmarks read it)

    @property
    def pushing(self) -> set[str]:
        """The hosts whose sessions arrive pushed right now."""
        return {name for name, task in self._watches.items() if not task.done()}

    async def round(self, interval: float) -> list[HostResult[Any]]:
        """Fresh sessions in the store: at once the first time; then as soon as a host pushes
        a change, or after `interval` (asking the hosts that do not push). One result per host."""
        from jackin_remote.sessions import refresh

        if self._asked_at:
            wait = max(0.0, self._asked_at + interval - time.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), wait)
        self._arrived.clear()
        self._merge_pushed()
        now = time.monotonic()
        if now >= self._asked_at + interval:
            self._asked_at = now  # before asking: an ask_now() meanwhile still counts
            asked = [host for host in self.hosts if host.name not in self.pushing]
            for result in await refresh(self.pool, asked, self.store) if asked else []:
                self._results[result.host.name] = result
                if result.ok and self.pool.is_resident(result.host):
                    self._watch(result.host)
        return [self._results[host.name] for host in self.hosts if host.name in self._results]

    def _merge_pushed(self) -> None:
        from jackin_remote.sessions import checked_records

        pushed, self._pushed = self._pushed, {}
        for name, answer in pushed.items():
            host = next(host for host in self.hosts if host.name == name)
            try:
                records = checked_records(name, answer.get("sessions"))
            except HostError as exc:
                self._stop(name)  # asked next round, where the same answer fails it, named
                self._results[name] = HostResult(host, exc.state, error=exc)
                continue
            self.store.merge_host(name, records)
            self._results[name] = HostResult(host, self._results[name].state)
            self.pushes += 1

    def _watch(self, host: Host) -> None:
        if host.name in self.pushing:
            return

        def on_event(method: str, params: dict[str, Any]) -> None:
            if method == "session.list" and isinstance(params, dict):
                self._pushed[host.name] = params
                self._arrived.set()

        async def run(link: HostLink) -> None:
            with contextlib.suppress(Exception):  # whatever ended it, the host is asked again
                await link.agent.call("session.watch", {}, on_event=on_event)
            self._arrived.set()  # ended (host gone, agent restarted): ask it next round

        async def start() -> None:
            await run(await self.pool.agent(host))

        self._watches[host.name] = asyncio.ensure_future(start())

    def _stop(self, name: str) -> None:
        task = self._watches.pop(name, None)
        if task is not None:
            task.cancel()

    def ask_now(self) -> None:
        """End the current round's wait and ask every host that does not push (after an action
        that changed something: its effect is shown at once)."""
        self._asked_at = min(self._asked_at, 1e-9)
        self._arrived.set()

    async def close(self) -> None:
        for name in list(self._watches):
            self._stop(name)
