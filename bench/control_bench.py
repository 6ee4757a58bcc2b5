"""Switchover time and watch latency, on three `leaderd run` daemons and one Redis.

Each run switches over to a queued candidate (round robin) and measures:
- switchover: from sending the request (the control script, one round trip) to the new
  leader's `/readyz` answering 200 (polled every millisecond or so);
- `leaderd switchover` as an operator runs it: the whole command (Python start-up,
  connect, request, wait) and the hand-over time it prints;
- watch latency: from the new term's start (`term_started_at`, the start of the
  acquire that won it) to the line `leaderd watch --json` printed, and to the SSE
  event on the new leader's own `/watch` stream.
Run: `python bench/control_bench.py --runs 30`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # devtools, tests

import redis

from devtools.devserver import RedisServer
from leaderd import AsyncLockClient
from leaderd._core import queued_value
from leaderd.redis_backend import election_key, send_request
from tests.daemons import REPO, Daemon, leaderd_cmd, poll


class Lines:
    """Lines of a stream read in a thread, each with the wall time it arrived."""

    def __init__(self, stream: Any, prefix: bytes = b"") -> None:
        self.items: list[tuple[float, dict[str, Any]]] = []
        self.prefix = prefix
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: Any) -> None:
        for raw in stream:
            line = raw if isinstance(raw, bytes) else raw.encode()
            if self.prefix and not line.startswith(self.prefix):
                continue
            try:
                self.items.append((time.time(), json.loads(line[len(self.prefix) :])))
            except ValueError:
                pass

    def first(self, match: Any) -> float | None:
        return next((t for t, item in self.items if match(item)), None)


def _queued(r: redis.Redis) -> list[str]:
    return [
        json.loads(queued_value(m.decode()))["identity"]
        for m in r.zrange("leaderd:{jobs}:waiters", 0, -1)
    ]


async def _request(url: str, to: str) -> None:
    client = redis.asyncio.Redis.from_url(url)
    result = await send_request(AsyncLockClient(client), election_key("jobs"), "switchover", to)
    await client.aclose()
    assert result.ok, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    switch, cli_total, cli_said, watch_cli, watch_sse = [], [], [], [], []
    with RedisServer() as server, tempfile.TemporaryDirectory() as tmp:
        ds = [Daemon(Path(tmp), server.url, f"pod-{i}", "--advertise", f"10.0.0.{i}:80",
                     ttl="10s") for i in range(3)]  # fmt: skip
        watcher = subprocess.Popen(
            leaderd_cmd("watch", "--redis-url", server.url, "--election", "jobs", "--json"),
            stdout=subprocess.PIPE, cwd=REPO,
        )  # fmt: skip
        printed = Lines(watcher.stdout)
        try:
            for d in ds:
                d.wait_http()
            streams = {
                d.identity: Lines(
                    urllib.request.urlopen(f"http://127.0.0.1:{d.port}/watch", timeout=60),
                    b"data: ",
                )
                for d in ds
            }
            r = redis.Redis.from_url(server.url)
            for n in range(args.runs):
                poll(lambda: len(_queued(r)) == 2, 30)
                target_name = _queued(r)[n % 2]
                target = next(d for d in ds if d.identity == target_name)
                use_cli = n % 3 == 2  # every third run goes through the command
                started = time.monotonic()
                if use_cli:
                    done = subprocess.run(
                        leaderd_cmd("switchover", "--redis-url", server.url, "--election",
                                    "jobs", "--to", target_name),
                        capture_output=True, text=True, cwd=REPO, timeout=30,
                    )  # fmt: skip
                    assert done.returncode == 0, done.stderr
                    cli_total.append(time.monotonic() - started)
                    cli_said.append(float(done.stdout.rsplit(" in ", 1)[1].split()[0]) / 1000)
                else:
                    asyncio.run(_request(server.url, target_name))
                while target.ready() != 200:
                    if time.monotonic() - started > 10:
                        raise AssertionError("no switchover within 10 s")
                if not use_cli:
                    switch.append(time.monotonic() - started)
                status = target.status()
                token, began = status["fencing_token"], status["term_started_at"]
                seen = poll(lambda t=token: printed.first(lambda i: i["fencing_token"] == t), 5)
                watch_cli.append(seen - began)
                sse = poll(lambda t=token, s=streams[target_name]: s.first(
                    lambda i: i["fencing_token"] == t), 5)  # fmt: skip
                watch_sse.append(sse - began)
        finally:
            watcher.terminate()
            for d in ds:
                d.stop()

    def ms(values: list[float], upper: str = "max") -> str:
        values = sorted(values)
        top = values[-1] if upper == "max" else values[int(0.99 * (len(values) - 1))]
        return (f"p50 {statistics.median(values) * 1000:.1f} ms, {upper} {top * 1000:.1f} ms "
                f"(n={len(values)})")  # fmt: skip

    print(f"{args.runs} switchovers among 3 daemons (ttl 10 s) on one Redis")
    print(f"switchover request -> new leader's /readyz 200: {ms(switch)}")
    print(f"`leaderd switchover` hand-over it reports:      {ms(cli_said)}")
    print(f"`leaderd switchover` whole command (with start-up): {ms(cli_total)}")
    print(f"term start -> `leaderd watch` line printed:     {ms(watch_cli, 'p99')}")
    print(f"term start -> /watch SSE event (new leader):    {ms(watch_sse, 'p99')}")


if __name__ == "__main__":
    main()
