"""The outbox relay: moves committed events from Postgres to RabbitMQ, in order, at least once.

- One relay in the cluster publishes at a time, so events leave in a single order:
  it holds a session-level advisory lock on a connection of its own
  (`tpx.core.db.listener.KeptConnection`). Standbys retry every few seconds and
  take over when the leader's session ends; a leader whose session is lost
  stops at once, since another may already lead.
- Sequences are given in their own short transaction to committed rows only, so
  a rolled-back write never consumes a number and the sequence has no gaps.
- A row is marked published only after the broker confirmed it. A crash or an
  outage in between republishes it; consumers deduplicate by event id.
- Reconnects are explicit (no `connect_robust`): a robust connection buffers
  silently and can lose confirms, while here every failure is seen, logged,
  backed off and retried, and the events wait in Postgres. Publishing goes
  through `confirming_publisher` (a batch per write, confirms counted), not
  aio-pika, whose per-message cost exceeded an exchange's.
"""

from __future__ import annotations

import asyncio
from typing import Any, Sequence

import asyncpg
from pamqp.commands import Basic

from tpx.core.backoff import Backoff, jittered
from tpx.core.broker import address, describe
from tpx.core.config import Settings
from tpx.core.db import outbox
from tpx.core.db.listener import KeptConnection, Session
from tpx.core.db.pool import UNAVAILABLE_ERRORS
from tpx.core.events import chain
from tpx.core.events.cloudevents import CONTENT_TYPE, encode, to_cloudevent
from tpx.core.events.types import routing_key
from tpx.core.logging import get_logger
from tpx.core.metrics import EVENTS_PUBLISHED, RELAY_FAILURES
from tpx.core.outages import BROKER, DATABASE
from tpx.core.relay.confirming_publisher import ConfirmingPublisher, Declarations, Outgoing, PublisherClosed
from tpx.core.relay.signal import OutboxSignal

Properties = Basic.Properties

log = get_logger("tpx.core.relay")

# Lets the server notice a vanished leader within about half a minute, so a standby takes over.
_LOCK_SESSION_SETTINGS = {
    "tcp_keepalives_idle": "10",
    "tcp_keepalives_interval": "5",
    "tcp_keepalives_count": "3",
}


# What a broker failure looks like here (PublisherClosed is a ConnectionError): a reconnect may cure it.
BROKER_ERRORS: tuple[type[BaseException], ...] = (OSError, asyncio.TimeoutError)


# How soon a leader that just relayed events polls again, when no signal of its own process wakes it: at
# TPX_RELAY_POLL_SECONDS (0.5 s) a leader in a worker relayed an exchange's events in bursts of ~900,
# which held the core PostgreSQL shares with it long enough to double the exchange's p99 at 8 connections
# (docs/decisions.md: 0.05 s gave the lowest tail at no measurable cost in throughput; 0.1 s half of that).
BUSY_POLL_SECONDS = 0.05


class BrokerUnavailable(Exception):
    """The broker could not take (part of) a batch; what it did not confirm stays unpublished."""


class _Broker:
    """One publish-only confirming connection (it declares what it publishes to); replaced as a whole
    after any failure."""

    def __init__(self, settings: Settings, *, connect_timeout: float, publish_timeout: float) -> None:
        self._url = settings.amqp_url
        self._exchange_name = settings.events_exchange
        self._settings = settings
        self._connect_timeout = connect_timeout
        self._publish_timeout = publish_timeout
        self._publisher: ConfirmingPublisher | None = None

    @property
    def ready(self) -> bool:
        return self._publisher is not None and not self._publisher.closed

    async def ensure(self) -> None:
        if self.ready:
            return
        await self.close()
        settings = self._settings
        self._publisher = await ConfirmingPublisher.connect(
            self._url, timeout=self._connect_timeout, name="tpx outbox relay",
            declarations=Declarations(self._exchange_name, settings.audit_stream, {
                "x-queue-type": "stream", "x-max-age": settings.audit_max_age,
                "x-max-length-bytes": settings.audit_max_bytes}))
        if self._publisher.stream_differs:
            log.warning("relay.audit_stream_differs", stream=settings.audit_stream,
                        error=self._publisher.stream_differs[:200])
        log.info("relay.broker_connected", broker=address(self._url), exchange=self._exchange_name)

    async def publish(self, rows: Sequence[asyncpg.Record],
                      bodies: dict[str, bytes] | None = None) -> tuple[int, BaseException | None]:
        """Publish `rows` in order; return how many leading rows the broker confirmed, and the first failure.

        The whole batch goes out in one write on one channel, and its confirms
        are awaited under one deadline. Only a confirmed prefix may be marked published.
        """
        publisher = self._publisher
        if publisher is None or publisher.closed:
            raise PublisherClosed("the relay has no open broker connection")
        messages = []
        for index, row in enumerate(rows):
            if index and index % outbox.YIELD_EVERY == 0:
                await asyncio.sleep(0)  # let requests run between chunks of a large batch
            messages.append(_message(self._exchange_name, row, (bodies or {}).pop(str(row["event_id"]), None)))
        return await publisher.publish(messages, self._publish_timeout)

    async def close(self) -> None:
        publisher, self._publisher = self._publisher, None
        if publisher is not None:
            await publisher.close()


def _message(exchange: str, row: asyncpg.Record, body: bytes | None = None) -> Outgoing:
    """The AMQP message of an outbox row; `body` is the encoded event when the sequencing step of this
    process already built it (the same bytes `encode(to_cloudevent(row))` gives).

    A kept body is used only if it carries the row's stored chain link: a sequencing
    transaction that rolled back, or another leader that numbered the row, leaves a
    body behind that this row no longer has.
    """
    if body is not None and row["chainhash"] is not None:
        if not body.startswith(b'{"chainhash":"' + bytes(row["chainhash"]).hex().encode() + b'",'):
            body = None
    return Outgoing(
        exchange=exchange,
        routing_key=routing_key(row["type"]),
        body=body if body is not None else encode(to_cloudevent(row)),
        properties=Properties(content_type=CONTENT_TYPE, delivery_mode=2, message_id=str(row["event_id"]),
                              timestamp=row["time"], message_type=row["type"], app_id="tpx"),
    )


class OutboxRelay:
    """Publishes the outbox while this process is the cluster's relay leader; a standby otherwise.

    With `stand_by_first` the relay waits one standby retry before its first try to
    lead on each session, so a relay in a process that serves no requests (the
    jwks-refresher, the revoker) starting at the same time takes the leadership:
    leading from an exchange process costs its requests ~10% of their throughput
    on a small machine (docs/decisions.md). Without such a process it leads a few
    seconds later; its events wait in the outbox meanwhile.

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
        stand_by_first: bool = False,
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
        self._stand_by_first = stand_by_first
        self._connect_timeout = connect_timeout
        self._broker = _Broker(settings, connect_timeout=connect_timeout, publish_timeout=publish_timeout)
        self._lock_session = KeptConnection(settings.database_url, name="outbox-relay",
                                            keepalive_seconds=lock_check_seconds, connect_timeout=connect_timeout,
                                            backoff=Backoff(first=0.25, maximum=2.0),
                                            server_settings=_LOCK_SESSION_SETTINGS)
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
        return (await outbox.backlog(self._pool))[0]

    async def run(self) -> None:
        if self._task is not None:
            raise RuntimeError("this relay is already running")
        self._task = asyncio.current_task()
        try:
            await self._lock_session.run(self._hold, self._stopping, finish_on_stop=True)
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

    async def _hold(self, session: Session) -> None:
        """On one lock session: wait until this relay holds the lock, then relay until the session ends."""
        session.conn.add_termination_listener(lambda _conn: self._signal.notify())
        told_standby = False
        first = self._stand_by_first
        while first or not await outbox.try_lead(session, self._connect_timeout):
            if not told_standby:
                log.info("relay.standby", retry_seconds=self._standby_retry_seconds,
                         stand_by_first=self._stand_by_first)
                told_standby = True
            first = False
            if await self._pause(jittered(self._standby_retry_seconds)):
                return
        log.info("relay.leader")
        self._leader = True
        session.ready()
        try:
            await self._lead(session)
        finally:
            self._leader = False
            await self._broker.close()

    async def _lead(self, session: Session) -> None:
        """Relay batches while the lock session lives; return on stop."""
        backoff = Backoff(first=0.25, maximum=2.0)
        idle_most = self._settings.relay_poll_seconds
        wait = busy = min(BUSY_POLL_SECONDS, idle_most)
        while not self._stopping.is_set() and not session.lost.is_set():
            try:
                relayed, full = await self._relay_once()
            except BrokerUnavailable as exc:
                self.broker_failures += 1
                RELAY_FAILURES.labels("broker").inc()
                await self._broker.close()
                delay = backoff.next()
                cause = f"{exc}; {self._describe(exc.__cause__)}" if exc.__cause__ else str(exc)
                BROKER.failed(None, component="relay", broker=address(self._settings.amqp_url), error=cause,
                              retry_in=round(delay, 2))
                await self._pause(delay)
                continue
            except UNAVAILABLE_ERRORS as exc:
                RELAY_FAILURES.labels("database").inc()
                delay = backoff.next()
                DATABASE.failed(exc, component="relay", retry_in=round(delay, 2))
                await self._pause(delay)
                continue
            except Exception as exc:  # noqa: BLE001 - a background loop must outlive surprises
                delay = backoff.next()
                log.error("relay.batch_failed", error=self._describe(exc), retry_in=round(delay, 2))
                await self._pause(delay)
                continue
            backoff.reset()
            BROKER.recovered(component="relay")
            DATABASE.recovered(component="relay")
            if not full:
                # Woken at once by this process's commits; events of other processes are found by polling,
                # briefly while they flow (small batches, no burst that holds PostgreSQL's core for tens of
                # ms), backing off to TPX_RELAY_POLL_SECONDS when idle.
                wait = busy if relayed else min(wait * 2, idle_most)
                await self._signal.wait(wait)

    # -- one batch ----------------------------------------------------------------

    async def _relay_once(self) -> tuple[int, bool]:
        """Sequence, publish and mark one batch: how many events it confirmed, and whether a batch was
        full (more may wait)."""
        try:
            await self._broker.ensure()
        except BROKER_ERRORS as exc:
            raise BrokerUnavailable("cannot open a channel") from exc
        if len(self._bodies) > 10 * self._batch_size:
            self._bodies.clear()  # rows another leader published; they are rebuilt if ever needed
        assigned = await outbox.assign_sequences(self._pool, self._batch_size, self._link)
        rows = await outbox.unpublished(self._pool, self._batch_size)
        if not rows:
            return 0, assigned >= self._batch_size
        try:
            confirmed, failure = await self._broker.publish(rows, self._bodies)
        except BROKER_ERRORS as exc:
            raise BrokerUnavailable("publishing failed") from exc
        if confirmed:
            done = rows[:confirmed]
            await outbox.mark_published(self._pool, done[-1]["sequence"])
            self.published_total += confirmed
            EVENTS_PUBLISHED.inc(confirmed)
            self.last_published_sequence = done[-1]["sequence"]
        if failure is not None:
            raise BrokerUnavailable(f"{confirmed} of {len(rows)} events confirmed") from failure
        return confirmed, assigned >= self._batch_size or len(rows) >= self._batch_size

    def _link(self, previous: bytes, sequence: int, row: asyncpg.Record) -> bytes:
        """The row's chain link; its encoded event is kept for the publish step, so it is encoded once."""
        canonical = encode(to_cloudevent({**dict(row), "sequence": sequence}))
        link = chain.link_encoded(previous, canonical)
        # "chainhash" sorts first among the attributes, so the published body is the
        # canonical bytes with that member put in front.
        self._bodies[str(row["event_id"])] = b'{"chainhash":"' + link.hex().encode() + b'",' + canonical[1:]
        return link

    # -- helpers ------------------------------------------------------------------

    async def _pause(self, seconds: float) -> bool:
        """Sleep, but wake at once on stop; True when stopping."""
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except asyncio.TimeoutError:
            pass
        return self._stopping.is_set()

    def _describe(self, exc: BaseException | None) -> str:
        return describe(exc, self._settings.amqp_url, self._settings.database_url)
