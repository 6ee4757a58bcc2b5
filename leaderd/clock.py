"""Time for the election: monotonic for every deadline, wall time only for reports.

A module of its own at the bottom, so that the election, its backends and the
outputs share one `Clock` without importing each other; tests inject a fake one.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    """Monotonic time for deadlines, wall time for reports, and sleeping."""

    def now(self) -> float: ...

    def wall(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real clock: `time.monotonic` for every deadline, `time.time` only for display."""

    def now(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))
