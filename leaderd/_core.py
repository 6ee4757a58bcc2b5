"""Everything the sync and asyncio clients share except I/O.

Scripts, key naming, argument building, reply parsing and error mapping live here
so that `LockClient` and `AsyncLockClient` differ only in how they talk to Redis.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import math
import secrets
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from importlib import resources
from typing import Any

import redis
from redis.crc import key_slot

from .errors import (
    FailedToPreemptLockError,
    LockError,
    LockNotHeldError,
    MaxRetryError,
    NotReplicatedError,
)
from .strategy import FixedIntervalStrategy, RetryStrategy

#: Default for `lock()`: try every 100 ms, forever; release messages wake waiters sooner.
DEFAULT_RETRY: RetryStrategy = FixedIntervalStrategy(0.1, max_retry=None)
#: Errors a call meets when Redis does not answer; `lock()` and auto-refresh retry them.
TRANSIENT = (redis.ConnectionError, redis.TimeoutError)

#: A waiter that lost its subscription and cannot listen again attempts this often.
RELISTEN_SECONDS = 1.0
#: Channel prefix on which a release is announced; waiters subscribe to it.
RELEASE_CHANNEL_PREFIX = "leaderd:released:"
#: Suffix of the fencing-counter key that sits in the lock key's hash slot.
FENCE_SUFFIX = "fence"
#: The longest lease `lock()`/`try_lock()` accept (30 days), and the longest value (UTF-8
#: bytes): a queue entry carries both, and the scripts drop entries beyond them.
MAX_EXPIRATION = 30 * 24 * 3600.0
MAX_VALUE_BYTES = 4096
#: A release hands the lock to a waiter for at most this long (its claim); the waiter's
#: confirming request extends it to its lease. A waiter that cannot act (killed with a
#: pattern subscriber present, frozen, its event loop blocked) costs this, not a lease.
HANDOVER_CLAIM = 0.5
#: A pub/sub message longer than this is not one of ours: dropped unread, never kept.
MAX_MESSAGE_BYTES = 8192


@dataclass(frozen=True, slots=True)
class Script:
    """A Lua script loaded from the package, called by SHA with EVAL as fallback."""

    name: str
    source: str
    sha: str

    @classmethod
    def load(cls, name: str, *parts: str) -> Script:
        """Load `name`.lua with the shared `parts` (.lua files too) prepended."""
        files = resources.files("leaderd.scripts")
        source = "".join(files.joinpath(f"{n}.lua").read_text("utf-8") for n in (*parts, name))
        return cls(name, source, hashlib.sha1(source.encode("utf-8")).hexdigest())


ACQUIRE = Script.load("acquire", "fence", "queue")
REFRESH = Script.load("refresh")
RELEASE = Script.load("release", "fence", "queue")
CONTROL = Script.load("control")
CONFIRM = Script.load("confirm", "queue")


@dataclass(frozen=True, slots=True)
class AcquireResult:
    """Outcome of one acquire attempt."""

    acquired: bool
    token: int | None = None
    value: str | None = None  # the value now stored (ours when acquired)
    holder: str | None = None  # the other holder's value when not acquired
    ttl: float | None = None  # seconds left on the other holder's lease (-1: no expiry)


#: Called after every acquire attempt of `lock()` with its result or its Redis error.
AttemptHook = Callable[[AcquireResult | None, Exception | None], None]


def new_value() -> str:
    """A fresh random lock value; two lock objects never share one."""
    return secrets.token_hex(16)


def _hash_tag(key: str) -> str | None:
    start = key.find("{")
    if start < 0:
        return None
    end = key.find("}", start + 1)
    if end < 0 or end == start + 1:
        return None
    return key[start + 1 : end]


@functools.lru_cache(maxsize=4096)
def _helper_key(key: str, suffix: str) -> str:
    """The helper key `suffix` of lock `key`, in the same Redis Cluster hash slot, and
    distinct for distinct locks: `a` and `{a}` share no helper key.

    A key with a hash tag: `<key>:<suffix>` (keeps the tag). One without braces:
    `{<key>}.<suffix>`, with a dot, which no `<tagged key>:<suffix>` ends in. One with
    braces but no usable tag (e.g. "a}b{"): `{<tag>}:<key>.<suffix>` with a short tag of
    the same slot, found by a deterministic search so every client derives the same.
    """
    if _hash_tag(key) is not None:
        return f"{key}:{suffix}"
    if "{" not in key and "}" not in key:
        return f"{{{key}}}.{suffix}"  # tag = the whole key = the same slot
    slot = key_slot(key.encode())
    for n in itertools.count():
        tag = f"f{n:x}"
        if key_slot(tag.encode()) == slot:
            return f"{{{tag}}}:{key}.{suffix}"
    raise AssertionError("unreachable")


def fence_key(key: str) -> str:
    """The fencing-counter key, in the same Redis Cluster hash slot as `key`."""
    return _helper_key(key, FENCE_SUFFIX)


def helper_keys(key: str) -> list[str]:
    """The waiter queue (a zset) and the "someone is waiting" flag of `key`."""
    return [_helper_key(key, "waiters"), _helper_key(key, "waiting")]


def queue_member(listener: str, call: int, px: int, embed: bool, value: str) -> str:
    """A waiter's queue entry: the subscription it listens on, which `lock()` call of
    that subscription waits (so a late message for an earlier call is never taken for
    this one), the lease and value the lock is handed over with, and whether the
    token is embedded in the value."""
    return f"{listener}|{call}-{px}{'t' if embed else ''}|{value}"


def queued_value(member: str) -> str:
    """The lock value inside a queue entry."""
    return member.split("|", 2)[-1]


def ascii_digits(text: str, most: int = 19) -> bool:
    """True for 1 to `most` ASCII digits ("²" and "٣" are digits to `str.isdigit`)."""
    return 0 < len(text) <= most and text.isascii() and text.isdigit()


def parse_wake(data: str) -> tuple[int, str] | None:
    """(token, member) of a hand-over message "<token> <member>"; None if it is not
    exactly one (bounded, ASCII digits). Only a hint: the waiter confirms with Redis."""
    if len(data) > MAX_MESSAGE_BYTES:
        return None
    token, _, member = data.partition(" ")
    if not member or not ascii_digits(token):
        return None
    return int(token), member


def stored_value(value: str, embed: bool, token: int) -> str:
    """What a holder's key holds: `value`, or with `"token":<token>` appended (embed)."""
    return f'{value[:-1]},"token":{token}}}' if embed else value


def release_channel(key: str) -> str:
    return RELEASE_CHANNEL_PREFIX + key


def terms_channel(key: str) -> str:
    """Where an acquire with an embedded token announces a new term (its stored value)."""
    return "leaderd:terms:" + key


def control_channel(key: str) -> str:
    """Where a control request (resign, switchover) wakes the holder of `key`."""
    return "leaderd:control:" + key


def control_key(key: str) -> str:
    """The pending control request for the holder of `key`, in its hash slot."""
    return _helper_key(key, "control")


#: The helper keys each lock has beside it (see `_helper_key`).
HELPER_SUFFIXES = (FENCE_SUFFIX, "waiters", "waiting", "control")


def check_key(key: str) -> None:
    if not isinstance(key, str) or not key:
        raise ValueError(f"lock key must be a non-empty string, got {key!r}")
    owner = helper_of(key)
    if owner is not None:
        raise ValueError(
            f"lock key {key[:200]!r} is a helper key of lock {owner[:200]!r} (its counter or "
            "queue); pick another name"
        )


@functools.lru_cache(maxsize=4096)
def helper_of(key: str) -> str | None:
    """The lock whose helper key `key` is, if any: such a name cannot be a lock, or the
    two would overwrite each other's data."""
    for suffix in HELPER_SUFFIXES:
        for sep in (":", "."):
            if not key.endswith(sep + suffix):
                continue
            base = key[: -len(sep + suffix)]
            if base.startswith("{") and sep == "." and base.endswith("}"):
                candidates = [base[1:-1], base.split("}:", 1)[-1]]  # `{k}.s`, `{tag}:k.s`
            else:
                candidates = [base, base.split("}:", 1)[-1]]
            for owner in candidates:
                if owner and _helper_key(owner, suffix) == key:
                    return owner
    return None


def check_expiration(expiration: float) -> int:
    """Validate a lease length in seconds and return it in whole milliseconds."""
    if (
        isinstance(expiration, bool)
        or not isinstance(expiration, int | float)
        or not math.isfinite(expiration)
        or not 0.001 <= expiration <= MAX_EXPIRATION
    ):
        raise ValueError(
            f"expiration must be a number of seconds from 0.001 to {MAX_EXPIRATION:.0f} "
            f"(30 days), got {expiration!r}"
        )
    return max(1, round(expiration * 1000))


def check_timeout(timeout: float | None) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
        raise ValueError(f"timeout must be None or a positive number of seconds, got {timeout!r}")
    return float(timeout)


def check_value(value: str | None, embed_token: bool) -> str:
    if value is None:
        return new_value()
    if not isinstance(value, str) or not value:
        raise ValueError(f"lock value must be a non-empty string, got {value!r}")
    if len(value.encode("utf-8", "surrogatepass")) > MAX_VALUE_BYTES:
        raise ValueError(f"lock value must be at most {MAX_VALUE_BYTES} bytes in UTF-8")
    if embed_token and not (value.startswith("{") and value.endswith("}") and len(value) > 2):
        raise ValueError("a value with an embedded token must be a non-empty JSON object")
    return value


#: Waiter priorities: the queue serves the highest first (FIFO among equals).
MIN_PRIORITY, MAX_PRIORITY = -100, 100


def check_priority(priority: int) -> int:
    if (
        isinstance(priority, bool)
        or not isinstance(priority, int)
        or not (MIN_PRIORITY <= priority <= MAX_PRIORITY)
    ):
        raise ValueError(f"priority must be a whole number from -100 to 100, got {priority!r}")
    return priority


def acquire_args(
    key: str,
    value: str,
    px: int,
    embed_token: bool,
    wait_ms: int = 0,
    priority: int = 0,
    member: str = "",
) -> tuple[list[str], list[str]]:
    """Keys and args of the acquire script; with `wait_ms` > 0 and a `member` (the
    caller listens for hand-overs), a caller that does not get the lock is queued with
    `priority` (highest served first); a `member` with `wait_ms` 0 is not queued, but
    an earlier entry of it leaves the queue if this attempt wins."""
    keys = [key, fence_key(key), *helper_keys(key)]
    args = [value, str(px), "1" if embed_token else "0", str(wait_ms if member else 0),
            str(priority), member]  # fmt: skip
    if embed_token:
        args.append(terms_channel(key))  # elections announce each new term to watchers
    return keys, args


def confirm_args(key: str, value: str, px: int, embed_token: bool) -> tuple[list[str], list[str]]:
    """Keys and args of the confirm script: is the hand-over to `value` in the key?"""
    return [key, fence_key(key)], [value, str(px), "1" if embed_token else "0"]


def release_args(
    key: str, value: str, to: str | None = None, announce: bool = False, leaving: str = ""
) -> tuple[list[str], list[str]]:
    """Keys and args of the release script; `to`: hand over to this waiter (its queue
    member) if it is still queued and listening; `announce`: tell an election's
    watchers; `leaving`: a waiter's member that gives up (it leaves the queue, and
    passes the lock on if it was handed it meanwhile)."""
    keys = [key, *helper_keys(key), fence_key(key)]
    args = [value, release_channel(key), to or "", terms_channel(key) if announce else "",
            leaving, str(round(HANDOVER_CLAIM * 1000))]  # fmt: skip
    return keys, args


def _text(raw: object) -> str:
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)


def parse_acquire(reply: object) -> AcquireResult:
    if not isinstance(reply, list) or len(reply) != 3:
        raise LockError(f"unexpected reply from the acquire script: {reply!r}")
    ok, a, b = reply
    if int(ok) == 1:
        token = _text(a)
        if not ascii_digits(token):
            raise LockError(f"the fencing counter holds {token[:40]!r}, not a token")
        return AcquireResult(True, token=int(token), value=_text(b))
    pttl = int(b)
    holder = None if a is None else _text(a)
    return AcquireResult(False, holder=holder, ttl=pttl / 1000.0 if pttl >= 0 else float(pttl))


def parse_holder(value: object, pttl: int) -> tuple[str | None, float | None]:
    """(holder value, seconds left) from a GET and a PTTL of a lock key."""
    if value is None:
        return None, None
    return _text(value), (pttl / 1000.0 if pttl >= 0 else None)


#: Error replies that mean "this node cannot serve writes right now" (failover,
#: loading, cluster resharding): an attempt that meets one is retried like a timeout.
FAILOVER_REPLIES = ("READONLY", "LOADING", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN")


_FAILOVER_TYPES = tuple(
    getattr(redis.exceptions, name)
    for name in ("ReadOnlyError", "TryAgainError", "ClusterDownError", "MasterDownError")
    if hasattr(redis.exceptions, name)
)


def is_failover_error(exc: BaseException) -> bool:
    """READONLY and friends, whether redis-py parsed them into a type (Redis 7) or they
    arrive as text inside a script error (Redis 6)."""
    if isinstance(exc, _FAILOVER_TYPES):
        return True
    text = str(exc)
    return isinstance(exc, redis.ResponseError) and any(
        text.startswith(p) or f"-{p}" in text or f" {p} " in f" {text} " for p in FAILOVER_REPLIES
    )


def is_noscript(exc: BaseException) -> bool:
    return isinstance(exc, redis.exceptions.NoScriptError) or (
        isinstance(exc, redis.ResponseError) and str(exc).startswith("NOSCRIPT")
    )


def is_noscript_reply(reply: object) -> bool:
    """A pipelined reply that says the script is not loaded (EVAL must follow)."""
    return isinstance(reply, BaseException) and is_noscript(reply)


def waiter_channel(key: str, listener: str) -> str:
    """Where a listener (one subscription, reused by its waits on `key`) hears that the
    lock was handed to one of its queue entries."""
    return release_channel(key) + "|" + listener


def new_listener_id() -> str:
    return secrets.token_hex(8)


class RetryPlan:
    """The bookkeeping of one `lock()` call, shared by the sync and async clients.

    The strategy decides how often to poll and when to give up: after `max_retry`
    retries, i.e. `max_retry + 1` attempts in all. Release messages and the holder's
    lease expiry trigger extra attempts between the polls; they count as attempts
    (so the limit is exact) but do not advance the backoff.
    """

    __slots__ = (
        "attempts",
        "expires_at",
        "holder",
        "key",
        "last_error",
        "next_retry_at",
        "retries",
        "strategy",
    )

    def __init__(self, key: str, strategy: RetryStrategy) -> None:
        self.key = key
        self.strategy = strategy
        self.attempts = 0
        self.retries = 0
        self.next_retry_at = 0.0
        self.expires_at: float | None = None
        self.holder: str | None = None
        self.last_error: Exception | None = None

    def wait_ms(self, now: float, listening: bool = False) -> int:
        """How long to stay queued as a waiter after this attempt (0: not waiting yet).
        A caller already listening queues from its first attempt, if it will retry."""
        if self.attempts == 0:
            if not listening:
                return 0
            delay = self.strategy.next_delay(1)
            return 0 if delay is None else round((delay + 1.0) * 1000)
        return round((max(0.0, self.next_retry_at - now) + 1.0) * 1000)

    def failed(self, started: float, result: AcquireResult | None, error: Exception | None) -> bool:
        """Record a failed attempt; True if a strategy retry was scheduled just now.

        Raises `MaxRetryError` when the strategy gives up.
        """
        self.attempts += 1
        self.expires_at = None
        self.last_error = error
        if result is not None:
            self.holder = result.holder
            if result.ttl is not None and result.ttl >= 0:
                self.expires_at = started + result.ttl
        # Every attempt counts against `max_retry`, the extra ones a release message or
        # the holder's expiry triggers included: `max_retry=N` is N + 1 attempts at most.
        if self.strategy.next_delay(self.attempts) is None:
            raise MaxRetryError(
                self.key, self.attempts, self.holder, redis_failed=error is not None
            ) from error
        now = time.monotonic()
        if now < self.next_retry_at:
            return False
        self.retries += 1  # the polling schedule: extra attempts do not speed up backoff
        delay = self.strategy.next_delay(self.retries)
        if delay is None:
            raise MaxRetryError(
                self.key, self.attempts, self.holder, redis_failed=error is not None
            ) from error
        self.next_retry_at = now + delay
        return True

    def wake_at(self) -> float:
        if self.expires_at is None:
            return self.next_retry_at
        return min(self.next_retry_at, self.expires_at + 0.001)


def map_response_error(exc: redis.ResponseError, key: str) -> Exception:
    """Turn a script error about the key into a `LockError` that says what is wrong."""
    text = str(exc)
    if "LEADERD_FENCE" in text:
        return LockError(text[text.index("LEADERD_FENCE") + len("LEADERD_FENCE ") :])
    if "WRONGTYPE" in text:
        return LockError(
            f"Redis key {key!r} (or {fence_key(key)!r}) holds a value of the wrong type; "
            f"it is not a leaderd lock - pick another key or delete it"
        )
    return exc


class LockBase:
    """State shared by sync and async lock objects; no I/O here."""

    __slots__ = (
        "_client", "acquired_at", "announce", "began_at", "expiration", "fencing_token",
        "key", "valid_until", "value",
    )  # fmt: skip

    def __init__(
        self,
        client: Any,
        key: str,
        value: str,
        expiration: float,
        token: int,
        started: float,
        announce: bool = False,
        began: float | None = None,
    ) -> None:
        self._client = client  #: the LockClient or AsyncLockClient that acquired it
        self.announce = announce  #: an election's lock: its release is announced
        self.key = key
        self.value = value  #: the exact value stored in Redis for this lock
        self.expiration = expiration  #: lease length in seconds, reused by refresh
        self.fencing_token = token  #: strictly larger for every new acquisition of `key`
        #: monotonic time from which the lease is counted: the start of the request that
        #: acquired it (a hand-over: of the attempt that queued it, which came earlier)
        self.acquired_at = started
        #: monotonic time the caller learnt it holds the lock (a hand-over: the message)
        self.began_at = started if began is None else began
        #: monotonic time until which the lease is certainly ours: measured from the
        #: *start* of the last successful acquire/refresh request, never its end.
        self.valid_until = started + expiration

    @property
    def px(self) -> int:
        return check_expiration(self.expiration)

    def _proved(self, started: float) -> None:
        self.valid_until = started + self.expiration

    def is_valid(self) -> bool:
        """True while the last proof of ownership is younger than the expiration."""
        return time.monotonic() < self.valid_until

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} key={self.key!r} token={self.fencing_token} "
            f"expiration={self.expiration}>"
        )


def auto_refresh_interval(expiration: float, interval: float | None) -> float:
    if interval is None:
        return expiration / 3.0
    if not (isinstance(interval, int | float) and 0 < interval < expiration):
        raise ValueError(
            f"auto_refresh interval must be > 0 and < the expiration ({expiration}s), "
            f"got {interval!r}"
        )
    return float(interval)


# -- the acquisition algorithm, without I/O ----------------------------------------------
# `lock()` in both clients drives the same generator: it yields what to do next (one
# acquire attempt, start listening for releases, or wait) and is sent the outcome, so
# the retry, wait and hand-over logic exists once; the clients only do the I/O.


@dataclass(frozen=True, slots=True)
class Attempt:
    """Make one acquire attempt, queued as a waiter for `wait_ms` (0: not queued)."""

    wait_ms: int


@dataclass(frozen=True, slots=True)
class Listen:
    """Subscribe to release announcements; send back True if the subscription holds."""


@dataclass(frozen=True, slots=True)
class Confirm:
    """A release handed us the lock (says a message): confirm it with Redis, extending
    the claim to our lease; send back the outcome as for an `Attempt`."""


@dataclass(frozen=True, slots=True)
class Sleep:
    """Wait until monotonic `until`, or until a release announcement arrives."""

    until: float


LockStep = Attempt | Listen | Confirm | Sleep
#: What an attempt yields back: the result, or the transient/failover error it met.
AttemptOutcome = tuple[AcquireResult | None, Exception | None]


def lock_flow(
    plan: RetryPlan, on_attempt: AttemptHook | None, listening: bool = False
) -> Generator[LockStep, Any, tuple[AcquireResult, float]]:
    """The steps of `lock()`: returns the winning result and the monotonic time from
    which its lease is certainly counted (the start of the attempt that won).

    `listening`: the caller's subscription for this key exists already (an earlier
    `lock()` made it), so even its first attempt queues it. A `Sleep` ends early when a
    release hands the lock to this call (it is sent back the message's token, else
    None). After a hand-over comes a `Confirm`: it finds our value (written by the
    release before it told us), extends the claim to our lease and reads the token
    from Redis, so a forged or stale message never makes a holder; if it does not
    find our value the flow goes on with attempts (a failed confirmation is not an
    attempt). Raises `MaxRetryError` (from `plan`) when the strategy gives up.
    """
    while True:
        started = time.monotonic()
        outcome: AttemptOutcome = yield Attempt(plan.wait_ms(started, listening))
        result, error = outcome
        if on_attempt is not None:
            on_attempt(result, error)
        if result is not None and result.acquired:
            return result, started
        if plan.failed(started, result, error) and not listening and error is None:
            listening = True
            if (yield Listen()):
                continue  # a release may have slipped in before we listened
        if (yield Sleep(plan.wake_at())) is not None:
            started = time.monotonic()
            result, error = yield Confirm()
            if result is not None and result.acquired:
                if on_attempt is not None:
                    on_attempt(result, error)
                return result, started


def classify_attempt_error(exc: Exception) -> Exception:
    """An error an attempt may meet and `lock()` retries (returned), or re-raise it.

    Transport errors and failover replies (READONLY from a demoted primary, …) are
    retried; anything else (a key of the wrong type, an ACL refusal) is raised.
    """
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
        return exc
    if isinstance(exc, redis.ResponseError) and is_failover_error(exc):
        return exc
    raise exc


def won(result: AcquireResult, key: str, fallback_value: str) -> tuple[str, int]:
    """(stored value, token) of an acquired result; `FailedToPreemptLockError` if not."""
    if not result.acquired:
        raise FailedToPreemptLockError(key, result.holder, result.ttl)
    return result.value or fallback_value, result.token or 0


def lock_arguments(
    key: str, value: str | None, expiration: float, timeout: float | None, embed_token: bool
) -> tuple[int, str, float | None]:
    """Validate the arguments shared by `try_lock` and `lock`: (px, value, timeout)."""
    check_key(key)
    return check_expiration(expiration), check_value(value, embed_token), check_timeout(timeout)


def check_refreshed(ok: object, key: str, operation: str) -> None:
    """A refresh or release script's reply: `LockNotHeldError` unless it acted."""
    if not int(ok):  # type: ignore[call-overload]
        raise LockNotHeldError(key, operation)


def check_max_retry(max_retry: int) -> int:
    if max_retry < 0:
        raise ValueError(f"max_retry must be >= 0, got {max_retry!r}")
    return max_retry


def refresh_failed(key: str, attempt: int, max_retry: int, exc: BaseException) -> None:
    """An auto-refresh attempt timed out or could not connect: retry at once, or give up
    with `MaxRetryError` after `max_retry` retries."""
    if attempt >= max_retry:
        raise MaxRetryError(key, attempt + 1, None) from exc


# -- one script call, optionally followed by WAIT on the same connection -----------------
def wait_budget_ms(timeout: float | None) -> int:
    """WAIT's own timeout: most of the call's budget, minus Redis's timer granularity
    (its timeouts fire up to ~100 ms late at hz 10), so that it answers in time."""
    return max(1, round((timeout if timeout is not None else 1.0) * 750) - 120)


def script_commands(
    verb: str, body: str, keys: list[str], args: list[str], min_replicas: int, wait_ms: int
) -> list[tuple[Any, ...]]:
    """EVALSHA/EVAL, and WAIT pipelined after it when replicas must acknowledge."""
    commands: list[tuple[Any, ...]] = [(verb, body, len(keys), *keys, *args)]
    if wait_ms:
        commands.append(("WAIT", min_replicas, wait_ms))
    return commands


def rebudget(commands: list[tuple[Any, ...]], left: float | None) -> list[tuple[Any, ...]]:
    """A follow-up round of a script call (after loading the library, or EVAL after
    EVALSHA): WAIT gets what is left of the call's budget, and a spent budget is a
    timeout before anything is sent."""
    if left is None:
        return commands
    if left <= 0:
        raise redis.TimeoutError("the call's time ran out before its script could run")
    return [("WAIT", c[1], wait_budget_ms(left)) if c[0] == "WAIT" else c for c in commands]


def script_reply(replies: list[Any], key: str, min_replicas: int, wait_ms: int) -> Any:
    """The script's reply; its error, or `NotReplicatedError` if too few replicas acked."""
    if isinstance(replies[0], Exception):
        raise replies[0]
    if wait_ms:
        acked = replies[1]
        if isinstance(acked, Exception):
            raise acked
        if int(acked) < min_replicas:
            raise NotReplicatedError(key, min_replicas, int(acked))
    return replies[0]


def check_min_replicas(min_replicas: int) -> int:
    if min_replicas < 0:
        raise ValueError(f"min_replicas must be >= 0, got {min_replicas!r}")
    return min_replicas


# -- refresh and release: arguments and replies, shared by both lock classes -------------
def refresh_args(lock: LockBase) -> tuple[Script, list[str], list[str]]:
    return REFRESH, [lock.key], [lock.value, str(lock.px)]


def release_call(lock: LockBase, to: str | None = None) -> tuple[Script, list[str], list[str]]:
    keys, args = release_args(lock.key, lock.value, to, lock.announce)
    return RELEASE, keys, args


def refreshed(lock: LockBase, ok: object, started: float) -> None:
    """Record a refresh's reply: proved from `started`, or `LockNotHeldError`."""
    check_refreshed(ok, lock.key, "refresh")
    lock._proved(started)


def released(lock: LockBase, ok: object) -> None:
    """Record a release's reply: never valid again; `LockNotHeldError` if not ours."""
    lock.valid_until = float("-inf")
    check_refreshed(ok, lock.key, "unlock")


class RefresherBase:
    """Settings and outcome of an auto-refresher; the sync and asyncio ones add the loop."""

    def __init__(
        self,
        lock: LockBase,
        interval: float,
        timeout: float | None,
        max_retry: int,
        on_failure: Callable[[BaseException], None] | None,
    ) -> None:
        self.lock = lock
        self.interval = interval
        self.timeout = timeout
        self.max_retry = check_max_retry(max_retry)
        self.error: BaseException | None = None
        self._on_failure = on_failure

    def _failed(self, exc: BaseException) -> None:
        self.error = exc
        if self._on_failure is not None:
            self._on_failure(exc)
