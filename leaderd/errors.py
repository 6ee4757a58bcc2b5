"""The library's error hierarchy: every failure a caller can act on is a `LockError`.

Redis transport errors (`redis.ConnectionError`, `redis.TimeoutError`) pass through
unchanged from `try_lock`, `refresh` and `unlock`; `lock()` retries them.
"""

from __future__ import annotations

import redis


def _shown(value: str) -> str:
    """A holder value in an error message: repr'd (control characters escaped), and
    cut short, since anyone who can write the key chooses it."""
    return repr(value[:200]) + ("…" if len(value) > 200 else "")


class LockError(Exception):
    """Base class of every error raised by leaderd's lock library."""


class FailedToPreemptLockError(LockError):
    """The lock is held by someone else (a single attempt found it taken)."""

    def __init__(self, key: str, holder: str | None, ttl: float | None) -> None:
        self.key = key
        self.holder = holder
        self.ttl = ttl
        ttl_text = f", expires in {ttl:.3f}s" if ttl is not None and ttl >= 0 else ""
        who = f"held by {_shown(holder)}" if holder is not None else "held by another client"
        super().__init__(f"lock {key!r} is {who}{ttl_text}")


class LockNotHeldError(LockError):
    """The lock is gone or now holds someone else's value; nothing was changed."""

    def __init__(self, key: str, operation: str) -> None:
        self.key = key
        self.operation = operation
        super().__init__(f"cannot {operation} lock {key!r}: it expired or is held by someone else")


class NotReplicatedError(LockError, redis.TimeoutError):
    """A write reached the primary but not `min_replicas` replicas in time.

    Counts as a timed-out attempt: `lock()` retries it (the retry finds the key
    already ours and waits for replication again).
    """

    def __init__(self, key: str, wanted: int, acked: int) -> None:
        self.key = key
        self.wanted = wanted
        self.acked = acked
        super().__init__(f"lock {key!r}: {acked} of {wanted} replicas acknowledged in time")


class MaxRetryError(LockError):
    """The retry strategy ran out before the lock could be acquired."""

    def __init__(
        self, key: str, attempts: int, holder: str | None, redis_failed: bool = False
    ) -> None:
        self.key = key
        self.attempts = attempts
        self.holder = holder
        if redis_failed:
            who = "Redis did not answer"
        elif holder is not None:
            who = f"held by {_shown(holder)}"
        else:
            who = "handed over to a client that was waiting longer"
        tries = "1 attempt" if attempts == 1 else f"{attempts} attempts"
        super().__init__(f"gave up on lock {key!r} after {tries} ({who})")


class FunctionsNotLoadedError(LockError):
    """leaderd's Redis Functions library cannot be called, and EVAL may not serve
    instead (the user lacks +eval, or `scripts="functions"`); the message says how to
    load it. Nothing was changed in Redis."""
