"""`make demo`: three `leaderd run` candidates on a throw-away local Redis.

Shows who leads, then crashes the leader (SIGKILL), moves leadership with
`leaderd switchover`, stops the leader gracefully (SIGTERM), and prints the timings.
Every command it runs is printed first, so it can be repeated by hand (the README's
quick start). No root, no Docker; every process it starts is stopped before it exits.
"""

from __future__ import annotations

import json
import os
import shlex
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
        args = ["run", "--redis-url", redis_url, "--election", "demo", "--identity", name,
                "--ttl", TTL, "--http-addr", f"127.0.0.1:{self.port}",
                "--retry-interval", "5s", "--log-format", "json"]  # fmt: skip
        _print_command(args, f"> {workdir / name}.log &")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "leaderd.cli", *args],
            stdout=self.log, stderr=subprocess.STDOUT, env=_env(),
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


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("LEADERD_")}


def _print_command(args: list[str], suffix: str = "") -> None:
    """Show a leaderd command as a user would type it."""
    print(f"  $ {shlex.join(['leaderd', *args])} {suffix}".rstrip())


def _leaderd(*args: str) -> subprocess.CompletedProcess[str]:
    _print_command(list(args))
    done = subprocess.run([sys.executable, "-m", "leaderd.cli", *args], env=_env(),
                          capture_output=True, text=True, timeout=30)  # fmt: skip
    for line in (done.stdout + done.stderr).strip().splitlines():
        print(f"    {line}")
    return done


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
            print("\nstart three candidates (distinct --identity and --http-addr):")
            cands = [Candidate(f"pod-{i}", server.url, workdir) for i in range(3)]
            started = time.monotonic()
            leader = _wait_for(lambda: _sole_leader(cands), 15)
            print(f"\n{leader.name} won the election in {time.monotonic() - started:.2f}s "
                  "(including process start)")  # fmt: skip
            _wait_for(lambda: all(c.get("/status")[1] and c.get("/status")[1]["leader"]
                                  for c in cands), 10)  # fmt: skip
            _show(cands, "who leads, as each candidate sees it:")
            print("\nask Redis, as an operator would:")
            _leaderd("status", "--redis-url", server.url, "--election", "demo")

            print(f"\ncrash: SIGKILL {leader.name} (it cannot release; the lease must expire)")
            print(f"  $ kill -KILL {leader.proc.pid}")
            killed = time.monotonic()
            leader.proc.send_signal(signal.SIGKILL)
            rest = [c for c in cands if c is not leader]
            new = _wait_for(lambda: _sole_leader(rest), 10)
            crash = time.monotonic() - killed
            print(f"  {new.name} leads {crash:.3f}s later (ttl {TTL})")

            other = next(c for c in rest if c is not new)
            _wait_for(lambda: other.get("/status")[1]["leader"] == new.name, 10)
            print(f"\nswitchover: hand leadership from {new.name} to {other.name}")
            switched = time.monotonic()
            done = _leaderd("switchover", "--redis-url", server.url, "--election", "demo",
                            "--to", other.name)  # fmt: skip
            _wait_for(lambda: _sole_leader(rest) is other, 10)
            switch = time.monotonic() - switched
            print(f"  {other.name} leads {switch * 1000:.1f} ms later (exit {done.returncode}, "
                  "the command's own start included)")  # fmt: skip

            time.sleep(1.0)
            print(f"\ngraceful: SIGTERM {other.name} (it releases the lock on the way out)")
            print(f"  $ kill -TERM {other.proc.pid}")
            stopped = time.monotonic()
            other.proc.send_signal(signal.SIGTERM)
            third = _wait_for(lambda: _sole_leader([new]), 10)
            graceful = time.monotonic() - stopped
            print(f"  {third.name} leads {graceful * 1000:.1f} ms later; "
                  f"{other.name} exited with {other.proc.wait(10)}")  # fmt: skip
            _show(cands, "final state:")
            print(f"\ncrash failover {crash:.3f}s, switchover {switch * 1000:.1f} ms, "
                  f"graceful hand-over {graceful * 1000:.1f} ms")  # fmt: skip
        finally:
            for c in cands:
                c.stop()
    print(f"(candidate logs: {workdir})")


if __name__ == "__main__":
    main()
