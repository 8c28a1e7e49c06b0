"""The exchange's in-memory view of issuers and their verification keys.

Loaded from Postgres at start and reloaded whenever the issuer tables change
(a trigger NOTIFYs `tpx_issuers`, which the exchange's listener passes to
`changed()`), after every reconnect of that listener, and every
`TPX_KEYS_RELOAD_SECONDS` whatever the listener's state. A reload builds a
complete new snapshot and swaps it in with one assignment, so a request sees
either the old keys or the new ones, never a mix. Keys are parsed once per
distinct JWK, never per request.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Mapping

import asyncpg

from tpx.core.backoff import Backoff
from tpx.core.config import Settings
from tpx.core.db import issuers as issuer_store
from tpx.core.db.pool import UNAVAILABLE_ERRORS
from tpx.core.jose import IssuerPolicy, KeyRejected, VerificationKey, parse_jwk
from tpx.core.logging import get_logger
from tpx.core.outages import DATABASE

log = get_logger("tpx.exchange.keycache")
@dataclass(frozen=True)
class IssuerEntry:
    id: Any
    url: str
    kind: str
    policy: IssuerPolicy
    enabled: bool
    allowed_packages: tuple[str, ...] | None
    keys: Mapping[str, VerificationKey]
    keys_fetched_at: datetime | None
    last_error: str | None


@dataclass(frozen=True)
class Snapshot:
    issuers: Mapping[str, IssuerEntry] = field(default_factory=dict)
    version: int = 0

    def usable(self) -> list[IssuerEntry]:
        return [entry for entry in self.issuers.values() if entry.enabled and entry.keys]


class KeyCache:
    def __init__(self, settings: Settings, pool: asyncpg.Pool) -> None:
        self.settings = settings
        self.pool = pool
        self.snapshot = Snapshot()
        self._parsed: dict[tuple[Any, str, str], VerificationKey] = {}
        self._changed = asyncio.Condition()
        self._reload_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._refresh_requested: dict[Any, float] = {}

    def issuer(self, url: str) -> IssuerEntry | None:
        entry = self.snapshot.issuers.get(url)
        return entry if entry is not None and entry.enabled else None

    async def reload(self) -> Snapshot:
        """Read every issuer and key and swap the snapshot in; safe to call concurrently."""
        async with self._reload_lock:
            async with self.pool.acquire() as conn:
                issuers, keys = await issuer_store.load_all(conn)
            by_issuer: dict[Any, dict[str, VerificationKey]] = {row["id"]: {} for row in issuers}
            parsed: dict[tuple[Any, str, str], VerificationKey] = {}
            for row in keys:
                cache_key = (row["issuer_id"], row["kid"], json.dumps(row["jwk"], sort_keys=True))
                key = self._parsed.get(cache_key)
                if key is None:
                    try:
                        key = parse_jwk(row["jwk"])
                    except KeyRejected as exc:  # the refresher stores only usable keys: someone edited the table
                        log.warning("keycache.stored_key_rejected", issuer_id=str(row["issuer_id"]), kid=row["kid"],
                                    reason=exc.reason)
                        continue
                parsed[cache_key] = key
                by_issuer.setdefault(row["issuer_id"], {})[key.kid] = key
            entries = {}
            for row in issuers:
                entries[row["url"]] = IssuerEntry(
                    id=row["id"],
                    url=row["url"],
                    kind=row["kind"],
                    policy=IssuerPolicy(
                        url=row["url"],
                        audience=row["audience"] or self.settings.audience,
                        algorithms=frozenset(row["algorithms"]),
                        max_token_lifetime=row["max_token_lifetime_seconds"],
                    ),
                    enabled=row["enabled"],
                    allowed_packages=tuple(row["allowed_packages"]) if row["allowed_packages"] is not None else None,
                    keys=by_issuer.get(row["id"], {}),
                    keys_fetched_at=row["keys_fetched_at"],
                    last_error=row["last_error"],
                )
            self._parsed = parsed
            self.snapshot = Snapshot(entries, self.snapshot.version + 1)
        async with self._changed:
            self._changed.notify_all()
        return self.snapshot

    async def wait_for_version(self, version: int, timeout: float) -> bool:
        """Wait until a snapshot newer than `version` is in place (used by tests and key-refresh waits)."""
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(lambda: self.snapshot.version > version), timeout)
                return True
            except asyncio.TimeoutError:
                return False

    def changed(self, _payload: str = "") -> None:
        """An issuer or its keys changed (a NOTIFY on tpx_issuers): reload soon."""
        self._wake.set()

    async def run(self) -> None:
        """Reload on every change and, as a fallback, every `keys_reload_seconds`, until cancelled.

        A failed reload is retried with back-off (sooner than the fallback period); until one
        succeeds the last snapshot keeps serving, and its keys' age is still judged per request.
        """
        backoff = Backoff(first=0.5, maximum=self.settings.keys_reload_seconds)
        wait = self.settings.keys_reload_seconds
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), wait)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.reload()
            except Exception as exc:  # noqa: BLE001 - the cache must outlive any failed reload
                if isinstance(exc, UNAVAILABLE_ERRORS):
                    DATABASE.failed(exc, component="keycache")
                elif backoff.failures == 0:
                    log.error("keycache.reload_failed", error=f"{type(exc).__name__}: {exc}"[:300])
                wait = backoff.next()
                continue
            if backoff.failures:
                log.info("keycache.reloaded", after_failures=backoff.failures)
                DATABASE.recovered(component="keycache")
            backoff.reset()
            wait = self.settings.keys_reload_seconds

    async def refresh_for_kid(self, issuer: IssuerEntry, kid: str) -> IssuerEntry:
        """Ask the jwks-refresher for the issuer's current keys and wait briefly for `kid` to appear.

        A key the IdP just started signing with then works on its first use. The
        exchange never calls the IdP itself; it NOTIFYs the refresher, which
        answers single-flight with a cluster-wide cooldown. Within this replica,
        requests are also coalesced: while one is in flight, others just wait for
        it; after it, unknown kids fail fast until the cooldown has passed, so a
        flood of random kids costs neither the IdP nor the database anything.
        """
        loop = asyncio.get_running_loop()
        now = loop.time()
        last = self._refresh_requested.get(issuer.id)
        wait = self.settings.keys_wait_seconds
        if last is None or now - last >= self.settings.jwks_refresh_cooldown_seconds:
            self._refresh_requested[issuer.id] = last = now
            try:
                await issuer_store.request_refresh(self.pool, issuer.id)
            except UNAVAILABLE_ERRORS as exc:
                log.warning("keycache.refresh_request_failed", error=type(exc).__name__)
                return issuer
        elif now - last >= wait:
            return issuer  # asked recently and the answer did not have this kid: do not wait again

        def arrived() -> bool:
            entry = self.snapshot.issuers.get(issuer.url)
            return entry is None or kid in entry.keys

        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(arrived), max(0.0, wait - (now - last)))
            except asyncio.TimeoutError:
                pass
        return self.snapshot.issuers.get(issuer.url, issuer)
