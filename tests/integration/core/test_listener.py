"""The database listener every cache and loop relies on, against the real PostgreSQL through a TCP proxy.

A lost connection (reset, or a network that silently drops everything) is
noticed within the keepalive, the listener reconnects, and it runs its
catch-up before it reports itself healthy again. An outage is one warning and
one info line, however many retries it takes.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from urllib.parse import urlsplit

import pytest
import structlog

from tpx.core.db.listener import KeptConnection, Listener
from tpx.core.outages import Outage
from tests.support.events import eventually
from tests.support.tcp_proxy import TcpProxy, through

pytestmark = pytest.mark.integration


def channel() -> str:
    return f"tpx_test_{uuid.uuid4().hex[:12]}"


async def notify(db, name: str, payload: str) -> None:
    await db.execute("SELECT pg_notify($1, $2)", name, payload)


@pytest.fixture
async def proxy(settings):
    parts = urlsplit(settings.database_url)
    async with TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432) as proxy:
        yield proxy


class Running:
    """A listener on its own task, with its notifications and catch-ups recorded."""

    def __init__(self, url: str, keepalive_seconds: float = 0.5, fail_catch_ups: int = 0) -> None:
        self.name = channel()
        self.received: asyncio.Queue[str] = asyncio.Queue()
        self.catch_ups = 0
        self._fail = fail_catch_ups
        self.listener = Listener(url, {self.name: self.received.put_nowait}, name="test-listener",
                                 on_connect=self.catch_up, keepalive_seconds=keepalive_seconds)
        self.task: asyncio.Task[None] | None = None

    async def catch_up(self) -> None:
        self.catch_ups += 1
        if self._fail:
            self._fail -= 1
            raise ConnectionError("the catch-up reload failed")

    async def __aenter__(self) -> "Running":
        self.task = asyncio.create_task(self.listener.run())
        await asyncio.wait_for(self.listener.healthy.wait(), 10)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self.task is not None
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


async def test_notifications_reach_their_callback(settings, db):
    async with Running(settings.database_url) as running:
        assert running.catch_ups == 1
        await notify(db, running.name, "hello")
        assert await asyncio.wait_for(running.received.get(), 5) == "hello"


async def test_changes_are_in_effect_within_a_second_of_the_database_answering_again(proxy, db, settings):
    """After an outage the listener is back, caught up, within about a second of the database answering:
    it retries every half second or so, whatever the outage lasted."""
    async with Running(through(settings.database_url, proxy)) as running:
        await proxy.cut()
        await eventually(lambda: not running.listener.healthy.is_set(), "the listener to notice the cut", 2)
        failures = running.listener.connection.backoff.failures
        await eventually(lambda: running.listener.connection.backoff.failures >= failures + 6,
                         "several reconnect attempts during a longer outage", 10)
        await proxy.restore()
        restored = asyncio.get_running_loop().time()
        await asyncio.wait_for(running.listener.healthy.wait(), 5)
        assert asyncio.get_running_loop().time() - restored < 1.0
        assert running.catch_ups == 2


async def test_a_reset_connection_is_noticed_and_caught_up_before_healthy(proxy, db, settings):
    async with Running(through(settings.database_url, proxy)) as running:
        await proxy.cut()
        await eventually(lambda: not running.listener.healthy.is_set(), "the listener to notice the reset", 2)
        await proxy.restore()
        await eventually(lambda: running.listener.healthy.is_set(), "the listener to reconnect", 10)
        assert running.listener.sessions == 2 and running.catch_ups == 2
        await notify(db, running.name, "after")
        assert await asyncio.wait_for(running.received.get(), 5) == "after"


async def test_a_silent_network_is_noticed_within_the_keepalive(proxy, db, settings):
    async with Running(through(settings.database_url, proxy), keepalive_seconds=0.3) as running:
        proxy.partition()  # no reset, no FIN: only the keepalive can tell
        await eventually(lambda: not running.listener.healthy.is_set(), "the keepalive to find the dead link", 3)
        await proxy.restore()
        await eventually(lambda: running.listener.healthy.is_set() and running.listener.sessions >= 2,
                         "the listener to reconnect", 10)
        await notify(db, running.name, "back")
        assert await asyncio.wait_for(running.received.get(), 5) == "back"


async def test_a_failed_catch_up_is_not_healthy_and_is_retried(settings):
    async with Running(settings.database_url, fail_catch_ups=2) as running:
        assert running.catch_ups == 3 and running.listener.sessions == 3


async def test_an_outage_is_one_warning_and_one_info_line(proxy, settings):
    captured = structlog.testing.CapturingLogger()
    outage = Outage("database", logger=structlog.wrap_logger(
        captured, processors=[], wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG)))
    kept = KeptConnection(through(settings.database_url, proxy), name="test-outage", keepalive_seconds=0.3,
                          outage=outage)

    async def body(session) -> None:
        session.ready()
        await session.lost.wait()

    task = asyncio.create_task(kept.run(body))
    try:
        await asyncio.wait_for(kept.healthy.wait(), 10)
        await proxy.cut()  # refused for a while: several reconnect attempts fail
        await eventually(lambda: kept.down_since is not None, "the outage to be noticed", 3)
        failures = kept.backoff.failures
        await eventually(lambda: kept.backoff.failures >= failures + 3, "a few failed reconnects", 10)
        await proxy.restore()
        await asyncio.wait_for(kept.healthy.wait(), 10)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    lines = [(call.method_name, call.kwargs["event"]) for call in captured.calls]
    assert [line for line in lines if line[0] != "debug"] == [("warning", "dependency.down"),
                                                             ("info", "dependency.up")]
    assert len([line for line in lines if line[0] == "debug"]) >= 3  # the retries, below the operator's level
    assert not outage.down
    assert kept.down_since is None


async def test_a_failing_body_is_not_reported_as_a_database_outage(settings):
    """A bug in the work done on the session (here a ValueError) is not the database going away: it must not
    say `dependency.down database`, which would send an operator after the wrong system."""
    captured = structlog.testing.CapturingLogger()
    outage = Outage("database", logger=structlog.wrap_logger(
        captured, processors=[], wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG)))
    kept = KeptConnection(settings.database_url, name="test-body-bug", outage=outage)
    calls = 0

    async def body(session) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ValueError("a bug in the body")
        session.ready()
        await session.lost.wait()

    task = asyncio.create_task(kept.run(body))
    try:
        await asyncio.wait_for(kept.healthy.wait(), 10)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert calls == 2 and kept.sessions == 2
    assert [call.kwargs["event"] for call in captured.calls] == []
    assert not outage.down
