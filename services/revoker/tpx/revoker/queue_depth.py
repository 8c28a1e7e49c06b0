"""The depth of the revoker's queues, for the metrics, read off the request path.

Passive declares on a connection and a channel of their own. The channel is kept
and reused: aio_pika leaves a callback behind on its connection for every channel
opened and closed, so a channel per sample grew the revoker's memory by about
2 KB/s for as long as it ran. It is reopened only when the broker closes it (a
passive declare of a queue that is not declared yet).
"""

from __future__ import annotations

import asyncio

import aio_pika

from tpx.core.config import Settings
from tpx.core.metrics import QUEUE_DEPTH


def queue_names(settings: Settings) -> tuple[str, str]:
    return f"{settings.amqp_prefix}.revoker", f"{settings.amqp_prefix}.revoker.dead"


async def sample_queue_depths(connection: aio_pika.abc.AbstractConnection, settings: Settings, *,
                              interval: float, rounds: int | None = None) -> None:
    """Set the queue-depth gauges every `interval` seconds on `connection`, `rounds` times (or for ever)."""
    channel = await connection.channel()
    done = 0
    while rounds is None or done < rounds:
        for name in queue_names(settings):
            if channel.is_closed:
                channel = await connection.channel()
            try:
                declared = await channel.declare_queue(name, passive=True)
                QUEUE_DEPTH.labels(name).set(declared.declaration_result.message_count)
            except aio_pika.exceptions.ChannelNotFoundEntity:
                pass
        done += 1
        await asyncio.sleep(interval)


async def sample_forever_queue_depths(settings: Settings, interval: float = 5.0) -> None:
    """Sample for as long as the revoker runs; a broker outage only pauses the metrics."""
    while True:
        try:
            connection = await aio_pika.connect(settings.amqp_url, timeout=5)
            async with connection:
                await sample_queue_depths(connection, settings, interval=interval)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - metrics must never take the worker down
            await asyncio.sleep(interval)
