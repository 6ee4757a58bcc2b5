"""leaderd: Redis locks with fencing tokens, and leader election built on them."""

from ._version import __version__
from .aio import AsyncLock, AsyncLockClient
from .errors import FailedToPreemptLockError, LockError, LockNotHeldError, MaxRetryError
from .lock import AutoRefresh, Lock, LockClient
from .strategy import FixedIntervalStrategy, NonFixedIntervalStrategy, RetryStrategy

__all__ = [
    "AsyncLock",
    "AsyncLockClient",
    "AutoRefresh",
    "FailedToPreemptLockError",
    "FixedIntervalStrategy",
    "Lock",
    "LockClient",
    "LockError",
    "LockNotHeldError",
    "MaxRetryError",
    "NonFixedIntervalStrategy",
    "RetryStrategy",
    "__version__",
]
