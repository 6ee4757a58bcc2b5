"""Exec mode: no process of the command's tree outlives a step-down or leaderd's death,
whether it stays in the command's process group, leaves it with setsid, or is
orphaned by a parent that exited."""

from __future__ import annotations

import argparse
import itertools
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from devtools.devserver import RedisServer
from leaderd.config import RUN_OPTIONS, ConfigError, build_run_config

from .daemons import Daemon, leaderd_cmd, poll

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


@pytest.mark.parametrize("kind", ["missing path", "not on PATH", "not executable", "directory",
                                  "empty", "nothing after --"])  # fmt: skip
def test_a_command_that_cannot_run_is_refused_at_start(tmp_path: Path, kind: str) -> None:
    plain = tmp_path / "script.sh"
    plain.write_text("#!/bin/sh\nexit 0\n")  # mode 0644: not executable
    command = {
        "missing path": ["/nonexistent/cmd"],
        "not on PATH": ["no-such-command-for-leaderd", "arg"],
        "not executable": [str(plain)],
        "directory": [str(tmp_path)],
        "empty": [""],
        "nothing after --": [],
    }[kind]
    out = subprocess.run(
        leaderd_cmd("run", "--redis-url", "redis://127.0.0.1:1", "--election", "e",
                    "--http-addr", "", "--", *command),
        capture_output=True, text=True, timeout=30, env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert out.returncode == 1, out.stderr
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("leaderd: error: ")
    assert "--" in out.stderr and "Traceback" not in out.stderr and "starting" not in out.stderr


def test_a_command_found_via_path_is_accepted(tmp_path: Path) -> None:
    tool = tmp_path / "bin" / "my-tool"
    tool.parent.mkdir()
    tool.write_text("#!/bin/sh\nexit 0\n")
    tool.chmod(0o755)
    ns = argparse.Namespace(**{o.dest: None for o in RUN_OPTIONS})
    env = {"LEADERD_REDIS_URL": "redis://h", "LEADERD_ELECTION": "e",
           "PATH": f"/nonexistent:{tool.parent}"}  # fmt: skip
    assert build_run_config(ns, ["my-tool", "x"], env).command == ["my-tool", "x"]
    with pytest.raises(ConfigError, match="not an executable file on PATH"):
        build_run_config(ns, ["my-tool"], {**env, "PATH": "/nonexistent"})


def test_a_command_gone_when_it_first_leads_is_reported_and_exits_127(
    redis_server: RedisServer, spawn: Callable[..., Daemon], tmp_path: Path
) -> None:
    tool = tmp_path / "tool.sh"
    tool.write_text("#!/bin/sh\nexec sleep 60\n")
    tool.chmod(0o755)
    r = redis.Redis.from_url(redis_server.url)
    r.set(KEY, '{"identity":"intruder","token":1}', px=60_000)  # fmt: skip
    d = spawn(redis_server.url, "pod-0", command=[str(tool)])
    d.wait_http()  # it passed the start-up check
    tool.unlink()  # and the command is gone by the time it leads
    r.delete(KEY)
    assert d.wait(10) == 127
    assert any(e["event"] == "child_start_failed" for e in d.events())
