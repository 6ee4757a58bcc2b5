"""Exec mode: no process of the command's tree outlives a step-down or leaderd's death,
whether it stays in the command's process group, leaves it with setsid, or is
orphaned by a parent that exited."""

from __future__ import annotations

import itertools
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from devtools.devserver import RedisServer

from .daemons import Daemon, poll

KEY = "leaderd:{jobs}"
_seq = itertools.count()
pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")


def marker() -> str:
    """A sleep duration no other process uses, to find this test's processes."""
    return f"{4000 + os.getpid() % 1000}.{next(_seq)}"


def alive_with(arg: str) -> list[int]:
    """Live (not zombie) processes whose argv contains `sleep ARG`."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            argv = Path(f"/proc/{name}/cmdline").read_bytes().split(b"\0")
            state = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        is_sleep = bool(argv) and argv[0].endswith(b"sleep")
        if is_sleep and arg.encode() in argv and state not in ("Z", "X"):
            out.append(int(name))
    return out


TREES = {
    # two background workers in the command's own process group
    "group": "sleep {m} & sleep {m} & wait",
    # a worker that leaves the process group and the session
    "setsid": "setsid sleep {m} & wait",
    # a daemonised worker whose parent exits at once (double fork), ignoring SIGTERM
    "orphan": "(trap '' TERM; setsid sleep {m} &) ; sleep {m}",
}


@pytest.mark.parametrize("tree", list(TREES))
def test_nothing_outlives_kill_9_of_leaderd(
    redis_server: RedisServer, spawn: Callable[..., Daemon], tree: str
) -> None:
    m = marker()
    d = spawn(redis_server.url, "pod-0", command=["sh", "-c", TREES[tree].format(m=m)])
    d.wait_http()
    poll(lambda: d.ready() == 200, 10)
    expected = 2 if tree in ("group", "orphan") else 1
    poll(lambda: len(alive_with(m)) == expected, 10)
    killed_at = time.monotonic()
    d.signal(signal.SIGKILL)
    poll(lambda: not alive_with(m), 5)
    # ttl 1s: the reaper's grace is 80 % of ttl - renew_deadline (0.27 s), then SIGKILL.
    assert time.monotonic() - killed_at < 1.0


@pytest.mark.parametrize("tree", ["setsid", "orphan"])
def test_nothing_outlives_a_step_down(
    redis_server: RedisServer, spawn: Callable[..., Daemon], tree: str
) -> None:
    m = marker()
    d = spawn(redis_server.url, "pod-0", command=["sh", "-c", TREES[tree].format(m=m)])
    d.wait_http()
    poll(lambda: d.ready() == 200, 10)
    poll(lambda: alive_with(m), 10)
    redis.Redis.from_url(redis_server.url).set(KEY, '{"identity":"intruder","token":1}',
                                                px=60_000)  # fmt: skip
    poll(lambda: d.ready() == 503, 5)
    poll(lambda: not alive_with(m), 5)
    assert d.proc.poll() is None  # leaderd itself goes on as a follower
    poll(lambda: any(e["event"] in ("child_killed", "child_stopped") for e in d.events()), 5)


def test_a_missing_command_is_reported_and_exits_127(
    redis_server: RedisServer, spawn: Callable[..., Daemon]
) -> None:
    d = spawn(redis_server.url, "pod-0", command=["/nonexistent/cmd"])
    assert d.wait(10) == 127
    assert any(e["event"] == "child_start_failed" for e in d.events())
