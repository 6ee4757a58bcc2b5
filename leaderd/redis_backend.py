"""The Redis `ElectionBackend`: an election's lease is a leaderd lock in Redis.

It owns the key name (`leaderd:{<election>}`), the JSON value a candidate stores
(identity, a nonce and, embedded by the acquire script, the fencing token), the
defensive parsing of whatever value is found there, and which Redis errors are
transient for the election.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections.abc import AsyncGenerator, Callable
from typing import TYPE_CHECKING, Any

import redis

from . import _core
from ._core import AcquireResult
from .aio import AsyncLock, AsyncLockClient, AsyncSubscription
from .backend import Attempt, Candidate, Holder, Lease, Request, RequestResult
from .errors import LockError
from .strategy import RetryStrategy

if TYPE_CHECKING:
    from .clock import Clock


def election_key(election: str) -> str:
    """The Redis key of an election; the braces keep its helper keys in one slot."""
    return f"leaderd:{{{election}}}"


#: Holder values longer than this are not parsed: an elector writes ~100 bytes.
MAX_HOLDER_BYTES = 4096
#: Identities are shown (status, logs, `leaderd status`) cut to this many characters.
MAX_SHOWN = 253


def parse_holder(value: str) -> Holder:
    """Parse a lock value defensively: bounded size, flat JSON only, never raises.

    Anyone who can write the key controls this text; anything that is not an
    elector's own small JSON object is a foreign holder, shown escaped and truncated.
    """
    data: Any = None
    if len(value) <= MAX_HOLDER_BYTES and value.startswith("{"):
        try:
            data = json.loads(value)
        except (ValueError, RecursionError):
            data = None
    if isinstance(data, dict):
        identity, token, address = data.get("identity"), data.get("token"), data.get("address")
        if isinstance(identity, str) and identity:
            ok_token = isinstance(token, int) and not isinstance(token, bool) and token > 0
            shown_address = display(address) if isinstance(address, str) else None
            priority = data.get("priority", 0)
            if not isinstance(priority, int) or isinstance(priority, bool):
                priority = 0
            return Holder(display(identity), token if ok_token else None, False, shown_address,
                          max(-100, min(100, priority)))  # fmt: skip
    return Holder(display(value), None, True)


def candidate_value(candidate: Candidate) -> str:
    """The JSON a candidate stores as the lock's value (the acquire script appends the
    fencing token): identity, a nonce that makes it unique, and what it publishes."""
    data: dict[str, Any] = {"identity": candidate.identity, "nonce": secrets.token_hex(8)}
    if candidate.priority:
        data["priority"] = candidate.priority
    if candidate.address is not None:
        data["address"] = candidate.address
    return json.dumps(data, separators=(",", ":"))


def holder_identity(value: str | None) -> str | None:
    """The identity inside a lock value written by an elector (else the value, shown
    safely); None if nobody holds the lock."""
    return None if value is None else parse_holder(value).identity


def display(text: str, limit: int = MAX_SHOWN) -> str:
    """`text` safe for a terminal or a log line: control characters escaped, cut to
    `limit` characters (an ellipsis marks the cut)."""
    cut = len(text) > limit
    text = text[:limit]
    if not text.isprintable():
        text = "".join(
            c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text
        )[:limit]
    return text + "…" if cut else text


async def _give_back(lock: AsyncLock, timeout: float) -> None:
    """Release a lock nobody will use, best effort (it expires anyway)."""
    with contextlib.suppress(redis.RedisError, OSError, TimeoutError, LockError):
        await lock.unlock(timeout=timeout)


class RedisBackend:
    """An election's lease as a leaderd lock, through an `AsyncLockClient`."""

    #: Errors that mean "Redis did not answer properly"; the elector keeps trying.
    transient: tuple[type[Exception], ...] = (redis.RedisError, OSError, TimeoutError)

    def __init__(self, client: AsyncLockClient, election: str, clock: Clock) -> None:
        self.client = client
        self.key = election_key(election)
        self.clock = clock
        self._value: str | None = None  # the value of the last acquire (our queue entry)

    async def acquire(
        self,
        candidate: Candidate,
        ttl: float,
        timeout: float,
        retry: RetryStrategy,
        on_attempt: Callable[[Attempt], None],
    ) -> Lease:
        value = self._value = candidate_value(candidate)

        def attempted(result: AcquireResult | None, error: Exception | None) -> None:
            if result is None:
                on_attempt(Attempt("error", error=error))
            elif result.acquired:
                on_attempt(Attempt("acquired"))
            else:
                holder = None if result.holder is None else parse_holder(result.holder)
                on_attempt(Attempt("held", holder))

        announced = asyncio.ensure_future(self._announced(candidate.identity, on_attempt, timeout))
        lock: AsyncLock | None = None
        try:
            lock = await self.client.lock(
                self.key, value=value, expiration=ttl, timeout=timeout, retry=retry,
                embed_token=True, on_attempt=attempted, priority=candidate.priority,
            )  # fmt: skip
        finally:
            announced.cancel()
            try:
                await asyncio.wait({announced}, timeout=1.0)
            except BaseException:
                if lock is not None:  # cancelled after winning: give the lease back
                    await asyncio.shield(_give_back(lock, timeout))
                raise
        # The lock library measures on time.monotonic; the elector may run on another clock.
        now, mono = self.clock.now(), time.monotonic()
        return Lease(lock.fencing_token, now - (mono - lock.acquired_at), lock,
                     now - (mono - lock.began_at))  # fmt: skip

    async def _announced(
        self, identity: str, on_attempt: Callable[[Attempt], None], timeout: float
    ) -> None:
        """While waiting, report each new term announced on the election's terms channel
        (`announced`), so a follower knows the new leader at once, not at its next
        attempt. A message is only a hint (anyone allowed to publish there could forge
        one): what is reported is read from the key. Best effort: without pub/sub,
        attempts alone tell."""
        subscription = self.client.subscription
        channel = _core.terms_channel(self.key)
        queue = subscription.feed(channel)
        nudge: asyncio.TimerHandle | None = None
        try:
            while True:
                if not subscription.listening(channel):  # first, or after a reconnect
                    with contextlib.suppress(*self.transient):
                        await subscription.listen(channel, 2.0)
                # asyncio.wait, not wait_for: 3.11's wait_for can swallow a cancellation
                # that lands as the queue yields (our own term's announcement does)
                getter = asyncio.ensure_future(queue.get())
                try:
                    await asyncio.wait({getter}, timeout=ANNOUNCED_RECHECK)
                finally:
                    getter.cancel()
                if getter.cancelled() or not getter.done():
                    continue
                while not queue.empty():  # a burst of news: one read answers them all
                    queue.get_nowait()
                with contextlib.suppress(*self.transient):
                    value, left = await self.client.get_holder(self.key, timeout=timeout)
                    holder = None if value is None else parse_holder(value)
                    if holder is not None and holder.token and holder.identity != identity:
                        on_attempt(Attempt("announced", holder))
                    if holder is not None and left is not None and left <= _core.HANDOVER_CLAIM:
                        # a hand-over's claim: if its new holder cannot confirm it (frozen,
                        # blocked), attempt when it runs out, not at the next retry
                        if nudge is not None:
                            nudge.cancel()
                        loop = asyncio.get_running_loop()
                        nudge = loop.call_later(left + 0.002, self.client.nudge, self.key)
        finally:
            subscription.unfeed(channel, queue)
            if nudge is not None:
                nudge.cancel()

    async def renew(self, lease: Lease, timeout: float) -> None:
        lock: AsyncLock = lease.handle
        await lock.refresh(timeout=timeout)

    async def release(self, lease: Lease, timeout: float) -> None:
        lock: AsyncLock = lease.handle
        await lock.unlock(timeout=timeout)

    async def holder(self, timeout: float) -> Holder | None:
        value, _ = await self.client.get_holder(self.key, timeout=timeout)
        return None if value is None else parse_holder(value)

    async def leave_queue(self, timeout: float) -> None:
        if self._value is not None:
            await self.client.leave_queue(self.key, self._value, timeout=timeout)

    async def next_request(self, lease: Lease) -> Request:
        lock: AsyncLock = lease.handle
        channel = _core.control_channel(self.key)
        subscription = self.client.subscription  # the client's one pub/sub connection
        while True:
            with contextlib.suppress(*self.transient):
                await subscription.listen(channel, 2.0)
            request = None
            with contextlib.suppress(*self.transient):
                [raw] = await self.client.commands([("GET", _core.control_key(self.key))], 2.0)
                request = parse_request(raw, lock.value)
            if request is not None:
                return request
            # pub/sub wakes at once; the poll is the backstop for a missed message
            if subscription.listening(channel):
                await subscription.wait(channel, CONTROL_POLL)
            else:
                await asyncio.sleep(CONTROL_POLL_UNSUBSCRIBED)

    async def hand_over(self, lease: Lease, to: str, timeout: float) -> bool:
        lock: AsyncLock = lease.handle
        return await lock.hand_over(to, timeout=timeout)

    async def request(
        self, op: str, target: str | None, hold_off: float, priority: int, timeout: float
    ) -> RequestResult:
        return await send_request(self.client, self.key, op, target, hold_off=hold_off,
                                  priority=priority, timeout=timeout)  # fmt: skip


#: How often a waiting follower checks that it still hears its election's new terms.
ANNOUNCED_RECHECK = 5.0
#: How often a subscribed leader re-reads the control key anyway: after a reconnect it
#: re-reads at once, so this only backs up a message lost on a live connection.
CONTROL_POLL = 10.0
#: How often a leader without pub/sub (Redis Cluster) reads the control key.
CONTROL_POLL_UNSUBSCRIBED = 0.5
#: Control operations and how long a request stands by default.
CONTROL_OPS = ("resign", "switchover", "preempt")


def parse_request(raw: bytes | str | None, holder_value: str) -> Request | None:
    """The pending control request if it is addressed to `holder_value` (this term)."""
    if raw is None:
        return None
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict) or data.get("holder") != holder_value:
        return None
    op, to, hold_off = data.get("op"), data.get("to"), data.get("hold_off_ms", 0)
    if op not in CONTROL_OPS:
        return None
    if not isinstance(hold_off, int | float) or not 0 <= hold_off <= 86_400_000:
        hold_off = 0
    target = to if isinstance(to, str) and to else None
    if op != "resign" and target is None:
        return None
    shown = None if target is None else parse_holder(_core.queued_value(target)).identity
    return Request(op, target, hold_off / 1000, str(data.get("id", "")), shown)


async def send_request(
    client: AsyncLockClient,
    key: str,
    op: str,
    target: str | None,
    *,
    hold_off: float = 0.0,
    priority: int = 0,
    timeout: float = 2.0,
    stands: float = 10.0,
) -> RequestResult:
    """Ask the holder of election lock `key` to resign or hand over to `target`; the
    request is checked and stored atomically (a refused one writes nothing) and stands
    for `stands` seconds."""
    waiters, flag = _core.helper_keys(key)
    keys = [key, waiters, flag, _core.control_key(key)]
    args = [op, target or "", str(round(hold_off * 1000)), str(max(1, round(stands * 1000))),
            _core.release_channel(key), _core.control_channel(key), secrets.token_hex(8),
            str(priority)]  # fmt: skip
    reply = await client.eval_script(_core.CONTROL, keys, args, timeout)
    texts = [None if r is None else r.decode("utf-8", "replace") if isinstance(r, bytes)
             else str(r) for r in reply]  # fmt: skip
    if int(reply[0]) == 1:
        return RequestResult(True, None, parse_holder(texts[1] or ""))
    holder = parse_holder(texts[2]) if len(texts) > 2 and texts[2] is not None else None
    return RequestResult(False, texts[1], holder)


async def follow(
    client: AsyncLockClient, election: str, poll: float = 1.0, timeout: float = 2.0
) -> AsyncGenerator[Holder | None, None]:
    """The holder of `election`, then each change of holder or term (None: nobody).

    New terms and releases are announced on pub/sub; a message only wakes the reader,
    which reports what the key holds (anyone allowed to publish could forge one, so a
    holder is never reported from a message alone; a term that begins and ends between
    two reads can go unreported). A read every `poll` seconds, and at the lease's
    expiry, is the backstop (a missed message, an expired leader, a Redis without
    pub/sub). A hand-over is one change: the release writes the next holder. A term
    older than one already reported is never reported.
    """
    key = election_key(election)
    terms = _core.terms_channel(key)
    sub: AsyncSubscription | None = None
    last: tuple[str, int | None] | bool | None = False  # False: nothing reported yet
    newest = 0  # the largest token reported: tokens only grow

    def news(holder: Holder | None) -> bool:
        seen = None if holder is None else (holder.identity, holder.token)
        older = holder is not None and (holder.token or newest + 1) <= newest
        return seen != last and not older

    try:
        while True:
            if sub is None or not sub.subscribed:
                with contextlib.suppress(redis.RedisError, OSError, TimeoutError):
                    if sub is not None:
                        await sub.close()
                    sub = await AsyncSubscription.start(client.redis, [terms], timeout)
            if sub is not None:
                sub.take()  # news of a change: read the key now
            value, left = await client.get_holder(key, timeout=timeout)
            holder = None if value is None else parse_holder(value)
            if news(holder):
                last = None if holder is None else (holder.identity, holder.token)
                if holder is not None and holder.token:
                    newest = holder.token
                yield holder
            wait = poll if left is None or left < 0 else min(poll, left + 0.001)
            if sub is not None and sub.subscribed:
                await sub.wait(wait)
            else:
                await asyncio.sleep(wait)
    finally:
        if sub is not None:
            await sub.close()
