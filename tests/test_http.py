"""The HTTP server under hostile clients: idle and half-sent connections, a flood of
them, and the descriptor limit."""

from __future__ import annotations

import resource
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable

from devtools.devserver import RedisServer, free_port

from .daemons import Daemon, poll


def _raise_fd_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))


def _closed_by_peer(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def test_readyz_answers_under_1000_idle_connections_and_idle_ones_are_closed(
    redis_server: RedisServer, spawn: Callable[..., Daemon]
) -> None:
    _raise_fd_limit(4096)
    d = spawn(redis_server.url, "pod-0")
    d.wait_http()
    poll(lambda: d.ready() == 200, 10)
    idle: list[socket.socket] = []
    half = socket.create_connection(("127.0.0.1", d.port))
    half.sendall(b"GET /status HTTP/1.1\r\nHost: x\r\n")  # never finishes its headers
    opened_at = time.monotonic()
    # A half-sent request is closed once the header timeout (5 s) has passed.
    poll(lambda: _closed_by_peer(half), 10)
    assert 4.5 < time.monotonic() - opened_at < 7.0
    try:
        for _ in range(1000):
            idle.append(socket.create_connection(("127.0.0.1", d.port), timeout=5))
        # Probes still get through at once: the oldest idle connections make room.
        for _ in range(20):
            started = time.monotonic()
            assert d.ready() == 200
            assert time.monotonic() - started < 1.0
        assert d.get("/healthz")[0] == 200
        # The idle ones are closed too: evicted for newcomers, or at the header timeout.
        poll(lambda: all(_closed_by_peer(s) for s in idle[-50:]), 10)
        assert d.proc.poll() is None and d.ready() == 200
    finally:
        half.close()
        for s in idle:
            s.close()


SERVER = textwrap.dedent(
    """
    import asyncio, resource, sys
    from leaderd.http import App, LoopErrors, start_server
    from leaderd.logs import configure, get_logger

    async def main(port):
        configure("json", "info")
        errors = LoopErrors(get_logger())
        errors.install()
        app = App()
        server = await start_server(app, "127.0.0.1", port, max_connections=100000,
                                    loop_errors=errors)
        resource.setrlimit(resource.RLIMIT_NOFILE, (40, 40))
        print("ready", flush=True)
        await asyncio.sleep(6)
        await server.close()

    asyncio.run(main(int(sys.argv[1])))
    """
)


def test_the_descriptor_limit_is_logged_once_not_flooded() -> None:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(port)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    socks = []
    try:
        for _ in range(80):  # more than the server's 40 descriptors
            socks.append(socket.create_connection(("127.0.0.1", port), timeout=2))
        time.sleep(2.5)  # let the loop retry accept() a few times (once a second)
        for s in socks:
            s.close()
        socks = []
        late = socket.create_connection(("127.0.0.1", port), timeout=2)
        late.close()
        _, err = proc.communicate(timeout=30)
    finally:
        for s in socks:
            s.close()
        proc.kill()
    lines = err.splitlines()
    assert sum('"http_accept_failed"' in line for line in lines) == 1, err[:2000]
    assert len(lines) <= 5 and "Traceback" not in err, err[:2000]
