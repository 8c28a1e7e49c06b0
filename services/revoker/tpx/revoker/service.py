"""The revoker service: work queue consumer, periodic sweeper and outbox relay in one process.

`serve(settings, stop)` runs until `stop` is set, then drains: the consumer stops
taking deliveries, lets in-flight work finish its current batch and acks only
what is done (the rest goes back to the queue); the sweeper finishes its batch;
the relay finishes the batch it is publishing. A component that dies makes the
whole service stop and raise, so the orchestrator restarts it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from tpx.core import build, metrics
from tpx.core.config import Settings
from tpx.core.db.migrate import check_schema
from tpx.core.db.pool import create_pool, ping
from tpx.core.logging import get_logger
from tpx.core.relay.backlog import sample_forever
from tpx.core.relay.relay import OutboxRelay
from tpx.core.relay.signal import OutboxSignal
from tpx.core.serving.ops import bind_ops_socket, serve_ops

from tpx.revoker.consumer import PREFETCH, BatchHook, RevocationConsumer, RuleApplier
from tpx.revoker.queue_depth import sample_forever_queue_depths
from tpx.revoker.sweeper import STALE_RULE_SECONDS, Sweeper

log = get_logger("tpx.revoker")

STOP_TIMEOUT = 30.0


class Revoker:
    """The components of one revoker process; exposed so tests and metrics can read their counters."""

    def __init__(self, settings: Settings, *, batch_size: int | None = None, prefetch: int = PREFETCH,
                 retry_base_seconds: float = 0.5, stale_rule_seconds: float = STALE_RULE_SECONDS,
                 on_batch: BatchHook | None = None) -> None:
        self.settings = settings
        self._batch_size = batch_size
        self._prefetch = prefetch
        self._retry_base_seconds = retry_base_seconds
        self._stale_rule_seconds = stale_rule_seconds
        self._on_batch = on_batch
        self.stopping = asyncio.Event()
        self.started = asyncio.Event()
        self.applier: RuleApplier | None = None
        self.consumer: RevocationConsumer | None = None
        self.sweeper: Sweeper | None = None
        self.relay: OutboxRelay | None = None

    async def run(self, stop: asyncio.Event) -> None:
        settings = self.settings
        ops_socket = bind_ops_socket(settings)
        pool = await create_pool(settings)
        try:
            async with pool.acquire() as conn:
                await check_schema(conn)
            signal = OutboxSignal()
            self.applier = RuleApplier(pool, signal, stopping=self.stopping, batch_size=self._batch_size,
                                       on_batch=self._on_batch)
            self.consumer = RevocationConsumer(settings, self.applier, stopping=self.stopping, prefetch=self._prefetch,
                                               retry_base_seconds=self._retry_base_seconds)
            self.sweeper = Sweeper(settings, pool, signal, self.applier, stopping=self.stopping,
                                   stale_rule_seconds=self._stale_rule_seconds)
            self.relay = OutboxRelay(settings, pool, signal)
            tasks = {
                asyncio.create_task(self._relay_when_declared(), name="revoker-relay"),
                asyncio.create_task(self.consumer.run(), name="revoker-consumer"),
                asyncio.create_task(self.sweeper.run(), name="revoker-sweeper"),
            }
            metrics.POOLS.add("revoker", pool)
            metrics.BUILD.labels("revoker", build.version()).set(1)
            ops = asyncio.create_task(serve_ops(settings, stop, self._readiness(pool), self.stopping.is_set, ops_socket),
                                      name="revoker-ops")
            depth = asyncio.create_task(sample_forever_queue_depths(settings), name="revoker-queue-depth")
            backlog = asyncio.create_task(sample_forever(pool), name="revoker-outbox-sampler")
            log.info("revoker.started", prefix=settings.amqp_prefix, sweep_seconds=settings.revoker_sweep_seconds)
            self.started.set()
            died = await self._until_stopped(stop, tasks)
            await self._shutdown(tasks)
            for helper in (depth, backlog):
                helper.cancel()
            await asyncio.gather(ops, depth, backlog, return_exceptions=True)
            metrics.POOLS.remove("revoker", pool)
            if died is not None:
                raise RuntimeError(f"the revoker's {died.get_name()} stopped unexpectedly") from _exception(died)
        finally:
            await pool.close()

    def _readiness(self, pool):
        async def readiness() -> tuple[bool, dict]:
            reasons = []
            if not await ping(pool):
                reasons.append("the database is unreachable")
            if self.consumer is None or not self.consumer.consuming:
                reasons.append("not consuming revocation work (is RabbitMQ reachable?)")
            return not reasons, {"reasons": reasons}
        return readiness

    async def _relay_when_declared(self) -> None:
        """Relay only once the work queue is bound, so no revocation event is published to nowhere."""
        assert self.consumer is not None and self.relay is not None
        await self.consumer.declared.wait()
        await self.relay.run()

    async def _until_stopped(self, stop: asyncio.Event, tasks: set[asyncio.Task[Any]]) -> asyncio.Task[Any] | None:
        """Wait for `stop`; return a component task that ended first (which only a bug does)."""
        waiter = asyncio.create_task(stop.wait())
        try:
            done, _ = await asyncio.wait({waiter, *tasks}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        died = next((task for task in done if task is not waiter), None)
        if died is not None:
            log.error("revoker.component_died", component=died.get_name(), error=repr(_exception(died))[:300])
        return died

    async def _shutdown(self, tasks: set[asyncio.Task[Any]]) -> None:
        log.info("revoker.stopping")
        self.stopping.set()  # the consumer cancels its subscription and drains; the sweeper ends its batch
        assert self.relay is not None
        workers = {t for t in tasks if t.get_name() != "revoker-relay"}
        _, pending = await asyncio.wait(workers, timeout=STOP_TIMEOUT)
        for task in pending:
            log.warning("revoker.stop_timeout", component=task.get_name())
            task.cancel()
        if pending:
            await asyncio.wait(pending)
        await self.relay.stop(timeout=10)  # last: it publishes what the drained work committed
        for task in tasks:
            task.cancel()  # only the relay, if it never started (the queue was never declared)
        await asyncio.gather(*tasks, return_exceptions=True)
        log.info("revoker.stopped")


def _exception(task: asyncio.Task[Any]) -> BaseException | None:
    return None if task.cancelled() else task.exception()


async def serve(settings: Settings, stop: asyncio.Event, **options: Any) -> None:
    """Run the revoker until `stop` is set (see `Revoker` for the options tests use)."""
    await Revoker(settings, **options).run(stop)
