"""Logging: libraries' per-retry connection lines are debug lines; tpx's outage tracker says the rest."""

from __future__ import annotations

import asyncio
import json
import logging
import os

import structlog

from tpx.core.logging import RetryChatter, configure


def record(name: str, level: int, msg: str, exc: BaseException | None = None) -> logging.LogRecord:
    exc_info = (type(exc), exc, None) if exc is not None else None
    return logging.LogRecord(name, level, __file__, 1, msg, (), exc_info)


def test_reconnect_attempts_are_not_errors():
    chatter = RetryChatter(logging.INFO)
    every_attempt = record("aiormq.connection", logging.ERROR, "error when creating transport: %r")
    assert chatter.filter(every_attempt) is False and every_attempt.levelname == "DEBUG"
    floor = record("asyncpg.pool", logging.WARNING, "Failed to restore the pool connection floor; retrying",
                   ConnectionRefusedError(111, "refused"))
    assert chatter.filter(floor) is False
    reader = record("aiormq.connection", logging.WARNING, "Cancelling cause reader exited abnormally",
                    asyncio.IncompleteReadError(b"", 1))
    assert chatter.filter(reader) is False


def test_other_library_warnings_still_show():
    chatter = RetryChatter(logging.INFO)
    assert chatter.filter(record("aiormq.connection", logging.WARNING, "Connection %r was blocked by: %r"))
    assert chatter.filter(record("aiormq.connection", logging.WARNING, "Cancelling cause reader exited abnormally",
                                 ValueError("a malformed frame")))
    assert chatter.filter(record("uvicorn.error", logging.ERROR, "error when creating transport"))


def test_at_debug_the_chatter_is_shown_as_debug():
    chatter = RetryChatter(logging.DEBUG)
    line = record("aiormq.connection", logging.ERROR, "error when creating transport: %r")
    assert chatter.filter(line) is True and line.levelno == logging.DEBUG


def test_configure_installs_the_filter():
    try:
        configure("json", "info")
        assert any(isinstance(f, RetryChatter) for f in logging.getLogger().handlers[0].filters)
    finally:
        configure("console", os.environ.get("TPX_TEST_LOG_LEVEL", "warning"))  # as tests/conftest.py does


def test_a_json_line_is_written_whatever_the_values(capsys):
    """orjson renders the lines; values it refuses (a lone surrogate, an integer beyond 64 bits, a
    dict with integer keys) still give one JSON line, redacted, instead of failing the log call."""
    try:
        configure("json", "info")
        log = structlog.get_logger("tpx.test")
        secret = "tpx_" + "a" * 30
        log.info("plain", token=secret, packages=["é"], nested={"jwt": "eyJhbGciOi.eyJzdWIiOiJ4In0.c2ln"})
        log.info("odd", surrogate="\ud800", big=2**70, keyed={1: secret}, raw=b"bytes")
        written = capsys.readouterr().err
    finally:
        with capsys.disabled():   # back to the session's stderr, not this test's capture (closed after it)
            configure("console", os.environ.get("TPX_TEST_LOG_LEVEL", "warning"))
    lines = [json.loads(line) for line in written.splitlines()]
    assert [line["event"] for line in lines] == ["plain", "odd"]
    assert lines[0]["token"] == "[redacted]" and lines[0]["nested"] == {"jwt": "[redacted]"}
    assert lines[0]["packages"] == ["é"] and lines[0]["level"] == "info"
    assert lines[1]["surrogate"] == "\ud800" and lines[1]["big"] == 2**70
    assert lines[1]["keyed"] == {"1": "[redacted]"} and lines[1]["raw"] == "b'bytes'"
