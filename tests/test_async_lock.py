"""The asyncio lock client against a real redis-server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import redis
import redis.asyncio

from devtools.devserver import RedisServer
from leaderd import (
    AsyncLockClient,
    FailedToPreemptLockError,
    FixedIntervalStrategy,
    LockError,
    LockNotHeldError,
    MaxRetryError,
)
from leaderd._core import fence_key


@pytest.fixture
async def aclient(redis_server: RedisServer) -> AsyncIterator[AsyncLockClient]:
    client = redis.asyncio.Redis.from_url(redis_server.url, socket_timeout=5)
    yield AsyncLockClient(client)
    await client.aclose()


async def test_try_lock_refresh_unlock(aclient: AsyncLockClient, r: redis.Redis) -> None:
    lock = await aclient.try_lock("jobs", expiration=2)
    assert r.get("jobs") == lock.value.encode()
    with pytest.raises(FailedToPreemptLockError):
        await aclient.try_lock("jobs", expiration=2)
    r.pexpire("jobs", 100)
    await lock.refresh()
    assert r.pttl("jobs") > 1900
    await lock.unlock()
    assert r.get("jobs") is None
    with pytest.raises(LockNotHeldError):
        await lock.refresh()
    with pytest.raises(LockNotHeldError):
        await lock.unlock()


async def test_never_touches_someone_elses_lock(aclient: AsyncLockClient, r: redis.Redis) -> None:
    lock = await aclient.try_lock("jobs", expiration=5)
    r.set("jobs", "theirs", px=5000)
    with pytest.raises(LockNotHeldError):
        await lock.refresh()
    with pytest.raises(LockNotHeldError):
        await lock.unlock()
    assert r.get("jobs") == b"theirs"


async def test_async_context_manager(aclient: AsyncLockClient, r: redis.Redis) -> None:
    async with await aclient.lock("jobs", expiration=5) as lock:
        assert r.get("jobs") == lock.value.encode()
    assert r.get("jobs") is None


async def test_tokens_increase(aclient: AsyncLockClient, redis_server: RedisServer) -> None:
    tokens = []
    for _ in range(20):
        lock = await aclient.try_lock("jobs", expiration=5)
        tokens.append(lock.fencing_token)
        await lock.unlock()
    redis_server.flushall()
    tokens.append((await aclient.try_lock("jobs", expiration=5)).fencing_token)
    assert tokens == sorted(set(tokens))


async def test_max_retry(aclient: AsyncLockClient) -> None:
    holder = await aclient.try_lock("jobs", expiration=5)
    with pytest.raises(MaxRetryError) as err:
        await aclient.lock("jobs", retry=FixedIntervalStrategy(0.02, 2))
    assert err.value.holder == holder.value
    assert err.value.attempts == 3  # max_retry + 1, as in the sync client


async def test_release_wakes_waiter(aclient: AsyncLockClient) -> None:
    holder = await aclient.try_lock("jobs", expiration=30)
    waiter = asyncio.create_task(
        aclient.lock("jobs", expiration=5, retry=FixedIntervalStrategy(10, 3))
    )
    await asyncio.sleep(0.2)
    released = time.monotonic()
    await holder.unlock()
    lock = await asyncio.wait_for(waiter, 5)
    assert time.monotonic() - released < 0.1
    await lock.unlock()


async def test_waiter_wakes_at_lease_expiry(aclient: AsyncLockClient) -> None:
    await aclient.try_lock("jobs", expiration=0.3)
    started = time.monotonic()
    lock = await aclient.lock("jobs", retry=FixedIntervalStrategy(10, 3))
    assert time.monotonic() - started < 1.0
    await lock.unlock()


async def test_attempt_timeout_against_frozen_redis(
    aclient: AsyncLockClient, redis_server: RedisServer
) -> None:
    redis_server.pause()
    try:
        started = time.monotonic()
        with pytest.raises(MaxRetryError) as err:
            await aclient.lock("jobs", timeout=0.1, retry=FixedIntervalStrategy(0.05, 2))
        assert time.monotonic() - started < 1.5
        assert isinstance(err.value.__cause__, redis.TimeoutError)
    finally:
        redis_server.resume()
    # The client recovers: the half-read connections were dropped.
    lock = await aclient.lock("jobs", timeout=1, retry=FixedIntervalStrategy(0.05, 20))
    assert int(await aclient.redis.get(fence_key("jobs"))) == lock.fencing_token


async def test_wrong_type(aclient: AsyncLockClient, r: redis.Redis) -> None:
    r.hset("jobs", "a", "b")
    with pytest.raises(LockError, match="wrong type"):
        await aclient.try_lock("jobs")


async def test_auto_refresh_task(aclient: AsyncLockClient, r: redis.Redis) -> None:
    lock = await aclient.try_lock("jobs", expiration=0.3)
    task = lock.auto_refresh(interval=0.05)
    await asyncio.sleep(0.7)
    assert r.get("jobs") == lock.value.encode()
    assert not task.done()
    r.delete("jobs")
    with pytest.raises(LockNotHeldError):
        await asyncio.wait_for(task, 2)


async def test_auto_refresh_cancel_stops(aclient: AsyncLockClient) -> None:
    lock = await aclient.try_lock("jobs", expiration=5)
    task = lock.auto_refresh(interval=0.05)
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_many_tasks_mutual_exclusion(redis_server: RedisServer) -> None:
    clients = [redis.asyncio.Redis.from_url(redis_server.url) for _ in range(4)]
    counter = {"n": 0}

    async def work(c: redis.asyncio.Redis) -> None:
        ac = AsyncLockClient(c)
        for _ in range(20):
            async with await ac.lock("counter", retry=FixedIntervalStrategy(0.01, None)):
                n = counter["n"]
                await asyncio.sleep(0.001)
                counter["n"] = n + 1

    await asyncio.wait_for(asyncio.gather(*(work(c) for c in clients for _ in range(2))), 60)
    assert counter["n"] == 160
    for c in clients:
        await c.aclose()


async def test_cancelling_a_waiting_lock_call_is_never_swallowed(
    aclient: AsyncLockClient,
) -> None:
    """A cancelled lock() must end cancelled, wherever the cancellation lands.

    (redis-py 8.0/8.1's asyncio client loses some cancellations; an elector that
    survives its own cancellation would keep contending after shutdown.)
    """
    import random

    await aclient.try_lock("jobs", expiration=30)
    swallowed = 0
    for _ in range(150):
        task = asyncio.create_task(aclient.lock("jobs", retry=FixedIntervalStrategy(0.005, None)))
        for _ in range(random.randint(0, 12)):
            await asyncio.sleep(0)
        if random.random() < 0.5:
            await asyncio.sleep(random.uniform(0, 0.01))
        requested = task.cancel()
        await asyncio.wait({task}, timeout=2)
        if requested and not (task.done() and task.cancelled()):
            swallowed += 1
            task.cancel()
    assert swallowed == 0


async def test_one_subscription_serves_every_wait_and_keeps_a_bounded_set_of_channels(
    aclient: AsyncLockClient, r: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    from leaderd.aio import SharedSubscription

    from .test_elector import until

    monkeypatch.setattr(SharedSubscription, "MAX_CHANNELS", 3)
    for i in range(6):  # a waiter on ever new keys: each wait subscribes once
        r.set(f"busy{i}", "someone else", px=60_000)
        with pytest.raises(MaxRetryError):
            await aclient.lock(f"busy{i}", expiration=5,
                               retry=FixedIntervalStrategy(0.05, max_retry=1))  # fmt: skip
        # it leaves the queue when it gives up (in the background)
        await until(lambda i=i: r.zcard(f"{{busy{i}}}:waiters") == 0)
    await until(lambda: len(r.pubsub_channels("leaderd:released:*")) == 3)  # unsubscribed
    assert len(aclient.subscription.confirmed) == 3
    clients = [c for c in r.client_list() if c.get("sub", "0") != "0"]
    assert len(clients) == 1  # one pub/sub connection for all of them


async def test_many_first_subscriptions_at_once_take_one_pooled_connection(
    redis_server: RedisServer, r: redis.Redis
) -> None:
    """redis-py's PubSub takes a pool connection per concurrent first command and keeps
    only the last: with a bounded pool, thousands of electors starting together would
    leak the pool dry. The shared subscription connects once."""
    from leaderd.aio import SharedSubscription

    pool = redis.asyncio.BlockingConnectionPool.from_url(
        redis_server.url, max_connections=3, timeout=2
    )
    client = redis.asyncio.Redis(connection_pool=pool)
    subscription = SharedSubscription(client)
    try:
        assert all(await asyncio.gather(*(subscription.listen(f"ch{i}", 2.0) for i in range(50))))
        assert len([c for c in r.client_list() if c.get("sub", "0") != "0"]) == 1
        # two of the three connections are still free for commands
        assert await asyncio.wait_for(asyncio.gather(client.ping(), client.ping()), 1.5)
    finally:
        await subscription.close()
        await client.aclose()
