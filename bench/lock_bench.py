"""Lock library benchmark: leaderd vs redis-py's Lock vs python-redis-lock, same Redis, one run.

Rounds are interleaved (lib A, B, C, A, B, C, ...) so machine noise hits every library
alike; figures are medians over rounds. Run with `make bench` or
`python bench/lock_bench.py --rounds 7`.
"""

from __future__ import annotations

import argparse
import itertools
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
    contention_other_share: dict[str, list[float]] = field(default_factory=dict)
    contention_commands: dict[str, list[float]] = field(default_factory=dict)
    counter_per_s: dict[str, list[float]] = field(default_factory=dict)
    counter_commands: dict[str, list[float]] = field(default_factory=dict)
    counter_lost: dict[str, int] = field(default_factory=dict)
    server_commands_per_cycle: dict[str, list[float]] = field(default_factory=dict)


def server_commands(url: str) -> int:
    """Commands the server has executed (INFO commandstats; scripts' own calls included),
    not counting the INFO calls themselves."""
    stats = redis.Redis.from_url(url).info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items() if k != "cmdstat_info")


def uncontended(url: str, name: str, make: Any, cycles: int, res: Results) -> None:
    r, counting = new_client(url)
    acquire, release = make(r)
    key = f"bench:uncontended:{name}"
    for _ in range(50):  # warm up: connections open, scripts cached
        release(acquire(key))
    sent = counting.sent
    before = server_commands(url)
    started = time.perf_counter()
    for _ in range(cycles):
        release(acquire(key))
    elapsed = time.perf_counter() - started
    res.server_commands_per_cycle.setdefault(name, []).append(
        (server_commands(url) - before) / cycles
    )
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


def contention(
    url: str, name: str, make: Any, seconds: float, res: Results, counter: bool = False
) -> None:
    """4 workers loop acquire / work / release on one key. The work is holding 1 ms, or
    (`counter`) a read-modify-write of a Redis counter, whose final value shows whether
    any two holders overlapped (a lost update)."""
    key = f"bench:{'counter' if counter else 'contention'}:{name}"
    count_key = key + ":n"
    admin = redis.Redis.from_url(url)
    admin.delete(count_key)
    stop = time.perf_counter() + seconds
    counts: list[int] = []
    waits: list[float] = []
    order: list[int] = []  # which worker acquired, in order
    mutex = threading.Lock()
    before = server_commands(url)

    def worker(me: int) -> None:
        r, _ = new_client(url)
        acquire, release = make(r)
        n, longest = 0, 0.0
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            handle = acquire(key)
            longest = max(longest, time.perf_counter() - t0)
            order.append(me)
            if counter:
                value = int(r.get(count_key) or 0)
                r.set(count_key, value + 1)
            else:
                time.sleep(0.001)
            release(handle)
            n += 1
        with mutex:
            counts.append(n)
            waits.append(longest)
        r.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 60)
    total = sum(counts)
    # the workers' own GET and SET of the counter are not the lock's commands
    commands = (server_commands(url) - before - (2 * total if counter else 0)) / total
    switches = sum(1 for a, b in itertools.pairwise(order) if a != b)
    if counter:
        res.counter_per_s.setdefault(name, []).append(total / seconds)
        res.counter_commands.setdefault(name, []).append(commands)
        lost = total - int(admin.get(count_key) or 0)
        res.counter_lost[name] = res.counter_lost.get(name, 0) + lost
    else:
        res.contention_per_s.setdefault(name, []).append(total / seconds)
        res.contention_commands.setdefault(name, []).append(commands)
    res.contention_max_wait_ms.setdefault(name + (":counter" if counter else ""), []).append(
        max(waits) * 1000)  # fmt: skip
    res.contention_other_share.setdefault(name + (":counter" if counter else ""), []).append(
        switches / max(1, len(order) - 1))  # fmt: skip
    admin.close()


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
            for name, make in LIBS:
                contention(server.url, name, make, args.contention_seconds, res, counter=True)
        pool.close()

    base = statistics.median(res.cycles_per_s["redis-py Lock"])
    print(f"\n### Uncontended acquire+release ({args.rounds} rounds x {args.cycles} cycles)\n")
    print("| library | cycles/s (median) | vs redis-py | client requests/cycle | "
          "server commands/cycle |")  # fmt: skip
    print("|---|---:|---:|---:|---:|")
    for name, _ in LIBS:
        med = statistics.median(res.cycles_per_s[name])
        cmds = statistics.median(res.server_commands_per_cycle[name])
        print(f"| {name} | {med:,.0f} | {med / base:.2f}x | {res.requests_per_cycle[name]:.2f} "
              f"| {cmds:.1f} |")  # fmt: skip

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

    for title, per_s, cmds, suffix in (
        ("hold 1 ms", res.contention_per_s, res.contention_commands, ""),
        ("counter increment under the lock", res.counter_per_s, res.counter_commands,
         ":counter"),
    ):  # fmt: skip
        print(f"\n### Contention: 4 workers, {title} ({args.rounds} x "
              f"{args.contention_seconds}s)\n")  # fmt: skip
        print("| library | acquisitions/s (median) | vs python-redis-lock | server commands "
              "per acquisition | hand-overs to another worker | longest wait ms (median of "
              "rounds) |")  # fmt: skip
        print("|---|---:|---:|---:|---:|---:|")
        fair = statistics.median(per_s["python-redis-lock"])
        for name, _ in LIBS:
            acq = statistics.median(per_s[name])
            wait = statistics.median(res.contention_max_wait_ms[name + suffix])
            share = statistics.median(res.contention_other_share[name + suffix])
            print(
                f"| {name} | {acq:,.0f} | {acq / fair:.2f}x | "
                f"{statistics.median(cmds[name]):.1f} | {share * 100:.0f} % | {wait:.1f} |"
            )
    lost = {name: res.counter_lost.get(name, 0) for name, _ in LIBS}
    print(f"\nLost counter updates (overlapping holders), all rounds: {lost}")


if __name__ == "__main__":
    main()
