"""`leaderd resign`, `switchover` and `watch`: clients of an election, not candidates.

Control requests travel through Redis (the leader listens on its control channel), so
they need only the credentials and ACL the candidates have; the HTTP port stays
read-only. Each command prints one line per result and exits 0 or 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis

from .aio import AsyncLockClient
from .backend import Holder
from .connection import RedisTarget, async_client, redact_url
from .redis_backend import election_key, follow, send_request

#: Why the store refused a request, as the operator reads it.
REFUSALS = {
    "no_leader": "nobody leads election {election}",
    "foreign": "the lock of election {election} is held by something that is not a leaderd "
    "candidate",
    "already_leads": "{to} already leads election {election}",
    "not_waiting": "{to} is not a live, eligible candidate of election {election} (it is not "
    "waiting: unknown, app unhealthy, resigned or stopped)",
    "not_listening": "{to} is not a live candidate of election {election} (its place in the "
    "queue remains, but its connection is gone)",
    "not_higher": "{to} does not have a higher priority than the leader",
}


#: After the old leader stepped down, how long to wait to name its successor.
SUCCESSOR_GRACE = 2.0


class CommandError(Exception):
    """A command's failure, printed as one line with exit status 1."""


@dataclass(frozen=True)
class Outcome:
    """What a resign or switchover did: who led, who leads now, and how long it took."""

    old: Holder
    new: Holder | None
    seconds: float

    def line(self, verb: str) -> str:
        new = "nobody" if self.new is None else _who(self.new)
        return f"{verb}: {_who(self.old)} -> {new} in {self.seconds * 1000:.0f} ms"


def _who(holder: Holder) -> str:
    return f"{holder.identity} (token {holder.token})"


def _same_term(a: Holder | None, b: Holder | None) -> bool:
    return a is not None and b is not None and (a.identity, a.token) == (b.identity, b.token)


async def control(
    target: RedisTarget,
    election: str,
    op: str,
    to: str | None,
    hold_off: float,
    wait: float,
    scripts: str = "auto",
) -> Outcome:
    """Send a resign (`to` None) or switchover request and wait up to `wait` seconds for
    the result: for resign, the old leader gone (and a new one, if one comes within
    `wait`); for switchover, `to` leading."""
    client = async_client(target)
    lock_client = AsyncLockClient(client, scripts=scripts)
    key = election_key(election)
    try:
        started = time.monotonic()
        try:
            result = await send_request(lock_client, key, op, to, hold_off=hold_off,
                                        stands=wait, timeout=2.0)  # fmt: skip
        except (redis.RedisError, OSError, TimeoutError) as exc:
            raise CommandError(f"cannot reach Redis at {redact_url(target.url)}: {exc}") from exc
        if not result.ok:
            why = REFUSALS.get(result.reason or "", result.reason or "refused")
            raise CommandError(
                f"{op} refused, nothing changed: {why.format(to=to, election=election)}"
            )
        assert result.holder is not None
        return await _await_outcome(lock_client, election, result.holder, to, started, wait)
    finally:
        await client.aclose()


async def _await_outcome(
    client: AsyncLockClient,
    election: str,
    old: Holder,
    to: str | None,
    started: float,
    wait: float,
) -> Outcome:
    deadline = started + wait
    stepped_down = False
    changes = follow(client, election, poll=0.2)
    try:
        while True:
            left = deadline - time.monotonic()
            try:
                async with asyncio.timeout(max(0.0, left)):
                    holder = await anext(changes)
            except TimeoutError:
                holder = None if stepped_down else old
                break
            if _same_term(holder, old):
                continue
            if not stepped_down and holder is None:
                deadline = min(deadline, time.monotonic() + SUCCESSOR_GRACE)
            stepped_down = True
            if holder is not None and (to is None or holder.identity == to):
                return Outcome(old, holder, time.monotonic() - started)
            if holder is not None:
                break  # someone else took it: the switchover did not happen
    finally:
        await changes.aclose()
    if to is None and stepped_down:
        return Outcome(old, None, time.monotonic() - started)
    now = "nobody leads" if holder is None else f"{_who(holder)} leads"
    if not stepped_down:
        raise CommandError(f"{_who(old)} did not step down within {wait:g}s ({now})")
    raise CommandError(f"{to} did not take over within {wait:g}s ({now} election {election})")


async def watch(
    target: RedisTarget, election: str, as_json: bool, out: Callable[[str], None]
) -> int:
    """Print the holder, then one line per change, until SIGINT or SIGTERM (exit 0)."""
    client = async_client(target)
    lock_client = AsyncLockClient(client)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    errors = _ErrorReporter(redact_url(target.url))
    try:
        following = asyncio.ensure_future(_print_changes(lock_client, election, as_json, out,
                                                         errors))  # fmt: skip
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({following, stopping}, return_when=asyncio.FIRST_COMPLETED)
        for task in (following, stopping):
            task.cancel()
        await asyncio.wait({following, stopping})
        if following.done() and not following.cancelled() and following.exception():
            raise following.exception()  # type: ignore[misc]
        return 0
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await client.aclose()


class _ErrorReporter:
    """One stderr line when Redis becomes unreachable, one when it is back."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.down = False

    def failed(self, exc: BaseException) -> None:
        if not self.down:
            self.down = True
            print(f"leaderd watch: Redis at {self.url} unavailable ({exc}); retrying",
                  file=sys.stderr, flush=True)  # fmt: skip

    def ok(self) -> None:
        if self.down:
            self.down = False
            print("leaderd watch: Redis available again", file=sys.stderr, flush=True)


async def _print_changes(
    client: AsyncLockClient,
    election: str,
    as_json: bool,
    out: Callable[[str], None],
    errors: _ErrorReporter,
) -> None:
    """Follow the election, reconnecting after Redis errors (the poll is the backstop)."""
    last: tuple[str, int | None] | bool | None = False
    while True:
        changes = follow(client, election)
        try:
            async for holder in changes:
                errors.ok()
                seen = None if holder is None else (holder.identity, holder.token)
                if seen != last:  # a reconnect reports the holder again: print changes only
                    last = seen
                    out(_line(election, holder, as_json))
        except (redis.RedisError, OSError, TimeoutError) as exc:
            errors.failed(exc)
        finally:
            with contextlib.suppress(Exception):
                await changes.aclose()
        await asyncio.sleep(0.5)


def _line(election: str, holder: Holder | None, as_json: bool) -> str:
    now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    info: dict[str, Any] = {
        "time": now,
        "election": election,
        "leader": holder.identity if holder else None,
        "fencing_token": holder.token if holder else None,
        "leader_address": holder.address if holder else None,
        "foreign_holder": holder.foreign if holder else None,
    }
    if as_json:
        return json.dumps(info)
    if holder is None:
        return f"{now} {election}: no leader"
    address = f"  address {holder.address}" if holder.address else ""
    return f"{now} {election}: leader {holder.identity}  token {holder.token}{address}"
