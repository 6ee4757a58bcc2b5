"""Hostile conditions the daemon must survive and report: READONLY replicas, keys of
the wrong type, password rotation, a status-file directory that disappears."""

from __future__ import annotations

import shutil
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from leaderd.devserver import RedisServer

from .daemons import Daemon, poll

KEY = "leaderd:{jobs}"


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    daemons: list[Daemon] = []

    def make(*args: Any, **kw: Any) -> Daemon:
        d = Daemon(tmp_path, *args, **kw)
        daemons.append(d)
        return d

    yield make
    for d in daemons:
        d.stop()


def events(d: Daemon) -> list[str]:
    return [e["event"] for e in d.events()]


def test_readonly_replica_is_retried_until_promoted(
    redis_factory: Callable[..., RedisServer], spawn: Callable[..., Daemon]
) -> None:
    primary = redis_factory()
    replica = redis_factory(extra_args=["--replicaof", "127.0.0.1", str(primary.port)])
    r = redis.Redis.from_url(replica.url)
    poll(lambda: r.info("replication").get("master_link_status") == "up", 10)
    d = spawn(replica.url, "pod-0")  # pointed at a replica, as after a failover
    d.wait_http()
    poll(lambda: "redis_unavailable" in events(d), 5)
    assert "READONLY" in d.logs()
    assert d.ready() == 503 and d.get("/healthz")[0] == 200
    r.replicaof("NO", "ONE")  # promoted
    poll(lambda: d.ready() == 200, 10)
    assert d.proc.poll() is None


def test_a_key_of_the_wrong_type_is_reported_not_fatal(
    redis_server: RedisServer, spawn: Callable[..., Daemon]
) -> None:
    r = redis.Redis.from_url(redis_server.url)
    r.rpush(KEY, "not a lock")
    d = spawn(redis_server.url, "pod-0")
    d.wait_http()
    poll(lambda: "redis_unavailable" in events(d), 5)
    assert "wrong type" in d.logs()
    assert d.ready() == 503 and d.proc.poll() is None
    r.delete(KEY)
    poll(lambda: d.ready() == 200, 10)
    assert events(d).count("redis_unavailable") == 1


def test_password_rotation(
    redis_factory: Callable[..., RedisServer], spawn: Callable[..., Daemon], tmp_path: Path
) -> None:
    old, new = "first-Secret-1", "second-Secret-2"
    server = redis_factory(password=old)
    pw = tmp_path / "pw"
    pw.write_text(old)
    d = spawn(server.url, "pod-0", "--redis-password-file", str(pw))
    d.wait_http()
    poll(lambda: d.ready() == 200, 5)
    r = redis.Redis.from_url(server.url, password=old)
    pw.write_text(new)  # the Secret is updated, then Redis
    r.config_set("requirepass", new)
    r = redis.Redis.from_url(server.url, password=new)
    r.client_kill_filter(_type="normal", skipme=True)  # force reconnects
    r.client_kill_filter(_type="pubsub")
    poll(lambda: "password_reloaded" in events(d), 10)
    poll(lambda: d.ready() == 200 and d.status()["role"] == "leader", 10)
    for secret in (old, new):
        assert secret not in d.logs()


def test_status_file_directory_vanishing_is_logged_once(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    sub = tmp_path / "status"
    sub.mkdir()
    # The last --status-file wins over the helper's default one.
    d = Daemon(tmp_path, redis_server.url, "pod-1", "--status-file", str(sub / "s.json"),
               ttl="600ms")  # fmt: skip
    try:
        d.wait_http()
        poll(lambda: (sub / "s.json").exists(), 5)
        shutil.rmtree(sub)
        poll(lambda: "status_file_failed" in events(d), 5)
        poll(lambda: d.status()["transitions"] >= 1, 5)
        assert d.ready() == 200  # the election goes on
        sub.mkdir()
        poll(lambda: "status_file_recovered" in events(d), 5)
        assert events(d).count("status_file_failed") == 1
        d.signal(signal.SIGTERM)
        assert d.wait() == 0
    finally:
        d.stop()
