"""Tables that fit the terminal: columns are dropped or folded by priority, never truncated.

A table's key cells (a session id, a host, a state) are what a person reads a table for: cutting
them (`bui…`) makes the table useless. So each column says how important it is and whether its
words must stay whole; `fit_columns` (pure) chooses which columns a width can hold and how wide
each is, and `FittedTable` applies that choice at the width the console actually has.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from rich.console import Console, ConsoleOptions, RenderResult
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

# A heavy-box rich table spends, per column, one space of padding each side plus one border,
# and one more border at the right edge.
COLUMN_OVERHEAD = 3
TABLE_OVERHEAD = 1
# A foldable column is never made narrower than this (or its header), so it stays readable.
FOLD_FLOOR = 8


@dataclass(frozen=True)
class ColumnSpec:
    name: str
    priority: int = 0  # 0: always shown; the highest number is dropped first
    whole: bool = False  # its key (a cell's first word) is never cut: ids, hosts, states


@dataclass(frozen=True)
class ColumnSize:
    """What a column's cells need: `natural` on one line each, `words` without cutting a word
    (folding at spaces only), `minimum` the narrowest allowed: `words` for a whole column, a
    readable floor for a foldable one."""

    name: str
    minimum: int
    natural: int
    words: int = 0


def _total(widths: Iterable[int]) -> int:
    widths = list(widths)
    return sum(widths) + COLUMN_OVERHEAD * len(widths) + TABLE_OVERHEAD


def fit_columns(
    specs: Sequence[ColumnSpec], sizes: Mapping[str, ColumnSize], width: int
) -> list[tuple[str, int]]:
    """The columns to show at `width`, in table order, each with its width.

    Columns are dropped (highest priority number first, the rightmost on a tie) until what is
    left fits at its minimum; then the widest columns are narrowed, first only as far as
    folding at spaces allows, then towards their minimum (cutting words of foldable columns).
    Priority-0 columns are never dropped: when even they do not fit, they keep their minimum
    and the terminal wraps the line, which still cuts nothing.
    """
    kept = list(specs)
    droppable = sorted(
        (s for s in specs if s.priority > 0),
        key=lambda s: (s.priority, specs.index(s)),
    )
    while droppable and _total(sizes[s.name].minimum for s in kept) > width:
        kept.remove(droppable.pop())
    widths = {s.name: sizes[s.name].natural for s in kept}
    excess = _total(widths.values()) - width
    # First fold at spaces only, then cut the words of foldable columns down to their floor.
    for floors in (
        {s.name: max(sizes[s.name].minimum, sizes[s.name].words) for s in kept},
        {s.name: sizes[s.name].minimum for s in kept},
    ):
        while excess > 0:
            shrinkable = [s.name for s in kept if widths[s.name] > floors[s.name]]
            if not shrinkable:
                break
            widest = max(shrinkable, key=lambda name: widths[name])
            widths[widest] -= 1
            excess -= 1
    return [(s.name, widths[s.name]) for s in kept]


def natural_columns(
    specs: Sequence[ColumnSpec], sizes: Mapping[str, ColumnSize]
) -> list[tuple[str, int]]:
    """Every column at its natural width (`--wide`)."""
    return [(s.name, sizes[s.name].natural) for s in specs]


def _first_word(cell: Text) -> int:
    """The width of a cell's key: its first word (the id of "abcd2345 (name)", the state of
    "lost (was running; ...)"). What follows it may fold."""
    words = cell.plain.split()
    return Text(words[0]).cell_len if words else 0


class FittedTable:
    """A rich renderable: a table of `Text` rows whose columns are chosen by `fit_columns` at
    the console's width (or all of them, unfolded, when `wide`). A line under the table names
    the columns left out, so a person knows `--wide` has more."""

    def __init__(
        self,
        title: str,
        specs: Sequence[ColumnSpec],
        rows: Sequence[Sequence[Text]],
        *,
        wide: bool = False,
    ) -> None:
        self.title = title
        self.specs = list(specs)
        self.rows = [list(row) for row in rows]
        self.wide = wide

    def sizes(self, console: Console, options: ConsoleOptions) -> dict[str, ColumnSize]:
        result = {}
        for index, spec in enumerate(self.specs):
            header = Text(spec.name).cell_len
            natural, longest_word, key = header, header, header
            for row in self.rows:
                measured = Measurement.get(console, options, row[index])
                natural = max(natural, measured.maximum)
                longest_word = max(longest_word, measured.minimum)
                key = max(key, _first_word(row[index]))
            floor = key if spec.whole else max(header, min(FOLD_FLOOR, longest_word))
            result[spec.name] = ColumnSize(spec.name, min(floor, natural), natural, longest_word)
        return result

    def layout(self, console: Console, options: ConsoleOptions) -> list[tuple[str, int]]:
        sizes = self.sizes(console, options)
        if self.wide:
            return natural_columns(self.specs, sizes)
        return fit_columns(self.specs, sizes, options.max_width)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        columns = self.layout(console, options)
        positions = {spec.name: index for index, spec in enumerate(self.specs)}
        table = Table(title=self.title, title_justify="left")
        for name, width in columns:
            # A fixed width: rich never narrows it further (it would cut words with "…").
            table.add_column(name, width=width, no_wrap=self.wide, overflow="fold")
        for row in self.rows:
            table.add_row(*(row[positions[name]] for name, _ in columns))
        needed = _total(width for _, width in columns)
        yield from console.render(table, options.update(width=max(needed, 1)))
        shown = {name for name, _ in columns}
        left_out = [spec.name for spec in self.specs if spec.name not in shown]
        if left_out:
            yield Text(f"(not shown at this width: {', '.join(left_out)}; --wide shows them)",
                       style="dim")  # fmt: skip
