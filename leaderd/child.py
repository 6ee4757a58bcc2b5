"""Exec mode: run a command only while leader, under a reaper that owns its whole tree.

On step-down every descendant gets SIGTERM, then SIGKILL when the grace period ends,
which is always before the lease could expire; if leaderd dies, the reaper notices
(a pipe closes) and does the same, so no grandchild outlives leadership.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
from collections.abc import Mapping
from typing import Any

from . import reaper
from .clock import Clock
from .election import Term

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


REAPER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reaper.py")


class ChildRunner:
    """The `lead` function of exec mode; `exit_code` is set when the child exits.

    The command runs under `reaper.py`, a subreaper that leaderd talks to with
    signals and a pipe: no process of the command's tree outlives a step-down or
    leaderd's own death (see reaper.py).
    """

    def __init__(
        self,
        command: list[str],
        election: str,
        identity: str,
        clock: Clock,
        log: Any,
        env: Mapping[str, str] | None = None,
        death_grace: float = 1.0,
    ) -> None:
        self.command = command
        self.election = election
        self.identity = identity
        self.clock = clock
        self.log = log
        self.env = dict(os.environ if env is None else env)
        self.death_grace = death_grace  #: for the reaper if leaderd dies mid-term
        self.exit_code: int | None = None

    async def __call__(self, term: Term) -> int:
        env = child_environment(self.env, self.election, self.identity, term.fencing_token)
        if shutil.which(self.command[0], path=env.get("PATH")) is None:
            self.log.error("child_start_failed", command=self.command[0],
                           error="not found or not executable")  # fmt: skip
            self.exit_code = 127
            return self.exit_code
        alive_r, alive_w = os.pipe()  # the reaper sees EOF when leaderd dies
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-I", "-S", REAPER, str(alive_r), f"{self.death_grace:.3f}",
                "--", *self.command,
                env=env, start_new_session=True, pass_fds=(alive_r,),
                stdin=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
        except OSError as exc:
            os.close(alive_w)
            self.log.error("child_start_failed", command=self.command[0], error=str(exc))
            self.exit_code = 126
            return self.exit_code
        finally:
            os.close(alive_r)
        self.log.info(
            "child_started", pid=proc.pid, command=self.command[0], token=term.fencing_token
        )
        try:
            try:
                code = await proc.wait()
            except asyncio.CancelledError:
                grace = max(0.0, (term.lease_expires_at - self.clock.now()) * GRACE_SHARE)
                await self._stop(proc, grace)
                raise
        finally:
            os.close(alive_w)
        self.exit_code = code if code >= 0 else 128 - code
        self.log.info("child_exited", pid=proc.pid, code=self.exit_code)
        return self.exit_code

    async def _stop(self, proc: asyncio.subprocess.Process, grace: float) -> None:
        """SIGTERM the command's tree, SIGKILL it when `grace` ends; wait until it is gone.

        The reaper is sent SIGCONT with every request (a stopped reaper handles none);
        if it still has not finished 2 s after the SIGKILL request (stopped again,
        hung), leaderd kills every descendant it finds in /proc, and the reaper."""
        if proc.returncode is not None:
            return
        _signal(proc.pid, signal.SIGCONT)
        _signal(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(proc.wait()), grace)
            self.log.info("child_stopped", pid=proc.pid, signal="SIGTERM")
            return
        except TimeoutError:
            pass
        _signal(proc.pid, signal.SIGCONT)
        _signal(proc.pid, signal.SIGHUP)  # the reaper SIGKILLs every descendant
        try:
            await asyncio.wait_for(asyncio.shield(proc.wait()), 2.0)
        except TimeoutError:  # the reaper is stopped or stuck: do its work ourselves
            self.log.warning("child_reaper_unresponsive", pid=proc.pid)
            for _ in range(100):  # bounded: a tree that forks as it dies gets more passes
                tree = [pid for pid in reaper.descendants(proc.pid) if _alive(pid)]
                for pid in tree:
                    _signal(pid, signal.SIGKILL)
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                if not tree:
                    break
                await asyncio.sleep(0.01)
            _signal(proc.pid, signal.SIGKILL)  # its zombies go to init
            await proc.wait()
        self.log.warning("child_killed", pid=proc.pid, grace_s=round(grace, 3))


def _alive(pid: int) -> bool:
    """Not exited (a zombie waits for its stopped parent to reap it)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            state = fh.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in (b"Z", b"X")


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)
