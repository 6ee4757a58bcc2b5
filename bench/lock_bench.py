"""Lock library benchmark: leaderd vs redis-py's Lock vs python-redis-lock, same Redis, one run.

Rounds are interleaved (lib A, B, C, A, B, C, ...) so machine noise hits every library
alike; figures are medians over rounds. Run with `make bench` or
`python bench/lock_bench.py --rounds 7`.
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # devtools

import redis
import redis_lock  # type: ignore[import-untyped]

import leaderd
from devtools.devserver import RedisServer, counting_connection_class

EXPIRATION = 10


@dataclass
class Lib:
    """Adapter: acquire(key) -> handle (blocking), release(handle)."""

    name: str
    make: Callable[[redis.Redis], tuple[Callable[[str], Any], Callable[[Any], None]]]
    counter: Any = None


def leaderd_lib(r: redis.Redis) -> tuple[Callable[[str], Any], Callable[[Any], None]]:
    client = leaderd.LockClient(r)
    retry = leaderd.FixedIntervalStrategy(0.1, max_retry=None)  # redis-py's poll interval

    def acquire(key: str) -> Any:
        return client.lock(key, expiration=EXPIRATION, retry=retry)

    return acquire, lambda lock: lock.unlock()


def redispy_lib(r: redis.Redis) -> tuple[Callable[[str], Any], Callable[[Any], None]]:
    def acquire(key: str) -> Any:
        lock = r.lock(key, timeout=EXPIRATION, sleep=0.1)
        assert lock.acquire(blocking=True, blocking_timeout=30)
        return lock

    return acquire, lambda lock: lock.release()


def prl_lib(r: redis.Redis) -> tuple[Callable[[str], Any], Callable[[Any], None]]:
    def acquire(key: str) -> Any:
        lock = redis_lock.Lock(r, key, expire=EXPIRATION)
        assert lock.acquire(blocking=True, timeout=EXPIRATION)
        return lock

    return acquire, lambda lock: lock.release()


LIBS = [("leaderd", leaderd_lib), ("redis-py Lock", redispy_lib), ("python-redis-lock", prl_lib)]


def new_client(url: str) -> tuple[redis.Redis, Any]:
    counting = counting_connection_class()
    pool = redis.ConnectionPool.from_url(url, connection_class=counting)
    return redis.Redis(connection_pool=pool), counting


@dataclass
class Results:
    cycles_per_s: dict[str, list[float]] = field(default_factory=dict)
    requests_per_cycle: dict[str, float] = field(default_factory=dict)
    wake_ms: dict[str, list[float]] = field(default_factory=dict)
    wake_proc_ms: dict[str, list[float]] = field(default_factory=dict)
    contention_per_s: dict[str, list[float]] = field(default_factory=dict)
    contention_max_wait_ms: dict[str, list[float]] = field(default_factory=dict)


def uncontended(url: str, name: str, make: Any, cycles: int, res: Results) -> None:
    r, counting = new_client(url)
    acquire, release = make(r)
    key = f"bench:uncontended:{name}"
    for _ in range(50):  # warm up: connections open, scripts cached
        release(acquire(key))
    sent = counting.sent
    started = time.perf_counter()
    for _ in range(cycles):
        release(acquire(key))
    elapsed = time.perf_counter() - started
    res.cycles_per_s.setdefault(name, []).append(cycles / elapsed)
    res.requests_per_cycle[name] = (counting.sent - sent) / cycles
    r.close()


def _waiter_process(url: str, conn: Any) -> None:
    """A long-lived waiter: on ("wait", lib, key, phase) acquire, report the time, release."""
    makers = {name: make(new_client(url)[0]) for name, make in LIBS}
    while True:
        msg = conn.recv()
        if msg is None:
            return
        _, name, key, phase = msg
        acquire, release = makers[name]
        time.sleep(phase)
        handle = acquire(key)
        at = time.perf_counter()  # CLOCK_MONOTONIC: comparable across processes
        release(handle)
        conn.send(at)


class WaiterPool:
    """Waiters in separate processes, as competing replicas would be."""

    def __init__(self, url: str, n: int) -> None:
        ctx = multiprocessing.get_context("fork")
        self.pipes = []
        self.procs = []
        for _ in range(n):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_waiter_process, args=(url, child), daemon=True)
            proc.start()
            self.pipes.append(parent)
            self.procs.append(proc)

    def start(self, name: str, key: str) -> None:
        for pipe in self.pipes:
            pipe.send(("wait", name, key, random.uniform(0, 0.1)))

    def times(self) -> list[float]:
        return [pipe.recv() for pipe in self.pipes if pipe.poll(30)]

    def close(self) -> None:
        for pipe in self.pipes:
            pipe.send(None)
        for proc in self.procs:
            proc.join(5)


def wakeup(
    url: str, name: str, make: Any, res: Results, pool: WaiterPool | None, waiters: int = 3
) -> None:
    """One holder, `waiters` blocked waiters; time from release to the first acquire.

    With `pool`, the waiters are processes; without, threads of this process (where
    the waiters woken together also compete for the GIL).
    """
    key = f"bench:wakeup:{name}"
    holder_r, _ = new_client(url)
    acquire, release = make(holder_r)
    held = acquire(key)
    acquired_at: list[float] = []
    lock = threading.Lock()
    clients = [] if pool else [new_client(url)[0] for _ in range(waiters)]

    def waiter(r: redis.Redis) -> None:
        time.sleep(random.uniform(0, 0.1))  # random phase against the poll interval
        w_acquire, w_release = make(r)
        handle = w_acquire(key)
        with lock:
            acquired_at.append(time.perf_counter())
        w_release(handle)

    threads = [threading.Thread(target=waiter, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    if pool:
        pool.start(name, key)
    time.sleep(0.3 + random.uniform(0, 0.1))  # all waiters are blocked by now
    released = time.perf_counter()
    release(held)
    for t in threads:
        t.join(30)
    if pool:
        acquired_at = pool.times()
    target = res.wake_proc_ms if pool else res.wake_ms
    target.setdefault(name, []).append((min(acquired_at) - released) * 1000)
    for c in [*clients, holder_r]:
        c.close()


def contention(url: str, name: str, make: Any, seconds: float, res: Results) -> None:
    key = f"bench:contention:{name}"
    stop = time.perf_counter() + seconds
    counts: list[int] = []
    waits: list[float] = []
    mutex = threading.Lock()

    def worker() -> None:
        r, _ = new_client(url)
        acquire, release = make(r)
        n, longest = 0, 0.0
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            handle = acquire(key)
            longest = max(longest, time.perf_counter() - t0)
            time.sleep(0.001)
            release(handle)
            n += 1
        with mutex:
            counts.append(n)
            waits.append(longest)
        r.close()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 60)
    res.contention_per_s.setdefault(name, []).append(sum(counts) / seconds)
    res.contention_max_wait_ms.setdefault(name, []).append(max(waits) * 1000)


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cycles", type=int, default=3000)
    parser.add_argument("--wake-samples", type=int, default=8, help="wake-ups per round")
    parser.add_argument("--contention-seconds", type=float, default=2.0)
    args = parser.parse_args()

    res = Results()
    with RedisServer() as server:
        pool = WaiterPool(server.url, 3)
        for _ in range(args.rounds):
            for name, make in LIBS:
                uncontended(server.url, name, make, args.cycles, res)
            for _ in range(args.wake_samples):
                for name, make in LIBS:
                    wakeup(server.url, name, make, res, pool)
                    wakeup(server.url, name, make, res, None)
            for name, make in LIBS:
                contention(server.url, name, make, args.contention_seconds, res)
        pool.close()

    base = statistics.median(res.cycles_per_s["redis-py Lock"])
    print(f"\n### Uncontended acquire+release ({args.rounds} rounds x {args.cycles} cycles)\n")
    print("| library | cycles/s (median) | vs redis-py | client requests/cycle |")
    print("|---|---:|---:|---:|")
    for name, _ in LIBS:
        med = statistics.median(res.cycles_per_s[name])
        print(f"| {name} | {med:,.0f} | {med / base:.2f}x | {res.requests_per_cycle[name]:.2f} |")

    for title, data in [
        ("3 waiter processes", res.wake_proc_ms),
        ("3 waiter threads in one process", res.wake_ms),
    ]:
        samples = len(data["leaderd"])
        print(f"\n### Wake-up: release -> first waiter acquires; {title} ({samples} samples)\n")
        print("| library | p50 ms | p95 ms | max ms | p50 vs leaderd |")
        print("|---|---:|---:|---:|---:|")
        lead = statistics.median(data["leaderd"])
        for name, _ in LIBS:
            v = data[name]
            med = statistics.median(v)
            print(f"| {name} | {med:.2f} | {pct(v, 0.95):.2f} | {max(v):.2f} | {med / lead:.1f}x |")

    print(f"\n### Contention: 4 workers, hold 1 ms ({args.rounds} x {args.contention_seconds}s)\n")
    print("| library | acquisitions/s (median) | longest single wait ms (median of rounds) |")
    print("|---|---:|---:|")
    for name, _ in LIBS:
        acq = statistics.median(res.contention_per_s[name])
        wait = statistics.median(res.contention_max_wait_ms[name])
        print(f"| {name} | {acq:,.0f} | {wait:.1f} |")


if __name__ == "__main__":
    main()
