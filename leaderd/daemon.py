"""`leaderd run`: the elector wrapped with configuration, outputs and process handling.

Outputs are `ElectionObserver`s (metrics, logs, status file); the HTTP server reads
the elector directly. Signals cancel the election, which stops the child, steps
down and releases the lock before the process exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from typing import Any

from .aio import AsyncLockClient
from .child import GRACE_SHARE, ChildRunner
from .config import RunConfig
from .connection import async_client, diagnose, follow_primary, is_auth_error
from .election import LOSS_REASONS, ElectionObserver, Elector, Term
from .errors import MaxRetryError
from .http import LoopErrors, make_app, start_server
from .logs import get_logger
from .metrics import Metrics
from .statusfile import write_status

EXIT_OK, EXIT_CONFIG, EXIT_LOST, EXIT_RETRY = 0, 1, 3, 4


def _error_text(exc: BaseException | None) -> str:
    if exc is None:
        return ""
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class LogObserver(ElectionObserver):
    """Structured logs of transitions, and of Redis trouble once per change of state."""

    def __init__(self, log: Any, elector: Elector, debug: bool = False, hint: Any = None) -> None:
        self.log = log
        self.hint = hint or (lambda error: None)
        self.elector = elector
        self.debug = debug
        self.redis_down = False
        self.refresh_failures = 0
        self.follower_since = time.monotonic()

    def on_attempt(self, outcome: str, error: Exception | None) -> None:
        if outcome == "error" and not self.redis_down:
            self.redis_down = True
            hint = self.hint(error)
            extra = {"hint": hint} if hint else {}
            self.log.warning("redis_unavailable", error=_error_text(error), **extra)
        elif outcome != "error" and self.redis_down:
            self.redis_down = False
            self.log.info("redis_available")

    def on_refresh(self, outcome: str, duration: float, error: Exception | None) -> None:
        if outcome == "ok" and self.debug:
            term = self.elector.term
            if term is not None:  # the fault-injection checker rebuilds terms from it
                self.log.debug("lease_renewed", token=term.fencing_token,
                               valid_until=self.elector.status()["valid_until"])  # fmt: skip
        if outcome == "error":
            self.refresh_failures += 1
            if self.refresh_failures == 1:
                self.log.warning(
                    "refresh_failed",
                    error=_error_text(error),
                    duration_ms=round(duration * 1000, 2),
                )
        elif outcome == "ok" and self.refresh_failures:
            self.log.info("refresh_recovered", failures=self.refresh_failures)
            self.refresh_failures = 0

    def on_started_leading(self, term: Term) -> None:
        self.refresh_failures = 0
        now = self.elector.clock.now()
        self.log.info(
            "became_leader", token=term.fencing_token,
            waited_s=round(time.monotonic() - self.follower_since, 3),
            valid_for_s=round(term.deadline - now, 3),
            term_started_at=self.elector.status()["term_started_at"],
            valid_until=self.elector.status()["valid_until"],
        )  # fmt: skip

    def on_stopped_leading(self, term: Term, reason: str) -> None:
        self.follower_since = time.monotonic()
        led_for = round(self.elector.clock.now() - term.started_at, 3)
        level = self.log.warning if reason in LOSS_REASONS else self.log.info
        level("stepped_down", reason=reason, token=term.fencing_token, led_for_s=led_for)

    def on_new_leader(self, identity: str | None) -> None:
        self.log.info("leader_changed", leader=identity)


class StatusFileWriter(ElectionObserver):
    """Writes the status file on every change, off the election loop (in a thread)."""

    def __init__(self, path: str, elector: Elector, log: Any) -> None:
        self.path = path
        self.elector = elector
        self.log = log
        self._dirty = asyncio.Event()
        self._failing = False
        self._task: asyncio.Task[None] | None = None

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
        try:
            await asyncio.to_thread(write_status, self.path, self.elector.status())
        except OSError as exc:
            if not self._failing:
                self.log.error("status_file_failed", path=self.path, error=_error_text(exc))
            self._failing = True
        else:
            if self._failing:
                self.log.info("status_file_recovered", path=self.path)
            self._failing = False

    async def close(self) -> None:
        """Stop the writer and write the final status once more."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task})
        await self._write()


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


class LossWatcher(ElectionObserver):
    """--exit-on-loss: end the daemon with exit 3 once leadership is lost."""

    def __init__(self, stop: Any) -> None:
        self.stop = stop

    def on_stopped_leading(self, term: Term, reason: str) -> None:
        if reason in LOSS_REASONS:
            self.stop(EXIT_LOST)


async def run_daemon(cfg: RunConfig) -> int:
    """Run until a signal, a loss with --exit-on-loss, a spent strategy or the child's exit."""
    log = get_logger(election=cfg.election, identity=cfg.identity)
    loop_errors = LoopErrors(log)
    loop_errors.install()  # asyncio's own errors as JSON lines, never a flood
    target = cfg.redis_target(f"leaderd:{cfg.election}:{cfg.identity}")
    client = async_client(target)
    elector = Elector(
        AsyncLockClient(client, min_replicas=cfg.min_replicas_ack), cfg.election, cfg.identity,
        ttl=cfg.ttl,
        refresh_interval=cfg.refresh_interval, renew_deadline=cfg.renew_deadline, retry=cfg.retry,
    )  # fmt: skip
    metrics = Metrics(elector)
    elector.observers += [
        metrics,
        LogObserver(
            log, elector, debug=cfg.log_level == "debug", hint=lambda e: diagnose(e, target)
        ),
    ]
    main = asyncio.current_task()
    assert main is not None
    exit_code = EXIT_OK
    stopping = False

    def stop(code: int = EXIT_OK, why: str = "") -> None:
        nonlocal exit_code, stopping
        if stopping:  # a second signal must not interrupt the orderly release
            return
        stopping = True
        log.info("stopping", reason=why or "leadership lost", exit_code=code)
        exit_code = code
        main.cancel()

    if cfg.exit_on_loss:
        elector.observers.append(LossWatcher(stop))
    if cfg.redis_password_file:
        elector.observers.append(CredentialReset(cfg.redis_password_file, client, log))
    writer = StatusFileWriter(cfg.status_file, elector, log) if cfg.status_file else None
    if writer is not None:
        elector.observers.append(writer)
        writer.start()

    kube = None
    if cfg.k8s_label is not None or cfg.k8s_events:
        from .k8s import KubeObserver, KubeSetupError, load_api

        try:
            api = load_api()
        except KubeSetupError as exc:
            log.error("k8s_setup_failed", error=str(exc))
            if writer is not None:
                await writer.close()
            await client.aclose()
            return EXIT_CONFIG
        assert cfg.pod_name is not None and cfg.pod_namespace is not None
        kube = KubeObserver(api, cfg.pod_name, cfg.pod_namespace, cfg.k8s_label,
                            cfg.k8s_events, log, metrics.k8s_errors, cfg.election)  # fmt: skip
        elector.observers.append(kube)
        kube.start()

    runner = None
    if cfg.http_host is not None:
        try:
            runner = await start_server(
                make_app(elector, metrics.registry), cfg.http_host, cfg.http_port,
                loop_errors=loop_errors,
            )  # fmt: skip
        except OSError as exc:
            log.error(
                "http_failed",
                addr=f"{cfg.http_host}:{cfg.http_port}",
                error=exc.strerror or str(exc),
                hint="choose another --http-addr (env LEADERD_HTTP_ADDR)",
            )
            if writer is not None:
                await writer.close()
            if kube is not None:
                await kube.close()
            await client.aclose()
            return EXIT_CONFIG

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop, EXIT_OK, signal.Signals(sig).name)

    child = (
        ChildRunner(
            cfg.command,
            cfg.election,
            cfg.identity,
            elector.clock,
            log,
            death_grace=(cfg.ttl - cfg.renew_deadline) * GRACE_SHARE,
        )
        if cfg.command
        else None
    )
    log.info(
        "starting", redis=cfg.redacted_url(),
        sentinels=[f"{h}:{p}" for h, p in cfg.sentinels] or None, master=cfg.sentinel_master,
        ttl=round(cfg.ttl, 3), refresh_interval=round(cfg.refresh_interval, 3),
        renew_deadline=round(cfg.renew_deadline, 3), retry=cfg.retry_name,
        http=f"{cfg.http_host}:{cfg.http_port}" if cfg.http_host is not None else None,
        status_file=cfg.status_file, exec=cfg.command[0] if cfg.command else None,
    )  # fmt: skip
    if cfg.sentinels and not cfg.min_replicas_ack:
        log.warning(
            "sentinel_without_replica_ack",
            hint="a Sentinel failover can leave two leaders for seconds; "
            "set --min-replicas-ack 1 (see README, Safety)",
        )
    watch = None
    if cfg.sentinels:

        def moved(old: Any, new: Any) -> None:
            log.warning("redis_primary_changed", old=f"{old[0]}:{old[1]}", new=f"{new[0]}:{new[1]}")

        interval = min(cfg.refresh_interval / 2, 1.0)
        watch = asyncio.create_task(follow_primary(client, interval, moved, cfg.refresh_interval))
    try:
        await elector.run(child if child is not None else _lead_until_cancelled)
        exit_code = child.exit_code if child is not None and child.exit_code is not None else 0
    except asyncio.CancelledError:
        if not stopping:
            raise
        main.uncancel()
    except MaxRetryError as exc:
        log.error("gave_up", attempts=exc.attempts, error=str(exc))
        exit_code = EXIT_RETRY
    except Exception as exc:  # a bug: report it as one structured line, not a bare trace
        log.error("failed", error=_error_text(exc), exc_info=True)
        exit_code = EXIT_CONFIG
    finally:
        if watch is not None:
            watch.cancel()
            await asyncio.wait({watch})
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        if writer is not None:
            await writer.close()
        if kube is not None:
            await kube.close()
        if runner is not None:
            await runner.cleanup()
        await client.aclose()
    log.info("stopped", exit_code=exit_code)
    return exit_code


async def _lead_until_cancelled(term: Term) -> None:
    """Without a command, leading is just holding the lease until told otherwise."""
    await asyncio.Event().wait()
