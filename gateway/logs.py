"""Structured logs: one JSON object per line, for machines and for operators' grep.

What may appear: message ids, types, party codes, states, reasons, counts,
file names chosen by the producer. What may not: anything from inside a
message (names, BSNs, addresses of persons, free text). Callers keep to that;
`redact_values` is the last line of defence for the one field where a value
of the message could slip in (a validation problem's ``value``).
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def redact_values(_logger, _method, event: dict) -> dict:
    for key in ("value", "xml", "content", "body", "password"):
        if key in event:
            event[key] = "[redacted]"
    return event


def configure(level: str = "info", stream: TextIO | None = None) -> None:
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact_values,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(sort_keys=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stderr),
        cache_logger_on_first_use=False,
    )
