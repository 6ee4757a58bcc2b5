"""The election state machine on a fake clock, against a real redis-server.

Deadlines, refresh cadence and step-down are driven by `FakeClock.advance`, so the
timing logic is tested exactly; Redis itself is real (and paused or killed for real).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio

from devtools.devserver import RedisServer
from leaderd import (
    AsyncLockClient,
    ElectionObserver,
    Elector,
    FixedIntervalStrategy,
    MaxRetryError,
    Term,
)

KEY = "leaderd:{jobs}"


class FakeClock:
    """Monotonic time that moves only when a test calls `advance`."""

    def __init__(self) -> None:
        self.t = 1000.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        return self.t

    def wall(self) -> float:
        return 1_800_000_000.0 + self.t

    async def sleep(self, seconds: float) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.t + max(0.0, seconds), next(self._seq), fut))
        await fut

    def advance(self, seconds: float) -> None:
        self.t += seconds
        while self._sleepers and self._sleepers[0][0] <= self.t:
            _, _, fut = heapq.heappop(self._sleepers)
            if not fut.done():
                fut.set_result(None)


class Recorder(ElectionObserver):
    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def on_refresh(self, outcome: str, duration: float, error: Exception | None) -> None:
        self.events.append(("refresh", outcome))

    def on_started_leading(self, term: Term) -> None:
        self.events.append(("started", term.fencing_token))

    def on_stopped_leading(self, term: Term, reason: str) -> None:
        self.events.append(("stopped", reason))

    def count(self, kind: str, value: Any = None) -> int:
        return sum(1 for k, v in self.events if k == kind and (value is None or v == value))


async def until(predicate: Callable[[], Any], timeout: float = 5.0) -> Any:
    """Poll `predicate` on the event loop (real time) until truthy."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not (value := predicate()):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not reached within {timeout}s")
        await asyncio.sleep(0.005)
    return value


@pytest.fixture
async def aredis(redis_server: RedisServer) -> AsyncIterator[redis.asyncio.Redis]:
    client = redis.asyncio.Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


def make(aredis: redis.asyncio.Redis, clock: FakeClock | None = None, **kw: Any) -> Elector:
    opts: dict[str, Any] = dict(ttl=10.0, refresh_interval=3.0, renew_deadline=6.0)
    opts.update(kw)
    return Elector(
        AsyncLockClient(aredis), "jobs", kw.pop("identity", "a"),
        retry=opts.pop("retry", FixedIntervalStrategy(0.05, None)), clock=clock, **{
            k: v for k, v in opts.items() if k != "identity"
        },
    )  # fmt: skip


class Leading:
    """A `lead` function that records its terms and whether it was cancelled."""

    def __init__(self) -> None:
        self.terms: list[Term] = []
        self.cancelled = 0
        self.running = False

    async def __call__(self, term: Term) -> None:
        self.terms.append(term)
        self.running = True
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.running = False


async def test_readers_evaluate_the_deadline_when_they_answer(
    aredis: redis.asyncio.Redis,
) -> None:
    clock = FakeClock()
    elector = make(aredis, clock)
    lead = Leading()
    task = asyncio.create_task(elector.run(lead))
    await until(lambda: lead.running)
    assert elector.is_leader()
    status = elector.status()
    assert status["role"] == "leader" and status["leader"] == "a"
    assert status["valid_until"] == pytest.approx(clock.wall() + 6.0, abs=0.1)
    # Time jumps past the deadline (a freeze): the very next answer is "not leader",
    # before the loop has had any chance to run.
    clock.t += 6.5
    assert not elector.is_leader()
    status = elector.status()
    assert status["role"] == "follower" and status["valid_until"] is None
    assert status["fencing_token"] is None
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_leader_refreshes_every_interval_and_stays_leader(
    aredis: redis.asyncio.Redis,
) -> None:
    clock = FakeClock()
    rec = Recorder()
    elector = make(aredis, clock, observers=[rec])
    lead = Leading()
    task = asyncio.create_task(elector.run(lead))
    await until(lambda: lead.running)
    for n in range(1, 6):
        clock.advance(3.0)
        await until(lambda n=n: rec.count("refresh", "ok") == n)
        assert elector.is_leader()
    # 15 fake seconds, far beyond the 6 s deadline of the first proof: still leader.
    assert elector.term is not None and elector.term.deadline > clock.now()
    assert rec.count("started") == 1 and lead.cancelled == 0
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert lead.cancelled == 1
    assert await aredis.get(KEY) is None  # released on cancellation
    assert elector.status()["role"] == "stopped"


async def test_a_lost_key_is_an_immediate_step_down_and_a_new_term(
    aredis: redis.asyncio.Redis,
) -> None:
    clock = FakeClock()
    rec = Recorder()
    elector = make(aredis, clock, observers=[rec])
    lead = Leading()
    task = asyncio.create_task(elector.run(lead))
    await until(lambda: lead.running)
    await aredis.delete(KEY)
    clock.advance(3.0)
    await until(lambda: rec.count("stopped", "lost") == 1)
    await until(lambda: len(lead.terms) == 2 and lead.running)
    assert lead.cancelled == 1
    assert lead.terms[1].fencing_token > lead.terms[0].fencing_token
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_a_refresh_that_succeeds_after_the_deadline_does_not_revive(
    aredis: redis.asyncio.Redis, redis_server: RedisServer
) -> None:
    clock = FakeClock()
    rec = Recorder()
    elector = make(aredis, clock, observers=[rec], timeout=3.0)
    lead = Leading()
    task = asyncio.create_task(elector.run(lead))
    await until(lambda: lead.running)
    redis_server.pause()
    try:
        clock.advance(3.0)  # the refresh starts and hangs on the frozen Redis
        await asyncio.sleep(0.2)
        clock.advance(3.5)  # ... while the deadline passes
        assert not elector.is_leader()
    finally:
        redis_server.resume()
    await until(lambda: rec.count("stopped", "deadline") == 1)
    assert ("refresh", "ok") in rec.events  # it did succeed, late
    await until(lambda: len(lead.terms) == 2 and lead.running)
    assert lead.terms[1].fencing_token > lead.terms[0].fencing_token
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_redis_errors_step_down_at_the_renew_deadline(
    aredis: redis.asyncio.Redis, redis_server: RedisServer
) -> None:
    clock = FakeClock()
    rec = Recorder()
    elector = make(aredis, clock, observers=[rec], timeout=0.2)
    lead = Leading()
    task = asyncio.create_task(elector.run(lead))
    await until(lambda: lead.running)
    redis_server.kill()
    for _ in range(8):  # refresh at 3 s, then retries every 0.75 s
        clock.advance(0.75)
        await asyncio.sleep(0.05)
    await until(lambda: rec.count("stopped", "deadline") == 1)
    assert rec.count("refresh", "error") >= 1
    assert not lead.running and lead.cancelled == 1
    assert elector.status()["role"] in ("follower", "starting")
    assert elector.healthy()  # Redis being down is not a wedged loop
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_healthz_turns_unhealthy_when_a_leader_stops_making_progress(
    aredis: redis.asyncio.Redis,
) -> None:
    clock = FakeClock()
    elector = make(aredis, clock)
    lead = Leading()
    task = asyncio.create_task(elector.run(lead))
    await until(lambda: lead.running)
    assert elector.healthy()
    clock.t += 10.5  # no refresh attempt completed for longer than the ttl
    assert not elector.healthy()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_lead_returning_releases_and_run_returns(aredis: redis.asyncio.Redis) -> None:
    elector = make(aredis)
    seen: list[int] = []

    async def lead(term: Term) -> None:
        seen.append(term.fencing_token)

    await asyncio.wait_for(elector.run(lead), 5)
    assert seen and await aredis.get(KEY) is None
    assert elector.status()["role"] == "stopped"


async def test_lead_raising_releases_and_run_reraises(aredis: redis.asyncio.Redis) -> None:
    elector = make(aredis)

    async def lead(term: Term) -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await asyncio.wait_for(elector.run(lead), 5)
    assert await aredis.get(KEY) is None


async def test_strategy_running_out_raises_max_retry(aredis: redis.asyncio.Redis) -> None:
    await aredis.set(KEY, '{"identity":"other","token":1}', px=10_000)
    elector = make(aredis, retry=FixedIntervalStrategy(0.02, max_retry=2))
    seen: list[str | None] = []
    with pytest.raises(MaxRetryError):
        await asyncio.wait_for(elector.run(Leading(), on_new_leader=seen.append), 5)
    assert seen == ["other"]
    assert elector.leader == "other"


async def test_one_leader_among_three_and_everyone_learns_who(
    redis_server: RedisServer,
) -> None:
    clients = [redis.asyncio.Redis.from_url(redis_server.url) for _ in range(3)]
    electors = [
        Elector(AsyncLockClient(c), "jobs", f"c{i}", ttl=2.0,
                retry=FixedIntervalStrategy(0.1, None))
        for i, c in enumerate(clients)
    ]  # fmt: skip
    seen: dict[str, list[str | None]] = {e.identity: [] for e in electors}
    leads = [Leading() for _ in electors]
    tasks = [
        asyncio.create_task(e.run(lead, on_new_leader=seen[e.identity].append))
        for e, lead in zip(electors, leads, strict=True)
    ]
    await until(lambda: sum(e.is_leader() for e in electors) == 1)
    leader = next(e for e in electors if e.is_leader())
    await until(lambda: all(s and s[-1] == leader.identity for s in seen.values()), 5)
    # `lead` starts in its own task right after the term does: wait for it, then
    # check that exactly one is running.
    await until(lambda: sum(lead.running for lead in leads) >= 1)
    assert sum(lead.running for lead in leads) == 1 and leads[electors.index(leader)].running
    # Cancelling the leader releases at once; the longest waiter takes over. Its lease
    # is counted from the start of the request that proved it (for a hand-over, the
    # attempt that queued it); its term is reported from when it learnt it leads.
    tasks[electors.index(leader)].cancel()
    await until(lambda: sum(e.is_leader() for e in electors) == 1, 2)
    successor = next(e for e in electors if e.is_leader())
    await until(lambda: leads[electors.index(successor)].terms)
    term = leads[electors.index(successor)].terms[-1]
    assert term.started_at <= term.began_at
    reported = successor.status()["term_started_at"]
    assert abs(reported - wall_time_of(term.began_at, successor)) < 0.01
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for c in clients:
        await c.aclose()


def wall_time_of(monotonic: float, elector: Elector) -> float:
    """The wall-clock time of a monotonic instant of the elector's clock."""
    return elector.clock.wall() - (elector.clock.now() - monotonic)


async def test_a_follower_learns_a_new_leader_at_once_not_at_its_next_attempt(
    redis_server: RedisServer,
) -> None:
    clients = [redis.asyncio.Redis.from_url(redis_server.url) for _ in range(3)]
    lock_clients = [AsyncLockClient(c) for c in clients]
    # Followers attempt only every 30 s and the lease is 60 s: only the announcement of
    # the new term can tell the third candidate in time.
    electors = [Elector(lc, "jobs", f"c{i}", ttl=60.0, retry=FixedIntervalStrategy(30, None))
                for i, lc in enumerate(lock_clients)]  # fmt: skip
    seen: dict[str, list[str | None]] = {e.identity: [] for e in electors}
    tasks = [asyncio.create_task(e.run(Leading(), on_new_leader=seen[e.identity].append))
             for e in electors]  # fmt: skip
    await until(lambda: sum(e.is_leader() for e in electors) == 1)
    leader = next(e for e in electors if e.is_leader())
    await until(lambda: all(s and s[-1] == leader.identity for s in seen.values()), 5)
    # both followers queued, so neither makes another attempt for 30 s
    for _ in range(1000):  # 5 s
        if await clients[0].zcard("leaderd:{jobs}:waiters") == 2:
            break
        await asyncio.sleep(0.005)
    else:
        raise AssertionError("the followers did not queue")
    tasks[electors.index(leader)].cancel()  # releases: the first waiter takes over
    await until(lambda: not leader.is_leader() and sum(e.is_leader() for e in electors) == 1, 2)
    successor = next(e for e in electors if e.is_leader())
    third = next(e for e in electors if e is not leader and e is not successor)
    await until(lambda: third.status()["leader"] == successor.identity, 2)
    assert seen[third.identity][-1] == successor.identity
    assert not third.is_leader()
    # announcements nobody reads are dropped, never kept as unclaimed messages
    assert not [p for lc in lock_clients for p in lc.subscription.pending
                if p[0].startswith("leaderd:terms:")]  # fmt: skip
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for lc in lock_clients:
        await lc.aclose()
    for c in clients:
        await c.aclose()


class Broken(ElectionObserver):
    """An output with a bug: every hook raises."""

    def __init__(self) -> None:
        self.bound: Elector | None = None

    def bind(self, elector: Elector) -> None:
        self.bound = elector

    def on_attempt(self, outcome: str, error: Exception | None) -> None:
        raise RuntimeError("attempt hook bug")

    def on_started_leading(self, term: Term) -> None:
        raise RuntimeError("start hook bug")

    def on_status_change(self) -> None:
        raise ValueError("status hook bug")

    async def stepped_down(self, term: Term, reason: str, budget: float) -> None:
        raise RuntimeError("async hook bug")


async def test_an_observer_that_raises_is_reported_once_and_never_stops_the_election(
    aredis: redis.asyncio.Redis,
) -> None:
    broken, recorder = Broken(), Recorder()
    e = make(aredis, observers=[broken, recorder])
    assert broken.bound is e  # observers are bound when the elector is built
    failures: list[tuple[str, str]] = []
    e.on_observer_error = lambda o, hook, exc: failures.append((type(o).__name__, hook))
    lead = Leading()
    task = asyncio.create_task(e.run(lead))
    await until(lambda: e.is_leader() and lead.running)
    assert recorder.count("started") == 1  # the observers after the broken one still ran
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert await aredis.get(KEY) is None  # released despite the failing stepped_down hook
    assert sorted(failures) == sorted(set(failures))  # each (observer, hook) reported once
    assert {h for _, h in failures} >= {"on_started_leading", "on_status_change", "stepped_down"}
