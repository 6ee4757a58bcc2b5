"""App-health checks: is the workload beside the sidecar healthy enough to lead?

An HTTP(S) GET (any 2xx is healthy) or a TCP connect, every `interval`, each bounded
by `timeout`, off the election loop's critical path. `failures` consecutive failures
make the app unhealthy, `successes` consecutive successes healthy again; it starts
unhealthy, so a pod whose app has not started cannot win.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(frozen=True)
class HealthCheck:
    """What to check and how often; `url` is http://, https:// or tcp://HOST:PORT."""

    url: str
    interval: float = 2.0
    timeout: float = 1.0
    failures: int = 3
    successes: int = 1


def check_health_url(url: str) -> str | None:
    """Why `url` cannot be checked, or None if it can."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return f"is not a valid URL ({exc})"
    if parts.scheme in ("http", "https"):
        return None if parts.hostname else "has no host, e.g. http://127.0.0.1:8080/healthz"
    if parts.scheme == "tcp":
        if not parts.hostname or port is None or not 0 < port < 65536:
            return "must be tcp://HOST:PORT, e.g. tcp://127.0.0.1:5432"
        return None
    return "must start with http://, https:// or tcp://"


class AppHealth:
    """Runs a `HealthCheck` and calls `on_change(healthy)` on every change of state."""

    def __init__(self, check: HealthCheck, on_change: Callable[[bool], None]) -> None:
        self.check = check
        self.on_change = on_change
        self.healthy = False
        self.last_error: str | None = None
        self._streak = 0  # > 0: consecutive successes, < 0: consecutive failures
        self._tls: ssl.SSLContext | None = None  # for https://, made at the first check
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="leaderd-app-health")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task})

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            self.record(await self.probe())
            await asyncio.sleep(max(0.0, started + self.check.interval - loop.time()))

    def record(self, ok: bool) -> None:
        """Count one result; flip the state after enough of the same in a row."""
        self._streak = max(1, self._streak + 1) if ok else min(-1, self._streak - 1)
        if ok and not self.healthy and self._streak >= self.check.successes:
            self.healthy = True
            self.on_change(True)
        elif not ok and self.healthy and -self._streak >= self.check.failures:
            self.healthy = False
            self.on_change(False)

    async def probe(self) -> bool:
        """One check, bounded by its timeout; True if the app answered as healthy."""
        try:
            async with asyncio.timeout(self.check.timeout):
                ok = await (self._tcp() if self.check.url.startswith("tcp://") else self._http())
        except (TimeoutError, OSError, ValueError, asyncio.IncompleteReadError,
                asyncio.LimitOverrunError) as exc:  # fmt: skip
            self.last_error = f"{type(exc).__name__}: {exc}"[:200]
            return False
        self.last_error = None if ok else self.last_error
        return ok

    async def _tcp(self) -> bool:
        parts = urlsplit(self.check.url)
        assert parts.hostname is not None and parts.port is not None
        _, writer = await asyncio.open_connection(parts.hostname, parts.port)
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True

    async def _http(self) -> bool:
        """GET the URL on a fresh connection and read only the status line (redirects are
        not followed: a 3xx is not healthy)."""
        parts = urlsplit(self.check.url)
        assert parts.hostname is not None
        tls = None
        if parts.scheme == "https":
            if self._tls is None:
                self._tls = ssl.create_default_context()
            tls = self._tls
        port = parts.port or (443 if tls else 80)
        reader, writer = await asyncio.open_connection(parts.hostname, port, ssl=tls)
        try:
            host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                         "User-Agent: leaderd-app-health\r\nAccept: */*\r\n"
                         "Connection: close\r\n\r\n".encode("latin-1"))  # fmt: skip
            line = await reader.readuntil(b"\n")
        finally:
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()
        words = line.split()
        if len(words) < 2 or not words[0].startswith(b"HTTP/") or not words[1].isdigit():
            raise ValueError(f"not an HTTP answer: {line[:60]!r}")
        status = int(words[1])
        ok = 200 <= status < 300
        if not ok:
            self.last_error = f"HTTP {status}"
        return ok
