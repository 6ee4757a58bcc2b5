"""Does redis-py's asyncio client honour a task cancellation that lands inside a call?

Cancels 2,000 `GET`s at random points (0-0.4 ms after they start) and counts those
that returned normally although `cancel()` found them still running. Run it with each
redis-py: `.venv-redis-<version>/bin/python bench/cancel_probe.py` (after
`make test-compat`). leaderd's own calls are guarded either way (README).
"""

from __future__ import annotations

import asyncio
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # devtools

import redis
import redis.asyncio

from devtools.devserver import RedisServer


async def probe(port: int, calls: int = 2000) -> tuple[int, int]:
    r = redis.asyncio.Redis(port=port)
    await r.set("k", "v")
    lost = cancelled = 0
    rng = random.Random(1)
    for _ in range(calls):
        task = asyncio.ensure_future(r.get("k"))
        await asyncio.sleep(rng.uniform(0, 0.0004))
        if not task.cancel():
            continue  # it had finished already
        try:
            await task
            lost += 1
        except asyncio.CancelledError:
            cancelled += 1
        except redis.RedisError:
            pass
    await r.aclose()
    return cancelled + lost, lost


def main() -> None:
    with RedisServer() as server:
        in_flight, lost = asyncio.run(probe(server.port))
    share = 100 * lost / max(1, in_flight)
    print(f"redis-py {redis.__version__}: {in_flight} cancelled in flight, "
          f"{lost} returned normally ({share:.1f} %)")  # fmt: skip


if __name__ == "__main__":
    main()
