"""The HTTP server: /healthz, /readyz, /status and /metrics for probes and Prometheus;
/watch streams the status (Server-Sent Events) to whoever follows the election.

A small HTTP/1.1 server on asyncio streams (GET and HEAD, keep-alive, no request
bodies), its framing done by h11, the strict HTTP/1.1 state machine under uvicorn and
httpcore: all a probe, Prometheus and `curl` need, at a fraction of a web framework's
memory. Ambiguous framing (duplicate or invalid Content-Length, Transfer-Encoding,
whitespace before a colon, obs-fold, a bare LF) gets 400 and the connection closes,
so no proxy in front of it can disagree about where a request ends. Every handler
asks the elector at the moment it answers, so a process that was frozen past its
deadline answers 503 on /readyz as soon as it runs again. The server protects
itself: a connection must send a whole request within a header timeout and is closed
when idle; every connection counts against the cap (/watch streams too), and past it
the oldest idle connection, else the oldest stream, makes room, so a probe always
gets in; a /watch client that takes nothing for two heartbeats is dropped; accept()
failures at the descriptor limit are logged once per change of state.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import resource
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import h11

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
#: Limits of a request: its head (request line and headers), the number of headers, a
#: body (read and ignored: GET has none).
MAX_HEAD = 16384
MAX_HEADERS = 64
MAX_BODY = 4096
#: A /watch heartbeat: a comment line, padded so that a client that reads nothing
#: fills the (small) socket buffers within a few heartbeats and is noticed.
HEARTBEAT_LINE = b": keep-alive" + b" " * 1024 + b"\n\n"
#: The send buffer of a /watch connection: small, so a stalled reader shows soon.
WATCH_SNDBUF = 4096
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
    conn: h11.Connection | None = None  # the connection's HTTP state (a stream writes on it)


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
        assert hub is not None and request.writer is not None and request.conn is not None
        if len(hub.queues) >= hub.max_watchers:
            return json_response(
                {"error": f"too many watchers (at most {hub.max_watchers})"}, status=503
            )
        writer, conn = request.writer, request.conn
        headers = [("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache"),
                   ("X-Accel-Buffering", "no"), ("Connection", "close")]  # fmt: skip
        writer.write(conn.send(h11.Response(status_code=200, headers=headers)) or b"")
        if request.method == "HEAD":  # the head only: no stream, no body
            writer.write(conn.send(h11.EndOfMessage()) or b"")
            await _drain(writer)
            return None
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, WATCH_SNDBUF)
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        hub.queues.add(queue)
        try:
            await _follow(writer, conn, queue, request.gone, heartbeat)
        except (ConnectionError, TimeoutError, h11.LocalProtocolError):
            pass  # the client went away or stopped reading: nothing to clean up but ours
        finally:
            hub.queues.discard(queue)
        return None

    async def _follow(
        writer: asyncio.StreamWriter,
        conn: h11.Connection,
        queue: asyncio.Queue[dict[str, Any] | None],
        gone: asyncio.Event,
        beat: float,
    ) -> None:
        """The current status, then one event per change, a comment when quiet. A
        client that took nothing for two heartbeats (the data of the one before is
        still in our buffer) is dropped."""
        status: dict[str, Any] | None = elector.status()
        last = None
        stalled = 0
        while status is not None and not gone.is_set():
            if watched(status) != last:
                last = watched(status)
                writer.write(conn.send(h11.Data(data=_event(status))) or b"")
                await _drain(writer)
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
                stalled = stalled + 1 if writer.transport.get_write_buffer_size() else 0
                if stalled >= 2:
                    raise TimeoutError("the watcher reads nothing")
                writer.write(conn.send(h11.Data(data=HEARTBEAT_LINE)) or b"")
                await _drain(writer)

    routes: dict[str, Handler] = {
        "/healthz": healthz, "/readyz": readyz, "/status": status, "/metrics": metrics,
    }  # fmt: skip
    if hub is not None:
        routes["/watch"] = watch
    return App(routes, streams=frozenset({"/watch"}))


class _Conn:
    __slots__ = ("busy", "deadline", "lost", "stream", "transport")

    def __init__(self, transport: asyncio.BaseTransport, deadline: float) -> None:
        self.transport = transport
        self.deadline = deadline
        self.busy = 0
        self.stream = False  # a /watch stream: busy for as long as it lasts
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
        if len(self.conns) >= self.cap:  # every connection counts, streams too
            idle = next((c for c in self.conns.values() if not c.busy), None)
            if idle is None:  # else the oldest stream: a probe always gets in
                idle = next((c for c in self.conns.values() if c.stream), None)
            if idle is not None:
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

    def streaming(self, transport: asyncio.BaseTransport | None) -> None:
        """The connection now carries a stream (it may make room for a probe)."""
        conn = self.conns.get(transport) if transport is not None else None
        if conn is not None:
            conn.stream = True

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
    def __init__(self, status: int, why: str = "") -> None:
        super().__init__(why)
        self.status = status


_HEAD_END = re.compile(rb"\r?\n\r?\n")


def _check_head(head: bytes) -> None:
    """What h11 tolerates and a proxy in front may read otherwise: refused (400)."""
    lines = head.split(b"\r\n")
    if any(b"\n" in line or b"\r" in line for line in lines):
        raise _BadRequest(400, "a bare LF or CR in the request head")
    fields = lines[1:]
    if len(fields) > MAX_HEADERS:
        raise _BadRequest(431, "too many header fields")
    names = []
    for line in fields:
        if line[:1] in (b" ", b"\t"):
            raise _BadRequest(400, "obs-fold (a header line that continues the one before)")
        names.append(line.split(b":", 1)[0].lower())
    if names.count(b"content-length") > 1:
        raise _BadRequest(400, "more than one Content-Length")
    if b"transfer-encoding" in names:
        raise _BadRequest(400, "Transfer-Encoding (GET takes no body)")


class _Reader:
    """One connection's requests, framed by h11 after `_check_head`."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self.reader = reader
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        self.buffer = b""

    async def next_request(self) -> Request | None:
        """The next request (its body read and ignored); None at a clean end."""
        while True:
            match = _HEAD_END.search(self.buffer)
            if match is not None:
                break
            if len(self.buffer) > MAX_HEAD:
                raise _BadRequest(431, "request head too large")
            chunk = await self.reader.read(4096)
            if not chunk:
                if self.buffer.strip():
                    raise _BadRequest(400, "the connection ended inside a request")
                return None
            self.buffer += chunk
        _check_head(self.buffer[: match.start()])
        data, self.buffer = self.buffer, b""
        try:
            self.conn.receive_data(data)
            event = self.conn.next_event()
            if not isinstance(event, h11.Request):
                raise _BadRequest(400, "not a request")
            request = Request(
                event.method.decode("ascii", "replace"),
                event.target.decode("latin-1").split("?", 1)[0],
                "HTTP/" + event.http_version.decode("ascii", "replace"),
                {k.decode("latin-1"): v.decode("latin-1") for k, v in event.headers},
                conn=self.conn,
            )
            body = 0
            while True:  # GET has no body: a small one is read and ignored
                event = self.conn.next_event()
                if event is h11.NEED_DATA:
                    chunk = await self.reader.read(4096)
                    if not chunk:
                        raise _BadRequest(400, "the connection ended inside a body")
                    self.conn.receive_data(chunk)
                    continue
                if isinstance(event, h11.Data):
                    body += len(event.data)
                    if body > MAX_BODY:
                        raise _BadRequest(413, "a request body is not expected")
                    continue
                break
        except h11.RemoteProtocolError as exc:
            raise _BadRequest(exc.error_status_hint, str(exc)) from exc
        return request

    def respond(self, request: Request, response: Response) -> bytes:
        """The response's bytes (no body for HEAD; h11 decides keep-alive)."""
        headers = [("Content-Type", response.content_type),
                   ("Content-Length", str(len(response.body)))]  # fmt: skip
        if request.headers.get("connection", "").lower() == "close":
            headers.append(("Connection", "close"))
        out = self.conn.send(h11.Response(status_code=response.status, headers=headers)) or b""
        if request.method != "HEAD":
            out += self.conn.send(h11.Data(data=response.body)) or b""
        return out + (self.conn.send(h11.EndOfMessage()) or b"")

    def reusable(self) -> bool:
        """Ready for the next request on this connection (keep-alive)."""
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
            return True
        return False

    def refuse(self, bad: _BadRequest) -> bytes:
        """A 400-class answer that closes the connection."""
        body = json.dumps({"error": str(bad) or "bad request"}).encode()
        head = (f"HTTP/1.1 {bad.status} {REASONS.get(bad.status, 'Bad Request')}\r\n"
                f"Content-Type: {JSON}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n")  # fmt: skip
        return head.encode("latin-1") + body


async def _drain(writer: asyncio.StreamWriter) -> None:
    """Wait (at most WRITE_TIMEOUT) until what was written is on its way: at once when
    the transport took it all, as it almost always does (no timer, no task then)."""
    if writer.transport.get_write_buffer_size() or writer.transport.is_closing():
        async with asyncio.timeout(WRITE_TIMEOUT):
            await writer.drain()


async def _until_eof(reader: asyncio.StreamReader, gone: asyncio.Event) -> None:
    """Read (and ignore) until the client closes its side, then set `gone`."""
    try:
        while await reader.read(4096):
            pass
    except (ConnectionError, OSError):
        pass
    gone.set()


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
        requests = _Reader(reader)
        try:
            while not gone.is_set():
                try:
                    request = await requests.next_request()
                except _BadRequest as bad:
                    writer.write(requests.refuse(bad))
                    break
                if request is None:
                    break
                request.writer, request.gone = writer, gone
                leaving = None
                if request.path in self.app.streams:  # notice at once when the client leaves
                    leaving = asyncio.ensure_future(_until_eof(reader, gone))
                    self.guard.streaming(transport)
                self.guard.request_started(transport)
                try:
                    keep = await self._answer(request, requests, writer)
                finally:
                    self.guard.request_done(transport)
                    if leaving is not None:
                        leaving.cancel()
                        await asyncio.wait({leaving})
                if not keep or leaving is not None or not requests.reusable():
                    break  # a stream's connection (read ahead for its end) is not reused
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass  # the client went away, or the guard closed the connection
        except h11.LocalProtocolError:
            pass  # a response that no longer fits the connection's state: end it
        finally:
            self.guard.forget(transport)
            writer.close()
            if task is not None:
                self._tasks.discard(task)

    async def _answer(
        self, request: Request, requests: _Reader, writer: asyncio.StreamWriter
    ) -> bool:
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
        writer.write(requests.respond(request, response))
        await _drain(writer)
        return True

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
        server.serve, host, port, reuse_address=True, backlog=128, limit=MAX_HEAD
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
