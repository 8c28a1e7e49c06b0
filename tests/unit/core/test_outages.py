"""The outage tracker: one warning when a dependency goes away, one info line when it is back."""

from __future__ import annotations

import logging

import structlog

from tpx.core.outages import Outage


def tracker() -> tuple[Outage, structlog.testing.CapturingLogger]:
    captured = structlog.testing.CapturingLogger()
    logger = structlog.wrap_logger(captured, processors=[],
                                   wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    return Outage("broker", logger=logger), captured


def test_a_caller_may_describe_the_error_itself():
    # The relay describes a broker failure with its cause chain; that used to raise a TypeError
    # (two values for `error`), which ended the relay's session and was reported as a database outage.
    outage, captured = tracker()
    outage.failed(None, component="relay", error="publishing failed; connection refused")
    outage.failed(ConnectionRefusedError(111, "refused"), component="relay")
    outage.recovered(component="relay")
    calls = [(call.method_name, call.kwargs["event"], call.kwargs.get("error")) for call in captured.calls]
    assert calls == [
        ("warning", "dependency.down", "publishing failed; connection refused"),
        ("debug", "dependency.still_down", "ConnectionRefusedError: [Errno 111] refused"),
        ("info", "dependency.up", None),
    ]
