"""Workload-aware leadership: real daemons whose app (a real TCP or HTTP endpoint made
here) dies, never starts, or answers errors."""

from __future__ import annotations

import contextlib
import http.server
import socket
import threading
import time
from collections.abc import Callable

from devtools.devserver import RedisServer, free_port

from .daemons import Daemon, poll

FAST = ["--app-health-interval", "100ms", "--app-health-timeout", "100ms",
        "--app-health-failures", "2", "--app-health-successes", "1"]  # fmt: skip


class TcpApp:
    """A workload that is healthy while it accepts TCP connections."""

    def __init__(self) -> None:
        self.port = free_port()
        self.sock: socket.socket | None = None
        self.start()

    def start(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(16)
        self.sock = sock
        threading.Thread(target=self._accept, args=(sock,), daemon=True).start()

    def _accept(self, sock: socket.socket) -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            conn.close()

    def stop(self) -> None:
        """Stop listening now: shutdown() wakes the thread blocked in accept(), which a
        bare close() from another thread would not (the port would still accept)."""
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)
            self.sock.close()
            self.sock = None

    @property
    def url(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"


def events(d: Daemon, name: str) -> list[dict[str, object]]:
    return [e for e in d.events() if e["event"] == name]


def test_the_app_dying_under_the_leader_hands_leadership_to_a_healthy_candidate(
    redis_server: RedisServer, spawn: Callable[..., Daemon]
) -> None:
    apps = [TcpApp(), TcpApp()]
    ds = [spawn(redis_server.url, f"pod-{i}", "--app-health-url", apps[i].url, *FAST,
                ttl="2s") for i in range(2)]  # fmt: skip
    try:
        for d in ds:
            d.wait_http()
        poll(lambda: sum(d.ready() == 200 for d in ds) == 1, 10)
        i = next(i for i, d in enumerate(ds) if d.ready() == 200)
        leader, other = ds[i], ds[1 - i]
        assert leader.status()["app_healthy"] is True and leader.status()["eligible"] is True
        died = time.monotonic()
        apps[i].stop()  # the workload beside the leader dies
        poll(lambda: other.ready() == 200, 5)
        took = time.monotonic() - died
        # two failed checks 100 ms apart, then one hand-over (not a lease expiry: 2 s)
        assert took < 1.0, f"hand-over after the app died took {took:.3f}s"
        stepped = poll(lambda: events(leader, "stepped_down"), 5)
        assert stepped[-1]["reason"] == "app_unhealthy"
        assert len(events(leader, "app_unhealthy")) == 1
        st = leader.status()
        assert (st["eligible"], st["ineligible_reason"], st["app_healthy"]) == (
            False, "app_unhealthy", False)  # fmt: skip
        assert 'leaderd_eligible{election="jobs"} 0.0' in leader.get("/metrics")[1]
        assert 'leaderd_eligible{election="jobs"} 1.0' in other.get("/metrics")[1]
        # The app comes back: the old leader is eligible again, but does not take over.
        apps[i].start()
        poll(lambda: leader.status()["eligible"] is True, 5)
        assert other.ready() == 200 and leader.ready() == 503
    finally:
        for app in apps:
            app.stop()


def test_an_app_that_is_never_healthy_never_leads(
    redis_server: RedisServer, spawn: Callable[..., Daemon]
) -> None:
    d = spawn(redis_server.url, "pod-0", "--app-health-url", f"tcp://127.0.0.1:{free_port()}",
              *FAST, ttl="1s")  # fmt: skip
    d.wait_http()
    poll(lambda: d.status()["role"] == "follower", 5)
    deadline = time.monotonic() + 2.5  # more than two ttls
    while time.monotonic() < deadline:
        st = d.status()
        assert d.ready() != 200 and st["leader"] is None
        assert st["eligible"] is False and st["app_healthy"] is False
        time.sleep(0.1)
    assert d.get("/healthz")[0] == 200  # app health is not the sidecar's liveness
    assert not events(d, "became_leader")


class _Handler(http.server.BaseHTTPRequestHandler):
    code = 500

    def do_GET(self) -> None:
        self.send_response(type(self).code)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_an_http_check_follows_the_status_code(
    redis_server: RedisServer, spawn: Callable[..., Daemon]
) -> None:
    handler = type("Handler", (_Handler,), {"code": 503})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/healthz"
    try:
        d = spawn(redis_server.url, "pod-0", "--app-health-url", url, *FAST)
        d.wait_http()
        poll(lambda: d.status()["role"] == "follower", 5)
        assert d.ready() == 503 and d.status()["app_healthy"] is False
        handler.code = 200  # the app finished starting
        poll(lambda: d.ready() == 200, 5)
        assert d.status()["app_healthy"] is True and len(events(d, "app_healthy")) == 1
        handler.code = 500
        poll(lambda: d.ready() == 503, 5)
        stepped = poll(lambda: events(d, "stepped_down"), 5)
        assert stepped[-1]["reason"] == "app_unhealthy"
    finally:
        server.shutdown()


def test_an_unhealthy_leader_stops_its_exec_child(
    redis_server: RedisServer, spawn: Callable[..., Daemon]
) -> None:
    from .test_exec import alive_with, marker

    app, m = TcpApp(), marker()
    d = spawn(redis_server.url, "pod-0", "--app-health-url", app.url, *FAST,
              command=["sh", "-c", f"sleep {m} & wait"])  # fmt: skip
    try:
        d.wait_http()
        poll(lambda: d.ready() == 200, 10)
        poll(lambda: alive_with(m), 5)
        app.stop()
        poll(lambda: not alive_with(m), 5)
        assert d.ready() == 503 and d.proc.poll() is None
        stepped = poll(lambda: events(d, "stepped_down"), 5)  # logged after the child
        assert stepped[-1]["reason"] == "app_unhealthy"
    finally:
        app.stop()


def test_with_every_app_unhealthy_nobody_leads_until_one_recovers(
    redis_server: RedisServer, spawn: Callable[..., Daemon]
) -> None:
    apps = [TcpApp(), TcpApp()]
    for app in apps:
        app.stop()  # neither workload is up
    ds = [spawn(redis_server.url, f"pod-{i}", "--app-health-url", apps[i].url, *FAST,
                ttl="1s") for i in range(2)]  # fmt: skip
    try:
        for d in ds:
            d.wait_http()
        poll(lambda: all(d.status()["role"] == "follower" for d in ds), 5)
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:  # (under load a probe may time out: 0)
            assert all(d.ready() != 200 for d in ds)
            time.sleep(0.1)
        assert not any(events(d, "became_leader") for d in ds)
        apps[1].start()  # one recovers: it leads (no campaign delay at start-up)
        poll(lambda: ds[1].ready() == 200, 5)
        assert ds[0].ready() == 503
    finally:
        for app in apps:
            app.stop()
