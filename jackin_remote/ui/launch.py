"""What `launch` prints: one contract per batch, a progress line per host, and what comes next.

`--count N` used to print N near-identical contracts and every raw line of the image builds,
interleaved. A batch shares one contract: it is shown once, followed by what differs per session
(`batch_differences`, pure). Build output is kept per host (printed with --verbose, or when that
host failed) and folded into its progress line. Every value is external text (ui/safe.py).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from jackin_remote.sync import SyncProgress
from jackin_remote.ui.contract import contract_panel
from jackin_remote.ui.safe import line, text

PROGRAM = "jackin-remote"
# tmux's default prefix; inside the operator's own tmux the first Ctrl-b goes to the outer one.
DETACH = "Ctrl-b d (inside your own tmux: Ctrl-b Ctrl-b d)"


# -- one contract per batch --------------------------------------------------------------------


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    if isinstance(value, list):
        flat = {}
        for index, item in enumerate(value):
            flat.update(_flatten(item, f"{prefix}[{index}]"))
        return flat
    return {prefix: value}


def _generic(value: Any, contract: Mapping[str, Any], root: str | None) -> str:
    """`value` with this contract's own session id, container, host and host root replaced by
    placeholders: what is left differs between two sessions for another reason."""
    identity = contract["identity"]
    shown = str(value)
    for own, placeholder in (
        (identity["container"], "<container>"),
        (identity["session"], "<id>"),
        (root, "<root>"),
    ):
        if own:
            shown = shown.replace(str(own), placeholder)
    host = re.escape(str(identity["host"]))
    return re.sub(rf"(?<![\w.-]){host}(?![\w.-])", "<host>", shown)


def batch_differences(
    contracts: Sequence[Mapping[str, Any]], roots: Mapping[str, str] | None = None
) -> list[list[tuple[str, Any]]]:
    """For each contract of a batch, the fields whose value differs from the first contract's
    for a reason other than its own session id, container, host or host root (`roots`: host
    name -> its root), as (field, value) pairs. The first contract's list is empty."""
    roots = roots or {}
    first = contracts[0] if contracts else {}
    first_flat = _flatten(first)
    result: list[list[tuple[str, Any]]] = []
    for contract in contracts:
        flat = _flatten(contract)
        differs = []
        for key in [*first_flat, *(k for k in flat if k not in first_flat)]:
            mine, theirs = flat.get(key), first_flat.get(key)
            if mine == theirs or key.startswith("spec."):  # the spec mirrors the sections
                continue
            own_root = roots.get(str(contract["identity"]["host"]))
            first_root = roots.get(str(first["identity"]["host"]))
            if _generic(mine, contract, own_root) == _generic(theirs, first, first_root):
                continue
            differs.append((key, mine))
        result.append(differs)
    return result


def _checkout(contract: Mapping[str, Any]) -> str:
    mounts = contract.get("filesystem", {}).get("mounts") or []
    return str(mounts[0].get("host") or "-") if mounts else "-"


def batch_view(
    contracts: Sequence[Mapping[str, Any]], roots: Mapping[str, str] | None = None
) -> RenderableType:
    """The first contract in full, then one row per session of the batch: its id, host and
    checkout, and anything else that differs from the contract shown."""
    if len(contracts) == 1:
        return contract_panel(dict(contracts[0]))
    differences = batch_differences(contracts, roots)
    first = contracts[0]["identity"]["session"]
    table = Table(box=None, pad_edge=False, show_edge=False, title_justify="left")
    for column in ("session", "host", "checkout on the host", "differs from the contract above"):
        table.add_column(column, overflow="fold")
    for contract, differs in zip(contracts, differences, strict=True):
        identity = contract["identity"]
        notes = "; ".join(f"{key} = {value}" for key, value in differs)
        table.add_row(
            text(identity["session"]), text(identity["host"]), text(_checkout(contract)),
            text(notes or ("(shown above)" if identity["session"] == first
                           else "only its id, host and paths")),
        )  # fmt: skip
    header = line((f"this batch: {len(contracts)} sessions", "bold"),
                  f", one contract (shown for {first}); --full-contract shows each one",
                  multiline=False)  # fmt: skip
    return Group(contract_panel(dict(contracts[0])), header, table)


# -- what comes next ---------------------------------------------------------------------------

_SHOWN_IN_FULL = 3


def next_steps(results: Sequence[Mapping[str, Any]], mode: str) -> RenderableType | None:
    """The commands to run next for the sessions that were made: attach (interactive), logs -f,
    pull. With more than a few sessions, the first one's and the others' ids."""
    made = [r for r in results if not r.get("error")]
    if not made:
        return None
    shown = made if len(made) <= _SHOWN_IN_FULL else made[:1]
    steps: list[tuple[str, str]] = []
    if mode == "interactive":
        steps.append(("attach", f"attach this terminal to its agent; detach: {DETACH}"))
    steps.append(("logs -f", "follow its output" if mode == "task" else "see its screen"))
    steps.append(("pull", "bring its work back (branch jackin/<id>)"))
    table = Table.grid(padding=(0, 3))
    table.add_column(no_wrap=True)
    table.add_column()
    for command, why in steps:
        for index, entry in enumerate(shown):
            table.add_row(
                text(f"  {PROGRAM} {command} {entry['id']}"),
                text(why.replace("<id>", str(entry["id"])) if index == 0 else "", style="dim"),
            )
    parts: list[RenderableType] = [Text("next steps:", style="bold"), table]
    if len(made) > len(shown):
        others = ", ".join(str(r["id"]) for r in made[1:])
        parts.append(line(("  likewise for ", "dim"), (others, "dim")))
    return Group(*parts)


# -- a progress line per host ------------------------------------------------------------------


class LaunchProgress:
    """The launch's step callback, build-output callback and sync progress callback.

    On a terminal: one live line per host, showing its current step (the latest build line,
    the sync percentage). Otherwise: the steps as lines, and one line per build. Build output is
    kept per host, printed as it comes with `verbose`, and available for a failed host.
    """

    def __init__(self, console: Console, *, verbose: bool = False, live: bool | None = None):
        self.console = console
        self.verbose = verbose
        self.live = console.is_terminal if live is None else live
        self.current: dict[str, str] = {}
        self.logs: dict[str, list[str]] = {}
        self._building: set[str] = set()
        self._display: Live | None = None

    def _render(self) -> RenderableType:
        return Group(*(line((f"{host}:", "bold"), " ", message, multiline=False)
                       for host, message in self.current.items()))  # fmt: skip

    def _show(self, host: str, message: str) -> None:
        self.current[host] = message
        if self._display is not None:
            self._display.update(self._render())
        elif not self.live:
            self.console.print(line((f"{host}:", "dim"), " ", message))

    def _end_build(self, host: str) -> None:
        if host in self._building:
            self._building.discard(host)
            count = len(self.logs.get(host, []))
            if not self.verbose:
                self._show(host, f"role image built ({count} lines of build output; "
                                 "--verbose shows them)")  # fmt: skip

    def step(self, host: str, message: str) -> None:
        self._end_build(host)
        self._show(host, message.rstrip())

    def build(self, host: str, output: str) -> None:
        output = output.rstrip()
        self.logs.setdefault(host, []).append(output)
        if self.verbose:
            if self._display is not None:
                self._display.console.print(line((f"{host}:", "dim"), " ", output))
            else:
                self.console.print(line((f"{host}:", "dim"), " ", output))
            return
        self._building.add(host)
        if self.live:
            self._show(host, f"building the role image: {output}")

    def __call__(self, event: SyncProgress) -> None:
        """Sync progress (only big syncs report it): the percentage on the host's line."""
        if self.live and event.phase == "progress" and event.fraction is not None:
            self._show(event.host, f"syncing the workspace: {event.fraction * 100:.0f}%")

    def failed_build_log(self, host: str) -> RenderableType | None:
        """A failed host's build output, whole, unless it was already printed (--verbose)."""
        lines = self.logs.get(host)
        if not lines or self.verbose:
            return None
        return Group(line((f"{host}: build output ({len(lines)} lines):", "bold")),
                     *(line("  ", output, multiline=False) for output in lines))  # fmt: skip

    def __enter__(self) -> LaunchProgress:
        if self.live:
            self._display = Live(self._render(), console=self.console, transient=False,
                                 refresh_per_second=8)  # fmt: skip
            self._display.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for host in list(self._building):
            self._end_build(host)
        if self._display is not None:
            self._display.update(self._render())
            self._display.stop()
            self._display = None
