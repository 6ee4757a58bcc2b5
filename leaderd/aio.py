"""The asyncio lock client: the same scripts and semantics as `LockClient`, awaited.

Every call is bounded by `asyncio.timeout`; a call cut off mid-reply drops its
connection so a half-read reply can never be mistaken for the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from types import TracebackType
from typing import Any

import redis
import redis.asyncio

from . import _core, _wire
from ._core import AcquireResult, AttemptHook, LockBase, Script
from .errors import (
    FailedToPreemptLockError,
    LockError,
    LockNotHeldError,
    MaxRetryError,
    NotReplicatedError,
)
from .lock import DEFAULT_RETRY, TRANSIENT
from .strategy import RetryStrategy


class AsyncLockClient:
    """Acquires locks on one Redis through a `redis.asyncio.Redis` client."""

    def __init__(self, client: redis.asyncio.Redis, *, min_replicas: int = 0) -> None:
        """`min_replicas` > 0: every acquire and refresh also waits (WAIT, pipelined on
        the same connection, within the call's timeout) until that many replicas have
        the write, else it fails with `NotReplicatedError`."""
        if min_replicas < 0:
            raise ValueError(f"min_replicas must be >= 0, got {min_replicas!r}")
        self.redis = client
        self.min_replicas = min_replicas

    # -- I/O -------------------------------------------------------------------------
    async def _eval(
        self, script: Script, keys: list[str], args: list[str], timeout: float | None
    ) -> Any:
        """Run a script within `timeout`, in an inner task.

        The caller only awaits `asyncio.wait`, so its own cancellation always
        propagates (some redis-py versions swallow a cancellation that lands inside
        their I/O); an abandoned call is cancelled and drops its connection.
        """
        wait_ms = 0
        if self.min_replicas and script is not _core.RELEASE:
            # WAIT gets most of the budget, minus Redis's timer granularity (its
            # timeouts fire up to ~100 ms late at hz 10), so it answers in time.
            wait_ms = max(1, round((timeout if timeout is not None else 1.0) * 750) - 120)
        call = asyncio.ensure_future(self._eval_unbounded(script, keys, args, wait_ms))
        call.add_done_callback(_retrieve)
        try:
            done, _ = await asyncio.wait({call}, timeout=timeout)
        except BaseException:
            call.cancel()
            raise
        if not done:
            call.cancel()
            raise TimeoutError(f"{script.name} did not answer within {timeout}s")
        return call.result()

    async def _eval_unbounded(
        self, script: Script, keys: list[str], args: list[str], wait_ms: int = 0
    ) -> Any:
        pool = getattr(self.redis, "connection_pool", None)
        if pool is None or getattr(self.redis, "connection", None) is not None:
            client: Any = self.redis  # redis-py types these as sync-or-async
            try:
                return await client.evalsha(script.sha, len(keys), *keys, *args)
            except redis.ResponseError as exc:
                if not _core.is_noscript(exc):
                    raise
                return await client.eval(script.source, len(keys), *keys, *args)
        conn = await pool.get_connection()
        try:
            replies = await self._roundtrip(conn, "EVALSHA", script.sha, keys, args, wait_ms)
            if isinstance(replies[0], redis.ResponseError) and _core.is_noscript(replies[0]):
                replies = await self._roundtrip(conn, "EVAL", script.source, keys, args, wait_ms)
            if isinstance(replies[0], Exception):
                raise replies[0]
            if wait_ms:
                acked = replies[1]
                if isinstance(acked, Exception):
                    raise acked
                if int(acked) < self.min_replicas:
                    raise NotReplicatedError(keys[0], self.min_replicas, int(acked))
            return replies[0]
        except redis.ResponseError:
            raise
        except BaseException:
            # Cancelled or timed out mid-reply: the socket may hold a partial answer.
            with contextlib.suppress(Exception):
                await conn.disconnect()
            raise
        finally:
            await pool.release(conn)

    async def _roundtrip(
        self, conn: Any, verb: str, body: str, keys: list[str], args: list[str], wait_ms: int
    ) -> list[Any]:
        """Send the script call (and WAIT, pipelined) and read every reply."""
        commands: list[tuple[Any, ...]] = [(verb, body, len(keys), *keys, *args)]
        if wait_ms:
            commands.append(("WAIT", self.min_replicas, wait_ms))
        await _wire.asend(conn, commands)
        return await _wire.aread_all(conn, len(commands))

    async def _acquire(
        self,
        key: str,
        value: str,
        px: int,
        timeout: float | None,
        embed_token: bool,
        wait_ms: int = 0,
    ) -> AcquireResult:
        keys, args = _core.acquire_args(key, value, px, embed_token, wait_ms)
        try:
            return _core.parse_acquire(await self._eval(_core.ACQUIRE, keys, args, timeout))
        except redis.ResponseError as exc:
            raise _core.map_response_error(exc, key) from exc
        except TimeoutError as exc:
            raise redis.TimeoutError(f"acquire of {key!r} timed out after {timeout}s") from exc

    # -- API -------------------------------------------------------------------------
    async def try_lock(
        self,
        key: str,
        value: str | None = None,
        expiration: float = 10.0,
        timeout: float | None = 1.0,
        *,
        embed_token: bool = False,
    ) -> AsyncLock:
        """Acquire `key` in one attempt or raise `FailedToPreemptLockError`."""
        _core.check_key(key)
        px = _core.check_expiration(expiration)
        value = _core.check_value(value, embed_token)
        timeout = _core.check_timeout(timeout)
        started = time.monotonic()
        result = await self._acquire(key, value, px, timeout, embed_token)
        if not result.acquired:
            raise FailedToPreemptLockError(key, result.holder, result.ttl)
        return AsyncLock(self, key, result.value or value, expiration, result.token or 0, started)

    async def lock(
        self,
        key: str,
        value: str | None = None,
        expiration: float = 10.0,
        timeout: float | None = 1.0,
        retry: RetryStrategy | None = None,
        *,
        embed_token: bool = False,
        on_attempt: AttemptHook | None = None,
    ) -> AsyncLock:
        """Acquire `key`, retrying under `retry`; see `LockClient.lock` for the semantics."""
        _core.check_key(key)
        px = _core.check_expiration(expiration)
        value = _core.check_value(value, embed_token)
        timeout = _core.check_timeout(timeout)
        plan = _core.RetryPlan(key, retry if retry is not None else DEFAULT_RETRY)
        waiter: _AsyncWaiter | None = None
        try:
            while True:
                started = time.monotonic()
                result: AcquireResult | None = None
                error: Exception | None = None
                try:
                    result = await self._acquire(
                        key, value, px, timeout, embed_token, plan.wait_ms(started)
                    )
                except TRANSIENT as exc:
                    error = exc
                except redis.ResponseError as exc:
                    if not _core.is_failover_error(exc):
                        raise
                    error = exc  # e.g. READONLY from a demoted primary: retry
                if on_attempt is not None:
                    on_attempt(result, error)
                if result is not None and result.acquired:
                    return AsyncLock(
                        self, key, result.value or value, expiration, result.token or 0, started
                    )
                if plan.failed(started, result, error) and waiter is None and error is None:
                    waiter = await _AsyncWaiter.start(
                        self.redis, _core.waiter_channels(key, value), timeout
                    )
                    if waiter.subscribed:
                        continue  # a release may have slipped in before we listened
                await self._wait(plan.wake_at(), waiter)
        finally:
            if waiter is not None:
                await waiter.close()

    @staticmethod
    async def _wait(wake_at: float, waiter: _AsyncWaiter | None) -> None:
        """Sleep until `wake_at`, or until a release hands the lock to us (or to anyone)."""
        left = wake_at - time.monotonic()
        if waiter is not None and waiter.subscribed:
            await waiter.wait(left)
        if left > 0 and (waiter is None or not waiter.subscribed):
            await asyncio.sleep(max(0.0, wake_at - time.monotonic()))

    async def get_holder(
        self, key: str, timeout: float | None = 1.0
    ) -> tuple[str | None, float | None]:
        """The value stored under `key` and its remaining lease in seconds (None if free)."""
        async with asyncio.timeout(timeout):
            pipe = self.redis.pipeline(transaction=False)
            pipe.get(key)
            pipe.pttl(key)
            value, pttl = await pipe.execute()
        return _core.parse_holder(value, pttl)


async def _noop() -> None:
    return None


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Mark an abandoned call's outcome as seen, so asyncio does not log it."""
    if not task.cancelled():
        task.exception()


class _AsyncWaiter:
    """A release-channel subscription used only while `lock()` waits for a holder.

    A reader task owns the pub/sub connection and turns messages into a future; the
    waiting caller only ever awaits that future. redis-py's pub/sub reads with a
    timeout can swallow a cancellation that lands at the wrong moment, so the
    caller's own cancellation never passes through them.
    """

    def __init__(self, pubsub: Any, channels: list[str]) -> None:
        self.pubsub = pubsub
        self.channels = channels
        self.subscribed = False
        loop = asyncio.get_running_loop()
        self._confirmed: asyncio.Future[bool] = loop.create_future()
        self._message: asyncio.Future[None] = loop.create_future()
        self._reader = asyncio.ensure_future(self._read() if pubsub is not None else _noop())

    @classmethod
    async def start(
        cls, client: redis.asyncio.Redis, channels: list[str], timeout: float | None
    ) -> _AsyncWaiter:
        make_pubsub = getattr(client, "pubsub", None)
        if make_pubsub is None:  # redis.asyncio.RedisCluster has no pub/sub: poll
            self = cls(None, channels)
            await self.close()
            return self
        self = cls(make_pubsub(ignore_subscribe_messages=False), channels)
        try:
            await asyncio.wait({self._confirmed}, timeout=timeout or 1.0)
        except BaseException:
            self._reader.cancel()
            raise
        self.subscribed = self._confirmed.done() and self._confirmed.result()
        if not self.subscribed:
            await self.close()
        return self

    async def _read(self) -> None:
        confirmed = 0
        try:
            await self.pubsub.subscribe(*self.channels)
            while True:
                # A finite read timeout: some redis-py versions apply the client's
                # socket_timeout to blocking reads and raise when it passes.
                msg = await self.pubsub.get_message(timeout=30.0)
                kind = msg.get("type") if msg else None
                if kind in ("subscribe", b"subscribe"):
                    confirmed += 1
                    if confirmed == len(self.channels) and not self._confirmed.done():
                        self._confirmed.set_result(True)
                elif kind in ("message", b"message") and not self._message.done():
                    self._message.set_result(None)
        except Exception:
            pass  # the caller falls back to plain sleeping
        finally:
            self.subscribed = False
            if not self._confirmed.done():
                self._confirmed.set_result(False)
            with contextlib.suppress(Exception):
                await self.pubsub.aclose()

    async def wait(self, seconds: float) -> bool:
        """Wait up to `seconds`; True if a release woke us."""
        if not self._message.done():
            await asyncio.wait(
                {self._message, self._reader},
                timeout=max(0.0, seconds),
                return_when=asyncio.FIRST_COMPLETED,
            )
        if not self._message.done():
            return False
        self._message = asyncio.get_running_loop().create_future()
        return True

    async def close(self) -> None:
        """Stop the reader, which closes the pub/sub connection itself."""
        self.subscribed = False
        self._reader.cancel()
        await asyncio.wait({self._reader}, timeout=1.0)


class AsyncLock(LockBase):
    """A held lock. `async with` releases it on exit."""

    __slots__ = ("_client",)

    def __init__(
        self,
        client: AsyncLockClient,
        key: str,
        value: str,
        expiration: float,
        token: int,
        started: float,
    ) -> None:
        super().__init__(key, value, expiration, token, started)
        self._client = client

    async def refresh(self, timeout: float | None = 1.0) -> None:
        """Extend the lease to `expiration` again; `LockNotHeldError` if it is not ours."""
        started = time.monotonic()
        timeout = _core.check_timeout(timeout)
        try:
            ok = await self._client._eval(
                _core.REFRESH, [self.key], [self.value, str(self.px)], timeout
            )
        except redis.ResponseError as exc:
            raise _core.map_response_error(exc, self.key) from exc
        except TimeoutError as exc:
            raise redis.TimeoutError(f"refresh of {self.key!r} timed out after {timeout}s") from exc
        if not int(ok):
            raise LockNotHeldError(self.key, "refresh")
        self._proved(started)

    async def unlock(self, timeout: float | None = 1.0) -> None:
        """Release the lock and wake waiters; `LockNotHeldError` if it is not ours."""
        timeout = _core.check_timeout(timeout)
        try:
            keys, args = _core.release_args(self.key, self.value)
            ok = await self._client._eval(_core.RELEASE, keys, args, timeout)
        except redis.ResponseError as exc:
            raise _core.map_response_error(exc, self.key) from exc
        except TimeoutError as exc:
            raise redis.TimeoutError(f"unlock of {self.key!r} timed out after {timeout}s") from exc
        self.valid_until = float("-inf")
        if not int(ok):
            raise LockNotHeldError(self.key, "unlock")

    def is_valid(self) -> bool:
        """True while the last proof of ownership is younger than the expiration."""
        return time.monotonic() < self.valid_until

    def auto_refresh(
        self, interval: float | None = None, timeout: float | None = 1.0, max_retry: int = 3
    ) -> asyncio.Task[None]:
        """Refresh every `interval` (default expiration/3) until the task is cancelled.

        A refresh that times out (or cannot connect) is retried at once up to
        `max_retry` times; the task ends with `LockNotHeldError` or `MaxRetryError`.
        """
        every = _core.auto_refresh_interval(self.expiration, interval)
        if max_retry < 0:
            raise ValueError(f"max_retry must be >= 0, got {max_retry!r}")
        return asyncio.create_task(
            self._auto_refresh(every, timeout, max_retry), name=f"leaderd-refresh:{self.key}"
        )

    async def _auto_refresh(self, interval: float, timeout: float | None, max_retry: int) -> None:
        while True:
            await asyncio.sleep(interval)
            for attempt in range(max_retry + 1):
                try:
                    await self.refresh(timeout)
                    break
                except TRANSIENT as exc:
                    if attempt == max_retry:
                        raise MaxRetryError(self.key, attempt + 1, None) from exc

    async def __aenter__(self) -> AsyncLock:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self.unlock()
        except LockError:
            if exc is None:
                raise
