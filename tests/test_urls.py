"""Every URL form the README lists works in the library, `leaderd status` and
`leaderd run`, against real redis-server processes (unix socket included)."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio

import leaderd
from devtools.devserver import RedisServer

from .daemons import Daemon, leaderd_cmd, poll

PASSWORD = "url-Pass-1"
USER_PASSWORD = "user-Pass-2"


@pytest.fixture
def servers(redis_factory: Callable[..., RedisServer], tmp_path: Path) -> dict[str, Any]:
    """An open server and a password-protected one with an ACL user, each on TCP and a
    unix socket."""
    open_sock = tmp_path / "open.sock"
    auth_sock = tmp_path / "auth.sock"
    open_server = redis_factory(extra_args=["--unixsocket", str(open_sock)])
    auth_server = redis_factory(password=PASSWORD, extra_args=["--unixsocket", str(auth_sock)])
    admin = redis.Redis(port=auth_server.port, password=PASSWORD)
    admin.execute_command("ACL", "SETUSER", "app", "on", f">{USER_PASSWORD}", "~*", "&*", "+@all")
    admin.close()
    return {"open": open_server, "auth": auth_server, "open_sock": open_sock,
            "auth_sock": auth_sock}  # fmt: skip


def url_forms(s: dict[str, Any]) -> dict[str, tuple[str, int]]:
    """name -> (URL, db the URL selects)."""
    o, a = s["open"].port, s["auth"].port
    return {
        "redis-plain": (f"redis://127.0.0.1:{o}", 0),
        "redis-db": (f"redis://127.0.0.1:{o}/3", 3),
        "redis-password": (f"redis://:{PASSWORD}@127.0.0.1:{a}/1", 1),
        "redis-user-password": (f"redis://app:{USER_PASSWORD}@127.0.0.1:{a}/2", 2),
        "redis-query-password": (f"redis://127.0.0.1:{a}/4?password={PASSWORD}", 4),
        "unix-plain": (f"unix://{s['open_sock']}", 0),
        "unix-db": (f"unix://{s['open_sock']}?db=5", 5),
        "unix-password": (f"unix://:{PASSWORD}@{s['auth_sock']}?db=6", 6),
        "unix-user-password": (f"unix://app:{USER_PASSWORD}@{s['auth_sock']}?db=7", 7),
    }


def lock_exists(s: dict[str, Any], name: str, key: str, db: int) -> bool:
    server = s["auth"] if "password" in name else s["open"]
    admin = redis.Redis(port=server.port, password=server.password, db=db)
    try:
        return bool(admin.exists(key))
    finally:
        admin.close()


def test_library_with_every_url_form(servers: dict[str, Any]) -> None:
    for name, (url, db) in url_forms(servers).items():
        client = leaderd.LockClient(redis.Redis.from_url(url))
        lock = client.lock(f"sync-{name}", expiration=5.0, timeout=1.0)
        assert lock_exists(servers, name, f"sync-{name}", db), name  # in the URL's db
        lock.refresh()
        lock.unlock()
        client.close()

        async def run(url: str = url, name: str = name, db: int = db) -> None:
            aclient = leaderd.AsyncLockClient(redis.asyncio.Redis.from_url(url))
            async with await aclient.lock(f"async-{name}", expiration=5.0) as alock:
                assert lock_exists(servers, name, f"async-{name}", db), name
                await alock.refresh()
            await aclient.redis.aclose()

        asyncio.run(run())


def test_daemon_and_status_with_every_url_form(
    servers: dict[str, Any], spawn: Callable[..., Daemon], tmp_path: Path
) -> None:
    forms = url_forms(servers)
    daemons = {
        name: spawn(url, f"pod-{name}", election=f"e-{name}") for name, (url, _) in forms.items()
    }
    for d in daemons.values():
        d.wait_http()
    for name, d in daemons.items():
        poll(lambda d=d: d.ready() == 200, 10)
        assert lock_exists(servers, name, f"leaderd:{{e-{name}}}", forms[name][1]), name
        out = subprocess.run(
            leaderd_cmd("status", "--redis-url", forms[name][0], "--election", f"e-{name}",
                        "--json"),
            capture_output=True, text=True, timeout=20,
        )  # fmt: skip
        assert out.returncode == 0, (name, out.stderr)
        assert json.loads(out.stdout)["leader"] == f"pod-{name}"
    for name, d in daemons.items():
        for secret in (PASSWORD, USER_PASSWORD):
            assert secret not in d.logs(), name  # URLs are logged masked, query included


def test_password_file_with_a_username_in_the_url(
    servers: dict[str, Any], spawn: Callable[..., Daemon], tmp_path: Path
) -> None:
    pw = tmp_path / "pw"
    pw.write_text(USER_PASSWORD + "\n")
    for url in (f"redis://app@127.0.0.1:{servers['auth'].port}/0",
                f"unix://app@{servers['auth_sock']}"):  # fmt: skip
        d = spawn(url, "pod-file", "--redis-password-file", str(pw), election=f"f{len(url)}")
        d.wait_http()
        poll(lambda d=d: d.ready() == 200, 10)
        out = subprocess.run(
            leaderd_cmd("status", "--redis-url", url, "--redis-password-file", str(pw),
                        "--election", f"f{len(url)}"),
            capture_output=True, text=True, timeout=20,
        )  # fmt: skip
        assert out.returncode == 0 and "pod-file" in out.stdout, out.stderr


@pytest.mark.parametrize(
    ("url", "secret", "says"),
    [
        ("redis://u:pa#ss-w0rd@127.0.0.1:6379/0", "ss-w0rd", "percent-encode"),
        ("redis://u:pa?ss-w0rd@127.0.0.1:6379/0", "ss-w0rd", "percent-encode"),
        # redis-py 5.3's asyncio client has no ssl_password: refused there, used on 8
        ("rediss://127.0.0.1:1/0?ssl_password=t0psecret", "t0psecret", ""),
        ("redis://127.0.0.1:6379/0?foo=bar", None, "unknown query parameter 'foo'"),
    ],
)
@pytest.mark.parametrize("command", ["run", "status"])
def test_a_bad_or_secret_bearing_url_is_one_line_without_the_secret(
    url: str, secret: str | None, says: str, command: str, tmp_path: Path
) -> None:
    args = ["--redis-url", url, "--election", "x", "--identity", "a", "--http-addr", ""]
    if command == "status":
        args = args[:4]
    proc = subprocess.Popen(leaderd_cmd(command, *args), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path)  # fmt: skip
    try:  # a valid URL: the daemon runs on (Redis is unreachable); its logs are read
        stdout, stderr = proc.communicate(timeout=3 if command == "run" else 30)
    except subprocess.TimeoutExpired:
        proc.terminate()
        stdout, stderr = proc.communicate(timeout=10)
        says = "redis_unavailable"
    output = stdout + stderr
    assert "Traceback" not in output and says in output, output
    if secret is not None:
        assert secret not in output
    if says != "redis_unavailable":
        assert proc.returncode == 1, output
        assert len(stderr.strip().splitlines()) == 1, output
