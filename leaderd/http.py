"""The HTTP server: /healthz, /readyz, /status and /metrics for probes and Prometheus;
/watch streams the status (Server-Sent Events) to whoever follows the election.

Every handler asks the elector at the moment it answers, so a process that was
frozen past its deadline answers 503 on /readyz as soon as it runs again. The
server protects itself: a connection must send a whole request within a header
timeout and is closed when idle; past the connection cap the oldest idle connection
makes room, so a probe always gets in; accept() failures at the descriptor limit are
logged once per change of state, never as a flood of tracebacks.
"""

from __future__ import annotations

import asyncio
import json
import resource
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.aiohttp import make_aiohttp_handler

from .election import ElectionObserver, Elector

#: A connection must deliver a complete request within this many seconds.
HEADER_TIMEOUT = 5.0
#: A kept-alive connection with no request in flight is closed after this long.
IDLE_TIMEOUT = 15.0
#: At most this many connections (fewer if the descriptor limit is low).
MAX_CONNECTIONS = 256
#: A /watch stream gets a comment line after this many quiet seconds (proxies keep it).
HEARTBEAT = 10.0
#: A /watch client that does not take an event within this many seconds is dropped.
WRITE_TIMEOUT = 5.0
#: The status fields whose change makes a /watch event.
WATCHED = ("role", "leader", "leader_address", "fencing_token", "eligible")


def connection_cap(limit: int = MAX_CONNECTIONS) -> int:
    """The connection cap: `limit`, but at most a quarter of the descriptor limit."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return limit
    return max(4, min(limit, soft // 4))


class WatchHub(ElectionObserver):
    """Fans status snapshots out to /watch streams: one each time a watched field changes,
    in order, into a bounded queue per stream (a stream that falls behind is dropped)."""

    def __init__(self, max_watchers: int = MAX_CONNECTIONS // 2, backlog: int = 64) -> None:
        self.max_watchers = max_watchers
        self.backlog = backlog
        self.queues: set[asyncio.Queue[dict[str, Any] | None]] = set()
        self.elector: Elector | None = None
        self._last: tuple[Any, ...] | None = None

    def bind(self, elector: Elector) -> None:
        self.elector = elector

    def on_status_change(self) -> None:
        if self.elector is None:
            return
        status = self.elector.status()
        key = watched(status)
        if key == self._last:
            return
        self._last = key
        for queue in list(self.queues):
            if queue.qsize() >= self.backlog - 1:
                self.queues.discard(queue)
                queue.put_nowait(None)  # too far behind: the stream ends, the client resyncs
            else:
                queue.put_nowait(status)


def watched(status: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(status.get(name) for name in WATCHED)


def _event(status: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(status, separators=(",", ":")).encode() + b"\n\n"


def make_app(
    elector: Elector,
    registry: CollectorRegistry,
    hub: WatchHub | None = None,
    heartbeat: float = HEARTBEAT,
) -> web.Application:
    """The routes; /watch needs `hub`, an observer given to `elector` when it was built."""

    async def healthz(request: web.Request) -> web.Response:
        if elector.healthy():
            return web.json_response({"status": "ok"})
        return web.json_response({"status": "stalled"}, status=503)

    async def readyz(request: web.Request) -> web.Response:
        status = elector.status()  # computed once: body and code always agree
        ready = status["role"] == "leader" and status["valid_until"] is not None
        return web.json_response(status, status=200 if ready else 503)

    async def status(request: web.Request) -> web.Response:
        return web.json_response(elector.status())

    async def watch(request: web.Request) -> web.StreamResponse:
        assert hub is not None
        if len(hub.queues) >= hub.max_watchers:
            return web.json_response(
                {"error": f"too many watchers (at most {hub.max_watchers})"}, status=503
            )
        guard = request.app.get(_GUARD)
        gone = guard.lost_event(request.transport) if guard is not None else asyncio.Event()
        response = web.StreamResponse(headers={
            "Content-Type": "text/event-stream", "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        })  # fmt: skip
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        hub.queues.add(queue)
        try:
            await response.prepare(request)
            await _follow(response, queue, gone, heartbeat)
        except (ConnectionError, TimeoutError):
            pass  # the client went away or stopped reading: nothing to clean up but ours
        finally:
            hub.queues.discard(queue)
        return response

    async def _follow(
        response: web.StreamResponse,
        queue: asyncio.Queue[dict[str, Any] | None],
        gone: asyncio.Event,
        beat: float,
    ) -> None:
        """The current status, then one event per change, a comment when quiet."""
        status: dict[str, Any] | None = elector.status()
        last = None
        while status is not None and not gone.is_set():
            if watched(status) != last:
                last = watched(status)
                await asyncio.wait_for(response.write(_event(status)), WRITE_TIMEOUT)
            getting = asyncio.ensure_future(queue.get())
            leaving = asyncio.ensure_future(gone.wait())
            try:
                done, _ = await asyncio.wait(
                    {getting, leaving}, timeout=beat, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                leaving.cancel()
                if not getting.done():
                    getting.cancel()
            if getting in done:
                status = getting.result()
            elif not done:
                await asyncio.wait_for(response.write(b": keep-alive\n\n"), WRITE_TIMEOUT)

    app = web.Application(middlewares=[_track_requests])
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/status", status)
    app.router.add_get("/metrics", make_aiohttp_handler(registry))
    if hub is not None:
        app.router.add_get("/watch", watch)
    return app


class _Conn:
    __slots__ = ("busy", "deadline", "lost", "transport")

    def __init__(self, transport: asyncio.BaseTransport, deadline: float) -> None:
        self.transport = transport
        self.deadline = deadline
        self.busy = 0
        self.lost: asyncio.Event | None = None


class ConnectionGuard:
    """Deadlines and a cap for every connection of one server."""

    def __init__(
        self,
        cap: int,
        header_timeout: float = HEADER_TIMEOUT,
        idle_timeout: float = IDLE_TIMEOUT,
    ) -> None:
        self.cap = cap
        self.header_timeout = header_timeout
        self.idle_timeout = idle_timeout
        self.conns: dict[asyncio.BaseTransport, _Conn] = {}  # insertion order: oldest first
        self.accepted = 0
        self.evicted = 0
        self.timed_out = 0
        self._sweeper: asyncio.TimerHandle | None = None
        self.on_accept: Callable[[], None] | None = None

    def admit(self, transport: asyncio.BaseTransport) -> None:
        self.accepted += 1
        if self.on_accept is not None:
            self.on_accept()
        if len(self.conns) >= self.cap:
            idle = next((c for c in self.conns.values() if not c.busy), None)
            if idle is not None:  # the oldest idle connection makes room
                self.evicted += 1
                self._close(idle)
        self.conns[transport] = _Conn(transport, time.monotonic() + self.header_timeout)
        self._schedule()

    def forget(self, transport: asyncio.BaseTransport) -> None:
        conn = self.conns.pop(transport, None)
        if conn is not None and conn.lost is not None:
            conn.lost.set()

    def lost_event(self, transport: asyncio.BaseTransport | None) -> asyncio.Event:
        """An event set when `transport`'s connection goes away (a stream ends then)."""
        event = asyncio.Event()
        conn = self.conns.get(transport) if transport is not None else None
        if conn is None:
            event.set()
        else:
            conn.lost = event
        return event

    def request_started(self, transport: asyncio.BaseTransport | None) -> None:
        conn = self.conns.get(transport) if transport is not None else None
        if conn is not None:
            conn.busy += 1

    def request_done(self, transport: asyncio.BaseTransport | None) -> None:
        conn = self.conns.get(transport) if transport is not None else None
        if conn is not None:
            conn.busy = max(0, conn.busy - 1)
            # the next request must arrive (whole) before the connection counts as idle
            conn.deadline = time.monotonic() + min(self.header_timeout, self.idle_timeout)

    def _close(self, conn: _Conn) -> None:
        self.forget(conn.transport)
        conn.transport.close()

    def _schedule(self) -> None:
        if self._sweeper is None and self.conns:
            loop = asyncio.get_running_loop()
            self._sweeper = loop.call_later(0.5, self._sweep)

    def _sweep(self) -> None:
        self._sweeper = None
        now = time.monotonic()
        for conn in list(self.conns.values()):
            if not conn.busy and now >= conn.deadline:
                self.timed_out += 1
                self._close(conn)
        self._schedule()

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None


class _GuardedProtocol(asyncio.Protocol):
    """aiohttp's request handler, admitted and timed by a `ConnectionGuard`."""

    def __init__(self, inner: Any, guard: ConnectionGuard) -> None:
        self.inner = inner
        self.guard = guard
        self.transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.guard.admit(transport)
        self.inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.guard.forget(self.transport)
        self.inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()  # type: ignore[no-any-return]

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


@web.middleware
async def _track_requests(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    guard: ConnectionGuard | None = request.app.get(_GUARD)
    transport = request.transport
    if guard is not None:
        guard.request_started(transport)
    try:
        return await handler(request)
    finally:
        if guard is not None:
            guard.request_done(transport)


_GUARD: web.AppKey[ConnectionGuard] = web.AppKey("leaderd_guard", ConnectionGuard)


class HTTPServer:
    """A running server: `guard` (for tests and metrics), `close()` to stop it."""

    def __init__(self, runner: web.AppRunner, server: asyncio.Server, guard: ConnectionGuard):
        self.runner = runner
        self.server = server
        self.guard = guard

    async def close(self) -> None:
        self.guard.close()
        self.server.close()
        for conn in list(self.guard.conns.values()):
            conn.transport.close()
        await self.runner.cleanup()

    # `cleanup` kept for callers that treat this like an aiohttp runner
    cleanup = close


async def start_server(
    app: web.Application,
    host: str,
    port: int,
    *,
    max_connections: int | None = None,
    loop_errors: LoopErrors | None = None,
) -> HTTPServer:
    """Start serving; raises OSError (e.g. address in use) for the caller to report."""
    guard = ConnectionGuard(connection_cap() if max_connections is None else max_connections)
    if loop_errors is not None:
        guard.on_accept = loop_errors.accepted
    app[_GUARD] = guard
    runner = web.AppRunner(
        app, access_log=None, handle_signals=False, keepalive_timeout=IDLE_TIMEOUT,
        max_line_size=4096, max_field_size=4096, max_headers=64,
    )  # fmt: skip
    await runner.setup()
    assert runner.server is not None
    handler_factory = runner.server
    loop = asyncio.get_running_loop()
    try:
        server = await loop.create_server(
            lambda: _GuardedProtocol(handler_factory(), guard),
            host, port, reuse_address=True, backlog=128,
        )  # fmt: skip
    except BaseException:
        await runner.cleanup()
        raise
    return HTTPServer(runner, server, guard)


class LoopErrors:
    """asyncio's own error reports as structured lines, one per change of state.

    At the descriptor limit the event loop reports every failed accept() with a
    traceback; here that is one `http_accept_failed` line until a connection is
    accepted after 10 s without a failure (`http_accept_recovered`). Other loop errors
    (e.g. a future whose exception nobody retrieved) are logged once per kind, as JSON.
    """

    RECOVERY_QUIET = 10.0

    def __init__(self, log: Any) -> None:
        self.log = log
        self.accept_failing = False
        self.last_accept_failure = 0.0
        self._seen: set[str] = set()

    def install(self) -> None:
        asyncio.get_running_loop().set_exception_handler(self.handle)

    def handle(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        message = str(context.get("message", "asyncio error"))
        exc = context.get("exception")
        error = f"{type(exc).__name__}: {exc}"[:300] if exc is not None else None
        if "out of system resource" in message:
            self.last_accept_failure = time.monotonic()
            if not self.accept_failing:
                self.accept_failing = True
                hint = "the descriptor limit is reached; raise `ulimit -n`"
                self.log.error("http_accept_failed", error=error, hint=hint)
            return
        key = f"{type(exc).__name__}:{message[:80]}"
        if key not in self._seen:
            self._seen.add(key)
            self.log.error("asyncio_error", message=message[:200], error=error)

    def accepted(self) -> None:
        # Recovered only once accept() has not failed for a while: at the limit it
        # alternates between failing and succeeding as descriptors come and go.
        quiet = time.monotonic() - self.last_accept_failure > self.RECOVERY_QUIET
        if self.accept_failing and quiet:
            self.accept_failing = False
            self.log.info("http_accept_recovered")
