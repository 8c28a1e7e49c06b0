"""The revoker's work queue: finish pending revocations and publisher deletions, at least once.

Topology, declared idempotently on every connect:
- `<prefix>.events` (topic, durable; the relay's exchange) -> `<prefix>.revoker`, a durable
  quorum queue bound to `revocation.requested` and `publisher.deleted`;
- `<prefix>.revoker` dead-letters to `<prefix>.dlx` (direct, durable) with its own name as
  routing key, bound to `<prefix>.revoker.dead`; other workers can share the DLX.

A message is acked only once its work is committed. Poison (not JSON, wrong shape)
is rejected without requeue, so it dead-letters at once. Anything else that fails
(database down, a bug) is requeued after a back-off that grows with the quorum
queue's `x-delivery-count`, and dead-letters after `DELIVERY_LIMIT` attempts; the
rule it carried stays pending (so its tokens stay inactive) and the sweeper
resumes it. Every step is idempotent, so redeliveries and duplicates are harmless.
"""

from __future__ import annotations

import asyncio
import enum
import json
import uuid
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import aio_pika
import aiormq
import asyncpg
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

from tpx.core.backoff import Backoff, exponential
from tpx.core.config import Settings
from tpx.core.db import publishers as publisher_store
from tpx.core.db import revocations as revocation_store
from tpx.core.db.revocations import Progress
from tpx.core.events import types as event_types
from tpx.core.events.types import REVOKER_SOURCE
from tpx.core.logging import get_logger
from tpx.core.metrics import REVOCATION_LATENCY, TOKENS_REVOKED
from tpx.core.outages import BROKER
from tpx.core.relay.signal import OutboxSignal
from tpx.core.revocations import Selector

log = get_logger("tpx.revoker.consumer")

# Failures of the broker side that a reconnect may cure.
BROKER_ERRORS: tuple[type[BaseException], ...] = (
    aiormq.exceptions.AMQPError,
    aiormq.exceptions.ChannelInvalidStateError,
    OSError,
    asyncio.TimeoutError,
)

PREFETCH = 10
CONCURRENCY = 4  # messages worked on at once; the rest of the prefetch waits its turn
DELIVERY_LIMIT = 5
ROUTING_KEYS = (event_types.routing_key(event_types.REVOCATION_REQUESTED),
                event_types.routing_key(event_types.PUBLISHER_DELETED))
MAX_BODY_BYTES = 64 * 1024
_MAX_STALLS = 200  # consecutive empty batches while rows are held by others before giving the message back


@dataclass(frozen=True)
class Topology:
    events: str
    queue: str
    dlx: str
    dead: str

    @classmethod
    def of(cls, settings: Settings) -> "Topology":
        prefix = settings.amqp_prefix
        return cls(events=settings.events_exchange, queue=f"{prefix}.revoker", dlx=f"{prefix}.dlx",
                   dead=f"{prefix}.revoker.dead")


async def declare(channel: AbstractChannel, settings: Settings) -> AbstractQueue:
    """Declare (idempotently) everything the revoker consumes from; return the work queue."""
    names = Topology.of(settings)
    events = await channel.declare_exchange(names.events, aio_pika.ExchangeType.TOPIC, durable=True)
    dlx = await channel.declare_exchange(names.dlx, aio_pika.ExchangeType.DIRECT, durable=True)
    dead = await channel.declare_queue(names.dead, durable=True, arguments={"x-queue-type": "quorum"})
    await dead.bind(dlx, routing_key=names.queue)
    queue = await channel.declare_queue(names.queue, durable=True, arguments={
        "x-queue-type": "quorum",
        "x-delivery-limit": DELIVERY_LIMIT,
        "x-dead-letter-exchange": names.dlx,
        "x-dead-letter-routing-key": names.queue,
    })
    for key in ROUTING_KEYS:
        await queue.bind(events, routing_key=key)
    return queue


# --- messages ------------------------------------------------------------------------------------------------

class Poison(Exception):
    """A message that can never be handled, however often it is delivered."""


@dataclass(frozen=True)
class Job:
    kind: str  # "revocation" (finish a rule) or "publisher" (a deleted publisher's tokens)
    target: uuid.UUID
    actor: str | None
    event_id: str | None


def _uuid(value: Any, what: str) -> uuid.UUID:
    try:
        if not isinstance(value, str):
            raise ValueError
        return uuid.UUID(value)
    except ValueError:
        raise Poison(f"{what} is not a UUID") from None


def parse(body: bytes) -> Job:
    """A CloudEvent (structured JSON mode) as a job; Poison when it cannot be one."""
    if len(body) > MAX_BODY_BYTES:
        raise Poison(f"the body is {len(body)} bytes, more than any tpx event")
    try:
        event = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise Poison("the body is not UTF-8 JSON") from None
    if not isinstance(event, dict) or not isinstance(event.get("data"), dict):
        raise Poison("the body is not a CloudEvent with a data object")
    data = event["data"]
    event_id = event.get("id") if isinstance(event.get("id"), str) else None
    actor = data.get("actor") if isinstance(data.get("actor"), str) else None
    if event.get("type") == event_types.REVOCATION_REQUESTED:
        return Job("revocation", _uuid(data.get("revocation_id"), "data.revocation_id"), actor, event_id)
    if event.get("type") == event_types.PUBLISHER_DELETED:
        return Job("publisher", _uuid(data.get("target", event.get("subject")), "data.target"), actor, event_id)
    raise Poison(f"the event type {str(event.get('type'))[:100]!r} is not one the revoker handles")


# --- applying rules ------------------------------------------------------------------------------------------

class Outcome(enum.Enum):
    DONE = "done"  # the rule is done (now or before)
    MISSING = "missing"  # no such rule
    INTERRUPTED = "interrupted"  # stopping, or the batch budget is spent; the rule stays pending


class RuleBusy(Exception):
    """Matching rows stayed locked by other transactions; try again later."""


BatchHook = Callable[[Progress], Awaitable[None] | None]


class RuleApplier:
    """Applies pending rules batch by batch, each batch its own short transaction with its events.

    Appliers of one rule take turns on the rule's row lock, so the revoker, its
    other replicas and the sweeper may all work on the same rule safely.
    `batch_size=None` uses `tpx.core.db.revocations.BATCH_SIZE`.
    """

    def __init__(self, pool: asyncpg.Pool, signal: OutboxSignal, *, stopping: asyncio.Event,
                 batch_size: int | None = None, on_batch: BatchHook | None = None) -> None:
        self._pool = pool
        self._signal = signal
        self._stopping = stopping
        self._batch_size = batch_size
        self._on_batch = on_batch
        self.batches = 0
        self.tokens_revoked = 0
        self.rules_completed = 0

    @property
    def batch_size(self) -> int:
        return self._batch_size or revocation_store.BATCH_SIZE

    async def run(self, rule_id: uuid.UUID, *, max_batches: int | None = None) -> Outcome:
        stalls = 0
        batches = 0
        while True:
            if self._stopping.is_set() or (max_batches is not None and batches >= max_batches):
                return Outcome.INTERRUPTED
            progress = await self._batch(rule_id)
            if progress is None:
                return Outcome.MISSING
            batches += 1
            if progress.done:
                return Outcome.DONE
            if progress.revoked:
                stalls = 0
                continue
            stalls += 1  # rows it matches are held by other transactions: they commit or roll back soon
            if stalls >= _MAX_STALLS:
                raise RuleBusy(f"rule {rule_id} matched only rows locked by other transactions")
            await self._pause(min(0.01 * stalls, 0.5))

    async def _batch(self, rule_id: uuid.UUID) -> Progress | None:
        async with self._pool.acquire() as conn:
            async with conn.transaction():
                rule = await revocation_store.lock(conn, rule_id)
                if rule is None:
                    return None
                was_done = rule.done
                progress = await revocation_store.apply_batch(conn, rule, batch_size=self.batch_size,
                                                              source=REVOKER_SOURCE)
        if was_done:
            return progress
        self.batches += 1
        self.tokens_revoked += progress.revoked
        TOKENS_REVOKED.labels("revocation").inc(progress.revoked)
        if progress.done:
            self.rules_completed += 1
            if progress.rule.completed_at is not None:
                REVOCATION_LATENCY.observe(
                    max(0.0, (progress.rule.completed_at - progress.rule.created_at).total_seconds()))
            log.info("revocation.completed", revocation_id=str(rule_id), kind=progress.rule.kind,
                     revoked=progress.rule.revoked)
        self._signal.notify()
        if self._on_batch is not None:
            result = self._on_batch(progress)
            if asyncio.iscoroutine(result):
                await result
        return progress

    async def publisher_rules(self, publisher_id: uuid.UUID, actor: str | None) -> list[uuid.UUID]:
        """The pending rules revoking a deleted publisher's tokens; one is created if none exists.

        A publisher that still exists is left alone: a deletion message for it is
        stale or misrouted, and revoking on its word would be wrong.
        """
        async with self._pool.acquire() as conn:
            async with conn.transaction():
                await revocation_store.lock_publisher_deletion(conn, publisher_id)
                if await publisher_store.exists(conn, publisher_id):
                    log.warning("revoker.publisher_still_exists", publisher_id=str(publisher_id))
                    return []
                rules = await revocation_store.for_publisher(conn, publisher_id)
                if not rules:
                    rules = [await revocation_store.insert(conn, Selector("publisher", publisher_id=publisher_id),
                                                           reason="publisher deleted", actor=actor)]
                    log.info("revoker.publisher_rule_created", publisher_id=str(publisher_id),
                             revocation_id=str(rules[0].id))
        return [rule.id for rule in rules if not rule.done]

    async def _pause(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except asyncio.TimeoutError:
            pass


# --- the consumer --------------------------------------------------------------------------------------------

class _ConnectionLost(Exception):
    pass


class RevocationConsumer:
    """Consumes `<prefix>.revoker` until `stop()`; reconnects with back-off after broker failures.

    Counters for metrics: `received`, `acked`, `rejected` (poison), `requeued`
    (failures and stops), `broker_failures`; `consuming` tells readiness.
    """

    def __init__(self, settings: Settings, applier: RuleApplier, *, stopping: asyncio.Event,
                 prefetch: int = PREFETCH, concurrency: int = CONCURRENCY, retry_base_seconds: float = 0.5,
                 retry_max_seconds: float = 30.0, connect_timeout: float = 5.0,
                 drain_timeout: float = 30.0) -> None:
        self._settings = settings
        self._applier = applier
        self._stopping = stopping
        self._prefetch = prefetch
        self._slots = asyncio.Semaphore(concurrency)
        self._retry_base = retry_base_seconds
        self._retry_max = retry_max_seconds
        self._connect_timeout = connect_timeout
        self._drain_timeout = drain_timeout
        self._inflight: set[asyncio.Task[Any]] = set()
        self.declared = asyncio.Event()  # the work queue exists and is bound: events published now reach it
        self.consuming = False
        self.received = 0
        self.acked = 0
        self.rejected = 0
        self.requeued = 0
        self.broker_failures = 0

    async def run(self) -> None:
        backoff = Backoff(first=0.25, maximum=2.0)
        while not self._stopping.is_set():
            try:
                await self._session()
                backoff.reset()
            except (*BROKER_ERRORS, _ConnectionLost) as exc:
                self.broker_failures += 1
                wait = backoff.next()
                BROKER.failed(exc, component="revoker-consumer", retry_in=round(wait, 2))
                await self._pause(wait)
            except Exception as exc:  # noqa: BLE001 - a background loop must outlive surprises
                wait = backoff.next()
                log.error("revoker.consumer_failed", error=f"{type(exc).__name__}: {exc}"[:300], retry_in=round(wait, 2))
                await self._pause(wait)

    async def _session(self) -> None:
        """One connection: consume until stopping (then drain) or until the connection is lost."""
        connection = await aio_pika.connect(self._settings.amqp_url, timeout=self._connect_timeout,
                                            client_properties={"connection_name": "tpx revoker"})
        lost = asyncio.Event()
        try:
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=self._prefetch)
            queue = await declare(channel, self._settings)
            self.declared.set()
            connection.close_callbacks.add(lambda *_: lost.set())
            channel.close_callbacks.add(lambda *_: lost.set())
            tag = await queue.consume(self._on_message)
            self.consuming = True
            BROKER.recovered(component="revoker-consumer")
            log.info("revoker.consuming", queue=queue.name, prefetch=self._prefetch)
            await _first_of(self._stopping.wait(), lost.wait())
            self.consuming = False
            if not lost.is_set():
                try:  # no new deliveries; what was delivered is finished (or given back) below
                    await queue.cancel(tag, timeout=self._connect_timeout)
                except BROKER_ERRORS:
                    pass
            await self._drain()
            if not self._stopping.is_set():
                raise _ConnectionLost("the broker connection closed")
        finally:
            self.consuming = False
            try:
                await asyncio.wait_for(connection.close(), 5)
            except Exception:  # noqa: BLE001 - a broken connection is gone either way
                pass

    async def _drain(self) -> None:
        """Let in-flight handlers finish their batch and settle their message."""
        if not self._inflight:
            return
        _, pending = await asyncio.wait(set(self._inflight), timeout=self._drain_timeout)
        if pending:
            log.warning("revoker.drain_timeout", unfinished=len(pending))
            for task in pending:
                task.cancel()
            await asyncio.wait(pending)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._inflight.add(task)
        self.received += 1
        try:
            await self._process(message)
        finally:
            self._inflight.discard(task)

    async def _process(self, message: AbstractIncomingMessage) -> None:
        try:
            job = parse(message.body)
        except Poison as exc:
            self.rejected += 1
            log.warning("revoker.poison_message", reason=str(exc), message_id=message.message_id,
                        routing_key=message.routing_key)
            await _settle(message.reject(requeue=False))
            return
        async with self._slots:
            if self._stopping.is_set():  # not started: give it back untouched
                self.requeued += 1
                await _settle(message.nack(requeue=True))
                return
            try:
                finished = await self._work(job)
            except Exception as exc:  # noqa: BLE001 - transient or not, the delivery limit decides
                self.requeued += 1
                attempts = _delivery_count(message)
                wait = exponential(attempts, first=self._retry_base, maximum=self._retry_max, spread=0.5)
                log.warning("revoker.job_failed", job=job.kind, target=str(job.target), attempt=attempts + 1,
                            error=f"{type(exc).__name__}: {exc}"[:300], retry_in=round(wait, 2))
                await self._pause(wait)
                await _settle(message.nack(requeue=True))
                return
        if finished:
            self.acked += 1
            await _settle(message.ack())
        else:
            self.requeued += 1
            await _settle(message.nack(requeue=True))

    async def _work(self, job: Job) -> bool:
        """Do the job; False when it was interrupted (stopping) and must be given back."""
        if job.kind == "revocation":
            rule_ids = [job.target]
        else:
            rule_ids = await self._applier.publisher_rules(job.target, job.actor)
        for rule_id in rule_ids:
            outcome = await self._applier.run(rule_id)
            if outcome is Outcome.MISSING:
                log.warning("revoker.unknown_revocation", revocation_id=str(rule_id), event_id=job.event_id)
            elif outcome is Outcome.INTERRUPTED:
                return False
        return True

    async def _pause(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except asyncio.TimeoutError:
            pass


def _delivery_count(message: AbstractIncomingMessage) -> int:
    value = (message.headers or {}).get("x-delivery-count", 0)
    return value if isinstance(value, int) and value >= 0 else 0


async def _settle(operation: Awaitable[Any]) -> None:
    """Ack, nack or reject; if the channel is gone the broker redelivers, which is harmless."""
    try:
        await operation
    except Exception as exc:  # noqa: BLE001
        log.info("revoker.settle_failed", error=f"{type(exc).__name__}: {exc}"[:200])


async def _first_of(*waits: Awaitable[Any]) -> None:
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
