"""Retry strategies: bounds, growth, jitter, giving up, and sharing across threads."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import given
from hypothesis import strategies as st

from leaderd import FixedIntervalStrategy, NonFixedIntervalStrategy, RetryStrategy

intervals = st.floats(min_value=0.001, max_value=100, allow_nan=False)


@given(intervals, st.integers(min_value=0, max_value=50))
def test_fixed_gives_interval_exactly_max_retry_times(interval: float, max_retry: int) -> None:
    s = FixedIntervalStrategy(interval, max_retry)
    delays = [s.next_delay(n) for n in range(1, max_retry + 3)]
    assert delays[:max_retry] == [interval] * max_retry
    assert delays[max_retry:] == [None, None]


def test_fixed_none_is_unlimited_and_zero_is_no_retry() -> None:
    assert FixedIntervalStrategy(0.5, None).next_delay(10**9) == 0.5
    assert FixedIntervalStrategy(0.5, 0).next_delay(1) is None


@given(
    intervals,
    st.floats(min_value=1.0, max_value=10.0),
    st.floats(min_value=1.0, max_value=1000.0),
    st.floats(min_value=0.0, max_value=0.9),
    st.integers(min_value=1, max_value=10_000),
)
def test_exponential_grows_to_cap_within_jitter(
    interval: float, multiplier: float, cap_factor: float, jitter: float, retry: int
) -> None:
    cap = interval * cap_factor
    s = NonFixedIntervalStrategy(
        interval, None, max_interval=cap, multiplier=multiplier, jitter=jitter
    )
    base = s.base_delay(retry)
    assert interval <= base <= cap * (1 + 1e-9)
    assert s.base_delay(retry + 1) >= base  # really grows (the Go seed did not)
    delay = s.next_delay(retry)
    assert delay is not None
    assert base * (1 - jitter) - 1e-9 <= delay <= min(cap, base * (1 + jitter)) + 1e-9


def test_exponential_doubles() -> None:
    s = NonFixedIntervalStrategy(0.1, 10, max_interval=100, jitter=0)
    assert [s.next_delay(n) for n in (1, 2, 3, 4)] == pytest.approx([0.1, 0.2, 0.4, 0.8])
    assert s.next_delay(11) is None
    assert s.base_delay(10**9) == 100  # no overflow


def test_jitter_spreads_delays() -> None:
    s = NonFixedIntervalStrategy(1.0, None, max_interval=10, jitter=0.5)
    assert len({s.next_delay(1) for _ in range(50)}) > 10


@pytest.mark.parametrize(
    "make",
    [
        lambda: FixedIntervalStrategy(0, 1),
        lambda: FixedIntervalStrategy(-1, 1),
        lambda: FixedIntervalStrategy(math.nan, 1),
        lambda: FixedIntervalStrategy(1, -1),
        lambda: NonFixedIntervalStrategy(1, 1, max_interval=0.5),
        lambda: NonFixedIntervalStrategy(1, 1, multiplier=0.5),
        lambda: NonFixedIntervalStrategy(1, 1, jitter=1.5),
    ],
)
def test_bad_parameters_are_rejected(make: object) -> None:
    with pytest.raises(ValueError):
        make()  # type: ignore[operator]


def test_strategies_are_stateless_and_shareable() -> None:
    s = FixedIntervalStrategy(0.01, 3)
    assert isinstance(s, RetryStrategy)

    def run(_: int) -> list[float | None]:
        return [s.next_delay(n) for n in range(1, 6)]

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(run, range(64)))
    assert all(r == [0.01, 0.01, 0.01, None, None] for r in results)
