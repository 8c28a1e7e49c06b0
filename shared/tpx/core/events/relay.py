"""The outbox relay: moves committed events from Postgres to RabbitMQ, in order, at least once.

- One relay in the cluster publishes at a time, so events leave in a single order:
  it holds a session-level advisory lock on its own connection. Standbys retry
  every few seconds and take over when the leader's session ends.
- Sequences are given in their own short transaction to committed rows only, so
  a rolled-back write never consumes a number and the sequence has no gaps.
- A row is marked published only after the broker confirmed it. A crash or an
  outage in between republishes it; consumers deduplicate by event id.
- Reconnects are explicit (plain `aio_pika.connect`, not `connect_robust`): a
  robust connection buffers silently and can lose confirms, while here every
  failure is seen, logged, backed off and retried, and the events wait in Postgres.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any, Iterable, Sequence
from urllib.parse import urlsplit

import aio_pika
import aiormq
import asyncpg

from tpx.core.config import Settings
from tpx.core.db.pool import UNAVAILABLE_ERRORS
from tpx.core.events import chain
from tpx.core.events.cloudevents import CONTENT_TYPE, encode, to_cloudevent
from tpx.core.events.outbox import OutboxSignal
from tpx.core.events.types import routing_key
from tpx.core.logging import get_logger
from tpx.core.metrics import EVENTS_PUBLISHED, RELAY_FAILURES

log = get_logger("tpx.core.events.relay")

# Fixed bigints shared by every replica ("tpxR", "tpxS"); the migration lock is 0x74707801.
RELAY_LOCK_ID = 0x7470_7852  # session-level: who is the leader
SEQUENCE_LOCK_ID = 0x7470_7853  # transaction-level: guards sequence assignment even if two leaders overlap

# Lets the server notice a vanished leader within about half a minute, so a standby takes over.
_LOCK_SESSION_SETTINGS = {
    "application_name": "tpx-outbox-relay",
    "tcp_keepalives_idle": "10",
    "tcp_keepalives_interval": "5",
    "tcp_keepalives_count": "3",
}

_UNSEQUENCED = """
SELECT id, event_id, type, source, subject, time, data
FROM outbox WHERE sequence IS NULL ORDER BY id LIMIT $1 FOR UPDATE
"""

_SELECT_PENDING = """
SELECT event_id, type, source, subject, time, data, sequence, chainhash
FROM outbox
WHERE published_at IS NULL AND sequence IS NOT NULL
ORDER BY sequence
LIMIT $1
"""

_MARK_PUBLISHED = "UPDATE outbox SET published_at = now() WHERE sequence = ANY($1::bigint[])"

# Failures of the broker side that a reconnect may cure.
BROKER_ERRORS: tuple[type[BaseException], ...] = (
    aiormq.exceptions.AMQPError,
    aiormq.exceptions.ChannelInvalidStateError,
    OSError,
    asyncio.TimeoutError,
)


class BrokerUnavailable(Exception):
    """The broker could not take (part of) a batch; what it did not confirm stays unpublished."""


class _Backoff:
    """Exponential back-off with jitter, so replicas that failed together do not retry together."""

    def __init__(self, first: float = 0.5, maximum: float = 10.0) -> None:
        self._first = first
        self._maximum = maximum
        self._next = first

    def next(self) -> float:
        delay = self._next
        self._next = min(delay * 2, self._maximum)
        return random.uniform(delay / 2, delay)

    def reset(self) -> None:
        self._next = self._first


def _address(url: str) -> str:
    """Host, port and vhost of a URL, never its credentials: this is what logs may show."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    return f"{host}:{parts.port}{parts.path}" if parts.port else f"{host}{parts.path}"


def _describe(exc: BaseException, *urls: str) -> str:
    """An error as one line, with any password from the configured URLs blanked out."""
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    for url in urls:
        password = urlsplit(url).password
        if password:
            text = text.replace(password, "***")
    return text[:500]


async def _close_quietly(conn: asyncpg.Connection | None) -> None:
    if conn is None or conn.is_closed():
        return
    try:
        await asyncio.wait_for(conn.close(), 5)
    except Exception:  # noqa: BLE001 - a dead connection cannot be closed politely
        conn.terminate()


class _Broker:
    """One AMQP connection with a confirming channel; replaced as a whole after any failure."""

    def __init__(self, settings: Settings, *, connect_timeout: float, publish_timeout: float) -> None:
        self._url = settings.amqp_url
        self._exchange_name = settings.events_exchange
        self._settings = settings
        self._connect_timeout = connect_timeout
        self._publish_timeout = publish_timeout
        self._connection: aio_pika.abc.AbstractConnection | None = None
        self._channel: aio_pika.abc.AbstractChannel | None = None
        self._exchange: aio_pika.abc.AbstractExchange | None = None

    @property
    def ready(self) -> bool:
        return (
            self._connection is not None
            and not self._connection.is_closed
            and self._channel is not None
            and not self._channel.is_closed
            and self._exchange is not None
        )

    async def ensure(self) -> None:
        if self.ready:
            return
        await self.close()
        connection = await aio_pika.connect(
            self._url,
            timeout=self._connect_timeout,
            client_properties={"connection_name": "tpx outbox relay"},
        )
        try:
            channel = await connection.channel(publisher_confirms=True)
            exchange = await channel.declare_exchange(
                self._exchange_name, aio_pika.ExchangeType.TOPIC, durable=True, timeout=self._connect_timeout
            )
            await declare_audit_stream(connection, self._settings, exchange, timeout=self._connect_timeout)
        except BaseException:
            await asyncio.shield(self._close_connection(connection))
            raise
        self._connection, self._channel, self._exchange = connection, channel, exchange
        log.info("relay.broker_connected", broker=_address(self._url), exchange=self._exchange_name)

    async def publish(self, rows: Sequence[asyncpg.Record],
                      bodies: dict[str, bytes] | None = None) -> tuple[int, BaseException | None]:
        """Publish `rows` in order; return how many leading rows the broker confirmed, and the first failure.

        All messages go out on one channel without waiting for each confirm
        (the channel keeps their order); the confirms are then gathered under
        one deadline. Only a confirmed prefix may be marked published.
        """
        exchange = self._exchange
        if exchange is None:
            raise aiormq.exceptions.ChannelInvalidStateError("the relay has no open channel")
        # Tasks start in creation order and aiormq sends under a FIFO lock, so the wire order is `rows`.
        tasks = [
            asyncio.create_task(exchange.publish(_message(row, (bodies or {}).pop(str(row["event_id"]), None)),
                                                 routing_key(row["type"]), mandatory=False))
            for row in rows
        ]
        try:
            _, pending = await asyncio.wait(tasks, timeout=self._publish_timeout)
        except BaseException:
            await _cancel_all(tasks)
            raise
        await _cancel_all(pending)
        return _confirmed_prefix(tasks)

    async def close(self) -> None:
        connection, self._connection, self._channel, self._exchange = self._connection, None, None, None
        if connection is not None:
            await self._close_connection(connection)

    @staticmethod
    async def _close_connection(connection: aio_pika.abc.AbstractConnection) -> None:
        try:
            await asyncio.wait_for(connection.close(), 5)
        except Exception:  # noqa: BLE001 - closing a broken connection may fail; it is gone either way
            pass


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


def _message(row: asyncpg.Record, body: bytes | None = None) -> aio_pika.Message:
    """The AMQP message of an outbox row; `body` is the encoded event when the sequencing step of this
    process already built it (the same bytes `encode(to_cloudevent(row))` gives)."""
    return aio_pika.Message(
        body=body if body is not None else encode(to_cloudevent(row)),
        content_type=CONTENT_TYPE,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=str(row["event_id"]),
        timestamp=row["time"],
        type=row["type"],
        app_id="tpx",
    )


async def _cancel_all(tasks: Iterable[asyncio.Task[Any]]) -> None:
    tasks = list(tasks)
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks)


def _confirmed_prefix(tasks: list[asyncio.Task[Any]]) -> tuple[int, BaseException | None]:
    confirmed = 0
    failure: BaseException | None = None
    for task in tasks:
        if task.cancelled():
            failure = failure or asyncio.TimeoutError("no publisher confirm before the deadline")
            continue
        exc = task.exception()  # also marks every failure as retrieved
        if failure is not None:
            continue
        if exc is not None:
            failure = exc
        elif not isinstance(task.result(), aiormq.spec.Basic.Ack):
            failure = aiormq.exceptions.DeliveryError(None, task.result())
        else:
            confirmed += 1
    return confirmed, failure


class OutboxRelay:
    """Publishes the outbox while this process is the cluster's relay leader; a standby otherwise.

    `run()` loops until `stop()`. Counters (`published_total`,
    `last_published_sequence`, `broker_failures`) and `backlog()` feed metrics.
    """

    def __init__(
        self,
        settings: Settings,
        pool: asyncpg.Pool,
        signal: OutboxSignal | None = None,
        *,
        batch_size: int = 500,
        standby_retry_seconds: float = 5.0,
        lock_check_seconds: float = 5.0,
        connect_timeout: float = 5.0,
        publish_timeout: float = 10.0,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self._settings = settings
        self._pool = pool
        self._signal = signal or OutboxSignal()
        self._batch_size = batch_size
        self._standby_retry_seconds = standby_retry_seconds
        self._lock_check_seconds = lock_check_seconds
        self._connect_timeout = connect_timeout
        self._broker = _Broker(settings, connect_timeout=connect_timeout, publish_timeout=publish_timeout)
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[Any] | None = None
        self._leader = False
        self._bodies: dict[str, bytes] = {}  # event id -> encoded event, from sequencing to publishing
        self.published_total = 0
        self.last_published_sequence: int | None = None
        self.broker_failures = 0

    @property
    def is_leader(self) -> bool:
        return self._leader

    async def backlog(self) -> int:
        """Committed events not yet confirmed by the broker (sequenced or not)."""
        return await self._pool.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL")

    async def run(self) -> None:
        if self._task is not None:
            raise RuntimeError("this relay is already running")
        self._task = asyncio.current_task()
        try:
            while not self._stopping.is_set():
                lock_conn = await self._become_leader()
                if lock_conn is None:
                    break
                try:
                    await self._lead(lock_conn)
                finally:
                    self._leader = False
                    await self._broker.close()
                    await _close_quietly(lock_conn)  # ends the session, which releases the lock
        finally:
            self._leader = False
            await self._broker.close()

    async def stop(self, timeout: float = 30.0) -> None:
        """Let the batch in flight finish (so its confirms are recorded), then return.

        Cancels the relay only if it does not finish within `timeout`; what was
        published but not yet marked is then published again by the next leader.
        """
        self._stopping.set()
        self._signal.notify()
        task = self._task
        if task is None or task.done() or task is asyncio.current_task():
            return
        done, _ = await asyncio.wait({task}, timeout=timeout)
        if not done:
            log.warning("relay.stop_timeout", seconds=timeout)
            task.cancel()
            await asyncio.wait({task})

    # -- leadership ---------------------------------------------------------------

    async def _become_leader(self) -> asyncpg.Connection | None:
        """Wait until this relay holds the lock; None when stopped first."""
        backoff = _Backoff()
        conn: asyncpg.Connection | None = None
        told_standby = False
        try:
            while not self._stopping.is_set():
                try:
                    if conn is None or conn.is_closed():
                        conn = await asyncpg.connect(
                            self._settings.database_url,
                            timeout=self._connect_timeout,
                            server_settings=_LOCK_SESSION_SETTINGS,
                        )
                    if await conn.fetchval("SELECT pg_try_advisory_lock($1)", RELAY_LOCK_ID,
                                           timeout=self._connect_timeout):
                        log.info("relay.leader", lock_id=RELAY_LOCK_ID)
                        taken, conn = conn, None
                        return taken
                    backoff.reset()
                    if not told_standby:
                        log.info("relay.standby", retry_seconds=self._standby_retry_seconds)
                        told_standby = True
                    delay = self._standby_retry_seconds * random.uniform(0.8, 1.2)
                except UNAVAILABLE_ERRORS as exc:
                    delay = backoff.next()
                    log.warning("relay.database_unavailable", error=self._describe(exc), retry_in=round(delay, 2))
                    await _close_quietly(conn)
                    conn = None
                except Exception as exc:  # noqa: BLE001 - a background loop must outlive surprises
                    delay = backoff.next()
                    log.error("relay.lock_failed", error=self._describe(exc), retry_in=round(delay, 2))
                    await _close_quietly(conn)
                    conn = None
                await self._pause(delay)
            return None
        finally:
            await _close_quietly(conn)

    async def _lead(self, lock_conn: asyncpg.Connection) -> None:
        """Relay while the lock session lives; return when it is lost or on stop."""
        lost = asyncio.Event()

        def on_terminate(_conn: asyncpg.Connection) -> None:
            lost.set()
            self._signal.notify()

        lock_conn.add_termination_listener(on_terminate)
        self._leader = True
        loop = asyncio.get_running_loop()
        next_check = loop.time() + self._lock_check_seconds
        backoff = _Backoff()
        while not self._stopping.is_set():
            if lost.is_set() or lock_conn.is_closed():
                log.warning("relay.leadership_lost", reason="the lock session ended")
                return
            if loop.time() >= next_check:
                try:
                    await lock_conn.fetchval("SELECT 1", timeout=self._connect_timeout)
                except Exception as exc:  # noqa: BLE001 - any failure means the session, and so the lock, may be gone
                    log.warning("relay.leadership_lost", reason=self._describe(exc))
                    return
                next_check = loop.time() + self._lock_check_seconds
            try:
                full = await self._relay_once()
            except BrokerUnavailable as exc:
                self.broker_failures += 1
                RELAY_FAILURES.labels("broker").inc()
                await self._broker.close()
                delay = backoff.next()
                cause = f"{exc}; {self._describe(exc.__cause__)}" if exc.__cause__ else str(exc)
                log.warning("relay.broker_unavailable", broker=_address(self._settings.amqp_url),
                            error=cause, retry_in=round(delay, 2))
                await self._pause(delay)
                continue
            except UNAVAILABLE_ERRORS as exc:
                RELAY_FAILURES.labels("database").inc()
                delay = backoff.next()
                log.warning("relay.database_unavailable", error=self._describe(exc), retry_in=round(delay, 2))
                await self._pause(delay)
                continue
            except Exception as exc:  # noqa: BLE001 - a background loop must outlive surprises
                delay = backoff.next()
                log.error("relay.batch_failed", error=self._describe(exc), retry_in=round(delay, 2))
                await self._pause(delay)
                continue
            backoff.reset()
            if not full:
                await self._signal.wait(self._settings.relay_poll_seconds)

    # -- one batch ----------------------------------------------------------------

    async def _relay_once(self) -> bool:
        """Sequence, publish and mark one batch; True when a batch was full (more may wait)."""
        try:
            await self._broker.ensure()
        except BROKER_ERRORS as exc:
            raise BrokerUnavailable("cannot open a channel") from exc
        assigned = await self._assign_sequences()
        rows = await self._pool.fetch(_SELECT_PENDING, self._batch_size)
        if not rows:
            return assigned >= self._batch_size
        try:
            confirmed, failure = await self._broker.publish(rows, self._bodies)
        except BROKER_ERRORS as exc:
            raise BrokerUnavailable("publishing failed") from exc
        if confirmed:
            done = rows[:confirmed]
            await self._pool.execute(_MARK_PUBLISHED, [row["sequence"] for row in done])
            self.published_total += confirmed
            EVENTS_PUBLISHED.inc(confirmed)
            self.last_published_sequence = done[-1]["sequence"]
        if failure is not None:
            raise BrokerUnavailable(f"{confirmed} of {len(rows)} events confirmed") from failure
        return assigned >= self._batch_size or len(rows) >= self._batch_size

    async def _assign_sequences(self) -> int:
        """Give committed rows the next gap-free sequences and their hash-chain links, in `id` order."""
        async with self._pool.acquire() as conn:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", SEQUENCE_LOCK_ID)
                rows = await conn.fetch(_UNSEQUENCED, self._batch_size)
                if not rows:
                    return 0
                if len(self._bodies) > 10 * self._batch_size:
                    self._bodies.clear()  # rows another leader published; they are rebuilt if ever needed
                head = await conn.fetchrow("SELECT sequence, chainhash FROM event_chain FOR UPDATE")
                sequence, previous = head["sequence"], bytes(head["chainhash"])
                updates = []
                for row in rows:
                    sequence += 1
                    canonical = encode(to_cloudevent({**dict(row), "sequence": sequence}))
                    previous = chain.link_encoded(previous, canonical)
                    # "chainhash" sorts first among the attributes, so the published body is the
                    # canonical bytes with that member put in front; kept for the publish step.
                    self._bodies[str(row["event_id"])] = (
                        b'{"chainhash":"' + previous.hex().encode() + b'",' + canonical[1:])
                    updates.append((row["id"], sequence, previous))
                await conn.execute(  # one statement for the batch, not one per row
                    "UPDATE outbox o SET sequence = u.sequence, chainhash = u.chainhash "
                    "FROM unnest($1::bigint[], $2::bigint[], $3::bytea[]) AS u(id, sequence, chainhash) "
                    "WHERE o.id = u.id",
                    [u[0] for u in updates], [u[1] for u in updates], [u[2] for u in updates])
                await conn.execute("UPDATE event_chain SET sequence = $1, chainhash = $2", sequence, previous)
        return len(rows)

    # -- helpers ------------------------------------------------------------------

    async def _pause(self, seconds: float) -> None:
        """Sleep, but wake at once on stop."""
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except asyncio.TimeoutError:
            pass

    def _describe(self, exc: BaseException) -> str:
        return _describe(exc, self._settings.amqp_url, self._settings.database_url)
