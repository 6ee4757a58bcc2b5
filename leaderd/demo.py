"""`make demo`: leaderd on a throw-away local Redis, no root and no Docker needed.

Three workers contend for one lock; each holds it briefly and releases it. The demo
prints who holds the lock, its fencing token, and how long each hand-over took.
"""

from __future__ import annotations

import statistics
import threading
import time

import redis

from . import FixedIntervalStrategy, LockClient
from .devserver import RedisServer


def main() -> None:
    with RedisServer() as server:
        print(f"local redis-server on 127.0.0.1:{server.port} ({server.binary})")
        client = LockClient(redis.Redis.from_url(server.url))
        released_at: list[float] = []
        handovers: list[float] = []
        mutex = threading.Lock()

        def worker(name: str) -> None:
            retry = FixedIntervalStrategy(1.0, max_retry=None)  # slow polling on purpose
            for _ in range(3):
                with client.lock("demo", expiration=5, retry=retry) as lock:
                    now = time.monotonic()
                    with mutex:
                        gap = (now - released_at[-1]) * 1000 if released_at else None
                        if gap is not None:
                            handovers.append(gap)
                    took = f"hand-over {gap:6.2f} ms" if gap is not None else "first"
                    print(f"  {name} holds the lock  token={lock.fencing_token}  ({took})")
                    time.sleep(0.2)
                    with mutex:
                        released_at.append(time.monotonic())

        threads = [threading.Thread(target=worker, args=(f"worker-{i}",)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        print(
            f"{len(handovers)} hand-overs: median {statistics.median(handovers):.2f} ms, "
            f"max {max(handovers):.2f} ms (waiters poll only every 1 s: the release "
            f"message wakes them)"
        )


if __name__ == "__main__":
    main()
