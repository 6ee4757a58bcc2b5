"""`leaderd run`: only the wiring of the elector, its outputs and the process.

Every output is an `ElectionObserver` from its own module, given to the `Elector` when
it is built; the HTTP server reads the elector directly. Resources enter one
`AsyncExitStack`, so shutdown is one path, in reverse order of start: signal handlers,
Sentinel watch, status file (its last write says `stopped`), Kubernetes (label
cleared), HTTP server, Redis client. A signal cancels the election first, which stops
the child, steps down and releases the lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import Any

from .aio import AsyncLockClient
from .apphealth import AppHealth
from .child import GRACE_SHARE, ChildRunner
from .config import RunConfig
from .connection import async_client, diagnose, follow_primary
from .credentials import CredentialReset
from .election import ElectionObserver, Elector, Term
from .errors import MaxRetryError
from .http import LoopErrors, WatchHub, make_app, start_server
from .logs import LogObserver, error_text, get_logger, library_logs_to
from .metrics import Metrics, disable_created_metrics
from .statusfile import StatusFileWriter

EXIT_OK, EXIT_CONFIG, EXIT_LOST, EXIT_RETRY = 0, 1, 3, 4


class SetupError(Exception):
    """An output could not start (already logged); the daemon exits 1."""


#: Step-downs after which --exit-on-loss does not exit 3: the daemon's own shutdown
#: (`stopped`) and, in exec mode, the command's own exit (`released`: its code is used).
NOT_A_LOSS = frozenset({"stopped", "released"})
#: With --exit-on-loss, the longest wait for the release after a step-down.
RELEASE_WAIT = 10.0


class Stopper(ElectionObserver):
    """Ends the daemon: on a signal (exit 0) or, with --exit-on-loss, after every
    step-down it did not choose itself (exit 3): lost, deadline, app_unhealthy,
    resigned, switchover, preempted."""

    def __init__(self, log: Any, exit_on_loss: bool) -> None:
        self.log = log
        self.exit_on_loss = exit_on_loss
        self.code = EXIT_OK
        self.stopping = False
        self.main = asyncio.current_task()
        self.elector: Elector | None = None
        self._after_release: asyncio.Future[None] | None = None

    def bind(self, elector: Elector) -> None:
        self.elector = elector

    def stop(self, code: int = EXIT_OK, why: str = "") -> None:
        if self.stopping:  # a second signal must not interrupt the orderly release
            return
        self.stopping = True
        self.code = code
        if self.main is not None:
            self.main.cancel()  # first: nothing (not even a failing log) may prevent it
        self.log.info("stopping", reason=why or "leadership lost", exit_code=code)

    def on_stopped_leading(self, term: Term, reason: str) -> None:
        if self.exit_on_loss and reason not in NOT_A_LOSS and self._after_release is None:
            # observers hear of a chosen step-down before the lock is released or handed
            # over: stop only once that is done, so the hand-over is never cut short
            self._after_release = asyncio.ensure_future(self._stop_after_release(reason))

    async def _stop_after_release(self, reason: str) -> None:
        if self.elector is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.elector.wait_not_leading(), RELEASE_WAIT)
        self.stop(EXIT_LOST, f"stepped down ({reason}) with --exit-on-loss")


#: Seconds after the start when the memory that start-up used and freed is given back.
TRIM_AFTER = 5.0


def trim_heap() -> None:
    """Give the C heap's free memory back to the system (glibc's `malloc_trim`):
    start-up (imports, argument parsing, connecting) frees far more than a running
    daemon keeps, about 0.4 MiB of idle RSS. Nothing happens where it is missing."""
    import ctypes
    import gc

    gc.collect()
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError):  # not glibc (musl, macOS)
        return
    trim(0)


async def run_daemon(cfg: RunConfig) -> int:
    """Run until a signal, a loss with --exit-on-loss, a spent strategy or the child's exit."""
    log = get_logger(election=cfg.election.name, identity=cfg.election.identity)
    library_logs_to(log)
    loop_errors = LoopErrors(log)
    loop_errors.install()  # asyncio's own errors as JSON lines, never a flood
    stopper = Stopper(log, cfg.exit_on_loss)
    async with contextlib.AsyncExitStack() as stack:
        try:
            elector, child = await _start(cfg, log, loop_errors, stopper, stack)
        except SetupError:
            return EXIT_CONFIG
        trim = asyncio.get_running_loop().call_later(TRIM_AFTER, trim_heap)
        stack.callback(trim.cancel)
        code = await _elect(elector, child, stopper, log)
    log.info("stopped", exit_code=code)
    return code


async def _start(
    cfg: RunConfig,
    log: Any,
    loop_errors: LoopErrors,
    stopper: Stopper,
    stack: contextlib.AsyncExitStack,
) -> tuple[Elector, ChildRunner | None]:
    """Build the client, the elector and its outputs; each is closed by `stack`."""
    kube_api = _load_kube_api(cfg, log)  # first: it can fail before anything started
    target = cfg.redis_target(f"leaderd:{cfg.election.name}:{cfg.election.identity}")
    client = async_client(target)
    stack.push_async_callback(client.aclose)
    e, out = cfg.election, cfg.outputs
    disable_created_metrics()  # the documented series only, no *_created beside them
    metrics = Metrics(e.name)
    debug = out.log_level == "debug"
    observers: list[ElectionObserver] = [
        metrics,
        LogObserver(log, debug=debug, hint=lambda error: diagnose(error, target)),
        stopper,
    ]
    if cfg.redis.password_file:
        observers.append(CredentialReset(cfg.redis.password_file, client, log))
    kube = None
    if kube_api is not None:
        from .k8s import KubeObserver

        assert out.pod_name is not None and out.pod_namespace is not None
        kube = KubeObserver(kube_api, out.pod_name, out.pod_namespace, out.k8s_label,
                            out.k8s_events, log, metrics.k8s_errors, e.name)  # fmt: skip
        observers.append(kube)
    writer = StatusFileWriter(out.status_file, log) if out.status_file else None
    if writer is not None:
        observers.append(writer)
    hub = WatchHub() if out.http_host is not None else None
    if hub is not None:
        observers.append(hub)
    lock_client = AsyncLockClient(
        client, min_replicas=cfg.redis.min_replicas_ack, scripts=cfg.redis.scripts
    )
    stack.push_async_callback(lock_client.aclose)  # before the client: a waiter leaves
    elector = Elector(
        lock_client, e.name, e.identity,
        ttl=e.ttl, refresh_interval=e.refresh_interval, renew_deadline=e.renew_deadline,
        retry=e.retry, observers=observers, priority=e.priority, address=e.advertise,
        preempt=e.preempt, preempt_delay=e.preempt_delay,
    )  # fmt: skip
    elector.on_observer_error = lambda o, hook, exc: log.error(
        "output_failed", output=type(o).__name__, hook=hook, error=error_text(exc)
    )
    if out.http_host is not None:
        server = await _start_http(cfg, elector, metrics, hub, loop_errors, log)
        stack.push_async_callback(server.close)
    for output in (kube, writer):  # started once the elector exists; closed in reverse
        if output is not None:
            output.start()
            stack.push_async_callback(output.close)
    _check_app_health(cfg, elector, log, stack)
    if cfg.redis.sentinels:
        _watch_primary(cfg, client, log, stack)
    _handle_signals(stopper, stack)
    _log_start(cfg, log)
    child = None
    if cfg.command:
        death_grace = (e.ttl - e.renew_deadline) * GRACE_SHARE
        child = ChildRunner(cfg.command, e.name, e.identity, elector.clock, log,
                            death_grace=death_grace)  # fmt: skip
    return elector, child


async def _elect(elector: Elector, child: ChildRunner | None, stopper: Stopper, log: Any) -> int:
    """Run the election to its end and turn the way it ended into an exit code."""
    try:
        await elector.run(child if child is not None else _lead_until_cancelled)
        return child.exit_code if child is not None and child.exit_code is not None else 0
    except asyncio.CancelledError:
        if not stopper.stopping:
            raise
        current = asyncio.current_task()
        if current is not None:
            current.uncancel()
        return stopper.code
    except MaxRetryError as exc:
        log.error("gave_up", attempts=exc.attempts, error=str(exc))
        return EXIT_RETRY
    except Exception as exc:  # a bug: report it as one structured line, not a bare trace
        log.error("failed", error=error_text(exc), exc_info=True)
        return EXIT_CONFIG


def _check_app_health(
    cfg: RunConfig, elector: Elector, log: Any, stack: contextlib.AsyncExitStack
) -> None:
    """With --app-health-url, this candidate leads only while its workload is healthy:
    unhealthy until the first passed check, then as the thresholds say."""
    elector.extra_status["app_healthy"] = None
    if cfg.app_health is None:
        return

    def changed(healthy: bool) -> None:
        elector.extra_status["app_healthy"] = healthy
        if healthy:
            log.info("app_healthy", url=checker.check.url)
        else:
            log.warning("app_unhealthy", url=checker.check.url, error=checker.last_error)
        elector.set_eligible(healthy, "app_unhealthy")

    checker = AppHealth(cfg.app_health, changed)
    elector.extra_status["app_healthy"] = False
    elector.set_eligible(False, "app_unhealthy")  # until the first passed check
    checker.start()
    stack.push_async_callback(checker.close)


def _load_kube_api(cfg: RunConfig, log: Any) -> Any:
    if cfg.outputs.k8s_label is None and not cfg.outputs.k8s_events:
        return None
    from .k8s import KubeSetupError, load_api

    try:
        return load_api()
    except KubeSetupError as exc:
        log.error("k8s_setup_failed", error=str(exc))
        raise SetupError from exc


async def _start_http(
    cfg: RunConfig,
    elector: Elector,
    metrics: Metrics,
    hub: WatchHub | None,
    loop_errors: LoopErrors,
    log: Any,
) -> Any:
    assert cfg.outputs.http_host is not None
    try:
        app = make_app(elector, metrics.render, hub)
        return await start_server(app, cfg.outputs.http_host,
                                  cfg.outputs.http_port, loop_errors=loop_errors)  # fmt: skip
    except OSError as exc:
        log.error(
            "http_failed",
            addr=f"{cfg.outputs.http_host}:{cfg.outputs.http_port}",
            error=exc.strerror or str(exc),
            hint="choose another --http-addr (env LEADERD_HTTP_ADDR)",
        )
        raise SetupError from exc


def _watch_primary(cfg: RunConfig, client: Any, log: Any, stack: contextlib.AsyncExitStack) -> None:
    def moved(old: Any, new: Any) -> None:
        log.warning("redis_primary_changed", old=f"{old[0]}:{old[1]}", new=f"{new[0]}:{new[1]}")

    interval = min(cfg.election.refresh_interval / 2, 1.0)
    watch = asyncio.create_task(
        follow_primary(client, interval, moved, cfg.election.refresh_interval)
    )

    async def cancel() -> None:
        watch.cancel()
        await asyncio.wait({watch})

    stack.push_async_callback(cancel)


def _handle_signals(stopper: Stopper, stack: contextlib.AsyncExitStack) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopper.stop, EXIT_OK, signal.Signals(sig).name)
        stack.callback(loop.remove_signal_handler, sig)


def _log_start(cfg: RunConfig, log: Any) -> None:
    r, e, out = cfg.redis, cfg.election, cfg.outputs
    log.info(
        "starting", redis=r.redacted_url(),
        sentinels=[f"{h}:{p}" for h, p in r.sentinels] or None, master=r.sentinel_master,
        ttl=round(e.ttl, 3), refresh_interval=round(e.refresh_interval, 3),
        renew_deadline=round(e.renew_deadline, 3), retry=e.retry_name, priority=e.priority,
        preempt_delay=e.preempt_delay if e.preempt else None, advertise=e.advertise,
        http=f"{out.http_host}:{out.http_port}" if out.http_host is not None else None,
        status_file=out.status_file, exec=cfg.command[0] if cfg.command else None,
    )  # fmt: skip
    if cfg.redis.sentinels and not cfg.redis.min_replicas_ack:
        log.warning(
            "sentinel_without_replica_ack",
            hint="a Sentinel failover can leave two leaders for seconds; "
            "set --min-replicas-ack 1 (see README, Safety)",
        )


async def _lead_until_cancelled(term: Term) -> None:
    """Without a command, leading is just holding the lease until told otherwise."""
    await asyncio.Event().wait()
