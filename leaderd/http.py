"""The HTTP server: /healthz, /readyz, /status and /metrics for probes and Prometheus;
/watch streams the status (Server-Sent Events) to whoever follows the election.

A small HTTP/1.1 server on asyncio streams (GET and HEAD, keep-alive, no request
bodies): all a probe, Prometheus and `curl` need, at a fraction of a web framework's
memory. Every handler asks the elector at the moment it answers, so a process that
was frozen past its deadline answers 503 on /readyz as soon as it runs again. The
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
from dataclasses import dataclass, field
from typing import Any

from .election import ElectionObserver, Elector
from .metrics import CONTENT_TYPE

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
#: Limits of a request: one line (request line or header), and the number of headers.
MAX_LINE = 4096
MAX_HEADERS = 64
JSON = "application/json; charset=utf-8"
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
           413: "Payload Too Large", 431: "Request Header Fields Too Large",
           501: "Not Implemented", 503: "Service Unavailable"}  # fmt: skip


def connection_cap(limit: int = MAX_CONNECTIONS) -> int:
    """The connection cap: `limit`, but at most a quarter of the descriptor limit."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return limit
    return max(4, min(limit, soft // 4))


@dataclass
class Request:
    """What a handler gets: the method, the path (no query) and lower-cased headers."""

    method: str
    path: str
    version: str
    headers: dict[str, str] = field(default_factory=dict)
    writer: asyncio.StreamWriter | None = None
    gone: asyncio.Event = field(default_factory=asyncio.Event)  # set when the client left


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = JSON


def json_response(data: Any, status: int = 200) -> Response:
    return Response(status, json.dumps(data, separators=(",", ":")).encode())


#: A handler answers with a Response, or streams itself and returns None (connection ends).
Handler = Callable[[Request], Awaitable[Response | None]]


class App:
    """The routes: GET path -> handler; `streams`: the paths whose handler streams (the
    connection is theirs until the client leaves)."""

    def __init__(
        self, routes: dict[str, Handler] | None = None, streams: frozenset[str] = frozenset()
    ) -> None:
        self.routes: dict[str, Handler] = dict(routes or {})
        self.streams = streams


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
    render_metrics: Callable[[], bytes],
    hub: WatchHub | None = None,
    heartbeat: float = HEARTBEAT,
) -> App:
    """The routes; `render_metrics` renders /metrics; /watch needs `hub`, an observer given to
    `elector` when it was built."""

    async def healthz(request: Request) -> Response:
        if elector.healthy():
            return json_response({"status": "ok"})
        return json_response({"status": "stalled"}, status=503)

    async def readyz(request: Request) -> Response:
        status = elector.status()  # computed once: body and code always agree
        ready = status["role"] == "leader" and status["valid_until"] is not None
        return json_response(status, status=200 if ready else 503)

    async def status(request: Request) -> Response:
        return json_response(elector.status())

    async def metrics(request: Request) -> Response:
        return Response(200, render_metrics(), CONTENT_TYPE)

    async def watch(request: Request) -> Response | None:
        assert hub is not None and request.writer is not None
        if len(hub.queues) >= hub.max_watchers:
            return json_response(
                {"error": f"too many watchers (at most {hub.max_watchers})"}, status=503
            )
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        hub.queues.add(queue)
        try:
            writer = request.writer
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                         b"Cache-Control: no-cache\r\nX-Accel-Buffering: no\r\n"
                         b"Connection: close\r\n\r\n")  # fmt: skip
            await _follow(writer, queue, request.gone, heartbeat)
        except (ConnectionError, TimeoutError):
            pass  # the client went away or stopped reading: nothing to clean up but ours
        finally:
            hub.queues.discard(queue)
        return None

    async def _follow(
        writer: asyncio.StreamWriter,
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
                writer.write(_event(status))
                await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT)
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
                writer.write(b": keep-alive\n\n")
                await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT)

    routes: dict[str, Handler] = {
        "/healthz": healthz, "/readyz": readyz, "/status": status, "/metrics": metrics,
    }  # fmt: skip
    if hub is not None:
        routes["/watch"] = watch
    return App(routes, streams=frozenset({"/watch"}))


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


class _BadRequest(Exception):
    def __init__(self, status: int) -> None:
        self.status = status


async def _read_request(reader: asyncio.StreamReader) -> Request | None:
    """One request's line and headers; None at a clean end of the connection."""
    try:
        line = await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial.strip():
            raise _BadRequest(400) from exc
        return None
    except asyncio.LimitOverrunError as exc:
        raise _BadRequest(431) from exc
    parts = line.decode("latin-1").split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise _BadRequest(400)
    method, target, version = parts
    headers: dict[str, str] = {}
    while True:
        try:
            raw = await reader.readuntil(b"\n")
        except asyncio.LimitOverrunError as exc:
            raise _BadRequest(431) from exc
        text = raw.decode("latin-1").strip()
        if not text:
            break
        if len(headers) >= MAX_HEADERS or ":" not in text:
            raise _BadRequest(431 if ":" in text else 400)
        name, _, value = text.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "transfer-encoding" in headers:
        raise _BadRequest(501)
    length = headers.get("content-length", "0")
    if not length.isdigit() or int(length) > MAX_LINE:
        raise _BadRequest(413 if length.isdigit() else 400)
    if int(length):
        await reader.readexactly(int(length))  # GET has no body: read and ignore it
    return Request(method, target.split("?", 1)[0], version, headers)


async def _until_eof(reader: asyncio.StreamReader, gone: asyncio.Event) -> None:
    """Read (and ignore) until the client closes its side, then set `gone`."""
    try:
        while await reader.read(4096):
            pass
    except (ConnectionError, OSError):
        pass
    gone.set()


def _head(status: int, length: int, content_type: str, close: bool) -> bytes:
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}",
             f"Content-Type: {content_type}", f"Content-Length: {length}"]  # fmt: skip
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class HTTPServer:
    """A running server: `guard` (for tests and metrics), `close()` to stop it."""

    def __init__(self, app: App, guard: ConnectionGuard) -> None:
        self.app = app
        self.guard = guard
        self.server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One connection: requests one after another while the client keeps it alive."""
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        transport = writer.transport
        self.guard.admit(transport)
        gone = self.guard.lost_event(transport)
        try:
            while not gone.is_set():
                try:
                    request = await _read_request(reader)
                except _BadRequest as bad:
                    writer.write(_head(bad.status, 0, JSON, close=True))
                    break
                if request is None:
                    break
                request.writer, request.gone = writer, gone
                leaving = None
                if request.path in self.app.streams:  # notice at once when the client leaves
                    leaving = asyncio.ensure_future(_until_eof(reader, gone))
                self.guard.request_started(transport)
                try:
                    keep = await self._answer(request, writer)
                finally:
                    self.guard.request_done(transport)
                    if leaving is not None:
                        leaving.cancel()
                        await asyncio.wait({leaving})
                if not keep or leaving is not None:
                    break  # a stream's connection (read ahead for its end) is not reused
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass  # the client went away, or the guard closed the connection
        finally:
            self.guard.forget(transport)
            writer.close()
            if task is not None:
                self._tasks.discard(task)

    async def _answer(self, request: Request, writer: asyncio.StreamWriter) -> bool:
        """Route and answer one request; False if the connection must end."""
        handler = self.app.routes.get(request.path)
        if request.method not in ("GET", "HEAD"):
            response: Response | None = json_response({"error": "only GET"}, 405)
        elif handler is None:
            response = json_response({"error": "not found"}, 404)
        else:
            response = await handler(request)
        if response is None:
            return False  # a stream: it wrote its own response, and ends the connection
        close = request.headers.get("connection", "").lower() == "close" or (
            request.version == "HTTP/1.0"
            and request.headers.get("connection", "").lower() != "keep-alive"
        )
        body = b"" if request.method == "HEAD" else response.body
        writer.write(_head(response.status, len(response.body), response.content_type, close))
        writer.write(body)
        await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT)
        return not close

    async def close(self) -> None:
        self.guard.close()
        if self.server is not None:
            self.server.close()
        for conn in list(self.guard.conns.values()):
            conn.transport.close()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=5.0)
        if self.server is not None:
            await self.server.wait_closed()

    # `cleanup`: the name callers of a runner expect
    cleanup = close


async def start_server(
    app: App,
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
    server = HTTPServer(app, guard)
    server.server = await asyncio.start_server(
        server.serve, host, port, reuse_address=True, backlog=128, limit=MAX_LINE
    )
    return server


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
