"""--min-replicas-ack: a write counts only once enough replicas have it (WAIT)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
import redis
import redis.asyncio

from devtools.devserver import RedisServer
from leaderd import AsyncLockClient, FixedIntervalStrategy, MaxRetryError, NotReplicatedError

from .daemons import Daemon, poll


def primary_and_replica(make: Callable[..., RedisServer]) -> tuple[RedisServer, RedisServer]:
    primary = make()
    replica = make(extra_args=["--replicaof", "127.0.0.1", str(primary.port)])
    r = redis.Redis.from_url(replica.url)
    poll(lambda: r.info("replication").get("master_link_status") == "up", 10)
    return primary, replica


async def test_library_waits_for_replicas(redis_factory: Callable[..., RedisServer]) -> None:
    primary, replica = primary_and_replica(redis_factory)
    client = redis.asyncio.Redis.from_url(primary.url)
    one = AsyncLockClient(client, min_replicas=1)
    lock = await one.try_lock("jobs", expiration=5, timeout=1)
    await lock.refresh(timeout=1)
    # It really is on the replica when the call returns.
    assert redis.Redis.from_url(replica.url).get("jobs") == lock.value.encode()
    await lock.unlock()
    two = AsyncLockClient(client, min_replicas=2)  # there is only one replica
    with pytest.raises(NotReplicatedError, match="1 of 2 replicas"):
        await two.try_lock("jobs", expiration=5, timeout=0.3)
    with pytest.raises(MaxRetryError) as err:
        await two.lock("jobs", expiration=5, timeout=0.2, retry=FixedIntervalStrategy(0.01, 1))
    assert isinstance(err.value.__cause__, NotReplicatedError)
    await client.aclose()


def test_daemon_leads_only_while_replicated(
    redis_factory: Callable[..., RedisServer], spawn: Callable[..., Daemon]
) -> None:
    primary, replica = primary_and_replica(redis_factory)
    d = spawn(primary.url, "pod-0", "--min-replicas-ack", "1", ttl="2s")
    d.wait_http()
    poll(lambda: d.ready() == 200, 10)
    replica.kill()  # writes still reach the primary, but no replica has them
    poll(lambda: d.ready() == 503, 5)
    # The refresh fails as NotReplicatedError, or as a timeout when Redis's first
    # WAIT after losing the replica overruns its own timeout (seen with 6.2). The
    # deadline can pass (503) while that refresh is still waiting: wait for its log.
    poll(lambda: any(e["event"] == "refresh_failed" for e in d.events()), 5)
    assert d.get("/healthz")[0] == 200
    replica.start()
    poll(lambda: d.ready() == 200, 15)


def test_too_many_required_replicas_never_leads(
    redis_factory: Callable[..., RedisServer], spawn: Callable[..., Daemon]
) -> None:
    primary, _ = primary_and_replica(redis_factory)
    d = spawn(primary.url, "pod-0", "--min-replicas-ack", "2")
    d.wait_http()
    poll(lambda: any(e["event"] == "redis_unavailable" for e in d.events()), 5)
    asyncio.run(asyncio.sleep(0.5))
    assert d.ready() == 503 and d.proc.poll() is None
