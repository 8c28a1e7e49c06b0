"""The exchange's in-memory view of issuers and their verification keys.

Loaded from Postgres at start and reloaded whenever the issuer tables change
(a trigger NOTIFYs `tpx_issuers`) or, as a fallback, every few seconds. A reload
builds a complete new snapshot and swaps it in with one assignment, so a request
sees either the old keys or the new ones, never a mix. Keys are parsed once per
distinct JWK, never per request.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, Mapping

import asyncpg

from tpx.core.config import Settings
from tpx.core.db.pool import UNAVAILABLE_ERRORS
from tpx.core.jose import IssuerPolicy, KeyRejected, VerificationKey, parse_jwk
from tpx.core.logging import get_logger

log = get_logger("tpx.exchange.keycache")
CHANNEL = "tpx_issuers"
REFRESH_CHANNEL = "tpx_jwks_refresh"
PUBLISHERS_CHANNEL = "tpx_publishers"


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
    rejected_keys: tuple[str, ...] = ()


@dataclass(frozen=True)
class Snapshot:
    issuers: Mapping[str, IssuerEntry] = field(default_factory=dict)
    version: int = 0

    def usable(self) -> list[IssuerEntry]:
        return [entry for entry in self.issuers.values() if entry.enabled and entry.keys]


class KeyCache:
    def __init__(self, settings: Settings, pool: asyncpg.Pool, *,
                 on_publishers_changed: Callable[[], None] | None = None) -> None:
        self.settings = settings
        self._on_publishers_changed = on_publishers_changed
        self.pool = pool
        self.snapshot = Snapshot()
        self.loaded_at: float | None = None
        self._parsed: dict[tuple[Any, str, str], VerificationKey] = {}
        self._changed = asyncio.Condition()
        self._reload_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._stopping = False
        self._refresh_requested: dict[Any, float] = {}

    def issuer(self, url: str) -> IssuerEntry | None:
        entry = self.snapshot.issuers.get(url)
        return entry if entry is not None and entry.enabled else None

    async def reload(self) -> Snapshot:
        """Read every issuer and key and swap the snapshot in; safe to call concurrently."""
        async with self._reload_lock:
            async with self.pool.acquire() as conn:
                issuers = await conn.fetch(
                    """SELECT id, url, kind, audience, algorithms, allowed_packages, max_token_lifetime_seconds,
                              enabled, keys_fetched_at, last_error FROM issuers""")
                keys = await conn.fetch("SELECT issuer_id, kid, jwk FROM issuer_keys")
            by_issuer: dict[Any, dict[str, VerificationKey]] = {row["id"]: {} for row in issuers}
            rejected: dict[Any, list[str]] = {}
            parsed: dict[tuple[Any, str, str], VerificationKey] = {}
            for row in keys:
                cache_key = (row["issuer_id"], row["kid"], json.dumps(row["jwk"], sort_keys=True))
                key = self._parsed.get(cache_key)
                if key is None:
                    try:
                        key = parse_jwk(row["jwk"])
                    except KeyRejected as exc:
                        rejected.setdefault(row["issuer_id"], []).append(f"kid={row['kid']}: {exc}")
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
                    rejected_keys=tuple(rejected.get(row["id"], ())),
                )
            self._parsed = parsed
            self.snapshot = Snapshot(entries, self.snapshot.version + 1)
            self.loaded_at = asyncio.get_running_loop().time()
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

    async def run(self) -> None:
        """Follow changes until stopped: LISTEN for NOTIFYs, reload on each, poll as a fallback."""
        backoff = 0.5
        while not self._stopping:
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(self.settings.database_url, timeout=5)
                await conn.add_listener(CHANNEL, self._on_notify)
                if self._on_publishers_changed is not None:
                    # The same connection follows publisher changes for the exchange's candidate cache.
                    await conn.add_listener(PUBLISHERS_CHANNEL, self._publishers_changed)
                    self._on_publishers_changed()  # anything may have changed while not listening
                await self.reload()  # catch up on anything missed while not listening
                backoff = 0.5
                while not self._stopping and not conn.is_closed():
                    try:
                        await asyncio.wait_for(self._wake.wait(), self.settings.keys_reload_seconds)
                    except asyncio.TimeoutError:
                        pass
                    self._wake.clear()
                    if not self._stopping:
                        await self.reload()
            except asyncio.CancelledError:
                raise
            except UNAVAILABLE_ERRORS as exc:
                log.warning("keycache.database_unavailable", error=type(exc).__name__, retry_in=backoff)
            except Exception:  # noqa: BLE001 - keep the loop alive, say what happened
                log.exception("keycache.reload_failed", retry_in=backoff)
            finally:
                if conn is not None and not conn.is_closed():
                    await conn.close()
            if not self._stopping:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)

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
                await self.pool.execute("SELECT pg_notify($1, $2)", REFRESH_CHANNEL, str(issuer.id))
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

    def _publishers_changed(self, *_args: Any) -> None:
        if self._on_publishers_changed is not None:
            self._on_publishers_changed()

    def _on_notify(self, *_args: Any) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()
