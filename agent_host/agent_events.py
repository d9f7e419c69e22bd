"""What a coding agent's output says: its status, the links it reports, the tokens it used.

A pure, incremental parser. The host feeds it an agent's output in whatever chunks it reads and
keeps `to_state()` between reads; nothing here touches a file, a process or the clock.

The jackin tag protocol: `<jackin:KIND>VALUE</jackin:KIND>` on one line, KIND in TAG_KINDS. A
link's VALUE must pass `valid_url`; a status must be in STATUSES; anything else is dropped. Tags
inside a fenced code block, an inline code span or a quoted line (`>`) are quoted material, not
the agent speaking, and are ignored. Where the text comes from depends on the runtime:
- claude (stream-json): assistant text blocks and the final `result` text, never tool results;
  status from the events (init/assistant/user: working, an AskUserQuestion tool use: blocked,
  result: done); usage from `result` events, plus assistant usage no result has covered yet.
- codex (exec --json, both the `turn.*`/`item.*` and the older `msg` generation): agent
  messages; status from turns/tasks; usage from turn.completed / token_count (no cost).
- gemini, opencode (JSON lines): strings named text/content/response/result at the top level or
  one level down, except in user, reasoning and thinking objects; status only from tags.
- anything else, and any line that is not a JSON object: plain text, tags only.
Each JSON text is its own markdown document (fences start closed); plain lines share one fence
state per stream. The last line counts once its newline arrives (feed "\\n" at the end).

The output is untrusted: no input makes this raise, and memory is bounded (MAX_PENDING, MAX_LINKS,
one fence bool, MAX_MSG_IDS message ids). Python 3.9 compatible, stdlib only (runs on hosts).
"""

from __future__ import annotations

import json
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

from agent_host.wire import (  # the wire checks links and counts again on the laptop
    LINK_KINDS,
    MAX_COST_USD,
    MAX_LINKS,
    MAX_TOKENS,
    USAGE_COUNTS,
    valid_url,
)

TAG_KINDS = ("pr", "issue", "repo", "link", "status")
STATUSES = ("working", "blocked", "done")
MAX_PENDING = 1 << 20  # an unterminated line longer than this is dropped, not buffered forever
JSON_RUNTIMES = ("claude", "codex", "gemini", "opencode")
USAGE_FIELDS = USAGE_COUNTS
MAX_COST = MAX_COST_USD  # a larger count or cost is not one: ignored (totals stop there)
MAX_MSG_IDS = 32  # claude message ids remembered to count each message's usage once
MAX_MSG_ID = 200  # a longer id is treated as no id
STATE_VERSION = 1

_TAG_RE = re.compile(r"<jackin:(pr|issue|repo|link|status)>([^<\n]*)</jackin:\1>")
_FENCE_RE = re.compile(r"[ \t]*(?:```|~~~)")
_BACKTICKS_RE = re.compile(r"`+")
_CLAUDE_USAGE = (
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
)
_CODEX_USAGE = ("input_tokens", "output_tokens", "cached_input_tokens", None)
_CODEX_MESSAGES = ("agent_message", "assistant_message")
_TEXT_KEYS = ("text", "content", "response", "result")
_NOT_AGENT_TEXT = ("user", "reasoning", "thinking")  # roles/types whose text is not a reply

Counts = List[int]  # one int per USAGE_FIELDS
Report = List[Optional[int]]  # a usage report: None where the field was absent or invalid


# -- pure decisions ----------------------------------------------------------------------------
def without_code_spans(line: str) -> str:
    """`line` with each inline code span replaced by a NUL (which no tag can hold). A span opens
    with a run of backticks and closes at the next run of the same length (CommonMark); a run
    that never closes is literal. Linear: the next equal run is found in one pass from the right.
    """
    runs = [m.span() for m in _BACKTICKS_RE.finditer(line)]
    following: List[Optional[int]] = [None] * len(runs)
    last: Dict[int, int] = {}
    for i in range(len(runs) - 1, -1, -1):
        length = runs[i][1] - runs[i][0]
        following[i] = last.get(length)
        last[length] = i
    out, pos, i = [], 0, 0
    while i < len(runs):
        close = following[i]
        if close is None:
            i += 1
            continue
        out.append(line[pos : runs[i][0]] + "\0")
        pos, i = runs[close][1], close + 1
    return "".join(out) + line[pos:]


def line_tags(line: str, fence: bool) -> Tuple[bool, List[Tuple[str, str]]]:
    """The fence state after `line` and the (kind, stripped value) tags it carries."""
    if _FENCE_RE.match(line):
        return not fence, []
    if fence or "<jackin:" not in line or line.lstrip().startswith(">"):
        return fence, []
    return fence, [(m[1], m[2].strip()) for m in _TAG_RE.finditer(without_code_spans(line))]


def read_usage(usage: Any, names: Tuple[Optional[str], ...]) -> Optional[Report]:
    """The valid counts of a usage object (`names[i]` is its key for USAGE_FIELDS[i]); None when
    it holds none. A count is a non-negative int up to MAX_TOKENS (not a bool, not a float)."""
    if not isinstance(usage, dict):
        return None
    report = [_count(usage.get(name)) if name else None for name in names]
    return report if any(n is not None for n in report) else None


def read_codex_usage(usage: Any) -> Optional[Report]:
    """codex's counts as claude's mean them: its `input_tokens` include the cached ones, which
    are counted as cache reads, so input is what was not cached."""
    report = read_usage(usage, _CODEX_USAGE)
    if report is not None and report[0] is not None and report[2] is not None:
        report[0] = max(report[0] - report[2], 0)
    return report


def _count(value: Any) -> Optional[int]:
    ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_TOKENS
    return value if ok else None


def read_cost(value: Any) -> Optional[float]:
    """A cost in USD: a finite number in [0, MAX_COST], not a bool."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if 0 <= value <= MAX_COST else None  # NaN fails the comparison


def json_object(line: str) -> Optional[Dict[str, Any]]:
    """The line as a JSON object, or None (not JSON, not an object, or nested too deep)."""
    text = line.strip()
    if not text.startswith("{"):
        return None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def agent_texts(event: Dict[str, Any]) -> List[str]:
    """gemini/opencode: strings named like a reply, at the top level or one level down."""
    found: List[str] = []
    for obj in [event] + [v for v in event.values() if isinstance(v, dict)]:
        if obj.get("role") in _NOT_AGENT_TEXT or obj.get("type") in _NOT_AGENT_TEXT:
            if obj is event:
                return []
            continue
        found.extend(v for k, v in obj.items() if k in _TEXT_KEYS and isinstance(v, str))
    return found


def _add(total: Counts, report: Sequence[Optional[int]]) -> None:
    for i, n in enumerate(report):
        total[i] = min(total[i] + (n or 0), MAX_TOKENS)


def _need(condition: bool) -> None:
    if not condition:
        raise ValueError("malformed state")


def _counts(value: Any) -> Counts:
    _need(isinstance(value, list) and len(value) == len(USAGE_FIELDS))
    _need(all(_count(n) is not None for n in value))
    return list(value)


# -- the incremental state ---------------------------------------------------------------------
class Parser:
    """Feeds of one agent's output stream; `observation()` is what they said so far."""

    def __init__(self, runtime: str, state: Optional[Dict[str, Any]] = None) -> None:
        self.runtime = runtime
        self._fresh()
        if state is not None:
            try:
                self._load(state)
            except (ValueError, TypeError, KeyError, AttributeError):
                self._fresh()  # hostile or from another version: start over

    def _fresh(self) -> None:
        self._pending: List[str] = []
        self._pending_len = 0
        self._skip = False  # inside a line longer than MAX_PENDING: dropped up to its newline
        self._fence = False
        self._status: Optional[str] = None
        self._links: Dict[str, List[str]] = {kind: [] for kind in LINK_KINDS}
        self._seen = False  # any usage reported
        self._total: Counts = [0] * len(USAGE_FIELDS)  # covered by results / turns / totals
        self._cost: Optional[float] = None
        self._open: Counts = [0] * len(USAGE_FIELDS)  # claude: assistant usage of forgotten ids
        self._msgs: List[List[Any]] = []  # claude: [id, Counts or None once a result covered it]

    def _load(self, s: Dict[str, Any]) -> None:
        _need(isinstance(s, dict) and s.get("v") == STATE_VERSION)
        _need(s["runtime"] == self.runtime and s["status"] in (None, *STATUSES))
        pending, flags = s["pending"], (s["skip"], s["fence"], s["seen"])
        _need(isinstance(pending, str) and len(pending) <= MAX_PENDING and "\n" not in pending)
        _need(all(isinstance(f, bool) for f in flags) and not (s["skip"] and pending))
        links = s["links"]
        _need(isinstance(links, dict) and sorted(links) == sorted(LINK_KINDS))
        for urls in links.values():
            _need(isinstance(urls, list) and len(urls) <= MAX_LINKS)
            _need(all(valid_url(u) for u in urls) and len(set(urls)) == len(urls))
        cost = s["cost"]
        _need(cost is None or (isinstance(cost, float) and read_cost(cost) is not None))
        msgs = s["msgs"]
        _need(isinstance(msgs, list) and len(msgs) <= MAX_MSG_IDS)
        _need(all(isinstance(m, list) and len(m) == 2 for m in msgs))
        _need(all(isinstance(i, str) and len(i) <= MAX_MSG_ID for i, _ in msgs))
        _need(len({i for i, _ in msgs}) == len(msgs))
        self._msgs = [[i, None if c is None else _counts(c)] for i, c in msgs]
        self._total, self._open = _counts(s["total"]), _counts(s["open"])
        self._pending, self._pending_len = [pending], len(pending)
        self._skip, self._fence, self._seen = flags
        self._status, self._cost = s["status"], cost
        self._links = {kind: list(links[kind]) for kind in LINK_KINDS}

    def to_state(self) -> Dict[str, Any]:
        """JSON-serialisable; `Parser(runtime, state)` resumes exactly here."""
        return {
            "v": STATE_VERSION,
            "runtime": self.runtime,
            "pending": "".join(self._pending),
            "skip": self._skip,
            "fence": self._fence,
            "status": self._status,
            "links": {kind: list(urls) for kind, urls in self._links.items()},
            "seen": self._seen,
            "total": list(self._total),
            "cost": self._cost,
            "open": list(self._open),
            "msgs": [[i, None if c is None else list(c)] for i, c in self._msgs],
        }

    def _unresolved(self) -> Counts:
        """claude: the assistant usage no result has covered yet."""
        counts = list(self._open)
        for _, c in self._msgs:
            _add(counts, c or [])
        return counts

    def observation(self) -> Dict[str, Any]:
        usage: Optional[Dict[str, Any]] = None
        if self._seen:
            counts = self._unresolved()
            _add(counts, self._total)
            usage = {name: counts[i] for i, name in enumerate(USAGE_FIELDS)}
            usage["cost_usd"] = self._cost
        links = {kind: list(urls) for kind, urls in self._links.items() if urls}
        return {"status": self._status, "links": links, "usage": usage}

    def feed(self, text: str) -> None:
        """Any chunking: a line split across feeds is one line."""
        if "\n" not in text:
            self._hold(text)
            return
        lines = text.split("\n")
        lines[0] = "".join(self._pending) + lines[0]
        first = 1 if self._skip else 0  # the tail of a line too long to keep
        self._pending, self._pending_len, self._skip = [], 0, False
        for line in lines[first:-1]:
            if len(line) <= MAX_PENDING:
                self._line(line[:-1] if line.endswith("\r") else line)
        self._hold(lines[-1])

    def _hold(self, text: str) -> None:
        if self._skip or not text:
            return
        self._pending.append(text)
        self._pending_len += len(text)
        if self._pending_len > MAX_PENDING:
            self._pending, self._pending_len, self._skip = [], 0, True

    # -- one line ----------------------------------------------------------------------------
    def _line(self, line: str) -> None:
        event = json_object(line) if self.runtime in JSON_RUNTIMES else None
        if event is None:
            self._fence, tags = line_tags(line, self._fence)
            self._tags(tags)
        elif self.runtime == "claude":
            self._claude(event)
        elif self.runtime == "codex":
            self._codex(event)
        else:
            for text in agent_texts(event):
                self._document(text)

    def _document(self, text: Any) -> None:
        """A markdown document of its own (fences start closed)."""
        if not isinstance(text, str):
            return
        fence = False
        for line in text.split("\n"):
            fence, tags = line_tags(line, fence)
            self._tags(tags)

    def _tags(self, tags: List[Tuple[str, str]]) -> None:
        for kind, value in tags:
            if kind == "status":
                self._status = value if value in STATUSES else self._status
                continue
            urls = self._links[kind]
            if len(urls) < MAX_LINKS and value not in urls and valid_url(value):
                urls.append(value)

    def _claude(self, event: Dict[str, Any]) -> None:
        kind, message = event.get("type"), event.get("message")
        if kind == "user" or (kind == "system" and event.get("subtype") == "init"):
            self._status = "working"
        elif kind == "assistant":
            self._status = "working"
            message = message if isinstance(message, dict) else {}
            content = message.get("content")
            if not isinstance(content, list):
                content = [{"type": "text", "text": content}]
            for block in content:
                block = block if isinstance(block, dict) else {}
                if block.get("type") == "text":
                    self._document(block.get("text"))
                elif block.get("type") == "tool_use" and block.get("name") == "AskUserQuestion":
                    self._status = "blocked"  # until an event (the answer) makes it working
            self._claude_usage(message.get("id"), read_usage(message.get("usage"), _CLAUDE_USAGE))
        elif kind == "result":
            self._status = "done"
            self._claude_result(event)
            self._document(event.get("result"))

    def _claude_usage(self, msg_id: Any, report: Optional[Report]) -> None:
        """An assistant message's usage, once per message id (the highest of each field seen)."""
        if report is None:
            return
        self._seen = True
        if not isinstance(msg_id, str) or len(msg_id) > MAX_MSG_ID:
            _add(self._open, report)
            return
        for entry in self._msgs:
            if entry[0] == msg_id:
                if entry[1] is not None:
                    entry[1] = [max(entry[1][i], n or 0) for i, n in enumerate(report)]
                return
        self._msgs.append([msg_id, [n or 0 for n in report]])
        if len(self._msgs) > MAX_MSG_IDS:
            _add(self._open, self._msgs.pop(0)[1] or [])

    def _claude_result(self, event: Dict[str, Any]) -> None:
        """One run's totals: they replace the assistant usage seen since the previous result."""
        report = read_usage(event.get("usage"), _CLAUDE_USAGE)
        self._seen = self._seen or report is not None
        _add(self._total, self._unresolved() if report is None else report)
        self._open = [0] * len(USAGE_FIELDS)
        for entry in self._msgs:
            entry[1] = None
        cost = read_cost(event.get("total_cost_usd"))
        if cost is not None:
            self._seen, self._cost = True, min((self._cost or 0.0) + cost, MAX_COST)

    def _codex(self, event: Dict[str, Any]) -> None:
        msg = event.get("msg")
        if isinstance(msg, dict):  # the older generation: {"id": ..., "msg": {...}}
            kind = msg.get("type")
            if kind == "task_started":
                self._status = "working"
            elif kind == "task_complete":
                self._status = "done"
            elif kind == "agent_message":
                self._document(msg.get("message"))
            elif kind == "token_count":
                info = msg.get("info")
                total = info.get("total_token_usage") if isinstance(info, dict) else None
                if isinstance(total, dict):  # cumulative: replaces
                    report = read_codex_usage(total)
                    for i, n in enumerate(report or []):
                        self._total[i] = self._total[i] if n is None else n
                else:
                    report = read_codex_usage(msg)
                    _add(self._total, report or [])
                self._seen = self._seen or report is not None
            return
        kind = event.get("type")
        if kind == "turn.started":
            self._status = "working"
        elif kind in ("turn.completed", "turn.failed"):
            self._status = "done"
            report = read_codex_usage(event.get("usage"))
            _add(self._total, report or [])
            self._seen = self._seen or report is not None
        elif kind == "item.completed" and isinstance(event.get("item"), dict):
            item = event["item"]  # `item_type`/assistant_message: early releases of the format
            if (item.get("type") or item.get("item_type")) in _CODEX_MESSAGES:
                self._document(item.get("text"))


def scan_screen(text: str) -> Dict[str, Any]:
    """For an interactive session's terminal screen capture (not incremental): the observation
    of the screen as plain text, status from the last status tag on it (None if none)."""
    parser = Parser("shell")
    parser.feed(text)
    parser.feed("\n")
    return parser.observation()
