"""Uncontended acquire+release cycles: leaderd vs redis-py's Lock, in one process.

A quicker, lower-noise companion of lock_bench.py's uncontended case: ROUNDS
interleaved rounds of 1,000 cycles each; prints the medians and the ratio per round.
Run: `python bench/cycles_probe.py --rounds 15`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # devtools

import redis

import leaderd
from devtools.devserver import RedisServer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--cycles", type=int, default=1000)
    args = parser.parse_args()
    with RedisServer() as server:
        r = redis.Redis(port=server.port)
        client = leaderd.LockClient(r)

        def leaderd_cycles(n: int) -> None:
            for _ in range(n):
                client.try_lock("k", expiration=5).unlock()

        def redis_py_cycles(n: int) -> None:
            for _ in range(n):
                lock = r.lock("k2", timeout=5)
                lock.acquire()
                lock.release()

        leaderd_cycles(200)
        redis_py_cycles(200)
        rates: dict[str, list[float]] = {"leaderd": [], "redis-py": []}
        for _ in range(args.rounds):
            for name, run in (("leaderd", leaderd_cycles), ("redis-py", redis_py_cycles)):
                started = time.perf_counter()
                run(args.cycles)
                rates[name].append(args.cycles / (time.perf_counter() - started))
    ratios = [a / b for a, b in zip(rates["leaderd"], rates["redis-py"], strict=True)]
    print(f"redis-py {redis.__version__}, {args.rounds} rounds x {args.cycles} cycles")
    for name, values in rates.items():
        print(f"{name}: {statistics.median(values):,.0f} cycles/s (median)")
    print(f"leaderd / redis-py: median {statistics.median(ratios):.2f}x, "
          f"min {min(ratios):.2f}x, max {max(ratios):.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
