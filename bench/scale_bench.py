"""Scale: 1,000 candidates in one election, and 10,000 elections, on one Redis.

In-process `leaderd.Elector`s spread over a few processes (asyncio), exactly as a
program using the library would run them. Reports: leaders per election, steady
Redis requests/s (script calls, from INFO commandstats), all commands/s and Redis CPU
% (INFO), graceful hand-over time, and crash failover: a process holding the
leadership of 100 elections is killed (SIGKILL); the time until each of those
elections has a leader again.
Run: `python bench/scale_bench.py` (about 5 minutes; raises its descriptor limit to
the hard limit).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import resource
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # devtools

import redis
import redis.asyncio

import leaderd
from devtools.devserver import RedisServer

PROCS = 4


def _worker(url: str, spec: list[tuple[str, str]], ttl: float, retry: float, conn: Any) -> None:
    asyncio.run(_main(url, spec, ttl, retry, conn))


async def _main(url: str, spec: list[tuple[str, str]], ttl: float, retry: float, conn: Any) -> None:
    # thousands of electors share one client: calls queue for one of 256 connections
    pool = redis.asyncio.BlockingConnectionPool.from_url(url, max_connections=256, timeout=30)
    client = redis.asyncio.Redis(connection_pool=pool)
    lock_client = leaderd.AsyncLockClient(client)
    electors: list[leaderd.Elector] = []
    tasks: dict[int, asyncio.Task[None]] = {}
    became: dict[str, float] = {}  # election -> when this process last won it

    def lead_for(election: str) -> Any:
        async def lead(term: leaderd.Term) -> None:
            became[election] = time.monotonic()
            await asyncio.Event().wait()

        return lead

    for i, (election, identity) in enumerate(spec):
        strategy = leaderd.FixedIntervalStrategy(retry, None, jitter=0.2)
        e = leaderd.Elector(lock_client, election, identity, ttl=ttl, retry=strategy)
        electors.append(e)
        tasks[i] = asyncio.create_task(e.run(lead_for(election)))
    while True:
        cmd = await asyncio.to_thread(conn.recv)
        if cmd == "count":
            counts: dict[str, int] = {}
            for e in electors:
                counts[e.election] = counts.get(e.election, 0) + int(e.is_leader())
            conn.send(counts)
        elif cmd == "resign":  # cancel this process's leaders; report when
            stopped: dict[str, float] = {}
            leading = [i for i, e in enumerate(electors) if e.is_leader()]
            for i in leading:
                stopped[electors[i].election] = time.monotonic()
                tasks[i].cancel()
            await asyncio.gather(*(tasks[i] for i in leading), return_exceptions=True)
            conn.send(stopped)
        elif cmd == "became":
            conn.send(dict(became))
        elif cmd == "quit":
            for t in tasks.values():
                t.cancel()
            await asyncio.gather(*tasks.values(), return_exceptions=True)
            await client.aclose()
            conn.send("bye")
            return


class Fleet:
    def __init__(
        self, url: str, spec: list[tuple[str, str]], ttl: float, retry: float, procs: int = PROCS
    ) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.pipes, self.procs = [], []
        for k in range(procs):
            parent, child = ctx.Pipe()
            part = spec[k::procs]
            p = ctx.Process(target=_worker, args=(url, part, ttl, retry, child), daemon=True)
            p.start()
            self.pipes.append(parent)
            self.procs.append(p)

    def ask(self, cmd: str) -> list[Any]:
        for p in self.pipes:
            p.send(cmd)
        return [p.recv() for p in self.pipes]

    def leaders(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for counts in self.ask("count"):
            for k, v in counts.items():
                total[k] = total.get(k, 0) + v
        return total

    def close(self) -> None:
        self.ask("quit")
        for p in self.procs:
            p.join(10)


def requests(r: redis.Redis) -> int:
    stats = r.info("commandstats")
    return sum(
        int(v["calls"])
        for k, v in stats.items()
        if k in ("cmdstat_fcall", "cmdstat_evalsha", "cmdstat_eval")
    )


def redis_load(r: redis.Redis) -> tuple[float, int]:
    """(Redis CPU seconds, commands processed so far), from INFO."""
    info = r.info()
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"]), int(
        info["total_commands_processed"]
    )


def crash(url: str, elections: int, victims: int, ttl: float, retry: float) -> dict[str, Any]:
    """`elections` x 2 candidates; one process leads the first `victims` elections and is
    killed with SIGKILL: how long until each of those has a leader again."""
    victim = Fleet(url, [(f"e{j}", f"v{j}") for j in range(victims)], ttl, retry, procs=1)
    out: dict[str, Any] = {}
    fleet = None
    try:
        deadline = time.monotonic() + 60
        while sum(victim.leaders().values()) < victims and time.monotonic() < deadline:
            time.sleep(0.2)
        spec = [(f"e{j}", f"c{j}-{k}") for j in range(elections) for k in range(2)
                if j >= victims or k == 1]  # fmt: skip
        fleet = Fleet(url, spec, ttl, retry)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            counts = fleet.leaders()
            if len(counts) == elections and sum(counts.values()) == elections - victims:
                break
            time.sleep(1.0)
        time.sleep(ttl)  # steady: every follower has seen a lease and waits on it
        killed = time.monotonic()
        os.kill(victim.procs[0].pid, signal.SIGKILL)
        deadline = killed + 2 * ttl + 30
        lat: list[float] = []
        while time.monotonic() < deadline:
            became = {e: t for got in fleet.ask("became") for e, t in got.items()}
            lat = sorted(became[f"e{j}"] - killed for j in range(victims)
                         if became.get(f"e{j}", 0) > killed)  # fmt: skip
            if len(lat) == victims:
                break
            time.sleep(0.5)
        out["recovered"] = len(lat)
        if lat:
            out["p50_s"], out["max_s"] = round(statistics.median(lat), 2), round(lat[-1], 2)
        counts = fleet.leaders()
        out["one_leader_after"] = sum(v == 1 for v in counts.values())
    finally:
        if fleet is not None:
            fleet.close()
        for p in victim.procs:
            p.join(5)
    return out


def scenario(url: str, spec: list[tuple[str, str]], elections: int, ttl: float, retry: float,
             window: float) -> dict[str, Any]:  # fmt: skip
    r = redis.Redis.from_url(url)
    fleet = Fleet(url, spec, ttl, retry)
    out: dict[str, Any] = {}
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            counts = fleet.leaders()
            if len(counts) == elections and all(v == 1 for v in counts.values()):
                break
            time.sleep(0.5)
        out["settled_s"] = round(time.monotonic() - (deadline - 300), 1)
        time.sleep(ttl)
        c0, t0 = requests(r), time.monotonic()
        cpu0, ops0 = redis_load(r)
        time.sleep(window)
        elapsed = time.monotonic() - t0
        out["req_per_s"] = (requests(r) - c0) / elapsed
        cpu1, ops1 = redis_load(r)
        out["redis_cpu_pct"] = 100 * (cpu1 - cpu0) / elapsed
        out["ops_per_s"] = (ops1 - ops0) / elapsed
        counts = fleet.leaders()
        out["elections_with_one_leader"] = sum(v == 1 for v in counts.values())
        out["max_leaders"] = max(counts.values())
        # Graceful hand-over: every leader resigns at once; time each election's
        # release to its next leader's start (CLOCK_MONOTONIC is shared by processes).
        resigned: dict[str, float] = {}
        for stops in fleet.ask("resign"):
            resigned.update(stops)
        time.sleep(3)
        lat = sorted(
            t - resigned[e] for became in fleet.ask("became") for e, t in became.items()
            if e in resigned and t > resigned[e]
        )  # fmt: skip
        if lat:
            out["handover_p50_ms"] = round(statistics.median(lat) * 1000, 1)
            out["handover_max_ms"] = round(lat[-1] * 1000, 1)
        out["handovers"] = len(lat)
        out["elections_handed_over"] = len({
            e for became in fleet.ask("became") for e, t in became.items()
            if e in resigned and t > resigned[e]
        })  # fmt: skip
        counts = fleet.leaders()
        out["after_handover_one_leader"] = sum(v == 1 for v in counts.values())
    finally:
        fleet.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--candidates", type=int, default=1000)
    parser.add_argument("--elections", type=int, default=10000)
    parser.add_argument("--victims", type=int, default=100)
    parser.add_argument("--window", type=float, default=20.0)
    parser.add_argument("--ttl", type=float, default=30.0, help="lease of the many elections")
    parser.add_argument("--retry", type=float, default=30.0, help="their followers' poll")
    args = parser.parse_args()
    # Each process's client keeps one pub/sub connection; its pool opens one
    # connection per concurrent call: raise the descriptor limit as far as allowed.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = 65536 if hard == resource.RLIM_INFINITY else hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
    with RedisServer(extra_args=["--maxclients", str(limit - 1000)]) as server:
        one = scenario(server.url, [("big", f"c{i}") for i in range(args.candidates)], 1,
                       ttl=10.0, retry=2.0, window=args.window)  # fmt: skip
        server.flushall()
        many_spec = [(f"e{j}", f"c{j}-{k}") for j in range(args.elections) for k in range(2)]
        many = scenario(server.url, many_spec, args.elections, ttl=args.ttl, retry=args.retry,
                        window=args.window)  # fmt: skip
        server.flushall()
        crashed = crash(server.url, args.elections, args.victims, ttl=args.ttl, retry=args.retry)
    print(f"\n### Scale ({PROCS} processes of asyncio Electors; one election: ttl 10 s, "
          f"retry 2 s; many elections: ttl {args.ttl:g} s, retry {args.retry:g} s; "
          f"{args.window:.0f} s window)\n")  # fmt: skip
    print("| scenario | settled in s | elections with exactly 1 leader | Redis requests/s | "
          "Redis commands/s | Redis CPU % | graceful hand-over p50 / max ms (count) |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---|")
    for title, res, n in (
        (f"{args.candidates} candidates, 1 election", one, 1),
        (f"{args.elections} elections x 2 candidates", many, args.elections),
    ):
        print(
            f"| {title} | {res['settled_s']} | {res['elections_with_one_leader']}/{n} "
            f"(max {res['max_leaders']}) | {res['req_per_s']:.0f} | {res['ops_per_s']:.0f} | "
            f"{res['redis_cpu_pct']:.1f} | {res.get('handover_p50_ms')} / "
            f"{res.get('handover_max_ms')} ({res.get('handovers')}); after: "
            f"{res['after_handover_one_leader']}/{n} |"
        )
    print(
        f"\nCrash failover: {args.victims} leaders killed at once (SIGKILL of their process), "
        f"{args.elections} elections x 2 candidates, ttl {args.ttl:g} s: "
        f"{crashed.get('recovered')}/"
        f"{args.victims} elections led again, p50 {crashed.get('p50_s')} s, max "
        f"{crashed.get('max_s')} s; afterwards {crashed.get('one_leader_after')}/"
        f"{args.elections} elections with exactly one leader"
    )


if __name__ == "__main__":
    main()
