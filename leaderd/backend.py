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
    from .election import Clock


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


@dataclass
class Lease:
    """A won lease: its fencing token, the elector-clock time at which the proof that
    won it *started*, and whatever the backend needs to renew or release it."""

    token: int
    started: float
    handle: Any = None


@dataclass(frozen=True)
class Attempt:
    """One acquire attempt, for observers: `acquired`, `held` (by `holder`) or `error`."""

    outcome: str
    holder: Holder | None = None
    error: Exception | None = None


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


class BackendDown(ConnectionError):
    """`MemoryBackend`'s simulated transport failure."""


@dataclass
class _Held:
    candidate: str
    token: int
    expires_at: float
    ttl: float


@dataclass
class MemoryStore:
    """One election's lease in memory, shared by the `MemoryBackend`s of its candidates."""

    clock: Clock
    held: _Held | None = None
    tokens: Any = field(default_factory=lambda: itertools.count(1))
    released: asyncio.Event = field(default_factory=asyncio.Event)

    def current(self) -> _Held | None:
        if self.held is not None and self.clock.now() >= self.held.expires_at:
            self.held = None
        return self.held

    def take_over(self, identity: str, ttl: float) -> _Held:
        """What another client would do: hold the lease (a test's intruder)."""
        self.held = _Held(identity, next(self.tokens), self.clock.now() + ttl, ttl)
        return self.held


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
        while True:
            started = self.clock.now()
            expires_at: float | None = None
            try:
                await self._call(timeout)
            except BackendDown as exc:
                on_attempt(Attempt("error", error=exc))
            else:
                held = self.store.current()
                if held is None or held.candidate == candidate.identity:
                    if held is None:
                        held = self.store.take_over(candidate.identity, ttl)
                    held.expires_at = started + ttl
                    on_attempt(Attempt("acquired"))
                    return Lease(held.token, started, candidate.identity)
                on_attempt(Attempt("held", Holder(held.candidate, held.token)))
                expires_at = held.expires_at
            retries += 1
            delay = retry.next_delay(retries)
            if delay is None:
                raise MaxRetryError("memory", retries, None)
            wake = started + delay if expires_at is None else min(started + delay, expires_at)
            await self._wait(wake)

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
        """Nothing to do: the memory store keeps no queue (waiters poll and are woken)."""
