"""RabbitMQ plumbing every service shares: which failures a reconnect may cure, the audit stream,
and how a broker or database address may appear in a log line."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import aio_pika
import aiormq

from tpx.core.config import Settings
from tpx.core.logging import get_logger

log = get_logger("tpx.core.broker")

# Failures of the broker side that a reconnect may cure.
BROKER_ERRORS: tuple[type[BaseException], ...] = (
    aiormq.exceptions.AMQPError,
    aiormq.exceptions.ChannelInvalidStateError,
    OSError,
    asyncio.TimeoutError,
)


def address(url: str) -> str:
    """Host, port and vhost of a URL, never its credentials: this is what logs may show."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    return f"{host}:{parts.port}{parts.path}" if parts.port else f"{host}{parts.path}"


def describe(exc: BaseException | None, *urls: str) -> str:
    """An error as one line, with any password from the configured URLs blanked out."""
    if exc is None:
        return ""
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    for url in urls:
        password = urlsplit(url).password
        if password:
            text = text.replace(password, "***")
    return text[:500]


async def declare_audit_stream(connection: aio_pika.abc.AbstractConnection, settings: Settings,
                               exchange: aio_pika.abc.AbstractExchange, *, timeout: float) -> None:
    """The replayable audit stream, bound to every event before the first one is published.

    Declared on its own channel: a stream whose retention was set differently
    by an operator makes the declaration fail, which must not close the
    publishing channel. Retention then stays as the operator set it.
    """
    channel = await connection.channel()
    try:
        stream = await channel.declare_queue(settings.audit_stream, durable=True, timeout=timeout, arguments={
            "x-queue-type": "stream",
            "x-max-age": settings.audit_max_age,
            "x-max-length-bytes": settings.audit_max_bytes,
        })
        await stream.bind(exchange, routing_key="#", timeout=timeout)
    except aiormq.exceptions.ChannelPreconditionFailed as exc:
        log.warning("relay.audit_stream_differs", stream=settings.audit_stream, error=str(exc)[:200])
    finally:
        if not channel.is_closed:
            await channel.close()
