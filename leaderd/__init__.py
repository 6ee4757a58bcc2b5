"""leaderd: Redis locks with fencing tokens, and leader election built on them."""

from typing import TYPE_CHECKING, Any

from ._core import AcquireResult
from ._version import __version__
from .aio import AsyncAutoRefresh, AsyncLock, AsyncLockClient
from .clock import Clock, SystemClock
from .election import ElectionObserver, Elector, Term
from .errors import (
    FailedToPreemptLockError,
    FunctionsNotLoadedError,
    LockError,
    LockNotHeldError,
    MaxRetryError,
    NotReplicatedError,
)
from .strategy import FixedIntervalStrategy, NonFixedIntervalStrategy, RetryStrategy

if TYPE_CHECKING:
    from .lock import AutoRefresh, Lock, LockClient

__all__ = [
    "AcquireResult",
    "AsyncAutoRefresh",
    "AsyncLock",
    "AsyncLockClient",
    "AutoRefresh",
    "Clock",
    "ElectionObserver",
    "Elector",
    "FailedToPreemptLockError",
    "FixedIntervalStrategy",
    "FunctionsNotLoadedError",
    "Lock",
    "LockClient",
    "LockError",
    "LockNotHeldError",
    "MaxRetryError",
    "NonFixedIntervalStrategy",
    "NotReplicatedError",
    "RetryStrategy",
    "SystemClock",
    "Term",
    "__version__",
]

#: Imported on first use: the daemon, built on the asyncio client, never loads the
#: synchronous one (its idle memory is a measured goal).
_LAZY = {"AutoRefresh": ".lock", "Lock": ".lock", "LockClient": ".lock"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'leaderd' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value
