"""The only module that drives redis-py connection objects directly.

leaderd's one-round-trip calls (a script plus, optionally, a pipelined WAIT on the same
socket, each bounded by the call's timeout) need a connection of their own rather than
a client command. Everything here is redis-py's public connection API: constructor
keyword arguments, `connect`, `pack_command(s)`, `send_packed_command`, `can_read`,
`read_response`, `disconnect`, and the pool's `connection_class`/`connection_kwargs`/
`get_connection`/`release`. `tests/test_redispy_api.py` checks that surface and names
the redis-py version if it ever changes.
"""

from __future__ import annotations

import inspect
import time
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

#: The connection methods used here; the API test checks each exists on every class.
SYNC_METHODS = (
    "connect",
    "disconnect",
    "pack_command",
    "pack_commands",
    "send_packed_command",
    "can_read",
    "read_response",
)
ASYNC_METHODS = ("disconnect", "pack_commands", "send_packed_command", "read_response")


def new_connection(pool: Any, timeout: float | None) -> Any:
    """A connection of `pool`'s class and settings whose connect (socket and handshake)
    is bounded by `timeout` and not retried, so a lock attempt never outlives its
    timeout, even against a frozen server."""
    kwargs = dict(pool.connection_kwargs)
    if timeout is not None:
        for name in ("socket_connect_timeout", "socket_timeout"):
            current = kwargs.get(name)
            kwargs[name] = timeout if current is None else min(current, timeout)
        kwargs["retry"] = Retry(NoBackoff(), 0)
    return pool.connection_class(**kwargs)


def is_stale(conn: Any) -> bool:
    """An idle socket with something to read was closed (or desynced) by the server."""
    try:
        return bool(conn.can_read(timeout=0))
    except (redis.ConnectionError, OSError):
        return True


def send(conn: Any, packed: Any) -> None:
    """Send packed commands; a socket that died while idle is reopened once (the
    commands were not sent, so resending is safe)."""
    try:
        conn.send_packed_command(packed, check_health=False)
    except redis.ConnectionError:
        conn.disconnect()
        conn.connect()
        conn.send_packed_command(packed, check_health=False)


def roundtrip(conn: Any, commands: list[tuple[Any, ...]], timeout: float | None) -> list[Any]:
    """Send `commands` in one write and read every reply, all within `timeout`; an
    error reply is returned in place (the connection stays in sync), not raised."""
    if len(commands) == 1:  # the common case, kept lean
        send(conn, conn.pack_command(*commands[0]))
        try:
            return [read(conn, timeout)]
        except redis.ResponseError as exc:
            return [exc]
    send(conn, conn.pack_commands(commands))
    deadline = None if timeout is None else time.monotonic() + timeout
    replies: list[Any] = []
    for _ in commands:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            replies.append(read(conn, left))
        except redis.ResponseError as exc:
            replies.append(exc)
    return replies


def read(conn: Any, timeout: float | None) -> Any:
    """Read one reply, waiting at most `timeout` for each part of it.

    redis-py >= 8 takes the timeout itself (`read_response(timeout=...)`); before
    that, `can_read` polls the socket with the call's timeout first (one more system
    call), and the rest of a reply that has started is bounded by the socket timeout.
    """
    if timeout is None:
        return conn.read_response()
    if takes_read_timeout(type(conn)):
        return conn.read_response(timeout=timeout)
    if not conn.can_read(timeout=timeout):
        raise redis.TimeoutError(f"Redis did not answer within {timeout}s")
    return conn.read_response()


_READ_TIMEOUT: dict[Any, bool] = {}


def takes_read_timeout(cls: Any) -> bool:
    """Whether this connection class's `read_response` accepts `timeout=` (redis-py 8)."""
    known = _READ_TIMEOUT.get(cls)
    if known is None:
        try:
            known = "timeout" in inspect.signature(cls.read_response).parameters
        except (TypeError, ValueError):
            known = False
        _READ_TIMEOUT[cls] = known
    return known


async def asend(conn: Any, commands: list[tuple[Any, ...]]) -> None:
    """asyncio `send`: pipeline `commands` in one write, reopening a dead idle socket."""
    packed = conn.pack_commands(commands)
    try:
        await conn.send_packed_command(packed)
    except redis.ConnectionError:
        await conn.disconnect()
        await conn.send_packed_command(packed)


async def aread_all(conn: Any, count: int) -> list[Any]:
    """Read `count` replies; an error reply is returned in place, not raised."""
    replies: list[Any] = []
    for _ in range(count):
        try:
            replies.append(await conn.read_response())
        except redis.ResponseError as exc:
            replies.append(exc)
    return replies
