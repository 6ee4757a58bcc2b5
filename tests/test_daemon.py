"""`leaderd run` end to end: real daemons, real redis-server processes, real signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from devtools.devserver import RedisServer, free_port

from .daemons import Daemon, leaderd_cmd, leaders, poll

KEY = "leaderd:{jobs}"


def file_role(d: Daemon) -> str | None:
    """The role in a daemon's status file (None until it is written)."""
    try:
        return json.loads(d.status_file.read_text())["role"]  # type: ignore[no-any-return]
    except (OSError, ValueError):
        return None


def test_one_leader_among_three_and_all_agree(
    redis_server: RedisServer, spawn: Callable[..., Daemon]
) -> None:
    ds = [spawn(redis_server.url, f"pod-{i}") for i in range(3)]
    for d in ds:
        d.wait_http()
    leader = poll(lambda: (lambda ls: ls[0] if len(ls) == 1 else None)(leaders(ds)))
    # Followers learn who leads; the status JSON has the contract's fields.
    poll(lambda: all(d.status()["leader"] == leader.identity for d in ds))
    st = leader.status()
    assert set(st) >= {
        "election",
        "identity",
        "role",
        "leader",
        "fencing_token",
        "term_started_at",
        "valid_until",
        "transitions",
        "updated_at",
    }
    assert st["role"] == "leader" and st["valid_until"] > time.time()
    assert (
        json.loads(redis.Redis.from_url(redis_server.url).get(KEY))["token"] == st["fencing_token"]
    )
    for d in ds:
        if d is not leader:
            code, body = d.get("/readyz")
            assert code == 503 and body["role"] == "follower"
        assert d.get("/healthz")[0] == 200

    # The status file says the same, and `leaderd check` agrees.
    # (written off the election loop: wait for it rather than race it)
    poll(lambda: file_role(leader) == "leader", 5)
    assert subprocess.run(leaderd_cmd("check", "--status-file", str(leader.status_file)),
                          capture_output=True).returncode == 0  # fmt: skip
    follower = next(d for d in ds if d is not leader)
    poll(lambda: file_role(follower) == "follower", 5)
    assert subprocess.run(leaderd_cmd("check", "--status-file", str(follower.status_file)),
                          capture_output=True).returncode == 1  # fmt: skip
    out = subprocess.run(
        leaderd_cmd("status", "--redis-url", redis_server.url, "--election", "jobs", "--json"),
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    info = json.loads(out)
    assert info["leader"] == leader.identity and 0 < info["ttl_seconds"] <= 1.0
    metrics = leader.get("/metrics")[1]
    assert 'leaderd_is_leader{election="jobs"} 1.0' in metrics
    assert 'leaderd_build_info{election="jobs",version=' in metrics
    assert "leaderd_refresh_duration_seconds_bucket" in metrics
    assert 'leaderd_is_leader{election="jobs"} 0.0' in follower.get("/metrics")[1]
    # Durations in logs and status are rounded to the millisecond (0.333, not 0.333333...).
    for d in ds:
        for event in d.events():
            for name, value in event.items():
                if isinstance(value, float):
                    assert round(value, 3) == value, (event["event"], name, value)
        starting = next(e for e in d.events() if e["event"] == "starting")
        assert starting["refresh_interval"] == 0.333 and starting["renew_deadline"] == 0.667
        for name, value in d.status().items():
            if isinstance(value, float):
                assert round(value, 3) == value, (name, value)


def test_graceful_handover_is_fast_and_exits_zero(
    redis_server: RedisServer, spawn: Callable[..., Daemon]
) -> None:
    # Followers poll only every 10 s: the release message must wake one of them.
    ds = [spawn(redis_server.url, f"pod-{i}", "--retry-interval", "10s", ttl="5s")
          for i in range(3)]  # fmt: skip
    for d in ds:
        d.wait_http()
    leader = poll(lambda: (lambda ls: ls[0] if len(ls) == 1 else None)(leaders(ds)))
    old_token = leader.status()["fencing_token"]
    r = redis.Redis.from_url(redis_server.url)
    poll(lambda: r.zcard("leaderd:{jobs}:waiters") == 2, 5)  # both followers are queued
    stopped = time.monotonic()
    leader.signal(signal.SIGTERM)
    rest = [d for d in ds if d is not leader]
    new = poll(lambda: (lambda ls: ls[0] if len(ls) == 1 else None)(leaders(rest)), 3)
    took = time.monotonic() - stopped
    assert took < 1.0, f"hand-over took {took:.3f}s"
    assert leader.wait() == 0
    assert new.status()["fencing_token"] > old_token
    events = [e["event"] for e in leader.events()]
    assert "stepped_down" in events and events[-1] == "stopped"
    # The other follower names the new leader at once (its next attempt is 10 s away),
    # and when it stops it leaves the queue.
    third = next(d for d in rest if d is not new)
    poll(lambda: third.status()["leader"] == new.identity, 2)
    third.signal(signal.SIGTERM)
    assert third.wait() == 0
    assert r.zcard("leaderd:{jobs}:waiters") == 0


def test_crash_failover_within_ttl(redis_server: RedisServer, spawn: Callable[..., Daemon]) -> None:
    ds = [spawn(redis_server.url, f"pod-{i}", "--retry-interval", "5s") for i in range(2)]
    for d in ds:
        d.wait_http()
    leader = poll(lambda: (lambda ls: ls[0] if len(ls) == 1 else None)(leaders(ds)))
    other = next(d for d in ds if d is not leader)
    poll(lambda: other.status()["leader"] == leader.identity, 5)  # it has seen the lease
    killed = time.monotonic()
    leader.signal(signal.SIGKILL)
    poll(lambda: other.ready() == 200, 5)
    took = time.monotonic() - killed
    assert took < 1.0 + 0.5, f"failover took {took:.3f}s with ttl 1s"


def test_frozen_leader_answers_503_first_thing_after_resuming(
    redis_server: RedisServer, spawn: Callable[..., Daemon]
) -> None:
    d = spawn(redis_server.url, "pod-0")
    d.wait_http()
    poll(lambda: d.ready() == 200)
    old_token = d.status()["fencing_token"]
    d.signal(signal.SIGSTOP)
    time.sleep(1.2)  # past the renew deadline (0.67 s) and the ttl (1 s)
    d.signal(signal.SIGCONT)
    code, body = d.get("/readyz")
    # Never the old term: either "not leader", or (if the loop re-acquired before it
    # served the request, as nobody else wanted the lock) a new term with a new token.
    if code == 200:
        assert body["fencing_token"] > old_token, body
    else:
        assert code == 503 and body["valid_until"] is None, body
    # It then wins a new term with a new token (nobody else wanted it).
    poll(lambda: d.ready() == 200, 5)
    starts = [e for e in d.events() if e["event"] == "became_leader"]
    assert len(starts) == 2 and starts[1]["token"] > starts[0]["token"]


def test_redis_killed_under_a_leader_steps_down_within_renew_deadline(
    redis_server: RedisServer, spawn: Callable[..., Daemon]
) -> None:
    d = spawn(redis_server.url, "pod-0", ttl="2s")
    d.wait_http()
    poll(lambda: d.ready() == 200)
    killed = time.monotonic()
    redis_server.kill()
    poll(lambda: d.ready() == 503, 3)
    assert time.monotonic() - killed <= 2 * 2 / 3 + 0.3  # renew deadline + slack
    time.sleep(1.5)
    assert d.get("/healthz")[0] == 200  # Redis down is not a wedged loop
    events = [e["event"] for e in d.events()]
    assert events.count("refresh_failed") == 1  # logged once, not per attempt
    assert events.count("redis_unavailable") == 1
    redis_server.start()
    poll(lambda: d.ready() == 200, 8)
    assert "redis_available" in [e["event"] for e in d.events()]


def test_redis_down_at_start(redis_factory: Callable[..., RedisServer], spawn) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    d = spawn(f"redis://127.0.0.1:{port}/0", "pod-0")
    d.wait_http()
    poll(lambda: d.status()["role"] == "follower", 5)  # it tried, and failed
    assert d.ready() == 503 and d.get("/healthz")[0] == 200
    redis_factory(port=port)
    poll(lambda: d.ready() == 200, 8)


def test_password_file_and_no_secret_anywhere(
    redis_factory: Callable[..., RedisServer], spawn: Callable[..., Daemon], tmp_path: Path
) -> None:
    secret = "s3cr3t-Pa55"
    server = redis_factory(password=secret)
    pw = tmp_path / "pw"
    pw.write_text(secret + "\n")
    env_dump = tmp_path / "child-env"
    d = spawn(server.url, "pod-0", "--redis-password-file", str(pw),
              command=["sh", "-c", f'env > {env_dump}; cat /proc/$$/cmdline > {env_dump}.argv; '
                                   "exec sleep 60"])  # fmt: skip
    d.wait_http()
    poll(lambda: d.ready() == 200, 5)
    poll(lambda: env_dump.exists() and env_dump.read_text(), 5)
    child_env = env_dump.read_text()
    poll(lambda: file_role(d) == "leader", 5)  # the status file is written off the loop
    assert "LEADERD_FENCING_TOKEN=" in child_env and "LEADERD_IDENTITY=pod-0" in child_env
    for text in (child_env, d.logs(), json.dumps(d.status()), d.status_file.read_text(),
                 d.get("/metrics")[1], Path(f"{env_dump}.argv").read_text()):  # fmt: skip
        assert secret not in text
    assert "LEADERD_REDIS_PASSWORD_FILE" not in child_env
    d.signal(signal.SIGTERM)
    assert d.wait() == 0


def test_wrong_password_is_reported_and_never_leads(
    redis_factory: Callable[..., RedisServer], spawn: Callable[..., Daemon], tmp_path: Path
) -> None:
    server = redis_factory(password="right")
    pw = tmp_path / "pw"
    pw.write_text("Xq9-not-the-password")
    d = spawn(server.url, "pod-0", "--redis-password-file", str(pw))
    d.wait_http()
    poll(lambda: any(e["event"] == "redis_unavailable" for e in d.events()), 5)
    assert d.ready() == 503
    assert "Xq9-not-the-password" not in d.logs()
    assert "AuthenticationError" in d.logs()


def test_exec_mode_runs_the_child_only_while_leader(
    redis_server: RedisServer, spawn: Callable[..., Daemon], tmp_path: Path
) -> None:
    pids = tmp_path / "pids"
    # sh starts a grandchild that ignores SIGTERM: it must not outlive leadership.
    script = f"trap '' TERM; sleep 300 & echo $! > {pids}; wait"
    d = spawn(redis_server.url, "pod-0", command=["sh", "-c", script], ttl="3s")
    d.wait_http()
    poll(lambda: d.ready() == 200)
    grandchild = int(poll(lambda: pids.exists() and pids.read_text().strip(), 5))
    os.kill(grandchild, 0)  # alive
    # Someone else takes the lock: the leader steps down and stops the whole group.
    r = redis.Redis.from_url(redis_server.url)
    r.set(KEY, '{"identity":"intruder","token":1}', px=60_000)
    lost_at = time.monotonic()
    poll(lambda: d.ready() == 503, 3)

    def gone() -> bool:
        try:
            state = Path(f"/proc/{grandchild}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        return state in ("Z", "X")  # dead; only waiting to be reaped by init

    poll(gone, 5)
    # Someone else holds the lease already, so there is no grace: detection takes up
    # to one refresh interval (1 s), then the group is killed at once.
    assert time.monotonic() - lost_at < 2.0
    poll(lambda: any(e["event"] == "child_killed" for e in d.events()), 5)


def test_exec_mode_exits_with_the_childs_code_and_releases(
    redis_server: RedisServer, spawn: Callable[..., Daemon]
) -> None:
    d = spawn(redis_server.url, "pod-0", command=["sh", "-c", "sleep 0.3; exit 7"])
    assert d.wait(10) == 7
    assert redis.Redis.from_url(redis_server.url).get(KEY) is None


def test_exit_on_loss_exits_3(redis_server: RedisServer, spawn: Callable[..., Daemon]) -> None:
    d = spawn(redis_server.url, "pod-0", "--exit-on-loss")
    d.wait_http()
    poll(lambda: d.ready() == 200)
    redis.Redis.from_url(redis_server.url).set(KEY, '{"identity":"x","token":1}', px=60_000)
    assert d.wait(5) == 3


@pytest.mark.parametrize("reason", ["resigned", "switchover", "app_unhealthy"])
def test_exit_on_loss_exits_3_after_every_step_down_but_its_own_shutdown(
    redis_server: RedisServer, spawn: Callable[..., Daemon], reason: str
) -> None:
    from .test_apphealth import FAST, TcpApp

    app = TcpApp()
    extra = ["--app-health-url", app.url, *FAST] if reason == "app_unhealthy" else []
    d = spawn(redis_server.url, "pod-0", "--exit-on-loss", *extra)
    d.wait_http()
    poll(lambda: d.ready() == 200, 10)
    url = ["--redis-url", redis_server.url, "--election", "jobs"]
    if reason == "resigned":
        done = subprocess.run(leaderd_cmd("resign", *url), capture_output=True, timeout=30)
        assert done.returncode == 0, done.stderr
    elif reason == "switchover":
        other = spawn(redis_server.url, "pod-1")
        other.wait_http()
        poll(lambda: redis.Redis.from_url(redis_server.url).zcard(KEY + ":waiters") == 1, 10)
        done = subprocess.run(leaderd_cmd("switchover", *url, "--to", "pod-1"),
                              capture_output=True, timeout=30)  # fmt: skip
        assert done.returncode == 0, done.stderr
    else:
        app.stop()
    assert d.wait(10) == 3
    stopping = [e for e in d.events() if e["event"] == "stopping"]
    assert stopping and reason in str(stopping[-1]["reason"])
    # it exits only once the lease is given back: released, or handed to pod-1
    holder = redis.Redis.from_url(redis_server.url).get(KEY)
    assert holder is None or b'"identity":"pod-1"' in holder
    if reason == "switchover":
        assert any(e["event"] == "handed_over" and e.get("handed") for e in d.events())
    app.stop()


def test_a_clean_stop_with_exit_on_loss_exits_0(
    redis_server: RedisServer, spawn: Callable[..., Daemon]
) -> None:
    d = spawn(redis_server.url, "pod-0", "--exit-on-loss")
    d.wait_http()
    poll(lambda: d.ready() == 200, 10)
    d.signal(signal.SIGTERM)
    assert d.wait(10) == 0


def test_retry_max_exhausted_exits_4(
    redis_server: RedisServer, spawn: Callable[..., Daemon]
) -> None:
    redis.Redis.from_url(redis_server.url).set(KEY, '{"identity":"x","token":1}', px=60_000)
    d = spawn(redis_server.url, "pod-0", "--retry-max", "2", "--retry-interval", "50ms")
    assert d.wait(10) == 4
    assert any(e["event"] == "gave_up" for e in d.events())


def test_http_port_in_use_is_a_clear_error(
    redis_server: RedisServer, spawn: Callable[..., Daemon], tmp_path: Path
) -> None:
    first = spawn(redis_server.url, "pod-0")
    first.wait_http()
    out = subprocess.run(
        leaderd_cmd("run", "--redis-url", redis_server.url, "--election", "jobs",
                    "--http-addr", f"127.0.0.1:{first.port}"),
        capture_output=True, text=True, timeout=20,
    )  # fmt: skip
    assert out.returncode == 1
    assert "http_failed" in out.stderr and "Traceback" not in out.stderr


def test_sigterm_stops_and_releases_when_stderr_is_a_closed_pipe(
    redis_server: RedisServer,
) -> None:
    """`leaderd run … 2>&1 | head -1`: once the reader is gone every log line is a
    broken pipe; that must never keep SIGTERM from stopping the daemon and releasing."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEADERD_")}
    proc = subprocess.Popen(
        leaderd_cmd("run", "--redis-url", redis_server.url, "--election", "jobs",
                    "--identity", "pod-0", "--ttl", "30s", "--http-addr", ""),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
        cwd=Path(__file__).resolve().parent.parent,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        assert b'"starting"' in proc.stdout.readline()  # like head -1 ...
        proc.stdout.close()  # ... which then exits
        r = redis.Redis.from_url(redis_server.url)
        poll(lambda: b"pod-0" in (r.get(KEY) or b""), 10)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        assert r.get(KEY) is None  # released at once, not left to expire in 30 s
        r.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
