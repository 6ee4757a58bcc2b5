"""HTTP framing by h11, and the attack list of issue 20: every ambiguous request gets
400 and its connection closes; HEAD sends no body; HTTP/1.0 closes unless asked;
the connection cap counts every connection, /watch included, and a probe always gets
in; a watcher that reads nothing for two heartbeats is dropped."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator

import pytest

from leaderd import Elector, FixedIntervalStrategy
from leaderd.backend import MemoryBackend, MemoryStore
from leaderd.clock import SystemClock
from leaderd.http import HTTPServer, WatchHub, make_app, start_server

from .conftest import wait_for


@pytest.fixture
async def server() -> AsyncIterator[tuple[HTTPServer, WatchHub]]:
    clock = SystemClock()
    hub = WatchHub(max_watchers=2)
    elector = Elector(MemoryBackend(MemoryStore(clock)), "jobs", "a", clock=clock,
                      retry=FixedIntervalStrategy(1.0, None), observers=[hub])  # fmt: skip
    app = make_app(elector, lambda: b"m 1\n", hub, heartbeat=0.05)
    srv = await start_server(app, "127.0.0.1", 0, max_connections=6)
    yield srv, hub
    await srv.close()


def _port(srv: HTTPServer) -> int:
    assert srv.server is not None
    return int(srv.server.sockets[0].getsockname()[1])


def _exchange(port: int, raw: bytes, timeout: float = 3.0) -> tuple[bytes, bool]:
    """Send `raw`; return everything the server sends and whether it closed."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(raw)
        data = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                return data, False
            if not chunk:
                return data, True
            data += chunk
            if b"\r\n\r\n" in data and _complete(data):
                sock.settimeout(0.3)  # a kept-alive connection stays open
                try:
                    return data, sock.recv(1) == b""
                except TimeoutError:
                    return data, False
        return data, False


def _complete(data: bytes) -> bool:
    head, _, body = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return True


ATTACKS = {
    "two different Content-Length": b"GET /status HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
    b"Content-Length: 5\r\n\r\nhello",
    "two equal Content-Length": b"GET /status HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n"
    b"Content-Length: 1\r\n\r\nx",
    "non-ASCII Content-Length": "GET /status HTTP/1.1\r\nHost: x\r\n"
    "Content-Length: \u00b2\r\n\r\n".encode(),
    "negative Content-Length": b"GET /status HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    "Transfer-Encoding": b"GET /status HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"0\r\n\r\n",
    "Transfer-Encoding and Content-Length": b"GET /status HTTP/1.1\r\nHost: x\r\n"
    b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "space before the colon": b"GET /status HTTP/1.1\r\nHost : x\r\n\r\n",
    "vertical tab as separator": b"GET /status HTTP/1.1\r\nHost:\x0bx\r\n\r\n",
    "obs-fold": b"GET /status HTTP/1.1\r\nHost: x\r\nX-A: a\r\n  b\r\n\r\n",
    "bare LF": b"GET /status HTTP/1.1\nHost: x\n\n",
    "bare LF in one line": b"GET /status HTTP/1.1\r\nHost: x\nX-A: 1\r\n\r\n",
    "no Host in HTTP/1.1": b"GET /status HTTP/1.1\r\n\r\n",
}


@pytest.mark.parametrize("attack", list(ATTACKS))
async def test_ambiguous_framing_gets_400_and_the_connection_closes(
    server: tuple[HTTPServer, WatchHub], attack: str
) -> None:
    srv, _ = server
    data, closed = await asyncio.to_thread(_exchange, _port(srv), ATTACKS[attack])
    assert data.startswith(b"HTTP/1.1 400 "), data[:200]
    assert closed


async def test_a_plain_request_keeps_the_connection_alive(
    server: tuple[HTTPServer, WatchHub],
) -> None:
    srv, _ = server
    data, closed = await asyncio.to_thread(
        _exchange, _port(srv), b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    assert data.startswith(b"HTTP/1.1 200 ") and b'"identity":"a"' in data
    assert not closed


@pytest.mark.parametrize("path", ["/status", "/metrics", "/watch"])
async def test_head_sends_no_body(server: tuple[HTTPServer, WatchHub], path: str) -> None:
    srv, _ = server
    raw = f"HEAD {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    data, _ = await asyncio.to_thread(_exchange, _port(srv), raw, 1.0)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and body == b"", data[:300]


async def test_http_1_0_closes_unless_asked_to_keep_alive(
    server: tuple[HTTPServer, WatchHub],
) -> None:
    srv, _ = server
    data, closed = await asyncio.to_thread(_exchange, _port(srv), b"GET /status HTTP/1.0\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 200 ") and closed


async def test_the_cap_counts_watchers_and_a_probe_always_gets_in(
    server: tuple[HTTPServer, WatchHub],
) -> None:
    srv, hub = server
    port = _port(srv)
    socks = []
    try:
        for _ in range(2):  # the watchers the hub allows
            sock = socket.create_connection(("127.0.0.1", port))
            sock.sendall(b"GET /watch HTTP/1.1\r\nHost: x\r\n\r\n")
            socks.append(sock)
        await asyncio.to_thread(wait_for, lambda: len(hub.queues) == 2, 5)
        for _ in range(20):  # and a crowd of idle connections
            socks.append(socket.create_connection(("127.0.0.1", port)))
        for _ in range(5):  # probes get in, every time
            data, _ = await asyncio.to_thread(
                _exchange, port, b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n", 2.0
            )
            assert data.startswith(b"HTTP/1.1 "), data
            assert len(srv.guard.conns) <= 6 + 1  # the cap, plus the probe being served
        assert len(hub.queues) == 2  # idle connections made room, not the streams
    finally:
        for sock in socks:
            sock.close()


async def test_a_watcher_that_reads_nothing_is_dropped(
    server: tuple[HTTPServer, WatchHub],
) -> None:
    srv, hub = server
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)  # and it never reads
    sock.connect(("127.0.0.1", _port(srv)))
    sock.sendall(b"GET /watch HTTP/1.1\r\nHost: x\r\n\r\n")
    try:
        await asyncio.to_thread(wait_for, lambda: hub.queues, 5)  # it is watching
        # heartbeats every 0.05 s fill the small buffers; then two more go untaken
        await asyncio.to_thread(wait_for, lambda: not hub.queues, 10)
        assert not [c for c in srv.guard.conns.values() if c.stream]
    finally:
        sock.close()
