"""Keeping every enabled issuer's JWKS fresh in Postgres, once per cluster.

Two things start a refresh:

- the schedule: an issuer is due when `next_refresh_at` is NULL or past (or an
  exchange recorded a `refresh_requested_at` newer than the last attempt);
  `next_refresh_at` follows the JWKS `Cache-Control: max-age`, clamped to
  [300 s, 3600 s], after a success, and an exponential back-off with jitter
  after a failure;
- a request: an exchange that meets an unknown `kid` NOTIFYs `tpx_jwks_refresh`
  with the issuer id (`tpx.core.db.issuers.request_refresh`); every replica hears it.

Several replicas may run, so each fetch is claimed in Postgres first. A replica
takes a session advisory lock keyed on the issuer (held for the fetch, so
nobody else fetches that issuer meanwhile) and then must win a conditional
UPDATE that moves `refresh_attempted_at` forward only if the cooldown has
passed (and, for the schedule, only if the issuer is still due). Because the
UPDATE runs under the lock, it always sees the previous holder's committed
result: a flood of requests, or two replicas finding the same issuer due,
make one fetch per cooldown across the cluster. Losers do nothing.

A failed fetch, or one with no usable key, never touches the stored keys: the
last good set keeps serving (fail soft), `last_error` says what went wrong and
`consecutive_failures` counts. Staleness is judged by the exchange
(`keys_max_staleness_seconds`), which fails closed.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, Iterable

import asyncpg

from tpx.core.backoff import exponential
from tpx.core.config import Settings
from tpx.core.db import issuers as issuer_store
from tpx.core.db.listener import Listener
from tpx.core.db.outbox import add_events
from tpx.core.db.pool import UNAVAILABLE_ERRORS
from tpx.core.events import builders
from tpx.core.events.types import JWKS_REFRESHER_SOURCE
from tpx.core.jose import KeyRejected, parse_jwk, parse_jwks
from tpx.core.jose.strict_json import quote
from tpx.core.logging import get_logger
from tpx.core.metrics import JWKS_FETCHES, KEYS_ROTATED
from tpx.core.outages import DATABASE
from tpx.core.relay.signal import OutboxSignal

from tpx.jwks_refresher.fetch import FetchError, FetchResult, Resolver, fetch_jwks

log = get_logger("tpx.jwks_refresher")

PERIODIC = "periodic"
REQUEST = "request"

MIN_MAX_AGE_SECONDS = 300
MAX_MAX_AGE_SECONDS = 3600
FIRST_RETRY_SECONDS = 5.0
JITTER = 0.2
MAX_LAST_ERROR_CHARS = 500
# Scans are cheap but not free: at most one per second, at least one a minute
# (which also picks up issuers added while a NOTIFY was missed).
MIN_SCAN_SECONDS = 1.0
MAX_SCAN_SECONDS = 60.0
SCAN_BATCH = 100
MAX_PENDING_REQUESTS = 1000


def refresh_interval(max_age: int | None, default: int) -> int:
    """Seconds until the next scheduled refresh after a success."""
    if max_age is None:
        return default
    return max(MIN_MAX_AGE_SECONDS, min(MAX_MAX_AGE_SECONDS, max_age))


def retry_delay(failures_before: int, ceiling: float) -> float:
    """Back-off after a failure: 5 s doubling up to the refresh interval, +-20 % jitter."""
    return exponential(failures_before, first=FIRST_RETRY_SECONDS, maximum=ceiling, spread=JITTER)


class JwksRefresher:
    """Refreshes issuer key sets on schedule and on request; one instance per process.

    Counters for metrics: `fetches_total` (fetches started), `failures_total`
    (fetches that kept the old keys), `rotations_total` (key sets that changed),
    `requests_total` (refresh requests heard), `skipped_total` (refreshes another
    replica or the cooldown answered) and `scans_total` (schedule scans);
    `listener` follows the refresh requests and issuer changes (its `healthy`
    is set while requests can be heard, its `sessions` counts connections).

    `resolver` replaces DNS for the address checks (tests); `concurrency`
    bounds parallel fetches, each of which holds one pooled connection.
    """

    def __init__(
        self,
        settings: Settings,
        pool: asyncpg.Pool,
        signal: OutboxSignal | None = None,
        *,
        resolver: Resolver | None = None,
        concurrency: int = 4,
    ) -> None:
        self._settings = settings
        self._pool = pool
        self._signal = signal or OutboxSignal()
        self._resolver = resolver
        self._slots = asyncio.Semaphore(max(1, concurrency))
        self._deferred: set[uuid.UUID] = set()
        self._again: set[uuid.UUID] = set()
        self._pending: set[uuid.UUID] = set()
        self._tasks: dict[uuid.UUID, asyncio.Task[None]] = {}
        self._fetching: set[uuid.UUID] = set()
        self._wake = asyncio.Event()
        self._scan_wanted = True
        # Catching up after a reconnect is a scan: every issuer added, enabled or due meanwhile is found by it.
        self.listener = Listener(settings.database_url, {issuer_store.REFRESH_CHANNEL: self._on_request,
                                                         issuer_store.CHANGED_CHANNEL: self._on_issuers_changed},
                                 name="jwks-refresher", on_connect=self._catch_up)
        self.fetches_total = 0
        self.failures_total = 0
        self.rotations_total = 0
        self.requests_total = 0
        self.skipped_total = 0
        self.scans_total = 0

    @property
    def idle(self) -> bool:
        """No request waiting and no refresh in flight (tests wait for this)."""
        return not self._pending and not self._tasks

    # -- one issuer -------------------------------------------------------------------

    async def refresh_issuer(self, issuer_id: uuid.UUID | str, *, reason: str = REQUEST) -> bool:
        """Fetch and store the issuer's keys if this replica wins the claim; True if a fetch happened.

        `reason` is PERIODIC for the schedule (the issuer must still be due) or
        anything else for a request (only the cooldown applies).
        """
        issuer_id = issuer_id if isinstance(issuer_id, uuid.UUID) else uuid.UUID(str(issuer_id))
        async with self._pool.acquire() as conn:
            if not await issuer_store.try_lock_fetch(conn, issuer_id):
                self.skipped_total += 1
                if reason != PERIODIC:
                    await self._defer_request(conn, issuer_id)  # that fetch may predate the rotation
                return False  # another replica (or task) is fetching this issuer right now
            try:
                claim = await issuer_store.claim_fetch(conn, issuer_id,
                                                       float(self._settings.jwks_refresh_cooldown_seconds),
                                                       scheduled=reason == PERIODIC)
                if claim is None:
                    self.skipped_total += 1
                    if reason != PERIODIC:
                        await self._defer_request(conn, issuer_id)
                    return False
                self.fetches_total += 1
                await self._fetch_and_store(conn, issuer_id, claim, reason)
                return True
            finally:
                try:
                    await issuer_store.unlock_fetch(conn, issuer_id)
                except Exception:  # noqa: BLE001 - a broken session has released its locks anyway
                    pass

    async def _fetch_and_store(self, conn: asyncpg.Connection, issuer_id: uuid.UUID, claim: asyncpg.Record,
                               reason: str) -> None:
        url = claim["url"]
        try:
            result = await fetch_jwks(
                url,
                timeout=self._settings.jwks_fetch_timeout_seconds,
                allow_loopback=self._settings.insecure_loopback_issuers,
                jwks_hosts=claim["jwks_hosts"] or (),
                resolver=self._resolver,
            )
            keys, skipped = usable_keys(result)
        except FetchError as exc:
            await self._record_failure(conn, issuer_id, url, exc.message, claim["consecutive_failures"])
            return
        JWKS_FETCHES.labels(url, "ok").inc()
        if skipped:
            log.warning("jwks.keys_skipped", issuer=url, skipped=skipped)
        interval = refresh_interval(result.max_age, self._settings.jwks_refresh_seconds)
        async with conn.transaction():
            before, changed = await issuer_store.store_keys(conn, issuer_id, keys, jwks_uri=result.jwks_uri,
                                                            next_refresh_seconds=interval)
            if changed:
                await add_events(conn, [builders.issuer_keys_rotated(issuer_id, url, result.jwks_uri, before, keys,
                                                                     skipped)],
                                 source=JWKS_REFRESHER_SOURCE)
        if changed:
            KEYS_ROTATED.labels(url).inc()
            self.rotations_total += 1
            self._signal.notify()
        log.info("jwks.refreshed", issuer=url, reason=reason, keys=sorted(keys), changed=changed,
                 skipped=len(skipped), next_refresh_seconds=interval)

    async def _record_failure(self, conn: asyncpg.Connection, issuer_id: uuid.UUID, url: str, message: str,
                              failures_before: int) -> None:
        self.failures_total += 1
        JWKS_FETCHES.labels(url, "failed").inc()
        delay = retry_delay(failures_before, float(self._settings.jwks_refresh_seconds))
        await issuer_store.record_fetch_failure(conn, issuer_id, message[:MAX_LAST_ERROR_CHARS], delay)
        log.warning("jwks.refresh_failed", issuer=url, error=message, consecutive_failures=failures_before + 1,
                    retry_in=round(delay, 1))

    # -- the loop ---------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Refresh on schedule and on request until `stop` is set; finish in-flight fetches, then return."""
        loop = asyncio.get_running_loop()
        listener = asyncio.create_task(self.listener.run(), name="jwks-refresher-listen")
        stop_watch = asyncio.create_task(self._wake_on(stop), name="jwks-refresher-stop")
        next_scan = loop.time()
        last_scan = float("-inf")
        failures = 0
        try:
            while not stop.is_set():
                self._wake.clear()
                self._dispatch(self._take_requests(), REQUEST)
                now = loop.time()
                if self._scan_wanted and now >= last_scan + MIN_SCAN_SECONDS:
                    next_scan = min(next_scan, now)
                if now >= next_scan:
                    self._scan_wanted = False
                    last_scan = now
                    try:
                        delay = await self._scan()
                        failures = 0
                        DATABASE.recovered(component="jwks-refresher")
                    except Exception as exc:  # noqa: BLE001 - a background loop must outlive surprises
                        failures += 1
                        delay = retry_delay(failures - 1, MAX_SCAN_SECONDS)
                        self._log_loop_error("jwks.scan_failed", exc, delay)
                    next_scan = loop.time() + delay
                    continue  # requests may have arrived meanwhile
                timeout = next_scan - now
                if self._scan_wanted:
                    timeout = min(timeout, last_scan + MIN_SCAN_SECONDS - now)
                await self._sleep(max(timeout, 0.0))
        finally:
            stop_watch.cancel()
            listener.cancel()
            await asyncio.gather(stop_watch, listener, return_exceptions=True)
            await self._drain()

    def request(self, issuer_id: uuid.UUID) -> None:
        """Queue a refresh request for `issuer_id` (what a NOTIFY on tpx_jwks_refresh does)."""
        self.requests_total += 1
        self._queue(issuer_id)

    def _queue(self, issuer_id: uuid.UUID) -> None:
        if issuer_id in self._fetching:
            # The fetch in flight may have read the key set before the IdP rotated: ask again after it
            # (the cooldown then defers that second fetch, so floods still make one fetch per cooldown).
            self._again.add(issuer_id)
            return
        if issuer_id in self._pending or issuer_id in self._tasks:
            return  # coalesced: a refresh for it is already queued
        if len(self._pending) >= MAX_PENDING_REQUESTS:
            return
        self._pending.add(issuer_id)
        self._wake.set()

    async def _defer_request(self, conn: asyncpg.Connection, issuer_id: uuid.UUID) -> None:
        """A request that arrived inside the cooldown is answered when the cooldown ends, not dropped:
        the IdP may have rotated right after the last fetch. Still at most one fetch per cooldown."""
        if issuer_id in self._deferred:
            return
        remaining = await issuer_store.cooldown_remaining(conn, issuer_id,
                                                          float(self._settings.jwks_refresh_cooldown_seconds))
        if remaining is None:
            return
        self._deferred.add(issuer_id)

        def fire() -> None:
            self._deferred.discard(issuer_id)
            self._queue(issuer_id)

        asyncio.get_running_loop().call_later(max(0.0, remaining) + 0.01, fire)

    def _take_requests(self) -> list[uuid.UUID]:
        taken, self._pending = list(self._pending), set()
        return taken

    async def _scan(self) -> float:
        """Start a periodic refresh for every due issuer; return seconds until the next scan."""
        self.scans_total += 1
        async with self._pool.acquire() as conn:
            due = await issuer_store.due(conn, SCAN_BATCH)
            self._dispatch(due, PERIODIC)
            if due:
                return MIN_SCAN_SECONDS  # look again soon: some may have been claimed by another replica
            seconds = await issuer_store.seconds_to_next_refresh(conn)
        if seconds is None:
            return MAX_SCAN_SECONDS
        return min(max(seconds, MIN_SCAN_SECONDS), MAX_SCAN_SECONDS)

    def _dispatch(self, issuer_ids: Iterable[uuid.UUID], reason: str) -> None:
        for issuer_id in issuer_ids:
            if issuer_id not in self._tasks:
                self._tasks[issuer_id] = asyncio.create_task(self._refresh_task(issuer_id, reason),
                                                             name=f"jwks-refresh-{issuer_id}")

    async def _refresh_task(self, issuer_id: uuid.UUID, reason: str) -> None:
        try:
            async with self._slots:
                self._fetching.add(issuer_id)
                try:
                    await self.refresh_issuer(issuer_id, reason=reason)
                except Exception as exc:  # noqa: BLE001 - one issuer's trouble must not stop the others
                    self._log_loop_error("jwks.refresh_error", exc, None, issuer_id=str(issuer_id))
                finally:
                    self._fetching.discard(issuer_id)
        finally:
            self._tasks.pop(issuer_id, None)
            self._wake.set()
            if issuer_id in self._again:
                self._again.discard(issuer_id)
                self._queue(issuer_id)

    async def _drain(self) -> None:
        """On stop: drop refreshes still waiting for a slot, let running ones finish."""
        for issuer_id, task in list(self._tasks.items()):
            if issuer_id not in self._fetching:
                task.cancel()
        tasks = list(self._tasks.values())
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._pending.clear()

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._wake.wait(), seconds)
        except asyncio.TimeoutError:
            pass

    async def _wake_on(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._wake.set()

    # -- requests from exchange replicas ------------------------------------------------

    async def _catch_up(self) -> None:
        """What a reconnected listener may have missed: issuer changes, found by the next scan."""
        self._on_issuers_changed()

    def _on_request(self, payload: str) -> None:
        try:
            issuer_id = uuid.UUID(payload)
        except (ValueError, TypeError, AttributeError):
            log.debug("jwks.request_ignored", reason="the payload is not an issuer id")
            return
        self.request(issuer_id)

    def _on_issuers_changed(self, _payload: str = "") -> None:
        """Issuers were added, enabled or changed: look for due ones soon (at most once a second)."""
        self._scan_wanted = True
        self._wake.set()

    def _log_loop_error(self, event: str, exc: BaseException, retry_in: float | None, **fields: Any) -> None:
        text = f"{type(exc).__name__}: {exc}"[:300]
        if retry_in is not None:
            fields["retry_in"] = round(retry_in, 2)
        if isinstance(exc, UNAVAILABLE_ERRORS):
            DATABASE.failed(exc, component=event, **fields)
        else:
            log.error(event, error=text, exc_info=exc, **fields)


def usable_keys(result: FetchResult) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """The JWKS's usable keys as stored JWKs by kid, and one reason per skipped key.

    A JWKS refused as a whole, or one without a single usable key, is a
    failure: the last good set stays.
    """
    try:
        good, skipped = parse_jwks(result.document)
    except KeyRejected as exc:
        raise FetchError(f"the JWKS at {quote(result.jwks_uri)} is refused: {exc.reason}") from None
    if not good:
        reasons = "; ".join(skipped) if skipped else "it has no keys"
        raise FetchError(f"the JWKS at {quote(result.jwks_uri)} has no usable key ({reasons})"[:MAX_LAST_ERROR_CHARS])
    # The stored JWK for a kid is the first entry with that kid that parses, as parse_jwks chose it.
    stored: dict[str, dict[str, Any]] = {}
    for entry in result.document["keys"]:
        kid = entry.get("kid") if isinstance(entry, dict) else None
        if kid in good and kid not in stored:
            try:
                parse_jwk(entry)
            except KeyRejected:
                continue
            stored[kid] = entry
    return stored, skipped
