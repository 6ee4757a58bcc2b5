"""--priority: when the leader goes, the highest-priority waiting candidate leads."""

from __future__ import annotations

import signal
from collections.abc import Callable

import redis

from devtools.devserver import RedisServer

from .daemons import Daemon, poll


def test_the_highest_priority_waiter_takes_over(
    redis_server: RedisServer, spawn: Callable[..., Daemon]
) -> None:
    r = redis.Redis.from_url(redis_server.url)
    first = spawn(redis_server.url, "pod-first", "--priority", "0", ttl="5s")
    first.wait_http()
    poll(lambda: first.ready() == 200, 10)
    others = {}
    for n, (name, priority) in enumerate([("pod-low", "-1"), ("pod-high", "7"),
                                          ("pod-mid", "3")], start=1):  # fmt: skip
        # (polling every 10 s: the queue, not a lucky poll, decides who is next)
        others[name] = spawn(redis_server.url, name, "--priority", priority,
                             "--retry-interval", "10s", ttl="5s")  # fmt: skip
        others[name].wait_http()
        poll(lambda n=n: r.zcard("leaderd:{jobs}:waiters") == n, 10)
    assert others["pod-high"].status()["priority"] == 7
    order = []
    current = first
    for _ in range(3):
        current.signal(signal.SIGTERM)
        assert current.wait() == 0
        current = poll(lambda: next((d for d in others.values() if d.ready() == 200), None), 5)
        order.append(current.identity)
        others.pop(current.identity)
    assert order == ["pod-high", "pod-mid", "pod-low"]
