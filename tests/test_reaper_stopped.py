"""Exec mode with the reaper stopped (SIGSTOP): a step-down still ends the command's
whole tree, because leaderd wakes the reaper and, if it stays stuck, kills the tree
itself (issue 19)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from devtools.devserver import RedisServer

from .daemons import Daemon, poll
from .test_exec import KEY, TREES, alive_with, marker

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")


def _reaper_of(d: Daemon) -> int:
    """The reaper: the child of leaderd that runs reaper.py."""
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_text()
            argv = Path(f"/proc/{name}/cmdline").read_bytes()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == d.proc.pid and b"reaper.py" in argv:
            return int(name)
    raise AssertionError("no reaper")


@pytest.mark.parametrize("stop_again", [False, True])
def test_a_stopped_reaper_does_not_keep_the_tree_alive_after_a_step_down(
    redis_server: RedisServer, spawn: Callable[..., Daemon], stop_again: bool
) -> None:
    m = marker()
    d = spawn(redis_server.url, "pod-0", command=["sh", "-c", TREES["group"].format(m=m)])
    d.wait_http()
    poll(lambda: d.ready() == 200, 10)
    poll(lambda: len(alive_with(m)) == 2, 10)
    reaper = poll(lambda: _reaper_of(d), 5)
    os.kill(reaper, signal.SIGSTOP)
    stopper = None
    if stop_again:  # an adversary (or a debugger) stops it each time it is woken
        import threading

        done = threading.Event()

        def keep_stopping() -> None:
            while not done.wait(0.005):
                try:
                    os.kill(reaper, signal.SIGSTOP)
                except ProcessLookupError:
                    return

        stopper = threading.Thread(target=keep_stopping)
        stopper.start()
    try:
        stepped = time.monotonic()
        redis.Redis.from_url(redis_server.url).set(KEY, '{"identity":"x","token":1}', px=60_000)
        poll(lambda: d.ready() == 503, 5)
        poll(lambda: not alive_with(m), 10)
        # ttl 1 s (the test daemons'): the grace, 2 s for the reaper, then leaderd itself
        assert time.monotonic() - stepped < 5.0
    finally:
        if stopper is not None:
            done.set()
            stopper.join()
    assert d.proc.poll() is None  # leaderd goes on as a follower
