"""Hand-over: a release makes the first live waiter the holder for a short claim, then
tells it; the waiter confirms with one request, which extends the claim to its lease.

What must never happen: a waiter that gave up keeps a lock nobody uses, a message
meant for an earlier `lock()` call (or a forged one) makes a holder, or a waiter that
cannot act holds the lock for longer than the claim.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import redis
import redis.asyncio

from leaderd import AsyncLockClient, FixedIntervalStrategy, Lock, LockClient, _core
from leaderd._core import AcquireResult, Attempt, Confirm, Listen, RetryPlan, Sleep
from leaderd.functions import function_name

from .conftest import L1, listening_waiter, wait_for

WAITERS = _core.helper_keys("jobs")[0]


def _calls(r: redis.Redis, command: str) -> int:
    stats = r.info("commandstats").get(f"cmdstat_{command}")
    return int(stats["calls"]) if stats else 0


async def test_the_woken_waiter_confirms_with_one_request_and_holds_its_lease(
    aclient: AsyncLockClient, r: redis.Redis
) -> None:
    await (await aclient.try_lock("warm-up")).unlock()  # the scripts are loaded
    holder = await aclient.try_lock("jobs", expiration=30)
    waiter = asyncio.create_task(
        aclient.lock("jobs", value="next", expiration=5, retry=FixedIntervalStrategy(10, 3))
    )
    await asyncio.to_thread(wait_for, lambda: r.zcard(WAITERS) == 1)
    before = _calls(r, "fcall")
    released = time.monotonic()
    await holder.unlock()
    lock = await asyncio.wait_for(waiter, 5)
    # The release, then one confirming request of the waiter's own.
    assert _calls(r, "fcall") - before == 2
    assert r.get("jobs") == b"next" and lock.value == "next"
    assert lock.fencing_token == int(r.get(_core.fence_key("jobs")) or 0)
    assert lock.fencing_token > holder.fencing_token
    # The confirmation extended the claim to the lease, counted from its own start.
    assert lock.acquired_at > released and lock.is_valid()
    assert 4000 < r.pttl("jobs") <= 5000
    await lock.unlock()
    assert r.exists("jobs") == 0


def test_a_release_writes_the_claim_before_it_tells_the_waiter(
    client: LockClient, r: redis.Redis
) -> None:
    holder = client.try_lock("jobs", expiration=30)
    listening = listening_waiter(r, "jobs")
    member = _core.queue_member(L1, 1, 60_000, False, "next")
    r.zadd(WAITERS, {member: 1})
    r.set(_core.helper_keys("jobs")[1], "1")
    # A MONITOR shows the order of the script's commands.
    with r.monitor() as monitor:
        holder.unlock()
        seen: list[str] = []
        while "PUBLISH" not in seen:
            seen.append(monitor.next_command()["command"].split()[0].upper())
    writes = [c for c in seen if c in ("SET", "PUBLISH")]
    assert writes[-2:] == ["SET", "PUBLISH"]  # SET fence ... GET, SET key, then PUBLISH
    # The message names the token; the key holds the waiter's value for the claim only.
    msg = wait_for(lambda: listening.get_message(timeout=0.1))
    token = int(r.get(_core.fence_key("jobs")) or 0)
    assert msg["data"].decode() == f"{token} {member}"
    assert r.get("jobs") == b"next" and 0 < r.pttl("jobs") <= _core.HANDOVER_CLAIM * 1000
    listening.close()


def test_a_waiter_that_gives_up_as_it_is_handed_the_lock_passes_it_on(
    client: LockClient, r: redis.Redis
) -> None:
    holder = client.try_lock("jobs", expiration=30)
    # First in the queue: a live listener that gives up just as the lock reaches it.
    listening = listening_waiter(r, "jobs")
    quitter = _core.queue_member(L1, 1, 30000, False, "quitter")
    r.zadd(WAITERS, {quitter: 1})
    r.set(_core.helper_keys("jobs")[1], "1")
    got: list[Lock] = []
    thread = threading.Thread(
        target=lambda: got.append(
            client.lock("jobs", value="patient", expiration=5, retry=FixedIntervalStrategy(5, 3))
        )
    )
    thread.start()
    wait_for(lambda: r.zcard(WAITERS) == 2)
    holder.unlock()
    assert r.get("jobs") == b"quitter"
    # It leaves: not queued any more, and the key holds its value, so it passes it on.
    keys, args = _core.release_args("jobs", "", leaving=quitter)
    assert r.fcall(function_name(_core.RELEASE), len(keys), *keys, *args) == 1
    thread.join(5)
    assert got and got[0].value == "patient" and r.get("jobs") == b"patient"
    # Leaving while still queued writes nothing else.
    r.zadd(WAITERS, {quitter: 1})
    assert r.fcall(function_name(_core.RELEASE), len(keys), *keys, *args) == 0
    assert r.get("jobs") == b"patient" and r.zcard(WAITERS) == 0
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
    member = (await asyncio.to_thread(wait_for, lambda: r.zrange(WAITERS, 0, 0)))[0]
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


def test_a_hand_over_message_is_only_a_hint() -> None:
    """Woken with a token, the flow confirms with Redis: Redis, not the message, decides;
    a confirmation that does not find our value goes on with attempts."""
    plan = RetryPlan("jobs", FixedIntervalStrategy(60, None))
    flow = _core.lock_flow(plan, None, listening=True)
    step = next(flow)
    assert isinstance(step, Attempt) and step.wait_ms > 0  # queued from the first attempt
    step = flow.send((AcquireResult(False, holder="other", ttl=30.0), None))
    assert isinstance(step, Sleep)
    step = flow.send(42)  # a forged message
    assert isinstance(step, Confirm)
    step = flow.send((AcquireResult(False, holder="other", ttl=30.0), None))
    assert isinstance(step, Attempt)  # not ours: attempt as usual
    assert plan.attempts == 1  # a failed confirmation is not an attempt
    step = flow.send((AcquireResult(False, holder="other", ttl=30.0), None))
    assert isinstance(step, Sleep)
    assert isinstance(flow.send(43), Confirm)  # a real hand-over this time
    started = time.monotonic()
    with pytest.raises(StopIteration) as done:
        flow.send((AcquireResult(True, token=41, value="x"), None))
    result, counted_from = done.value.value
    assert result.token == 41  # Redis's token, not the message's
    assert started - 0.001 <= counted_from <= started  # from the confirmation's start


def test_listen_is_not_a_hand_over() -> None:
    plan = RetryPlan("jobs", FixedIntervalStrategy(60, None))
    flow = _core.lock_flow(plan, None)
    assert isinstance(next(flow), Attempt)
    assert isinstance(flow.send((AcquireResult(False, holder="o", ttl=9.0), None)), Listen)
    step = flow.send(True)
    assert isinstance(step, Attempt) and step.wait_ms > 0


@pytest.mark.parametrize("sync", [True, False])
async def test_a_waiter_whose_subscription_broke_listens_again_and_is_handed_the_lock(
    sync: bool, client: LockClient, aclient: AsyncLockClient, r: redis.Redis
) -> None:
    holder = client.try_lock("jobs", expiration=30)
    retry = FixedIntervalStrategy(30, 10)  # its own retries are far away
    if sync:
        waiting = asyncio.ensure_future(asyncio.to_thread(
            client.lock, "jobs", value="v", expiration=5, retry=retry))  # fmt: skip
    else:
        waiting = asyncio.ensure_future(aclient.lock("jobs", value="v", expiration=5, retry=retry))
    await asyncio.to_thread(wait_for, lambda: r.zcard(WAITERS) == 1)
    channels = "leaderd:released:jobs|*"
    await asyncio.to_thread(wait_for, lambda: r.pubsub_channels(channels))
    r.client_kill_filter(_type="pubsub")  # e.g. a proxy or a network blip
    await asyncio.to_thread(wait_for, lambda: r.pubsub_channels(channels))  # back
    released = time.monotonic()
    holder.unlock()
    lock = await asyncio.wait_for(waiting, 5)
    assert time.monotonic() - released < 1.0 and lock.value == "v"
