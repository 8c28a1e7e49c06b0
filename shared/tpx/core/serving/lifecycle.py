"""Running a service until SIGTERM/SIGINT, then draining it.

Each service exposes `serve(settings, stop)`: it runs until `stop` is set,
then stops taking work, finishes what is in flight, acks only what is done,
and returns. This module owns the signals so the services stay testable (a
test sets `stop` itself).
"""

from __future__ import annotations

import asyncio
import signal
from typing import Awaitable, Callable

from tpx.core.logging import get_logger

log = get_logger("tpx.core.serving.lifecycle")


def run(main) -> None:
    """Run a coroutine on uvloop when it is installed (it comes with uvicorn[standard]), else asyncio."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; this keeps exotic platforms working
        asyncio.run(main)
    else:
        uvloop.run(main)


async def run_until_signalled(name: str, serve: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            return
        log.info("service.stopping", service=name, signal=signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        await serve(stop)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    log.info("service.stopped", service=name)
