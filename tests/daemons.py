"""Helpers that run real `leaderd run` processes and talk to them over HTTP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from devtools.devserver import free_port

from .conftest import wait_for as poll

__all__ = ["Daemon", "leaderd_cmd", "leaders", "poll"]

REPO = Path(__file__).resolve().parent.parent


def leaderd_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "leaderd.cli", *args]


class Daemon:
    """One `leaderd run` process with its own HTTP port, status file and log file."""

    def __init__(
        self,
        tmp: Path,
        redis_url: str,
        identity: str,
        *extra: str,
        election: str = "jobs",
        ttl: str = "1s",
        command: list[str] | None = None,
        env: dict[str, str] | None = None,
        log_name: str | None = None,
    ) -> None:
        self.identity = identity
        self.port = free_port()
        self.status_file = tmp / f"{identity}.status.json"
        self.log_file = tmp / (log_name or f"{identity}.log")
        args = [
            "run", "--redis-url", redis_url, "--election", election, "--identity", identity,
            "--ttl", ttl, "--http-addr", f"127.0.0.1:{self.port}",
            "--status-file", str(self.status_file), "--retry-interval", "200ms", *extra,
        ]  # fmt: skip
        if command:
            args += ["--", *command]
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("LEADERD_")}
        full_env.update(env or {})
        full_env["PYTHONUNBUFFERED"] = "1"
        self._log = open(self.log_file, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            leaderd_cmd(*args), stdout=self._log, stderr=subprocess.STDOUT, env=full_env,
            cwd=REPO,
        )  # fmt: skip

    # -- HTTP --------------------------------------------------------------------------
    def get(self, path: str, timeout: float = 2.0) -> tuple[int, Any]:
        url = f"http://127.0.0.1:{self.port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                body = resp.read()
                code = resp.status
        except urllib.error.HTTPError as err:
            body, code = err.read(), err.code
        try:
            return code, json.loads(body)
        except ValueError:
            return code, body.decode()

    def ready(self) -> int:
        try:
            return self.get("/readyz")[0]
        except OSError:
            return 0

    def status(self) -> dict[str, Any]:
        return self.get("/status")[1]  # type: ignore[no-any-return]

    def wait_http(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"{self.identity} exited {self.proc.returncode}:\n{self.logs()}"
                )
            try:
                self.get("/healthz", timeout=0.5)
                return
            except OSError:
                time.sleep(0.02)
        raise AssertionError(f"{self.identity} never served HTTP:\n{self.logs()}")

    # -- process -----------------------------------------------------------------------
    def signal(self, sig: int) -> None:
        os.kill(self.proc.pid, sig)

    def wait(self, timeout: float = 10.0) -> int:
        return self.proc.wait(timeout)

    def logs(self) -> str:
        self._log.flush()
        return self.log_file.read_text(errors="replace")

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.logs().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.signal(signal.SIGCONT)
                self.proc.kill()
            except ProcessLookupError:
                pass
            self.proc.wait(10)
        self._log.close()


def leaders(daemons: list[Daemon]) -> list[Daemon]:
    """The daemons whose /readyz answers 200."""
    return [d for d in daemons if d.ready() == 200]
