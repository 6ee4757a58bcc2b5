"""The asyncio lock client: the same scripts and semantics as `LockClient`, awaited.

Every call is bounded by `asyncio.timeout`; a call cut off mid-reply drops its
connection so a half-read reply can never be mistaken for the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Awaitable, Callable, Generator
from types import TracebackType
from typing import Any

import redis
import redis.asyncio

from . import _core, _wire, functions
from ._core import DEFAULT_RETRY, TRANSIENT, AcquireResult, AttemptHook, LockBase, Script
from .errors import (
    LockError,
)
from .strategy import RetryStrategy


class AsyncLockClient:
    """Acquires locks on one Redis through a `redis.asyncio.Redis` client."""

    def __init__(
        self, client: redis.asyncio.Redis, *, min_replicas: int = 0, scripts: str = "auto"
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
        # One pub/sub connection for every wait of this client, its channels kept
        # between lock() calls: a returning waiter listens already, so it queues at its
        # first attempt. Queue entries carry this client's listener id.
        self.subscription = SharedSubscription(client)
        self.listener = _core.new_listener_id()
        self._calls = itertools.count(1)  # numbers lock() calls: part of a queue entry
        #: queue entries of lock() calls that may still be queued -> (key, value)
        self._queued: dict[str, tuple[str, str]] = {}
        self._background: set[asyncio.Future[Any]] = set()

    async def aclose(self) -> None:
        """Let pending queue departures of abandoned `lock()` calls finish (at most 1 s),
        then close the pub/sub connection this client keeps (the redis client stays
        open)."""
        if self._background:
            await asyncio.wait(set(self._background), timeout=1.0)
        pending = set(self._background)  # departures Redis still did not answer:
        for task in pending:  # closing the subscription below makes their entries
            task.cancel()  # unhandable (PUBSUB NUMSUB finds nobody)
        if pending:
            await asyncio.wait(pending, timeout=1.0)
        await self.subscription.close()

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
            wait_ms = _core.wait_budget_ms(timeout)
        return await _bounded(
            self._eval_unbounded(script, keys, args, wait_ms, timeout), timeout, script.name
        )

    async def _eval_unbounded(
        self,
        script: Script,
        keys: list[str],
        args: list[str],
        wait_ms: int = 0,
        timeout: float | None = None,
    ) -> Any:
        pool = getattr(self.redis, "connection_pool", None)
        if pool is None or getattr(self.redis, "connection", None) is not None:
            flow = self.scripts.flow(script, keys, args, 0, 0)
            replies = await functions.arun_flow(
                flow, functions.aclient_roundtrip(self.redis, keys[0])
            )
            return _core.script_reply(replies, keys[0], 0, 0)
        runner, replicas = self.scripts, self.min_replicas
        sent = runner.first(script, keys, args, replicas, wait_ms)
        deadline = None if timeout is None else time.monotonic() + timeout
        conn = await pool.get_connection()
        in_sync = False

        async def roundtrip(commands: list[functions.Command]) -> list[Any]:
            nonlocal in_sync
            if commands is not sent:  # a follow-up round: what is left of the budget
                left = None if deadline is None else deadline - time.monotonic()
                commands = _core.rebudget(commands, left)
            in_sync = False
            await _wire.asend(conn, commands)
            replies = await _wire.aread_all(conn, len(commands))
            in_sync = True
            return replies

        try:
            replies = await roundtrip(sent)
            rest = runner.rest(script, keys, args, replicas, wait_ms, sent, replies)
            if rest is not None:  # rare: the library is missing, or EVAL must follow
                replies = await functions.arun_flow(rest, roundtrip)
            return _core.script_reply(replies, keys[0], replicas, wait_ms)
        finally:
            if not in_sync:
                # Cancelled or timed out mid-reply: the socket may hold a partial answer.
                with contextlib.suppress(Exception):
                    await conn.disconnect()
            await pool.release(conn)

    async def _acquire(
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
        return await self._attempt(_core.ACQUIRE, keys, args, timeout)

    async def _confirm(
        self, key: str, value: str, px: int, timeout: float | None, embed: bool
    ) -> AcquireResult:
        keys, args = _core.confirm_args(key, value, px, embed)
        return await self._attempt(_core.CONFIRM, keys, args, timeout)

    async def _attempt(
        self, script: Script, keys: list[str], args: list[str], timeout: float | None
    ) -> AcquireResult:
        """Run the acquire or confirm script: its result, or a Redis error about the key."""
        try:
            return _core.parse_acquire(await self._eval(script, keys, args, timeout))
        except redis.ResponseError as exc:
            raise _core.map_response_error(exc, keys[0]) from exc
        except TimeoutError as exc:
            raise redis.TimeoutError(
                f"{script.name} of {keys[0]!r} timed out after {timeout}s"
            ) from exc

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
        px, value, timeout = _core.lock_arguments(key, value, expiration, timeout, embed_token)
        started = time.monotonic()
        result = await self._acquire(key, value, px, timeout, embed_token)
        stored, token = _core.won(result, key, value)
        return AsyncLock(self, key, stored, expiration, token, started, embed_token)

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
        priority: int = 0,
    ) -> AsyncLock:
        """Acquire `key`, retrying under `retry`; see `LockClient.lock` for the semantics."""
        px, value, timeout = _core.lock_arguments(key, value, expiration, timeout, embed_token)
        priority = _core.check_priority(priority)
        plan = _core.RetryPlan(key, retry if retry is not None else DEFAULT_RETRY)
        channel = _core.waiter_channel(key, self.listener)
        flow = _core.lock_flow(plan, on_attempt, self.subscription.listening(channel))
        member = _core.queue_member(self.listener, next(self._calls), px, embed_token, value)
        listened = self.subscription.listening(channel)  # this call waits on pub/sub
        sent: Any = None
        queued = False  # whether an attempt queued us
        in_flight = False  # an attempt was sent and its reply not read (cancelled meanwhile)
        try:
            while True:
                try:
                    step = flow.send(sent)
                except StopIteration as done:
                    result, started = done.value
                    stored, token = _core.won(result, key, value)
                    queued = False  # the winning attempt (or the hand-over) left the queue
                    return AsyncLock(self, key, stored, expiration, token, started, embed_token)
                if isinstance(step, _core.Attempt):
                    queue = step.wait_ms > 0 and self.subscription.listening(channel)
                    if queue:
                        queued = True
                        self._queued[member] = (key, value)
                    in_flight = True
                    try:
                        result = await self._acquire(key, value, px, timeout, embed_token,
                                                     step.wait_ms if queue else 0, priority,
                                                     member if queue or queued else "")  # fmt: skip
                        sent = (result, None)
                    except redis.RedisError as exc:
                        sent = (None, _core.classify_attempt_error(exc))
                    in_flight = False
                elif isinstance(step, _core.Confirm):
                    try:
                        result = await self._confirm(key, value, px, timeout, embed_token)
                        sent = (result, None)
                    except redis.RedisError as exc:
                        sent = (None, _core.classify_attempt_error(exc))
                elif isinstance(step, _core.Listen):
                    sent = listened = await self.subscription.listen(channel, timeout)
                else:  # woken by a hand-over to this call's queue entry, or at `until`
                    until = step.until
                    # the connection broke: listen again (the queue entry stays); until
                    # that works, attempt every second. Listening again, attempt at once:
                    # a release while nobody listened dropped our entry (NUMSUB found
                    # nobody) and told us nothing.
                    if listened and not self.subscription.listening(channel):
                        if await self.subscription.listen(channel, timeout):
                            sent = None
                            continue
                        until = min(until, time.monotonic() + _core.RELISTEN_SECONDS)
                    sent = await self.subscription.handed(
                        channel, until - time.monotonic(), member)  # fmt: skip
        finally:
            self.subscription.forget(channel, member)
            # Gave up, failed or was cancelled while queued, or while an attempt's reply
            # was on its way (it may have won): leave the queue, and pass on a lock that
            # is ours (the leave script releases a key that holds our value).
            if queued or in_flight:
                self._in_background(self._depart(key, member, timeout))
            else:
                self._queued.pop(member, None)

    def _in_background(self, call: Awaitable[Any]) -> None:
        """Run a best-effort call without making anyone wait for it."""
        task = asyncio.ensure_future(call)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        task.add_done_callback(_retrieve)

    def nudge(self, key: str) -> None:
        """Make this client's `lock()` calls waiting on `key` attempt now (as a release
        message would): e.g. when a hand-over's claim runs out unconfirmed."""
        channel = _core.waiter_channel(key, self.listener)
        for member, (k, _) in list(self._queued.items()):
            if k == key:
                self.subscription.wake(channel, member)

    async def eval_script(
        self, script: Script, keys: list[str], args: list[str], timeout: float | None = 1.0
    ) -> Any:
        """Run one of the package's scripts (FCALL or EVAL, as `scripts` chose) within `timeout`;
        for the election layer's own scripts (control requests)."""
        return await self._eval(script, keys, args, _core.check_timeout(timeout))

    async def leave_queue(self, key: str, value: str, timeout: float | None = 1.0) -> None:
        """Give up the waiter places in `key`'s queue of the `lock()` calls for `value`
        that were abandoned (a lock handed to one meanwhile passes on to the next)."""
        for member, (k, v) in list(self._queued.items()):
            if k == key and v == value:
                await self._leave(key, member, timeout)

    async def _leave(self, key: str, member: str, timeout: float | None) -> None:
        keys, args = _core.release_args(key, "", leaving=member)
        await self._eval(_core.RELEASE, keys, args, _core.check_timeout(timeout))
        self._queued.pop(member, None)

    async def _depart(self, key: str, member: str, timeout: float | None) -> None:
        """Leave the queue in the background, retried (0.1 s doubling to 2 s) until Redis
        answers: a departure that failed would leave an entry a release could hand the
        lock to. Until then the entry stays in `_queued`, and a hand-over to it costs at
        most the claim; the departure that succeeds passes such a lock on."""
        delay = 0.1
        while True:
            try:
                await self._leave(key, member, timeout)
                return
            except (TimeoutError, redis.ConnectionError, redis.TimeoutError, OSError):
                await asyncio.sleep(delay)
                delay = min(2.0, delay * 2)
            except redis.ResponseError as exc:
                if not _core.is_failover_error(exc):
                    self._queued.pop(member, None)
                    raise
                await asyncio.sleep(delay)
                delay = min(2.0, delay * 2)

    async def get_holder(
        self, key: str, timeout: float | None = 1.0
    ) -> tuple[str | None, float | None]:
        """The value stored under `key` and its remaining lease in seconds (None if free)."""
        value, pttl = await self.commands([("GET", key), ("PTTL", key)], timeout)
        return _core.parse_holder(value, pttl)

    async def commands(self, commands: list[tuple[Any, ...]], timeout: float | None) -> list[Any]:
        """Run `commands` in one pipelined round trip within `timeout`, in an inner task
        (as `_eval`), so that a cancellation of the caller is never lost."""

        async def run() -> list[Any]:
            pipe = self.redis.pipeline(transaction=False)
            for command in commands:
                pipe.execute_command(*command)
            return list(await pipe.execute())

        replies: list[Any] = await _bounded(run(), timeout, str(commands[0][0]))
        return replies


async def _bounded(call: Awaitable[Any], timeout: float | None, what: str) -> Any:
    """Await `call` within `timeout` in an inner task: the caller only awaits
    `asyncio.wait`, so its own cancellation always propagates (some redis-py versions
    swallow one that lands inside their I/O); an abandoned call is cancelled."""
    task = asyncio.ensure_future(call)
    task.add_done_callback(_retrieve)
    try:
        done, _ = await asyncio.wait({task}, timeout=timeout)
    except BaseException:
        task.cancel()
        raise
    if not done:
        task.cancel()
        raise TimeoutError(f"{what} did not answer within {timeout}s")
    return task.result()


async def _noop() -> None:
    return None


def _text(raw: object) -> str:
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)


def _oversized(data: object) -> bool:
    """A message payload too long (or of a type) no leaderd message has."""
    return not isinstance(data, str | bytes) or len(data) > _core.MAX_MESSAGE_BYTES


def _failed(future: asyncio.Future[Any]) -> bool:
    """A finished future that was cancelled or raised."""
    return future.cancelled() or future.exception() is not None


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Mark an abandoned call's outcome as seen, so asyncio does not log it."""
    if not task.cancelled():
        task.exception()


class SharedSubscription:
    """One pub/sub connection for all of a client's waits: `lock()` waiters on their
    keys' wake-up channels, leaders on their control channels; channels are added on
    demand and kept. A reader task alone reads the connection and resolves futures;
    callers only await those, so no caller's cancellation passes through redis-py's
    pub/sub reads (which can swallow one)."""

    #: Channels kept subscribed; beyond this the least recently used idle one is dropped
    #: (a client that locks ever new keys must not subscribe without end).
    MAX_CHANNELS = 65536
    #: Messages kept for a wait that starts a moment later (oldest out); each is at most
    #: `_core.MAX_MESSAGE_BYTES`.
    MAX_PENDING = 1024

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self.client = client
        self.pubsub: Any = None
        self.reader: asyncio.Future[None] | None = None
        self.confirmed: dict[str, asyncio.Future[bool]] = {}
        #: (channel, message) -> futures of waiters; message None: any message. A
        #: hand-over message "<token> <member>" is keyed by its member; the futures
        #: get its token (else None).
        self.waiters: dict[tuple[str, str | None], set[asyncio.Future[int | None]]] = {}
        #: messages nobody waited for yet (key as in `waiters`) -> their token
        self.pending: dict[tuple[str, str], int | None] = {}
        #: channels whose every message is queued, in order, for its readers (`feed`);
        #: a channel stays here with no reader (its messages then go nowhere, never
        #: into `pending`) until it is unsubscribed
        self.feeds: dict[str, set[asyncio.Queue[str]]] = {}
        self._sends: set[asyncio.Future[Any]] = set()
        #: the pub/sub connection being taken from the pool, once: redis-py's PubSub
        #: takes one per concurrent first command, and all but the last would leak
        self._connecting: asyncio.Future[Any] | None = None

    def alive(self) -> bool:
        return self.reader is not None and not self.reader.done()

    def listening(self, channel: str) -> bool:
        """True if `channel`'s subscription is confirmed and the connection is up."""
        confirmed = self.confirmed.get(channel)
        return (
            self.alive()
            and confirmed is not None
            and confirmed.done()
            and not confirmed.cancelled()
            and confirmed.result()
        )

    async def listen(self, channel: str, timeout: float | None) -> bool:
        """Subscribe to `channel` (once); True when the subscription is confirmed."""
        if self.listening(channel):
            self.confirmed[channel] = self.confirmed.pop(channel)  # most recently used
            return True
        connecting = self._connecting
        if self.pubsub is not None and (
            (self.reader is not None and self.reader.done())
            or (connecting is not None and connecting.done() and _failed(connecting))
        ):
            await self.close()  # the connection broke, or never came: start again
        if self.pubsub is None:
            make_pubsub = getattr(self.client, "pubsub", None)
            if make_pubsub is None:  # redis.asyncio.RedisCluster has no pub/sub: poll
                return False
            self.pubsub = make_pubsub(ignore_subscribe_messages=False)
            self._connecting = asyncio.ensure_future(self.pubsub.connect())
            self._connecting.add_done_callback(_retrieve)
        confirmed = self.confirmed.get(channel)
        if confirmed is None or (confirmed.done() and not confirmed.result()):
            confirmed = self.confirmed[channel] = asyncio.get_running_loop().create_future()
            self._send(self._subscribe(channel, confirmed))
            if len(self.confirmed) > self.MAX_CHANNELS:
                busy = {c for c, _ in self.waiters} | {c for c, q in self.feeds.items() if q}
                idle = next((c for c in self.confirmed if c not in busy and c != channel), None)
                if idle is not None:
                    del self.confirmed[idle]
                    self.feeds.pop(idle, None)
                    self._send(self.pubsub.unsubscribe(idle))
        await asyncio.wait({confirmed}, timeout=timeout or 1.0)
        return self.listening(channel)

    def _send(self, call: Awaitable[Any]) -> None:
        """(Un)subscribe in a task of its own: the caller only awaits the confirmation."""
        send = asyncio.ensure_future(call)
        self._sends.add(send)
        send.add_done_callback(self._sends.discard)
        send.add_done_callback(_retrieve)

    async def _subscribe(self, channel: str, confirmed: asyncio.Future[bool]) -> None:
        try:
            if self._connecting is not None:
                await asyncio.shield(self._connecting)  # one connection for every channel
            await self.pubsub.subscribe(channel)
        except Exception:
            if not confirmed.done():
                confirmed.set_result(False)
            return
        if self.reader is None:  # it reads once there is a subscription to read from
            self.reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        try:
            while True:
                msg = await self.pubsub.get_message(timeout=30.0)
                if not msg:
                    continue
                kind = _text(msg.get("type"))
                channel = _text(msg.get("channel"))
                if kind == "subscribe":
                    confirmed = self.confirmed.get(channel)
                    if confirmed is not None and not confirmed.done():
                        confirmed.set_result(True)
                elif kind == "message" and _oversized(msg.get("data")):
                    continue  # not one of ours: dropped unread, never kept
                elif kind == "message" and channel in self.feeds:
                    for queue in self.feeds[channel]:
                        if queue.full():  # a reader that fell behind loses the oldest
                            queue.get_nowait()
                        queue.put_nowait(_text(msg.get("data")))
                elif kind == "message":
                    wake = _core.parse_wake(_text(msg.get("data")))
                    # a hand-over is keyed by its member; any other message by its
                    # channel alone (its text is not kept)
                    token, message = (None, "") if wake is None else wake
                    waiting = self.waiters.pop((channel, message), None)
                    if not waiting:
                        waiting = self.waiters.pop((channel, None), None)
                    if waiting:
                        for future in waiting:
                            if not future.done():
                                future.set_result(token)
                    else:  # kept for a wait that starts a moment later; bounded, oldest out
                        if len(self.pending) >= self.MAX_PENDING:
                            del self.pending[next(iter(self.pending))]
                        self.pending[(channel, message)] = token
        except Exception:
            pass  # the callers fall back to sleeping, and subscribe again later
        finally:
            for confirmed in self.confirmed.values():
                if not confirmed.done():
                    confirmed.set_result(False)

    async def wait(self, channel: str, seconds: float, message: str | None = None) -> bool:
        """Wait up to `seconds` for `message` (None: any message) on `channel`, or one that
        came while nobody waited; True if one came. Without a subscription: a sleep; if
        the connection breaks meanwhile: False at once."""
        came, _ = await self._wait(channel, seconds, message)
        return came

    async def handed(self, channel: str, seconds: float, member: str) -> int | None:
        """Wait up to `seconds` for a hand-over to the queue entry `member` on `channel`
        (as `wait`); its token, or None."""
        _, token = await self._wait(channel, seconds, member)
        return token

    def feed(self, channel: str) -> asyncio.Queue[str]:
        """Every message on `channel` from now on, in order (at most the newest 64 kept
        for a slow reader), until `unfeed`; subscribe with `listen` as usual."""
        queue: asyncio.Queue[str] = asyncio.Queue(maxsize=64)
        self.feeds.setdefault(channel, set()).add(queue)
        return queue

    def unfeed(self, channel: str, queue: asyncio.Queue[str]) -> None:
        self.feeds.get(channel, set()).discard(queue)

    def wake(self, channel: str, member: str) -> None:
        """End the waits for `member` on `channel` now, as a message with no token."""
        for future in self.waiters.pop((channel, member), ()):
            if not future.done():
                future.set_result(None)

    def forget(self, channel: str, member: str) -> None:
        """Drop a message for `member` that nobody will wait for any more."""
        self.pending.pop((channel, member), None)

    async def _wait(
        self, channel: str, seconds: float, message: str | None
    ) -> tuple[bool, int | None]:
        if message is not None and (channel, message) in self.pending:
            return True, self.pending.pop((channel, message))
        if message is None:
            came = [p for p in self.pending if p[0] == channel]
            if came:
                for p in came:
                    del self.pending[p]
                return True, None
        reader = self.reader
        if not self.listening(channel) or reader is None:
            confirmed = self.confirmed.get(channel)
            if confirmed is not None and not confirmed.done():
                # still subscribing (a slow confirmation): listen as soon as it comes
                loop = asyncio.get_running_loop()
                until = loop.time() + max(0.0, seconds)
                await asyncio.wait({confirmed}, timeout=max(0.0, seconds))
                if self.listening(channel):
                    return await self._wait(channel, until - loop.time(), message)
                seconds = until - loop.time()
            await asyncio.sleep(max(0.0, seconds))
            return False, None
        future: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self.waiters.setdefault((channel, message), set()).add(future)
        either: set[asyncio.Future[Any]] = {future, reader}
        try:
            await asyncio.wait(
                either, timeout=max(0.0, seconds), return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            waiting = self.waiters.get((channel, message))
            if waiting is not None:
                waiting.discard(future)
                if not waiting:
                    del self.waiters[(channel, message)]
        # False also when the connection broke: the caller acts now (a lock() attempts,
        # a leader reads its control key) and subscribes again
        if future.done() and not future.cancelled():
            return True, future.result()
        return False, None

    async def close(self) -> None:
        """Stop reading and close the connection; the next listen() starts afresh."""
        reader, pubsub, connecting = self.reader, self.pubsub, self._connecting
        self.reader, self.pubsub, self._connecting = None, None, None
        if connecting is not None:
            connecting.cancel()
        self.confirmed, self.pending = {}, {}
        if reader is not None:
            reader.cancel()
            await asyncio.wait({reader}, timeout=1.0)
        if pubsub is not None:
            with contextlib.suppress(Exception):
                await pubsub.aclose()


class AsyncSubscription:
    """A pub/sub subscription to a fixed set of channels that wakes one waiter (the
    watchers of an election use it).

    A reader task owns the pub/sub connection and turns messages into a future; the
    waiting caller only ever awaits that future. redis-py's pub/sub reads with a
    timeout can swallow a cancellation that lands at the wrong moment, so the
    caller's own cancellation never passes through them.
    """

    def __init__(self, pubsub: Any, channels: list[str]) -> None:
        self.pubsub = pubsub
        self.channels = channels
        #: (channel, data) of every message not taken yet, in order of arrival
        self.messages: list[tuple[str, str]] = []
        self.subscribed = False
        loop = asyncio.get_running_loop()
        self._confirmed: asyncio.Future[bool] = loop.create_future()
        self._message: asyncio.Future[None] = loop.create_future()
        self._reader = asyncio.ensure_future(self._read() if pubsub is not None else _noop())

    @classmethod
    async def start(
        cls, client: redis.asyncio.Redis, channels: list[str], timeout: float | None
    ) -> AsyncSubscription:
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
                elif kind in ("message", b"message") and not _oversized(msg.get("data")):
                    if len(self.messages) < 1024:  # in order, for a reader that wants them
                        self.messages.append((_text(msg.get("channel")), _text(msg.get("data"))))
                    if not self._message.done():
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

    def take(self) -> list[tuple[str, str]]:
        """The messages received since the last call, oldest first."""
        taken, self.messages = self.messages, []
        return taken

    async def close(self) -> None:
        """Stop the reader, which closes the pub/sub connection itself."""
        self.subscribed = False
        self._reader.cancel()
        await asyncio.wait({self._reader}, timeout=1.0)


class AsyncLock(LockBase):
    """A held lock. `async with` releases it on exit."""

    __slots__ = ()
    _client: AsyncLockClient

    async def refresh(self, timeout: float | None = 1.0) -> None:
        """Extend the lease to `expiration` again; `LockNotHeldError` if it is not ours."""
        started = time.monotonic()
        _core.refreshed(self, await self._call(_core.refresh_args(self), timeout), started)

    async def unlock(self, timeout: float | None = 1.0) -> None:
        """Release the lock and wake waiters; `LockNotHeldError` if it is not ours."""
        _core.released(self, await self._call(_core.release_call(self), timeout))

    async def hand_over(self, to: str, timeout: float | None = 1.0) -> bool:
        """Release the lock to the waiter whose queue entry is `to` (it becomes the
        holder at once); True if it was, False if `to` no longer waits (then the next
        waiter gets it as on `unlock`). `LockNotHeldError` if the lock is not ours."""
        ok = await self._call(_core.release_call(self, to), timeout)
        _core.released(self, ok)
        return int(ok) == 2

    async def _call(self, call: tuple[Script, list[str], list[str]], timeout: float | None) -> Any:
        script, keys, args = call
        timeout = _core.check_timeout(timeout)
        try:
            return await self._client._eval(script, keys, args, timeout)
        except redis.ResponseError as exc:
            raise _core.map_response_error(exc, self.key) from exc
        except TimeoutError as exc:
            verb = "refresh" if script is _core.REFRESH else "unlock"
            raise redis.TimeoutError(f"{verb} of {self.key!r} timed out after {timeout}s") from exc

    def auto_refresh(
        self,
        interval: float | None = None,
        timeout: float | None = 1.0,
        max_retry: int = 3,
        on_failure: Callable[[BaseException], None] | None = None,
    ) -> AsyncAutoRefresh:
        """Refresh every `interval` (default expiration/3) in a task, until stopped.

        A refresh that times out (or cannot connect) is retried at once up to
        `max_retry` times; a lost lock or exhausted retries end it, reported through
        the handle's `error`/`wait()`, `on_failure`, and by awaiting the handle.
        """
        every = _core.auto_refresh_interval(self.expiration, interval)
        return AsyncAutoRefresh(self, every, timeout, max_retry, on_failure)

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


class AsyncAutoRefresh(_core.RefresherBase):
    """Handle of an asyncio refresher, like the sync `AutoRefresh`: `await stop()`,
    `await wait()`, `error`, `running`; awaiting the handle raises the failure."""

    def __init__(
        self,
        lock: AsyncLock,
        interval: float,
        timeout: float | None,
        max_retry: int,
        on_failure: Callable[[BaseException], None] | None,
    ) -> None:
        super().__init__(lock, interval, timeout, max_retry, on_failure)
        self.lock: AsyncLock = lock
        self.task = asyncio.create_task(self._run(), name=f"leaderd-refresh:{lock.key}")
        self.task.add_done_callback(_retrieve)  # reported via error/on_failure/await

    async def _run(self) -> None:
        try:
            while True:
                await asyncio.sleep(self.interval)
                await self._refresh_once()
        except Exception as exc:
            self._failed(exc)
            raise

    async def _refresh_once(self) -> None:
        for attempt in range(self.max_retry + 1):
            try:
                await self.lock.refresh(self.timeout)
                return
            except TRANSIENT as exc:
                _core.refresh_failed(self.lock.key, attempt, self.max_retry, exc)

    @property
    def running(self) -> bool:
        return not self.task.done()

    async def wait(self, timeout: float | None = None) -> bool:
        """Wait until the refresher ends; True if it ended (check `error`)."""
        done, _ = await asyncio.wait({self.task}, timeout=timeout)
        return bool(done)

    async def stop(self) -> None:
        """Stop refreshing (the lock is kept until it expires or is unlocked)."""
        self.task.cancel()
        await asyncio.wait({self.task})

    def cancel(self) -> bool:
        return self.task.cancel()

    def done(self) -> bool:
        return self.task.done()

    def __await__(self) -> Generator[Any, None, None]:
        return self.task.__await__()

    async def __aenter__(self) -> AsyncAutoRefresh:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()
