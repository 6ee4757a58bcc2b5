"""Daemon benchmark: hand-over and failover times, idle footprint, Redis requests/s.

Real `leaderd run` processes against a local redis-server. Run with `make bench` or
`python bench/daemon_bench.py` (about 5 minutes; `--quick` for a shorter run).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # devtools

from devtools.devserver import RedisServer, free_port

CLK_TCK = os.sysconf("SC_CLK_TCK")


class Proc:
    def __init__(self, url: str, name: str, workdir: Path, *extra: str) -> None:
        self.name = name
        self.port = free_port()
        self.log = open(workdir / f"{name}.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "leaderd.cli", "run", "--redis-url", url, "--election",
             "bench", "--identity", name, "--http-addr", f"127.0.0.1:{self.port}", *extra],
            stdout=self.log, stderr=subprocess.STDOUT,
            env={k: v for k, v in os.environ.items() if not k.startswith("LEADERD_")},
        )  # fmt: skip

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=1) as r:
                return r.status == 200
        except (urllib.error.HTTPError, OSError):
            return False

    def up(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=1):
                return True
        except (urllib.error.HTTPError, OSError):
            return False

    def requests(self) -> float:
        """Script calls this daemon made: acquire attempts + refreshes (its own metrics)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=2) as r:
            text = r.read().decode()
        total = 0.0
        for line in text.splitlines():
            if line.startswith(("leaderd_acquire_attempts_total{", "leaderd_refresh_total{")):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def stop(self, sig: int = signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(10)
        self.log.close()


def wait_for(pred: Any, timeout: float = 20.0, step: float = 0.001) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(step)
    raise RuntimeError("timed out")


def sole_leader(procs: list[Proc]) -> Proc | None:
    ls = [p for p in procs if p.proc.poll() is None and p.ready()]
    return ls[0] if len(ls) == 1 else None


class Watcher(threading.Thread):
    """Follows one candidate's /watch stream (server push: no polling load on the
    candidates, which would slow the hand-over it measures) and notes the monotonic
    time of the first event that says it leads."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock.sendall(b"GET /watch HTTP/1.0\r\n\r\n")  # close-delimited, unchunked
        self.leader_at: float | None = None
        self.start()

    def run(self) -> None:
        buf = b""
        with self.sock:
            while self.leader_at is None:
                try:
                    data = self.sock.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                buf += data
                while b"\n\n" in buf:
                    event, buf = buf.split(b"\n\n", 1)
                    at = event.find(b"data: ")
                    if at >= 0 and json.loads(event[at + 6 :]).get("role") == "leader":
                        self.leader_at = time.monotonic()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)


def handovers(url: str, workdir: Path, rounds: int, crash: bool, poll: bool = False) -> list[float]:
    """Stop the leader (SIGTERM, or SIGKILL with crash) and time until the next leader
    says so on /watch (checked with /readyz 200); with `poll`, until a /readyz 200 seen
    by polling both followers every 0.5 ms, a new connection per request (the method
    before 2026-12-06, whose load on the candidates slows what it measures)."""
    extra = ["--ttl", "2s"] if crash else ["--ttl", "10s"]
    procs = [Proc(url, f"{'c' if crash else 'g'}{i}", workdir, *extra) for i in range(3)]
    times = []
    try:
        for n in range(rounds):
            leader = wait_for(lambda: sole_leader(procs))
            wait_for(lambda: all(p.up() for p in procs))
            time.sleep(0.5 if not crash else 0.5 + (n % 4) * 0.17)  # vary refresh phase
            rest = [p for p in procs if p is not leader]
            watchers = [] if poll else [Watcher(p.port) for p in rest]
            time.sleep(0.1)  # each has sent its first event (follower)
            t0 = time.monotonic()
            leader.proc.send_signal(signal.SIGKILL if crash else signal.SIGTERM)
            if poll:
                wait_for(lambda rest=rest: sole_leader(rest), step=0.0005)
                times.append(time.monotonic() - t0)
            else:
                first = wait_for(lambda ws=watchers: [w.leader_at for w in ws if w.leader_at])
                times.append(min(first) - t0)
            for w in watchers:
                w.close()
            assert wait_for(lambda rest=rest: sole_leader(rest)) is not None
            leader.stop()
            procs.remove(leader)
            procs.append(Proc(url, f"{'c' if crash else 'g'}{3 + n}", workdir, *extra))
    finally:
        for p in procs:
            p.stop()
    return times


def steady_state(url: str, workdir: Path, seconds: float) -> dict[str, Any]:
    """Requests/s per candidate (from each daemon's own counters), RSS and CPU."""
    out: dict[str, Any] = {}
    leader = Proc(url, "lead", workdir)
    wait_for(leader.ready)
    followers = [Proc(url, "follower_2s", workdir, "--retry-interval", "2s"),
                 Proc(url, "follower_30s", workdir, "--retry-interval", "30s")]  # fmt: skip
    for f in followers:
        wait_for(f.up)
    time.sleep(5)
    procs = [leader, *followers]
    req0 = {p.name: p.requests() for p in procs}
    cpu0 = {p.name: p.cpu_seconds() for p in procs}
    t0 = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - t0
    for p in procs:
        out[f"{p.name}_req_per_s"] = (p.requests() - req0[p.name]) / elapsed
        out[f"{p.name}_rss_mb"] = p.rss_mb()
        out[f"{p.name}_cpu_pct"] = 100 * (p.cpu_seconds() - cpu0[p.name]) / elapsed
        p.stop()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer rounds, 20 s windows")
    args = parser.parse_args()
    rounds = 5 if args.quick else 15
    window = 20.0 if args.quick else 60.0
    workdir = Path(tempfile.mkdtemp(prefix="leaderd-bench-"))
    with RedisServer() as server:
        graceful = handovers(server.url, workdir, rounds, crash=False)
        polled = handovers(server.url, workdir, rounds, crash=False, poll=True)
        crash = handovers(server.url, workdir, max(5, rounds // 2), crash=True)
        steady = steady_state(server.url, workdir, window)

    def ms(v: list[float], q: float) -> str:
        s = sorted(v)
        return f"{s[min(len(s) - 1, round(q * (len(s) - 1)))] * 1000:.1f}"

    print(f"\n### Hand-over and failover ({len(graceful)} and {len(crash)} rounds, 3 candidates)\n")
    print("| scenario | p50 ms | p95 ms | max ms | target |")
    print("|---|---:|---:|---:|---|")
    print(
        f"| graceful: SIGTERM -> next leader on /watch (ttl 10s) | {ms(graceful, 0.5)} | "
        f"{ms(graceful, 0.95)} | {ms(graceful, 1)} | p50 < 50 ms |"
    )
    print(
        f"| graceful, seen by polling /readyz every 0.5 ms | {ms(polled, 0.5)} | "
        f"{ms(polled, 0.95)} | {ms(polled, 1)} | (the method before 2026-12-06) |"
    )
    print(
        f"| crash: SIGKILL -> next leader on /watch (ttl 2s) | {ms(crash, 0.5)} | "
        f"{ms(crash, 0.95)} | {ms(crash, 1)} | <= 2100 ms |"
    )
    print(f"\n### Steady state ({window:.0f} s windows, ttl 10s, refresh every 3.3 s)\n")
    print("| candidate | Redis requests/s | RSS MB | CPU % of a core |")
    print("|---|---:|---:|---:|")
    for name, title in (("lead", "leader"), ("follower_2s", "follower, --retry-interval 2s"),
                        ("follower_30s", "follower, --retry-interval 30s (>= ttl)")):  # fmt: skip
        print(
            f"| {title} | {steady[name + '_req_per_s']:.3f} | "
            f"{steady[name + '_rss_mb']:.1f} | {steady[name + '_cpu_pct']:.2f} |"
        )
    print(json.dumps({"graceful_s": graceful, "polled_s": polled, "crash_s": crash, **steady}),
          file=sys.stderr)  # fmt: skip


if __name__ == "__main__":
    main()
