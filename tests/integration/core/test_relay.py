"""The outbox relay against the real PostgreSQL and RabbitMQ.

Outages are simulated with a TCP proxy between the relay and the real server,
never by touching the shared servers. The outbox table is shared by the whole
test session, so every assertion filters by the event ids the test inserted.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from dataclasses import replace
from datetime import datetime

import aio_pika
import asyncpg
import pytest

from tpx.core.db.pool import create_pool
from tpx.core.events import chain, types
from tpx.core.events.cloudevents import CONTENT_TYPE, encode, to_cloudevent
from tpx.core.db import outbox
from tpx.core.db.outbox import add_events
from tpx.core.events.types import Event
from tpx.core.relay.signal import OutboxSignal
from tpx.core.db.locks import RELAY_LEADER as RELAY_LOCK_ID
from tpx.core.relay.relay import OutboxRelay
from tests.support.events import Consumer, eventually, isolated, running
from tests.support.tcp_proxy import TcpProxy, target_of, through

pytestmark = pytest.mark.integration

SOURCE = "/tests/relay"


# -- helpers ----------------------------------------------------------------------


async def insert(db: asyncpg.Pool, count: int, *, type_: str = types.TOKEN_ISSUED,
                 signal: OutboxSignal | None = None) -> list[Event]:
    events = [Event(type=type_, data={"n": n, "run": uuid.uuid4().hex}, subject=f"pkg-{n}") for n in range(count)]
    async with db.acquire() as conn:
        async with conn.transaction():
            await add_events(conn, events, source=SOURCE)
    if signal is not None:
        signal.notify()
    return events


async def sequences_of(db: asyncpg.Pool, events: list[Event]) -> list[int | None]:
    rows = await db.fetch("SELECT event_id::text AS id, sequence FROM outbox WHERE event_id = ANY($1::uuid[])",
                          [e.id for e in events])
    by_id = {row["id"]: row["sequence"] for row in rows}
    return [by_id.get(e.id) for e in events]


async def all_published(db: asyncpg.Pool, events: list[Event]) -> bool:
    return await outbox.is_published(db, [uuid.UUID(e.id) for e in events]) == len(events)


async def assert_sequences_gap_free(db: asyncpg.Pool) -> None:
    count, low, high = await db.fetchrow(
        "SELECT count(sequence), min(sequence), max(sequence) FROM outbox WHERE sequence IS NOT NULL"
    )
    assert count and high - low + 1 == count, f"{count} sequences spread over {low}..{high}"


def sequence_of(message: aio_pika.abc.AbstractIncomingMessage) -> int:
    return int(json.loads(message.body)["sequence"])


def first_arrivals(messages: list[aio_pika.abc.AbstractIncomingMessage]) -> list[aio_pika.abc.AbstractIncomingMessage]:
    seen: set[str | None] = set()
    first = []
    for message in messages:
        if message.message_id not in seen:
            seen.add(message.message_id)
            first.append(message)
    return first


# -- tests ------------------------------------------------------------------------


async def test_events_arrive_as_ordered_cloudevents(settings, db):
    test_settings = isolated(settings)
    signal = OutboxSignal()
    relay = OutboxRelay(test_settings, db, signal)
    events = [
        Event(type=types.TOKEN_ISSUED, data={"token_id": "t1", "packages": ["a"]}, subject="a"),
        Event(type=types.PUBLISHER_CREATED, data={"publisher_id": "p1", "note": "ünïcode"}),
        Event(type=types.ISSUER_KEYS_ROTATED, data={"issuer": "https://issuer.test"}, subject="https://issuer.test"),
        Event(type=types.EXCHANGE_DENIED, data={"reason": "workflow mismatch"}, subject="b"),
    ]
    async with Consumer(test_settings) as consumer, running(relay):
        async with db.acquire() as conn:
            async with conn.transaction():
                await add_events(conn, events, source=SOURCE)
        signal.notify()
        messages = await consumer.collect({e.id for e in events})

        assert [m.message_id for m in messages] == [e.id for e in events]  # once each, in commit order
        sequences = await sequences_of(db, events)
        assert sequences == list(range(sequences[0], sequences[0] + len(events)))
        for message, event, sequence in zip(messages, events, sequences):
            assert message.routing_key == types.routing_key(event.type) == event.type.removeprefix("dev.tpx.")
            assert message.content_type == CONTENT_TYPE
            assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
            assert message.type == event.type
            assert message.timestamp is not None
            body = json.loads(message.body)
            assert encode(body) == message.body  # canonical: compact, sorted keys
            expected_keys = {"specversion", "id", "source", "type", "time", "datacontenttype", "data", "sequence",
                             "chainhash"}
            assert set(body) == expected_keys | ({"subject"} if event.subject is not None else set())
            assert body["specversion"] == "1.0"
            assert body["id"] == event.id
            assert body["source"] == SOURCE
            assert body["type"] == event.type
            assert body.get("subject") == event.subject
            assert body["datacontenttype"] == "application/json"
            assert body["data"] == event.data
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", body["time"])
            assert datetime.fromisoformat(body["time"].replace("Z", "+00:00")) == event.time
            assert re.fullmatch(r"\d{20}", body["sequence"]) and int(body["sequence"]) == sequence

        await eventually(lambda: all_published(db, events), "the events to be marked published")
        assert relay.published_total >= len(events)
        assert relay.last_published_sequence is not None and relay.last_published_sequence >= sequences[-1]
        assert await relay.backlog() == 0
    await assert_sequences_gap_free(db)


async def test_rolled_back_events_never_arrive_and_leave_no_gap(settings, db):
    test_settings = isolated(settings)
    signal = OutboxSignal()
    relay = OutboxRelay(test_settings, db, signal)
    async with Consumer(test_settings) as consumer, running(relay):
        rolled_back = [Event(type=types.TOKEN_ISSUED, data={"doomed": True}) for _ in range(3)]
        async with db.acquire() as doomed:
            transaction = doomed.transaction()
            await transaction.start()
            await add_events(doomed, rolled_back, source=SOURCE)  # takes outbox ids first...
            before = await insert(db, 2, signal=signal)  # ...then a writer that commits takes later ones
            await transaction.rollback()
        after = await insert(db, 2, signal=signal)

        messages = await consumer.collect({e.id for e in before + after})
        assert [m.message_id for m in messages] == [e.id for e in before + after]
        assert not {m.message_id for m in consumer.received} & {e.id for e in rolled_back}
        assert await db.fetchval("SELECT count(*) FROM outbox WHERE event_id = ANY($1::uuid[])",
                                 [e.id for e in rolled_back]) == 0
        sequences = [sequence_of(m) for m in messages]
        assert sequences == list(range(sequences[0], sequences[0] + 4))  # the rollback consumed no number
    await assert_sequences_gap_free(db)


async def test_broker_outage_loses_nothing(settings, db):
    test_settings = isolated(settings)
    proxy = TcpProxy(*target_of(settings.amqp_url, 5672))
    await proxy.start()
    signal = OutboxSignal()
    relay = OutboxRelay(replace(test_settings, amqp_url=through(settings.amqp_url, proxy)), db, signal)
    try:
        async with Consumer(test_settings) as consumer, running(relay):
            warm_up = await insert(db, 1, signal=signal)
            await consumer.collect({e.id for e in warm_up})  # the relay's connection is up

            failures_before = relay.broker_failures
            await proxy.cut()
            during: list[Event] = []
            for _ in range(5):  # writers keep committing while the broker is gone
                during += await insert(db, 10, signal=signal)
            await eventually(lambda: relay.broker_failures > failures_before, "the relay to notice the outage")
            assert not await outbox.is_published(db, [uuid.UUID(e.id) for e in during])
            assert await relay.backlog() >= len(during)

            await proxy.restore()
            messages = await consumer.collect({e.id for e in during}, timeout=30)
            assert {m.message_id for m in messages} == {e.id for e in during}
            first = first_arrivals(messages)
            assert [m.message_id for m in first] == [e.id for e in during]  # in commit order
            sequences = [sequence_of(m) for m in first]
            assert sequences == sorted(sequences) and len(set(sequences)) == len(sequences)
            await eventually(lambda: all_published(db, during), "the events to be marked published")
    finally:
        await proxy.close()


async def test_broker_lost_in_the_middle_of_a_batch_loses_nothing(settings, db):
    test_settings = isolated(settings)
    proxy = TcpProxy(*target_of(settings.amqp_url, 5672))
    await proxy.start()
    signal = OutboxSignal()
    relay = OutboxRelay(replace(test_settings, amqp_url=through(settings.amqp_url, proxy)), db, signal,
                        batch_size=400)
    try:
        async with Consumer(test_settings) as consumer, running(relay):
            warm_up = await insert(db, 1, signal=signal)
            await consumer.collect({e.id for e in warm_up})

            failures_before = relay.broker_failures
            proxy.cut_after(60_000)  # about a hundred messages into the first batch
            events = await insert(db, 1000, signal=signal)
            await eventually(lambda: not proxy.listening, "the cut in the middle of the batch")
            await eventually(lambda: relay.broker_failures > failures_before, "the relay to notice the outage")
            assert await relay.backlog() > 0
            await proxy.restore()

            messages = await consumer.collect({e.id for e in events}, timeout=30)
            first = first_arrivals(messages)
            assert [m.message_id for m in first] == [e.id for e in events]
            sequences = [sequence_of(m) for m in first]
            assert sequences == list(range(sequences[0], sequences[0] + len(events)))
            await eventually(lambda: all_published(db, events), "the events to be marked published")
    finally:
        await proxy.close()


async def test_many_events_arrive_in_order_across_batches(settings, db):
    test_settings = isolated(settings)
    signal = OutboxSignal()
    relay = OutboxRelay(test_settings, db, signal, batch_size=64)
    async with Consumer(test_settings) as consumer:
        events: list[Event] = []
        for _ in range(10):  # committed before the relay starts: a backlog several batches long
            events += await insert(db, 100)
        async with running(relay):
            messages = await consumer.collect({e.id for e in events})
            assert [m.message_id for m in messages] == [e.id for e in events]
            sequences = [sequence_of(m) for m in messages]
            assert sequences == list(range(sequences[0], sequences[0] + len(events)))
            await eventually(lambda: all_published(db, events), "the events to be marked published")
    await assert_sequences_gap_free(db)


async def test_racing_sequencers_number_each_row_once_in_one_chain(settings, db):
    """Sequencing steps that race (two relays during a rollout, a leader and one whose session was just
    lost) give every committed row one number, without gaps, each linked to the one before: the sequence
    lock alone orders them, the rows are read without row locks."""

    def link(previous: bytes, sequence: int, row: asyncpg.Record) -> bytes:   # the relay's own link
        return chain.link_encoded(previous, encode(to_cloudevent({**dict(row), "sequence": sequence})))

    sequencers = await create_pool(settings, min_size=4, max_size=4)
    try:
        events: list[Event] = []
        writing = True

        async def write() -> None:
            nonlocal writing
            for _ in range(30):
                events.extend(await insert(db, 5))
            writing = False

        async def sequence() -> int:
            numbered = 0
            while writing or await db.fetchval("SELECT count(*) FROM outbox WHERE sequence IS NULL"):
                numbered += await outbox.assign_sequences(sequencers, 7, link)
                await asyncio.sleep(0)
            return numbered

        counts = await asyncio.gather(write(), *(sequence() for _ in range(4)))
        assert sum(counts[1:]) >= len(events) and sum(1 for c in counts[1:] if c) >= 2, counts
    finally:
        await sequencers.close()
    rows = await db.fetch(
        """SELECT event_id, type, source, subject, time, data, sequence, chainhash FROM outbox
           WHERE sequence BETWEEN (SELECT min(sequence) - 1 FROM outbox WHERE event_id = ANY($1::uuid[]))
                              AND (SELECT max(sequence) FROM outbox WHERE event_id = ANY($1::uuid[]))
           ORDER BY sequence""", [e.id for e in events])
    ours = {e.id for e in events}
    assert len([r for r in rows if str(r["event_id"]) in ours]) == len(events)
    for before, row in zip(rows, rows[1:]):
        assert row["sequence"] == before["sequence"] + 1
        if str(row["event_id"]) in ours:
            content = {k: v for k, v in row.items() if k not in ("sequence", "chainhash")}
            assert bytes(row["chainhash"]) == link(bytes(before["chainhash"]), row["sequence"], content), row["sequence"]
    await assert_sequences_gap_free(db)


async def test_database_outage_loses_nothing_and_leadership_returns(settings, db):
    test_settings = isolated(settings)
    proxy = TcpProxy(*target_of(settings.database_url, 5432))
    await proxy.start()
    proxied = replace(test_settings, database_url=through(settings.database_url, proxy))
    relay_pool = await create_pool(proxied, min_size=1, max_size=2)
    signal = OutboxSignal()
    relay = OutboxRelay(proxied, relay_pool, signal, standby_retry_seconds=0.2)
    try:
        async with Consumer(test_settings) as consumer, running(relay):
            await eventually(lambda: relay.is_leader, "the relay to lead")
            warm_up = await insert(db, 1, signal=signal)
            await consumer.collect({e.id for e in warm_up})

            await proxy.cut()  # the lock session dies with the rest: leadership is lost
            await eventually(lambda: not relay.is_leader, "the relay to notice it lost the lock")
            during = await insert(db, 20, signal=signal)  # written directly, the service's own pool is fine
            await proxy.restore()

            messages = await consumer.collect({e.id for e in during}, timeout=30)
            assert relay.is_leader
            first = first_arrivals(messages)
            assert [m.message_id for m in first] == [e.id for e in during]
            await eventually(lambda: all_published(db, during), "the events to be marked published")
    finally:
        await relay_pool.close()
        await proxy.close()


async def test_only_one_of_two_relays_publishes(settings, db):
    test_settings = isolated(settings)
    signal = OutboxSignal()
    first = OutboxRelay(test_settings, db, signal, standby_retry_seconds=0.2)
    second = OutboxRelay(test_settings, db, signal, standby_retry_seconds=0.2)
    async with Consumer(test_settings) as consumer, running(first), running(second):
        await eventually(lambda: first.is_leader or second.is_leader, "one relay to lead")
        leader, standby = (first, second) if first.is_leader else (second, first)
        assert not standby.is_leader

        events = await insert(db, 30, signal=signal)
        marker = await insert(db, 1, signal=signal)
        messages = await consumer.collect({e.id for e in events + marker})
        messages += [m for m in consumer.drain() if m.message_id in {e.id for e in events}]
        assert [m.message_id for m in messages] == [e.id for e in events + marker]  # each exactly once
        sequences = [sequence_of(m) for m in messages]
        assert len(set(sequences)) == len(sequences) and sequences == sorted(sequences)
        assert standby.published_total == 0

        await leader.stop()  # a graceful leader hands over without duplicates
        await eventually(lambda: standby.is_leader, "the standby to take over")
        later = await insert(db, 10, signal=signal)
        messages = await consumer.collect({e.id for e in later})
        assert [m.message_id for m in messages] == [e.id for e in later]
        await eventually(lambda: standby.published_total >= len(later), "the new leader to count its events")
        seen = [m.message_id for m in consumer.received if m.message_id in {e.id for e in events + marker + later}]
        assert len(seen) == len(set(seen))


async def test_a_relay_that_stands_by_first_leaves_the_lead_to_one_started_with_it(settings, db):
    """The exchange's relay stands by first, so a jwks-refresher or revoker started alongside leads."""
    test_settings = isolated(settings)
    signal = OutboxSignal()
    exchange_relay = OutboxRelay(test_settings, db, signal, stand_by_first=True, standby_retry_seconds=60)
    worker_relay = OutboxRelay(test_settings, db, signal, standby_retry_seconds=60)
    async with Consumer(test_settings), running(exchange_relay):
        await eventually(lambda: exchange_relay._lock_session.sessions >= 1, "the first relay's lock session")
        async with running(worker_relay):
            await eventually(lambda: worker_relay.is_leader, "the relay started second to lead")
            assert not exchange_relay.is_leader


async def test_a_relay_that_stands_by_first_leads_when_no_other_does(settings, db):
    test_settings = isolated(settings)
    signal = OutboxSignal()
    relay = OutboxRelay(test_settings, db, signal, stand_by_first=True, standby_retry_seconds=0.2)
    async with Consumer(test_settings) as consumer, running(relay):
        await eventually(lambda: relay.is_leader, "the relay to lead after one standby retry")
        events = await insert(db, 3, signal=signal)
        messages = await consumer.collect({e.id for e in events})
        assert [m.message_id for m in messages] == [e.id for e in events]


async def test_stop_is_prompt_and_releases_the_lock(settings, db):
    test_settings = isolated(settings)
    relay = OutboxRelay(test_settings, db, OutboxSignal())
    loop = asyncio.get_running_loop()
    async with Consumer(test_settings):  # deletes the exchange the relay declares
        task = asyncio.create_task(relay.run())
        try:
            await eventually(lambda: relay.is_leader, "the relay to lead")
            started = loop.time()
            await relay.stop()
            assert loop.time() - started < 2
            assert task.done() and task.exception() is None
        finally:
            await relay.stop()

    conn = await asyncpg.connect(settings.database_url)
    try:
        assert await conn.fetchval("SELECT pg_try_advisory_lock($1)", RELAY_LOCK_ID)
        await conn.fetchval("SELECT pg_advisory_unlock($1)", RELAY_LOCK_ID)
    finally:
        await conn.close()


async def test_stop_is_prompt_while_the_broker_is_away(settings, db):
    proxy = TcpProxy(*target_of(settings.amqp_url, 5672))
    await proxy.start()
    await proxy.cut()  # refuses every connection from the start
    relay = OutboxRelay(isolated(settings, amqp_url=through(settings.amqp_url, proxy)), db, OutboxSignal())
    loop = asyncio.get_running_loop()
    task = asyncio.create_task(relay.run())
    try:
        await eventually(lambda: relay.broker_failures >= 2, "the relay to back off")
        started = loop.time()
        await relay.stop()
        assert loop.time() - started < 2
        assert task.done() and task.exception() is None
    finally:
        await relay.stop()
        await proxy.close()


async def test_a_leader_polls_briefly_while_events_of_other_processes_flow(settings, db):
    """A leader that no local commit wakes (a relay in a worker, the events an exchange's) finds them by
    polling: every TPX_RELAY_POLL_SECONDS when idle, but within BUSY_POLL_SECONDS once events flow, so
    they leave in small batches rather than one burst per idle interval."""
    test_settings = replace(isolated(settings), relay_poll_seconds=10.0)
    relay = OutboxRelay(test_settings, db, OutboxSignal())   # never notified: every event is "another's"
    async with running(relay):
        await eventually(lambda: relay.is_leader, "leadership")
        first = await insert(db, 1)
        await eventually(lambda: all_published(db, first), "the first event (found by the first poll)")
        loop = asyncio.get_running_loop()
        lags = []
        for _ in range(3):
            events = await insert(db, 5)
            committed = loop.time()
            await eventually(lambda: all_published(db, events), "events committed while others flowed")
            lags.append(loop.time() - committed)
    # Each within about one busy interval (0.05 s) plus a batch; at the idle interval it would be 10 s.
    assert max(lags) < 2.0, lags
