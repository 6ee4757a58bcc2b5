"""Leader election: one small state machine, acquire -> lead -> renew -> release.

`Elector.run` contends for the lease through an `ElectionBackend` (Redis, or memory in
tests), runs `lead(term)` while it is leader, renews the lease, and steps down the
moment it can no longer prove it holds it. Time comes from an injected `Clock`, so
the deadline logic is tested on a fake clock.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .backend import Attempt, Candidate, ElectionBackend, Holder, Lease, Request, RequestResult
from .clock import Clock, SystemClock
from .default_backend import election_backend
from .errors import LockError, LockNotHeldError, MaxRetryError
from .strategy import FixedIntervalStrategy, NonFixedIntervalStrategy, RetryStrategy

if TYPE_CHECKING:
    from .aio import AsyncLockClient


@dataclass
class Term:
    """One continuous leadership. `deadline` moves forward with each successful refresh.

    Times are monotonic seconds of the elector's clock. `lease_expires_at` is the
    earliest moment another candidate could take the lock (start of the last proof
    plus the ttl): anything done as leader must stop before it.
    """

    fencing_token: int
    started_at: float
    deadline: float
    lease_expires_at: float
    #: when this candidate began to lead (reported as the term's start); `started_at`
    #: is the start of the proof its validity is counted from, which may be earlier
    began_at: float = 0.0

    def __post_init__(self) -> None:
        self.began_at = max(self.began_at, self.started_at)

    def valid(self, now: float) -> bool:
        return now < self.deadline


class ElectionObserver:
    """Hooks for outputs (metrics, logs, status file, Kubernetes); all are optional.

    Hooks run inline in the election loop, so they must be quick; one that raises is
    reported once (`Elector.on_observer_error`) and never stops the election.
    """

    def bind(self, elector: Elector) -> None:
        """Called once by the `Elector` this observer is given to, before any hook."""

    def on_attempt(self, outcome: str, error: Exception | None) -> None:
        """After each acquire attempt: outcome is `acquired`, `held` or `error`."""

    def on_refresh(self, outcome: str, duration: float, error: Exception | None) -> None:
        """After each refresh: outcome is `ok`, `lost` or `error`."""

    def on_started_leading(self, term: Term) -> None:
        """This candidate became leader."""

    def on_stopped_leading(self, term: Term, reason: str) -> None:
        """Leadership ended: `lost`, `deadline`, `released`, `stopped`, a reason for being
        ineligible (`app_unhealthy`), `resigned`, `switchover` or `preempted`."""

    def on_control(self, event: str, fields: dict[str, Any]) -> None:
        """A control request: the leader `received` one, `handed_over` the lease, or
        this follower sent a `preempt` request (fields say to whom, and the outcome)."""

    def on_new_leader(self, identity: str | None) -> None:
        """The observed holder of the lock changed (None: nobody, or unknown)."""

    def on_duplicate_identity(self, token: int) -> None:
        """Another live candidate uses this candidate's identity: it holds the lock with
        `token`, a term this candidate never had. Reported once per elector."""

    async def stepped_down(self, term: Term, reason: str, budget: float) -> None:
        """Awaited after a chosen step-down and before the lock is released.

        For outputs that must say "not leader" before anyone else can lead (a pod
        label); must return within `budget` seconds.
        """

    def on_status_change(self) -> None:
        """Anything in `Elector.status()` changed (valid_until moves on every refresh)."""


#: Reasons for stepping down that count as losing leadership (not a chosen release).
LOSS_REASONS = frozenset({"lost", "deadline"})
#: Control requests and the reason the leader steps down with for each.
REQUEST_REASONS = {"resign": "resigned", "switchover": "switchover", "preempt": "preempted"}


class TimingError(ValueError):
    """Timing settings that break `0 < refresh_interval < renew_deadline < ttl`.

    `setting` names the one to change (`ttl`, `refresh_interval`, `renew_deadline`).
    """

    def __init__(self, setting: str, value: float, rule: str) -> None:
        self.setting = setting
        self.value = value
        self.rule = rule
        super().__init__(f"{setting}={value:g}: {rule}")


def timing(
    ttl: float, refresh_interval: float | None = None, renew_deadline: float | None = None
) -> tuple[float, float]:
    """The (refresh_interval, renew_deadline) an elector uses: the defaults (ttl/3 and
    ttl*2/3) and the ordering rule live here only; `TimingError` names what is wrong."""
    if not ttl > 0:
        raise TimingError("ttl", ttl, "must be greater than zero")
    refresh = ttl / 3 if refresh_interval is None else refresh_interval
    renew = ttl * 2 / 3 if renew_deadline is None else renew_deadline
    if not renew < ttl:
        raise TimingError(
            "renew_deadline",
            renew,
            f"must be less than ttl ({ttl:g}s), or a leader could outlive its lease",
        )
    if not 0 < refresh < renew:
        raise TimingError(
            "refresh_interval",
            refresh,
            f"must be less than renew_deadline ({renew:g}s), "
            "or the leader could not refresh before stepping down",
        )
    return refresh, renew


def _retry_bound(retry: RetryStrategy) -> float:
    if isinstance(retry, NonFixedIntervalStrategy):
        return retry.max_interval
    if isinstance(retry, FixedIntervalStrategy):
        return retry.interval * (1 + retry.jitter)
    return 60.0


class Elector:
    """Contends for `election` and runs `lead(term)` while this candidate is leader."""

    def __init__(
        self,
        client: AsyncLockClient | ElectionBackend,
        election: str,
        identity: str,
        ttl: float = 10.0,
        refresh_interval: float | None = None,
        renew_deadline: float | None = None,
        retry: RetryStrategy | None = None,
        *,
        timeout: float | None = None,
        clock: Clock | None = None,
        observers: Sequence[ElectionObserver] = (),
        priority: int = 0,
        address: str | None = None,
        preempt: bool = False,
        preempt_delay: float = 10.0,
    ) -> None:
        refresh_interval, renew_deadline = timing(ttl, refresh_interval, renew_deadline)
        if not election:
            raise ValueError("election must be a non-empty string")
        self.election = election
        self.identity = identity
        #: among waiters, the highest priority gets a released lease first (-100..100)
        self.priority = priority
        #: published with this candidate's leadership (where clients reach the leader)
        self.address = address
        #: a waiter of higher priority than the leader asks it to hand over, once it has
        #: waited `preempt_delay`, and at most once per `preempt_delay`
        self.preempt = preempt
        self.preempt_delay = preempt_delay
        self._last_preempt: float | None = None
        self.ttl = ttl
        self.refresh_interval = refresh_interval
        self.renew_deadline = renew_deadline
        self.retry = retry or FixedIntervalStrategy(2.0, max_retry=None, jitter=0.1)
        #: bound of each Redis call; a refresh is also cut off at the term's deadline
        self.timeout = timeout if timeout is not None else min(refresh_interval, 2.0)
        self.clock: Clock = clock or SystemClock()
        self.backend = election_backend(client, election, self.clock)
        #: what the loop reports and retries: the backend's transport errors, LockError
        self._retryable: tuple[type[Exception], ...] = (*self.backend.transient, LockError)
        self.observers = list(observers)
        #: called once per (observer, hook) whose hook raised; default: stdlib logging
        self.on_observer_error: Callable[[ElectionObserver, str, Exception], Any] | None = None
        self._observer_errors: set[tuple[str, str]] = set()
        self._allowed = True  # set_eligible's verdict (app health)
        self._blocked_reason: str | None = None
        self._resigned_until: float | None = None  # resign: out until this time
        self._request: Request | None = None  # a control request for the current term
        self._not_leading = asyncio.Event()
        self._not_leading.set()
        #: after becoming eligible again, wait this long before campaigning (no flapping)
        self.campaign_delay = ttl
        self._eligible_since: float | None = None
        self._campaigned = False
        self._wake = asyncio.Event()
        #: more fields for status() (e.g. the daemon's `app_healthy`)
        self.extra_status: dict[str, Any] = {}
        self.role = "starting"
        self.leader: str | None = None
        self.leader_address: str | None = None
        self._holder: Holder | None = None  # the holder seen by the last attempt
        #: the tokens of this elector's own recent terms: a holder with our identity and
        #: another token is a second candidate using our identity
        self._own_tokens: collections.deque[int] = collections.deque(maxlen=32)
        self.duplicate_identity = False
        self.transitions = 0
        self.term: Term | None = None
        self.updated_at = self.clock.wall()
        self._last_progress = self.clock.now()
        self._on_new_leader: Callable[[str | None], Any] | None = None
        retry_gap = max(ttl, _retry_bound(self.retry))
        #: a follower loop that made no attempt for this long is wedged
        self.stall_after = 2 * retry_gap + self.timeout
        for o in self.observers:
            o.bind(self)

    # -- readers: each evaluates the deadline at the moment it answers -------------------
    def is_leader(self) -> bool:
        """True iff this candidate holds a term whose deadline has not passed, now."""
        term = self.term
        return term is not None and term.valid(self.clock.now())

    @property
    def eligible(self) -> bool:
        """False while this candidate must not lead (app unhealthy, resigned, ...)."""
        return self._allowed and not self._resigned()

    @property
    def ineligible_reason(self) -> str | None:
        if self._resigned():
            return "resigned"
        return None if self._allowed else self._blocked_reason

    def _resigned(self) -> bool:
        until = self._resigned_until
        return until is not None and self.clock.now() < until

    def healthy(self) -> bool:
        """False if the loop is wedged: no attempt or refresh completed for too long."""
        if self.term is None and not self.eligible:
            return True  # waiting on purpose (app unhealthy, resigned): not wedged
        limit = self.ttl if self.term is not None else self.stall_after
        return self.role == "stopped" or self.clock.now() - self._last_progress < limit

    def set_eligible(self, eligible: bool, reason: str | None = None) -> None:
        """Allow or forbid leading. An ineligible candidate makes no attempts and leaves
        the waiter queue; an ineligible leader steps down with `reason` and releases.
        Once eligible again it waits `campaign_delay` before it campaigns."""
        new_reason = None if eligible else (reason or "ineligible")
        if eligible == self._allowed and new_reason == self._blocked_reason:
            return
        if eligible and not self._allowed and self._campaigned:
            self._eligible_since = self.clock.now()  # the delay is for flapping, not start
        self._allowed, self._blocked_reason = eligible, new_reason
        self._last_progress = self.clock.now()  # waiting on purpose is not being wedged
        self._wake.set()
        self._changed()

    async def resign(self, hold_off: float = 0.0) -> bool:
        """Step down if leading (reason `resigned`), release the lease so another candidate
        takes over, and stay out for `hold_off` seconds. True if this candidate was
        leading; returns once the lease is released."""
        if not hold_off >= 0:
            raise ValueError(f"hold_off must be >= 0 seconds, got {hold_off!r}")
        self._resigned_until = self.clock.now() + hold_off
        leading = self.term is not None
        if leading:
            self._request = Request("resign", None, hold_off)
        self._wake.set()
        self._changed()
        await self._not_leading.wait()
        return leading

    async def wait_not_leading(self) -> None:
        """Return once this candidate neither leads nor is giving its lease back: after a
        step-down, once the release or hand-over has been sent."""
        await self._not_leading.wait()

    def status(self) -> dict[str, Any]:
        """The status JSON of design.md: role, holder, token and validity, evaluated now."""
        now, wall = self.clock.now(), self.clock.wall()
        term = self.term
        leading = term is not None and term.valid(now)
        role = self.role
        leader, address = self.leader, self.leader_address
        if role == "leader" and not leading:
            role, leader, address = "follower", None, None  # deadline passed; not caught up
        return {
            "election": self.election,
            "identity": self.identity,
            "role": role,
            "leader": leader,
            "leader_address": address,
            "fencing_token": term.fencing_token if term is not None and leading else None,
            "term_started_at": (
                round(wall - (now - term.began_at), 3) if term is not None and leading else None
            ),
            "valid_until": (
                round(wall + (term.deadline - now), 3) if term is not None and leading else None
            ),
            "transitions": self.transitions,
            "updated_at": round(self.updated_at, 3),
            "eligible": self.eligible,
            "ineligible_reason": self.ineligible_reason,
            "priority": self.priority,
            "duplicate_identity": self.duplicate_identity,
            **self.extra_status,
        }

    # -- the loop ------------------------------------------------------------------------
    async def run(
        self,
        lead: Callable[[Term], Awaitable[Any]],
        on_new_leader: Callable[[str | None], Any] | None = None,
    ) -> None:
        """Contend, lead, renew, release; until `lead` returns or raises, or cancellation.

        Raises `MaxRetryError` when the retry strategy runs out, and whatever `lead`
        raised (after releasing the lock).
        """
        self._on_new_leader = on_new_leader
        try:
            while True:
                lease, term = await self._acquire()
                if await self._lead(lease, term, lead):
                    return
        finally:
            self._set_role("stopped")

    async def _acquire(self) -> tuple[Lease, Term]:
        """Follower: attempt under the strategy while eligible; wake on release and at
        lease expiry."""
        if self.role != "starting":
            self._set_role("follower")
        while True:
            await self._until_eligible()
            try:
                lease = await self._attempt_while_eligible()
            except MaxRetryError:
                raise
            except self._retryable as exc:
                # Not a failover blip (e.g. a WRONGTYPE key, an ACL refusal): report it
                # like any failed attempt and keep contending; never die of it.
                self._attempted(Attempt("error", error=exc))
                await self.clock.sleep(self.retry.next_delay(1) or 1.0)
                continue
            if lease is None:
                continue  # became ineligible while waiting
            term = Term(
                fencing_token=lease.token,
                started_at=lease.started,
                deadline=lease.started + self.renew_deadline,
                lease_expires_at=lease.started + self.ttl,
                began_at=lease.began or lease.started,
            )
            if term.valid(self.clock.now()) and self.eligible:
                return lease, term
            await self._release(lease)  # stalled between proof and now: it proves nothing

    async def _until_eligible(self) -> None:
        """Wait while ineligible, then for the rest of `campaign_delay`."""
        if not self.eligible and self.role == "starting":
            self._set_role("follower")  # it will not campaign: it is a follower now
        while True:
            while not self.eligible:
                self._wake.clear()
                until = self._resigned_until
                if self._resigned() and until is not None:
                    await self._sleep_or_wake(until - self.clock.now())
                    if not self._resigned():
                        self._last_progress = self.clock.now()
                        self._changed()  # the hold-off is over: eligible again
                else:
                    await self._wake.wait()
            since = self._eligible_since
            left = 0.0 if since is None else since + self.campaign_delay - self.clock.now()
            if left <= 0:
                return
            self._wake.clear()
            await self._sleep_or_wake(left)

    async def _sleep_or_wake(self, seconds: float | None, *others: asyncio.Future[Any]) -> None:
        """Until `seconds` pass on the clock (None: no limit), `_wake` is set, or one of
        `others` is done."""
        waiting: set[asyncio.Future[Any]] = {asyncio.ensure_future(self._wake.wait())}
        if seconds is not None:
            waiting.add(asyncio.ensure_future(self.clock.sleep(seconds)))
        try:
            await asyncio.wait(waiting | set(others), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for f in waiting:
                f.cancel()

    async def _attempt_while_eligible(self) -> Lease | None:
        """The backend's acquire, abandoned (leaving the waiter queue) if this candidate
        becomes ineligible meanwhile; None then."""
        candidate = self._candidate()
        self._campaigned = True
        waiting_since = self.clock.now()
        acquiring = asyncio.ensure_future(
            self.backend.acquire(candidate, self.ttl, self.timeout, self.retry, self._attempted)
        )
        try:
            while not acquiring.done():
                self._wake.clear()
                await self._sleep_or_wake(self._preempt_wait(waiting_since), acquiring)
                if not self.eligible:
                    break
                if not acquiring.done() and self._preempt_wait(waiting_since) == 0:
                    await self._send_preempt()
        except BaseException:
            await _cancel(acquiring)
            if not acquiring.cancelled() and acquiring.exception() is None:
                # won just as we were cancelled (shutdown): never drop a won lease
                await asyncio.shield(self._release(acquiring.result()))
            raise
        if acquiring.done():
            return acquiring.result()
        await _cancel(acquiring)
        if not acquiring.cancelled() and acquiring.exception() is None:
            await self._release(acquiring.result())  # won just as it became ineligible
        with contextlib.suppress(*self._retryable):
            await self.backend.leave_queue(self.timeout)
        return None

    def _candidate(self) -> Candidate:
        return Candidate(self.identity, self.priority, self.address)

    def _preempt_wait(self, waiting_since: float) -> float | None:
        """Seconds until this waiter may ask the leader to hand over (0: now); None if it
        may not (preemption off, or the holder's priority is not lower)."""
        holder = self._holder
        if not self.preempt or holder is None or holder.foreign:
            return None
        if holder.priority >= self.priority:
            return None
        since = waiting_since if self._last_preempt is None else max(
            waiting_since, self._last_preempt)  # fmt: skip
        return max(0.0, since + self.preempt_delay - self.clock.now())

    async def _send_preempt(self) -> None:
        """Ask the leader of lower priority to hand over to this candidate (at most once
        per `preempt_delay`; only an eligible, waiting candidate can be handed to)."""
        self._last_preempt = self.clock.now()
        holder = self._holder
        result: RequestResult | None = None
        error: Exception | None = None
        try:
            result = await self.backend.request(
                "preempt", self.identity, 0.0, self.priority, self.timeout
            )
        except self._retryable as exc:
            error = exc
        self._notify("on_control", "preempt", {
            "leader": holder.identity if holder else None,
            "leader_priority": holder.priority if holder else None,
            "outcome": "error" if result is None else "sent" if result.ok else result.reason,
            "error": error,
        })  # fmt: skip

    async def _lead(self, lease: Lease, term: Term, lead: Callable[[Term], Awaitable[Any]]) -> bool:
        """Leader: run `lead` and renew. True if `lead` finished (run() returns)."""
        self._start_term(term)
        task = asyncio.ensure_future(lead(term))
        try:
            reason = await self._renew(lease, term, task)
        except asyncio.CancelledError:
            await _cancel(task)
            self._end_term(term, "stopped")
            await self._before_release(term, "stopped")
            await self._release(lease)
            raise
        if reason == "finished":
            self._end_term(term, "released")
            await self._before_release(term, "released")
            await self._release(lease)
            task.result()  # re-raise what `lead` raised
            return True
        if reason not in LOSS_REASONS:  # a chosen step-down: stop, tell, then hand over
            self.term = None
            await _cancel(task)
            request, self._request = self._request, None
            stepped = reason
            if reason == "ineligible":
                stepped = self.ineligible_reason or "ineligible"
            elif request is not None:
                stepped = REQUEST_REASONS[request.op]
                if request.op == "resign":
                    self._resigned_until = self.clock.now() + request.hold_off
            self._end_term(term, stepped)
            await self._before_release(term, stepped)
            await self._release(lease, request)
            return False
        self.term = None  # readers answer "not leader" from here on
        if reason == "lost":  # someone else holds it already: no grace left
            term.lease_expires_at = min(term.lease_expires_at, self.clock.now())
        await _cancel(task)
        if reason == "deadline":
            await self._release(lease)  # it may still be ours; let a follower in sooner
        else:
            self._not_leading.set()
        self._end_term(term, reason)  # observers last: one of them may stop the daemon
        return False

    async def _renew(self, lease: Lease, term: Term, task: asyncio.Future[Any]) -> str:
        """Refresh every refresh_interval until the lease is lost, `lead` finishes, this
        candidate becomes ineligible or a control request (resign, hand over) arrives."""
        control = asyncio.ensure_future(self.backend.next_request(lease))
        try:
            return await self._renew_until_done(lease, term, task, control)
        finally:
            await _cancel(control)

    async def _renew_until_done(
        self, lease: Lease, term: Term, task: asyncio.Future[Any], control: asyncio.Future[Any]
    ) -> str:
        next_refresh = term.started_at + self.refresh_interval
        while True:
            await self._until(min(next_refresh, term.deadline), task, control)
            if task.done():
                return "finished"
            if control.done() and self._request is None:
                if control.exception() is None:
                    self._received(control.result())
                else:  # the backend retries inside; this is a bug, not a request
                    control = asyncio.ensure_future(self.backend.next_request(lease))
            if self._request is not None:
                return "request"
            if not self.eligible:
                return "ineligible"
            started = self.clock.now()
            if started >= term.deadline:
                return "deadline"
            if started < next_refresh:
                continue
            outcome: str = "ok"
            error: Exception | None = None
            try:
                await self.backend.renew(lease, min(self.timeout, term.deadline - started))
            except LockNotHeldError as exc:
                outcome, error = "lost", exc
            except self._retryable as exc:
                outcome, error = "error", exc
            finished = self.clock.now()
            self._last_progress = finished
            late = finished >= term.deadline  # a late success does not revive the term
            if outcome == "ok" and not late:
                term.deadline = started + self.renew_deadline
                term.lease_expires_at = started + self.ttl
                next_refresh = started + self.refresh_interval
            self._notify("on_refresh", outcome, finished - started, error)
            if outcome == "lost":
                return "lost"
            if late:
                return "deadline"
            if outcome == "ok":
                self._changed()
            else:
                next_refresh = finished + min(self.refresh_interval / 4, 1.0)

    async def _until(
        self, when: float, task: asyncio.Future[Any], control: asyncio.Future[Any]
    ) -> None:
        """Sleep until `when` on the clock, until `task` finishes, a control request
        arrives, or this candidate becomes ineligible."""
        delay = when - self.clock.now()
        if delay <= 0 or task.done() or control.done() or not self.eligible:
            return
        if self._request is not None:
            return
        self._wake.clear()
        await self._sleep_or_wake(delay, task, control)

    def _received(self, request: Request) -> None:
        """A control request for this term arrived: step down for it."""
        self._request = request
        self._notify("on_control", "received", {
            "request": request.op, "to": request.to, "to_identity": request.target,
            "hold_off_s": request.hold_off,
        })  # fmt: skip

    async def _before_release(self, term: Term, reason: str) -> None:
        """Let outputs catch up (bounded) while the lease still keeps others out."""
        budget = min(2.0, term.lease_expires_at - self.clock.now())
        for o in self.observers:
            try:
                await o.stepped_down(term, reason, budget)
            except Exception as exc:  # an output must never stop the election
                self._observer_failed(o, "stepped_down", exc)

    async def _release(self, lease: Lease, request: Request | None = None) -> None:
        """Best effort: give the lease back if it is still ours, so a follower (or the
        waiter a switchover or preemption names) takes over."""
        try:
            with contextlib.suppress(*self._retryable):
                if request is None or request.to is None:
                    await self.backend.release(lease, self.timeout)
                else:
                    handed = await self.backend.hand_over(lease, request.to, self.timeout)
                    self._notify("on_control", "handed_over", {
                        "to": request.to, "to_identity": request.target, "handed": handed,
                    })  # fmt: skip
        finally:
            self._not_leading.set()

    # -- state changes -------------------------------------------------------------------
    def _attempted(self, attempt: Attempt) -> None:
        self._check_duplicate(attempt.holder)
        if attempt.outcome == "announced":  # news of a new term, not an attempt
            holder, seen = attempt.holder, self._holder
            if holder is not None and not _older(holder, seen) and holder != seen:
                self._holder = holder
                self._observe_leader(holder.identity, holder.address)
            return
        self._last_progress = self.clock.now()
        if attempt.outcome == "held" and not _older(attempt.holder, self._holder):
            holder = self._holder = attempt.holder
            self._observe_leader(
                holder.identity if holder else None, holder.address if holder else None
            )
        self._notify("on_attempt", attempt.outcome, attempt.error)
        if self.role == "starting":
            self._set_role("follower")

    def _check_duplicate(self, holder: Holder | None) -> None:
        """Warn once if the holder has our identity but a term that was never ours."""
        if (
            holder is None
            or holder.identity != self.identity
            or holder.token is None
            or holder.token in self._own_tokens
            or self.duplicate_identity
        ):
            return
        self.duplicate_identity = True
        self._notify("on_duplicate_identity", holder.token)
        self._changed()

    def _observe_leader(self, identity: str | None, address: str | None = None) -> None:
        if identity == self.leader:
            if address != self.leader_address:
                self.leader_address = address
                self._changed()
            return
        self.leader, self.leader_address = identity, address
        self._changed()
        if self.preempt:
            self._wake.set()  # a new holder: re-check whether to preempt it
        self._notify("on_new_leader", identity)
        if self._on_new_leader is not None:
            self._on_new_leader(identity)

    def _start_term(self, term: Term) -> None:
        self._own_tokens.append(term.fencing_token)
        self.term = term
        self.transitions += 1
        self.role = "leader"
        self._last_progress = self.clock.now()
        self._not_leading.clear()
        self._holder = None
        self._request = None  # a resign meant for an earlier term does not end this one
        self._notify("on_started_leading", term)
        self._observe_leader(self.identity, self.address)
        self._changed()

    def _end_term(self, term: Term, reason: str) -> None:
        self.term = None
        self.transitions += 1
        self.role = "follower"
        self._notify("on_stopped_leading", term, reason)
        self._observe_leader(None)
        self._changed()

    def _set_role(self, role: str) -> None:
        if role != self.role:
            self.role = role
            self._changed()

    def _changed(self) -> None:
        self.updated_at = self.clock.wall()
        self._notify("on_status_change")

    def _notify(self, hook: str, *args: Any) -> None:
        """Call `hook` on every observer; one that raises is reported, never fatal."""
        for o in self.observers:
            try:
                getattr(o, hook)(*args)
            except Exception as exc:
                self._observer_failed(o, hook, exc)

    def _observer_failed(self, observer: ElectionObserver, hook: str, exc: Exception) -> None:
        key = (type(observer).__name__, hook)
        if key in self._observer_errors:
            return  # reported once per observer and hook
        self._observer_errors.add(key)
        if self.on_observer_error is not None:
            self.on_observer_error(observer, hook, exc)
        else:
            logging.getLogger("leaderd").error(
                "observer %s.%s failed: %r (the election goes on)", key[0], hook, exc
            )


async def _cancel(task: asyncio.Future[Any]) -> None:
    """Cancel `task` and wait until it has finished (its outcome is discarded)."""
    task.cancel()
    await asyncio.wait({task})
    if not task.cancelled():
        task.exception()  # retrieved, so asyncio does not log it as never retrieved


def _older(holder: Holder | None, seen: Holder | None) -> bool:
    """True if `holder` is of an earlier term than `seen` (both with tokens): news that
    arrived late, e.g. an attempt's reply after the next term's announcement."""
    return (
        holder is not None
        and seen is not None
        and holder.token is not None
        and seen.token is not None
        and holder.token < seen.token
    )
