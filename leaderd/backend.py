"""The seam between the election and the store of its lease (client-go's resourcelock).

`Elector` talks to an `ElectionBackend`: acquire (waiting under a retry strategy),
renew, release and read the holder. `RedisBackend` (redis_backend.py) is the real one;
`MemoryBackend` here keeps the lease in process memory on the elector's own clock, so
the state machine is tested without Redis, in milliseconds, with faults injected.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from .errors import LockNotHeldError, MaxRetryError
from .strategy import RetryStrategy

if TYPE_CHECKING:
    from .clock import Clock


@dataclass(frozen=True)
class Candidate:
    """Who contends, and what it publishes with its leadership: its `address` (where
    followers and clients reach the leader) and its `priority` among waiters."""

    identity: str
    priority: int = 0
    address: str | None = None


@dataclass(frozen=True)
class Holder:
    """What the store says about the current holder. `foreign`: no elector wrote it."""

    identity: str
    token: int | None = None
    foreign: bool = False
    address: str | None = None
    priority: int = 0


@dataclass
class Lease:
    """A won lease: its fencing token, the elector-clock time at which the proof that
    won it *started*, and whatever the backend needs to renew or release it.
    `began`: when the candidate learnt it won, if later than `started` (a hand-over
    message: the lease is counted from the earlier attempt that queued it)."""

    token: int
    started: float
    handle: Any = None
    began: float | None = None


@dataclass(frozen=True)
class Attempt:
    """One acquire attempt, for observers: `acquired`, `held` (by `holder`) or `error`;
    or `announced`: not an attempt, a new term of `holder` the backend heard of while
    waiting (newer than the holder seen last, or ignored)."""

    outcome: str
    holder: Holder | None = None
    error: Exception | None = None


@dataclass(frozen=True)
class Request:
    """A control request to the current leader: `resign` (and stay out `hold_off`
    seconds), or `switchover` / `preempt` (hand the lease to waiter `to`, in the
    backend's own form of a queue entry)."""

    op: str
    to: str | None = None
    hold_off: float = 0.0
    id: str = ""
    target: str | None = None  # the identity of `to`, for display


@dataclass(frozen=True)
class RequestResult:
    """What the store said to a control request: `ok`, or the `reason` it was refused
    (`no_leader`, `foreign`, `already_leads`, `not_waiting`, `not_listening`,
    `not_higher`); `holder` is the leader it was addressed to."""

    ok: bool
    reason: str | None = None
    holder: Holder | None = None


class ElectionBackend(Protocol):
    """Where an election's lease lives. Transport failures raise one of `transient`."""

    transient: tuple[type[Exception], ...]

    async def acquire(
        self,
        candidate: Candidate,
        ttl: float,
        timeout: float,
        retry: RetryStrategy,
        on_attempt: Callable[[Attempt], None],
    ) -> Lease:
        """Wait until `candidate` holds the lease (one attempt per wake-up: retry delay,
        release announcement, or the holder's expiry); `MaxRetryError` when `retry`
        gives up. Reports every attempt to `on_attempt`."""
        ...

    async def renew(self, lease: Lease, timeout: float) -> None:
        """Extend the lease to its ttl again; `LockNotHeldError` if it is gone."""
        ...

    async def release(self, lease: Lease, timeout: float) -> None:
        """Give the lease up if it is still ours (waking a waiter)."""
        ...

    async def holder(self, timeout: float) -> Holder | None:
        """The current holder, or None if nobody holds the lease."""
        ...

    async def leave_queue(self, timeout: float) -> None:
        """Give up this candidate's place among the waiters (it became ineligible)."""
        ...

    async def next_request(self, lease: Lease) -> Request:
        """Wait for a control request addressed to `lease` (cancelled when its term ends);
        transport errors are retried inside, never raised."""
        ...

    async def hand_over(self, lease: Lease, to: str, timeout: float) -> bool:
        """Release the lease to waiter `to` alone; False if `to` no longer waits (then the
        next waiter gets it, as on `release`)."""
        ...

    async def request(
        self, op: str, target: str | None, hold_off: float, priority: int, timeout: float
    ) -> RequestResult:
        """Ask the current leader to `resign` or to hand over to the candidate `target`
        (`switchover`, or `preempt` by a waiter of higher `priority`)."""
        ...


class BackendDown(ConnectionError):
    """`MemoryBackend`'s simulated transport failure."""


@dataclass
class _Held:
    candidate: str
    token: int
    expires_at: float
    ttl: float
    priority: int = 0


@dataclass
class MemoryStore:
    """One election's lease in memory, shared by the `MemoryBackend`s of its candidates."""

    clock: Clock
    held: _Held | None = None
    tokens: Any = field(default_factory=lambda: itertools.count(1))
    released: asyncio.Event = field(default_factory=asyncio.Event)
    #: live waiters (identity -> priority), a hand-over reserved for one until a time,
    #: and the pending control request with the token of the term it is addressed to
    waiting: dict[str, int] = field(default_factory=dict)
    reserved: tuple[str, float] | None = None
    request: tuple[int, Request] | None = None
    requested: asyncio.Event = field(default_factory=asyncio.Event)

    def current(self) -> _Held | None:
        if self.held is not None and self.clock.now() >= self.held.expires_at:
            self.held = None
        return self.held

    def take_over(self, identity: str, ttl: float, priority: int = 0) -> _Held:
        """What another client would do: hold the lease (a test's intruder)."""
        self.held = _Held(identity, next(self.tokens), self.clock.now() + ttl, ttl, priority)
        return self.held

    def reserved_for_other(self, identity: str) -> bool:
        r = self.reserved
        return r is not None and r[0] != identity and self.clock.now() < r[1]


class MemoryBackend:
    """An `ElectionBackend` in memory, with injectable faults for tests.

    `down = True` makes every call fail; `latency` seconds (of the clock) pass in each
    call before it acts, like a slow store (a call whose timeout is shorter fails when
    it runs out); `freeze()` makes calls hang until `thaw()`, like a stopped server.
    """

    transient: tuple[type[Exception], ...] = (BackendDown,)

    def __init__(self, store: MemoryStore) -> None:
        self.store = store
        self.clock = store.clock
        self.down = False
        self.latency = 0.0
        self._thawed = asyncio.Event()
        self._thawed.set()

    def freeze(self) -> None:
        self._thawed.clear()

    def thaw(self) -> None:
        self._thawed.set()

    async def _call(self, timeout: float | None = None) -> None:
        await self._thawed.wait()
        if self.latency:
            if timeout is not None and self.latency > timeout:
                await self.clock.sleep(timeout)
                raise BackendDown(f"no answer within {timeout}s")
            await self.clock.sleep(self.latency)
        if self.down:
            raise BackendDown("the store does not answer")

    async def acquire(
        self,
        candidate: Candidate,
        ttl: float,
        timeout: float,
        retry: RetryStrategy,
        on_attempt: Callable[[Attempt], None],
    ) -> Lease:
        retries = 0
        try:
            while True:
                started = self.clock.now()
                expires_at: float | None = None
                try:
                    await self._call(timeout)
                except BackendDown as exc:
                    on_attempt(Attempt("error", error=exc))
                else:
                    held = self.store.current()
                    me = candidate.identity
                    if (held is None and not self.store.reserved_for_other(me)) or (
                        held is not None and held.candidate == me
                    ):
                        if held is None:
                            held = self.store.take_over(me, ttl, candidate.priority)
                            self.store.reserved = None
                        held.expires_at = started + ttl
                        on_attempt(Attempt("acquired"))
                        return Lease(held.token, started, me)
                    shown = None if held is None else Holder(
                        held.candidate, held.token, priority=held.priority)  # fmt: skip
                    on_attempt(Attempt("held", shown))
                    expires_at = None if held is None else held.expires_at
                    self.store.waiting[me] = candidate.priority
                retries += 1
                delay = retry.next_delay(retries)
                if delay is None:
                    raise MaxRetryError("memory", retries, None)
                wake = started + delay if expires_at is None else min(started + delay, expires_at)
                await self._wait(wake)
        finally:
            self.store.waiting.pop(candidate.identity, None)

    async def _wait(self, until: float) -> None:
        """Sleep on the clock until `until`, or until a release is announced."""
        self.store.released.clear()
        sleeper = asyncio.ensure_future(self.clock.sleep(until - self.clock.now()))
        woken = asyncio.ensure_future(self.store.released.wait())
        try:
            await asyncio.wait({sleeper, woken}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            woken.cancel()

    async def renew(self, lease: Lease, timeout: float) -> None:
        started = self.clock.now()
        await self._call(timeout)
        held = self.store.current()
        if held is None or held.candidate != lease.handle or held.token != lease.token:
            raise LockNotHeldError("memory", "refresh")
        held.expires_at = started + held.ttl

    async def release(self, lease: Lease, timeout: float) -> None:
        await self._call(timeout)
        held = self.store.current()
        if held is not None and held.candidate == lease.handle and held.token == lease.token:
            self.store.held = None
            self.store.released.set()

    async def holder(self, timeout: float) -> Holder | None:
        await self._call(timeout)
        held = self.store.current()
        return None if held is None else Holder(held.candidate, held.token)

    async def leave_queue(self, timeout: float) -> None:
        """Nothing to do: a waiter is listed only while its `acquire` runs."""

    async def next_request(self, lease: Lease) -> Request:
        while True:
            pending = self.store.request
            if pending is not None and pending[0] == lease.token:
                self.store.request = None
                return pending[1]
            self.store.requested.clear()
            await self.store.requested.wait()

    async def hand_over(self, lease: Lease, to: str, timeout: float) -> bool:
        await self._call(timeout)
        held = self.store.current()
        if held is None or held.candidate != lease.handle or held.token != lease.token:
            return False
        self.store.held = None
        handed = to in self.store.waiting
        if handed:
            self.store.reserved = (to, self.clock.now() + 1.0)
        self.store.released.set()
        return handed

    async def request(
        self, op: str, target: str | None, hold_off: float, priority: int, timeout: float
    ) -> RequestResult:
        await self._call(timeout)
        held = self.store.current()
        if held is None:
            return RequestResult(False, "no_leader")
        holder = Holder(held.candidate, held.token, priority=held.priority)
        if op != "resign":
            if held.candidate == target:
                return RequestResult(False, "already_leads", holder)
            if op == "preempt" and held.priority >= priority:
                return RequestResult(False, "not_higher", holder)
            if target not in self.store.waiting:
                return RequestResult(False, "not_waiting", holder)
        self.store.request = (held.token, Request(op, target, hold_off, target=target))
        self.store.requested.set()
        return RequestResult(True, None, holder)
