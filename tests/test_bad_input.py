"""Hostile conditions the daemon must survive and report: READONLY replicas, keys of
the wrong type, password rotation, a status-file directory that disappears."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from devtools.devserver import RedisServer
from leaderd import LockClient, _core
from leaderd._core import queued_value
from leaderd.functions import function_name

from .conftest import L1, listening_waiter
from .daemons import Daemon, leaderd_cmd, poll

KEY = "leaderd:{jobs}"


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
    assert "READONLY" in d.logs() or "ReadOnlyError" in d.logs()
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


def _refresh_ok(d: Daemon) -> float:
    for line in d.get("/metrics")[1].splitlines():
        if line.startswith("leaderd_refresh_total{") and 'result="ok"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_password_rotation(
    redis_factory: Callable[..., RedisServer], spawn: Callable[..., Daemon], tmp_path: Path
) -> None:
    """Redis's password changes first and every connection is cut; the Secret (file)
    follows. Both candidates recover on the new password: after a crash failover the
    new leader keeps refreshing on it."""
    old, new = "first-Secret-1", "second-Secret-2"
    server = redis_factory(password=old)
    pw = tmp_path / "pw"
    pw.write_text(old)
    ds = [spawn(server.url, f"pod-{i}", "--redis-password-file", str(pw)) for i in range(2)]
    for d in ds:
        d.wait_http()
    poll(lambda: sum(d.ready() == 200 for d in ds) == 1, 10)
    admin = redis.Redis.from_url(server.url, password=old)
    admin.config_set("requirepass", new)
    admin = redis.Redis.from_url(server.url, password=new)
    admin.client_kill_filter(_type="normal", skipme=True)  # every old connection is gone
    admin.client_kill_filter(_type="pubsub")
    poll(lambda: all("redis_auth_refused" in events(d) for d in ds), 10)
    pw.write_text(new)  # the kubelet updates the mounted Secret a little later
    poll(lambda: sum(d.ready() == 200 for d in ds) == 1, 10)
    leader = next(d for d in ds if d.ready() == 200)
    survivor = next(d for d in ds if d is not leader)
    leader.signal(signal.SIGKILL)  # crash failover: the survivor must connect anew
    poll(lambda: survivor.ready() == 200, 10)
    base = _refresh_ok(survivor)
    poll(lambda: _refresh_ok(survivor) >= base + 3, 10)  # refreshes on the new password
    assert survivor.ready() == 200 and survivor.get("/healthz")[0] == 200
    assert "redis_auth_recovered" in events(survivor)
    for d in ds:
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
        sub.rename(tmp_path / "gone")  # atomic, unlike deleting under a writer
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


def _queued(admin: redis.Redis, identity: str) -> bool:
    members = admin.zrange("leaderd:{jobs}:waiters", 0, -1)
    return any(json.loads(queued_value(m.decode()))["identity"] == identity for m in members)


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("LEADERD_")}
    return subprocess.run(leaderd_cmd(*args), capture_output=True, text=True, timeout=30,
                          env={**full, **(env or {})})  # fmt: skip


ACL = (
    "ACL SETUSER leaderd on >acl-Pass-1 ~leaderd:* resetchannels &leaderd:* "
    "+fcall +ping +hello +client|setname +subscribe +unsubscribe "
    "+get +mget +set +incr +pexpire +pttl +del +time +publish +pubsub|numsub "
    "+zadd +zrem +zrange +zpopmin +zscore"
)


def test_the_documented_acl_is_enough(
    redis_server: RedisServer, spawn: Callable[..., Daemon], tmp_path: Path
) -> None:
    """The minimal ACL of the README: with the library loaded by the admin step, leaderd
    works; other keys and any script of the user's own are out of reach."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    documented = " ".join(
        line.strip().rstrip("\\").strip()
        for line in readme.split("ACL SETUSER", 1)[1].split("```", 1)[0].splitlines()
    )
    assert " ".join(ACL.split()[2:]) in "SETUSER " + documented.replace("PASSWORD", "acl-Pass-1")
    admin = redis.Redis.from_url(redis_server.url)
    admin.execute_command(*ACL.split())
    assert _run("functions", "load", "--redis-url", redis_server.url).returncode == 0
    url = f"redis://leaderd@127.0.0.1:{redis_server.port}/0"
    pw = tmp_path / "pw"
    pw.write_text("acl-Pass-1")
    ds = [spawn(url, f"pod-{i}", "--redis-password-file", str(pw)) for i in range(2)]
    for d in ds:
        d.wait_http()
    poll(lambda: sum(d.ready() == 200 for d in ds) == 1, 10)
    leader = next(d for d in ds if d.ready() == 200)
    other = next(d for d in ds if d is not leader)
    env = {"LEADERD_REDIS_URL": url, "LEADERD_REDIS_PASSWORD_FILE": str(pw),
           "LEADERD_ELECTION": "jobs"}  # fmt: skip
    watch = subprocess.Popen(leaderd_cmd("watch"), stdout=subprocess.PIPE, text=True,
                             env={**os.environ, **env})  # fmt: skip
    try:
        assert watch.stdout is not None and "leader" in watch.stdout.readline()
        poll(lambda: _queued(admin, other.identity), 10)
        done = _run("switchover", "--to", other.identity, env=env)  # the operator's commands
        assert done.returncode == 0, done.stderr  # work as this user too
        assert poll(lambda: other.ready() == 200, 5)
        poll(lambda: _queued(admin, leader.identity), 10)
        done = _run("resign", "--hold-off", "0s", env=env)
        assert done.returncode == 0, done.stderr
        assert poll(lambda: leader.ready() == 200, 5)
        assert f"leader {other.identity}" in watch.stdout.readline()  # watch, too
    finally:
        watch.terminate()
        watch.wait(10)
    leader.signal(signal.SIGTERM)  # release + hand-over work under the ACL too
    poll(lambda: other.ready() == 200, 5)
    for d in ds:
        assert "NOPERM" not in d.logs()
    limited = redis.Redis.from_url(url, password="acl-Pass-1")
    with pytest.raises(redis.exceptions.NoPermissionError):
        limited.get("some-other-key")
    _no_script_of_its_own(limited)
    # The library's rarer paths under the same ACL: a hand-over to a waiter that gives
    # up at that moment and passes the lock on.
    key = "leaderd:{acl}"
    holder = LockClient(limited).try_lock(key, expiration=30)
    listening = listening_waiter(limited, key)
    member = _core.queue_member(L1, 1, 30000, False, "quitter")
    limited.zadd("leaderd:{acl}:waiters", {member: 1})
    limited.set("leaderd:{acl}:waiting", "1")
    holder.unlock()
    assert limited.get(key) == b"quitter"
    keys, args = _core.release_args(key, "", leaving=member)
    assert limited.fcall(function_name(_core.RELEASE), len(keys), *keys, *args) == 1
    assert limited.get(key) is None
    listening.close()


def _no_script_of_its_own(limited: redis.Redis) -> None:
    """A candidate's user runs leaderd's functions only: no EVAL, no library of its own
    (a busy script of its own could stall every election on the server)."""
    busy = "redis.call('SET', KEYS[1], '1') while true do end"
    for command in (("EVAL", busy, 1, "leaderd:{jobs}"), ("EVALSHA", "0" * 40, 0),
                    ("FUNCTION", "LOAD", f"#!lua name=mine\nredis.register_function("
                     f"'mine', function(k) {busy} end)"), ("FUNCTION", "FLUSH")):  # fmt: skip
        with pytest.raises(redis.exceptions.NoPermissionError):
            limited.execute_command(*command)


def test_the_documented_per_election_acl_is_enough_and_confined(
    redis_server: RedisServer, spawn: Callable[..., Daemon], tmp_path: Path
) -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = readme.split("ACL SETUSER leaderd-jobs", 1)[1].split("```", 1)[0]
    words = " ".join(line.strip().rstrip("\\").strip() for line in block.splitlines()).split()
    admin = redis.Redis.from_url(redis_server.url)
    admin.execute_command("ACL", "SETUSER", "leaderd-jobs",
                          *[w.replace("PASSWORD", "job-Pass-1") for w in words])  # fmt: skip
    assert _run("functions", "load", "--redis-url", redis_server.url).returncode == 0
    url = f"redis://leaderd-jobs:job-Pass-1@127.0.0.1:{redis_server.port}/0"
    ds = [spawn(url, f"pod-{i}") for i in range(2)]
    for d in ds:
        d.wait_http()
    poll(lambda: sum(d.ready() == 200 for d in ds) == 1, 10)
    leader = next(d for d in ds if d.ready() == 200)
    other = next(d for d in ds if d is not leader)
    poll(lambda: _queued(admin, other.identity), 10)
    done = _run("switchover", "--redis-url", url, "--election", "jobs", "--to", other.identity)
    assert done.returncode == 0, done.stderr
    leader, other = other, leader
    leader.signal(signal.SIGTERM)  # release and hand-over on pub/sub, under the ACL
    poll(lambda: other.ready() == 200, 5)
    for d in ds:
        assert "NOPERM" not in d.logs()
    limited = redis.Redis.from_url(url)
    for key in ("leaderd:{other}", "leaderd:{other}:fence", "leaderd:{jobsx}", "x"):
        with pytest.raises(redis.exceptions.NoPermissionError):
            limited.set(key, "hijack")
    with pytest.raises(redis.exceptions.NoPermissionError):
        limited.publish("leaderd:released:leaderd:{other}", "")
    _no_script_of_its_own(limited)
    # and a daemon of another election cannot even start contending with it
    intruder = spawn(url, "pod-x", election="other")
    intruder.wait_http()
    poll(lambda: "redis_unavailable" in events(intruder), 10)
    assert "NOPERM" in intruder.logs() or "NoPermission" in intruder.logs()
