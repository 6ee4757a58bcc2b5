"""The status file: the status JSON, replaced atomically (temp file, fsync, rename).

It is written 0644 through the open descriptor (never chmod by path, which a symlink
could redirect), only into a directory that neither its group nor other users can write (or
that has the sticky bit), and `leaderd check` trusts only a file of its own user.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import stat
import tempfile
import time
from typing import Any

from .election import ElectionObserver, Elector

#: `leaderd check` reads at most this much; a status file is well under 1 KiB.
MAX_STATUS_BYTES = 64 * 1024


def unsafe_directory(path: str) -> str | None:
    """Why the directory of `path` is unsafe for the status file, or None if it is fine.

    Other users must not be able to replace the file: a directory that its group or
    everyone can write is refused unless it has the sticky bit (as /tmp has), where only
    a file's owner may rename or delete it.
    """
    directory = os.path.dirname(os.path.abspath(path))
    st = os.stat(directory)
    writable = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    if writable and not st.st_mode & stat.S_ISVTX:
        who = "other users" if st.st_mode & stat.S_IWOTH else "its group"
        return (
            f"directory {directory} is writable by {who} (mode "
            f"{stat.S_IMODE(st.st_mode):o}) without the sticky bit, so another user could "
            f"replace the status file; use a private directory, or chmod g-w,o-w (or +t) it"
        )
    return None


def write_status(path: str, status: dict[str, Any]) -> None:
    """Replace `path` with `status` so that readers see the old or the new file, whole."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".leaderd-status-", dir=directory)
    try:
        os.fchmod(fd, 0o644)  # the descriptor, not the path: no symlink can redirect it
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(status, fh, separators=(",", ":"), sort_keys=True)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def check_status_file(path: str, now: float | None = None) -> tuple[bool, str]:
    """(True, why) iff the file is ours, says leader, and `valid_until` is in the future."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return False, f"{path} does not exist"
    except OSError as exc:
        return False, f"{path} cannot be opened ({exc.strerror or exc})"
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):  # before fdopen, which refuses a directory
        os.close(fd)
        return False, f"{path} is not a regular file"
    with os.fdopen(fd, "rb") as fh:
        if st.st_uid != os.geteuid():
            return False, f"{path} belongs to uid {st.st_uid}, not to this user: not trusted"
        data = fh.read(MAX_STATUS_BYTES + 1)
    if len(data) > MAX_STATUS_BYTES:
        return False, f"{path} is larger than {MAX_STATUS_BYTES} bytes: not a status file"
    try:
        status = json.loads(data, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        return False, f"{path} is not readable JSON ({str(exc)[:100]})"
    if not isinstance(status, dict):
        return False, f"{path} does not hold a status object"
    now = time.time() if now is None else now
    role = status.get("role")
    valid_until = status.get("valid_until")
    if role != "leader":
        return False, f"role is {str(role)[:40]!r}"
    if not isinstance(valid_until, int | float) or not _finite(valid_until) or valid_until <= now:
        return False, f"leadership expired (valid_until={str(valid_until)[:40]}, now={now:.3f})"
    return True, f"leader, valid for {valid_until - now:.3f}s more"


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number a status file may hold")


class StatusFileWriter(ElectionObserver):
    """Writes the status file on every change, off the election loop (in a thread).

    One write at a time: a write already running in its thread cannot be cancelled, so
    `close` waits for it and only then writes the final status; no older write can
    land after the last one.
    """

    def __init__(self, path: str, log: Any) -> None:
        self.path = path
        self.log = log
        self._dirty = asyncio.Event()
        self._failing = False
        self._task: asyncio.Task[None] | None = None
        self._inflight: asyncio.Future[None] | None = None

    def bind(self, elector: Elector) -> None:
        self.elector = elector

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="leaderd-status-file")
        self._dirty.set()

    def on_status_change(self) -> None:
        self._dirty.set()

    async def _run(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            await self._write()

    async def _write(self) -> None:
        status = self.elector.status()  # taken now: the newest state when the write starts
        self._inflight = asyncio.ensure_future(asyncio.to_thread(write_status, self.path, status))
        try:
            await asyncio.shield(self._inflight)  # a cancelled caller leaves it to close()
        except OSError as exc:
            if not self._failing:
                self.log.error("status_file_failed", path=self.path, error=exc.strerror or str(exc))
            self._failing = True
        else:
            if self._failing:
                self.log.info("status_file_recovered", path=self.path)
            self._failing = False

    async def close(self) -> None:
        """Stop the writer, wait for a write still running, then write the final status."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task})
        if self._inflight is not None:
            await asyncio.wait({self._inflight})  # its outcome was the cancelled task's
            if not self._inflight.cancelled():
                self._inflight.exception()  # retrieved: an OSError here is superseded
        await self._write()
