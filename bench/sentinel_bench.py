"""Sentinel failover: overlap and time without a leader, with and without --min-replicas-ack.

Three `leaderd run` candidates through one Sentinel; a primary with 1 or 2 replicas.
Each run forces `SENTINEL FAILOVER`, restarts one follower 0.5 s after the switch (as
a rolling restart would), and polls every candidate's /readyz every 20 ms until one
leader has held for 2 x ttl. Reported per run: the longest time two candidates
answered 200 at once (overlap), and the longest time none did after the failover.
Run: `python bench/sentinel_bench.py --runs 8` (about 1 minute a run with ttl 10s).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.daemons

from devtools.devserver import RedisServer
from tests.daemons import Daemon


def one_run(tmp: Path, ttl: float, acks: int, replicas: int) -> dict[str, float]:
    primary = RedisServer().start()
    reps = [
        RedisServer(extra_args=["--replicaof", "127.0.0.1", str(primary.port)]).start()
        for _ in range(replicas)
    ]
    sentinel = RedisServer(sentinel=True, config=(
        f"sentinel monitor m 127.0.0.1 {primary.port} 1\n"
        "sentinel down-after-milliseconds m 1000\n"
        "sentinel failover-timeout m 5000\n")).start()  # fmt: skip
    s = redis.Redis(port=sentinel.port)
    deadline = time.monotonic() + 30
    # Replicas in sync (Redis 7 delays a diskless sync by 5 s) and known to the Sentinel.
    while len(s.execute_command("SENTINEL", "replicas", "m")) < replicas or not all(
        redis.Redis(port=rep.port).info("replication").get("master_link_status") == "up"
        for rep in reps
    ):
        assert time.monotonic() < deadline, "the replicas never synced"
        time.sleep(0.1)
    args = ["--sentinel", f"127.0.0.1:{sentinel.port}", "--sentinel-master", "m",
            "--min-replicas-ack", str(acks), "--retry-interval", "500ms"]  # fmt: skip
    ds = [Daemon(tmp, "", f"c{i}-{acks}-{replicas}", *args, ttl=f"{ttl}s") for i in range(3)]
    try:
        for d in ds:
            d.wait_http()
        while sum(d.ready() == 200 for d in ds) != 1:
            time.sleep(0.05)
        old = s.execute_command("SENTINEL", "get-master-addr-by-name", "m")
        s.execute_command("SENTINEL", "FAILOVER", "m")
        failover_at = time.monotonic()
        restarted = False
        overlap = worst_overlap = 0.0
        gap = worst_gap = 0.0
        stable_since: float | None = None
        last = time.monotonic()
        end = failover_at + 3 * ttl + 60
        while time.monotonic() < end:
            now = time.monotonic()
            step = now - last
            last = now
            if (
                not restarted
                and s.execute_command("SENTINEL", "get-master-addr-by-name", "m") != old
            ):
                time.sleep(0.5)  # a follower restarts 0.5 s after the switch
                follower = next(i for i, d in enumerate(ds) if d.ready() != 200)
                ds[follower].stop()
                ds[follower] = Daemon(tmp, "", f"r{follower}-{acks}-{replicas}", *args,
                                      ttl=f"{ttl}s")  # fmt: skip
                restarted = True
                continue
            leaders = sum(d.ready() == 200 for d in ds)
            overlap = overlap + step if leaders > 1 else 0.0
            gap = gap + step if leaders == 0 else 0.0
            worst_overlap = max(worst_overlap, overlap)
            worst_gap = max(worst_gap, gap)
            if leaders == 1 and restarted:
                stable_since = stable_since or now
                if now - stable_since > 2 * ttl:
                    break
            else:
                stable_since = None
            time.sleep(0.02)
        return {"overlap_s": round(worst_overlap, 2), "no_leader_s": round(worst_gap, 2)}
    finally:
        for d in ds:
            d.stop()
        for server in (sentinel, *reps, primary):
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--ttl", type=float, default=10.0)
    parser.add_argument("--configs", default="1:0,1:1,2:1",
                        help="REPLICAS:MIN_REPLICAS_ACK pairs to run, comma-separated")  # fmt: skip
    args = parser.parse_args()
    configs = [tuple(int(x) for x in c.split(":")) for c in args.configs.split(",")]
    print(f"ttl {args.ttl:g}s, down-after 1s, {args.runs} runs each; seconds")
    print("| replicas | --min-replicas-ack | overlap per run | no leader per run | "
          "overlap max | no leader median / max |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for replicas, acks in configs:
        results = []
        for _ in range(args.runs):
            with tempfile.TemporaryDirectory(prefix="leaderd-sentinel-") as tmp:
                results.append(one_run(Path(tmp), args.ttl, acks, replicas))
        overlaps = [r["overlap_s"] for r in results]
        gaps = [r["no_leader_s"] for r in results]
        print(f"| {replicas} | {acks} | {overlaps} | {gaps} | {max(overlaps)} | "
              f"{statistics.median(gaps)} / {max(gaps)} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
