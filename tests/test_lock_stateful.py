"""A property-based stateful test of the lock protocol on a real Redis.

Hypothesis drives three clients through acquisitions, releases, queued waiters that
give up, forged and malformed messages and queue entries, snapshots and rollbacks to
them, and short write pauses. After every step: tokens strictly increase, at most one
client holds a valid lock (outside the data-loss window a rollback opens), and the
key never holds a value that no client acquired.
"""

from __future__ import annotations

import contextlib

import pytest
import redis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from devtools.devserver import RedisServer
from leaderd import FixedIntervalStrategy, Lock, LockClient, LockError, _core

from .conftest import L1, listening_waiter

KEY = "jobs"
WAITERS, WAITING = _core.helper_keys(KEY)
CLIENTS = 3


class LockProtocol(RuleBasedStateMachine):
    server: RedisServer

    def __init__(self) -> None:
        super().__init__()
        self.r = redis.Redis.from_url(self.server.url, socket_timeout=5)
        self.r.flushall()
        self.clients = [
            LockClient(redis.Redis.from_url(self.server.url, socket_timeout=5))
            for _ in range(CLIENTS)
        ]
        self.held: dict[int, Lock] = {}
        self.tokens: list[int] = []
        self.values: set[str] = set()  # every value a client acquired with
        self.snapshot = False
        self.listening = listening_waiter(self.r, KEY)  # a live waiter that never acts

    def teardown(self) -> None:
        self.listening.close()
        for client in self.clients:
            client.close()
        self.r.close()

    def _won(self, who: int, lock: Lock) -> None:
        assert not self.tokens or lock.fencing_token > self.tokens[-1], (lock, self.tokens)
        self.tokens.append(lock.fencing_token)
        self.values.add(lock.value)
        others = [w for w, held in self.held.items() if w != who and held.is_valid()]
        assert not others, f"{who} acquired while {others} held a valid lock"
        self.held[who] = lock

    @rule(who=st.integers(0, CLIENTS - 1))
    def try_lock(self, who: int) -> None:
        with contextlib.suppress(LockError, redis.RedisError):
            self._won(who, self.clients[who].try_lock(KEY, expiration=5, timeout=1))

    @rule(who=st.integers(0, CLIENTS - 1))
    def lock_briefly(self, who: int) -> None:
        """A `lock()` that queues and gives up (the departure must leave no trace)."""
        with contextlib.suppress(LockError, redis.RedisError):
            lock = self.clients[who].lock(
                KEY, expiration=5, timeout=1, retry=FixedIntervalStrategy(0.01, 1)
            )
            self._won(who, lock)

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def unlock(self, data: st.DataObject) -> None:
        who = data.draw(st.sampled_from(sorted(self.held)))
        lock = self.held.pop(who)
        with contextlib.suppress(LockError, redis.RedisError):
            lock.unlock()

    @rule(
        member=st.one_of(
            st.text(max_size=40),
            st.builds(
                _core.queue_member,
                st.just(L1),
                st.integers(0, 10**16),
                st.integers(-5, 10**16),
                st.booleans(),
                st.text(min_size=1, max_size=20),
            ),
        )
    )
    def queue_an_entry_nobody_acts_on(self, member: str) -> None:
        """A hand-crafted entry, well-formed or not, for the listener that never acts."""
        self.r.zadd(WAITERS, {member: 0})
        self.r.set(WAITING, "1")

    @rule(text=st.one_of(st.text(max_size=60), st.binary(max_size=60)))
    def forge_a_message(self, text: str | bytes) -> None:
        self.r.publish(_core.waiter_channel(KEY, L1), text)
        self.r.publish(_core.terms_channel(KEY), text)

    @rule()
    def take_a_snapshot(self) -> None:
        self.r.save()
        self.snapshot = True

    @precondition(lambda self: self.snapshot)
    @rule()
    def roll_back_to_the_snapshot(self) -> None:
        self.r.execute_command("DEBUG", "RELOAD", "NOSAVE")
        self.held.clear()  # the documented data-loss window: earlier holders lose

    @rule(ms=st.integers(10, 80))
    def pause_writes(self, ms: int) -> None:
        self.r.execute_command("CLIENT", "PAUSE", ms, "WRITE")

    @invariant()
    def the_key_holds_only_what_a_client_acquired_or_was_handed(self) -> None:
        with contextlib.suppress(redis.RedisError):
            current = self.r.get(KEY)
            if current is None:
                return
            text = current.decode("utf-8", "replace")
            queued = {
                _core.queued_value(m.decode("utf-8", "replace"))
                for m in self.r.zrange(WAITERS, 0, -1)
            }
            # a handed claim to the never-acting listener is bounded by the claim
            handed = self.r.pttl(KEY) <= _core.HANDOVER_CLAIM * 1000
            assert text in self.values or handed or text in queued, text


@pytest.mark.slow
def test_the_lock_protocol_holds_under_any_sequence(redis_server: RedisServer) -> None:
    LockProtocol.server = redis_server
    runner = LockProtocol.TestCase
    runner.settings = settings(
        max_examples=25,
        stateful_step_count=25,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    runner().runTest()
