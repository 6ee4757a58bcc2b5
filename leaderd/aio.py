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

from . import _core
from ._core import AcquireResult, AttemptHook, LockBase, Script
from .errors import FailedToPreemptLockError, LockError, LockNotHeldError, MaxRetryError
from .lock import DEFAULT_RETRY, TRANSIENT
from .strategy import RetryStrategy


class AsyncLockClient:
    """Acquires locks on one Redis through a `redis.asyncio.Redis` client."""

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self.redis = client

    # -- I/O -------------------------------------------------------------------------
    async def _eval(
        self, script: Script, keys: list[str], args: list[str], timeout: float | None
    ) -> Any:
        async with asyncio.timeout(timeout):
            return await self._eval_unbounded(script, keys, args)

    async def _eval_unbounded(self, script: Script, keys: list[str], args: list[str]) -> Any:
        pool = getattr(self.redis, "connection_pool", None)
        if pool is None or getattr(self.redis, "connection", None) is not None:
            try:
                return await self.redis.evalsha(script.sha, len(keys), *keys, *args)
            except redis.ResponseError as exc:
                if not _core.is_noscript(exc):
                    raise
                return await self.redis.eval(script.source, len(keys), *keys, *args)
        conn = await pool.get_connection()
        try:
            try:
                await conn.send_command("EVALSHA", script.sha, len(keys), *keys, *args)
            except redis.ConnectionError:
                # A pooled socket that died while idle: the command was not sent.
                await conn.disconnect()
                await conn.send_command("EVALSHA", script.sha, len(keys), *keys, *args)
            try:
                return await conn.read_response()
            except redis.ResponseError as exc:
                if not _core.is_noscript(exc):
                    raise
            await conn.send_command("EVAL", script.source, len(keys), *keys, *args)
            return await conn.read_response()
        except redis.ResponseError:
            raise
        except BaseException:
            # Cancelled or timed out mid-reply: the socket may hold a partial answer.
            with contextlib.suppress(Exception):
                await conn.disconnect()
            raise
        finally:
            await pool.release(conn)

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
        elif left > 0:
            await asyncio.sleep(left)

    async def get_holder(
        self, key: str, timeout: float | None = 1.0
    ) -> tuple[str | None, float | None]:
        """The value stored under `key` and its remaining lease in seconds (None if free)."""
        async with asyncio.timeout(timeout):
            pipe = self.redis.pipeline(transaction=False)
            pipe.get(key)
            pipe.pttl(key)
            value, pttl = await pipe.execute()
        if value is None:
            return None, None
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
        return text, (pttl / 1000.0 if pttl >= 0 else None)


class _AsyncWaiter:
    """A release-channel subscription used only while `lock()` waits for a holder."""

    def __init__(self, pubsub: Any) -> None:
        self.pubsub = pubsub
        self.subscribed = False

    @classmethod
    async def start(
        cls, client: redis.asyncio.Redis, channels: list[str], timeout: float | None
    ) -> _AsyncWaiter:
        self = cls(client.pubsub(ignore_subscribe_messages=False))
        try:
            async with asyncio.timeout(timeout or 1.0):
                await self.pubsub.subscribe(*channels)
                confirmed = 0
                while confirmed < len(channels):
                    msg = await self.pubsub.get_message(timeout=1.0)
                    if msg and msg.get("type") in ("subscribe", b"subscribe"):
                        confirmed += 1
                self.subscribed = True
        except (*TRANSIENT, TimeoutError):
            await self.close()
        return self

    async def wait(self, seconds: float) -> bool:
        """Wait up to `seconds`; True if a release woke us."""
        deadline = time.monotonic() + max(0.0, seconds)
        try:
            while (left := deadline - time.monotonic()) > 0:
                msg = await self.pubsub.get_message(timeout=left)
                if msg and msg.get("type") in ("message", b"message"):
                    return True
            return False
        except TRANSIENT:
            self.subscribed = False
            await asyncio.sleep(max(0.0, deadline - time.monotonic()))
            return False

    async def close(self) -> None:
        self.subscribed = False
        with contextlib.suppress(Exception):
            await self.pubsub.aclose()


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
