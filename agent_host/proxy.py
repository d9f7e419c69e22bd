"""The host-side egress proxy of a sandbox session: the sandbox's only way out.

The sandbox sits on a Docker `--internal` network with no route out. The host agent runs this
proxy as a host process listening on that network's gateway address. It speaks HTTP/1.1 forward
proxying (absolute-form requests for `http://`) and CONNECT (for everything else, TLS included),
asks a policy function about every destination, resolves names itself, and reports every
connection it decided to a sink.

Everything the sandbox sends is hostile input:
- The request head is bounded in size and time, parsed strictly (no control characters, no
  obs-fold, only HTTP/1.0 and HTTP/1.1), and anything odd is a 400: a lenient parser is where a
  proxy and its policy start disagreeing about where a request goes.
- A destination is a DNS name (lowercased, one trailing dot stripped) or a canonical IP literal.
  Numeric forms a resolver would turn into an address (`127.1`, `0x7f000001`) are refused, so the
  policy never sees a "name" that is really an address; an IPv4-mapped IPv6 literal is decided
  (and connected to) as the IPv4 address it is.
- The proxy resolves names once, itself, checks every address it got, and connects to exactly
  those addresses: nothing later gets the name and a chance to resolve it differently (DNS
  rebinding). IP literals are never resolved, and get the same checks. Loopback, link-local
  (cloud metadata), unspecified, multicast, reserved and broadcast addresses, any IPv6 form of
  one, the proxy's own address and its session's network are refused: an allowed name that
  resolves to one is denied. Private ranges are not refused.
- CONNECT opens a raw TCP tunnel: to port 443 only, unless the allow rule that matched names
  the port (`git.example.com:22`).
- A forwarded plain-HTTP request goes out in origin-form with the proxy's own headers and every
  hop-by-hop header removed, its Host set from the request target (RFC 9112 3.2.2), and
  `Connection: close`. One request per client connection: its body is framed by Content-Length
  or chunked only (anything two parsers could read differently is a 400), exactly that body is
  sent upstream, re-framed, and nothing the client sends after it ever is. The response goes
  back framed, with `Connection: close`, and the connection ends.

Python 3.9 compatible, stdlib only (runs on hosts).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ipaddress
import os
import re
import socket
import sys
from dataclasses import dataclass
from typing import Awaitable, Callable, List, Optional, Sequence, Set, Tuple, Union

from agent_host.egress import rule_port
from agent_host.wire import MODEL_PREFIX  # origin-form requests under it: the model API, key added

# -- the interface ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ConnectionRecord:
    """One decided connection, reported once when it ends."""

    host: str  # the destination as asked (lowercased, no trailing dot), or the IP literal
    port: int
    allowed: bool
    rule: str  # what decide() returned
    bytes_up: int  # client -> upstream, after the request head
    bytes_down: int  # upstream -> client
    error: Optional[str]  # why an allowed connection could not be made, else None


Decide = Callable[[str, int], Tuple[bool, str]]  # (host, port) -> (allowed, rule that decided)
Record = Callable[[ConnectionRecord], None]
Resolve = Callable[[str, int], Awaitable[List[Tuple[str, int]]]]  # -> addresses to try, in order

MODEL_RULE = "the runtime's model API (its key added by the proxy)"
MAX_ADDRESSES = 16  # of one name's addresses, at most this many are tried
MAX_RULE_CHARS = 300  # of a rule's text, at most this much reaches a 403 body
_CHUNK = 65536

CONNECTED = b"HTTP/1.1 200 Connection established\r\n\r\n"


@dataclass(frozen=True)
class ModelRoute:
    """Where the sandbox's model API calls go, and the credential the proxy adds to them. The
    sandbox calls `http://<proxy>/jackin-model/...` with at most a placeholder key; the proxy
    drops every credential header the sandbox sent and adds `header: value`."""

    scheme: str  # http | https
    host: str
    port: int
    base_path: str  # the upstream URL's path, without its trailing '/'
    header: str  # e.g. x-api-key, authorization
    value: str  # the secret header value: never logged, never in a record

    def __repr__(self) -> str:  # a traceback never shows the key
        return "ModelRoute(%s://%s:%d%s)" % (self.scheme, self.host, self.port, self.base_path)


# Credential headers a sandbox may send to the model route: all dropped, the route's added.
_CREDENTIAL_HEADERS = frozenset({"authorization", "x-api-key", "x-goog-api-key", "api-key"})


class BadRequest(ValueError):
    """The client's request is malformed: it gets a 400 and is not recorded (unless it was
    decided already: a bad body is found while it is sent)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class BadResponse(ValueError):
    """The upstream's response cannot be framed safely: the client gets a 502 (or, when part of
    the response went already, its connection is cut)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


Fail = Callable[[str], Exception]  # BadRequest or BadResponse: whose stream it is


# -- parsing ---------------------------------------------------------------------------------
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"  # RFC 9110 5.6.2
_REQUEST_LINE_RE = re.compile(r"(%s) ([\x21-\x7e]+) (HTTP/1\.[01])" % _TOKEN)
_HEADER_RE = re.compile(r"(%s):[ ]*(.*?)[ ]*" % _TOKEN)
# Every control character except CR and LF, which only ever appear as the CRLF line ends.
_CTL_BYTES_RE = re.compile(rb"[\x00-\x09\x0b\x0c\x0e-\x1f\x7f]")
_CTL_RE = re.compile(r"[\x00-\x1f\x7f]")
_VISIBLE_RE = re.compile(r"[\x21-\x7e]+")
_SCHEME_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://(.*)")
_PORT_RE = re.compile(r"[0-9]{1,5}")
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4_RE = re.compile(r"%s(?:\.%s){3}" % (_OCTET, _OCTET))  # canonical: no leading zeros
_IPV6_CHARS_RE = re.compile(r"[0-9A-Fa-f:.]+")
_LABEL_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
# A label inet_aton reads as a number: a name made only of these is an address in disguise.
_NUMERIC_LABEL_RE = re.compile(r"0[xX][0-9A-Fa-f]*|[0-9]+")
MAX_NAME_CHARS = 253


@dataclass(frozen=True)
class Request:
    """A parsed request head. Header names and values are as received (latin-1 text)."""

    method: str
    target: str
    version: str
    headers: Tuple[Tuple[str, str], ...]


@dataclass(frozen=True)
class Target:
    """Where a request goes. `path` is the origin-form target of a plain-HTTP request, or None
    for CONNECT (the client talks to the destination itself)."""

    host: str
    port: int
    path: Optional[str]


def parse_head(head: bytes) -> Request:
    """Parse a request head ending in CRLFCRLF, strictly. Raises BadRequest."""
    if not head.endswith(b"\r\n\r\n"):
        raise BadRequest("the request head does not end with CRLFCRLF")
    lines = head[:-4].decode("latin-1").split("\r\n")
    for line in lines:
        if _CTL_RE.search(line):  # a bare CR or LF lands here too
            raise BadRequest("a control character in the request head")
    match = _REQUEST_LINE_RE.fullmatch(lines[0])
    if match is None:
        raise BadRequest("not an HTTP/1.0 or HTTP/1.1 request line")
    headers = []
    for line in lines[1:]:
        header = _HEADER_RE.fullmatch(line)
        if header is None:  # obs-fold, a space before the colon, a bad name, no colon
            raise BadRequest("a malformed header line")
        headers.append((header.group(1), header.group(2)))
    return Request(match.group(1), match.group(2), match.group(3), tuple(headers))


def parse_target(method: str, target: str) -> Target:
    """The destination of a request: authority-form for CONNECT, `http://` absolute-form for any
    other method. Anything else (origin-form, `*`, `https://`, other schemes) raises BadRequest:
    the proxy serves nothing itself, and TLS goes through CONNECT."""
    if not _VISIBLE_RE.fullmatch(target):
        raise BadRequest("a request target of visible ASCII is required")
    if method == "CONNECT":
        host, port = parse_authority(target, None)
        return Target(host, port, None)
    if target.startswith("/") or target == "*":
        raise BadRequest("this proxy serves nothing itself: send an absolute http:// URL")
    match = _SCHEME_RE.fullmatch(target)
    if match is None:
        raise BadRequest("the request target is not an absolute http:// URL")
    scheme, rest = match.group(1).lower(), match.group(2)
    if scheme == "https":
        raise BadRequest("https:// is proxied with CONNECT, not in absolute form")
    if scheme != "http":
        raise BadRequest("only http:// is proxied in absolute form")
    if "#" in rest:
        raise BadRequest("a request target has no fragment")
    cut = min([i for i in (rest.find("/"), rest.find("?")) if i >= 0] or [len(rest)])
    authority, path = rest[:cut], rest[cut:]
    if "@" in authority:
        raise BadRequest("user information in the request target")
    host, port = parse_authority(authority, 80)
    return Target(host, port, path if path.startswith("/") else "/" + path)


def parse_authority(text: str, default_port: Optional[int]) -> Tuple[str, int]:
    """`host:port`, `[v6]:port`, or without the port when there is a default. Raises
    BadRequest."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise BadRequest("an unclosed '[' in the destination")
        host, rest = check_ipv6(text[1:end]), text[end + 1 :]
        if rest and not rest.startswith(":"):
            raise BadRequest("junk after the IPv6 address")
        has_port, port_text = bool(rest), rest[1:]
    else:
        name, sep, port_text = text.partition(":")  # a second ':' fails the port check
        host, has_port = check_host(name), bool(sep)
    if has_port:
        return host, check_port(port_text)
    if default_port is None:
        raise BadRequest("the destination has no port")
    return host, default_port


def check_port(text: str) -> int:
    if not _PORT_RE.fullmatch(text) or not 1 <= int(text) <= 65535:
        raise BadRequest("the port is not a number from 1 to 65535")
    return int(text)


def check_host(text: str) -> str:
    """A canonical IPv4 literal, or a DNS name lowercased without its one trailing dot."""
    if _IPV4_RE.fullmatch(text):
        return text
    name = text[:-1] if text.endswith(".") else text
    if not name or len(name) > MAX_NAME_CHARS:
        raise BadRequest("the destination is not a host name")
    labels = name.split(".")
    if not all(_LABEL_RE.fullmatch(label) for label in labels):
        raise BadRequest("the destination is not a host name")
    # A resolver reads these as addresses (127.1, 2130706433, 0x7f.1): no top-level domain is
    # numeric, so no real name is refused.
    if labels[-1].isdigit() or all(_NUMERIC_LABEL_RE.fullmatch(label) for label in labels):
        raise BadRequest("the destination is a non-canonical IP address")
    return name.lower()


def check_ipv6(text: str) -> str:
    """An IPv6 literal (no zone), compressed; an IPv4-mapped one as its IPv4 address, so the
    policy decides the address it really is."""
    if not _IPV6_CHARS_RE.fullmatch(text) or ":" not in text:
        raise BadRequest("the destination is not an IPv6 address")
    try:
        address = ipaddress.IPv6Address(text)
    except ValueError:
        raise BadRequest("the destination is not an IPv6 address") from None
    if address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return address.compressed


def is_ip_literal(host: str) -> bool:
    """An IP address without a zone (`%eth0`): the only thing the proxy connects to."""
    if "%" in host:
        return False
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def host_port(host: str, port: int) -> str:
    """`host:port`, with an IPv6 address in brackets."""
    return ("[%s]:%d" if ":" in host else "%s:%d") % (host, port)


# Never forwarded: the proxy's own headers and the hop-by-hop ones (RFC 9110 7.6.1). Host is
# replaced from the target; the framing (_FRAMING) is written anew, from request_framing.
_DROPPED = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "upgrade",
        "host",
    }
)
# The headers that say where a body ends: the proxy reads them strictly and writes its own.
_FRAMING = frozenset({"content-length", "transfer-encoding"})


MODEL_METHODS = frozenset({"GET", "HEAD", "POST", "DELETE", "OPTIONS"})  # what runtimes use
_DOT_SEGMENT_RE = re.compile(r"(^|/)\.{1,2}(/|$|\?)|%2e|%2f|%5c|\\", re.IGNORECASE)


def model_target(route: ModelRoute, request_target: str, method: str = "POST") -> Optional[Target]:
    """The upstream target of a request to the model route, or None when it is not one. The key
    goes only to paths under the upstream's own: no dot segments or encoded ones, and only the
    methods the runtimes use (a TRACE would echo the key back). Raises BadRequest otherwise."""
    rest = request_target[len(MODEL_PREFIX) :]
    if not request_target.startswith(MODEL_PREFIX) or (rest and rest[0] not in "/?"):
        return None
    if method not in MODEL_METHODS:
        raise BadRequest("the model route takes %s only" % ", ".join(sorted(MODEL_METHODS)))
    if _DOT_SEGMENT_RE.search(rest.split("?", 1)[0]):
        raise BadRequest("the model route takes no '.' or '..' segments, encoded or not")
    path = route.base_path + (rest if rest.startswith("/") else "/" + rest)
    return Target(route.host, route.port, path)


def model_head(request: Request, target: Target, route: ModelRoute) -> bytes:
    """rewrite_head for the model route: every credential the sandbox sent is dropped, and the
    route's own is added (the sandbox holds at most a placeholder)."""
    kept = tuple(
        (name, value) for name, value in request.headers
        if name.lower() not in _CREDENTIAL_HEADERS and name.lower() != route.header.lower()
    )  # fmt: skip
    head = rewrite_head(Request(request.method, request.target, request.version, kept), target)
    if route.scheme == "https" and target.port == 443:
        head = head.replace(b"Host: %s:443\r\n" % target.host.encode(), b"Host: %s\r\n"
                            % target.host.encode(), 1)  # fmt: skip
    extra = ("%s: %s\r\n" % (route.header, route.value)).encode("latin-1")
    return head[:-2] + extra + b"\r\n"


def rewrite_head(request: Request, target: Target) -> bytes:
    """The head a plain-HTTP request goes upstream with: origin-form, Host from the target, the
    proxy's and hop-by-hop headers (and any the Connection header names) removed, its framing
    written anew (one Content-Length, or `Transfer-Encoding: chunked`; no Trailer: trailer
    fields are not forwarded), and `Connection: close`. Raises BadRequest (request_framing)."""
    assert target.path is not None
    framing = request_framing(request)
    dropped = set(_DROPPED) | _FRAMING | {"trailer"}
    for name, value in request.headers:
        if name.lower() in ("connection", "proxy-connection"):
            dropped.update(token.strip().lower() for token in value.split(","))
    host = host_port(target.host, target.port)
    if target.port == 80:
        host = host[: host.rindex(":")]
    lines = ["%s %s %s" % (request.method, target.path, request.version), "Host: " + host]
    lines += ["%s: %s" % (n, v) for n, v in request.headers if n.lower() not in dropped]
    lines += framing_lines(framing)
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


# -- message framing (RFC 9112 6) ----------------------------------------------------------------
@dataclass(frozen=True)
class Framing:
    """Where a message's body ends: `none` (it has none), `length` (after `length` bytes),
    `chunked` (at the last chunk), or `close` (a response's: when the upstream closes).
    `codings` is a response's Transfer-Encoding, as sent on."""

    kind: str
    length: int = 0
    codings: str = ""


NO_BODY = Framing("none")
MAX_CHUNK_LINE = 4096  # a chunk-size line (extensions included), or a trailer field line
MAX_TRAILER = 65536  # a trailer section
MAX_INTERIM = 16  # 1xx responses before the final one
_LENGTH_RE = re.compile(r"[0-9]{1,18}")
_CODING_RE = re.compile(_TOKEN)
_CHUNK_LINE_RE = re.compile(
    rb'([0-9A-Fa-f]{1,16})(?:;%s(?:=(?:%s|"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*"))?)*'
    % (_TOKEN.encode(), _TOKEN.encode())
)  # strict: no whitespace around the extensions (they are dropped anyway)


def request_framing(request: Request) -> Framing:
    """How a plain-HTTP request's body ends: Content-Length or chunked only, and nothing two
    parsers could read differently (RFC 9112 6.1, 6.3; request smuggling): both headers, several
    differing lengths, a length that is not digits, a Transfer-Encoding other than exactly one
    `chunked`, Transfer-Encoding in HTTP/1.0, or a header some servers would read as either
    (`Content_Length`) raise BadRequest. Obs-fold and tabs never get this far (parse_head)."""
    lengths: List[str] = []
    codings: List[str] = []
    for name, value in request.headers:
        lower = name.lower()
        if lower == "content-length":
            lengths.append(value)
        elif lower == "transfer-encoding":
            codings.append(value)
        elif lower.replace("_", "-") in _FRAMING:
            raise BadRequest("a header named like %s" % lower.replace("_", "-"))
    if codings and lengths:
        raise BadRequest("both Content-Length and Transfer-Encoding")
    if codings:
        if request.version == "HTTP/1.0":
            raise BadRequest("Transfer-Encoding in an HTTP/1.0 request")
        if len(codings) != 1 or codings[0].lower() != "chunked":
            raise BadRequest("a Transfer-Encoding other than chunked")
        return Framing("chunked", codings="chunked")
    if not lengths:
        return NO_BODY
    return Framing("length", content_length(lengths, BadRequest))


def content_length(values: Sequence[str], fail: Fail) -> int:
    """The one length that every Content-Length value (a line, or a list in one) says."""
    found = set()
    for value in values:
        for item in value.split(","):
            item = item.strip(" \t")
            if not _LENGTH_RE.fullmatch(item):
                raise fail("a Content-Length that is not a number")
            found.add(int(item))
    if len(found) != 1:
        raise fail("differing Content-Length values")
    return found.pop()


def framing_lines(framing: Framing) -> List[str]:
    """The header lines that say `framing`: none for `none`, nor for `close` without codings."""
    if framing.kind == "length":
        return ["Content-Length: %d" % framing.length]
    if framing.kind in ("chunked", "close") and framing.codings:
        return ["Transfer-Encoding: " + framing.codings]
    return []


async def read_head(reader: asyncio.StreamReader, limit: int) -> Tuple[bytes, bytes]:
    """(the head up to and including CRLFCRLF, any bytes read after it). Raises BadRequest when
    the head would pass `limit` bytes, the client stops before it ends, or what has come so far
    already cannot be a request (a control character, a bad request line): a client speaking
    something else (a TLS hello) is refused at once, not at the timeout."""
    buf = bytearray()
    start = 0  # what is before this was searched and checked already: each byte is, once
    first_line_checked = False
    while True:
        end = buf.find(b"\r\n\r\n", start)
        if end >= 0:
            return bytes(buf[: end + 4]), bytes(buf[end + 4 :])
        if len(buf) >= limit:
            raise BadRequest("the request head is over %d bytes" % limit)
        if _CTL_BYTES_RE.search(buf, start):
            raise BadRequest("a control character in the request head")
        line_end = -1 if first_line_checked else buf.find(b"\r\n")
        if line_end >= 0:
            if not _REQUEST_LINE_RE.fullmatch(buf[:line_end].decode("latin-1")):
                raise BadRequest("not an HTTP/1.0 or HTTP/1.1 request line")
            first_line_checked = True
        start = max(0, len(buf) - 3)
        chunk = await reader.read(limit - len(buf))
        if not chunk:
            raise BadRequest("the connection ended before the request head did")
        buf += chunk


class Source:
    """A stream read from after `prefix` (what was read past a head already), in framed pieces.
    Reads past what a piece needs stay buffered here: they are never sent anywhere by it."""

    def __init__(self, reader: asyncio.StreamReader, prefix: bytes = b"") -> None:
        self._reader = reader
        self._buf = bytearray(prefix)

    def buffered(self, limit: int) -> bytes:
        """Up to `limit` of the bytes already read, without waiting for more."""
        data = bytes(self._buf[:limit])
        del self._buf[:limit]
        return data

    async def read(self, limit: int) -> bytes:
        """Up to `limit` bytes; b"" at the end of the stream."""
        if self._buf:
            data = bytes(self._buf[:limit])
            del self._buf[:limit]
            return data
        return await self._reader.read(limit)

    async def readline(self, limit: int, fail: Fail) -> bytes:
        """One line ended by CRLF, without it; `fail` when it would pass `limit` bytes or the
        stream ends first. A bare CR or LF stays inside the line, for the caller to refuse."""
        start = 0
        while True:
            end = self._buf.find(b"\r\n", start)
            if end >= 0:
                if end > limit:
                    break
                line = bytes(self._buf[:end])
                del self._buf[: end + 2]
                return line
            if len(self._buf) > limit:
                break
            start = max(0, len(self._buf) - 1)
            data = await self._reader.read(_CHUNK)
            if not data:
                raise fail("the stream ended inside a line")
            self._buf += data
        raise fail("a line over %d bytes" % limit)


async def _send(dst: asyncio.StreamWriter, data: bytes, count: Callable[[int], None]) -> None:
    dst.write(data)
    count(len(data))
    await dst.drain()


async def _copy(
    src: Source, dst: asyncio.StreamWriter, size: int, count: Callable[[int], None], fail: Fail
) -> None:
    while size > 0:
        data = await src.read(min(size, _CHUNK))
        if not data:
            raise fail("the body ended early")
        size -= len(data)
        await _send(dst, data, count)


async def copy_body(
    src: Source,
    dst: asyncio.StreamWriter,
    framing: Framing,
    count: Callable[[int], None],
    fail: Fail,
) -> None:
    """Send the body `framing` says comes next on `src` to `dst`, and not a byte after it. A
    chunked body goes re-framed: each chunk as `SIZE CRLF DATA CRLF`, without its extensions,
    then `0 CRLF CRLF`: trailer fields are read, checked and dropped. `count` is told each
    piece sent; `fail` makes the exception for a malformed or short body."""
    if framing.kind == "length":
        await _copy(src, dst, framing.length, count, fail)
    elif framing.kind == "close":
        while True:
            data = await src.read(_CHUNK)
            if not data:
                return
            await _send(dst, data, count)
    elif framing.kind == "chunked":
        while True:
            match = _CHUNK_LINE_RE.fullmatch(await src.readline(MAX_CHUNK_LINE, fail))
            if match is None:
                raise fail("a malformed chunk-size line")
            size = int(match.group(1), 16)
            if size == 0:
                break
            await _send(dst, b"%x\r\n" % size, count)
            await _copy(src, dst, size, count, fail)
            if await src.readline(0, fail) != b"":
                raise fail("a chunk not followed by CRLF")
            await _send(dst, b"\r\n", count)
        left = MAX_TRAILER
        while True:
            line = await src.readline(min(left, MAX_CHUNK_LINE), fail)
            if not line:
                break
            left -= len(line) + 2
            text = line.decode("latin-1")
            if _RESPONSE_CTL_RE.search(text) or not _FIELD_RE.fullmatch(text):
                raise fail("a malformed trailer field")
        await _send(dst, b"0\r\n\r\n", count)


# -- the response ------------------------------------------------------------------------------
_STATUS_LINE_RE = re.compile(r"HTTP/1\.[01] ([1-9][0-9]{2})(?: [\t\x20-\x7e\x80-\xff]*)?")
_FIELD_RE = re.compile(r"(%s):[ \t]*(.*?)[ \t]*" % _TOKEN)  # HTAB is allowed in a value here
_RESPONSE_CTL_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # every control character but HTAB
# Never sent back: hop-by-hop (RFC 9110 7.6.1), and the framing, which the proxy writes itself.
_DROPPED_BACK = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-connection", "te", "trailer",
     "upgrade"}
)  # fmt: skip


@dataclass(frozen=True)
class Response:
    """A response head from the upstream: its status line and fields as received."""

    status: int
    line: str
    headers: Tuple[Tuple[str, str], ...]


async def read_response(src: Source, limit: int) -> Response:
    """The next response head on `src`, checked (no control character but HTAB, no obs-fold,
    at most `limit` bytes). Raises BadResponse."""
    left = limit
    lines = []
    while True:
        line = await src.readline(left, BadResponse)
        left -= len(line) + 2
        if not line:
            break
        lines.append(line.decode("latin-1"))
    if not lines or _RESPONSE_CTL_RE.search("".join(lines)):
        raise BadResponse("a malformed response head")
    match = _STATUS_LINE_RE.fullmatch(lines[0])
    if match is None:
        raise BadResponse("not an HTTP/1.0 or HTTP/1.1 status line")
    headers = []
    for text in lines[1:]:
        field = _FIELD_RE.fullmatch(text)
        if field is None:
            raise BadResponse("a malformed header line in the response")
        headers.append((field.group(1), field.group(2)))
    return Response(int(match.group(1)), lines[0], tuple(headers))


def response_framing(response: Response, method: str) -> Framing:
    """Where the body of a final response ends (RFC 9112 6.3): none for HEAD, 204 and 304; a
    Transfer-Encoding ending in chunked is chunked, any other is read to the close; else one
    Content-Length (several differing ones: BadResponse); else to the close."""
    if method == "HEAD" or response.status in (204, 304):
        return NO_BODY
    values = [v for n, v in response.headers if n.lower() == "transfer-encoding"]
    if values:
        codings = [c.strip(" \t").lower() for v in values for c in v.split(",")]
        if not all(_CODING_RE.fullmatch(c) for c in codings):
            raise BadResponse("a malformed Transfer-Encoding")
        kind = "chunked" if codings[-1] == "chunked" else "close"
        return Framing(kind, codings=", ".join(codings))
    lengths = [v for n, v in response.headers if n.lower() == "content-length"]
    if lengths:
        return Framing("length", content_length(lengths, BadResponse))
    return Framing("close")


def response_head(response: Response, framing: Optional[Framing]) -> bytes:
    """The head a response goes to the client with: hop-by-hop fields (and those Connection
    names) dropped; for a final response (`framing` given) its framing written anew and
    `Connection: close`. A response without a body keeps its Content-Length as sent."""
    dropped = set(_DROPPED_BACK)
    for name, value in response.headers:
        if name.lower() == "connection":
            dropped.update(token.strip(" \t").lower() for token in value.split(","))
    if framing is not None and framing.kind != "none":
        dropped |= _FRAMING
    lines = [response.line]
    lines += ["%s: %s" % (n, v) for n, v in response.headers if n.lower() not in dropped]
    if framing is not None:
        lines += framing_lines(framing)
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


# -- replies ---------------------------------------------------------------------------------
def safe_text(text: str, limit: int = MAX_RULE_CHARS) -> str:
    """`text` without control or other unprintable characters (escapes, CR/LF, bidi overrides),
    cut to `limit`: it goes into a reply a terminal may show."""
    return "".join(ch for ch in text if ch.isprintable())[:limit]


def reply(status: int, reason: str, body: str, headers: Tuple[Tuple[str, str], ...] = ()) -> bytes:
    data = body.encode("utf-8")
    lines = ["HTTP/1.1 %d %s" % (status, reason), "Content-Type: text/plain; charset=utf-8"]
    lines += ["%s: %s" % header for header in headers]
    lines += ["Content-Length: %d" % len(data), "Connection: close"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + data


def bad_request(reason: str) -> bytes:
    return reply(400, "Bad Request", "jackin egress: bad request: %s\n" % reason)


def denied(host: str, port: int, rule: str) -> bytes:
    body = "jackin egress: %s denied by %s\n" % (host_port(host, port), safe_text(rule))
    return reply(403, "Forbidden", body, (("X-Jackin-Egress", "denied"),))


def bad_gateway(host: str, port: int, error: str) -> bytes:
    body = "jackin egress: %s unreachable: %s\n" % (host_port(host, port), safe_text(error))
    return reply(502, "Bad Gateway", body, (("X-Jackin-Egress", "unreachable"),))


def port_denied(host: str, port: int, rule: str) -> bytes:
    body = ("jackin egress: %s denied: CONNECT goes to port 443 only, unless the allow rule names "
            "the port (%s names none): allow it with --allow %s\n"
            % (host_port(host, port), safe_text(rule), host_port(host, port)))  # fmt: skip
    return reply(403, "Forbidden", body, (("X-Jackin-Egress", "denied"),))


def address_denied(host: str, port: int, why: str) -> bytes:
    body = ("jackin egress: %s denied: %s (the proxy never connects to loopback, link-local, "
            "unspecified, multicast or reserved addresses, nor to its own)\n"
            % (host_port(host, port), safe_text(why)))  # fmt: skip
    return reply(403, "Forbidden", body, (("X-Jackin-Egress", "denied"),))


# -- addresses ---------------------------------------------------------------------------------
IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
# Cloud metadata services outside link-local: Alibaba's, and AWS's IPv6 one (in fd00::/8).
_METADATA = (ipaddress.ip_network("100.100.100.200/32"), ipaddress.ip_network("fd00:ec2::254/128"))
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")
_BROADCAST = ipaddress.ip_address("255.255.255.255")
# IPv6 ranges that carry an IPv4 address in their last 32 bits: IPv4-compatible (::/96),
# IPv4-translated (::ffff:0:0:0/96) and NAT64's well-known prefix (64:ff9b::/96). The
# IPv4-mapped form (::ffff:0:0/96) is the IPv4 address itself, to the kernel.
_EMBEDDING = tuple(
    ipaddress.ip_network(n) for n in ("::/96", "::ffff:0:0:0/96", "64:ff9b::/96")
)  # fmt: skip


def address_kind(address: IPAddress) -> Optional[str]:
    """What makes `address` one the proxy never connects to, or None."""
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if address.is_unspecified or address in _THIS_NETWORK:
        return "unspecified"
    if address.is_multicast:
        return "multicast"
    if address == _BROADCAST:
        return "broadcast"
    if address.is_reserved:
        return "reserved"
    if any(address in network for network in _METADATA):
        return "cloud metadata"
    return None


def _embedded(address: ipaddress.IPv6Address) -> List[ipaddress.IPv4Address]:
    found = []
    if int(address) > 1 and any(address in network for network in _EMBEDDING):  # not ::, ::1
        found.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    if address.sixtofour is not None:
        found.append(address.sixtofour)
    if address.teredo is not None:
        found.extend(address.teredo)
    return found


def address_refusal(
    ip: str,
    own: Sequence[Tuple[IPNetwork, str]] = (),
    exempt: Sequence[IPNetwork] = (),
) -> Optional[str]:
    """Why the proxy never connects to the IP literal `ip` ("127.0.0.1 is loopback"), or None.
    `own`: networks with what they are (the proxy's own address, its session's network), always
    refused; `exempt`: networks let through whatever their kind (tests' loopback
    upstreams). An IPv4-mapped address is the IPv4 address; one that embeds an IPv4 address
    (compatible, translated, NAT64, 6to4, Teredo) is refused when that address would be."""
    given: IPAddress = ipaddress.ip_address(ip)
    address = given
    if isinstance(given, ipaddress.IPv6Address) and given.ipv4_mapped is not None:
        address = given.ipv4_mapped  # where a connection to it goes
    shown = str(address) if address == given else "%s (as %s)" % (address, given)
    for network, what in own:
        if address.version == network.version and address in network:
            return "%s is %s" % (shown, what)
    if any(address.version == network.version and address in network for network in exempt):
        return None
    if isinstance(address, ipaddress.IPv6Address):
        for inner in _embedded(address):
            why = address_refusal(str(inner), own)
            if why is not None:
                return "%s (as %s)" % (why, address)
    kind = address_kind(address)
    return None if kind is None else "%s is %s" % (shown, kind)


# -- the proxy -------------------------------------------------------------------------------
class _Outcome:
    """What becomes the connection's record, filled in as it goes."""

    def __init__(self, target: Target, allowed: bool, rule: str) -> None:
        self.target = target
        self.allowed = allowed
        self.rule = rule
        self.bytes_up = 0
        self.bytes_down = 0
        self.error: Optional[str] = None

    def record(self) -> ConnectionRecord:
        return ConnectionRecord(
            host=self.target.host,
            port=self.target.port,
            allowed=self.allowed,
            rule=self.rule,
            bytes_up=self.bytes_up,
            bytes_down=self.bytes_down,
            error=self.error,
        )


class _Unreachable(Exception):
    """An allowed destination could not be connected to; the message says why."""


Streams = Tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def default_resolve(host: str, port: int) -> List[Tuple[str, int]]:
    """The system resolver's TCP addresses of `host`, in its order."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [
        (str(info[4][0]), int(info[4][1]))
        for info in infos
        if info[0] in (socket.AF_INET, socket.AF_INET6)
    ]


async def connect_address(ip: str, port: int, tls_name: Optional[str] = None) -> Streams:
    """Connect to an IP literal: the socket is made here, so nothing resolves anything. With
    `tls_name`, speak TLS to it, verifying its certificate for that name."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (ip, port))
        if tls_name is not None:
            import ssl

            context = ssl.create_default_context()
            return await asyncio.open_connection(sock=sock, ssl=context, server_hostname=tls_name)
        return await asyncio.open_connection(sock=sock)
    except BaseException:
        sock.close()
        raise


def _why(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    if isinstance(exc, OSError):
        if exc.errno is not None and exc.errno > 0:  # asyncio's own text only says it failed
            return os.strerror(exc.errno)
        if exc.strerror:  # a resolver's (negative) EAI_ code comes with its text
            return exc.strerror
    return str(exc) or type(exc).__name__


def _log(message: str) -> None:
    try:
        sys.stderr.write("jackin egress: %s\n" % message)
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


class EgressProxy:
    """An HTTP forward proxy whose every destination is decided by `decide` and reported to
    `record`. `connect_timeout` bounds resolving, each connection attempt, and a graceful close;
    `head_timeout` bounds reading the request head and, after a refusal or a response, waiting
    for the client to go (so the reply is read rather than reset). `peers`: the session's
    network, the only one served (and never connected to). `exempt`: networks the address
    checks let through whatever their kind (the unit tests' upstreams on loopback); the proxy's
    own address and network stay refused. `record` is called on a thread of its own, one record
    at a time and in order (a sink that writes a database must not stall every connection);
    close() returns once every record is in."""

    def __init__(
        self,
        decide: Decide,
        record: Record,
        *,
        resolve: Optional[Resolve] = None,
        head_limit: int = 65536,
        head_timeout: float = 30.0,
        connect_timeout: float = 10.0,
        model: Optional[ModelRoute] = None,
        peers: Optional[str] = None,
        exempt: Sequence[str] = (),
    ) -> None:
        # Only the session's own network may use it (its key, its rules): where the engine lets
        # an internal network reach other host addresses (docker < 25), other sandboxes could.
        self._peers = None if peers is None else ipaddress.ip_network(peers)
        self._own: List[Tuple[IPNetwork, str]] = []
        if self._peers is not None:
            self._own.append((self._peers, "in the session's own network"))
        self._exempt = [ipaddress.ip_network(network) for network in exempt]
        self._model = model
        self._model_tls = model is not None and model.scheme == "https"
        self._decide = decide
        self._record = record
        self._resolve: Resolve = resolve if resolve is not None else default_resolve
        self._head_limit = head_limit
        self._head_timeout = head_timeout
        self._connect_timeout = connect_timeout
        self._server: Optional[asyncio.base_events.Server] = None
        self._tasks: Set[asyncio.Task[None]] = set()
        self._closing = False
        self._recorder: Optional[concurrent.futures.ThreadPoolExecutor] = None

    async def start(self, host: str, port: int) -> Tuple[str, int]:
        """Listen on host:port (port 0: any free one); the bound address."""
        if self._server is not None or self._closing:
            raise RuntimeError("the proxy was already started")
        self._server = await asyncio.start_server(self._accept, host, port)
        sockname = self._server.sockets[0].getsockname()
        for sock in self._server.sockets:
            bound = ipaddress.ip_address(sock.getsockname()[0])
            if not bound.is_unspecified:
                self._own.append((ipaddress.ip_network(bound), "the proxy's own address"))
        return str(sockname[0]), int(sockname[1])

    async def close(self) -> None:
        """Stop listening and end every open connection (each decided one is recorded)."""
        self._closing = True
        server, self._server = self._server, None
        if server is not None:
            server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        recorder, self._recorder = self._recorder, None
        if recorder is not None:  # one worker, in order: this runs after every record before it
            await asyncio.wrap_future(recorder.submit(lambda: None))
            recorder.shutdown(wait=False)
        if server is not None:
            await server.wait_closed()

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Called on each accepted connection. Its task is tracked from here, synchronously, so
        close() finds every one."""
        if self._closing or not self._peer_allowed(writer):
            writer.transport.abort()
            return
        task = asyncio.get_running_loop().create_task(self._serve(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _peer_allowed(self, writer: asyncio.StreamWriter) -> bool:
        if self._peers is None:
            return True
        peer = writer.get_extra_info("peername")
        try:
            allowed = ipaddress.ip_address(peer[0]) in self._peers
        except (TypeError, ValueError, IndexError):
            allowed = False
        if not allowed:
            _log("refused a connection from %r: not on the session's network" % (peer,))
        return allowed

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._handle(reader, writer)
        except Exception as exc:  # a bug costs this connection, never the proxy
            _log("connection failed: %s" % type(exc).__name__)  # its text may hold the key
        finally:
            writer.transport.abort()  # a no-op after a graceful close

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head, rest = await asyncio.wait_for(
                read_head(reader, self._head_limit), self._head_timeout
            )
            request = parse_head(head)
            routed = (None if self._model is None
                      else model_target(self._model, request.target, request.method))  # fmt: skip
            target = routed or parse_target(request.method, request.target)
            upstream_head = b""
            if routed is not None and self._model is not None:
                upstream_head = model_head(request, target, self._model)
            elif target.path is not None:
                upstream_head = rewrite_head(request, target)
        except BadRequest as exc:
            await self._refuse(reader, writer, bad_request(exc.reason))
            return
        except asyncio.TimeoutError:
            await self._refuse(reader, writer, bad_request("no request head in time"))
            return
        except OSError:  # the client went away
            return
        outcome = _Outcome(target, *((True, MODEL_RULE) if routed else self._ask(target)))
        try:
            try:
                opened = await self._connect(outcome, routed is not None)
            except asyncio.CancelledError:
                outcome.error = "the proxy closed"
                raise
            if isinstance(opened, bytes):
                await self._refuse(reader, writer, opened)
                return
            up_reader, up_writer = opened
            try:
                if target.path is None:
                    writer.write(CONNECTED)
                    if rest:
                        up_writer.write(rest)
                        outcome.bytes_up += len(rest)
                    await self._relay(reader, writer, up_reader, up_writer, outcome)
                    await self._close_gracefully(up_writer)
                    await self._close_gracefully(writer)
                else:
                    up_writer.write(upstream_head)
                    await self._forward(
                        Source(reader, rest), writer, up_reader, up_writer, outcome, request
                    )
                    await self._finish(reader, writer, up_writer)
            except BadRequest as exc:  # the body, found bad while it went
                outcome.error = "bad request body: %s" % exc.reason
                up_writer.transport.abort()
                if outcome.bytes_down == 0:
                    await self._refuse(reader, writer, bad_request(exc.reason))
            except BadResponse as exc:
                outcome.error = "bad response: %s" % exc.reason
                up_writer.transport.abort()
                if outcome.bytes_down == 0:
                    await self._refuse(reader, writer, bad_gateway(target.host, target.port,
                                                                   outcome.error))  # fmt: skip
            finally:
                up_writer.transport.abort()
        finally:
            self._emit(outcome)

    async def _connect(self, outcome: _Outcome, routed: bool) -> Union[Streams, bytes]:
        """The upstream connection of a decided request, or the reply that refuses it: 403 when
        the rules, the CONNECT port or an address deny it (the outcome then says so), 502 when
        it cannot be resolved or connected to (the outcome's error). The model route's upstream
        is the operator's, not the sandbox's choice: its addresses are not checked."""
        target = outcome.target
        refusal = self._refusal(outcome)
        if refusal is not None:
            return refusal
        try:
            addresses = await self._addresses(target)
            refusal = None if routed else self._address_refusal(outcome, addresses)
            if refusal is not None:
                return refusal
            tls = routed and self._model_tls
            return await self._open(addresses, target.host if tls else None)
        except _Unreachable as exc:
            outcome.error = str(exc)
            return bad_gateway(target.host, target.port, str(exc))

    def _refusal(self, outcome: _Outcome) -> Optional[bytes]:
        """The 403 for a destination the rules deny, or for a CONNECT to a port other than 443
        when the rule that allowed it does not name the port (which makes it a denial)."""
        target = outcome.target
        if not outcome.allowed:
            return denied(target.host, target.port, outcome.rule)
        if target.path is None and target.port != 443 and rule_port(outcome.rule) != target.port:
            rule, outcome.allowed = outcome.rule, False
            outcome.rule = ("CONNECT to port %d needs an allow rule naming that port; %s names "
                            "none" % (target.port, rule))  # fmt: skip
            return port_denied(target.host, target.port, rule)
        return None

    def _address_refusal(
        self, outcome: _Outcome, addresses: List[Tuple[str, int]]
    ) -> Optional[bytes]:
        """The 403 when any of the destination's addresses is one the proxy never connects to
        (which makes it a denial): all of them are checked, before any is connected to."""
        for ip, _ in addresses:
            why = address_refusal(ip, self._own, self._exempt)
            if why is None:
                continue
            target = outcome.target
            if not is_ip_literal(target.host):
                why = "%s resolves to %s, and %s" % (target.host, ip, why)
            outcome.allowed = False
            outcome.rule = "address refused: %s (the rule %s matched)" % (why, outcome.rule)
            return address_denied(target.host, target.port, why)
        return None

    def _ask(self, target: Target) -> Tuple[bool, str]:
        """decide(), failing closed: a policy that raises denies."""
        try:
            allowed, rule = self._decide(target.host, target.port)
        except Exception as exc:
            _log("decide failed for %s: %r" % (host_port(target.host, target.port), exc))
            return False, "policy error"
        return bool(allowed), str(rule)

    def _emit(self, outcome: _Outcome) -> None:
        if self._recorder is None:
            self._recorder = concurrent.futures.ThreadPoolExecutor(1, "jackin-egress-record")
        self._recorder.submit(self._record_one, outcome.record())

    def _record_one(self, record: ConnectionRecord) -> None:
        try:
            self._record(record)
        except Exception as exc:
            _log("record failed: %r" % (exc,))

    async def _addresses(self, target: Target) -> List[Tuple[str, int]]:
        """The addresses to connect to: the IP literal, or every address the name resolves to
        (once: these are the ones checked and connected to). Raises _Unreachable."""
        if is_ip_literal(target.host):
            return [(target.host, target.port)]
        try:
            found = await asyncio.wait_for(
                self._resolve(target.host, target.port), self._connect_timeout
            )
            addresses = [
                (ip, port)
                for ip, port in found
                if isinstance(ip, str) and is_ip_literal(ip)
                and isinstance(port, int) and 0 < port < 65536
            ]  # fmt: skip
        except Exception as exc:  # the resolver is given: whatever it raises is a failure
            raise _Unreachable("resolve failed: %s" % _why(exc)) from None
        if not addresses:
            raise _Unreachable("resolve failed: no address")
        return addresses

    async def _open(
        self, addresses: List[Tuple[str, int]], tls_name: Optional[str] = None
    ) -> Streams:
        """Connect to the (checked) addresses in order; the first that answers."""
        failures = []
        for ip, port in addresses[:MAX_ADDRESSES]:
            try:
                return await asyncio.wait_for(
                    connect_address(ip, port, tls_name), self._connect_timeout
                )
            except (OSError, asyncio.TimeoutError) as exc:
                failures.append("%s (%s)" % (host_port(ip, port), _why(exc)))
        raise _Unreachable("connect failed: " + "; ".join(failures))

    async def _relay(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        up_reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
        outcome: _Outcome,
    ) -> None:
        """Pipe both ways until both are done. An EOF is passed on as an EOF (half-close), so a
        client that shuts down its sending side still gets its answer; an error on either side
        ends both."""

        def up(count: int) -> None:
            outcome.bytes_up += count

        def down(count: int) -> None:
            outcome.bytes_down += count

        async def pipe(
            src: asyncio.StreamReader, dst: asyncio.StreamWriter, count: Callable[[int], None]
        ) -> None:
            try:
                while True:
                    data = await src.read(_CHUNK)
                    if not data:
                        break
                    dst.write(data)
                    count(len(data))
                    await dst.drain()
                if dst.can_write_eof():
                    dst.write_eof()
                await dst.drain()
            except OSError:
                writer.transport.abort()
                up_writer.transport.abort()

        await asyncio.gather(pipe(reader, up_writer, up), pipe(up_reader, writer, down))

    async def _forward(
        self,
        client: Source,
        writer: asyncio.StreamWriter,
        up_reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
        outcome: _Outcome,
        request: Request,
    ) -> None:
        """One plain-HTTP exchange, the head sent already: the request's framed body goes up
        while the response (interim ones first) comes back, both framed; nothing after either is
        read on. The response may come before the body is all sent (a 413): then the rest of
        the body is not. Raises BadRequest (the body), BadResponse."""

        def up(count: int) -> None:
            outcome.bytes_up += count

        def down(count: int) -> None:
            outcome.bytes_down += count

        framing = request_framing(request)
        if framing.kind == "none":  # nothing to send: the answer alone (what the client sent on
            # after the head stays unread, in `client`)
            await self._respond(Source(up_reader), writer, request.method, down)
            return
        loop = asyncio.get_running_loop()
        upload = loop.create_task(copy_body(client, up_writer, framing, up, BadRequest))
        download = loop.create_task(self._respond(Source(up_reader), writer, request.method, down))
        try:
            await asyncio.wait((upload, download), return_when=asyncio.FIRST_COMPLETED)
            if not download.done():
                failure = upload.exception()
                if isinstance(failure, BadRequest):
                    raise failure
                # The body is sent, or the upstream stopped taking it (an OSError): its answer.
            await download
        finally:
            for task in (upload, download):
                task.cancel()
            await asyncio.gather(upload, download, return_exceptions=True)

    async def _respond(
        self, src: Source, writer: asyncio.StreamWriter, method: str, count: Callable[[int], None]
    ) -> None:
        """Send the client the upstream's interim responses and its final one, framed."""
        for _ in range(MAX_INTERIM + 1):
            response = await read_response(src, self._head_limit)
            if response.status == 101:
                raise BadResponse("a 101 Switching Protocols (no upgrade is forwarded)")
            if response.status < 200:
                await _send(writer, response_head(response, None), count)
                continue
            framing = response_framing(response, method)
            head = response_head(response, framing)
            if framing.kind in ("length", "close"):  # one write for the head and what came with it
                early = src.buffered(framing.length if framing.kind == "length" else _CHUNK)
                await _send(writer, head + early, count)
                if framing.kind == "length":
                    framing = Framing("length", framing.length - len(early))
            else:
                await _send(writer, head, count)
            await copy_body(src, writer, framing, count, BadResponse)
            return
        raise BadResponse("more than %d interim responses" % MAX_INTERIM)

    async def _finish(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        up_writer: asyncio.StreamWriter,
    ) -> None:
        """End both connections after the response: the client's EOF first, then the upstream
        is closed, then what the client still sends is read and dropped until it goes (as in
        _refuse), so the response is not lost to a reset."""
        try:
            if writer.can_write_eof():
                writer.write_eof()
            await writer.drain()
        except OSError:
            return
        await self._close_gracefully(up_writer)
        try:
            await asyncio.wait_for(self._discard(reader), self._head_timeout)
        except (OSError, asyncio.TimeoutError):
            return
        await self._close_gracefully(writer)

    async def _refuse(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, response: bytes
    ) -> None:
        """Send `response`, then read and drop what the client still sends until it goes (at
        most a head's worth, for at most head_timeout). Closing with unread data would send a
        reset, and the client could lose the reply to it."""
        try:
            writer.write(response)
            if writer.can_write_eof():
                writer.write_eof()
            await writer.drain()
            await asyncio.wait_for(self._discard(reader), self._head_timeout)
        except (OSError, asyncio.TimeoutError):
            return
        await self._close_gracefully(writer)

    async def _discard(self, reader: asyncio.StreamReader) -> None:
        left = self._head_limit
        while left > 0:
            data = await reader.read(min(left, _CHUNK))
            if not data:
                return
            left -= len(data)

    async def _close_gracefully(self, writer: asyncio.StreamWriter) -> None:
        """Close after what is buffered is sent; a peer that does not read gets it aborted."""
        writer.close()
        try:
            await asyncio.wait_for(writer.wait_closed(), self._connect_timeout)
        except (OSError, asyncio.TimeoutError):
            writer.transport.abort()


async def run_forever(
    proxy: EgressProxy, host: str, port: int, ready: Callable[[Tuple[str, int]], None]
) -> None:
    """Start `proxy`, tell `ready` the bound address (the host agent turns it into the ready
    line the launcher waits for), and serve until cancelled; then close it."""
    address = await proxy.start(host, port)
    try:
        ready(address)
        await asyncio.get_running_loop().create_future()
    finally:
        await proxy.close()
