"""External text made safe for a terminal: the one place that decides what may reach it raw.

Anything a host, an agent, a role build, a workspace or git says is external: it may carry ESC/CSI
sequences, OSC 52 (clipboard) and OSC 0 (title), `\\r` overwrites, BEL, backspace, C1 controls,
bidi overrides, and square brackets that rich would read as markup. So:

- `visible()` turns every control or format character into a visible escape (`\\x1b`, `\\u202e`);
- `text()` / `line()` build rich `Text` objects (never markup strings) from external pieces;
- `SafeConsole` is the CLI's console: markup and emoji off, and any plain string it is handed is
  made visible first, so a string that slips through is shown literally, never interpreted.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

from rich.console import Console, HighlighterType, JustifyMethod, OverflowMethod
from rich.style import Style
from rich.text import Text

# Format characters that are harmless and needed to draw real text (emoji sequences, Persian).
_JOINERS = {"\u200c", "\u200d"}
_UNSAFE_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Zl", "Zp"}
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# Candidates only: printable ASCII never needs a look-up; anything else is checked by category.
_CANDIDATE = re.compile(r"[^\x20-\x7e]")
_CANDIDATE_KEEP_LINES = re.compile(r"[^\x20-\x7e\n\t]")


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if unicodedata.category(char) not in _UNSAFE_CATEGORIES or char in _JOINERS:
        return char
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def visible(value: object, *, multiline: bool = True) -> str:
    """`value` as text whose control and format characters are shown, not obeyed.

    `multiline` keeps newlines and tabs (logs, diffs, error messages); a `\\r` right before a
    newline is dropped (a terminal's line ending, not an overwrite). Single-line fields (a cell, a
    name) show `\\n` too, so a host cannot forge extra rows.
    """
    text = str(value)
    if not multiline:
        return _CANDIDATE.sub(_escape, text)
    return _CANDIDATE_KEEP_LINES.sub(_escape, text.replace("\r\n", "\n"))


def text(value: object, style: str | Style = "", *, multiline: bool = False) -> Text:
    """A rich Text of external `value`, shown literally (no markup, no control characters)."""
    return Text(visible(value, multiline=multiline), style=style)


def line(*pieces: Any, multiline: bool = True) -> Text:
    """One line of output from pieces: plain values are external text made visible, `(value,
    style)` pairs the same with a style, `Text` objects are taken as already safe."""
    result = Text()
    for piece in pieces:
        if isinstance(piece, Text):
            result.append_text(piece)
        elif isinstance(piece, tuple):
            value, style = piece
            result.append(visible(value, multiline=multiline), style=style)
        else:
            result.append(visible(piece, multiline=multiline))
    return result


class SafeConsole(Console):
    """A Console whose plain strings are shown literally: markup, emoji and highlighting are off,
    and control characters are made visible. Renderables built from `Text` are left as they are."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.update(markup=False, emoji=False, highlight=False)
        super().__init__(**kwargs)

    def render_str(
        self,
        text: str,
        *,
        style: str | Style = "",
        justify: JustifyMethod | None = None,
        overflow: OverflowMethod | None = None,
        emoji: bool | None = None,
        markup: bool | None = None,
        highlight: bool | None = None,
        highlighter: HighlighterType | None = None,
    ) -> Text:
        return super().render_str(
            visible(text), style=style, justify=justify, overflow=overflow,
            emoji=False, markup=False, highlight=False, highlighter=highlighter,
        )  # fmt: skip
