"""The synchronous lock client: one Redis round trip per acquire, refresh and release.

Scripts run over a pooled connection with a per-call read timeout, so a slow Redis
costs at most `timeout` seconds per attempt and never blocks a caller forever.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from types import TracebackType
from typing import Any

import redis

from . import _core, _wire, functions
from ._core import AcquireResult, AttemptHook, LockBase, Script
from .errors import LockError
from .strategy import RetryStrategy

#: Per thread, subscriptions kept for this many keys (the least recently used closes).
MAX_LISTENERS = 16
#: Numbers the `lock()` calls of this process (part of a waiter's queue entry).
_CALLS = itertools.count(1)

DEFAULT_RETRY, TRANSIENT = _core.DEFAULT_RETRY, _core.TRANSIENT


class LockClient:
    """Acquires locks on one Redis (a `redis.Redis`, possibly with decode_responses)."""

    def __init__(
        self, client: redis.Redis, *, min_replicas: int = 0, scripts: str = "auto"
    ) -> None:
        """`min_replicas` > 0: every acquire and refresh also waits (WAIT, pipelined on
        the same connection, within the call's timeout) until that many replicas have
        the write, else it fails with `NotReplicatedError`.

        `scripts`: "auto" calls leaderd's Redis Functions library (FCALL), loading it if
        it is missing and the user may, else runs EVAL if the user may; "functions" only
        FCALL; "eval" only EVAL (Redis 6.2). See `leaderd.functions`."""
        self.redis = client
        self.min_replicas = _core.check_min_replicas(min_replicas)
        self.scripts = functions.ScriptRunner(scripts)
        # Our own few connections, built from the client's pool settings, so that
        # connecting is bounded by the call's timeout too (a redis-py pool connects
        # inside get_connection(), under its own timeouts and retries).
        self._idle: list[Any] = []
        self._mutex = threading.Lock()
        self._pid = os.getpid()
        # Each thread's subscriptions, one per key it waited on, kept between lock()
        # calls: a returning waiter listens already, so it queues at its first attempt.
        self._local = threading.local()
        self._listeners: list[_Waiter] = []

    # -- I/O -------------------------------------------------------------------------
    def _checkout(self, timeout: float | None) -> Any:
        """An idle connection of ours, or a new one that connects within `timeout`."""
        with self._mutex:
            if self._pid != os.getpid():  # forked: never share a parent's sockets
                self._idle.clear()
                self._pid = os.getpid()
            while self._idle:
                conn = self._idle.pop()
                if not _wire.is_stale(conn):
                    return conn
                conn.disconnect()
        conn = _wire.new_connection(self.redis.connection_pool, timeout)
        conn.connect()
        return conn

    def _checkin(self, conn: Any) -> None:
        with self._mutex:
            if self._pid == os.getpid() and len(self._idle) < 32:
                self._idle.append(conn)
                return
        conn.disconnect()

    def close(self) -> None:
        """Close the connections this client opened (the redis client is left open)."""
        with self._mutex:
            idle, self._idle = self._idle, []
            listeners, self._listeners = self._listeners, []
        for conn in idle:
            conn.disconnect()
        for listener in listeners:
            listener.close()

    def _listener(
        self, key: str, timeout: float | None, create: bool, listener_id: str | None = None
    ) -> _Waiter | None:
        """This thread's live subscription for `key`'s hand-overs (made if `create`,
        under `listener_id` if given: a broken one resumes, its queue entries stay
        valid)."""
        mine: OrderedDict[str, _Waiter] | None = getattr(self._local, "listeners", None)
        if mine is None or getattr(self._local, "pid", None) != os.getpid():
            mine = self._local.listeners = OrderedDict()
            self._local.pid = os.getpid()
        listener = mine.get(key)
        if listener is not None and listener.subscribed:
            mine.move_to_end(key)
            return listener
        if listener is not None:
            listener.close()
            del mine[key]
        if not create:
            return None
        listener = _Waiter(self.redis, key, timeout, listener_id)
        if not listener.subscribed:
            listener.close()  # a subscription that may still come must not outlive this
            return None
        mine[key] = listener
        with self._mutex:
            self._listeners.append(listener)
            if len(mine) > MAX_LISTENERS:
                _, oldest = mine.popitem(last=False)
                self._listeners.remove(oldest)
                oldest.close()
        return listener

    def _drop_listener(self, key: str) -> None:
        """Close this thread's subscription for `key`; its queue entries become unhandable."""
        mine: OrderedDict[str, _Waiter] | None = getattr(self._local, "listeners", None)
        listener = None if mine is None else mine.pop(key, None)
        if listener is None:
            return
        with self._mutex:
            if listener in self._listeners:
                self._listeners.remove(listener)
        listener.close()

    def _eval(self, script: Script, keys: list[str], args: list[str], timeout: float | None) -> Any:
        """Run `script` (FCALL or EVAL, as `self.scripts` chose) in one round trip, with
        WAIT pipelined after it if replicas must acknowledge."""
        pool = getattr(self.redis, "connection_pool", None)
        if pool is None or getattr(self.redis, "connection", None) is not None:
            flow = self.scripts.flow(script, keys, args, 0, 0)
            return _core.script_reply(
                functions.run_flow(flow, functions.client_roundtrip(self.redis, keys[0])),
                keys[0], 0, 0,
            )  # fmt: skip
        wait_ms = 0
        if self.min_replicas and script is not _core.RELEASE:
            wait_ms = _core.wait_budget_ms(timeout)
        runner, replicas = self.scripts, self.min_replicas
        sent = runner.first(script, keys, args, replicas, wait_ms)
        conn = self._checkout(timeout)
        in_sync = False
        try:
            started = time.monotonic()
            replies = _wire.roundtrip(conn, sent, timeout)
            in_sync = True
            rest = runner.rest(script, keys, args, replicas, wait_ms, sent, replies)
            if rest is not None:  # rare: the library is missing, or EVAL must follow

                def more(commands: list[functions.Command]) -> list[Any]:
                    nonlocal in_sync
                    left = None if timeout is None else started + timeout - time.monotonic()
                    commands = _core.rebudget(commands, left)
                    in_sync = False
                    more_replies = _wire.roundtrip(conn, commands, left)
                    in_sync = True
                    return more_replies

                replies = functions.run_flow(rest, more)
            return _core.script_reply(replies, keys[0], self.min_replicas, wait_ms)
        finally:
            if in_sync:
                self._checkin(conn)
            else:  # timed out or broken: a reply may still be on its way
                conn.disconnect()

    def _run(self, commands: list[functions.Command], timeout: float | None) -> list[Any]:
        """Send `commands` in one write on one of our connections and read every reply
        within `timeout`; a connection is reused only if every reply was read."""
        conn = self._checkout(timeout)
        in_sync = False
        try:
            replies = _wire.roundtrip(conn, commands, timeout)
            in_sync = True
            return replies
        finally:
            if in_sync:
                self._checkin(conn)
            else:  # timed out or broken: a reply may still be on its way
                conn.disconnect()

    def _acquire(
        self,
        key: str,
        value: str,
        px: int,
        timeout: float | None,
        embed: bool,
        wait_ms: int = 0,
        priority: int = 0,
        member: str = "",
    ) -> AcquireResult:
        keys, args = _core.acquire_args(key, value, px, embed, wait_ms, priority, member)
        return self._attempt(_core.ACQUIRE, keys, args, timeout)

    def _confirm(
        self, key: str, value: str, px: int, timeout: float | None, embed: bool
    ) -> AcquireResult:
        keys, args = _core.confirm_args(key, value, px, embed)
        return self._attempt(_core.CONFIRM, keys, args, timeout)

    def _attempt(
        self, script: Script, keys: list[str], args: list[str], timeout: float | None
    ) -> AcquireResult:
        """Run the acquire or confirm script: its result, or a Redis error about the key."""
        try:
            return _core.parse_acquire(self._eval(script, keys, args, timeout))
        except redis.ResponseError as exc:
            raise _core.map_response_error(exc, keys[0]) from exc

    # -- API -------------------------------------------------------------------------
    def try_lock(
        self,
        key: str,
        value: str | None = None,
        expiration: float = 10.0,
        timeout: float | None = 1.0,
        *,
        embed_token: bool = False,
    ) -> Lock:
        """Acquire `key` in one attempt or raise `FailedToPreemptLockError`."""
        px, value, timeout = _core.lock_arguments(key, value, expiration, timeout, embed_token)
        started = time.monotonic()
        stored, token = _core.won(self._acquire(key, value, px, timeout, embed_token), key, value)
        return Lock(self, key, stored, expiration, token, started, embed_token)

    def lock(
        self,
        key: str,
        value: str | None = None,
        expiration: float = 10.0,
        timeout: float | None = 1.0,
        retry: RetryStrategy | None = None,
        *,
        embed_token: bool = False,
        on_attempt: AttemptHook | None = None,
        priority: int = 0,
    ) -> Lock:
        """Acquire `key`, retrying under `retry` (default: every 100 ms, forever).

        Between the strategy's retries a waiter also tries again the moment the holder
        releases (pub/sub) and when the holder's lease runs out. Each attempt is bounded
        by `timeout`; an attempt that timed out but succeeded is recognised by the next.
        Raises `MaxRetryError` when the strategy gives up. `on_attempt(result, error)`
        is called after every attempt (for metrics, or to learn who holds the lock).
        Waiters are served by `priority` (-100..100, highest first), FIFO among equals.
        """
        px, value, timeout = _core.lock_arguments(key, value, expiration, timeout, embed_token)
        priority = _core.check_priority(priority)
        plan = _core.RetryPlan(key, retry if retry is not None else DEFAULT_RETRY)
        waiter = self._listener(key, timeout, create=False)
        listener = waiter.listener if waiter is not None else None  # once we listen
        flow = _core.lock_flow(plan, on_attempt, waiter is not None)
        call = next(_CALLS)  # tells this call's hand-over messages from a late earlier one
        sent: Any = None
        queued = ""  # our queue entry, if an attempt queued us
        try:
            while True:
                try:
                    step = flow.send(sent)
                except StopIteration as done:
                    result, started = done.value
                    stored, token = _core.won(result, key, value)
                    queued = ""  # the winning attempt (or the hand-over) left the queue
                    return Lock(self, key, stored, expiration, token, started, embed_token)
                if isinstance(step, _core.Attempt):
                    member = queued  # queued earlier: a win takes the entry out
                    if waiter is not None and step.wait_ms:
                        member = queued = _core.queue_member(
                            waiter.listener, call, px, embed_token, value)  # fmt: skip
                    try:
                        listening = waiter is not None and waiter.subscribed
                        sent = (self._acquire(key, value, px, timeout, embed_token,
                                              step.wait_ms if listening else 0, priority,
                                              member), None)  # fmt: skip
                    except redis.RedisError as exc:
                        sent = (None, _core.classify_attempt_error(exc))
                elif isinstance(step, _core.Confirm):
                    try:
                        sent = (self._confirm(key, value, px, timeout, embed_token), None)
                    except redis.RedisError as exc:
                        sent = (None, _core.classify_attempt_error(exc))
                elif isinstance(step, _core.Listen):
                    waiter = self._listener(key, timeout, create=True)
                    sent = waiter is not None
                    listener = waiter.listener if waiter is not None else None
                else:
                    until = step.until
                    if listener is not None and (waiter is None or not waiter.subscribed):
                        # the connection broke: listen again under the same id, so the
                        # queue entry stays valid; until that works, attempt every second
                        waiter = self._listener(key, timeout, create=True, listener_id=listener)
                        if waiter is None:
                            until = min(until, time.monotonic() + _core.RELISTEN_SECONDS)
                        else:  # listening again: attempt at once (a release while nobody
                            sent = None  # listened dropped our entry and told us nothing)
                            continue
                    sent = self._wait(until, waiter, queued)
        finally:
            if queued:  # gave up (or was interrupted) while queued: leave the queue
                try:
                    self._leave(key, queued, timeout)
                except Exception:
                    # Redis did not answer (paused, unreachable): stop listening, so
                    # that a release finds no subscriber on our channel (PUBSUB NUMSUB)
                    # and skips the entry instead of handing the lock to nobody
                    self._drop_listener(key)

    @staticmethod
    def _wait(wake_at: float, waiter: _Waiter | None, member: str) -> int | None:
        """Sleep until `wake_at`, or until a release wakes us; the token if it handed
        the lock to `member`."""
        left = wake_at - time.monotonic()
        if waiter is not None and waiter.subscribed:
            return waiter.wait(left, member)
        if left > 0:
            time.sleep(left)
        return None

    def get_holder(self, key: str, timeout: float | None = 1.0) -> tuple[str | None, float | None]:
        """The value stored under `key` and its remaining lease in seconds (None if free)."""
        timeout = _core.check_timeout(timeout)
        pool = getattr(self.redis, "connection_pool", None)
        if pool is None or getattr(self.redis, "connection", None) is not None:
            pipe = self.redis.pipeline(transaction=False)
            pipe.get(key)
            pipe.pttl(key)
            value, pttl = pipe.execute()
            return _core.parse_holder(value, pttl)
        replies = self._run([("GET", key), ("PTTL", key)], timeout)
        return _core.parse_holder(*_raise(replies))

    def _leave(self, key: str, member: str, timeout: float | None) -> None:
        """Leave the queue (a `lock()` that stopped waiting without the lock); a lock
        handed to `member` meanwhile is passed on to the next waiter."""
        keys, args = _core.release_args(key, "", leaving=member)
        self._eval(_core.RELEASE, keys, args, timeout)


def _raise(replies: list[Any]) -> list[Any]:
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return replies


class _Waiter:
    """One thread's subscription to the hand-overs of one key, kept between `lock()`
    calls; queue entries carry its `listener` id, the release script wakes it."""

    def __init__(
        self, client: redis.Redis, key: str, timeout: float | None, listener: str | None = None
    ) -> None:
        self.listener = listener or _core.new_listener_id()
        channels = [_core.waiter_channel(key, self.listener)]
        # Through Any: redis-py 8.2 typed `pubsub()`, earlier majors did not.
        untyped: Any = client
        self.pubsub: redis.client.PubSub = untyped.pubsub(ignore_subscribe_messages=False)
        self.subscribed = False
        try:
            self.pubsub.subscribe(*channels)
            deadline = time.monotonic() + (timeout or 1.0)
            confirmed = 0
            while confirmed < len(channels) and time.monotonic() < deadline:
                msg = self.pubsub.get_message(timeout=max(0.0, deadline - time.monotonic()))
                if msg and msg.get("type") in ("subscribe", b"subscribe"):
                    confirmed += 1
            self.subscribed = confirmed == len(channels)
        except TRANSIENT:
            self.close()

    def wait(self, seconds: float, member: str) -> int | None:
        """Block up to `seconds` for a hand-over to `member`: its token, else None.
        Messages for other entries (a call that gave up as it was handed the lock,
        which passed it on) are skipped."""
        deadline = time.monotonic() + max(0.0, seconds)
        try:
            while True:
                left = deadline - time.monotonic()
                msg = self.pubsub.get_message(timeout=max(0.0, left))
                if msg is not None and msg.get("type") in ("message", b"message"):
                    data = msg.get("data")
                    if isinstance(data, str | bytes) and len(data) <= _core.MAX_MESSAGE_BYTES:
                        text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
                        wake = _core.parse_wake(text)
                        if wake is not None and member and wake[1] == member:
                            return wake[0]
                # the deadline holds whatever arrives: a flood of other messages must not
                # keep a waiter from its next attempt (the holder's expiry, a retry)
                if time.monotonic() >= deadline:
                    return None
        except TRANSIENT:
            self.subscribed = False  # the caller attempts now and listens again
            return None

    def close(self) -> None:
        self.subscribed = False
        try:
            self.pubsub.close()
        except Exception:
            pass


class Lock(LockBase):
    """A held lock. Use as a context manager to release it on exit."""

    __slots__ = ()
    _client: LockClient

    def refresh(self, timeout: float | None = 1.0) -> None:
        """Extend the lease to `expiration` again; `LockNotHeldError` if it is not ours."""
        started = time.monotonic()
        _core.refreshed(self, self._call(_core.refresh_args(self), timeout), started)

    def unlock(self, timeout: float | None = 1.0) -> None:
        """Release the lock and wake waiters; `LockNotHeldError` if it is not ours."""
        _core.released(self, self._call(_core.release_call(self), timeout))

    def _call(self, call: tuple[Script, list[str], list[str]], timeout: float | None) -> Any:
        script, keys, args = call
        try:
            return self._client._eval(script, keys, args, _core.check_timeout(timeout))
        except redis.ResponseError as exc:
            raise _core.map_response_error(exc, self.key) from exc

    def auto_refresh(
        self,
        interval: float | None = None,
        timeout: float | None = 1.0,
        max_retry: int = 3,
        on_failure: Callable[[BaseException], None] | None = None,
    ) -> AutoRefresh:
        """Refresh every `interval` (default expiration/3) in a background thread.

        A refresh that times out (or cannot connect) is retried at once, up to
        `max_retry` times; a lost lock or exhausted retries stop it and are reported
        through the handle's `error`/`wait()` and `on_failure`.
        """
        return AutoRefresh(
            self,
            _core.auto_refresh_interval(self.expiration, interval),
            timeout,
            max_retry,
            on_failure,
        )

    def __enter__(self) -> Lock:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.unlock()
        except LockError:
            if exc is None:
                raise


class AutoRefresh(_core.RefresherBase):
    """Handle of a background refresher: `stop()` it, or `wait()` for its failure."""

    def __init__(
        self,
        lock: Lock,
        interval: float,
        timeout: float | None,
        max_retry: int,
        on_failure: Callable[[BaseException], None] | None,
    ) -> None:
        super().__init__(lock, interval, timeout, max_retry, on_failure)
        self.lock: Lock = lock
        self._stop = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"leaderd-refresh:{lock.key}", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.wait(self.interval):
                self._refresh_once()
        except BaseException as exc:
            self._failed(exc)
        finally:
            self._done.set()

    def _refresh_once(self) -> None:
        for attempt in range(self.max_retry + 1):
            if self._stop.is_set():
                return
            try:
                self.lock.refresh(self.timeout)
                return
            except TRANSIENT as exc:
                _core.refresh_failed(self.lock.key, attempt, self.max_retry, exc)

    @property
    def running(self) -> bool:
        return not self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the refresher ends; True if it ended (check `error`)."""
        return self._done.wait(timeout)

    def stop(self, timeout: float | None = None) -> None:
        """Stop refreshing (the lock is kept until it expires or is unlocked)."""
        self._stop.set()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def __enter__(self) -> AutoRefresh:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
