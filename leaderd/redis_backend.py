"""The Redis `ElectionBackend`: an election's lease is a leaderd lock in Redis.

It owns the key name (`leaderd:{<election>}`), the JSON value a candidate stores
(identity, a nonce and, embedded by the acquire script, the fencing token), the
defensive parsing of whatever value is found there, and which Redis errors are
transient for the election.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import redis

from ._core import AcquireResult
from .aio import AsyncLock, AsyncLockClient
from .backend import Attempt, Candidate, Holder, Lease
from .strategy import RetryStrategy

if TYPE_CHECKING:
    from .election import Clock


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
            return Holder(display(identity), token if ok_token else None, False, shown_address)
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

        lock = await self.client.lock(
            self.key, value=value, expiration=ttl, timeout=timeout, retry=retry,
            embed_token=True, on_attempt=attempted, priority=candidate.priority,
        )  # fmt: skip
        # The lock library measures on time.monotonic; the elector may run on another clock.
        started = self.clock.now() - (time.monotonic() - lock.acquired_at)
        return Lease(lock.fencing_token, started, lock)

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
