"""Retry strategies: when to try a held lock again, and when to give up.

A strategy is a pure function of the retry number, so one object can be shared
by any number of calls, threads and event loops.
"""

from __future__ import annotations

import math
import random
from typing import Protocol, runtime_checkable


@runtime_checkable
class RetryStrategy(Protocol):
    """How long to wait before retry number `retry` (1-based); None means give up.

    Implement this to plug in your own policy. It must not keep per-call state:
    the same object is used concurrently by many `lock()` calls.
    """

    def next_delay(self, retry: int) -> float | None: ...


def _check_max_retry(max_retry: int | None) -> None:
    if max_retry is not None and (isinstance(max_retry, bool) or max_retry < 0):
        raise ValueError(f"max_retry must be None (unlimited) or >= 0, got {max_retry!r}")


def _check_positive(name: str, value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")


def _check_jitter(jitter: float) -> None:
    if not (isinstance(jitter, int | float) and 0.0 <= jitter < 1.0):
        raise ValueError(f"jitter must be a fraction in [0, 1), got {jitter!r}")


class FixedIntervalStrategy:
    """Retry every `interval` seconds, at most `max_retry` times (None: forever, 0: never).

    `jitter` (a fraction, default 0) spreads each delay by +/- that much.
    """

    def __init__(self, interval: float, max_retry: int | None = 10, *, jitter: float = 0.0) -> None:
        _check_positive("interval", interval)
        _check_max_retry(max_retry)
        _check_jitter(jitter)
        self.interval = float(interval)
        self.max_retry = max_retry
        self.jitter = float(jitter)

    def next_delay(self, retry: int) -> float | None:
        if self.max_retry is not None and retry > self.max_retry:
            return None
        if self.jitter:
            return self.interval * random.uniform(1.0 - self.jitter, 1.0 + self.jitter)
        return self.interval

    def __repr__(self) -> str:
        return (
            f"FixedIntervalStrategy(interval={self.interval}, max_retry={self.max_retry}, "
            f"jitter={self.jitter})"
        )


class NonFixedIntervalStrategy:
    """Exponential backoff: `interval * multiplier**(retry-1)`, capped at `max_interval`.

    Each delay is then spread by +/- `jitter` (a fraction) so that candidates that
    failed together do not retry in lock-step; the result never exceeds `max_interval`.
    """

    def __init__(
        self,
        interval: float,
        max_retry: int | None = 10,
        *,
        max_interval: float = 30.0,
        multiplier: float = 2.0,
        jitter: float = 0.2,
    ) -> None:
        _check_positive("interval", interval)
        _check_positive("max_interval", max_interval)
        _check_max_retry(max_retry)
        if max_interval < interval:
            raise ValueError(f"max_interval ({max_interval}) must be >= interval ({interval})")
        if not (isinstance(multiplier, int | float) and 1.0 <= multiplier <= 1000):
            raise ValueError(f"multiplier must be between 1 and 1000, got {multiplier!r}")
        _check_jitter(jitter)
        self.interval = float(interval)
        self.max_retry = max_retry
        self.max_interval = float(max_interval)
        self.multiplier = float(multiplier)
        self.jitter = float(jitter)

    def base_delay(self, retry: int) -> float:
        """The delay before jitter: grows by `multiplier` each retry up to the cap."""
        exponent = max(retry - 1, 0)
        # Compare in log space so huge retry numbers cannot overflow a float.
        if exponent * math.log(self.multiplier) >= math.log(self.max_interval / self.interval):
            return self.max_interval
        return self.interval * self.multiplier**exponent

    def next_delay(self, retry: int) -> float | None:
        if self.max_retry is not None and retry > self.max_retry:
            return None
        delay = self.base_delay(retry)
        if self.jitter:
            delay *= random.uniform(1.0 - self.jitter, 1.0 + self.jitter)
        return min(delay, self.max_interval)

    def __repr__(self) -> str:
        return (
            f"NonFixedIntervalStrategy(interval={self.interval}, max_retry={self.max_retry}, "
            f"max_interval={self.max_interval}, multiplier={self.multiplier}, "
            f"jitter={self.jitter})"
        )
