"""The synchronous lock client against a real redis-server."""

from __future__ import annotations

import itertools
import json
import multiprocessing
import threading
import time
from collections.abc import Callable

import pytest
import redis

import leaderd
from devtools.devserver import RedisServer, counting_connection_class
from leaderd import (
    FailedToPreemptLockError,
    FixedIntervalStrategy,
    LockClient,
    LockError,
    LockNotHeldError,
    MaxRetryError,
    _core,
)
from leaderd._core import fence_key
from leaderd.functions import function_name

from .conftest import L1, listening_waiter, wait_for

WAITERS = _core.helper_keys("jobs")[0]


@pytest.fixture
def client(r: redis.Redis) -> LockClient:
    return LockClient(r)


def test_try_lock_acquires_and_reports_holder(client: LockClient, r: redis.Redis) -> None:
    lock = client.try_lock("jobs", expiration=5)
    assert r.get("jobs") == lock.value.encode()
    assert 4000 < r.pttl("jobs") <= 5000
    with pytest.raises(FailedToPreemptLockError) as err:
        client.try_lock("jobs", expiration=5)
    assert err.value.holder == lock.value
    assert err.value.ttl is not None and 4 < err.value.ttl <= 5


def test_get_holder(client: LockClient) -> None:
    assert client.get_holder("jobs") == (None, None)
    lock = client.try_lock("jobs", expiration=5)
    value, ttl = client.get_holder("jobs")
    assert value == lock.value and ttl is not None and 4 < ttl <= 5


def test_values_are_unique_per_lock(client: LockClient) -> None:
    values = set()
    for i in range(100):
        lock = client.try_lock(f"k{i}", expiration=1)
        values.add(lock.value)
    assert len(values) == 100


def test_refresh_extends_with_the_original_expiration(client: LockClient, r: redis.Redis) -> None:
    lock = client.try_lock("jobs", expiration=2)
    r.pexpire("jobs", 100)
    before = lock.valid_until
    lock.refresh()
    assert 1900 < r.pttl("jobs") <= 2000
    assert lock.valid_until >= before
    assert lock.is_valid()


def test_refresh_and_unlock_never_touch_someone_elses_lock(
    client: LockClient, r: redis.Redis
) -> None:
    lock = client.try_lock("jobs", expiration=0.05)
    wait_for(lambda: r.get("jobs") is None)
    other = client.try_lock("jobs", expiration=5)
    with pytest.raises(LockNotHeldError):
        lock.refresh()
    with pytest.raises(LockNotHeldError):
        lock.unlock()
    assert r.get("jobs") == other.value.encode()
    assert r.pttl("jobs") > 4000
    other.unlock()
    assert r.get("jobs") is None
    with pytest.raises(LockNotHeldError):
        other.refresh()


def test_context_manager_releases(client: LockClient, r: redis.Redis) -> None:
    with client.lock("jobs", expiration=5) as lock:
        assert r.get("jobs") == lock.value.encode()
    assert r.get("jobs") is None
    assert not lock.is_valid()


def test_context_manager_reports_a_lost_lock(client: LockClient, r: redis.Redis) -> None:
    with pytest.raises(LockNotHeldError), client.lock("jobs", expiration=5):
        r.delete("jobs")


def test_context_manager_keeps_the_body_exception(client: LockClient, r: redis.Redis) -> None:
    with pytest.raises(ZeroDivisionError), client.lock("jobs", expiration=5):
        r.delete("jobs")
        1 / 0  # noqa: B018


@pytest.mark.parametrize("max_retry", [1, 3, 12])
def test_max_retry_n_means_n_plus_one_attempts_exactly(client: LockClient, max_retry: int) -> None:
    """Every attempt counts (the one right after subscribing too), as the hook sees."""
    holder = client.try_lock("jobs", expiration=5)
    seen: list[object] = []
    with pytest.raises(MaxRetryError) as err:
        client.lock("jobs", expiration=5, retry=FixedIntervalStrategy(0.02, max_retry),
                    on_attempt=lambda result, error: seen.append(result))  # fmt: skip
    assert err.value.attempts == len(seen) == max_retry + 1
    assert f"after {max_retry + 1} attempts (held by" in str(err.value)
    assert err.value.holder == holder.value


def test_max_retry_counts_attempts_when_redis_is_down(redis_server: RedisServer) -> None:
    client = LockClient(redis.Redis.from_url(redis_server.url, socket_timeout=1))
    redis_server.kill()
    with pytest.raises(MaxRetryError, match=r"after 3 attempts \(Redis did not answer") as err:
        client.lock("jobs", timeout=0.2, retry=FixedIntervalStrategy(0.01, 2))
    assert err.value.attempts == 3


def test_max_retry_zero_means_one_attempt(client: LockClient) -> None:
    client.try_lock("jobs", expiration=5)
    with pytest.raises(MaxRetryError) as err:
        client.lock("jobs", retry=FixedIntervalStrategy(1, max_retry=0))
    assert err.value.attempts == 1
    assert "after 1 attempt (held by" in str(err.value)


def test_release_wakes_a_waiter_at_once(client: LockClient, r: redis.Redis) -> None:
    holder = client.try_lock("jobs", expiration=30)
    got: list[float] = []

    def wait() -> None:
        lock = client.lock("jobs", expiration=5, retry=FixedIntervalStrategy(10, max_retry=3))
        got.append(time.monotonic())
        lock.unlock()

    thread = threading.Thread(target=wait)
    thread.start()
    wait_for(lambda: r.zcard(WAITERS) == 1)  # it is blocked; next retry in ~10 s
    released = time.monotonic()
    holder.unlock()
    thread.join(5)
    assert got, "waiter did not acquire"
    assert got[0] - released < 0.1


def test_waiter_never_sleeps_past_the_holders_ttl(client: LockClient) -> None:
    client.try_lock("jobs", expiration=0.3)  # never released: it must expire
    started = time.monotonic()
    lock = client.lock("jobs", expiration=5, retry=FixedIntervalStrategy(10, max_retry=3))
    assert time.monotonic() - started < 1.0
    lock.unlock()


def test_timed_out_attempt_that_succeeded_is_recognised(
    client: LockClient, r: redis.Redis, redis_server: RedisServer
) -> None:
    blocker = redis.Redis.from_url(redis_server.url)
    slept: list[object] = []
    thread = threading.Thread(
        target=lambda: slept.append(blocker.execute_command("DEBUG", "SLEEP", "0.4"))
    )
    thread.start()
    time.sleep(0.05)
    started = time.monotonic()
    lock = client.lock(
        "jobs", value="mine", expiration=5, timeout=0.1, retry=FixedIntervalStrategy(0.05, 20)
    )
    thread.join()
    assert slept and time.monotonic() - started > 0.25  # the attempts really timed out
    # Both the timed-out attempt and its retry ran; only one acquisition happened.
    assert lock.value == "mine"
    assert int(r.get(fence_key("jobs"))) == lock.fencing_token
    lock.unlock()


def test_existing_value_is_extended_not_reacquired(client: LockClient, r: redis.Redis) -> None:
    first = client.try_lock("jobs", value="v", expiration=1)
    again = client.try_lock("jobs", value="v", expiration=5)
    assert again.fencing_token == first.fencing_token
    assert r.pttl("jobs") > 4000


def test_fencing_tokens_strictly_increase_even_after_data_loss(
    client: LockClient, redis_server: RedisServer
) -> None:
    tokens = []
    for _ in range(50):
        lock = client.try_lock("jobs", expiration=5)
        tokens.append(lock.fencing_token)
        lock.unlock()
    redis_server.flushall()
    tokens.append(client.try_lock("jobs", expiration=5).fencing_token)
    redis_server.restart()  # no persistence: everything is gone
    tokens.append(client.try_lock("jobs", expiration=5).fencing_token)
    assert all(b > a for a, b in itertools.pairwise(tokens)), tokens


def test_fence_key_shares_the_hash_slot() -> None:
    from redis.crc import key_slot

    keys = ["jobs", "leaderd:{jobs}", "a{b}c", "x{}y", "a}b{", "}", "ünï cödé", "k" * 1024]
    for key in keys:
        assert key_slot(fence_key(key).encode()) == key_slot(key.encode())
    assert len({fence_key(k) for k in keys}) == len(keys)


def test_wrong_type_key_is_a_clear_lock_error(client: LockClient, r: redis.Redis) -> None:
    r.lpush("jobs", "x")
    with pytest.raises(LockError, match="wrong type"):
        client.try_lock("jobs", expiration=1)
    with pytest.raises(LockError, match="wrong type"):
        client.lock("jobs", expiration=1, retry=FixedIntervalStrategy(0.01, 2))


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf"), "10", True])
def test_bad_expiration_is_rejected(client: LockClient, bad: object) -> None:
    with pytest.raises(ValueError, match="expiration"):
        client.try_lock("jobs", expiration=bad)  # type: ignore[arg-type]


def test_scripts_are_reloaded_after_script_flush(client: LockClient, r: redis.Redis) -> None:
    lock = client.try_lock("jobs", expiration=5)
    r.script_flush()
    lock.refresh()
    r.script_flush()
    lock.unlock()
    r.script_flush()
    client.try_lock("jobs", expiration=5)


def test_one_round_trip_per_operation(redis_server: RedisServer) -> None:
    counting = counting_connection_class()
    client = LockClient(
        redis.Redis(
            connection_pool=redis.ConnectionPool.from_url(
                redis_server.url, connection_class=counting
            )
        )
    )
    warm = client.try_lock("warmup", expiration=5)  # scripts get cached, socket opened
    warm.refresh()
    warm.unlock()
    before = counting.sent
    lock = client.lock("jobs", expiration=5)
    assert counting.sent - before == 1
    lock.refresh()
    assert counting.sent - before == 2
    lock.unlock()
    assert counting.sent - before == 3


def test_decode_responses_client_works(redis_server: RedisServer) -> None:
    client = LockClient(redis.Redis.from_url(redis_server.url, decode_responses=True))
    lock = client.try_lock("jobs", expiration=5)
    assert isinstance(lock.value, str) and lock.fencing_token > 0
    lock.refresh()
    lock.unlock()


def test_lock_retries_while_redis_is_down(redis_factory: Callable[..., RedisServer]) -> None:
    server = redis_factory()
    client = LockClient(redis.Redis.from_url(server.url, socket_connect_timeout=0.2))
    server.kill()
    restarter = threading.Timer(0.3, server.start)
    restarter.start()
    lock = client.lock("jobs", expiration=5, retry=FixedIntervalStrategy(0.05, 200))
    restarter.join(10)
    assert lock.fencing_token > 0


def test_redis_down_and_no_retries_left_is_max_retry_error(
    redis_factory: Callable[..., RedisServer],
) -> None:
    server = redis_factory()
    client = LockClient(redis.Redis.from_url(server.url, socket_connect_timeout=0.2))
    server.kill()
    with pytest.raises(MaxRetryError, match="Redis did not answer") as err:
        client.lock("jobs", expiration=5, retry=FixedIntervalStrategy(0.01, 2))
    assert isinstance(err.value.__cause__, redis.ConnectionError)


def test_auto_refresh_keeps_the_lock_alive(client: LockClient, r: redis.Redis) -> None:
    lock = client.try_lock("jobs", expiration=0.3)
    with lock.auto_refresh(interval=0.05) as refresher:
        time.sleep(0.8)
        assert r.get("jobs") == lock.value.encode()
        assert refresher.running and refresher.error is None
    assert not refresher.running


def test_auto_refresh_reports_a_lost_lock(client: LockClient, r: redis.Redis) -> None:
    lock = client.try_lock("jobs", expiration=1)
    failures: list[BaseException] = []
    refresher = lock.auto_refresh(interval=0.05, on_failure=failures.append)
    r.delete("jobs")
    assert refresher.wait(2)
    assert isinstance(refresher.error, LockNotHeldError)
    assert failures == [refresher.error]


def test_auto_refresh_gives_up_after_max_retry_timeouts(
    client: LockClient, redis_server: RedisServer
) -> None:
    lock = client.try_lock("jobs", expiration=5)
    refresher = lock.auto_refresh(interval=0.05, timeout=0.05, max_retry=2)
    redis_server.pause()
    try:
        assert refresher.wait(3)
    finally:
        redis_server.resume()
    assert isinstance(refresher.error, MaxRetryError)
    assert refresher.error.attempts == 3
    assert isinstance(refresher.error.__cause__, redis.TimeoutError)


def test_many_threads_mutual_exclusion(client: LockClient) -> None:
    counter = {"n": 0}
    retry = FixedIntervalStrategy(0.01, None)

    def work() -> None:
        for _ in range(25):
            with client.lock("counter", expiration=5, retry=retry):
                n = counter["n"]
                time.sleep(0.0005)
                counter["n"] = n + 1

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert counter["n"] == 200


def _process_worker(url: str, rounds: int) -> None:
    r = redis.Redis.from_url(url)
    client = leaderd.LockClient(r)
    for _ in range(rounds):
        with client.lock("counter", expiration=5, retry=FixedIntervalStrategy(0.01, None)):
            n = int(r.get("n") or 0)
            time.sleep(0.001)
            r.set("n", n + 1)


def test_many_processes_mutual_exclusion(r: redis.Redis, redis_server: RedisServer) -> None:
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_process_worker, args=(redis_server.url, 20)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert int(r.get("n") or 0) == 80


def _blocked_waiter(client: LockClient, key: str, got: list[str], name: str) -> threading.Thread:
    def run() -> None:
        lock = client.lock(key, expiration=5, retry=FixedIntervalStrategy(5, 3))
        got.append(name)
        time.sleep(0.05)
        lock.unlock()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_release_hands_over_to_the_longest_waiter_first(client: LockClient, r: redis.Redis) -> None:
    holder = client.try_lock("jobs", expiration=30)
    got: list[str] = []
    first = _blocked_waiter(client, "jobs", got, "first")
    wait_for(lambda: r.zcard(WAITERS) == 1)
    second = _blocked_waiter(client, "jobs", got, "second")
    wait_for(lambda: r.zcard(WAITERS) == 2)
    holder.unlock()
    # A newcomer cannot jump the queue: the lock is either still reserved for the
    # first waiter or already its (which of the two depends on scheduling).
    with pytest.raises(FailedToPreemptLockError):
        client.try_lock("jobs", expiration=5)
    first.join(5)
    second.join(5)
    assert got == ["first", "second"]
    assert r.exists(*_core.helper_keys("jobs")) == 0  # nothing left behind


def test_a_release_makes_the_first_live_waiter_the_holder(
    client: LockClient, r: redis.Redis
) -> None:
    holder = client.try_lock("jobs", expiration=30)
    # Live waiters that are queued and listening but will not act, so the hand-over is
    # observable however slow this machine is: the release itself writes their value.
    listening = listening_waiter(r, "jobs")
    plain = _core.queue_member(L1, 1, 5000, False, "queued")
    embedded = _core.queue_member(L1, 2, 7000, True, '{"id":"b"}')
    r.zadd(WAITERS, {plain: 1, embedded: 2})
    r.set(_core.helper_keys("jobs")[1], "2")
    holder.unlock()
    # the waiter's value, for the claim (its confirming request extends it to 5 s)
    assert r.get("jobs") == b"queued" and 0 < r.pttl("jobs") <= 500
    token = int(r.get(_core.fence_key("jobs")) or 0)
    assert token > holder.fencing_token
    msg = wait_for(lambda: listening.get_message(timeout=0.1))
    assert msg["data"].decode() == f"{token} {plain}"
    with pytest.raises(FailedToPreemptLockError, match="held by 'queued'"):
        client.try_lock("jobs", expiration=5)
    # The next release hands over with the token embedded in a JSON value.
    keys, args = _core.release_args("jobs", "queued")
    assert r.fcall(function_name(_core.RELEASE), len(keys), *keys, *args) == 1
    stored = json.loads(r.get("jobs") or b"")
    assert stored["id"] == "b" and stored["token"] > token and 0 < r.pttl("jobs") <= 500
    assert stored["token"] == int(r.get(_core.fence_key("jobs")) or 0)
    listening.close()


def test_a_dead_waiter_does_not_block_the_hand_over(
    client: LockClient, r: redis.Redis, redis_server: RedisServer
) -> None:
    holder = client.try_lock("jobs", expiration=30)
    # A waiter that queued and then vanished (its entry is still there, its
    # subscription is gone), and one entry that is not a waiter's at all.
    ghost = _core.queue_member("00000000000000ff", 1, 5000, False, "ghost")
    r.zadd(WAITERS, {ghost: 1, "not-a-member": 2})
    r.set(_core.helper_keys("jobs")[1], "1")
    got: list[float] = []

    def wait() -> None:
        client.lock("jobs", expiration=5, retry=FixedIntervalStrategy(0.2, 20)).unlock()
        got.append(time.monotonic())

    thread = threading.Thread(target=wait)
    thread.start()
    wait_for(lambda: r.zcard(WAITERS) == 3)
    released = time.monotonic()
    holder.unlock()  # "ghost" does not hear it: the live waiter gets the lock
    thread.join(5)
    assert got and got[0] - released < 0.5
    assert r.get("jobs") is None


def test_readonly_replica_is_a_retried_failure(
    redis_factory: Callable[..., RedisServer],
) -> None:
    primary = redis_factory()
    replica = redis_factory(extra_args=["--replicaof", "127.0.0.1", str(primary.port)])
    client = LockClient(redis.Redis.from_url(replica.url))
    with pytest.raises(MaxRetryError, match="Redis did not answer") as err:
        client.lock("jobs", retry=FixedIntervalStrategy(0.01, 2))
    cause = err.value.__cause__
    assert isinstance(cause, redis.exceptions.ReadOnlyError) or "READONLY" in str(cause)
    assert err.value.attempts == 3


@pytest.mark.parametrize(
    ("stored", "expect"),
    [
        (str(2**53), 2**53 + 1),  # past the doubles' exact range: still exact
        (str(2**53 + 1), 2**53 + 2),
        (str(2**62), 2**62 + 1),
        (str(2**63 - 2), 2**63 - 1),  # the last token there is
        ("0000" + str(2**60), 2**60 + 1),
        ("nan", "time"),  # not a decimal integer: repaired from Redis TIME
        ("inf", "time"),
        ("abc", "time"),
        ("-5", "time"),
        ("1e20", "time"),
        ("1.5", "time"),
        ("", "time"),
    ],
)
def test_fencing_counter_arithmetic_is_exact_and_repairs_garbage(
    client: LockClient, r: redis.Redis, stored: str, expect: int | str
) -> None:
    r.set(fence_key("jobs"), stored)
    before_us = int(time.time() * 1_000_000) - 5_000_000  # allow for clock skew
    lock = client.try_lock("jobs", expiration=5)
    token = lock.fencing_token
    if expect == "time":
        assert before_us < token < before_us + 60_000_000, token  # Redis TIME in µs
    else:
        assert token == expect
    assert int(r.get(fence_key("jobs"))) == token
    lock.unlock()
    if token == 2**63 - 1:
        with pytest.raises(leaderd.LockError, match="int64 limit"):
            client.try_lock("jobs", expiration=5)  # never a repeated or wrapped token
        return
    again = client.try_lock("jobs", expiration=5)
    assert again.fencing_token > token  # and strictly larger from there on
    again.unlock()


@pytest.mark.parametrize("stored", [str(2**63 - 1), str(2**63), str(2**64), "9" * 25])
def test_a_counter_at_the_int64_limit_is_refused_and_nothing_changes(
    client: LockClient, r: redis.Redis, stored: str
) -> None:
    r.set(fence_key("jobs"), stored)
    with pytest.raises(leaderd.LockError, match="int64 limit") as err:
        client.try_lock("jobs", expiration=5)
    assert not isinstance(err.value, FailedToPreemptLockError)
    assert r.get(fence_key("jobs")) == stored.encode() and not r.exists("jobs")


def test_embedded_token_survives_a_retry_after_the_counter_is_corrupted(
    client: LockClient, r: redis.Redis
) -> None:
    lock = client.try_lock("jobs", value='{"identity":"a"}', expiration=5, embed_token=True)
    r.set(fence_key("jobs"), "garbage")
    again = client.try_lock("jobs", value='{"identity":"a"}', expiration=5, embed_token=True)
    assert again.fencing_token == lock.fencing_token  # the same term, the same token


def test_waiters_are_served_by_priority_then_arrival(client: LockClient, r: redis.Redis) -> None:
    holder = client.try_lock("jobs", expiration=30)
    got: list[str] = []

    def waiter(name: str, priority: int) -> threading.Thread:
        def run() -> None:
            lock = client.lock("jobs", expiration=5, retry=FixedIntervalStrategy(10, 3),
                               priority=priority)  # fmt: skip
            got.append(name)
            lock.unlock()

        thread = threading.Thread(target=run)
        thread.start()
        return thread

    threads = []
    for n, (name, priority) in enumerate([("low", 0), ("high-1", 5), ("high-2", 5),
                                          ("lowest", -3)], start=1):  # fmt: skip
        threads.append(waiter(name, priority))
        wait_for(lambda n=n: r.zcard(WAITERS) == n)  # arrival order is known
    holder.unlock()
    for t in threads:
        t.join(10)
    assert got == ["high-1", "high-2", "low", "lowest"]
    with pytest.raises(ValueError, match="priority"):
        client.lock("other", priority=101)
