"""What the tests declare on the shared RabbitMQ, and its removal when the run ends.

Every AMQP prefix a test derives from the run's own is registered here, so the
session's cleanup deletes its queues and exchanges too: a run leaves nothing
behind on the broker, whichever tests it ran.
"""

from __future__ import annotations

import uuid
from typing import Iterable

import aio_pika

DERIVED_PREFIXES: list[str] = []


def derived_prefix(base: str, tag: str) -> str:
    """A prefix of its own for one test (`<base>-<tag>-<random>`), deleted with the run's objects."""
    prefix = f"{base}-{tag}-{uuid.uuid4().hex[:6]}"
    DERIVED_PREFIXES.append(prefix)
    return prefix


async def delete_objects(amqp_url: str, prefixes: Iterable[str]) -> None:
    """Delete the queues and exchanges tpx declares under each prefix (missing ones are fine)."""
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        for prefix in prefixes:
            for queue in (f"{prefix}.audit", f"{prefix}.revoker", f"{prefix}.revoker.dead"):
                await (await connection.channel()).queue_delete(queue)
            for exchange in (f"{prefix}.events", f"{prefix}.dlx"):
                await (await connection.channel()).exchange_delete(exchange)
