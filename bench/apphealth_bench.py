"""App-health failover: from the failing check to another candidate leading.

Two `leaderd run` candidates, each beside its own TCP "workload" (a listening socket
made here), checks every 100 ms, 2 failures to be unhealthy, ttl 10 s. Each run stops
the leader's workload and measures, from the daemons' own JSON logs:
- hand-over: from `app_unhealthy` (the check that crossed the threshold) to the other
  candidate's `became_leader` (goal: < 50 ms);
- detection + hand-over: from the workload's death to `became_leader`.
Between runs the recovered candidate must be queued again, which takes one ttl (its
anti-flapping delay), so 20 runs take about 4 minutes.
Run: `python bench/apphealth_bench.py --runs 20`.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # devtools, tests

import redis

from devtools.devserver import RedisServer
from tests.daemons import Daemon, poll
from tests.test_apphealth import FAST, TcpApp


def _ts(event: dict[str, Any]) -> float:
    return datetime.datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()


def _last(d: Daemon, name: str, after: float) -> dict[str, Any] | None:
    found = [e for e in d.events() if e.get("event") == name and _ts(e) >= after]
    return found[-1] if found else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    handover, total = [], []
    with RedisServer() as server, tempfile.TemporaryDirectory() as tmp:
        apps = [TcpApp(), TcpApp()]
        ds = [Daemon(Path(tmp), server.url, f"pod-{i}", "--app-health-url", apps[i].url,
                     *FAST, ttl="10s") for i in range(2)]  # fmt: skip
        try:
            for d in ds:
                d.wait_http()
            poll(lambda: sum(d.ready() == 200 for d in ds) == 1, 10)
            r = redis.Redis.from_url(server.url)
            for _ in range(args.runs):
                # The other candidate is queued (after its own recovery it waits one ttl
                # before it campaigns again: the anti-flapping delay).
                poll(lambda: r.zcard("leaderd:{jobs}:waiters") == 1, 30)
                i = next(i for i, d in enumerate(ds) if d.ready() == 200)
                other = ds[1 - i]
                died = time.time()
                apps[i].stop()
                poll(lambda other=other: other.ready() == 200, 10)
                became = poll(lambda o=other, t=died: _last(o, "became_leader", t), 5)
                failed = poll(lambda i=i, t=died: _last(ds[i], "app_unhealthy", t), 5)
                handover.append(_ts(became) - _ts(failed))
                total.append(_ts(became) - died)
                apps[i].start()
        finally:
            for d in ds:
                d.stop()
            for app in apps:
                app.stop()

    def ms(values: list[float]) -> str:
        return f"p50 {statistics.median(values) * 1000:.1f} ms, max {max(values) * 1000:.1f} ms"

    print(f"{args.runs} runs, checks every 100 ms, 2 failures to be unhealthy")
    print(f"failing check -> other candidate leads: {ms(handover)}")
    print(f"workload dies -> other candidate leads: {ms(total)}")


if __name__ == "__main__":
    main()
