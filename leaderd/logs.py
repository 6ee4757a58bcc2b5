"""Logs: structlog set-up (one JSON object a line on stderr, or readable console lines)
and the observer that logs each change of state of an election once."""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any, TextIO, cast

import structlog

from .election import LOSS_REASONS, ElectionObserver, Elector, Term
from .errors import FunctionsNotLoadedError


class SafeStream:
    """The log stream: a line that cannot be written (the reader of a pipe went away,
    a full disk) is dropped, never raised into the daemon, so logging can never stop an
    election, a shutdown or the release of the lock.

    After a broken pipe the stream's descriptor is pointed at /dev/null, so that nothing
    else (another thread, the interpreter's last flush) writes into the dead pipe."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.broken = False

    def write(self, text: str) -> int:
        if not self.broken:
            try:
                self.stream.write(text)
            except (OSError, ValueError) as exc:
                self._failed(exc)
        return len(text)

    def flush(self) -> None:
        if not self.broken:
            try:
                self.stream.flush()
            except (OSError, ValueError) as exc:
                self._failed(exc)

    def _failed(self, exc: BaseException) -> None:
        if not isinstance(exc, BrokenPipeError | ValueError):
            return  # e.g. ENOSPC: drop this line, try the next one
        self.broken = True
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(devnull, self.stream.fileno())
            finally:
                os.close(devnull)
        except (OSError, ValueError, AttributeError):
            pass


def configure(fmt: str = "json", level: str = "info", stream: Any = None) -> None:
    """Route structlog to `stream` (stderr) with ISO timestamps and the chosen format;
    a log line that cannot be written is dropped (`SafeStream`)."""
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(cast(TextIO, SafeStream(stream or sys.stderr))),
        cache_logger_on_first_use=False,
    )
    library_logs_to(get_logger())


def library_logs_to(log: Any) -> None:
    """Route the lock library's stdlib log records (e.g. `functions_missing`) to `log`
    (a bound structlog logger, e.g. with the election and identity), as lines like
    the daemon's own: the record's `leaderd_event` is the event."""
    library = logging.getLogger("leaderd")
    library.handlers = [h for h in library.handlers if not isinstance(h, _ToStructlog)]
    library.addHandler(_ToStructlog(log))
    library.setLevel(logging.INFO)
    library.propagate = False


class _ToStructlog(logging.Handler):
    def __init__(self, log: Any) -> None:
        super().__init__()
        self.log = log

    def emit(self, record: logging.LogRecord) -> None:
        fields = {k: getattr(record, k) for k in ("library",) if hasattr(record, k)}
        event = getattr(record, "leaderd_event", None) or record.getMessage()
        self.log.log(record.levelno, event, message=record.getMessage(), **fields)


def get_logger(**context: Any) -> Any:
    return structlog.get_logger("leaderd").bind(**context)


def error_text(exc: BaseException | None) -> str:
    """`Type: message` of an error, for a log field."""
    if exc is None:
        return ""
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class LogObserver(ElectionObserver):
    """Structured logs of transitions, and of Redis trouble once per change of state."""

    def __init__(self, log: Any, debug: bool = False, hint: Any = None) -> None:
        """`hint(error)`: an optional line that says how to fix a Redis error."""
        self.log = log
        self.hint = hint or (lambda error: None)
        self.debug = debug
        self.redis_down = False
        self.refresh_failures = 0
        self.follower_since = time.monotonic()

    def bind(self, elector: Elector) -> None:
        self.elector = elector

    def on_attempt(self, outcome: str, error: Exception | None) -> None:
        if isinstance(error, FunctionsNotLoadedError):
            return  # the lock library logged `functions_missing`, once, with what to do
        if outcome == "error" and not self.redis_down:
            self.redis_down = True
            hint = self.hint(error)
            extra = {"hint": hint} if hint else {}
            self.log.warning("redis_unavailable", error=error_text(error), **extra)
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
                    error=error_text(error),
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
        led_for = round(self.elector.clock.now() - term.began_at, 3)
        level = self.log.warning if reason in LOSS_REASONS else self.log.info
        level("stepped_down", reason=reason, token=term.fencing_token, led_for_s=led_for)

    def on_new_leader(self, identity: str | None) -> None:
        self.log.info("leader_changed", leader=identity,
                      leader_address=self.elector.leader_address)  # fmt: skip

    def on_duplicate_identity(self, token: int) -> None:
        self.log.warning(
            "duplicate_identity",
            token=token,
            hint="another live candidate runs with this --identity; give each its own "
            "(the pod name); until then status and logs cannot tell them apart",
        )

    def on_control(self, event: str, fields: dict[str, Any]) -> None:
        if event == "received":
            self.log.info(
                "control_request",
                request=fields["request"],
                to=fields.get("to_identity"),
                hold_off_s=fields["hold_off_s"],
            )
        elif event == "handed_over":
            self.log.info("handed_over", to=fields.get("to_identity"), handed=fields["handed"])
        elif event == "preempt":
            error = fields.get("error")
            self.log.info("preempt_requested", leader=fields["leader"],
                          leader_priority=fields["leader_priority"], outcome=fields["outcome"],
                          **({"error": error_text(error)} if error else {}))  # fmt: skip
