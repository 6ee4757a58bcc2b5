"""The redis-py surface leaderd relies on (`leaderd/_wire.py`, `leaderd/connection.py`).

If a redis-py release changes any of it, these tests fail first and name the version,
instead of the lock failing in production.
"""

from __future__ import annotations

import inspect
from typing import Any

import pytest
import redis
import redis.asyncio
import redis.asyncio.connection
import redis.connection
from redis.credentials import CredentialProvider

from leaderd import _wire
from leaderd.connection import RedisTarget, pool_options

VERSION = f"redis-py {redis.__version__}"

SYNC_CLASSES = [redis.Connection, redis.UnixDomainSocketConnection, redis.SSLConnection]
ASYNC_CLASSES = [
    redis.asyncio.Connection,
    redis.asyncio.UnixDomainSocketConnection,
    redis.asyncio.SSLConnection,
]


def _params(fn: Any) -> set[str]:
    return set(inspect.signature(fn).parameters)


@pytest.mark.parametrize(
    "cls", SYNC_CLASSES + ASYNC_CLASSES, ids=lambda c: c.__module__ + c.__name__
)
def test_connection_methods_exist(cls: type) -> None:
    is_async = cls in ASYNC_CLASSES
    for name in _wire.ASYNC_METHODS if is_async else _wire.SYNC_METHODS:
        assert callable(getattr(cls, name, None)), f"{VERSION}: {cls.__name__}.{name} is gone"
    if not is_async:
        assert "timeout" in _params(cls.can_read), f"{VERSION}: can_read() lost its timeout"
    required = [
        p
        for p in inspect.signature(cls.read_response).parameters.values()
        if p.name != "self" and p.default is inspect.Parameter.empty and p.kind is not p.VAR_KEYWORD
    ]
    assert not required, f"{VERSION}: read_response() now requires {required}"


@pytest.mark.parametrize("cls", SYNC_CLASSES, ids=lambda c: c.__name__)
def test_sync_constructor_takes_the_bounding_arguments(cls: type) -> None:
    """`_wire.new_connection` bounds connects with these constructor arguments."""
    kwargs: dict[str, Any] = dict(
        socket_timeout=0.5, socket_connect_timeout=0.5, retry=_wire.Retry(_wire.NoBackoff(), 0),
        credential_provider=CredentialProvider(),
    )  # fmt: skip
    if cls is redis.UnixDomainSocketConnection:
        kwargs["path"] = "/nonexistent.sock"
    conn = cls(**kwargs)
    assert conn.socket_timeout == 0.5, VERSION
    assert conn.socket_connect_timeout == 0.5, VERSION


def test_pool_attributes_and_url_parsing() -> None:
    for url, cls in (("redis://h:1/2", redis.Connection),
                     ("rediss://h:1/2", redis.SSLConnection),
                     ("unix:///tmp/x.sock?db=3", redis.UnixDomainSocketConnection)):  # fmt: skip
        for asyncio in (False, True):
            options = pool_options(RedisTarget(url, password_file="/dev/null"), asyncio=asyncio)
            pool_cls = redis.asyncio.ConnectionPool if asyncio else redis.ConnectionPool
            pool = pool_cls(**options)
            assert isinstance(pool.connection_kwargs, dict), VERSION
            assert pool.connection_class.__name__ == cls.__name__, (VERSION, url)
            conn = pool.make_connection() if not asyncio else pool.connection_class(
                **pool.connection_kwargs
            )  # fmt: skip
            assert conn is not None  # the options suit this connection class
    assert "command_name" not in {
        n
        for n, p in inspect.signature(
            redis.asyncio.ConnectionPool.get_connection
        ).parameters.items()
        if p.default is inspect.Parameter.empty
    }, f"{VERSION}: get_connection() needs arguments"


def test_read_timeout_is_taken_where_redis_py_offers_it() -> None:
    """redis-py 8 bounds a read itself; older versions are polled with can_read."""
    major = int(redis.__version__.split(".")[0])
    for cls in SYNC_CLASSES:
        assert _wire.takes_read_timeout(cls) == (major >= 8), (VERSION, cls.__name__)
