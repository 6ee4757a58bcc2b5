"""leaderd: Redis locks with fencing tokens, and leader election built on them."""

from ._core import AcquireResult
from ._version import __version__
from .aio import AsyncAutoRefresh, AsyncLock, AsyncLockClient
from .clock import Clock, SystemClock
from .election import ElectionObserver, Elector, Term
from .errors import (
    FailedToPreemptLockError,
    LockError,
    LockNotHeldError,
    MaxRetryError,
    NotReplicatedError,
)
from .lock import AutoRefresh, Lock, LockClient
from .strategy import FixedIntervalStrategy, NonFixedIntervalStrategy, RetryStrategy

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
