"""The audit stream: replay from an offset and from a time, filters, and hash-chain verification."""

from __future__ import annotations

import argparse
import json
import uuid
from datetime import datetime, timezone

import aio_pika
import pytest

from tpx.cli import audit
from tpx.core.events import types
from tpx.core.db import outbox
from tpx.core.db.outbox import add_events
from tpx.core.events.types import Event
from tpx.core.relay.signal import OutboxSignal
from tpx.core.relay.relay import OutboxRelay
from tests.support.events import eventually, isolated, running

pytestmark = pytest.mark.integration


def args(**values) -> argparse.Namespace:
    defaults = dict(package=None, repository=None, type=None, format="json", since="first", limit=None,
                    idle_timeout=1.0, command_name="replay", follow=False, anchor=None)
    defaults.update(values)
    return argparse.Namespace(**defaults)


async def published(db, events) -> bool:
    return await outbox.is_published(db, [uuid.UUID(e.id) for e in events]) == len(events)


@pytest.fixture
async def stream(settings, db):
    """An isolated prefix whose audit stream holds a few known events; deleted afterwards."""
    own = isolated(settings)
    first = [Event(types.TOKEN_ISSUED, {"token_id": f"a{i}", "packages": ["foo"],
                                        "ci": {"repository": "Octo-Org/Octo-Repo"}}, subject=f"a{i}") for i in range(3)]
    second = [Event(types.TOKEN_REVOKED, {"token_id": f"b{i}", "packages": ["bar"],
                                          "ci": {"repository": "other/repo"}}, subject=f"b{i}") for i in range(3)]
    relay = OutboxRelay(own, db, OutboxSignal())
    async with running(relay):
        async with db.acquire() as conn:
            await add_events(conn, first, source="urn:tpx:test")
        await eventually(lambda: published(db, first), "first events published")
        middle = datetime.now(timezone.utc)
        async with db.acquire() as conn:
            await add_events(conn, second, source="urn:tpx:test")
        await eventually(lambda: published(db, second), "second events published")
    yield own, first, second, middle
    connection = await aio_pika.connect(own.amqp_url)
    async with connection:
        channel = await connection.channel()
        await channel.queue_delete(own.audit_stream)
        await channel.exchange_delete(own.events_exchange)


async def collect(settings, **values) -> list[dict]:
    lines: list[str] = []
    await audit.replay(settings, args(**values), lines.append)
    return [json.loads(line) for line in lines]


async def test_replay_everything_in_order_and_verify(stream):
    own, first, second, _ = stream
    events = await collect(own)
    ids = [e["id"] for e in events]
    assert [e.id for e in first + second] == [i for i in ids if i in {e.id for e in first + second}]
    sequences = [int(e["sequence"]) for e in events]
    assert sequences == sorted(sequences)
    lines: list[str] = []
    assert await audit.verify(own, args(command_name="verify"), lines.append) == 0
    assert lines[0].startswith("OK")


async def test_replay_from_an_offset(stream):
    own, first, second, _ = stream
    everything = await collect(own)
    offset = everything[3]["offset"]
    later = await collect(own, since=str(offset))
    assert [e["id"] for e in later] == [e["id"] for e in everything[3:]]


async def test_replay_from_a_time(stream):
    own, first, second, middle = stream
    events = await collect(own, since=middle.isoformat())
    ids = {e["id"] for e in events}
    assert {e.id for e in second} <= ids


@pytest.mark.parametrize(("filters", "expected"), [
    ({"package": "foo"}, "first"),
    ({"repository": "octo-org/octo-repo"}, "first"),
    ({"type": "token.revoked"}, "second"),
    ({"type": "token.*", "package": "bar"}, "second"),
])
async def test_filters(stream, filters, expected):
    own, first, second, _ = stream
    events = await collect(own, **filters)
    wanted = first if expected == "first" else second
    assert [e["id"] for e in events] == [e.id for e in wanted]


async def test_verify_names_a_forged_event(stream):
    own, first, second, _ = stream
    everything = await collect(own)
    forged = dict(everything[-1])
    forged.pop("offset")
    forged["id"] = "forged"
    forged["sequence"] = f"{int(forged['sequence']) + 1:020d}"
    connection = await aio_pika.connect(own.amqp_url)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.get_exchange(own.events_exchange)
        await exchange.publish(aio_pika.Message(json.dumps(forged).encode()), routing_key="token.revoked")
    lines: list[str] = []
    assert await audit.verify(own, args(command_name="verify"), lines.append) == 1
    assert "BROKEN" in lines[0] and "forged" in lines[0] and "modified" in lines[0]


def test_since_parsing():
    assert audit.parse_since("first") == "first"
    assert audit.parse_since("42") == 42
    assert audit.parse_since("2026-11-27T00:00:00Z") == datetime(2026, 11, 27, tzinfo=timezone.utc)
    assert audit.parse_since("2h") < datetime.now(timezone.utc)
    with pytest.raises(SystemExit):
        audit.parse_since("yesterday-ish")
