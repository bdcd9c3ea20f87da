"""Diagnostics on stderr through structlog; stdout is reserved for MCP."""

from __future__ import annotations

import logging
import sys
from typing import Literal

import structlog

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}
LEVELS["error"] = logging.ERROR


class _StderrLoggerFactory:
    """Loggers that write to whatever ``sys.stderr`` is when they write, so that
    a test capturing stderr does not leave loggers bound to a closed stream."""

    def __call__(self, *args: object) -> structlog.PrintLogger:
        return structlog.PrintLogger(file=_CurrentStderr())  # type: ignore[arg-type]


class _CurrentStderr:
    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure_logging(
    *, level: str = "info", format: Literal["console", "json"] = "console"
) -> None:
    """Send every diagnostic to stderr, readable by people or as JSON lines."""
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if format == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            LEVELS.get(level, logging.INFO)
        ),
        logger_factory=_StderrLoggerFactory(),
        cache_logger_on_first_use=True,
    )
    # Libraries that use the standard logging module must not write to stdout.
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
