"""The revoker's periodic sweep: announce expiries, purge what nobody needs, resume stalled rules.

Every step works in batches, each its own short transaction that takes rows with
`FOR UPDATE SKIP LOCKED`, so a sweep never holds locks an exchange waits on for
long, and several revoker replicas split the work instead of repeating it.

- expire: live tokens past `expires_at` get `expired_at` and one `token.expired`
  event each, in the same transaction;
- purge `used_jtis` past their `expires_at` (already exp + leeway: such an ID
  token no longer verifies, so forgetting its jti cannot enable a replay);
- purge tokens, done revocation rules and published outbox rows older than
  `token_retention_seconds` (the outbox row with the highest sequence always
  stays: the relay numbers new events after it);
- resume pending rules older than `stale_rule_seconds`, whose message may have
  been lost or dead-lettered, so no rule stays pending for ever.
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable

import asyncpg

from tpx.core.backoff import Backoff, jittered
from tpx.core.config import Settings
from tpx.core.db import outbox
from tpx.core.db import revocations as revocation_store
from tpx.core.db import tokens as token_store
from tpx.core.db.pool import UNAVAILABLE_ERRORS
from tpx.core.events import builders
from tpx.core.events.types import REVOKER_SOURCE
from tpx.core.logging import get_logger
from tpx.core.metrics import PURGED, TOKENS_EXPIRED
from tpx.core.outages import DATABASE
from tpx.core.relay.signal import OutboxSignal

from tpx.revoker.consumer import RuleApplier, RuleBusy

log = get_logger("tpx.revoker.sweeper")

BATCH_SIZE = 1000
STALE_RULE_SECONDS = 120.0
STALE_RULES_PER_SWEEP = 10
STALE_RULE_BATCHES_PER_SWEEP = 20


class Sweeper:
    """Runs `sweep_once()` every `settings.revoker_sweep_seconds` until `stop()`.

    Counters for metrics: `totals` (per step, since start), `sweeps`, `failures`.
    """

    def __init__(self, settings: Settings, pool: asyncpg.Pool, signal: OutboxSignal, applier: RuleApplier, *,
                 stopping: asyncio.Event | None = None, batch_size: int = BATCH_SIZE,
                 stale_rule_seconds: float = STALE_RULE_SECONDS) -> None:
        self._settings = settings
        self._pool = pool
        self._signal = signal
        self._applier = applier
        self._stopping = stopping or asyncio.Event()
        self._batch_size = batch_size
        self._stale_rule_seconds = stale_rule_seconds
        self.totals: dict[str, int] = {}
        self.sweeps = 0
        self.failures = 0

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        backoff = Backoff(first=0.5, maximum=max(self._settings.revoker_sweep_seconds, 1.0))
        while not self._stopping.is_set():
            try:
                await self.sweep_once()
                backoff.reset()
                DATABASE.recovered(component="sweeper")
                wait = jittered(self._settings.revoker_sweep_seconds, 0.1)
            except Exception as exc:  # noqa: BLE001 - a background loop must outlive surprises
                self.failures += 1
                wait = backoff.next()
                if isinstance(exc, UNAVAILABLE_ERRORS):
                    DATABASE.failed(exc, component="sweeper", retry_in=round(wait, 2))
                else:
                    log.error("sweeper.failed", error=f"{type(exc).__name__}: {exc}"[:300], retry_in=round(wait, 2))
            await self._pause(wait)

    async def sweep_once(self) -> dict[str, int]:
        """One full sweep; returns how many rows each step handled."""
        retention = float(self._settings.token_retention_seconds)
        counts = {
            "tokens_expired": await self._batches(self._expire, announces=True),
            "used_jtis_purged": await self._batches(lambda conn: token_store.purge_used_jtis(conn, self._batch_size)),
            "tokens_purged": await self._batches(
                lambda conn: token_store.purge_old(conn, self._batch_size, retention)),
            "revocations_purged": await self._batches(
                lambda conn: revocation_store.purge_done(conn, self._batch_size, retention)),
            "outbox_purged": await self._batches(
                lambda conn: outbox.purge_published(conn, self._batch_size, retention)),
            "stale_revocations_resumed": await self._resume_stale_rules(),
        }
        self.sweeps += 1
        for name, count in counts.items():
            self.totals[name] = self.totals.get(name, 0) + count
        TOKENS_EXPIRED.inc(counts.get("tokens_expired", 0))
        for name, count in counts.items():
            if name.endswith("_purged"):
                PURGED.labels(name.removesuffix("_purged")).inc(count)
        if any(counts.values()):
            log.info("sweeper.swept", **counts)
        return counts

    async def _batches(self, step: Callable[[asyncpg.Connection], Awaitable[int]], *, announces: bool = False) -> int:
        """Run `step` in its own transaction per batch until a batch is not full (or stopping)."""
        total = 0
        while True:
            async with self._pool.acquire() as conn:
                async with conn.transaction():
                    count = await step(conn)
            if announces and count:
                self._signal.notify()  # committed: wake the relay for the events
            total += count
            if count < self._batch_size or self._stopping.is_set():
                return total

    async def _expire(self, conn: asyncpg.Connection) -> int:
        rows = await token_store.mark_expired(conn, self._batch_size)
        await outbox.add_events(conn, [builders.token_expired(row) for row in rows], source=REVOKER_SOURCE)
        return len(rows)

    async def _resume_stale_rules(self) -> int:
        """Work on pending rules nobody finished; the rule lock keeps this safe beside the consumer."""
        rule_ids = await revocation_store.stale_pending(self._pool, self._stale_rule_seconds, STALE_RULES_PER_SWEEP)
        resumed = 0
        for rule_id in rule_ids:
            if self._stopping.is_set():
                break
            try:
                outcome = await self._applier.run(rule_id, max_batches=STALE_RULE_BATCHES_PER_SWEEP)
            except RuleBusy as exc:
                log.info("sweeper.rule_busy", revocation_id=str(rule_id), error=str(exc))
                continue
            resumed += 1
            log.info("sweeper.rule_resumed", revocation_id=str(rule_id), outcome=outcome.value)
        return resumed

    async def _pause(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except asyncio.TimeoutError:
            pass
