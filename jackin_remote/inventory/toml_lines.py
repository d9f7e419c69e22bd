"""Where things are in TOML source text: lines for file:line errors and for line-preserving edits.

tomlkit keeps comments and order but not line numbers, so we scan the text ourselves. The scanner
runs only on text tomlkit has already accepted and is best effort: a wrong guess costs a less
precise line number (or a refused edit, after validation), never a wrong inventory.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

KeyPath = tuple[str, ...]

_BARE = r"[A-Za-z0-9_-]+"
_BASIC = r'"(?:[^"\\\n]|\\.)*"'
_LITERAL = r"'[^'\n]*'"
_KEY = rf"(?:{_BARE}|{_BASIC}|{_LITERAL})"
_KEY_PATH = rf"{_KEY}(?:[ \t]*\.[ \t]*{_KEY})*"
_KEY_TOKEN_RE = re.compile(_KEY)
_HEADER_RE = re.compile(rf"^[ \t]*(\[\[?)[ \t]*({_KEY_PATH})[ \t]*\]")
_KEY_LINE_RE = re.compile(rf"^[ \t]*({_KEY_PATH})[ \t]*=(.*)$")
_MULTILINE_DELIMITERS = ('"""', "'''")


@dataclass(frozen=True)
class Header:
    """A `[table]` or `[[array]]` header. `index` is 0-based into the text's lines."""

    path: KeyPath
    index: int
    is_array: bool

    @property
    def line(self) -> int:
        return self.index + 1


@dataclass(frozen=True)
class SourceIndex:
    headers: tuple[Header, ...]
    exact: dict[KeyPath, int]  # 1-based line where a table or key is written
    implied: dict[KeyPath, int]  # first line that implies a parent table (dotted header or key)
    redeclared: dict[KeyPath, int]  # a table or key written a second time (outside [[arrays]])

    def line_of(self, path: KeyPath) -> int | None:
        """Line of `path`, or of its nearest written ancestor (an inline table's key line)."""
        for end in range(len(path), 0, -1):
            prefix = path[:end]
            if prefix in self.exact:
                return self.exact[prefix]
            if prefix in self.implied:
                return self.implied[prefix]
        return None


def split_lines(text: str) -> list[str]:
    """TOML lines end in LF or CRLF only (str.splitlines would also split on \\f, \\x1c, ...)."""
    return [line.removesuffix("\r") for line in text.split("\n")]


def index_source(text: str) -> SourceIndex:
    headers: list[Header] = []
    exact: dict[KeyPath, int] = {}
    implied: dict[KeyPath, int] = {}
    redeclared: dict[KeyPath, int] = {}
    arrays: set[KeyPath] = set()  # [[x]] repeats x and its keys legitimately
    table: KeyPath = ()
    open_string: str | None = None  # the delimiter of a multi-line string we are inside

    for index, line in enumerate(split_lines(text)):
        if open_string is not None:
            if line.count(open_string) % 2 == 1:
                open_string = None
            continue
        header = _parse_header(line, index)
        if header is not None:
            headers.append(header)
            table = header.path
            if header.is_array:
                arrays.add(header.path)
            path, line_number = header.path, header.line
        else:
            key_line = _KEY_LINE_RE.match(line)
            if key_line is None:
                continue
            path, line_number = table + parse_key_path(key_line.group(1)), index + 1
            open_string = _opens_multiline_string(key_line.group(2))
        if path in exact and not _under_array(path, arrays):
            redeclared.setdefault(path, line_number)
        _record(path, line_number, exact, implied)

    return SourceIndex(headers=tuple(headers), exact=exact, implied=implied, redeclared=redeclared)


def _under_array(path: KeyPath, arrays: set[KeyPath]) -> bool:
    return any(path[:end] in arrays for end in range(1, len(path) + 1))


def parse_key_path(text: str) -> KeyPath:
    return tuple(_unquote(token) for token in _KEY_TOKEN_RE.findall(text))


def _parse_header(line: str, index: int) -> Header | None:
    match = _HEADER_RE.match(line)
    if match is None:
        return None
    return Header(path=parse_key_path(match.group(2)), index=index, is_array=match.group(1) == "[[")


def _record(
    path: KeyPath, line: int, exact: dict[KeyPath, int], implied: dict[KeyPath, int]
) -> None:
    exact.setdefault(path, line)
    for end in range(1, len(path)):
        implied.setdefault(path[:end], line)


def _opens_multiline_string(value: str) -> str | None:
    for delimiter in _MULTILINE_DELIMITERS:
        if value.count(delimiter) % 2 == 1:
            return delimiter
    return None


def _unquote(token: str) -> str:
    if token.startswith("'"):
        return token[1:-1]
    if token.startswith('"'):
        try:
            decoded = json.loads(token)
        except ValueError:  # TOML-only escapes (\U0001F600, \e): the raw text is close enough
            return token[1:-1]
        return decoded if isinstance(decoded, str) else token[1:-1]
    return token


# ---- blocks: the lines that make up a table, for removing or inserting next to it ----------


def _is_comment(line: str) -> bool:
    return line.lstrip().startswith("#")


def _leading_comment_start(lines: Sequence[str], index: int) -> int:
    """A comment block written directly above a header (no blank line between) belongs to it."""
    start = index
    while start > 0 and _is_comment(lines[start - 1]):
        start -= 1
    return start


def table_block(lines: Sequence[str], headers: Sequence[Header], position: int) -> range:
    """Line range of headers[position]: its leading comments, header and body, up to (not
    including) the next header's own leading comments."""
    header = headers[position]
    start = _leading_comment_start(lines, header.index)
    if position + 1 < len(headers):
        end = _leading_comment_start(lines, headers[position + 1].index)
    else:
        end = len(lines)
    return range(start, max(end, header.index + 1))


def blocks_under(lines: Sequence[str], headers: Sequence[Header], prefix: KeyPath) -> list[range]:
    """Blocks of every header at or below `prefix` (e.g. [hosts.web] and [hosts.web.limits])."""
    return [
        table_block(lines, headers, position)
        for position, header in enumerate(headers)
        if header.path[: len(prefix)] == prefix
    ]
