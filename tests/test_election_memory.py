"""The election state machine on the in-memory backend and a fake clock: no Redis, so
every rule of the loop is checked exactly and in milliseconds. (test_elector.py runs
the same machine against a real Redis; the daemon tests run it end to end.)"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from leaderd import ElectionObserver, Elector, FixedIntervalStrategy, MaxRetryError, Term
from leaderd.backend import MemoryBackend, MemoryStore

from .test_elector import FakeClock, Leading, Recorder, until


class Seen(ElectionObserver):
    def __init__(self) -> None:
        self.attempts: list[str] = []
        self.leaders: list[str | None] = []

    def on_attempt(self, outcome: str, error: Exception | None) -> None:
        self.attempts.append(outcome)

    def on_new_leader(self, identity: str | None) -> None:
        self.leaders.append(identity)


def elector(store: MemoryStore, identity: str = "a", **kw: Any) -> tuple[Elector, MemoryBackend]:
    backend = MemoryBackend(store)
    opts: dict[str, Any] = dict(ttl=10.0, refresh_interval=3.0, renew_deadline=6.0)
    opts.update(retry=FixedIntervalStrategy(1.0, None), clock=store.clock)
    opts.update(kw)
    return Elector(backend, "jobs", identity, **opts), backend


async def stop(*tasks: asyncio.Task[Any]) -> None:
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_term_starts_at_the_proof_and_readers_evaluate_the_deadline_now() -> None:
    clock = FakeClock()
    store = MemoryStore(clock)
    e, _ = elector(store)
    lead = Leading()
    task = asyncio.create_task(e.run(lead))
    await until(lambda: lead.running)
    term = lead.terms[0]
    assert term.started_at == clock.now() and term.deadline == clock.now() + 6.0
    assert term.lease_expires_at == clock.now() + 10.0
    clock.t += 6.0  # exactly the deadline: no longer leader, before the loop runs
    assert not e.is_leader() and e.status()["role"] == "follower"
    await stop(task)


async def test_refreshes_on_the_interval_move_the_deadline() -> None:
    clock = FakeClock()
    store = MemoryStore(clock)
    rec = Recorder()
    e, _ = elector(store, observers=[rec])
    lead = Leading()
    task = asyncio.create_task(e.run(lead))
    await until(lambda: lead.running)
    for n in range(1, 11):
        clock.advance(3.0)
        await until(lambda n=n: rec.count("refresh", "ok") == n)
        assert e.is_leader() and e.term is not None
        assert e.term.deadline == clock.now() + 6.0  # measured from the refresh's start
    assert rec.count("started") == 1
    await stop(task)
    assert store.current() is None  # released on cancellation


async def test_losing_the_lease_is_an_immediate_step_down_then_a_new_larger_token() -> None:
    clock = FakeClock()
    store = MemoryStore(clock)
    rec = Recorder()
    e, _ = elector(store, observers=[rec])
    lead = Leading()
    task = asyncio.create_task(e.run(lead))
    await until(lambda: lead.running)
    store.take_over("intruder", ttl=5.0)  # someone else holds it now
    clock.advance(3.0)
    await until(lambda: rec.count("stopped", "lost") == 1)
    assert lead.cancelled == 1 and not e.is_leader()
    assert e.status()["leader"] == "intruder"
    clock.advance(2.0)  # the intruder's lease runs out; the follower wakes at its expiry
    await until(lambda: len(lead.terms) == 2 and lead.running)
    assert lead.terms[1].fencing_token > lead.terms[0].fencing_token
    await stop(task)


async def test_a_refresh_that_answers_after_the_deadline_does_not_revive_the_term() -> None:
    clock = FakeClock()
    store = MemoryStore(clock)
    rec = Recorder()
    e, backend = elector(store, observers=[rec], timeout=10.0)
    lead = Leading()
    task = asyncio.create_task(e.run(lead))
    await until(lambda: lead.running)
    backend.freeze()
    clock.advance(3.0)  # the refresh starts and hangs
    await asyncio.sleep(0.01)
    clock.advance(3.5)  # the deadline passes meanwhile
    assert not e.is_leader()
    backend.thaw()  # ... and then the store answers "ok"
    await until(lambda: rec.count("stopped", "deadline") == 1)
    assert ("refresh", "ok") in rec.events
    await until(lambda: len(lead.terms) == 2 and lead.running)  # a new term, a new token
    assert lead.terms[1].fencing_token > lead.terms[0].fencing_token
    await stop(task)


async def test_store_errors_step_down_at_the_renew_deadline_and_retry_sooner() -> None:
    clock = FakeClock()
    store = MemoryStore(clock)
    rec = Recorder()
    e, backend = elector(store, observers=[rec])
    lead = Leading()
    task = asyncio.create_task(e.run(lead))
    await until(lambda: lead.running)
    backend.down = True
    clock.advance(3.0)  # first refresh fails; retries every refresh_interval/4 = 0.75 s
    await until(lambda: rec.count("refresh", "error") == 1)
    for n in range(2, 5):
        clock.advance(0.75)
        await until(lambda n=n: rec.count("refresh", "error") == n)
    assert e.is_leader()  # 5.25 s after the proof: still within the 6 s deadline
    clock.advance(0.75)
    await until(lambda: rec.count("stopped", "deadline") == 1)
    assert not lead.running and lead.cancelled == 1 and e.healthy()
    await stop(task)


async def test_a_slow_refresh_is_cut_off_at_the_deadline() -> None:
    clock = FakeClock()
    store = MemoryStore(clock)
    rec = Recorder()
    e, backend = elector(store, observers=[rec], timeout=5.0)
    lead = Leading()
    task = asyncio.create_task(e.run(lead))
    await until(lambda: lead.running)
    backend.latency = 4.0  # longer than the 3 s left before the deadline
    clock.advance(3.0)
    await asyncio.sleep(0.01)
    clock.advance(3.0)  # the call's own timeout (the time left) runs out at the deadline
    await until(lambda: rec.count("refresh", "error") == 1)
    assert not e.is_leader()  # stepped down at once (the release is still on its way)
    clock.advance(4.0)  # the slow store answers the release
    await until(lambda: rec.count("stopped", "deadline") == 1)
    await stop(task)


async def test_followers_learn_the_leader_and_one_takes_over_on_release() -> None:
    clock = FakeClock()
    store = MemoryStore(clock)
    seen = {name: Seen() for name in "abc"}
    electors = {n: elector(store, n, observers=[seen[n]])[0] for n in "abc"}
    leads = {n: Leading() for n in "abc"}
    tasks = {n: asyncio.create_task(e.run(leads[n])) for n, e in electors.items()}
    await until(lambda: sum(lead.running for lead in leads.values()) == 1)
    first = next(n for n in "abc" if leads[n].running)
    await until(lambda: all(electors[n].status()["leader"] == first for n in "abc"))
    tasks[first].cancel()  # a graceful stop releases and announces it
    await asyncio.gather(tasks[first], return_exceptions=True)
    # A waiter wakes on the release, without any time passing on the clock.
    await until(lambda: sum(leads[n].running for n in "abc" if n != first) == 1)
    second = next(n for n in "abc" if n != first and leads[n].running)
    assert leads[second].terms[0].fencing_token > leads[first].terms[0].fencing_token
    assert seen[second].leaders[-1] == second
    await stop(*tasks.values())


async def test_a_crashed_leader_is_replaced_at_its_lease_expiry() -> None:
    clock = FakeClock()
    store = MemoryStore(clock)
    rec = Recorder()
    a, backend_a = elector(store, "a")
    b, _ = elector(store, "b", observers=[rec], retry=FixedIntervalStrategy(60.0, None))
    lead_a, lead_b = Leading(), Leading()
    ta = asyncio.create_task(a.run(lead_a))
    await until(lambda: lead_a.running)
    tb = asyncio.create_task(b.run(lead_b))
    await until(lambda: b.status()["leader"] == "a")
    backend_a.freeze()  # "a" is gone: it refreshes no more
    clock.advance(9.9)
    await asyncio.sleep(0.01)
    assert not lead_b.running  # the lease still holds
    clock.advance(0.2)  # it expires: "b" wakes at the expiry, not at its 60 s retry
    await until(lambda: lead_b.running)
    assert rec.count("started") == 1
    backend_a.thaw()
    await stop(ta, tb)


async def test_lead_returning_or_raising_ends_run_and_releases() -> None:
    clock = FakeClock()
    store = MemoryStore(clock)
    e, _ = elector(store)

    async def returns(term: Term) -> None:
        return None

    await asyncio.wait_for(e.run(returns), 5)
    assert store.current() is None and e.status()["role"] == "stopped"

    async def raises(term: Term) -> None:
        raise KeyError("lead failed")

    e2, _ = elector(store)
    with pytest.raises(KeyError):
        await asyncio.wait_for(e2.run(raises), 5)
    assert store.current() is None


async def test_a_spent_strategy_raises_max_retry_error() -> None:
    clock = FakeClock()
    store = MemoryStore(clock)
    store.take_over("other", ttl=1000.0)
    e, _ = elector(store, retry=FixedIntervalStrategy(1.0, max_retry=2))
    task = asyncio.create_task(e.run(Leading()))
    for _ in range(3):
        await asyncio.sleep(0.01)
        clock.advance(1.0)
    with pytest.raises(MaxRetryError):
        await asyncio.wait_for(task, 5)


async def test_an_ineligible_leader_steps_down_with_its_reason_and_a_waiter_takes_over() -> None:
    clock = FakeClock()
    store = MemoryStore(clock)
    rec_a = Recorder()
    a, _ = elector(store, "a", observers=[rec_a])
    b, _ = elector(store, "b")
    lead_a, lead_b = Leading(), Leading()
    ta = asyncio.create_task(a.run(lead_a))
    await until(lambda: lead_a.running)
    tb = asyncio.create_task(b.run(lead_b))
    await until(lambda: b.status()["leader"] == "a")
    a.set_eligible(False, "app_unhealthy")
    # No time passes on the clock: the step-down and the hand-over are immediate.
    await until(lambda: rec_a.count("stopped", "app_unhealthy") == 1)
    await until(lambda: lead_b.running)
    assert lead_a.cancelled == 1 and not a.is_leader()
    status = a.status()
    assert status["eligible"] is False and status["ineligible_reason"] == "app_unhealthy"
    await stop(ta, tb)


async def test_an_ineligible_candidate_never_campaigns_and_waits_before_it_does_again() -> None:
    clock = FakeClock()
    store = MemoryStore(clock)
    seen = Seen()
    e, _ = elector(store, "a", observers=[seen])
    e.set_eligible(False, "app_unhealthy")  # e.g. its app has not started yet
    lead = Leading()
    task = asyncio.create_task(e.run(lead))
    for _ in range(30):
        clock.advance(1.0)
        await asyncio.sleep(0)
    assert seen.attempts == [] and store.current() is None and not lead.running
    e.set_eligible(True)  # its app is up: it campaigns at once (no delay at start)
    await until(lambda: lead.running)
    e.set_eligible(False, "app_unhealthy")  # it flaps: down ...
    await until(lambda: not lead.running and store.current() is None)
    e.set_eligible(True)  # ... and up again
    clock.advance(e.campaign_delay - 0.5)
    await asyncio.sleep(0.01)
    assert len(lead.terms) == 1  # no flapping: it waits campaign_delay (the ttl) first
    clock.advance(0.5)
    await until(lambda: len(lead.terms) == 2 and lead.running)
    await stop(task)


async def test_a_waiter_that_becomes_ineligible_stops_waiting_at_once() -> None:
    clock = FakeClock()
    store = MemoryStore(clock)
    store.take_over("other", ttl=5.0)
    seen = Seen()
    e, _ = elector(store, "a", observers=[seen], retry=FixedIntervalStrategy(60.0, None))
    task = asyncio.create_task(e.run(Leading()))
    await until(lambda: seen.attempts == ["held"])
    e.set_eligible(False, "resigned")
    await asyncio.sleep(0.01)
    clock.advance(6.0)  # the lease expires: an eligible waiter would take it now
    await asyncio.sleep(0.01)
    assert seen.attempts == ["held"] and store.current() is None
    await stop(task)
