"""The issuers and issuer_keys tables: registered OIDC issuers, their keys, and the refresher's bookkeeping.

Writers: the admin API (configuration), the jwks-refresher (keys and fetch
state). Readers: every exchange replica's key cache, which a trigger tells of
each change that matters to it (NOTIFY `tpx_issuers`), and the refresher,
which exchanges ask for a fetch (NOTIFY `tpx_jwks_refresh`).
"""

from __future__ import annotations

import uuid
from typing import Any, Mapping

import asyncpg

from tpx.core.db import locks

CHANGED_CHANNEL = "tpx_issuers"  # the issuers_notify triggers (migrations 0001, 0002)
REFRESH_CHANNEL = "tpx_jwks_refresh"  # payload: the issuer id

_COLUMNS = """i.id, i.url, i.kind, i.audience, i.algorithms, i.allowed_packages, i.max_token_lifetime_seconds,
    i.enabled, i.jwks_uri, i.keys_fetched_at, i.last_error, i.created_at, i.updated_at,
    COALESCE((SELECT array_agg(k.kid ORDER BY k.kid) FROM issuer_keys k WHERE k.issuer_id = i.id), '{}') AS key_ids"""

# Due for a scheduled refresh, or an exchange asked since the last attempt.
_DUE = """(next_refresh_at IS NULL OR next_refresh_at <= now()
           OR refresh_requested_at > coalesce(refresh_attempted_at, '-infinity'))"""


# --- configuration (admin API) -------------------------------------------------------------------------------

async def get(conn: asyncpg.Connection | asyncpg.Pool, issuer_id: uuid.UUID) -> asyncpg.Record | None:
    return await conn.fetchrow(f"SELECT {_COLUMNS} FROM issuers i WHERE i.id = $1", issuer_id)


async def list_all(conn: asyncpg.Connection | asyncpg.Pool) -> list[asyncpg.Record]:
    return await conn.fetch(f"SELECT {_COLUMNS} FROM issuers i ORDER BY i.created_at, i.url")


async def insert(conn: asyncpg.Connection, fields: Mapping[str, Any]) -> uuid.UUID | None:
    """Insert an issuer with the given (validated) columns; None when its URL is taken."""
    columns = list(fields)
    return await conn.fetchval(
        f"INSERT INTO issuers ({', '.join(columns)}) VALUES ({', '.join(f'${i + 1}' for i in range(len(columns)))}) "
        "ON CONFLICT (url) DO NOTHING RETURNING id",
        *fields.values(),
    )


async def update(conn: asyncpg.Connection, issuer_id: uuid.UUID, fields: Mapping[str, Any]) -> None:
    """Set the given (validated) columns; the column names are the fields of `tpx.core.issuers.IssuerChange`, never a client."""
    if not fields:
        return
    assignments = ", ".join(f"{name} = ${i + 2}" for i, name in enumerate(fields))
    await conn.execute(f"UPDATE issuers SET {assignments}, updated_at = now() WHERE id = $1", issuer_id,
                       *fields.values())


async def delete(conn: asyncpg.Connection, issuer_id: uuid.UUID) -> None:
    await conn.execute("DELETE FROM issuers WHERE id = $1", issuer_id)


async def for_publisher(conn: asyncpg.Connection, url: str) -> asyncpg.Record | None:
    """What creating a publisher checks of its issuer: id, kind and package limits."""
    return await conn.fetchrow("SELECT id, kind, allowed_packages FROM issuers WHERE url = $1", url)


async def disable(conn: asyncpg.Connection, urls: list[str], url_prefix: str) -> None:
    """Disable the issuers with these URLs or URLs starting with `url_prefix` (the demo's own database)."""
    await conn.execute("UPDATE issuers SET enabled = false WHERE url = ANY($1::text[]) OR starts_with(url, $2)",
                       urls, url_prefix)


# --- the exchange's key cache --------------------------------------------------------------------------------

async def load_all(conn: asyncpg.Connection) -> tuple[list[asyncpg.Record], list[asyncpg.Record]]:
    """Every issuer and every stored key, read in one transaction so keys and issuers agree."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        issuers = await conn.fetch(
            """SELECT id, url, kind, audience, algorithms, allowed_packages, max_token_lifetime_seconds,
                      enabled, keys_fetched_at, last_error FROM issuers""")
        keys = await conn.fetch("SELECT issuer_id, kid, jwk FROM issuer_keys")
    return issuers, keys


async def request_refresh(pool: asyncpg.Pool, issuer_id: uuid.UUID) -> None:
    """Ask every jwks-refresher replica for a fetch of this issuer (an exchange met an unknown `kid`)."""
    await pool.execute("SELECT pg_notify($1, $2)", REFRESH_CHANNEL, str(issuer_id))


# --- the jwks-refresher --------------------------------------------------------------------------------------

def fetch_lock_key(issuer_id: uuid.UUID) -> int:
    """A stable int4 per issuer, the same in every replica (never Python's salted `hash`)."""
    raw = issuer_id.bytes
    folded = bytes(a ^ b ^ c ^ d for a, b, c, d in zip(raw[0:4], raw[4:8], raw[8:12], raw[12:16]))
    return int.from_bytes(folded, "big", signed=True)


async def try_lock_fetch(conn: asyncpg.Connection, issuer_id: uuid.UUID) -> bool:
    """Hold the issuer's fetch lock on this session; False while another replica (or task) fetches it."""
    return await conn.fetchval("SELECT pg_try_advisory_lock($1::int, $2::int)", locks.JWKS_FETCH_CLASS,
                               fetch_lock_key(issuer_id))


async def unlock_fetch(conn: asyncpg.Connection, issuer_id: uuid.UUID) -> None:
    await conn.execute("SELECT pg_advisory_unlock($1::int, $2::int)", locks.JWKS_FETCH_CLASS, fetch_lock_key(issuer_id))


async def claim_fetch(conn: asyncpg.Connection, issuer_id: uuid.UUID, cooldown_seconds: float,
                      scheduled: bool) -> asyncpg.Record | None:
    """Move the cluster-wide cooldown clock forward if the cooldown has passed (and, when `scheduled`, the
    issuer is still due); the winner gets (url, jwks_hosts, consecutive_failures) and fetches, others None."""
    return await conn.fetchrow(
        f"""UPDATE issuers SET refresh_attempted_at = now()
            WHERE id = $1 AND enabled
              AND (refresh_attempted_at IS NULL OR refresh_attempted_at <= now() - make_interval(secs => $2))
              AND (NOT $3 OR {_DUE})
            RETURNING url, jwks_hosts, consecutive_failures""",
        issuer_id, cooldown_seconds, scheduled)


async def cooldown_remaining(conn: asyncpg.Connection, issuer_id: uuid.UUID, cooldown_seconds: float) -> float | None:
    """Seconds until the issuer's cooldown ends (negative if it has); None if it is gone or disabled."""
    return await conn.fetchval(
        "SELECT extract(epoch FROM refresh_attempted_at + make_interval(secs => $2) - now())::float8 "
        "FROM issuers WHERE id = $1 AND enabled", issuer_id, cooldown_seconds)


async def due(conn: asyncpg.Connection, limit: int) -> list[uuid.UUID]:
    rows = await conn.fetch(
        f"SELECT id FROM issuers WHERE enabled AND {_DUE} ORDER BY next_refresh_at NULLS FIRST LIMIT $1", limit)
    return [row["id"] for row in rows]


async def seconds_to_next_refresh(conn: asyncpg.Connection) -> float | None:
    return await conn.fetchval(
        "SELECT extract(epoch FROM min(next_refresh_at) - now())::float8 FROM issuers WHERE enabled")


async def store_keys(conn: asyncpg.Connection, issuer_id: uuid.UUID, jwks: Mapping[str, dict[str, Any]], *,
                     jwks_uri: str | None = None, next_refresh_seconds: float | None = None,
                     ) -> tuple[dict[str, Any], bool]:
    """Make `jwks` (kid -> public JWK) the issuer's only keys, in the caller's transaction or its own.

    The whole set is replaced at once, so a replica reloading keys sees either
    the old set or the new one, never a mix; a key removed upstream is deleted
    here and so stops verifying everywhere on the next reload. With `jwks_uri`
    the fetch is also recorded as a success (failures reset, next refresh set).
    Returns the key set before and whether it changed.
    """
    async with conn.transaction():
        before = {row["kid"]: row["jwk"] for row in await conn.fetch(
            "SELECT kid, jwk FROM issuer_keys WHERE issuer_id = $1 FOR UPDATE", issuer_id)}
        changed = before != dict(jwks)
        if changed:
            await conn.execute("DELETE FROM issuer_keys WHERE issuer_id = $1 AND NOT (kid = ANY($2::text[]))",
                               issuer_id, list(jwks))
            await conn.executemany(
                """INSERT INTO issuer_keys (issuer_id, kid, jwk, fetched_at) VALUES ($1, $2, $3, now())
                   ON CONFLICT (issuer_id, kid) DO UPDATE SET jwk = EXCLUDED.jwk, fetched_at = now()""",
                [(issuer_id, kid, jwk) for kid, jwk in jwks.items()],
            )
        await conn.execute(
            "UPDATE issuers SET keys_fetched_at = now(), last_error = NULL, updated_at = now() WHERE id = $1",
            issuer_id,
        )
        if jwks_uri is not None:
            await conn.execute(
                """UPDATE issuers SET jwks_uri = $2, consecutive_failures = 0,
                          next_refresh_at = now() + make_interval(secs => $3) WHERE id = $1""",
                issuer_id, jwks_uri, float(next_refresh_seconds or 0))
    return before, changed


async def record_fetch_failure(conn: asyncpg.Connection, issuer_id: uuid.UUID, message: str,
                               retry_in_seconds: float) -> None:
    """Keep the last good keys; say what went wrong and when to try again."""
    await conn.execute(
        """UPDATE issuers SET last_error = $2, consecutive_failures = consecutive_failures + 1,
                  next_refresh_at = now() + make_interval(secs => $3) WHERE id = $1""",
        issuer_id, message, retry_in_seconds)
