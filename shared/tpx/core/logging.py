"""Structured logging with structlog: JSON in production, readable on a console.

A last processor redacts anything shaped like a tpx token or a JWT, so a
careless log call can never leak a credential.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sys
from typing import Any

import orjson
import structlog

_SECRET_PATTERNS = re.compile(
    r"tpx_[0-9A-Za-z]{20,}"  # tpx tokens
    r"|eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*\.?[A-Za-z0-9_-]*"  # compact JWS/JWT
)


def redact(text: str) -> str:
    if "tpx_" not in text and "eyJ" not in text:   # what every pattern starts with: most values skip the regex
        return text
    return _SECRET_PATTERNS.sub("[redacted]", text)


def _redact(value: Any, depth: int = 0) -> Any:
    if isinstance(value, str):
        return redact(value)
    if depth < 5 and isinstance(value, dict):
        return {k: _redact(v, depth + 1) for k, v in value.items()}
    if depth < 5 and isinstance(value, (list, tuple)):
        return [_redact(v, depth + 1) for v in value]
    return value


def _redact_values(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    for key, value in event.items():
        event[key] = _redact(value)
    return event


# Lines libraries repeat on every reconnect attempt (or every dropped connection) while a dependency is
# away. tpx.core.outages already says it: one warning when the outage starts, one info line when it ends,
# and the tpx_dependency_* metrics; so these are debug lines, not an error (with a traceback) per retry.
_RETRY_CHATTER: dict[str, tuple[str, ...]] = {
    "aiormq.connection": ("error when creating transport", "Cancelling cause reader exited abnormally"),
    "asyncpg.pool": ("Failed to restore the pool connection floor",),
}
_CONNECTION_LOST = (OSError, EOFError, asyncio.IncompleteReadError, asyncio.TimeoutError)


class RetryChatter(logging.Filter):
    """Demote the libraries' per-attempt connection lines to debug (shown only when tpx logs at debug)."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        prefixes = _RETRY_CHATTER.get(record.name)
        if not prefixes or record.levelno <= logging.DEBUG or not str(record.msg).startswith(prefixes):
            return True
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and not isinstance(exc, _CONNECTION_LOST):
            return True  # a reader that died of something else than a lost connection is worth a warning
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return self.level <= logging.DEBUG


def _json_line(event: dict[str, Any], **options: Any) -> str:
    """orjson, at about half the standard library's cost per line (an exchange logs one at info); the
    standard library where orjson refuses a value (a lone surrogate, an integer beyond 64 bits), so a
    log call never fails."""
    try:
        return orjson.dumps(event, default=options.get("default"), option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:
        return json.dumps(event, **options)


def configure(log_format: str = "json", level: str = "info") -> None:
    numeric = getattr(logging, level.upper(), logging.INFO)
    renderer: Any
    if log_format == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    else:
        renderer = structlog.processors.JSONRenderer(serializer=_json_line)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _redact_values,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    # Libraries that log through the standard library (uvicorn, aio-pika, asyncio) are rendered the same
    # way, so production logs are JSON lines throughout, redacted too; they speak from warning up.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            _redact_values,
            renderer,
        ],
    ))
    handler.addFilter(RetryChatter(numeric))
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(max(numeric, logging.WARNING))
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers = []
        logging.getLogger(name).propagate = True


def get_logger(name: str | None = None) -> Any:
    return structlog.get_logger(name)
