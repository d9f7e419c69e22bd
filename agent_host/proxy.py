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
- The proxy resolves names once, itself, and connects to exactly those addresses: nothing later
  gets the name and a chance to resolve it differently. IP literals are never resolved.
- A forwarded plain-HTTP request goes out in origin-form with the proxy's own headers and every
  hop-by-hop header removed, its Host set from the request target (RFC 9112 3.2.2), and
  `Connection: close`: one request per proxied connection.

Python 3.9 compatible, stdlib only (runs on hosts).
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import re
import socket
import sys
from dataclasses import dataclass
from typing import Awaitable, Callable, List, Optional, Set, Tuple

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
    """The client's request is malformed: it gets a 400 and is not recorded."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


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
# replaced from the target. Transfer-Encoding and Trailer stay: the body is relayed as sent.
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
# What a Connection header may not get dropped by naming it: the upstream needs them to find the
# end of the body.
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
    proxy's and hop-by-hop headers (and any the Connection header names) removed, and
    `Connection: close`."""
    assert target.path is not None
    dropped = set(_DROPPED)
    for name, value in request.headers:
        if name.lower() in ("connection", "proxy-connection"):
            named = {token.strip().lower() for token in value.split(",")}
            dropped.update(named - _FRAMING)
    host = host_port(target.host, target.port)
    if target.port == 80:
        host = host[: host.rindex(":")]
    lines = ["%s %s %s" % (request.method, target.path, request.version), "Host: " + host]
    lines += ["%s: %s" % (n, v) for n, v in request.headers if n.lower() not in dropped]
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


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
    `head_timeout` bounds reading the request head and, after a refusal, waiting for the client
    to go (so the reply is read rather than reset)."""

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
    ) -> None:
        # Only the session's own network may use it (its key, its rules): where the engine lets
        # an internal network reach other host addresses (docker < 25), other sandboxes could.
        self._peers = None if peers is None else ipaddress.ip_network(peers)
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

    async def start(self, host: str, port: int) -> Tuple[str, int]:
        """Listen on host:port (port 0: any free one); the bound address."""
        if self._server is not None or self._closing:
            raise RuntimeError("the proxy was already started")
        self._server = await asyncio.start_server(self._accept, host, port)
        sockname = self._server.sockets[0].getsockname()
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
            if not outcome.allowed:
                await self._refuse(reader, writer, denied(target.host, target.port, outcome.rule))
                return
            try:
                tls = (
                    routed is not None and self._model is not None and self._model.scheme == "https"
                )
                up_reader, up_writer = await self._open(target, target.host if tls else None)
            except _Unreachable as exc:
                outcome.error = str(exc)
                await self._refuse(reader, writer, bad_gateway(target.host, target.port, str(exc)))
                return
            except asyncio.CancelledError:
                outcome.error = "the proxy closed"
                raise
            try:
                if target.path is None:
                    writer.write(CONNECTED)
                elif routed is not None and self._model is not None:
                    up_writer.write(model_head(request, target, self._model))
                else:
                    up_writer.write(rewrite_head(request, target))
                if rest:
                    up_writer.write(rest)
                    outcome.bytes_up += len(rest)
                await self._relay(reader, writer, up_reader, up_writer, outcome)
                await self._close_gracefully(up_writer)
                await self._close_gracefully(writer)
            finally:
                up_writer.transport.abort()
        finally:
            self._emit(outcome)

    def _ask(self, target: Target) -> Tuple[bool, str]:
        """decide(), failing closed: a policy that raises denies."""
        try:
            allowed, rule = self._decide(target.host, target.port)
        except Exception as exc:
            _log("decide failed for %s: %r" % (host_port(target.host, target.port), exc))
            return False, "policy error"
        return bool(allowed), str(rule)

    def _emit(self, outcome: _Outcome) -> None:
        try:
            self._record(outcome.record())
        except Exception as exc:
            _log("record failed: %r" % (exc,))

    async def _addresses(self, target: Target) -> List[Tuple[str, int]]:
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
        return addresses[:MAX_ADDRESSES]

    async def _open(self, target: Target, tls_name: Optional[str] = None) -> Streams:
        """Connect to the target's addresses in order; the first that answers."""
        failures = []
        for ip, port in await self._addresses(target):
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
