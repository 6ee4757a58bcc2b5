"""Scale: 1,000 candidates in one election, and 1,000 elections, on one Redis.

In-process `leaderd.Elector`s spread over a few processes (asyncio), exactly as a
program using the library would run them. Reports: leaders per election, steady
Redis requests/s (from INFO commandstats), and graceful hand-over time.
Run: `python bench/scale_bench.py` (about 2 minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
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
    client = redis.asyncio.Redis.from_url(url, max_connections=2000)
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
    def __init__(self, url: str, spec: list[tuple[str, str]], ttl: float, retry: float) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.pipes, self.procs = [], []
        for k in range(PROCS):
            parent, child = ctx.Pipe()
            part = spec[k::PROCS]
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
        int(v["calls"]) for k, v in stats.items() if k in ("cmdstat_evalsha", "cmdstat_eval")
    )


def scenario(url: str, spec: list[tuple[str, str]], elections: int, ttl: float, retry: float,
             window: float) -> dict[str, Any]:  # fmt: skip
    r = redis.Redis.from_url(url)
    fleet = Fleet(url, spec, ttl, retry)
    out: dict[str, Any] = {}
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            counts = fleet.leaders()
            if len(counts) == elections and all(v == 1 for v in counts.values()):
                break
            time.sleep(0.5)
        out["settled_s"] = round(time.monotonic() - (deadline - 120), 1)
        time.sleep(ttl)
        c0, t0 = requests(r), time.monotonic()
        time.sleep(window)
        out["req_per_s"] = (requests(r) - c0) / (time.monotonic() - t0)
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
    parser.add_argument("--elections", type=int, default=1000)
    parser.add_argument("--window", type=float, default=20.0)
    args = parser.parse_args()
    with RedisServer(extra_args=["--maxclients", "20000"]) as server:
        one = scenario(server.url, [("big", f"c{i}") for i in range(args.candidates)], 1,
                       ttl=10.0, retry=2.0, window=args.window)  # fmt: skip
        server.flushall()
        many_spec = [(f"e{j}", f"c{j}-{k}") for j in range(args.elections) for k in range(2)]
        many = scenario(server.url, many_spec, args.elections, ttl=10.0, retry=2.0,
                        window=args.window)  # fmt: skip
    print(f"\n### Scale ({PROCS} processes of asyncio Electors, ttl 10s, retry 2s, "
          f"{args.window:.0f} s window)\n")  # fmt: skip
    print("| scenario | settled in s | elections with exactly 1 leader | Redis requests/s | "
          "graceful hand-over p50 / max ms (count) |")  # fmt: skip
    print("|---|---:|---:|---:|---|")
    for title, res, n in (
        (f"{args.candidates} candidates, 1 election", one, 1),
        (f"{args.elections} elections x 2 candidates", many, args.elections),
    ):
        print(
            f"| {title} | {res['settled_s']} | {res['elections_with_one_leader']}/{n} "
            f"(max {res['max_leaders']}) | {res['req_per_s']:.0f} | "
            f"{res.get('handover_p50_ms')} / {res.get('handover_max_ms')} "
            f"({res.get('handovers')}); after: {res['after_handover_one_leader']}/{n} |"
        )


if __name__ == "__main__":
    main()
