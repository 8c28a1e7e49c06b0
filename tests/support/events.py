"""Test helpers for events: wait for a condition, consume an events exchange, run a relay, proxy URLs."""

from __future__ import annotations

import asyncio
import inspect
import json
import uuid
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import datetime
from types import SimpleNamespace
from typing import Any, AsyncIterator, Awaitable, Callable

import aio_pika

from tpx.core.config import Settings
from tpx.core.events import schemas
from tpx.core.events.cloudevents import to_cloudevent
from tpx.core.relay.relay import OutboxRelay

from tests.support.amqp import derived_prefix

WAIT = 20.0  # upper bound for anything that should happen "soon" (covers a few back-off steps)


async def eventually(predicate: Callable[[], Any | Awaitable[Any]], what: str, timeout: float = WAIT) -> None:
    """Poll a condition until it holds, failing after `timeout` (a bounded wait, not a sleep)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


class Consumer:
    """A queue bound to every event of one exchange, declared before anything is published."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.messages: asyncio.Queue[aio_pika.abc.AbstractIncomingMessage] = asyncio.Queue()
        self.received: list[aio_pika.abc.AbstractIncomingMessage] = []

    async def __aenter__(self) -> "Consumer":
        self.connection = await aio_pika.connect(self.settings.amqp_url)
        channel = await self.connection.channel()
        self.exchange = await channel.declare_exchange(
            self.settings.events_exchange, aio_pika.ExchangeType.TOPIC, durable=True
        )
        self.queue = await channel.declare_queue(f"{self.settings.amqp_prefix}.test-{uuid.uuid4().hex[:8]}",
                                                 exclusive=True)
        await self.queue.bind(self.exchange, routing_key="#")
        self.consumer_tag = await self.queue.consume(self.messages.put, no_ack=True)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        try:
            await self.queue.cancel(self.consumer_tag)
            await self.queue.delete(if_unused=False, if_empty=False)
            await self.exchange.delete()
            channel = await self.connection.channel()
            await channel.queue_delete(self.settings.audit_stream)
        finally:
            await self.connection.close()

    async def collect(self, event_ids: set[str], timeout: float = WAIT) -> list[aio_pika.abc.AbstractIncomingMessage]:
        """Receive until every id in `event_ids` arrived; return this test's messages in arrival order."""
        mine: list[aio_pika.abc.AbstractIncomingMessage] = []
        missing = set(event_ids)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while missing:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"{len(missing)} of {len(event_ids)} events did not arrive within {timeout} s")
            try:
                message = await asyncio.wait_for(self.messages.get(), remaining)
            except asyncio.TimeoutError:
                continue
            self.received.append(message)
            if message.message_id in event_ids:
                mine.append(message)
                missing.discard(message.message_id)
        return mine

    def drain(self) -> list[aio_pika.abc.AbstractIncomingMessage]:
        """Messages already delivered but not yet collected."""
        extra = []
        while not self.messages.empty():
            extra.append(self.messages.get_nowait())
        self.received.extend(extra)
        return extra


@asynccontextmanager
async def running(relay: OutboxRelay) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(relay.run())
    try:
        yield task
    finally:
        await relay.stop(timeout=10)
        await asyncio.wait_for(task, 5)  # re-raises if the relay died


def isolated(settings: Settings, **changes: Any) -> Settings:
    """The session settings with an exchange of this test's own."""
    return replace(settings, amqp_prefix=derived_prefix(settings.amqp_prefix, "relay"), **changes)


async def events_about(db, subject: str) -> list[dict[str, Any]]:
    """The outbox rows with this subject as CloudEvents (a stand-in sequence and chainhash where the relay,
    not running, has not added them yet), each validated against its schema."""
    rows = await db.fetch("SELECT event_id, type, source, subject, time, data, sequence, chainhash FROM outbox "
                          "WHERE subject = $1 ORDER BY id", subject)
    events = [to_cloudevent({**row, "sequence": row["sequence"] or 10**12 + n,
                             "chainhash": row["chainhash"] or bytes(32)}) for n, row in enumerate(map(dict, rows))]
    for event in events:
        schemas.validate(event)
    return events


class _EventsCollected:
    """A connection that only collects what `tpx.core.db.outbox.add_events` writes, as outbox rows."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    async def execute(self, _sql: str, events: str, source: str) -> None:
        """`events` is `tpx.core.db.outbox.events_json` of the events written."""
        self.rows += [{"event_id": e["id"], "type": e["type"], "source": source, "subject": e["subject"],
                       "time": datetime.fromisoformat(e["time"]), "data": e["data"]} for e in json.loads(events)]


def denial_cloudevent(identity: Any, problem: Any) -> dict[str, Any]:
    """What `minting.record_denial` writes for `problem`, as the relay would publish it (no database)."""
    from tpx.exchange import minting   # here: the workers' tests import this module too

    conn = _EventsCollected()
    asyncio.run(minting.record_denial(conn, SimpleNamespace(identity=identity), problem))
    [row] = conn.rows
    return to_cloudevent({**row, "sequence": 7, "chainhash": bytes(32)})
