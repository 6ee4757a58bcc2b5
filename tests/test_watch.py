"""Discovery: `leaderd watch` and `follow()` from Redis, and the /watch event stream
(first event, one event per change, heartbeats, many watchers, nothing leaked)."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from typing import Any

import redis

from devtools.devserver import RedisServer, free_port
from leaderd import AsyncLockClient, ElectionObserver, Elector, FixedIntervalStrategy, Term
from leaderd.backend import MemoryBackend, MemoryStore
from leaderd.http import WatchHub, make_app, start_server
from leaderd.redis_backend import follow

from .daemons import REPO, Daemon, leaderd_cmd, poll
from .test_elector import FakeClock, Leading, until


class Started(ElectionObserver):
    def __init__(self, log: list[tuple[int, float]]) -> None:
        self.log = log

    def on_started_leading(self, term: Term) -> None:
        self.log.append((term.fencing_token, time.monotonic()))


async def test_follow_sees_every_term_of_20_hand_overs_in_order_within_100ms(
    redis_server: RedisServer,
) -> None:
    started: list[tuple[int, float]] = []
    clients = [redis.asyncio.Redis.from_url(redis_server.url) for _ in range(3)]
    electors = [
        Elector(AsyncLockClient(c), "w", f"e{i}", ttl=5.0, observers=[Started(started)],
                retry=FixedIntervalStrategy(1.0, None), address=f"10.0.0.{i}:80")
        for i, c in enumerate(clients[:2])
    ]  # fmt: skip
    seen: list[tuple[int | None, float]] = []

    async def watching() -> None:
        async for holder in follow(AsyncLockClient(clients[2]), "w"):
            seen.append((holder.token if holder else None, time.monotonic()))

    watcher = asyncio.create_task(watching())
    cli = subprocess.Popen(  # noqa: ASYNC220 - read in a thread below
        leaderd_cmd("watch", "--redis-url", redis_server.url, "--election", "w", "--json"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
    )  # fmt: skip
    await until(lambda: seen == [(None, seen[0][1])] if seen else False)
    assert cli.stdout is not None
    first = json.loads(await asyncio.to_thread(cli.stdout.readline))  # it is following
    tasks = [asyncio.create_task(e.run(Leading())) for e in electors]
    try:
        await until(lambda: len(started) == 1)
        admin = redis.Redis.from_url(redis_server.url)
        for n in range(20):
            leader = next(e for e in electors if e.is_leader())
            await until(lambda: admin.zcard("leaderd:{w}:waiters"))  # the other one waits
            await leader.resign(0.0)
            await until(lambda n=n: len(started) == n + 2)
        await until(lambda: len(seen) >= 22)
    finally:
        for t in [*tasks, watcher]:
            t.cancel()
        await asyncio.gather(*tasks, watcher, return_exceptions=True)
        if sys.exc_info()[0] is not None:
            cli.kill()  # the test failed: leave no process behind
    terms = [token for token, _ in started]
    assert terms == sorted(terms) and len(set(terms)) == 21
    # follow() saw each term, in order (a brief "nobody" between two is allowed)
    watched = [(token, at) for token, at in seen if token is not None]
    assert [token for token, _ in watched] == terms
    delays = [at - began for (_, at), (_, began) in zip(watched, started, strict=True)]
    assert max(delays) < 0.1, delays
    # the command printed the same terms in order, each with the leader's address
    cli.send_signal(signal.SIGTERM)
    out, err = cli.communicate(timeout=10)
    assert cli.returncode == 0, err
    lines = [first, *(json.loads(line) for line in out.splitlines())]
    assert lines[0]["leader"] is None
    printed = [line["fencing_token"] for line in lines if line["leader"] is not None]
    assert printed == terms
    assert {line["leader_address"] for line in lines if line["leader"]} == {
        "10.0.0.0:80", "10.0.0.1:80"}  # fmt: skip
    for c in clients:
        await c.aclose()


def test_watch_prints_plain_lines_follows_an_expiry_and_survives_a_redis_restart(
    redis_factory: Any, spawn: Any, tmp_path: Any
) -> None:
    server: RedisServer = redis_factory()
    proc = subprocess.Popen(
        leaderd_cmd("watch", "--redis-url", server.url, "--election", "jobs"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().rstrip().endswith("jobs: no leader")
        d = spawn(server.url, "pod-a", "--advertise", "10.1.2.3:8080")
        line = proc.stdout.readline().rstrip()
        assert " jobs: leader pod-a  token " in line and line.endswith("address 10.1.2.3:8080")
        d.signal(signal.SIGKILL)  # no release: the watcher learns at the lease's expiry
        killed = time.monotonic()
        assert proc.stdout.readline().rstrip().endswith("jobs: no leader")
        assert time.monotonic() - killed < 2.5  # ttl 1s, plus the poll
        assert proc.stderr is not None
        server.kill()
        assert "unavailable" in proc.stderr.readline()  # one line, then it keeps trying
        server.start()
        spawn(server.url, "pod-b")
        assert " jobs: leader pod-b  token " in proc.stdout.readline()
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert err.strip() == "leaderd watch: Redis available again"


# -- /watch -------------------------------------------------------------------------------
async def _serve(hub: WatchHub, elector: Elector, heartbeat: float) -> tuple[Any, int]:
    port = free_port()
    app = make_app(elector, lambda: b"", hub, heartbeat=heartbeat)
    return await start_server(app, "127.0.0.1", port), port


async def _open(port: int, path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, int]:
    """GET `path`; the stream positioned after the response head, and its status code."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    status = int((await reader.readline()).split()[1])
    headers = {}
    while line := (await reader.readline()).decode().strip():
        name, _, value = line.partition(":")
        headers[name.lower()] = value.strip()
    assert path != "/watch" or status != 200 or headers["content-type"] == "text/event-stream"
    return reader, writer, status


async def _events(reader: asyncio.StreamReader, count: int) -> list[Any]:
    """The next `count` events or comments of an SSE stream, each decoded."""
    out: list[Any] = []
    async with asyncio.timeout(5):
        while len(out) < count:
            line = (await reader.readline()).decode()
            if line.startswith("data: "):
                out.append(json.loads(line[6:]))
            elif line.startswith(":"):
                out.append(line.strip())
    return out


async def test_the_stream_starts_with_the_status_then_one_event_per_change() -> None:
    clock = FakeClock()
    store = MemoryStore(clock)
    hub = WatchHub()
    elector = Elector(MemoryBackend(store), "jobs", "a", ttl=10.0, clock=clock,
                      retry=FixedIntervalStrategy(1.0, None), observers=[hub])  # fmt: skip
    server, port = await _serve(hub, elector, heartbeat=0.2)
    lead = Leading()
    try:
        resp, writer, _ = await _open(port, "/watch")
        [first] = await _events(resp, 1)
        assert first["role"] == "starting" and first["leader"] is None
        task = asyncio.create_task(elector.run(lead))
        await until(lambda: lead.running)
        got = await _events(resp, 1)
        while got[-1] == ": keep-alive" or got[-1]["role"] != "leader":
            got += await _events(resp, 1)
        leading = got[-1]
        assert leading["leader"] == "a" and leading["fencing_token"] is not None
        clock.advance(3.5)  # a refresh moves valid_until only: no event for it
        quiet = await _events(resp, 1)
        assert quiet == [": keep-alive"]  # the heartbeat, nothing else
        elector.set_eligible(False, "app_unhealthy")
        after = [e for e in await _events(resp, 2) if e != ": keep-alive"]
        assert after[0]["eligible"] is False or after[0]["role"] == "follower"
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        writer.close()
    finally:
        await server.close()


async def test_watchers_are_capped_so_probes_always_get_in() -> None:
    clock = FakeClock()
    store = MemoryStore(clock)
    hub = WatchHub(max_watchers=3)
    elector = Elector(MemoryBackend(store), "jobs", "a", ttl=10.0, clock=clock,
                      observers=[hub])  # fmt: skip
    server, port = await _serve(hub, elector, heartbeat=5.0)
    try:
        streams = [await _open(port, "/watch") for _ in range(3)]
        await until(lambda: len(hub.queues) == 3)
        reader, writer, status = await _open(port, "/watch")
        assert status == 503
        assert b"too many watchers" in await reader.read()  # the body, then the server closes
        writer.close()
        _, probe, status = await _open(port, "/healthz")
        assert status == 200
        probe.close()
        for _, w, _ in streams:
            w.close()
    finally:
        await server.close()


def test_a_daemon_streams_its_own_role_changes(redis_server: RedisServer, spawn: Any) -> None:
    import urllib.request

    a: Daemon = spawn(redis_server.url, "a", "--advertise", "a:1")
    a.wait_http()
    assert poll(lambda: a.ready() == 200, 10)
    with urllib.request.urlopen(f"http://127.0.0.1:{a.port}/watch", timeout=10) as stream:
        first = json.loads(stream.readline().decode()[6:])
        assert first["role"] == "leader" and first["leader_address"] == "a:1"
        stream.readline()  # the blank line that ends an event
        b: Daemon = spawn(redis_server.url, "b", "--advertise", "b:1")
        b.wait_http()
        done = subprocess.run(
            leaderd_cmd("switchover", "--redis-url", redis_server.url, "--election", "jobs",
                        "--to", "b", "--wait", "20s"),
            capture_output=True, text=True, timeout=30, cwd=REPO,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        events = []
        while not events or events[-1]["leader"] != "b":
            line = stream.readline().decode()
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
        assert events[0]["role"] == "follower"  # first it stepped down ...
        assert events[-1]["leader_address"] == "b:1"  # ... then it learned who leads
