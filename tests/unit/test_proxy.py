"""The egress proxy over real sockets on loopback: an upstream server and clients in the test's
own event loop. Nothing waits on time: every step waits on a reply, an EOF or a record.

The proxy listens on 127.0.0.2 and the upstreams on 127.0.0.1: the proxy never connects to its
own address, nor to loopback, except where a test exempts it (`exempt`, as the `start` fixture
does by default for 127.0.0.1 and ::1); the address tests run without the exemption."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_host.proxy import (
    BadRequest,
    ConnectionRecord,
    EgressProxy,
    Request,
    Target,
    host_port,
    parse_head,
    parse_target,
    rewrite_head,
    run_forever,
)

T = TypeVar("T")
SAFETY = 10.0  # a bound that turns a hang into a failure; no step is expected to come near it
PROXY_HOST = "127.0.0.2"  # where the proxy under test listens (on Linux all of 127/8 is local)
LOOPBACK_UPSTREAMS = ("127.0.0.1/32", "::1/128")  # exempted by default: the upstreams live there


async def within(awaitable: Awaitable[T]) -> T:
    return await asyncio.wait_for(awaitable, SAFETY)


# -- the upstream ----------------------------------------------------------------------------
Handler = Callable[["Upstream", asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Upstream:
    """A TCP server on 127.0.0.1 that counts what it accepts and keeps what it was sent."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.accepted = 0
        self.received: list[bytes] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self.server: asyncio.base_events.Server | None = None
        self.port = 0

    async def start(self) -> Upstream:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = int(self.server.sockets[0].getsockname()[1])
        return self

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        task = asyncio.get_running_loop().create_task(self._run(reader, writer))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _run(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self.handler(self, reader, writer)
        except OSError:
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.server.wait_closed()


async def echo_at_eof(up: Upstream, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    """Read everything until the client's EOF, then answer: only works if half-close is relayed."""
    data = await reader.read()
    up.received.append(data)
    w.write(b"echo:" + data)
    await w.drain()


async def echo_live(up: Upstream, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    """Echo each chunk as it comes, until EOF."""
    while True:
        data = await reader.read(65536)
        if not data:
            return
        up.received.append(data)
        w.write(data)
        await w.drain()


HTTP_REPLY = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"


async def http_origin(up: Upstream, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    """One HTTP request: the head and a Content-Length body are kept, then a fixed reply."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    body = await reader.readexactly(length)
    up.received.append(head + body)
    w.write(HTTP_REPLY)
    await w.drain()


@pytest.fixture
async def echo() -> AsyncIterator[Upstream]:
    upstream = await Upstream(echo_at_eof).start()
    yield upstream
    await upstream.close()


@pytest.fixture
async def live() -> AsyncIterator[Upstream]:
    upstream = await Upstream(echo_live).start()
    yield upstream
    await upstream.close()


@pytest.fixture
async def origin() -> AsyncIterator[Upstream]:
    upstream = await Upstream(http_origin).start()
    yield upstream
    await upstream.close()


@pytest.fixture
def refusing_port() -> Any:
    """A port on 127.0.0.1 bound but not listening: a connection to it is refused, and no other
    process can take it while the test runs."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    yield sock.getsockname()[1]
    sock.close()


# -- the proxy under test --------------------------------------------------------------------
class Records:
    """The record sink: a list, and a queue to wait on. The proxy calls it on a thread of its
    own: the record reaches the test's loop through call_soon_threadsafe."""

    def __init__(self) -> None:
        self.all: list[ConnectionRecord] = []
        self.queue: asyncio.Queue[ConnectionRecord] = asyncio.Queue()
        self.loop = asyncio.get_running_loop()

    def __call__(self, record: ConnectionRecord) -> None:
        self.all.append(record)
        self.loop.call_soon_threadsafe(self.queue.put_nowait, record)

    async def next(self) -> ConnectionRecord:
        return await within(self.queue.get())


class Policy:
    """Allows the hosts in `allow`, denies the rest; remembers what it was asked. Its rule text
    is `rule`, or by default a rule's that names the host and port asked (as `str(Rule)` does):
    a CONNECT to any port goes through it."""

    def __init__(self, *allow: str, rule: str | None = None) -> None:
        self.allow = set(allow)
        self.rule = rule
        self.asked: list[tuple[str, int]] = []

    def __call__(self, host: str, port: int) -> tuple[bool, str]:
        self.asked.append((host, port))
        return host in self.allow, self.rule or rule_for(host, port)


def rule_for(host: str, port: int) -> str:
    return f"allow {host_port(host, port)} (test)"


class Running:
    def __init__(self, proxy: EgressProxy, address: tuple[str, int], records: Records) -> None:
        self.proxy = proxy
        self.address = address
        self.records = records

    async def open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await within(asyncio.open_connection(*self.address))

    async def exchange(self, data: bytes, eof: bool = False) -> bytes:
        """Send `data` (and an EOF if asked), then read everything until the proxy's EOF."""
        reader, writer = await self.open()
        try:
            writer.write(data)
            if eof:
                writer.write_eof()
            await within(writer.drain())
            return await within(reader.read())
        finally:
            writer.close()


Start = Callable[..., Awaitable[Running]]


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    """Start a proxy on 127.0.0.1 (`decide` and any EgressProxy keyword); closed at the end."""
    proxies: list[EgressProxy] = []

    async def go(decide: Any, record: Any = None, **kw: Any) -> Running:
        records = Records()
        kw.setdefault("exempt", LOOPBACK_UPSTREAMS)
        proxy = EgressProxy(decide, record if record is not None else records, **kw)
        proxies.append(proxy)
        address = await proxy.start(PROXY_HOST, 0)
        return Running(proxy, address, records)

    yield go
    for proxy in proxies:
        await proxy.close()


def split_reply(data: bytes) -> tuple[str, dict[str, str], bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return lines[0], headers, body


def proxy_tasks() -> list[asyncio.Task[Any]]:
    """The proxy's own connection tasks still pending in this loop."""
    return [
        task
        for task in asyncio.all_tasks()
        if not task.done() and "EgressProxy." in task.get_coro().__qualname__  # type: ignore[union-attr]
    ]


# -- CONNECT ---------------------------------------------------------------------------------
async def test_an_allowed_connect_reaches_the_upstream_and_is_recorded(
    start: Start, echo: Upstream
) -> None:
    running = await start(Policy("127.0.0.1", rule=f"allow 127.0.0.1:{echo.port} (--allow)"))
    reader, writer = await running.open()
    writer.write(b"CONNECT 127.0.0.1:%d HTTP/1.1\r\nHost: x\r\n\r\n" % echo.port)
    assert await within(reader.readuntil(b"\r\n\r\n")) == (
        b"HTTP/1.1 200 Connection established\r\n\r\n"
    )
    payload = b"hello through the tunnel" * 100
    writer.write(payload)
    writer.write_eof()  # the upstream answers only at EOF: the half-close must be passed on
    answer = await within(reader.read())
    writer.close()
    assert answer == b"echo:" + payload
    assert echo.received == [payload]
    record = await running.records.next()
    assert record == ConnectionRecord(
        host="127.0.0.1",
        port=echo.port,
        allowed=True,
        rule=f"allow 127.0.0.1:{echo.port} (--allow)",
        bytes_up=len(payload),
        bytes_down=len(answer),
        error=None,
    )


async def test_bytes_sent_with_the_connect_head_are_forwarded_and_counted(
    start: Start, echo: Upstream
) -> None:
    running = await start(Policy("127.0.0.1"))
    data = await running.exchange(b"CONNECT 127.0.0.1:%d HTTP/1.1\r\n\r\nearly" % echo.port, True)
    assert data == b"HTTP/1.1 200 Connection established\r\n\r\necho:early"
    record = await running.records.next()
    assert (record.bytes_up, record.bytes_down) == (5, 10)


async def test_a_denied_connect_gets_403_and_never_reaches_the_upstream(
    start: Start, echo: Upstream
) -> None:
    def policy(host: str, port: int) -> tuple[bool, str]:
        return (True, rule_for(host, port)) if host == "127.0.0.1" else (False, "default deny")

    running = await start(policy)
    data = await running.exchange(b"CONNECT localhost:%d HTTP/1.1\r\n\r\nsecret" % echo.port)
    status, headers, body = split_reply(data)
    assert status == "HTTP/1.1 403 Forbidden"
    assert headers["x-jackin-egress"] == "denied"
    assert body == b"jackin egress: localhost:%d denied by default deny\n" % echo.port
    assert await running.records.next() == ConnectionRecord(
        "localhost", echo.port, False, "default deny", 0, 0, None
    )
    # An allowed connection to the same upstream after it: connections are accepted in order,
    # so a connection the denied request had made would be counted before this one.
    assert await running.exchange(b"CONNECT 127.0.0.1:%d HTTP/1.1\r\n\r\n" % echo.port, True)
    assert echo.accepted == 1
    assert echo.received == [b""]


async def test_a_rule_text_is_made_safe_in_the_403_body(start: Start) -> None:
    running = await start(Policy(rule="deny \x1b[31mred\x1b[0m\r\nX-Injected: yes\u202e"))
    data = await running.exchange(b"CONNECT example.com:443 HTTP/1.1\r\n\r\n")
    status, headers, body = split_reply(data)
    assert status == "HTTP/1.1 403 Forbidden"
    assert "x-injected" not in headers
    assert body == b"jackin egress: example.com:443 denied by deny [31mred[0mX-Injected: yes\n"
    record = await running.records.next()
    assert record.rule.startswith("deny \x1b")  # the record keeps what decide() said


async def test_a_policy_that_raises_denies(start: Start) -> None:
    def broken(host: str, port: int) -> tuple[bool, str]:
        raise RuntimeError("bug")

    running = await start(broken)
    data = await running.exchange(b"CONNECT example.com:443 HTTP/1.1\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 403 ")
    record = await running.records.next()
    assert (record.allowed, record.rule) == (False, "policy error")


async def test_an_ipv6_literal_target_is_decided_in_canonical_form(start: Start) -> None:
    policy = Policy()
    running = await start(policy)
    await running.exchange(b"CONNECT [0:0::1]:443 HTTP/1.1\r\n\r\n")
    await running.exchange(b"CONNECT [::FFFF:127.0.0.1]:443 HTTP/1.1\r\n\r\n")
    await running.exchange(b"CONNECT Example.COM.:443 HTTP/1.1\r\n\r\n")
    assert policy.asked == [("::1", 443), ("127.0.0.1", 443), ("example.com", 443)]
    await running.proxy.close()
    assert sorted(record.host for record in running.records.all) == [
        "127.0.0.1",
        "::1",
        "example.com",
    ]


# -- plain HTTP ------------------------------------------------------------------------------
async def test_an_absolute_form_request_goes_upstream_in_origin_form(
    start: Start, origin: Upstream
) -> None:
    running = await start(Policy("127.0.0.1"))
    body = b'{"a": 1}'
    request = (
        b"POST http://127.0.0.1:%d/path/x?q=1&r=2 HTTP/1.1\r\n"
        b"Host: evil.example\r\n"
        b"Proxy-Authorization: Basic c2VjcmV0\r\n"
        b"Proxy-Connection: keep-alive\r\n"
        b"Connection: keep-alive, X-Hop\r\n"
        b"X-Hop: hop\r\n"
        b"Keep-Alive: timeout=5\r\n"
        b"User-Agent: test/1\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (origin.port, len(body), body)
    )
    data = await running.exchange(request)
    assert data == HTTP_REPLY
    (sent,) = origin.received
    head, _, sent_body = sent.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /path/x?q=1&r=2 HTTP/1.1"
    assert sorted(lines[1:]) == sorted(
        [
            b"Host: 127.0.0.1:%d" % origin.port,
            b"User-Agent: test/1",
            b"Content-Length: %d" % len(body),
            b"Connection: close",
        ]
    )
    assert b"c2VjcmV0" not in sent and b"hop" not in sent.lower()
    assert sent_body == body
    record = await running.records.next()
    assert (record.allowed, record.host, record.port) == (True, "127.0.0.1", origin.port)
    assert (record.bytes_up, record.bytes_down) == (len(body), len(HTTP_REPLY))


async def test_a_request_without_host_gets_one_and_an_empty_path_is_slash(
    start: Start, origin: Upstream
) -> None:
    running = await start(Policy("127.0.0.1"))
    data = await running.exchange(b"GET http://127.0.0.1:%d HTTP/1.0\r\n\r\n" % origin.port)
    assert data == HTTP_REPLY
    (sent,) = origin.received
    assert sent == (
        b"GET / HTTP/1.0\r\nHost: 127.0.0.1:%d\r\nConnection: close\r\n\r\n" % origin.port
    )


async def test_a_denied_plain_request_gets_the_same_403(start: Start, origin: Upstream) -> None:
    running = await start(Policy(rule="no"))
    data = await running.exchange(b"GET http://Example.com/ HTTP/1.1\r\nHost: x\r\n\r\n")
    status, headers, body = split_reply(data)
    assert (status, headers["x-jackin-egress"]) == ("HTTP/1.1 403 Forbidden", "denied")
    assert body == b"jackin egress: example.com:80 denied by no\n"
    assert await running.records.next() == ConnectionRecord(
        "example.com", 80, False, "no", 0, 0, None
    )


def test_rewrite_head_drops_what_connection_names_but_never_the_framing() -> None:
    request = Request(
        "GET",
        "http://[::1]/",
        "HTTP/1.1",
        (("Connection", "Content-Length, TE, x-a"), ("Content-Length", "3"), ("X-A", "1")),
    )
    head = rewrite_head(request, Target("::1", 80, "/"))
    assert (
        head == b"GET / HTTP/1.1\r\nHost: [::1]\r\nContent-Length: 3\r\nConnection: close\r\n\r\n"
    )


# -- resolving -------------------------------------------------------------------------------
async def test_names_are_resolved_by_the_proxy(start: Start, echo: Upstream) -> None:
    """The system resolver may give ::1 first; the upstream listens on 127.0.0.1 only, so this
    also shows the addresses being tried in order."""
    policy = Policy("localhost")
    running = await start(policy)
    data = await running.exchange(b"CONNECT LOCALHOST.:%d HTTP/1.1\r\n\r\nhi" % echo.port, True)
    assert data.endswith(b"echo:hi")
    assert policy.asked == [("localhost", echo.port)]
    assert (await running.records.next()).host == "localhost"
    assert echo.received == [b"hi"]


async def test_a_given_resolver_is_used_and_its_addresses_tried_in_order(
    start: Start, echo: Upstream, refusing_port: int
) -> None:
    asked: list[tuple[str, int]] = []

    async def resolve(host: str, port: int) -> list[tuple[str, int]]:
        asked.append((host, port))
        return [("127.0.0.1", refusing_port), ("127.0.0.1", echo.port)]

    running = await start(Policy("pkg.example"), resolve=resolve)
    data = await running.exchange(b"CONNECT pkg.example:443 HTTP/1.1\r\n\r\nhi", True)
    assert data == b"HTTP/1.1 200 Connection established\r\n\r\necho:hi"
    assert asked == [("pkg.example", 443)]
    record = await running.records.next()
    assert (record.host, record.port, record.error) == ("pkg.example", 443, None)


async def test_an_ip_literal_is_never_resolved(start: Start, echo: Upstream) -> None:
    async def resolve(host: str, port: int) -> list[tuple[str, int]]:
        raise AssertionError("resolved an IP literal")

    running = await start(Policy("127.0.0.1"), resolve=resolve)
    data = await running.exchange(b"CONNECT 127.0.0.1:%d HTTP/1.1\r\n\r\n" % echo.port, True)
    assert data.endswith(b"echo:")


async def test_a_refused_connection_is_502_and_recorded_with_the_error(
    start: Start, refusing_port: int
) -> None:
    running = await start(Policy("127.0.0.1"))
    data = await running.exchange(b"CONNECT 127.0.0.1:%d HTTP/1.1\r\n\r\n" % refusing_port)
    status, headers, body = split_reply(data)
    assert (status, headers["x-jackin-egress"]) == ("HTTP/1.1 502 Bad Gateway", "unreachable")
    assert body == b"jackin egress: 127.0.0.1:%d unreachable: %s\n" % (
        refusing_port,
        f"connect failed: 127.0.0.1:{refusing_port} (Connection refused)".encode(),
    )
    record = await running.records.next()
    assert record.allowed is True
    assert record.error == f"connect failed: 127.0.0.1:{refusing_port} (Connection refused)"


@pytest.mark.parametrize(
    ("failure", "error"),
    [
        (OSError(-2, "Name or service not known"), "resolve failed: Name or service not known"),
        (None, "resolve failed: no address"),
    ],
)
async def test_a_failed_resolve_is_502_and_recorded(
    start: Start, failure: OSError | None, error: str
) -> None:
    async def resolve(host: str, port: int) -> list[tuple[str, int]]:
        if failure is not None:
            raise failure
        return [("not-an-address", 443)]

    running = await start(Policy("nowhere.example"), resolve=resolve)
    data = await running.exchange(b"GET http://nowhere.example/ HTTP/1.1\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 502 Bad Gateway\r\n")
    record = await running.records.next()
    assert (record.allowed, record.error) == (True, error)


# -- malformed requests ----------------------------------------------------------------------
MALFORMED = [
    b"garbage\r\n\r\n",
    b"\r\nCONNECT example.com:443 HTTP/1.1\r\n\r\n",
    b"CONNECT example.com:443 HTTP/2.0\r\n\r\n",
    b"CONNECT example.com:443 http/1.1\r\n\r\n",
    b"CONNECT  example.com:443 HTTP/1.1\r\n\r\n",
    b"CONNECT example.com:443 HTTP/1.1\r\nX: a\x01b\r\n\r\n",
    b"CONNECT example.com:443 HTTP/1.1\r\nX: a\tb\r\n\r\n",
    b"CONNECT example.com:443 HTTP/1.1\r\nX: a\nY: b\r\n\r\n",
    b"CONNECT example.com:443 HTTP/1.1\r\nX: a\rY: b\r\n\r\n",
    b"CONNECT example.com:443 HTTP/1.1\r\nX : a\r\n\r\n",
    b"CONNECT example.com:443 HTTP/1.1\r\nX: a\r\n folded\r\n\r\n",
    b"CONNECT example.com:443 HTTP/1.1\r\nno colon\r\n\r\n",
    b"GET https://example.com/ HTTP/1.1\r\n\r\n",
    b"GET ftp://example.com/ HTTP/1.1\r\n\r\n",
    b"GET /index.html HTTP/1.1\r\nHost: example.com\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\n\r\n",
    b"GET http://user@example.com/ HTTP/1.1\r\n\r\n",
    b"GET http://example.com/#frag HTTP/1.1\r\n\r\n",
    b"GET http://example.com:/ HTTP/1.1\r\n\r\n",
    b"connect example.com:443 HTTP/1.1\r\n\r\n",
    b"CONNECT example.com HTTP/1.1\r\n\r\n",
    b"CONNECT example.com:0 HTTP/1.1\r\n\r\n",
    b"CONNECT example.com:65536 HTTP/1.1\r\n\r\n",
    b"CONNECT example.com:abc HTTP/1.1\r\n\r\n",
    b"CONNECT example.com:+443 HTTP/1.1\r\n\r\n",
    b"CONNECT example.com:443:1 HTTP/1.1\r\n\r\n",
    b"CONNECT exa mple.com:443 HTTP/1.1\r\n\r\n",
    b"CONNECT a..b.com:443 HTTP/1.1\r\n\r\n",
    b"CONNECT .example.com:443 HTTP/1.1\r\n\r\n",
    b"CONNECT example.com..:443 HTTP/1.1\r\n\r\n",
    b"CONNECT -example.com:443 HTTP/1.1\r\n\r\n",
    b"CONNECT under_score.com:443 HTTP/1.1\r\n\r\n",
    b"CONNECT %s.com:443 HTTP/1.1\r\n\r\n" % (b"a" * 64),
    b"CONNECT %s:443 HTTP/1.1\r\n\r\n" % b".".join([b"a" * 63] * 4),
    b"CONNECT caf\xc3\xa9.com:443 HTTP/1.1\r\n\r\n",
    b"CONNECT 127.1:443 HTTP/1.1\r\n\r\n",
    b"CONNECT 2130706433:443 HTTP/1.1\r\n\r\n",
    b"CONNECT 0x7f000001:443 HTTP/1.1\r\n\r\n",
    b"CONNECT 0x7f.0x1:443 HTTP/1.1\r\n\r\n",
    b"CONNECT 127.000.0.1:443 HTTP/1.1\r\n\r\n",
    b"CONNECT ::1:443 HTTP/1.1\r\n\r\n",
    b"CONNECT [::1:443 HTTP/1.1\r\n\r\n",
    b"CONNECT [::1]x:443 HTTP/1.1\r\n\r\n",
    b"CONNECT [fe80::1%25eth0]:443 HTTP/1.1\r\n\r\n",
    b"CONNECT [127.0.0.1]:443 HTTP/1.1\r\n\r\n",
    b"CONNECT :443 HTTP/1.1\r\n\r\n",
]


async def test_malformed_requests_get_400_and_are_not_recorded(start: Start) -> None:
    policy = Policy("example.com", "127.0.0.1")
    running = await start(policy)
    replies = await asyncio.gather(*(running.exchange(data) for data in MALFORMED))
    for data, reply in zip(MALFORMED, replies, strict=True):
        status, _, body = split_reply(reply)
        assert status == "HTTP/1.1 400 Bad Request", data
        assert body.startswith(b"jackin egress: bad request: "), data
    await running.proxy.close()  # every handler has ended: any record would be in by now
    assert running.records.all == []
    assert policy.asked == []


async def test_a_head_over_the_limit_is_400(start: Start) -> None:
    running = await start(Policy(), head_limit=1024)
    request = b"CONNECT example.com:443 HTTP/1.1\r\nX-Pad: " + b"a" * 4096 + b"\r\n\r\n"
    assert (await running.exchange(request)).startswith(b"HTTP/1.1 400 Bad Request\r\n")
    # Just under the limit is read and decided (denied).
    fits = b"CONNECT example.com:443 HTTP/1.1\r\nX-Pad: " + b"a" * 900 + b"\r\n\r\n"
    assert len(fits) <= 1024
    assert (await running.exchange(fits)).startswith(b"HTTP/1.1 403 Forbidden\r\n")


async def test_a_client_speaking_something_else_is_refused_at_once(start: Start) -> None:
    """A TLS hello (no CRLF in it) is refused without waiting for the head timeout."""
    running = await start(Policy(), head_timeout=3600.0)
    hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(32))
    assert (await running.exchange(hello)).startswith(b"HTTP/1.1 400 Bad Request\r\n")
    # And a bad first line is refused as soon as it ends, before the head does.
    reader, writer = await running.open()
    writer.write(b"SSH-2.0-OpenSSH_9.6\r\n")
    assert (await within(reader.read())).startswith(b"HTTP/1.1 400 Bad Request\r\n")
    writer.close()


async def test_an_incomplete_head_times_out_with_400(start: Start) -> None:
    running = await start(Policy(), head_timeout=0.05)
    reader, writer = await running.open()
    writer.write(b"CONNECT example.com:443 HTTP/1.1\r\n")  # and never the blank line
    reply = await within(reader.read())
    writer.close()
    assert reply.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"in time" in reply


# -- robustness ------------------------------------------------------------------------------
async def test_a_record_callback_that_raises_does_not_stop_the_proxy(
    start: Start, echo: Upstream, capsys: pytest.CaptureFixture[str]
) -> None:
    seen: list[ConnectionRecord] = []

    def record(entry: ConnectionRecord) -> None:
        seen.append(entry)
        raise RuntimeError("sink down")

    running = await start(Policy("127.0.0.1"), record=record)
    assert (await running.exchange(b"CONNECT 10.0.0.1:443 HTTP/1.1\r\n\r\n")).startswith(
        b"HTTP/1.1 403"
    )
    data = await running.exchange(b"CONNECT 127.0.0.1:%d HTTP/1.1\r\n\r\nok" % echo.port, True)
    assert data.endswith(b"echo:ok")
    await running.proxy.close()
    assert sorted(entry.allowed for entry in seen) == [False, True]
    assert capsys.readouterr().err.count("record failed") == 2


async def test_many_clients_at_once_and_a_stalled_one_does_not_hold_them_up(
    start: Start, echo: Upstream
) -> None:
    running = await start(Policy("127.0.0.1"))
    _, stalled = await running.open()
    stalled.write(b"CONNECT 127.0.0.1:%d HTTP/1.1\r\n" % echo.port)  # half a head, then nothing

    async def one(index: int) -> bytes:
        payload = b"client %d " % index * 50
        return await running.exchange(
            b"CONNECT 127.0.0.1:%d HTTP/1.1\r\n\r\n%s" % (echo.port, payload), True
        )

    replies = await asyncio.gather(*(one(i) for i in range(40)))
    for index, data in enumerate(replies):
        assert data.endswith(b"echo:" + b"client %d " % index * 50)
    assert sorted(r.bytes_up for r in [await running.records.next() for _ in range(40)]) == sorted(
        len(b"client %d " % i * 50) for i in range(40)
    )
    stalled.close()


async def ended(reader: asyncio.StreamReader) -> bool:
    """The proxy closed this connection: an EOF, or a reset if it never got to accept it."""
    try:
        return await within(reader.read()) == b""
    except ConnectionResetError:
        return True


async def test_close_ends_open_connections_and_leaves_no_task(start: Start, live: Upstream) -> None:
    resolving: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def resolve(host: str, port: int) -> list[tuple[str, int]]:
        resolving.set_result(None)
        await asyncio.get_running_loop().create_future()  # never answers
        raise AssertionError("unreachable")

    running = await start(Policy("127.0.0.1", "slow.example"), resolve=resolve)
    tunnel_reader, tunnel = await running.open()
    tunnel.write(b"CONNECT 127.0.0.1:%d HTTP/1.1\r\n\r\nping" % live.port)
    expected = b"HTTP/1.1 200 Connection established\r\n\r\nping"
    assert await within(tunnel_reader.readexactly(len(expected))) == expected
    stuck_reader, stuck = await running.open()
    stuck.write(b"CONNECT slow.example:443 HTTP/1.1\r\n\r\n")
    await within(resolving)
    half_reader, half = await running.open()
    half.write(b"CONNECT 127.0.0.1:%d HTTP/1.1\r\n" % live.port)
    await within(half.drain())

    await within(running.proxy.close())

    assert proxy_tasks() == []
    assert await ended(tunnel_reader)
    assert await ended(stuck_reader)
    assert await ended(half_reader)
    records = sorted(running.records.all, key=lambda record: record.host)
    assert records == [
        ConnectionRecord("127.0.0.1", live.port, True, rule_for("127.0.0.1", live.port), 4, 4,
                         None),
        ConnectionRecord("slow.example", 443, True, rule_for("slow.example", 443), 0, 0,
                         "the proxy closed"),
    ]  # fmt: skip
    with pytest.raises(OSError):
        await asyncio.open_connection(*running.address)
    for writer in (tunnel, stuck, half):
        writer.close()


async def test_run_forever_reports_its_address_then_serves_until_cancelled(echo: Upstream) -> None:
    records = Records()
    proxy = EgressProxy(Policy("127.0.0.1"), records, exempt=LOOPBACK_UPSTREAMS)
    ready: asyncio.Future[tuple[str, int]] = asyncio.get_running_loop().create_future()
    task = asyncio.ensure_future(run_forever(proxy, PROXY_HOST, 0, ready.set_result))
    host, port = await within(ready)
    assert host == PROXY_HOST and port > 0
    reader, writer = await within(asyncio.open_connection(host, port))
    writer.write(b"CONNECT 127.0.0.1:%d HTTP/1.1\r\n\r\nx" % echo.port)
    writer.write_eof()
    assert (await within(reader.read())).endswith(b"echo:x")
    writer.close()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await within(task)
    assert proxy_tasks() == []
    with pytest.raises(OSError):
        await asyncio.open_connection(host, port)


# -- the parsers on any input ----------------------------------------------------------------
TARGET_CHARS = st.sampled_from([*"abcXYZ019.-:[]_/@?#%*+ \x00\x1b\n", "::", "http://"])


@settings(max_examples=300, deadline=None)
@given(
    method=st.sampled_from(["CONNECT", "GET", "connect"]),
    target=st.one_of(st.text(max_size=60), st.lists(TARGET_CHARS, max_size=20).map("".join)),
)
def test_parse_target_raises_only_bad_request(method: str, target: str) -> None:
    try:
        parsed = parse_target(method, target)
    except BadRequest:
        return
    assert 1 <= parsed.port <= 65535
    assert parsed.host == parsed.host.lower() and not parsed.host.endswith(".")
    assert (parsed.path is None) == (method == "CONNECT")
    # A parsed target parses again to itself.
    authority = f"[{parsed.host}]" if ":" in parsed.host else parsed.host
    again = parse_target("CONNECT", f"{authority}:{parsed.port}")
    assert (again.host, again.port) == (parsed.host, parsed.port)


LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
# A DNS label: a letter alone, or a letter, then letters, digits and hyphens, then no hyphen.
LABEL = st.one_of(
    st.sampled_from(LETTERS),
    st.builds(
        lambda first, middle, last: first + middle + last,
        st.sampled_from(LETTERS),
        st.text(LETTERS + "0123456789-", max_size=10),
        st.sampled_from([*LETTERS, *"0123456789"]),
    ),
)


@settings(max_examples=200, deadline=None)
@given(labels=st.lists(LABEL, min_size=1, max_size=5), port=st.integers(1, 65535))
def test_valid_names_parse_lowercased(labels: list[str], port: int) -> None:
    name = ".".join(labels)
    assert parse_target("CONNECT", f"{name}:{port}") == Target(name.lower(), port, None)
    assert parse_target("GET", f"http://{name}./x") == Target(name.lower(), 80, "/x")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200).map(lambda b: b + b"\r\n\r\n"))
def test_parse_head_raises_only_bad_request(head: bytes) -> None:
    try:
        request = parse_head(head)
    except BadRequest:
        return
    assert request.version in ("HTTP/1.0", "HTTP/1.1")


# -- the model route ---------------------------------------------------------------------------
async def test_the_model_route_adds_the_key_and_drops_the_sandboxes_credentials(
    start: Start, origin: Upstream
) -> None:
    from agent_host.proxy import MODEL_RULE, ModelRoute

    secret = "sk-canary-" + "7" * 20
    route = ModelRoute("http", "127.0.0.1", origin.port, "/gw", "x-api-key", secret)
    policy = Policy()  # allows nothing: the model route is not a destination the rules decide
    running = await start(policy, model=route)
    body = b'{"model":"m"}'
    request = (b"POST /jackin-model/v1/messages?beta=true HTTP/1.1\r\nHost: 10.0.0.1:3128\r\n"
               b"x-api-key: placeholder\r\nAuthorization: Bearer stolen\r\n"
               b"Content-Length: %d\r\n\r\n%s" % (len(body), body))  # fmt: skip
    answer = await running.exchange(request)
    assert answer == HTTP_REPLY
    (sent,) = origin.received
    head = sent.decode("latin-1")
    assert head.startswith("POST /gw/v1/messages?beta=true HTTP/1.1\r\n"), head
    assert f"x-api-key: {secret}\r\n" in head and "placeholder" not in head
    assert "Authorization" not in head and "stolen" not in head
    assert f"Host: 127.0.0.1:{origin.port}\r\n" in head and sent.endswith(body)
    record = await running.records.next()
    assert (record.host, record.port, record.allowed, record.rule) == (
        "127.0.0.1", origin.port, True, MODEL_RULE,
    )  # fmt: skip
    assert secret not in repr(record) and secret not in repr(route)
    assert policy.asked == []
    # A path that only looks like the route is not it: the proxy serves nothing else itself.
    refused = await running.exchange(b"GET /jackin-modelx/v1 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert refused.startswith(b"HTTP/1.1 400")


async def test_without_a_model_route_the_prefix_is_nothing_special(start: Start) -> None:
    running = await start(Policy())
    refused = await running.exchange(b"GET /jackin-model/v1 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert refused.startswith(b"HTTP/1.1 400")


async def test_the_model_route_refuses_other_methods_and_dot_segments(
    start: Start, origin: Upstream
) -> None:
    from agent_host.proxy import ModelRoute

    route = ModelRoute("http", "127.0.0.1", origin.port, "/v1", "x-api-key", "sk-secret-x")
    running = await start(Policy(), model=route)
    for head in (
        b"TRACE /jackin-model/messages HTTP/1.1\r\nHost: x\r\n\r\n",  # would echo the key back
        b"POST /jackin-model/../../admin/keys HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /jackin-model/%2e%2e/admin HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /jackin-model/a%2fb HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /jackin-model/./messages HTTP/1.1\r\nHost: x\r\n\r\n",
    ):
        answer = await running.exchange(head)
        assert answer.startswith(b"HTTP/1.1 400"), (head, answer)
        assert b"sk-secret-x" not in answer
    assert origin.accepted == 0


async def test_only_the_sessions_own_network_may_use_the_proxy(
    start: Start, echo: Upstream
) -> None:
    """Where the engine lets an internal network reach other host addresses (docker < 25),
    another session's sandbox could reach this proxy: it is cut off before a byte is read."""
    running = await start(Policy("127.0.0.1"), peers="10.213.0.0/24")
    reader, writer = await running.open()
    writer.write(b"CONNECT 127.0.0.1:%d HTTP/1.1\r\n\r\n" % echo.port)
    try:
        answer = await within(reader.read())
    except ConnectionResetError:
        answer = b""
    writer.close()
    assert answer == b"" and echo.accepted == 0 and running.records.all == []
    ours = await start(Policy("127.0.0.1"), peers="127.0.0.3/32")
    reader, writer = await within(asyncio.open_connection(*ours.address,
                                                          local_addr=("127.0.0.3", 0)))  # fmt: skip
    writer.write(b"CONNECT 127.0.0.1:%d HTTP/1.1\r\n\r\nhi" % echo.port)
    writer.write_eof()
    reply = await within(reader.read())
    writer.close()
    assert reply.endswith(b"echo:hi")


# -- CONNECT ports -----------------------------------------------------------------------------
def rules_policy(*patterns: str) -> Callable[[str, int], tuple[bool, str]]:
    """The proxy's real policy (agent_host.egress.decide) over `--allow` rules, as egressd
    builds it."""
    from agent_host.egress import Rule, decide, parse_pattern

    rules = [Rule("allow", parse_pattern(pattern), "--allow") for pattern in patterns]

    def policy(host: str, port: int) -> tuple[bool, str]:
        decision = decide(host, port, rules)
        return decision.allowed, decision.rule

    return policy


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
async def test_a_connect_off_443_through_a_portless_rule_is_denied_and_says_how_to_allow_it(
    start: Start, echo: Upstream, host: str
) -> None:
    shown = "[::1]" if host == "::1" else host
    running = await start(rules_policy(shown))
    target = host_port(host, echo.port).encode()
    data = await running.exchange(b"CONNECT %s HTTP/1.1\r\n\r\nsecret" % target, True)
    status, headers, body = split_reply(data)
    assert (status, headers["x-jackin-egress"]) == ("HTTP/1.1 403 Forbidden", "denied")
    assert body.decode() == (
        f"jackin egress: {shown}:{echo.port} denied: CONNECT goes to port 443 only, unless the "
        f"allow rule names the port (allow {shown} (--allow) names none): allow it with "
        f"--allow {shown}:{echo.port}\n"
    )
    assert await running.records.next() == ConnectionRecord(
        host, echo.port, False,
        f"CONNECT to port {echo.port} needs an allow rule naming that port; "
        f"allow {shown} (--allow) names none", 0, 0, None,
    )  # fmt: skip
    assert echo.accepted == 0


async def test_a_connect_through_a_rule_naming_the_port_is_opened(
    start: Start, echo: Upstream
) -> None:
    running = await start(rules_policy(f"127.0.0.1:{echo.port}"))
    data = await running.exchange(b"CONNECT 127.0.0.1:%d HTTP/1.1\r\n\r\nhi" % echo.port, True)
    assert data == b"HTTP/1.1 200 Connection established\r\n\r\necho:hi"
    assert (await running.records.next()).rule == f"allow 127.0.0.1:{echo.port} (--allow)"


async def test_a_connect_to_443_and_plain_http_to_any_port_need_no_port_in_the_rule(
    start: Start, echo: Upstream, origin: Upstream
) -> None:
    async def resolve(host: str, port: int) -> list[tuple[str, int]]:
        return [("127.0.0.1", echo.port)]  # pkg.example:443 is the echo server

    running = await start(rules_policy("pkg.example", "127.0.0.1"), resolve=resolve)
    data = await running.exchange(b"CONNECT pkg.example:443 HTTP/1.1\r\n\r\nhi", True)
    assert data.endswith(b"echo:hi")
    reply = await running.exchange(b"GET http://127.0.0.1:%d/ HTTP/1.1\r\n\r\n" % origin.port)
    assert reply == HTTP_REPLY


def test_rule_port_reads_the_port_from_a_rules_text_only() -> None:
    from agent_host.egress import DEFAULT_DENY, Rule, parse_pattern, rule_port

    for pattern in ("a.example.com", "*.example.com:22", "**.x.org:8443", "10.0.0.5", "[::1]:80"):
        parsed = parse_pattern(pattern)
        for action in ("allow", "deny"):
            text = str(Rule(action, parsed, "inventory /a (b) c.toml:3"))
            assert rule_port(text) == parsed.port, text
    for text in (DEFAULT_DENY, "test rule", "allow", "allow a.com:22", "allow a.com:22 src",
                 "policy error", "allow a.com:99999 (x)", "permit a.com:22 (x)", ""):  # fmt: skip
        assert rule_port(text) is None, text


# -- one request per connection, strictly framed -------------------------------------------------
async def read_request(reader: asyncio.StreamReader) -> bytes:
    """One request as the proxy sends it (it always frames with one Content-Length, or chunked
    ending in `0 CRLF CRLF`)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lower = head.lower()
    try:
        if b"\r\ntransfer-encoding: chunked\r\n" in lower:
            return head + await reader.readuntil(b"0\r\n\r\n")
        for line in lower.split(b"\r\n"):
            if line.startswith(b"content-length:"):
                return head + await reader.readexactly(int(line.split(b":", 1)[1]))
    except asyncio.IncompleteReadError as exc:
        raise asyncio.IncompleteReadError(head + exc.partial, None) from None
    return head


async def recorder(up: Upstream, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    """Keeps one request, answers it, then keeps whatever else comes until the proxy closes:
    `received` is [the request, everything after it]."""
    try:
        up.received.append(await read_request(reader))
    except asyncio.IncompleteReadError as exc:
        up.received.append(b"INCOMPLETE " + exc.partial)
        return
    w.write(HTTP_REPLY)
    await w.drain()
    up.received.append(await reader.read())


@pytest.fixture
async def recording() -> AsyncIterator[Upstream]:
    upstream = await Upstream(recorder).start()
    yield upstream
    await upstream.close()


async def test_a_pipelined_second_request_is_never_forwarded(
    start: Start, recording: Upstream
) -> None:
    port = recording.port
    running = await start(Policy("127.0.0.1"))
    first = b"GET http://127.0.0.1:%d/a HTTP/1.1\r\nConnection: keep-alive\r\n\r\n" % port
    smuggled = b"GET http://127.0.0.1:%d/admin HTTP/1.1\r\n\r\n" % port
    data = await running.exchange(first + smuggled)
    assert data == HTTP_REPLY  # one response, with Connection: close, then the proxy's EOF
    assert recording.received == [
        b"GET /a HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nConnection: close\r\n\r\n" % port,
        b"",
    ]
    assert recording.accepted == 1
    await running.proxy.close()
    assert len(running.records.all) == 1


@pytest.mark.parametrize(
    ("framing", "body", "sent"),
    [
        (b"Content-Length: 5", b"helloGET /admin HTTP/1.1\r\n\r\n", b"Content-Length: 5\r\n"
         b"Connection: close\r\n\r\nhello"),
        (b"Content-Length: 5\r\ncontent-length: 05", b"hello world", b"Content-Length: 5\r\n"
         b"Connection: close\r\n\r\nhello"),
        (b"Content-Length: 5, 5", b"hellohello", b"Content-Length: 5\r\nConnection: close\r\n"
         b"\r\nhello"),
        (b"Transfer-Encoding: Chunked", b"5;name=\"v a\";x\r\nhello\r\n1\r\n!\r\n0\r\n"
         b"X-Trailer: dropped\r\n\r\nGET /admin HTTP/1.1\r\n\r\n",
         b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n1\r\n!\r\n"
         b"0\r\n\r\n"),
    ],
)  # fmt: skip
async def test_exactly_the_framed_body_goes_upstream_reframed(
    start: Start, recording: Upstream, framing: bytes, body: bytes, sent: bytes
) -> None:
    running = await start(Policy("127.0.0.1"))
    head = b"POST http://127.0.0.1:%d/p HTTP/1.1\r\nTrailer: X-Trailer\r\n%s\r\n\r\n" % (
        recording.port, framing,
    )  # fmt: skip
    assert await running.exchange(head + body) == HTTP_REPLY
    assert recording.received == [
        b"POST /p HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n%s" % (recording.port, sent),
        b"",
    ]
    record = await running.records.next()
    assert record.bytes_up == len(sent.partition(b"\r\n\r\n")[2])


FRAMING_TRICKS = [
    b"Content-Length: 5\r\nTransfer-Encoding: chunked",
    b"Transfer-Encoding: chunked\r\nContent-Length: 5",
    b"Content-Length: 5\r\nContent-Length: 6",
    b"Content-Length: 5, 6",
    b"Content-Length: 5,",
    b"Content-Length: +5",
    b"Content-Length: -1",
    b"Content-Length: 0x5",
    b"Content-Length: 5 5",
    b"Content-Length: 5.0",
    b"Content-Length: ",
    b"Content-Length: 1234567890123456789",
    b"Content-Length: \xd9\xa5",  # a non-ASCII digit
    b"Transfer-Encoding: chunked, chunked",
    b"Transfer-Encoding: gzip, chunked",
    b"Transfer-Encoding: identity",
    b"Transfer-Encoding: xchunked",
    b"Transfer-Encoding: chunked;q=1",
    b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
    b'Transfer-Encoding: "chunked"',
    b"Transfer-Encoding : chunked",
    b"Transfer-Encoding:\tchunked",
    b"Transfer-Encoding: chunked\r\n identity",
    b"Transfer-Encoding:\r\n chunked",
    b"Transfer-Encoding: \x0bchunked",
    b"Transfer-Encoding\x00: chunked",
    b"Transfer_Encoding: chunked",
    b"Content_Length: 5",
    b" Transfer-Encoding: chunked",
]


@pytest.mark.parametrize("trick", FRAMING_TRICKS)
async def test_ambiguous_framing_is_400_before_anything_is_decided(
    start: Start, recording: Upstream, trick: bytes
) -> None:
    policy = Policy("127.0.0.1")
    running = await start(policy)
    request = b"POST http://127.0.0.1:%d/ HTTP/1.1\r\n%s\r\n\r\nhello" % (recording.port, trick)
    status, _, body = split_reply(await running.exchange(request))
    assert status == "HTTP/1.1 400 Bad Request", body
    await running.proxy.close()
    assert (policy.asked, running.records.all, recording.accepted) == ([], [], 0)


async def test_transfer_encoding_in_http_1_0_is_400(start: Start, recording: Upstream) -> None:
    running = await start(Policy("127.0.0.1"))
    request = b"POST http://127.0.0.1:%d/ HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    reply = await running.exchange(request % recording.port)
    assert reply.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"HTTP/1.0" in reply and recording.accepted == 0


@pytest.mark.parametrize(
    "body",
    [
        b"5\r\nhelloXX0\r\n\r\n",  # a chunk without its CRLF
        b"zz\r\nhello\r\n0\r\n\r\n",
        b"5 \r\nhello\r\n0\r\n\r\n",
        b" 5\r\nhello\r\n0\r\n\r\n",
        b"5\nhello\r\n0\r\n\r\n",  # a bare LF
        b"-5\r\nhello\r\n0\r\n\r\n",
        b"0x5\r\nhello\r\n0\r\n\r\n",
        b"5;a b\r\nhello\r\n0\r\n\r\n",
        b"11111111111111111\r\n",  # 17 hex digits
        b"5;" + b"x" * 5000 + b"\r\n",
        b"0\r\nBad Trailer: x\r\n\r\n",
        b"0\r\nX: a\x00b\r\n\r\n",
    ],
)
async def test_a_malformed_chunked_body_is_400_and_stops_there(
    start: Start, recording: Upstream, body: bytes
) -> None:
    running = await start(Policy("127.0.0.1"))
    head = b"POST http://127.0.0.1:%d/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
    reply = await running.exchange(head % recording.port + body, eof=True)
    assert reply.startswith(b"HTTP/1.1 400 Bad Request\r\n"), reply
    record = await running.records.next()
    assert record.allowed and (record.error or "").startswith("bad request body: "), record
    (sent,) = recording.received  # the upstream's request ended with the proxy's abort
    assert sent.startswith(b"INCOMPLETE POST / HTTP/1.1\r\n")
    assert not sent.endswith(b"0\r\n\r\n")


async def test_a_body_cut_short_by_the_client_is_400(start: Start, recording: Upstream) -> None:
    running = await start(Policy("127.0.0.1"))
    head = b"POST http://127.0.0.1:%d/ HTTP/1.1\r\nContent-Length: 10\r\n\r\nhello"
    reply = await running.exchange(head % recording.port, eof=True)
    assert reply.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"the body ended early" in reply
    assert (await running.records.next()).error == "bad request body: the body ended early"


def answering(answer: bytes, read_body: bool = True) -> Handler:
    """An upstream that sends `answer` to one request and then keeps its connection open (a
    keep-alive server): only the proxy's framing can end the exchange."""

    async def handler(up: Upstream, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        up.received.append(await (read_request(reader) if read_body
                                  else reader.readuntil(b"\r\n\r\n")))  # fmt: skip
        w.write(answer)
        await w.drain()
        up.received.append(await reader.read())

    return handler


@pytest.mark.parametrize(
    ("method", "answer", "expected"),
    [
        ("GET", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n"
         b"Keep-Alive: timeout=60\r\n\r\nokEXTRA",
         b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"),
        ("GET", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\n"
         b"3;x=y\r\nabc\r\n0\r\nX-T: t\r\n\r\nEXTRA",
         b"HTTP/1.1 200 OK\r\nX-A: 1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n"
         b"\r\n3\r\nabc\r\n0\r\n\r\n"),
        ("HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nEXTRA",
         b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nConnection: close\r\n\r\n"),
        ("GET", b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\nEXTRA",
         b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\nConnection: close\r\n\r\n"),
        ("GET", b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\n"
         b"Content-Length: 1\r\n\r\nxEXTRA",
         b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n"
         b"Connection: close\r\n\r\nx"),
    ],
)  # fmt: skip
async def test_the_response_goes_back_framed_with_connection_close_and_the_proxy_closes(
    start: Start, method: str, answer: bytes, expected: bytes
) -> None:
    upstream = await Upstream(answering(answer)).start()
    try:
        running = await start(Policy("127.0.0.1"))
        request = b"%s http://127.0.0.1:%d/ HTTP/1.1\r\n\r\n" % (method.encode(), upstream.port)
        assert await running.exchange(request) == expected
        record = await running.records.next()
        assert (record.bytes_down, record.error) == (len(expected), None)
    finally:
        await upstream.close()
    assert upstream.received[1:] == [b""]  # the proxy closed it: no second request


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nX: a\r\n folded\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nX: a\x00\r\n\r\nok",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n",
        b"HTTP/2 200\r\n\r\n",
        b"SSH-2.0-OpenSSH\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nok",  # then the upstream closes
    ],
)
async def test_a_response_that_cannot_be_framed_is_502_or_cut(start: Start, answer: bytes) -> None:
    async def once(up: Upstream, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        w.write(answer)
        await w.drain()

    upstream = await Upstream(once).start()
    try:
        running = await start(Policy("127.0.0.1"))
        data = await running.exchange(b"GET http://127.0.0.1:%d/ HTTP/1.1\r\n\r\n" % upstream.port)
        record = await running.records.next()
    finally:
        await upstream.close()
    assert (record.error or "").startswith("bad response: "), record
    if record.bytes_down == 0:
        assert data.startswith(b"HTTP/1.1 502 Bad Gateway\r\n")
    else:  # the head went: the body is cut short (the proxy never completes it)
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n") and head.endswith(b"Connection: close")
        assert body in (b"", b"ok")


async def test_a_response_read_to_the_close_is_relayed_whole(start: Start) -> None:
    async def once(up: Upstream, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        w.write(b"HTTP/1.0 200 OK\r\nX: 1\r\n\r\n" + b"body" * 50000)
        await w.drain()

    upstream = await Upstream(once).start()
    try:
        running = await start(Policy("127.0.0.1"))
        data = await running.exchange(b"GET http://127.0.0.1:%d/ HTTP/1.0\r\n\r\n" % upstream.port)
    finally:
        await upstream.close()
    assert data == b"HTTP/1.0 200 OK\r\nX: 1\r\nConnection: close\r\n\r\n" + b"body" * 50000


async def test_expect_100_continue_is_relayed_before_the_body(start: Start) -> None:
    async def continuing(
        up: Upstream, reader: asyncio.StreamReader, w: asyncio.StreamWriter
    ) -> None:
        await reader.readuntil(b"\r\n\r\n")
        w.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await w.drain()
        up.received.append(await reader.readexactly(5))
        w.write(HTTP_REPLY)
        await w.drain()

    upstream = await Upstream(continuing).start()
    try:
        running = await start(Policy("127.0.0.1"))
        reader, writer = await running.open()
        writer.write(b"PUT http://127.0.0.1:%d/ HTTP/1.1\r\nExpect: 100-continue\r\n"
                     b"Content-Length: 5\r\n\r\n" % upstream.port)  # fmt: skip
        assert await within(reader.readuntil(b"\r\n\r\n")) == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"hello")
        assert await within(reader.read()) == HTTP_REPLY
        writer.close()
    finally:
        await upstream.close()
    assert upstream.received == [b"hello"]


async def test_an_answer_before_the_body_ends_ends_the_exchange(start: Start) -> None:
    """A 413 before the body: the rest of the body is never sent, and the client gets the answer
    although it is still sending (the proxy drops it until the client goes)."""
    too_large = b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 0\r\n\r\n"
    upstream = await Upstream(answering(too_large, read_body=False)).start()
    try:
        running = await start(Policy("127.0.0.1"))
        reader, writer = await running.open()
        writer.write(b"POST http://127.0.0.1:%d/ HTTP/1.1\r\nContent-Length: 100000000\r\n\r\n"
                     % upstream.port + b"x" * 1000)  # fmt: skip
        answer = await within(reader.read())
        writer.close()
        record = await running.records.next()
    finally:
        await upstream.close()
    assert (
        answer
        == b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    assert record.error is None and record.bytes_up <= 1000


# -- resolved-address checks -------------------------------------------------------------------
REFUSED_ADDRESSES = [
    ("127.0.0.1", "127.0.0.1 is loopback"),
    ("127.8.9.10", "127.8.9.10 is loopback"),
    ("::1", "::1 is loopback"),
    ("169.254.169.254", "169.254.169.254 is link-local"),
    ("169.254.0.1", "169.254.0.1 is link-local"),
    ("fe80::1", "fe80::1 is link-local"),
    ("febf::1", "febf::1 is link-local"),
    ("0.0.0.0", "0.0.0.0 is unspecified"),
    ("0.1.2.3", "0.1.2.3 is unspecified"),
    ("::", ":: is unspecified"),
    ("224.0.0.1", "224.0.0.1 is multicast"),
    ("239.255.255.250", "239.255.255.250 is multicast"),
    ("ff02::1", "ff02::1 is multicast"),
    ("255.255.255.255", "255.255.255.255 is broadcast"),
    ("240.0.0.1", "240.0.0.1 is reserved"),
    ("100.100.100.200", "100.100.100.200 is cloud metadata"),
    ("fd00:ec2::254", "fd00:ec2::254 is cloud metadata"),
    ("::ffff:127.0.0.1", "127.0.0.1 (as ::ffff:"),
    ("::ffff:169.254.169.254", "169.254.169.254 (as ::ffff:"),
    ("::ffff:0.0.0.0", "0.0.0.0 (as ::ffff:"),
    ("::ffff:224.0.0.1", "224.0.0.1 (as ::ffff:"),
    ("::127.0.0.1", "127.0.0.1 is loopback (as ::7f00:1)"),
    ("::ffff:0:169.254.169.254", "169.254.169.254 is link-local (as ::ffff:0:a9fe:a9fe)"),
    ("64:ff9b::169.254.169.254", "169.254.169.254 is link-local (as 64:ff9b::a9fe:a9fe)"),
    ("2002:7f00:1::1", "127.0.0.1 is loopback (as 2002:7f00:1::1)"),
    ("2001:0:7f00:1::", "127.0.0.1 is loopback (as 2001:0:7f00:1::)"),  # a Teredo server
    ("100::1", "100::1 is reserved"),
]
PASSED_ADDRESSES = ["10.0.0.1", "172.16.5.4", "192.168.1.1", "192.0.2.2", "8.8.8.8",
                    "100.64.0.1", "2606:4700::1111", "fd12:3456::1", "::ffff:10.0.0.1"]  # fmt: skip


@pytest.mark.parametrize(("ip", "said"), REFUSED_ADDRESSES)
def test_address_refusal_refuses_every_bad_kind_and_its_ipv6_forms(ip: str, said: str) -> None:
    from agent_host.proxy import address_refusal

    why = address_refusal(ip)
    assert why is not None and why.startswith(said), why


@pytest.mark.parametrize("ip", PASSED_ADDRESSES)
def test_address_refusal_lets_private_and_public_addresses_through(ip: str) -> None:
    from agent_host.proxy import address_refusal

    assert address_refusal(ip) is None


def test_address_refusal_own_networks_win_over_an_exemption() -> None:
    import ipaddress

    from agent_host.proxy import address_refusal

    own = [(ipaddress.ip_network("10.213.0.0/24"), "in the session's own network")]
    everything = [ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")]
    assert address_refusal("10.213.0.7", own, everything) == (
        "10.213.0.7 is in the session's own network"
    )
    assert address_refusal("::ffff:10.213.0.1", own) is not None
    assert address_refusal("10.213.1.7", own) is None
    assert address_refusal("127.0.0.1", own, everything) is None  # the exemption, for tests


def resolving_to(*addresses: tuple[str, int]) -> tuple[Any, list[str]]:
    asked: list[str] = []

    async def resolve(host: str, port: int) -> list[tuple[str, int]]:
        asked.append(host)
        return list(addresses)

    return resolve, asked


@pytest.mark.parametrize(
    "bad",
    ["127.0.0.1", "::ffff:127.0.0.1", "::ffff:169.254.169.254", "169.254.169.254", "fe80::1",
     "0.0.0.0", "224.0.0.1", "255.255.255.255", "::1", "::127.0.0.1"],
)  # fmt: skip
async def test_a_name_resolving_to_a_refused_address_is_denied_before_any_connection(
    start: Start, echo: Upstream, bad: str
) -> None:
    """The bad address comes second, after one the upstream answers on (exempted): every
    address is checked before any is connected to."""
    resolve, asked = resolving_to(("127.0.0.1", echo.port), (bad, echo.port))
    exempt = () if bad.endswith("127.0.0.1") else ("127.0.0.1/32",)
    running = await start(Policy("evil.example"), resolve=resolve, exempt=exempt)
    data = await running.exchange(b"CONNECT evil.example:443 HTTP/1.1\r\n\r\nsecret", True)
    status, headers, body = split_reply(data)
    assert (status, headers["x-jackin-egress"]) == ("HTTP/1.1 403 Forbidden", "denied")
    record = await running.records.next()
    assert record.allowed is False and record.error is None
    why = record.rule.partition(" (the rule ")[0]
    assert why.startswith("address refused: evil.example resolves to "), record.rule
    assert record.rule.endswith("(the rule allow evil.example:443 (test) matched)")
    assert body.decode().startswith(
        "jackin egress: evil.example:443 denied: " + why[len("address refused: ") :]
    )
    assert asked == ["evil.example"] and echo.accepted == 0


@pytest.mark.parametrize(
    ("target", "said"),
    [
        (b"169.254.169.254:443", "169.254.169.254 is link-local"),
        (b"[::ffff:169.254.169.254]:443", "169.254.169.254 is link-local"),
        (b"[::ffff:127.0.0.1]:443", "127.0.0.1 is loopback"),
        (b"[::127.0.0.1]:443", "127.0.0.1 is loopback (as ::7f00:1)"),
        (b"[fe80::1]:443", "fe80::1 is link-local"),
        (b"0.0.0.0:443", "0.0.0.0 is unspecified"),
    ],
)
async def test_an_ip_literal_gets_the_same_checks(start: Start, target: bytes, said: str) -> None:
    async def resolve(host: str, port: int) -> list[tuple[str, int]]:
        raise AssertionError("resolved an IP literal")

    running = await start(lambda h, p: (True, rule_for(h, p)), resolve=resolve, exempt=())
    data = await running.exchange(b"CONNECT %s HTTP/1.1\r\n\r\n" % target)
    assert data.startswith(b"HTTP/1.1 403 Forbidden\r\n")
    assert f"denied: {said} (the proxy never connects".encode() in data
    record = await running.records.next()
    assert record.rule.startswith(f"address refused: {said} (the rule ")


async def test_a_plain_request_to_loopback_is_denied(start: Start, origin: Upstream) -> None:
    running = await start(Policy("127.0.0.1"), exempt=())
    data = await running.exchange(b"GET http://127.0.0.1:%d/ HTTP/1.1\r\n\r\n" % origin.port)
    assert data.startswith(b"HTTP/1.1 403 Forbidden\r\n") and b"127.0.0.1 is loopback" in data
    assert origin.accepted == 0


async def test_the_proxys_own_address_and_its_sessions_network_are_never_connected_to(
    start: Start,
) -> None:
    everything = ("0.0.0.0/0", "::/0")
    running = await start(lambda h, p: (True, rule_for(h, p)), exempt=everything)
    host, port = running.address
    data = await running.exchange(b"GET http://%s:%d/ HTTP/1.1\r\n\r\n" % (host.encode(), port))
    assert b"denied: 127.0.0.2 is the proxy's own address" in data
    session = await start(lambda h, p: (True, rule_for(h, p)), exempt=everything,
                          peers="127.0.0.3/32")  # fmt: skip
    reader, writer = await within(asyncio.open_connection(*session.address,
                                                          local_addr=("127.0.0.3", 0)))  # fmt: skip
    writer.write(b"CONNECT 127.0.0.3:443 HTTP/1.1\r\n\r\n")
    data = await within(reader.read())
    writer.close()
    assert b"denied: 127.0.0.3 is in the session's own network" in data


async def test_a_name_is_resolved_once_and_only_the_checked_addresses_are_connected_to(
    start: Start, echo: Upstream
) -> None:
    """DNS rebinding: a second resolve would answer the metadata address. There is none."""
    answers = [[("127.0.0.1", echo.port)], [("169.254.169.254", 80)]]

    async def resolve(host: str, port: int) -> list[tuple[str, int]]:
        return answers.pop(0)

    running = await start(Policy("rebind.example"), resolve=resolve, exempt=("127.0.0.1/32",))
    data = await running.exchange(b"CONNECT rebind.example:443 HTTP/1.1\r\n\r\nhi", True)
    assert data.endswith(b"echo:hi")
    assert answers == [[("169.254.169.254", 80)]] and echo.received == [b"hi"]


async def test_the_model_routes_upstream_is_not_address_checked(
    start: Start, origin: Upstream
) -> None:
    """The operator chose it (a gateway on the host's loopback is theirs to run)."""
    from agent_host.proxy import ModelRoute

    route = ModelRoute("http", "127.0.0.1", origin.port, "", "x-api-key", "sk-x")
    running = await start(Policy(), model=route, exempt=())
    answer = await running.exchange(b"GET /jackin-model/v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer == HTTP_REPLY and origin.accepted == 1


async def test_a_rule_naming_the_port_opens_the_connect_whatever_the_rules_order(
    start: Start, echo: Upstream
) -> None:
    """decide() reports the allow that names the port when a port-less one matches too."""
    running = await start(rules_policy("127.0.0.1", f"127.0.0.1:{echo.port}", "**.a.example"))
    data = await running.exchange(b"CONNECT 127.0.0.1:%d HTTP/1.1\r\n\r\nhi" % echo.port, True)
    assert data.endswith(b"echo:hi")
    assert (await running.records.next()).rule == f"allow 127.0.0.1:{echo.port} (--allow)"


async def test_a_slow_record_sink_never_holds_up_connections_and_close_waits_for_it(
    start: Start, echo: Upstream
) -> None:
    """egressd's sink writes a database per connection: it runs on a thread of its own, in
    order, and close() returns once every record is in."""
    import threading

    release = threading.Event()
    seen: list[int] = []

    def record(entry: ConnectionRecord) -> None:
        release.wait(SAFETY)  # the first record blocks until the second exchange is done
        seen.append(entry.bytes_up)

    running = await start(Policy("127.0.0.1"), record=record)
    for payload in (b"one", b"three"):
        data = await running.exchange(
            b"CONNECT 127.0.0.1:%d HTTP/1.1\r\n\r\n%s" % (echo.port, payload), True
        )
        assert data.endswith(b"echo:" + payload)
    assert seen == []  # both served while the sink was stuck on the first
    release.set()
    await running.proxy.close()
    assert seen == [3, 5]
