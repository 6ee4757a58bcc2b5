"""structlog set-up: one JSON object a line on stderr (or readable console lines)."""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog


def configure(fmt: str = "json", level: str = "info", stream: Any = None) -> None:
    """Route structlog to `stream` (stderr) with ISO timestamps and the chosen format."""
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
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stderr),
        cache_logger_on_first_use=False,
    )


def get_logger(**context: Any) -> Any:
    return structlog.get_logger("leaderd").bind(**context)
