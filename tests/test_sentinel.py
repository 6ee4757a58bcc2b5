"""Redis Sentinel: a real primary, replica and Sentinel; a forced failover under a leader."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import redis

from devtools.devserver import RedisServer

from .daemons import Daemon, poll

KEY = "leaderd:{jobs}"


def test_leader_survives_a_sentinel_failover(
    redis_factory: Callable[..., RedisServer], tmp_path: Path
) -> None:
    primary = redis_factory()
    replica = redis_factory(extra_args=["--replicaof", "127.0.0.1", str(primary.port)])
    sentinel = redis_factory(
        sentinel=True,
        config=(f"sentinel monitor mymaster 127.0.0.1 {primary.port} 1\n"
                "sentinel down-after-milliseconds mymaster 1000\n"
                "sentinel failover-timeout mymaster 3000\n"),
    )  # fmt: skip
    s = redis.Redis(port=sentinel.port)
    poll(lambda: len(s.execute_command("SENTINEL", "replicas", "mymaster")) == 1, 10)
    ds = [
        Daemon(tmp_path, "", f"pod-{i}", "--sentinel", f"127.0.0.1:{sentinel.port}",
               "--sentinel-master", "mymaster", ttl="3s")
        for i in range(2)
    ]  # fmt: skip
    try:
        for d in ds:
            d.wait_http()
        poll(lambda: sum(d.ready() == 200 for d in ds) == 1, 10)
        assert redis.Redis.from_url(primary.url).exists(KEY)
        s.execute_command("SENTINEL", "failover", "mymaster")
        poll(lambda: s.execute_command("SENTINEL", "get-master-addr-by-name", "mymaster")[1]
             == str(replica.port).encode(), 15)  # fmt: skip
        # After the switch, exactly one daemon leads, through the new primary.
        poll(lambda: redis.Redis.from_url(replica.url).exists(KEY)
             and sum(d.ready() == 200 for d in ds) == 1, 15)  # fmt: skip
        assert all(d.proc.poll() is None for d in ds)
        assert all(d.get("/healthz")[0] == 200 for d in ds)
    finally:
        for d in ds:
            d.stop()
