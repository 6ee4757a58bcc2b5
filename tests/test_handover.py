"""Hand-over: a release makes the first live waiter the holder, and the waiter takes the
lock from the release message alone, without a command of its own.

What must never happen: a waiter that gave up keeps a lock nobody uses, a message
meant for an earlier `lock()` call is taken for a later one, or a waiter counts its
lease from later than the release that wrote it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator

import pytest
import redis
import redis.asyncio

from devtools.devserver import RedisServer
from leaderd import AsyncLockClient, FixedIntervalStrategy, Lock, LockClient, _core
from leaderd._core import AcquireResult, Attempt, Handover, Listen, RetryPlan, Sleep

from .conftest import listening_waiter, wait_for


@pytest.fixture
async def aclient(redis_server: RedisServer) -> AsyncIterator[AsyncLockClient]:
    client = redis.asyncio.Redis.from_url(redis_server.url, socket_timeout=5)
    locks = AsyncLockClient(client)
    yield locks
    await locks.aclose()
    await client.aclose()


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[LockClient]:
    locks = LockClient(redis.Redis.from_url(redis_server.url, socket_timeout=5))
    yield locks
    locks.close()


def _calls(r: redis.Redis, command: str) -> int:
    stats = r.info("commandstats").get(f"cmdstat_{command}")
    return int(stats["calls"]) if stats else 0


async def test_the_woken_waiter_sends_nothing_and_holds_the_lock_at_once(
    aclient: AsyncLockClient, r: redis.Redis
) -> None:
    await (await aclient.try_lock("warm-up")).unlock()  # the scripts are loaded
    holder = await aclient.try_lock("jobs", expiration=30)
    waiter = asyncio.create_task(
        aclient.lock("jobs", value="next", expiration=5, retry=FixedIntervalStrategy(10, 3))
    )
    await asyncio.to_thread(wait_for, lambda: r.zcard("{jobs}:waiters") == 1)
    before = _calls(r, "evalsha") + _calls(r, "eval")
    released = time.monotonic()
    await holder.unlock()
    lock = await asyncio.wait_for(waiter, 5)
    # Only the release ran: the waiter took the lock from the release message.
    assert _calls(r, "evalsha") + _calls(r, "eval") - before == 1
    assert r.get("jobs") == b"next" and lock.value == "next"
    assert lock.fencing_token == int(r.get(_core.fence_key("jobs")) or 0)
    assert lock.fencing_token > holder.fencing_token
    # Its lease is counted from before the release, never from the message.
    assert lock.acquired_at < released and lock.is_valid()
    assert lock.began_at > released  # when it learnt it holds the lock
    await lock.refresh()
    await lock.unlock()
    assert r.exists("jobs") == 0


def test_a_waiter_that_gives_up_as_it_is_handed_the_lock_passes_it_on(
    client: LockClient, r: redis.Redis
) -> None:
    holder = client.try_lock("jobs", expiration=30)
    # First in the queue: a live listener that gives up just as the lock reaches it.
    listening = listening_waiter(r, "jobs")
    quitter = _core.queue_member("L1", 1, 30000, False, "quitter")
    r.zadd("{jobs}:waiters", {quitter: 1})
    r.set("{jobs}:waiting", "1")
    got: list[Lock] = []
    thread = threading.Thread(
        target=lambda: got.append(
            client.lock("jobs", value="patient", expiration=5, retry=FixedIntervalStrategy(5, 3))
        )
    )
    thread.start()
    wait_for(lambda: r.zcard("{jobs}:waiters") == 2)
    holder.unlock()
    assert r.get("jobs") == b"quitter"
    # It leaves: not queued any more, and the key holds its value, so it passes it on.
    keys, args = _core.release_args("jobs", "", leaving=quitter)
    assert r.evalsha(_core.RELEASE.sha, len(keys), *keys, *args) == 1
    thread.join(5)
    assert got and got[0].value == "patient" and r.get("jobs") == b"patient"
    # Leaving while still queued writes nothing else.
    r.zadd("{jobs}:waiters", {quitter: 1})
    assert r.evalsha(_core.RELEASE.sha, len(keys), *keys, *args) == 0
    assert r.get("jobs") == b"patient" and r.zcard("{jobs}:waiters") == 0
    got[0].unlock()
    listening.close()


@pytest.mark.parametrize("sync", [True, False])
async def test_a_message_for_an_earlier_call_is_not_taken_for_this_one(
    sync: bool, client: LockClient, aclient: AsyncLockClient, r: redis.Redis
) -> None:
    holder = client.try_lock("jobs", expiration=30)
    retry = FixedIntervalStrategy(10, 3)
    if sync:
        waiting = asyncio.ensure_future(asyncio.to_thread(
            client.lock, "jobs", value="v", expiration=5, retry=retry))  # fmt: skip
    else:
        waiting = asyncio.ensure_future(aclient.lock("jobs", value="v", expiration=5, retry=retry))
    member = (await asyncio.to_thread(wait_for, lambda: r.zrange("{jobs}:waiters", 0, 0)))[0]
    listener, call_px, value = member.decode().split("|", 2)
    call = int(call_px.split("-", 1)[0])
    # A hand-over message for an earlier call of the same listener and value (one that
    # gave up as it was handed the lock, and passed it on): not ours.
    stale = _core.queue_member(listener, call - 1, 5000, False, value)
    r.publish(_core.waiter_channel("jobs", listener), f"999 {stale}")
    # Nor is anything else someone may publish there (not even invalid UTF-8).
    r.publish(_core.waiter_channel("jobs", listener), b"12 \xff\xfe|" + member)
    r.publish(_core.waiter_channel("jobs", listener), "not a hand-over")
    holder.unlock()
    lock = await asyncio.wait_for(waiting, 5)
    assert lock.fencing_token == int(r.get(_core.fence_key("jobs")) or 0) != 999
    if sync:
        lock.unlock()
    else:
        await lock.unlock()


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _flow(clock: _Clock, monkeypatch: pytest.MonkeyPatch, lease: float) -> tuple[object, float]:
    """Drive `lock_flow` to its first wait: (the generator, start of the queued attempt)."""
    monkeypatch.setattr(_core.time, "monotonic", clock)
    plan = RetryPlan("jobs", FixedIntervalStrategy(60, None))
    flow = _core.lock_flow(plan, None, listening=True, handover=Handover('{"id":"a"}', True, lease))
    step = next(flow)
    assert isinstance(step, Attempt) and step.wait_ms > 0  # queued from the first attempt
    queued_at = clock.now
    clock.now += 0.002
    step = flow.send((AcquireResult(False, holder="other", ttl=30.0), None))
    assert isinstance(step, Sleep)
    return flow, queued_at


def test_a_hand_over_counts_the_lease_from_the_queued_attempts_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = _Clock()
    flow, queued_at = _flow(clock, monkeypatch, lease=10.0)
    clock.now += 4.0  # the release came a while later
    with pytest.raises(StopIteration) as done:
        flow.send(42)  # type: ignore[attr-defined]
    result, started = done.value.value
    assert result.acquired and result.token == 42 and result.value == '{"id":"a","token":42}'
    assert started == queued_at  # not the time of the message


def test_a_hand_over_after_half_the_lease_is_confirmed_by_an_attempt(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = _Clock()
    flow, _ = _flow(clock, monkeypatch, lease=10.0)
    clock.now += 5.5  # the process may have been paused: prove it holds the lock
    step = flow.send(42)  # type: ignore[attr-defined]
    assert isinstance(step, Attempt)
    clock.now += 0.001
    with pytest.raises(StopIteration) as done:
        flow.send((AcquireResult(True, token=42, value="x"), None))  # type: ignore[attr-defined]
    _, started = done.value.value
    assert started == clock.now - 0.001  # counted from the confirming attempt


def test_listen_is_not_a_hand_over(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = _Clock()
    monkeypatch.setattr(_core.time, "monotonic", clock)
    plan = RetryPlan("jobs", FixedIntervalStrategy(60, None))
    flow = _core.lock_flow(plan, None, handover=Handover("v", False, 10.0))
    assert isinstance(next(flow), Attempt)
    assert isinstance(flow.send((AcquireResult(False, holder="o", ttl=9.0), None)), Listen)
    step = flow.send(True)
    assert isinstance(step, Attempt) and step.wait_ms > 0


@pytest.mark.parametrize("sync", [True, False])
async def test_a_waiter_whose_subscription_broke_listens_again_and_is_handed_the_lock(
    sync: bool, client: LockClient, aclient: AsyncLockClient, r: redis.Redis
) -> None:
    holder = client.try_lock("jobs", expiration=30)
    retry = FixedIntervalStrategy(30, 3)  # its own retries are far away
    if sync:
        waiting = asyncio.ensure_future(asyncio.to_thread(
            client.lock, "jobs", value="v", expiration=5, retry=retry))  # fmt: skip
    else:
        waiting = asyncio.ensure_future(aclient.lock("jobs", value="v", expiration=5, retry=retry))
    await asyncio.to_thread(wait_for, lambda: r.zcard("{jobs}:waiters") == 1)
    channels = "leaderd:released:jobs|*"
    await asyncio.to_thread(wait_for, lambda: r.pubsub_channels(channels))
    r.client_kill_filter(_type="pubsub")  # e.g. a proxy or a network blip
    await asyncio.to_thread(wait_for, lambda: r.pubsub_channels(channels))  # back
    released = time.monotonic()
    holder.unlock()
    lock = await asyncio.wait_for(waiting, 5)
    assert time.monotonic() - released < 1.0 and lock.value == "v"
