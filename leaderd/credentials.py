"""Redis credentials during a rotation: drop pooled connections when Redis refuses them.

The password file itself is read at every connect by `connection.PasswordFile`.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from .connection import is_auth_error
from .election import ElectionObserver


class CredentialReset(ElectionObserver):
    """When Redis refuses our credentials, drop every pooled connection.

    The password file is read by a credential provider at every connect, so the
    reconnects use the rotated password; logged once per change of state.
    """

    def __init__(self, path: str, client: Any, log: Any) -> None:
        self.path = path
        self.client = client
        self.log = log
        self.refused = False
        self._reset: asyncio.Task[None] | None = None

    def on_attempt(self, outcome: str, error: Exception | None) -> None:
        self._check(outcome, error)

    def on_refresh(self, outcome: str, duration: float, error: Exception | None) -> None:
        self._check(outcome, error)

    def _check(self, outcome: str, error: Exception | None) -> None:
        if not is_auth_error(error):
            if outcome != "error" and self.refused:
                self.refused = False
                self.log.info("redis_auth_recovered", path=self.path)
            return
        if not self.refused:
            self.refused = True
            hint = "reconnecting with the password file's current content"
            self.log.warning("redis_auth_refused", path=self.path, hint=hint)
        pool = getattr(self.client, "connection_pool", None)
        if pool is not None and (self._reset is None or self._reset.done()):
            self._reset = asyncio.ensure_future(_disconnect(pool))


async def _disconnect(pool: Any) -> None:
    with contextlib.suppress(Exception):
        await pool.disconnect()
