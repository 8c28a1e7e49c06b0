"""The relay's publish-only AMQP connection (tpx.core.relay.confirming_publisher) against the real broker."""

from __future__ import annotations

import asyncio
import datetime

import aio_pika
import pytest
from pamqp.commands import Basic

from tpx.core.relay.confirming_publisher import ConfirmingPublisher, Declarations, Outgoing, PublisherClosed
from tests.support.amqp import derived_prefix
from tests.support.tcp_proxy import TcpProxy, target_of, through

pytestmark = pytest.mark.integration


@pytest.fixture
async def queue(settings, amqp_prefix):
    """A topic exchange of this run with a queue bound to everything (deleted afterwards)."""
    connection = await aio_pika.connect(settings.amqp_url)
    channel = await connection.channel()
    exchange = await channel.declare_exchange(f"{amqp_prefix}.publisher-test", aio_pika.ExchangeType.TOPIC,
                                              auto_delete=False)
    declared = await channel.declare_queue(f"{amqp_prefix}.publisher-test", exclusive=True)
    await declared.bind(exchange, routing_key="#")
    try:
        yield exchange.name, declared
    finally:
        await declared.delete(if_unused=False, if_empty=False)
        await exchange.delete()
        await connection.close()


def message(exchange: str, number: int, body: bytes | None = None) -> Outgoing:
    return Outgoing(exchange, f"test.n{number}", body if body is not None else f"event {number}".encode(),
                    Basic.Properties(content_type="application/cloudevents+json", delivery_mode=2,
                                     message_id=f"id-{number}", message_type="dev.tpx.test", app_id="tpx",
                                     timestamp=datetime.datetime(2026, 12, 5, 3, 4, 5, tzinfo=datetime.timezone.utc)))


async def received(queue, count: int) -> list[aio_pika.abc.AbstractIncomingMessage]:
    got = []
    async with queue.iterator() as messages:
        async for incoming in messages:
            await incoming.ack()
            got.append(incoming)
            if len(got) == count:
                return got
    return got


async def test_a_batch_is_confirmed_and_arrives_in_order_with_its_properties(settings, queue):
    exchange, declared = queue
    publisher = await ConfirmingPublisher.connect(settings.amqp_url, timeout=5, name="test")
    try:
        big = bytes(range(256)) * 1200   # 307,200 bytes: split over several body frames
        batch = [message(exchange, n) for n in range(500)] + [message(exchange, 500, big)]
        assert await publisher.publish(batch, timeout=10) == (501, None)
        assert await publisher.publish([message(exchange, 501)], timeout=10) == (1, None)  # tags continue
    finally:
        await publisher.close()
    got = await asyncio.wait_for(received(declared, 502), 20)
    assert [m.message_id for m in got] == [f"id-{n}" for n in range(502)]
    assert got[500].body == big and got[3].body == b"event 3" and got[3].routing_key == "test.n3"
    assert (got[0].type, got[0].app_id, got[0].content_type, got[0].delivery_mode) == (
        "dev.tpx.test", "tpx", "application/cloudevents+json", aio_pika.DeliveryMode.PERSISTENT)
    assert got[0].timestamp == datetime.datetime(2026, 12, 5, 3, 4, 5, tzinfo=datetime.timezone.utc)


async def test_a_missing_exchange_closes_the_channel_and_nothing_counts_as_confirmed(settings, amqp_prefix):
    publisher = await ConfirmingPublisher.connect(settings.amqp_url, timeout=5, name="test")
    try:
        confirmed, failure = await publisher.publish([message(f"{amqp_prefix}.no-such-exchange", 1)], timeout=10)
        assert confirmed == 0
        assert isinstance(failure, PublisherClosed) and "404" in str(failure)
        assert publisher.closed
        assert (await publisher.publish([message(f"{amqp_prefix}.no-such-exchange", 2)], timeout=1))[0] == 0
    finally:
        await publisher.close()


async def test_a_connection_cut_mid_batch_confirms_at_most_a_prefix(settings, queue):
    exchange, _ = queue
    async with TcpProxy(*target_of(settings.amqp_url, 5672)) as proxy:
        publisher = await ConfirmingPublisher.connect(through(settings.amqp_url, proxy), timeout=5, name="test")
        try:
            proxy.cut_after(40_000)   # in the middle of the batch's single write
            confirmed, failure = await publisher.publish([message(exchange, n, b"x" * 400) for n in range(1000)],
                                                         timeout=10)
            assert confirmed < 1000
            assert isinstance(failure, PublisherClosed)
            assert publisher.closed
        finally:
            await publisher.close()


async def test_a_broker_that_goes_silent_is_noticed_after_two_heartbeats(settings):
    async with TcpProxy(*target_of(settings.amqp_url, 5672)) as proxy:
        publisher = await ConfirmingPublisher.connect(through(settings.amqp_url, proxy), timeout=5, name="test",
                                                      heartbeat_seconds=1)
        try:
            proxy.partition()
            loop = asyncio.get_running_loop()
            began = loop.time()
            while not publisher.closed:
                assert loop.time() - began < 5, "a silent broker must be noticed within two heartbeats"
                await asyncio.sleep(0.05)
            assert loop.time() - began >= 1.5
        finally:
            await publisher.close()


def declarations(amqp_prefix: str, tag: str) -> Declarations:
    """The relay's names under a prefix of this test's own: the run deletes them however the test ends."""
    prefix = derived_prefix(amqp_prefix, tag)
    return Declarations(f"{prefix}.events", f"{prefix}.audit",
                        {"x-queue-type": "stream", "x-max-age": "1D", "x-max-length-bytes": 10 * 1024**2})


async def test_opening_declares_the_exchange_and_the_audit_stream_bound_to_it(settings, amqp_prefix):
    names = declarations(amqp_prefix, "declared")
    publisher = await ConfirmingPublisher.connect(settings.amqp_url, timeout=5, name="test", declarations=names)
    connection = await aio_pika.connect(settings.amqp_url)
    try:
        assert publisher.stream_differs is None
        channel = await connection.channel()
        stream = await channel.declare_queue(names.stream, passive=True)
        await channel.declare_exchange(names.exchange, passive=True)
        assert await publisher.publish([message(names.exchange, n) for n in range(3)], timeout=10) == (3, None)
        await channel.set_qos(prefetch_count=10)
        ids = []
        async with stream.iterator(arguments={"x-stream-offset": "first"}) as messages:
            async for incoming in messages:
                await incoming.ack()
                ids.append(incoming.message_id)
                if len(ids) == 3:
                    break
        assert ids == ["id-0", "id-1", "id-2"]   # bound to everything the exchange routes
    finally:
        await publisher.close()
        await connection.close()


async def test_a_stream_configured_otherwise_is_left_as_it_is_and_publishing_goes_on(settings, amqp_prefix):
    names = declarations(amqp_prefix, "differs")
    connection = await aio_pika.connect(settings.amqp_url)
    channel = await connection.channel()
    await channel.declare_queue(names.stream, durable=True, arguments={**names.stream_arguments, "x-max-age": "2D"})
    publisher = await ConfirmingPublisher.connect(settings.amqp_url, timeout=5, name="test", declarations=names)
    try:
        assert publisher.stream_differs and "PRECONDITION_FAILED" in publisher.stream_differs
        assert await publisher.publish([message(names.exchange, 1)], timeout=10) == (1, None)
    finally:
        await publisher.close()
        await connection.close()
