"""Resign, switchover and preemption in the election state machine, on the in-memory
backend and a fake clock (test_control.py runs them against real Redis and daemons)."""

from __future__ import annotations

import asyncio
from typing import Any

from leaderd import ElectionObserver, FixedIntervalStrategy
from leaderd.backend import MemoryStore

from .test_election_memory import elector, stop
from .test_elector import FakeClock, Leading, Recorder, until


class Controls(ElectionObserver):
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def on_control(self, event: str, fields: dict[str, Any]) -> None:
        self.events.append((event, fields))


async def test_resign_hands_over_and_keeps_the_old_leader_out_for_the_hold_off() -> None:
    clock = FakeClock()
    store = MemoryStore(clock)
    rec = Recorder()
    a, _ = elector(store, "a", observers=[rec])
    b, _ = elector(store, "b")
    lead_a, lead_b = Leading(), Leading()
    ta = asyncio.create_task(a.run(lead_a))
    await until(lambda: lead_a.running)
    tb = asyncio.create_task(b.run(lead_b))
    await until(lambda: "b" in store.waiting)
    assert await a.resign(hold_off=30.0) is True  # returns once the lease is released
    assert rec.count("stopped", "resigned") == 1 and lead_a.cancelled == 1
    await until(lambda: lead_b.running)
    status = a.status()
    assert status["eligible"] is False and status["ineligible_reason"] == "resigned"
    token_b = lead_b.terms[0].fencing_token
    assert token_b > lead_a.terms[0].fencing_token
    # b resigns too, with no hold-off: a is still held off, so nobody leads for now
    assert await b.resign(0.0) is True
    clock.advance(29.0)
    await asyncio.sleep(0.01)
    assert len(lead_a.terms) == 1  # a stays out for its whole hold-off
    await until(lambda: lead_b.running)  # b, not held off, leads again
    b.set_eligible(False, "app_unhealthy")
    clock.advance(0.5)
    await asyncio.sleep(0.01)
    assert len(lead_a.terms) == 1 and store.current() is None
    clock.advance(1.0)  # the hold-off is over
    await until(lambda: lead_a.running)
    assert a.status()["eligible"] is True and a.status()["ineligible_reason"] is None
    await stop(ta, tb)


async def test_resign_of_a_follower_keeps_it_out_and_returns_false() -> None:
    clock = FakeClock()
    store = MemoryStore(clock)
    store.take_over("other", ttl=5.0)
    a, _ = elector(store, "a")
    lead = Leading()
    task = asyncio.create_task(a.run(lead))
    await until(lambda: a.status()["leader"] == "other")
    assert await a.resign(hold_off=20.0) is False
    clock.advance(6.0)  # the other lease expires; a is held off
    await asyncio.sleep(0.01)
    assert not lead.running and store.current() is None
    clock.advance(15.0)
    await until(lambda: lead.running)
    await stop(task)


async def test_switchover_goes_to_the_named_waiter_not_the_first() -> None:
    clock = FakeClock()
    store = MemoryStore(clock)
    rec = Recorder()
    a, backend = elector(store, "a", observers=[rec])
    leads = {name: Leading() for name in "abcd"}
    tasks = [asyncio.create_task(a.run(leads["a"]))]
    await until(lambda: leads["a"].running)
    for name in "bcd":
        e, _ = elector(store, name)
        tasks.append(asyncio.create_task(e.run(leads[name])))
        await until(lambda name=name: name in store.waiting)
    result = await backend.request("switchover", "d", 0.0, 0, 1.0)
    assert result.ok and result.holder is not None and result.holder.identity == "a"
    await until(lambda: leads["d"].running)
    assert rec.count("stopped", "switchover") == 1
    assert not leads["b"].running and not leads["c"].running
    assert leads["d"].terms[0].fencing_token > leads["a"].terms[0].fencing_token
    await stop(*tasks)


async def test_switchover_to_a_non_waiter_is_refused_and_changes_nothing() -> None:
    clock = FakeClock()
    store = MemoryStore(clock)
    a, backend = elector(store, "a")
    b, _ = elector(store, "b")
    lead_a, lead_b = Leading(), Leading()
    ta = asyncio.create_task(a.run(lead_a))
    await until(lambda: lead_a.running)
    tb = asyncio.create_task(b.run(lead_b))
    await until(lambda: "b" in store.waiting)
    b.set_eligible(False, "app_unhealthy")  # leaves the queue
    await until(lambda: "b" not in store.waiting)
    for target, reason in (("b", "not_waiting"), ("zz", "not_waiting"), ("a", "already_leads")):
        result = await backend.request("switchover", target, 0.0, 0, 1.0)
        assert not result.ok and result.reason == reason
    await asyncio.sleep(0.01)
    assert lead_a.running and len(lead_a.terms) == 1 and store.request is None
    await stop(ta, tb)


async def test_preemption_happens_once_after_the_delay_and_never_back() -> None:
    clock = FakeClock()
    store = MemoryStore(clock)
    rec = Recorder()
    controls = Controls()
    low, _ = elector(store, "low", observers=[rec], preempt=True, preempt_delay=5.0)
    high, _ = elector(store, "high", priority=10, preempt=True, preempt_delay=5.0,
                      observers=[controls])  # fmt: skip
    lead_low, lead_high = Leading(), Leading()
    t_low = asyncio.create_task(low.run(lead_low))
    await until(lambda: lead_low.running)  # the preferred one was away: low leads
    t_high = asyncio.create_task(high.run(lead_high))
    await until(lambda: high.status()["leader"] == "low")
    clock.advance(4.9)
    await asyncio.sleep(0.01)
    assert lead_low.running and not lead_high.running  # not before the delay
    clock.advance(0.2)
    await until(lambda: lead_high.running)
    assert rec.count("stopped", "preempted") == 1
    assert lead_high.terms[0].fencing_token > lead_low.terms[0].fencing_token
    assert [e for e, f in controls.events] == ["preempt"]
    for _ in range(40):  # low (lower priority, preempt on) never takes it back
        clock.advance(1.0)
        await asyncio.sleep(0.002)
    assert lead_high.running and len(lead_high.terms) == 1 and len(lead_low.terms) == 1
    await stop(t_low, t_high)


async def test_an_ineligible_candidate_does_not_preempt() -> None:
    clock = FakeClock()
    store = MemoryStore(clock)
    low, _ = elector(store, "low")
    high, _ = elector(store, "high", priority=10, preempt=True, preempt_delay=2.0,
                      retry=FixedIntervalStrategy(1.0, None))  # fmt: skip
    lead_low, lead_high = Leading(), Leading()
    t_low = asyncio.create_task(low.run(lead_low))
    await until(lambda: lead_low.running)
    high.set_eligible(False, "app_unhealthy")
    t_high = asyncio.create_task(high.run(lead_high))
    for _ in range(20):
        clock.advance(1.0)
        await asyncio.sleep(0.002)
    assert lead_low.running and len(lead_low.terms) == 1 and not lead_high.running
    await stop(t_low, t_high)
