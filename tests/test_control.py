"""Operator control through Redis against real daemons: `leaderd switchover`, `resign`,
preemption by priority, and `--advertise` in the status and in `leaderd status`."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from typing import Any

import redis

from devtools.devserver import RedisServer
from leaderd._core import queued_value

from .daemons import REPO, Daemon, leaderd_cmd, poll
from .test_apphealth import FAST, TcpApp, events


def cli(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(leaderd_cmd(*args), capture_output=True, text=True, timeout=timeout,
                          cwd=REPO)  # fmt: skip


def leader_of(daemons: list[Daemon]) -> Daemon:
    return poll(lambda: next((d for d in daemons if d.ready() == 200), None), 10)


def queued(r: redis.Redis, names: set[str], election: str = "jobs") -> bool:
    members = r.zrange(f"leaderd:{{{election}}}:waiters", 0, -1)
    return {json.loads(queued_value(m.decode()))["identity"] for m in members} >= names


def start(spawn: Any, url: str, names: str, *extra: str) -> list[Daemon]:
    daemons = [spawn(url, n, *extra, "--advertise", f"{n}.example:80") for n in names]
    for d in daemons:
        d.wait_http()
    return daemons


def test_switchover_goes_to_the_last_waiter_in_the_queue(
    redis_server: RedisServer, spawn: Any, r: redis.Redis
) -> None:
    daemons = start(spawn, redis_server.url, "abcd")
    old = leader_of(daemons)
    others = [d for d in daemons if d is not old]
    poll(lambda: queued(r, {d.identity for d in others}), 10)
    # the last in the queue: the newest arrival (all have priority 0)
    members = r.zrange("leaderd:{jobs}:waiters", 0, -1)
    last = json.loads(queued_value(members[-1].decode()))["identity"]
    old_token = old.status()["fencing_token"]
    done = cli("switchover", "--redis-url", redis_server.url, "--election", "jobs", "--to", last)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"switched over: {old.identity} (token {old_token}) -> {last}")
    new = next(d for d in daemons if d.identity == last)
    assert poll(lambda: new.ready() == 200, 5)
    status = new.status()
    assert status["fencing_token"] > old_token
    assert status["leader_address"] == f"{last}.example:80"
    assert [e["reason"] for e in events(old, "stepped_down")] == ["switchover"]
    assert events(old, "handed_over")[0]["to"] == last
    # everybody else stayed a follower: exactly one leader
    assert sum(d.ready() == 200 for d in daemons) == 1
    shown = cli("status", "--redis-url", redis_server.url, "--election", "jobs", "--json")
    info = json.loads(shown.stdout)
    assert info["leader"] == last and info["leader_address"] == f"{last}.example:80"


def test_switchover_to_a_candidate_that_just_died_is_refused_and_changes_nothing(
    redis_server: RedisServer, spawn: Any, r: redis.Redis
) -> None:
    daemons = start(spawn, redis_server.url, "ab")
    old = leader_of(daemons)
    other = next(d for d in daemons if d is not old)
    poll(lambda: queued(r, {other.identity}), 10)
    token = old.status()["fencing_token"]
    other.signal(signal.SIGKILL)
    other.wait()
    assert queued(r, {other.identity})  # its place in the queue outlives it ...
    done = cli("switchover", "--redis-url", redis_server.url, "--election", "jobs",
               "--to", other.identity)  # fmt: skip
    assert done.returncode == 1  # ... but it no longer listens, so it is refused
    line = done.stderr.strip()
    assert "\n" not in line and other.identity in line and "not a live candidate" in line
    assert old.ready() == 200 and old.status()["fencing_token"] == token
    assert events(old, "control_request") == []
    assert r.get("leaderd:{jobs}:control") is None  # a refused request writes nothing


def test_switchover_to_an_ineligible_or_unknown_candidate_is_refused(
    redis_server: RedisServer, spawn: Any, r: redis.Redis
) -> None:
    app_ok, app_down = TcpApp(), TcpApp()
    app_down.stop()
    healthy = spawn(redis_server.url, "healthy", "--app-health-url", app_ok.url, *FAST)
    sick = spawn(redis_server.url, "sick", "--app-health-url", app_down.url, *FAST)
    for d in (healthy, sick):
        d.wait_http()
    assert leader_of([healthy, sick]) is healthy
    token = healthy.status()["fencing_token"]
    for target, words in (("sick", "not a live, eligible candidate"),
                          ("nobody-such", "not a live, eligible candidate"),
                          ("healthy", "already leads")):  # fmt: skip
        done = cli("switchover", "--redis-url", redis_server.url, "--election", "jobs",
                   "--to", target)  # fmt: skip
        assert done.returncode == 1 and target in done.stderr and words in done.stderr
    assert healthy.ready() == 200 and healthy.status()["fencing_token"] == token
    assert sick.status()["ineligible_reason"] == "app_unhealthy"
    app_ok.stop()


def test_resign_hands_over_and_the_hold_off_keeps_the_old_leader_out(
    redis_server: RedisServer, spawn: Any, r: redis.Redis
) -> None:
    daemons = start(spawn, redis_server.url, "ab")
    old = leader_of(daemons)
    other = next(d for d in daemons if d is not old)
    poll(lambda: queued(r, {other.identity}), 10)
    done = cli("resign", "--redis-url", redis_server.url, "--election", "jobs",
               "--hold-off", "4s")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"-> {other.identity} (token" in done.stdout
    assert poll(lambda: other.ready() == 200, 5)
    status = old.status()
    assert status["eligible"] is False and status["ineligible_reason"] == "resigned"
    assert [e["reason"] for e in events(old, "stepped_down")] == ["resigned"]
    # the new leader goes away: the old one stays out until its hold-off ends
    resigned_at = time.monotonic()
    other.signal(signal.SIGTERM)
    assert other.wait() == 0
    time.sleep(0.5)
    assert old.ready() == 503 and r.get("leaderd:{jobs}") is None
    assert poll(lambda: old.ready() == 200, 10)
    assert time.monotonic() - resigned_at > 3.0
    assert old.status()["eligible"] is True


def test_resign_with_nobody_leading_is_one_line_and_exit_1(redis_server: RedisServer) -> None:
    done = cli("resign", "--redis-url", redis_server.url, "--election", "idle")
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.strip() == ("leaderd resign: error: resign refused, nothing changed: "
                                   "nobody leads election idle")  # fmt: skip


def test_bad_control_flags_are_one_line_and_exit_1(redis_server: RedisServer) -> None:
    base = ["--redis-url", redis_server.url, "--election", "jobs"]
    for args, words in (
        (["resign", *base, "--hold-off", "soon"], "--hold-off='soon': must be a duration"),
        (["resign", *base, "--wait", "-1s"], "--wait='-1s': must be a duration"),
        (["switchover", *base], "the following arguments are required: --to"),
        (["switchover", "--election", "jobs", "--to", "x"], "--redis-url"),
        (["watch", "--redis-url", redis_server.url], "--election"),
        (["switchover", *base, "--to", "x", "--redis-cluster"], "not supported with"),
        (
            ["run", *base, "--identity", "a", "--redis-cluster", "--preempt"],
            "--preempt (env LEADERD_PREEMPT)='true': is not supported with --redis-cluster",
        ),
        (["run", *base, "--identity", "a", "--preempt-delay", "50ms"], "at least 100ms"),
        (["run", *base, "--identity", "a", "--advertise", "has space"], "printable ASCII"),
    ):
        done = cli(*args)
        assert done.returncode == 1 and done.stdout == "", args
        assert len(done.stderr.strip().splitlines()) == 1 and words in done.stderr, done.stderr


def test_a_preferred_candidate_preempts_once_and_never_back(
    redis_server: RedisServer, spawn: Any
) -> None:
    low = spawn(redis_server.url, "low", "--preempt", "--preempt-delay", "300ms")
    low.wait_http()
    assert poll(lambda: low.ready() == 200, 10)
    low_token = low.status()["fencing_token"]
    high = spawn(redis_server.url, "high", "--priority", "10", "--preempt",
                 "--preempt-delay", "1s")  # fmt: skip
    high.wait_http()
    asked = poll(lambda: events(high, "preempt_requested"), 15)[0]
    assert asked["leader"] == "low" and asked["outcome"] == "sent"
    assert poll(lambda: high.ready() == 200, 5)
    assert high.status()["fencing_token"] > low_token
    assert [e["reason"] for e in events(low, "stepped_down")] == ["preempted"]
    time.sleep(2.5)  # several preempt delays of both: nobody takes it back
    assert high.ready() == 200 and len(events(high, "became_leader")) == 1
    assert len(events(low, "became_leader")) == 1 and events(low, "preempt_requested") == []
    assert len(events(high, "preempt_requested")) == 1
