"""The backend an `Elector` uses when it is given a lock client instead of a backend.

Below the election, so that `election.py` never imports `redis_backend.py`: the
election depends on the `ElectionBackend` protocol only.
"""

from __future__ import annotations

from typing import Any

from .backend import ElectionBackend
from .clock import Clock
from .redis_backend import RedisBackend


def election_backend(client: Any, election: str, clock: Clock) -> ElectionBackend:
    """`client` itself if it is an `ElectionBackend`, else the Redis backend around it
    (an `AsyncLockClient`)."""
    if hasattr(client, "transient") and hasattr(client, "renew"):
        backend: ElectionBackend = client
        return backend
    return RedisBackend(client, election, clock)
