"""Verify, don't trust: the edges of the hand-over and the fencing counter.

Each test reproduces a way the guarantees used to break: a rollback that reissued
tokens, a message or queue entry that made a holder Redis never had, a waiter that
could not act and kept the lock, a failed departure, helper keys two locks shared.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import redis
import redis.asyncio

from devtools.devserver import RedisServer
from leaderd import (
    AsyncLockClient,
    FailedToPreemptLockError,
    FixedIntervalStrategy,
    Lock,
    LockClient,
    _core,
)
from leaderd.backend import Candidate
from leaderd.clock import SystemClock
from leaderd.redis_backend import RedisBackend, follow, parse_holder

from .conftest import L1, listening_waiter, wait_for
from .daemons import Daemon, leaders, poll

WAITERS, WAITING = _core.helper_keys("jobs")


# -- 1. tokens across rollbacks ---------------------------------------------------------
def test_tokens_increase_across_a_restart_from_an_older_snapshot(
    redis_server: RedisServer, client: LockClient, r: redis.Redis
) -> None:
    client.try_lock("jobs", expiration=5).unlock()
    r.save()  # the snapshot the restart will go back to: it holds the counter
    token = client.try_lock("jobs", expiration=5).fencing_token
    redis_server.kill()
    redis_server.start()  # loads the older snapshot: the counter is back before `token`
    assert wait_for(lambda: r.ping())
    assert client.try_lock("other", expiration=5)  # (another key: a new connection works)
    again = client.try_lock("jobs", expiration=5).fencing_token
    assert again > token


def test_tokens_increase_across_debug_reload_and_flushall(
    client: LockClient, r: redis.Redis
) -> None:
    client.try_lock("jobs", expiration=5).unlock()
    r.save()
    first = client.try_lock("jobs", expiration=5)
    first.unlock()
    r.execute_command("DEBUG", "RELOAD", "NOSAVE")  # back to the snapshot in one step
    second = client.try_lock("jobs", expiration=5)
    assert second.fencing_token > first.fencing_token
    r.flushall()
    third = client.try_lock("jobs", expiration=5)
    assert third.fencing_token > second.fencing_token


def test_a_counter_ahead_of_time_still_grows_by_one(client: LockClient, r: redis.Redis) -> None:
    ahead = 2**60  # e.g. a Redis whose clock was ahead, or a counter set by hand
    r.set(_core.fence_key("jobs"), str(ahead))
    lock = client.try_lock("jobs", expiration=5)
    assert lock.fencing_token == ahead + 1


# -- 2. Redis first, message second -----------------------------------------------------
@pytest.mark.parametrize("expiration", [1e16, 30 * 24 * 3600 + 1, float("inf")])
def test_a_lease_beyond_the_bound_is_refused_before_anything_is_written(
    client: LockClient, r: redis.Redis, expiration: float
) -> None:
    with pytest.raises(ValueError, match="expiration must be a number of seconds"):
        client.lock("jobs", expiration=expiration)
    assert r.dbsize() == 0


def test_a_value_beyond_the_bound_is_refused(client: LockClient) -> None:
    with pytest.raises(ValueError, match="at most 4096 bytes"):
        client.try_lock("jobs", value="é" * 2049)


@pytest.mark.parametrize(
    "member",
    [
        _core.queue_member(L1, 1, 0, False, "zero"),  # px 0: SET would fail
        _core.queue_member(L1, 1, 10**16, False, "huge"),  # beyond 30 days
        f"{L1}|1-5000|",  # no value
        f"{L1}|1-5000t|not-json",  # an embedded token needs a JSON object
        "L1|1-5000|short-listener",
        _core.queue_member(L1, 1, 5000, False, "x" * 5000),  # too long
    ],
)
def test_a_malformed_queue_entry_never_gets_the_lock(
    client: LockClient, r: redis.Redis, member: str
) -> None:
    holder = client.try_lock("jobs", expiration=30)
    listening = listening_waiter(r, "jobs")  # it even listens: still dropped
    r.zadd(WAITERS, {member: 1})
    r.set(WAITING, "1")
    holder.unlock()
    assert r.get("jobs") is None and r.zcard(WAITERS) == 0
    assert listening.get_message(timeout=0.2) is None  # and nobody was told anything
    listening.close()


def _queued_member(r: redis.Redis) -> str:
    return str(wait_for(lambda: r.zrange(WAITERS, 0, 0))[0].decode())


def _listener_of(member: str) -> str:
    return member.split("|", 1)[0]


FORGERIES = ["{token} {member}", "٣٤ {member}", "99999999999999999999 {member}", "² x"]


@pytest.mark.parametrize("sync", [True, False])
async def test_forged_hand_over_messages_never_make_a_holder(
    sync: bool, client: LockClient, aclient: AsyncLockClient, r: redis.Redis
) -> None:
    holder = client.try_lock("jobs", expiration=30)
    retry = FixedIntervalStrategy(10, 3)
    if sync:
        waiting = asyncio.ensure_future(
            asyncio.to_thread(client.lock, "jobs", value="v", expiration=5, retry=retry)
        )
    else:
        waiting = asyncio.ensure_future(aclient.lock("jobs", value="v", expiration=5, retry=retry))
    member = await asyncio.to_thread(_queued_member, r)
    channel = _core.waiter_channel("jobs", _listener_of(member))
    for forged in FORGERIES:  # an exact member, even a plausible token: a hint only
        text = forged.format(member=member, token=holder.fencing_token + 1)
        assert r.publish(channel, text) == 1
    r.publish(channel, b"\xff" * 100_000)  # and an oversized one
    done, _ = await asyncio.wait({waiting}, timeout=0.5)
    assert not done  # nobody believed a message: the holder still holds the lock
    assert r.get("jobs") == holder.value.encode()
    if not sync:
        assert aclient.subscription.alive()  # the shared reader survived all of it
        # and kept nothing of them (a non-hand-over message is kept as its channel only)
        assert all(message == "" for _, message in aclient.subscription.pending)
    released = time.monotonic()
    holder.unlock()  # the real hand-over still works, at once
    lock = await asyncio.wait_for(waiting, 5)
    assert time.monotonic() - released < 1.0
    assert lock.fencing_token == int(r.get(_core.fence_key("jobs")) or 0)
    assert lock.fencing_token > holder.fencing_token
    if sync:
        lock.unlock()
    else:
        await lock.unlock()


async def test_forged_announcements_never_show_a_ghost_leader(
    aclient: AsyncLockClient, r: redis.Redis
) -> None:
    backend = RedisBackend(aclient, "jobs", SystemClock())
    other = AsyncLockClient(aclient.redis)
    leader = RedisBackend(other, "jobs", SystemClock())
    seen: list[object] = []
    retry = FixedIntervalStrategy(10, None)
    lease = await leader.acquire(Candidate("real"), 30, 1, retry, seen.append)
    seen.clear()
    following = asyncio.ensure_future(
        backend.acquire(Candidate("follower"), 30, 1, retry, seen.append)
    )
    await asyncio.to_thread(wait_for, lambda: r.zcard(_core.helper_keys(backend.key)[0]))
    channel = _core.terms_channel(backend.key)
    ghost = '{"identity":"ghost","nonce":"1","address":"10.6.6.6:80","token":99999999999999999}'
    assert r.publish(channel, ghost) >= 1
    r.publish(channel, "x" * 7_000_000)  # too big to be an announcement: dropped unread
    # What a follower reports after the news is what the key holds: the real leader.
    announced = await asyncio.to_thread(
        wait_for, lambda: [a for a in seen if getattr(a, "outcome", "") == "announced"]
    )
    assert all(a.holder is not None and a.holder.identity == "real" for a in announced)  # type: ignore[attr-defined]
    assert all(not q.qsize() for qs in aclient.subscription.feeds.values() for q in qs)
    # and `leaderd watch` shows no ghost either
    watched: list[str | None] = []

    async def watch() -> None:
        async for holder in follow(aclient, "jobs", poll=5):
            watched.append(None if holder is None else holder.identity)

    watching = asyncio.ensure_future(watch())
    await asyncio.to_thread(wait_for, lambda: watched)
    r.publish(channel, ghost)
    await asyncio.sleep(0.3)
    assert "ghost" not in watched and watched[0] == "real"
    watching.cancel()
    following.cancel()
    await asyncio.wait({watching, following})
    await leader.release(lease, 1)
    await other.aclose()
    assert parse_holder(ghost).identity == "ghost"  # the forged text was a valid value


# -- 3. a waiter that cannot act costs a bounded delay, not a lease ---------------------
_WAITER = textwrap.dedent(
    """
    import sys, redis, leaderd
    client = leaderd.LockClient(redis.Redis.from_url(sys.argv[1]))
    print("waiting", flush=True)
    client.lock("jobs", value="stuck", expiration=8,
                retry=leaderd.FixedIntervalStrategy(30, None))
    print("locked", flush=True)
    """
)


@pytest.fixture
def stuck_waiter(redis_server: RedisServer) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _WAITER, redis_server.url],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    yield proc
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGCONT)
    proc.kill()
    proc.wait(10)


@pytest.mark.parametrize("fault", ["killed with a pattern subscriber", "frozen"])
def test_a_head_waiter_that_cannot_act_costs_the_claim_not_the_lease(
    fault: str,
    client: LockClient,
    r: redis.Redis,
    stuck_waiter: subprocess.Popen[str],
) -> None:
    holder = client.try_lock("jobs", expiration=30)
    wait_for(lambda: r.zcard(WAITERS) == 1, 10)  # the stuck one is first in the queue
    got: list[tuple[Lock, float]] = []
    thread = threading.Thread(
        target=lambda: got.append((client.lock("jobs", value="live", expiration=8), 0.0))
    )
    thread.start()
    wait_for(lambda: r.zcard(WAITERS) == 2)
    monitor = r.pubsub()
    if fault == "frozen":
        os.kill(stuck_waiter.pid, signal.SIGSTOP)
    else:
        monitor.psubscribe("*")  # e.g. redis-cli or RedisInsight: PUBLISH counts it
        wait_for(lambda: monitor.get_message(timeout=0.1))
        stuck_waiter.kill()
        stuck_waiter.wait(10)
    released = time.monotonic()
    holder.unlock()
    thread.join(5)
    took = time.monotonic() - released
    assert got and got[0][0].value == "live"
    assert took < 1.0, f"the live waiter waited {took:.2f}s"
    assert got[0][0].fencing_token == int(r.get(_core.fence_key("jobs")) or 0)
    got[0][0].unlock()
    monitor.close()


# -- 4. no orphaned lease -----------------------------------------------------------------
@pytest.mark.parametrize("sync", [True, False])
async def test_a_departure_during_a_write_pause_leaves_no_orphaned_lease(
    sync: bool, client: LockClient, aclient: AsyncLockClient, r: redis.Redis
) -> None:
    holder = client.try_lock("jobs", expiration=30)
    quitter_client = LockClient(redis.Redis.from_url(_url(r), socket_timeout=5))
    if sync:
        quitting = asyncio.ensure_future(asyncio.to_thread(
            quitter_client.lock, "jobs", value="quitter", expiration=8, timeout=0.3,
            retry=FixedIntervalStrategy(0.8, 2)))  # fmt: skip
    else:
        quitting = asyncio.ensure_future(
            aclient.lock("jobs", value="quitter", expiration=8, timeout=0.3)
        )
    await asyncio.to_thread(wait_for, lambda: r.zcard(WAITERS) == 1)
    live = asyncio.ensure_future(asyncio.to_thread(client.lock, "jobs", value="live", expiration=8))
    await asyncio.to_thread(wait_for, lambda: r.zcard(WAITERS) == 2)
    r.execute_command("CLIENT", "PAUSE", 1500, "WRITE")
    if sync:  # it gives up (the strategy runs out) while its departure cannot be written
        with pytest.raises(Exception):  # noqa: B017 - MaxRetryError or a timeout
            await asyncio.wait_for(quitting, 5)
    else:  # it is cancelled while Redis accepts no writes
        quitting.cancel()
        await asyncio.wait({quitting})
    await asyncio.to_thread(wait_for, lambda: not _paused(r), 5)
    released = time.monotonic()
    holder.unlock()
    lock = await asyncio.wait_for(live, 5)
    assert lock.value == "live" and time.monotonic() - released < 1.0
    lock.unlock()
    quitter_client.close()


def _url(r: redis.Redis) -> str:
    kw = r.connection_pool.connection_kwargs
    return f"redis://{kw['host']}:{kw['port']}/0"


def _paused(r: redis.Redis) -> bool:
    try:
        r.set("probe", "1", px=10)
        return False
    except redis.RedisError:
        return True


async def test_an_elector_cancelled_as_it_wins_gives_the_lease_back(
    aclient: AsyncLockClient, r: redis.Redis
) -> None:
    """Cancel `acquire` at every moment around the winning reply: either it returns
    the lease, or (soon after) nobody holds the key; never a lease held by nobody."""
    backend = RedisBackend(aclient, "jobs", SystemClock())
    retry = FixedIntervalStrategy(0.05, None)
    for i in range(40):
        task = asyncio.ensure_future(
            backend.acquire(Candidate("a"), 30, 1, retry, lambda attempt: None)
        )
        for _ in range(i % 8):
            await asyncio.sleep(0)
        await asyncio.sleep(0.0005 * (i // 8))
        task.cancel()
        await asyncio.wait({task})
        if not task.cancelled() and task.exception() is None:
            await backend.release(task.result(), 1)
        await asyncio.to_thread(wait_for, lambda: r.get(backend.key) is None, 3)


# -- 5. distinct locks, distinct helper keys ------------------------------------------------
def test_keys_a_and_braced_a_have_independent_queues_and_counters(
    client: LockClient, r: redis.Redis
) -> None:
    keys = ["a", "{a}", "a}b{", "{}a", "{a}:x"]
    helpers = [k for key in keys for k in (*_core.helper_keys(key), _core.fence_key(key))]
    assert len(set(helpers)) == len(helpers)
    plain = client.try_lock("a", expiration=30)
    braced = client.try_lock("{a}", expiration=30)
    got: list[Lock] = []
    thread = threading.Thread(target=lambda: got.append(client.lock("{a}", value="w")))
    thread.start()
    wait_for(lambda: r.zcard(_core.helper_keys("{a}")[0]) == 1)
    plain.unlock()  # releasing `a` must not pop or serve the waiter of `{a}`
    assert r.zcard(_core.helper_keys("{a}")[0]) == 1 and r.get("a") is None
    braced.unlock()
    thread.join(5)
    assert got and got[0].value == "w" and r.get("{a}") == b"w"
    got[0].unlock()


def test_an_election_follower_takes_over_from_a_frozen_head_waiter_within_a_second(
    redis_server: RedisServer, spawn: Callable[..., Daemon], r: redis.Redis
) -> None:
    """Followers that attempt only every 10 s: the one behind a frozen head waiter
    hears of the hand-over, sees a claim, and attempts when it runs out."""
    waiters = _core.helper_keys("leaderd:{jobs}")[0]
    ds = [spawn(redis_server.url, f"pod-{i}", "--retry-interval", "10s", ttl="30s")
          for i in range(3)]  # fmt: skip
    for d in ds:
        d.wait_http()
    leader = poll(lambda: (lambda ls: ls[0] if len(ls) == 1 else None)(leaders(ds)))
    poll(lambda: r.zcard(waiters) == 2, 5)
    first = r.zrange(waiters, 0, 0)[0].decode()
    frozen = next(d for d in ds if f'"identity":"{d.identity}"' in first)
    live = next(d for d in ds if d is not leader and d is not frozen)
    frozen.signal(signal.SIGSTOP)
    try:
        stopped = time.monotonic()
        leader.signal(signal.SIGTERM)  # hands over to the frozen one, for the claim only
        poll(lambda: live.ready() == 200, 3)
        took = time.monotonic() - stopped
        assert took < 1.0, f"the live follower led after {took:.2f}s"
    finally:
        frozen.signal(signal.SIGCONT)
    # the frozen one, resumed, finds its claim gone and follows
    poll(lambda: frozen.status()["role"] == "follower", 5)


# -- issue 19: two candidates with one identity -------------------------------------------
async def test_a_candidate_warns_once_when_another_uses_its_identity(
    aclient: AsyncLockClient, r: redis.Redis
) -> None:
    from leaderd import ElectionObserver, Elector

    class Seen(ElectionObserver):
        def __init__(self) -> None:
            self.duplicates: list[int] = []

        def on_duplicate_identity(self, token: int) -> None:
            self.duplicates.append(token)

    other = AsyncLockClient(aclient.redis)
    seen = [Seen(), Seen()]
    retry = FixedIntervalStrategy(0.05, None)
    electors = [
        Elector(c, election="jobs", identity="pod-a", ttl=5, retry=retry, observers=[o])
        for c, o in zip((aclient, other), seen, strict=True)
    ]

    async def lead(term: object) -> None:
        await asyncio.Event().wait()

    runs = [asyncio.ensure_future(e.run(lead)) for e in electors]
    try:
        await asyncio.to_thread(wait_for, lambda: any(e.is_leader() for e in electors))
        follower = next(i for i, e in enumerate(electors) if not e.is_leader())
        await asyncio.to_thread(wait_for, lambda: electors[follower].duplicate_identity)
        await asyncio.sleep(0.3)  # more attempts see it again: still one warning
        assert len(seen[follower].duplicates) == 1
        assert electors[follower].status()["duplicate_identity"] is True
        leader = 1 - follower
        assert electors[leader].status()["duplicate_identity"] is False
        token = electors[leader].term.fencing_token  # type: ignore[union-attr]
        assert seen[follower].duplicates == [token]
    finally:
        for run in runs:
            run.cancel()
        await asyncio.wait(runs)
        await other.aclose()


async def test_a_candidate_seeing_its_own_old_term_is_no_duplicate(
    aclient: AsyncLockClient, r: redis.Redis
) -> None:
    from leaderd import Elector

    elector = Elector(aclient, election="jobs", identity="pod-a", ttl=5,
                      retry=FixedIntervalStrategy(0.05, None))  # fmt: skip
    backend = RedisBackend(aclient, "jobs", SystemClock())
    lease = await backend.acquire(Candidate("pod-a"), 5, 1, FixedIntervalStrategy(0.05, 1),
                                  lambda attempt: None)  # fmt: skip
    elector._own_tokens.append(lease.token)  # as if it had been our term
    holder = parse_holder((r.get(backend.key) or b"").decode())
    elector._check_duplicate(holder)
    assert not elector.duplicate_identity
    await backend.release(lease, 1)


# -- found by review: look-alike values, a message flood, helper keys as lock names ------
def test_a_value_that_only_starts_like_ours_is_not_ours(client: LockClient, r: redis.Redis) -> None:
    holder = client.try_lock("jobs", value='{"a":1,"token":5}', expiration=30, embed_token=True)
    with pytest.raises(FailedToPreemptLockError):  # not "ours, extended to 1 ms"
        client.try_lock("jobs", value='{"a":1}', expiration=0.001, embed_token=True)
    assert r.pttl("jobs") > 20_000 and holder.is_valid()
    holder.unlock()
    plain = client.try_lock("jobs", value='{"a":1,"token":5}', expiration=30)  # no embedding
    with pytest.raises(FailedToPreemptLockError):  # nor a plain value shaped like ours
        client.try_lock("jobs", value='{"a":1}', expiration=5, embed_token=True)
    assert plain.is_valid() and r.get("jobs") == b'{"a":1,"token":5}'


def test_a_flood_of_junk_messages_does_not_keep_a_waiter_asleep(
    client: LockClient, r: redis.Redis
) -> None:
    """Found by review: the sync waiter checked its deadline only when no message came."""
    client.try_lock("jobs", expiration=1)  # held, never released: it expires
    got: list[float] = []

    def wait() -> None:
        client.lock("jobs", value="w", expiration=5)
        got.append(time.monotonic())

    thread = threading.Thread(target=wait)
    thread.start()
    member = _queued_member(r)
    channel = _core.waiter_channel("jobs", _listener_of(member))
    expires = time.monotonic() + r.pttl("jobs") / 1000
    flooder = redis.Redis(connection_pool=r.connection_pool)
    stop = expires + 3.0
    while time.monotonic() < stop and not got:  # a bounded flood, about 4 s at most
        pipe = flooder.pipeline(transaction=False)
        for _ in range(1000):
            pipe.publish(channel, "1 x")
        pipe.execute()
    thread.join(5)
    assert got, "the waiter never acquired the expired lock"
    assert got[0] - expires < 1.0, f"it woke {got[0] - expires:.2f}s after the expiry"


def test_a_waiter_keeps_its_deadline_with_messages_always_pending(r: redis.Redis) -> None:
    """The same, deterministic: 100,000 junk messages wait on the socket before the wait
    starts; it must end at its deadline, not after reading them all."""
    from leaderd.lock import _Waiter

    waiter = _Waiter(r, "jobs", 1.0, listener=L1)
    try:
        assert waiter.subscribed
        pipe = r.pipeline(transaction=False)
        for _ in range(100_000):
            pipe.publish(_core.waiter_channel("jobs", L1), "1 x")
        pipe.execute()
        started = time.monotonic()
        assert waiter.wait(0.05, "member") is None
        assert time.monotonic() - started < 0.5
    finally:
        waiter.close()


@pytest.mark.parametrize("key", ["{jobs}.fence", "{jobs}.waiters", "leaderd:{jobs}:control"])
def test_a_helper_key_cannot_be_a_lock(client: LockClient, key: str) -> None:
    with pytest.raises(ValueError, match="is a helper key of lock"):
        client.try_lock(key)
