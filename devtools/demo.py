"""`make demo`: three `leaderd run` candidates on a throw-away local Redis.

Shows who leads, then crashes the leader (SIGKILL) and later stops the next one
gracefully (SIGTERM), and prints both failover times. No root, no Docker; every
process it starts is stopped before it exits.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from .devserver import RedisServer, free_port

TTL = "2s"


class Candidate:
    def __init__(self, name: str, redis_url: str, workdir: Path) -> None:
        self.name = name
        self.port = free_port()
        self.log = open(workdir / f"{name}.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "leaderd.cli", "run", "--redis-url", redis_url,
             "--election", "demo", "--identity", name, "--ttl", TTL,
             "--http-addr", f"127.0.0.1:{self.port}", "--retry-interval", "5s",
             "--log-format", "json"],
            stdout=self.log, stderr=subprocess.STDOUT,
            env={k: v for k, v in os.environ.items() if not k.startswith("LEADERD_")},
        )  # fmt: skip

    def get(self, path: str) -> tuple[int, Any]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=1) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())
        except OSError:
            return 0, None

    def leads(self) -> bool:
        return self.proc.poll() is None and self.get("/readyz")[0] == 200

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.log.close()


def _wait_for(predicate: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.002)
    raise SystemExit(f"demo: timed out after {timeout}s")


def _sole_leader(cands: list[Candidate]) -> Candidate | None:
    leading = [c for c in cands if c.leads()]
    return leading[0] if len(leading) == 1 else None


def _show(cands: list[Candidate], title: str) -> None:
    print(f"\n  {title}")
    for c in cands:
        _, st = c.get("/status")
        if c.proc.poll() is not None:
            print(f"    {c.name:6}  (exited with {c.proc.returncode})")
        elif st:
            token = st["fencing_token"] or "-"
            print(f"    {c.name:6}  role={st['role']:8}  leader={st['leader']!s:6}  token={token}")


def main() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="leaderd-demo-"))
    cands: list[Candidate] = []
    with RedisServer() as server:
        print(f"local redis-server on 127.0.0.1:{server.port}; three candidates, ttl {TTL}, "
              "followers poll only every 5 s (they are woken by the release message "
              "and at lease expiry)")  # fmt: skip
        try:
            cands = [Candidate(f"pod-{i}", server.url, workdir) for i in range(3)]
            started = time.monotonic()
            leader = _wait_for(lambda: _sole_leader(cands), 15)
            print(f"\n{leader.name} won the election in {time.monotonic() - started:.2f}s "
                  "(including process start)")  # fmt: skip
            _wait_for(lambda: all(c.get("/status")[1] and c.get("/status")[1]["leader"]
                                  for c in cands), 10)  # fmt: skip
            _show(cands, "who leads, as each candidate sees it:")

            print(f"\ncrash: SIGKILL {leader.name} (it cannot release; the lease must expire)")
            killed = time.monotonic()
            leader.proc.send_signal(signal.SIGKILL)
            rest = [c for c in cands if c is not leader]
            new = _wait_for(lambda: _sole_leader(rest), 10)
            crash = time.monotonic() - killed
            print(f"  {new.name} leads {crash:.3f}s later (ttl {TTL})")

            time.sleep(1.0)
            print(f"\ngraceful: SIGTERM {new.name} (it releases the lock on the way out)")
            stopped = time.monotonic()
            new.proc.send_signal(signal.SIGTERM)
            last = [c for c in rest if c is not new]
            third = _wait_for(lambda: _sole_leader(last), 10)
            graceful = time.monotonic() - stopped
            print(f"  {third.name} leads {graceful * 1000:.1f} ms later; "
                  f"{new.name} exited with {new.proc.wait(10)}")  # fmt: skip
            _show(cands, "final state:")
            print(f"\ncrash failover {crash:.3f}s, graceful hand-over {graceful * 1000:.1f} ms")
        finally:
            for c in cands:
                c.stop()
    print(f"(candidate logs: {workdir})")


if __name__ == "__main__":
    main()
