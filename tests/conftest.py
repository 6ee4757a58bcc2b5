"""Fixtures: real redis-server processes on free loopback ports, and clients for them."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from devtools.devserver import RedisServer


@pytest.fixture
def redis_factory() -> Iterator[Callable[..., RedisServer]]:
    """Start any number of servers; all are killed and removed after the test."""
    servers: list[RedisServer] = []

    def make(**kwargs: Any) -> RedisServer:
        server = RedisServer(**kwargs).start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def redis_server(redis_factory: Callable[..., RedisServer]) -> RedisServer:
    return redis_factory()


@pytest.fixture
def r(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url, socket_timeout=5)
    yield client
    client.close()


@pytest.fixture
async def aclient(redis_server: RedisServer) -> AsyncIterator[Any]:
    """An `AsyncLockClient` on the test's server."""
    import redis.asyncio

    from leaderd import AsyncLockClient

    client = redis.asyncio.Redis.from_url(redis_server.url, socket_timeout=5)
    locks = AsyncLockClient(client)
    yield locks
    await locks.aclose()
    await client.aclose()


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[Any]:
    """A `LockClient` on the test's server."""
    from leaderd import LockClient

    locks = LockClient(redis.Redis.from_url(redis_server.url, socket_timeout=5))
    yield locks
    locks.close()


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Start `leaderd run` processes (tests/daemons.py); all are killed after the test."""
    from .daemons import Daemon

    daemons: list[Daemon] = []

    def make(*args: Any, **kw: Any) -> Daemon:
        d = Daemon(tmp_path, *args, **kw)
        daemons.append(d)
        return d

    yield make
    for d in daemons:
        d.stop()


def wait_for(predicate: Callable[[], Any], timeout: float = 5.0, interval: float = 0.01) -> Any:
    """Poll `predicate` until it returns something truthy, or fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {predicate}")
        time.sleep(interval)


#: A listener id (16 hex digits, as a client makes them) for hand-crafted queue entries.
L1 = "00000000000000a1"


def listening_waiter(r: redis.Redis, key: str, listener: str = L1) -> Any:
    """A pub/sub connection subscribed (confirmed) to `listener`'s wake-up channel for
    `key`: a waiter that is alive but will not act, so hand-overs to it stay visible."""
    from leaderd import _core

    listening = r.pubsub()
    listening.subscribe(_core.waiter_channel(key, listener))
    wait_for(lambda: listening.get_message(timeout=0.1))
    return listening
