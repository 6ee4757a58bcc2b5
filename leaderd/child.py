"""Exec mode: run a command only while leader, in its own process group.

On step-down the whole group gets SIGTERM, then SIGKILL when the grace period ends,
which is always before the lease could expire, so no grandchild outlives leadership.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Mapping
from typing import Any

from .election import Clock, Term

#: Share of the remaining lease given to the child to exit after SIGTERM.
GRACE_SHARE = 0.8


def child_environment(
    base: Mapping[str, str], election: str, identity: str, token: int
) -> dict[str, str]:
    """The child's environment: ours without leaderd's own settings (and so without
    any Redis URL or password), plus the election, identity and fencing token."""
    env = {k: v for k, v in base.items() if not k.startswith("LEADERD_")}
    env.update(
        LEADERD_ELECTION=election, LEADERD_IDENTITY=identity, LEADERD_FENCING_TOKEN=str(token)
    )
    return env


def _die_with_parent_hook() -> Any:
    """A preexec function that makes Linux SIGKILL the child if leaderd dies.

    prctl is looked up here, in the parent, so the forked child runs no dlopen;
    ctypes (about 1 MB) is imported only in exec mode.
    """
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (ImportError, OSError, AttributeError):
        return None

    def hook() -> None:  # pragma: no cover - runs in the forked child
        prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG

    return hook


class ChildRunner:
    """The `lead` function of exec mode; `exit_code` is set when the child exits."""

    def __init__(
        self,
        command: list[str],
        election: str,
        identity: str,
        clock: Clock,
        log: Any,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.command = command
        self.election = election
        self.identity = identity
        self.clock = clock
        self.log = log
        self.env = dict(os.environ if env is None else env)
        self.exit_code: int | None = None
        self._preexec = _die_with_parent_hook()

    async def __call__(self, term: Term) -> int:
        env = child_environment(self.env, self.election, self.identity, term.fencing_token)
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.command,
                env=env,
                start_new_session=True,
                preexec_fn=self._preexec,
                stdin=asyncio.subprocess.DEVNULL,
            )
        except OSError as exc:
            self.log.error("child_start_failed", command=self.command[0], error=str(exc))
            self.exit_code = 127 if isinstance(exc, FileNotFoundError) else 126
            return self.exit_code
        self.log.info(
            "child_started", pid=proc.pid, command=self.command[0], token=term.fencing_token
        )
        try:
            code = await proc.wait()
        except asyncio.CancelledError:
            grace = max(0.0, (term.lease_expires_at - self.clock.now()) * GRACE_SHARE)
            await self._stop_group(proc, grace)
            raise
        self.exit_code = code if code >= 0 else 128 - code
        self.log.info("child_exited", pid=proc.pid, code=self.exit_code)
        await self._stop_group(proc, max(0.0, term.lease_expires_at - self.clock.now()) * 0.5)
        return self.exit_code

    async def _stop_group(self, proc: asyncio.subprocess.Process, grace: float) -> None:
        """SIGTERM the child's process group, wait up to `grace`, then SIGKILL it."""
        pgid = proc.pid  # start_new_session: the child leads its own group
        if not _signal_group(pgid, signal.SIGTERM):
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while loop.time() < deadline:
            if proc.returncode is None:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.shield(proc.wait()), 0.05)
            else:
                await asyncio.sleep(0.05)
            if proc.returncode is not None and not _signal_group(pgid, 0):
                self.log.info("child_stopped", pid=proc.pid, signal="SIGTERM")
                return
        _signal_group(pgid, signal.SIGKILL)
        await proc.wait()
        self.log.warning("child_killed", pid=proc.pid, grace_s=round(grace, 3))


def _signal_group(pgid: int, sig: int) -> bool:
    """Send `sig` to a process group; False if no process is left in it."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
