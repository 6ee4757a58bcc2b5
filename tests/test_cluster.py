"""Redis Cluster: a real 3-primary cluster; every helper key shares the lock's slot."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio

from devtools.devserver import RedisServer, find_redis_server
from leaderd import AsyncLockClient, FixedIntervalStrategy, LockClient

from .daemons import Daemon, poll


def redis_cli() -> str:
    cli = Path(find_redis_server()).with_name("redis-cli")
    if not cli.exists():
        pytest.skip("no redis-cli next to redis-server")
    return str(cli)


@pytest.fixture
def cluster(redis_factory: Callable[..., RedisServer]) -> Iterator[list[RedisServer]]:
    nodes = [redis_factory(extra_args=["--cluster-enabled", "yes",
                                       "--cluster-node-timeout", "2000"])
             for _ in range(3)]  # fmt: skip
    out = subprocess.run(
        [redis_cli(), "--cluster", "create", *[f"127.0.0.1:{n.port}" for n in nodes],
         "--cluster-replicas", "0", "--cluster-yes"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    for n in nodes:
        r = redis.Redis(port=n.port)
        poll(lambda r=r: r.cluster("info")["cluster_state"] == "ok", 20, 0.05)
    yield nodes


KEYS = ["jobs", "leaderd:{jobs}", "a}b{", "x{}y", "ünï cödé"]


def test_sync_library_on_a_cluster(cluster: list[RedisServer]) -> None:
    client = LockClient(redis.RedisCluster(host="127.0.0.1", port=cluster[0].port))
    for key in KEYS:  # CROSSSLOT would fail the scripts if any helper key strayed
        lock = client.lock(key, expiration=5, retry=FixedIntervalStrategy(0.05, 10))
        lock.refresh()
        lock.unlock()


async def test_async_library_on_a_cluster(cluster: list[RedisServer]) -> None:
    rc = redis.asyncio.RedisCluster(host="127.0.0.1", port=cluster[1].port)
    client = AsyncLockClient(rc)
    tokens = []
    for key in KEYS:
        lock = await client.lock(key, expiration=5, retry=FixedIntervalStrategy(0.05, 10))
        await lock.refresh()
        tokens.append(lock.fencing_token)
        await lock.unlock()
    holder = await client.try_lock("jobs", expiration=0.3)
    # No pub/sub on the asyncio cluster client: a waiter polls and wakes at expiry.
    waiter = await client.lock("jobs", expiration=5, retry=FixedIntervalStrategy(5, 3))
    assert waiter.fencing_token > holder.fencing_token
    await rc.aclose()


def test_daemons_on_a_cluster(cluster: list[RedisServer], tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{cluster[2].port}/0"
    ds = [Daemon(tmp_path, url, f"pod-{i}", "--redis-cluster") for i in range(2)]
    try:
        for d in ds:
            d.wait_http()
        poll(lambda: sum(d.ready() == 200 for d in ds) == 1, 10)
        leader = next(d for d in ds if d.ready() == 200)
        other = next(d for d in ds if d is not leader)
        leader.signal(signal.SIGTERM)
        assert leader.wait() == 0
        poll(lambda: other.ready() == 200, 5)
    finally:
        for d in ds:
            d.stop()


def test_the_functions_admin_step_on_a_cluster(cluster: list[RedisServer]) -> None:
    """Functions live per node: `leaderd functions` loads, lists and prunes every
    primary with --redis-cluster, and refuses one node's answer without it; the lock
    clients then call FCALL on the key's node."""
    from leaderd import functions

    from .daemons import leaderd_cmd

    url = f"redis://127.0.0.1:{cluster[0].port}/0"

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(leaderd_cmd("functions", *args, "--redis-url", url),
                              capture_output=True, text=True, timeout=60)  # fmt: skip

    alone = cli("status")
    assert alone.returncode == 1 and "add --redis-cluster" in alone.stderr
    assert cli("status", "--redis-cluster").returncode == 3  # missing on every primary
    assert cli("load", "--redis-cluster").returncode == 0
    status = cli("status", "--redis-cluster")
    assert status.returncode == 0 and status.stdout.count(f"{functions.LIBRARY} loaded") == 3
    for node in cluster:
        r = redis.Redis(port=node.port)
        assert [e[1].decode() for e in r.function_list()] == [functions.LIBRARY]
        r.config_resetstat()
    client = LockClient(redis.RedisCluster(host="127.0.0.1", port=cluster[0].port))
    client.try_lock("leaderd:{jobs}", expiration=5).unlock()
    calls = [redis.Redis(port=n.port).info("commandstats").get("cmdstat_fcall", {})
             for n in cluster]  # fmt: skip
    assert sum(int(c.get("calls", 0)) for c in calls) == 2  # straight to the key's node
    assert cli("prune", "--redis-cluster").stdout.count("nothing to delete") == 3
