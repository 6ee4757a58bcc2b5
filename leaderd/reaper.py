"""Exec mode's reaper: the parent of the command and of everything it leaves behind.

Run by path (stdlib only, no package import): `reaper.py FD GRACE -- CMD ARGS`. It
makes itself a child subreaper (Linux), so every descendant of CMD, even one that
called setsid or was orphaned, stays in its process tree and can be found in /proc.
- SIGTERM (leaderd steps down): SIGTERM to every descendant.
- SIGHUP (the grace is over): SIGKILL to every descendant, until none is left.
- EOF on FD (leaderd died, even by SIGKILL): SIGTERM, GRACE seconds, then SIGKILL.
- CMD exits by itself: the rest of the tree gets the same, then the reaper exits
  with CMD's code (128 + N if a signal N ended it).
The reaper exits only once no descendant is left.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time

PR_SET_CHILD_SUBREAPER = 36


def set_subreaper() -> bool:
    """Become the reaper of orphaned descendants (Linux >= 3.4); False elsewhere."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def descendants(root: int) -> list[int]:
    """Every process below `root`, from /proc (empty where /proc is absent)."""
    children: dict[int, list[int]] = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return []
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as fh:
                data = fh.read()
        except OSError:
            continue
        ppid = int(data[data.rindex(b")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(name))
    out: list[int] = []
    stack = [root]
    while stack:
        for pid in children.get(stack.pop(), []):
            out.append(pid)
            stack.append(pid)
    return out


class Reaper:
    def __init__(self, fd: int, grace: float, command: list[str]) -> None:
        self.fd = fd
        self.grace = grace
        self.me = os.getpid()
        self.subreaper = set_subreaper()
        self.code: int | None = None
        self.pending: list[int] = []
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        os.set_blocking(wake_r, False)
        self.wake = wake_r
        signal.set_wakeup_fd(wake_w)
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        self.child = subprocess.Popen(command, process_group=0, close_fds=True)

    def _on_signal(self, signum: int, frame: object) -> None:
        self.pending.append(signum)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.child.pid:
                self.child.returncode = os.waitstatus_to_exitcode(status)
                code = self.child.returncode
                self.code = code if code >= 0 else 128 - code

    def _signal_tree(self, sig: int) -> bool:
        """Send `sig` to every descendant; False if none is left."""
        pids = descendants(self.me) if self.subreaper else []
        alive = False
        for pid in pids:
            try:
                os.kill(pid, sig)
                alive = True
            except (ProcessLookupError, PermissionError):
                pass
        try:  # without /proc or a subreaper, the command's group is what we know
            os.killpg(self.child.pid, sig)
            alive = True
        except (ProcessLookupError, PermissionError):
            pass
        return alive

    def _gone(self) -> bool:
        self._reap()
        if self.child.returncode is None:
            return False
        if self.subreaper and descendants(self.me):
            return False
        try:
            os.killpg(self.child.pid, 0)
            return False
        except (ProcessLookupError, PermissionError):
            return True

    def _kill_all(self) -> None:
        while not self._gone():
            self._signal_tree(signal.SIGKILL)
            self._wait_events(0.01)

    def _stop(self, grace: float) -> None:
        self._signal_tree(signal.SIGTERM)
        deadline = time.monotonic() + grace
        while not self._gone() and time.monotonic() < deadline:
            if signal.SIGHUP in self._wait_events(min(0.05, deadline - time.monotonic())):
                break
        self._kill_all()

    def _wait_events(self, timeout: float) -> list[int]:
        try:
            select.select([self.wake], [], [], max(0.0, timeout))
        except InterruptedError:
            pass
        try:
            os.read(self.wake, 512)
        except BlockingIOError:
            pass
        signals, self.pending = self.pending, []
        return signals

    def run(self) -> int:
        terminating = False
        while True:
            try:
                ready, _, _ = select.select([self.fd, self.wake], [], [], 1.0)
            except InterruptedError:
                ready = []
            if self.wake in ready:
                try:
                    os.read(self.wake, 512)
                except BlockingIOError:
                    pass
            signals, self.pending = self.pending, []
            self._reap()
            if self.fd in ready and not os.read(self.fd, 64):
                self._stop(self.grace)  # leaderd is gone: nothing may outlive it
                break
            if signal.SIGHUP in signals:
                self._kill_all()
                break
            if (signal.SIGTERM in signals or signal.SIGINT in signals) and not terminating:
                terminating = True
                self._signal_tree(signal.SIGTERM)
            if self.code is not None:
                if terminating:
                    if self._gone():
                        break
                    continue
                self._stop(self.grace)  # the command ended: stop what it left behind
                break
        return self.code if self.code is not None else 128 + signal.SIGKILL


def main(argv: list[str]) -> int:
    if len(argv) < 5 or argv[3] != "--":
        print("usage: reaper.py FD GRACE -- CMD [ARGS...]", file=sys.stderr)
        return 2
    try:
        reaper = Reaper(int(argv[1]), float(argv[2]), argv[4:])
    except OSError as exc:
        print(f"leaderd: cannot start {argv[4]}: {exc.strerror or exc}", file=sys.stderr)
        return 127 if isinstance(exc, FileNotFoundError) else 126
    return reaper.run()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
