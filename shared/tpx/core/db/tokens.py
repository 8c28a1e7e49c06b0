"""Token rows. Only the SHA-256 of a token is stored; rows carry no personal data.

Two notions of "live": `LIVE` is the row's own state (not revoked, not expired)
and is what revoking updates; `ACTIVE` adds "no pending revocation rule matches
it" and is what introspection and listings answer, so a bulk revocation takes
effect on every replica the moment its rule commits, before its rows are updated.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg

from tpx.core.events.outbox import OUTBOX_UNNEST, Event, event_columns

from tpx.core.db.revocations import matched_by_pending_rule

LIVE = "revoked_at IS NULL AND expires_at > now()"
# For queries that read `FROM tokens` without an alias: the rule check names the table.
ACTIVE = f"{LIVE} AND NOT {matched_by_pending_rule('tokens')}"


async def insert_with_events(
    conn: asyncpg.Connection, *, token_id: Any, token_hash: bytes, issuer_id: Any, packages: list[str],
    permissions: dict[str, list[str]], publisher_ids: list[str], ci: dict[str, Any], repository_key: str,
    workflow: str, issued_at: datetime, expires_at: datetime, events: list[Event], source: str,
) -> None:
    """Insert the token row and its outbox events in one statement (one round trip on the hot path)."""
    await conn.execute(
        f"""WITH token AS (
                INSERT INTO tokens (id, token_hash, issuer_id, packages, permissions, publisher_ids, ci,
                                    repository_key, workflow, issued_at, expires_at)
                VALUES ($7, $8, $9, $10, $11, $12::uuid[], $13, $14, $15, $16, $17))
            INSERT INTO outbox (event_id, type, source, subject, time, data) {OUTBOX_UNNEST}""",
        *event_columns(events, source),
        token_id, token_hash, issuer_id, packages, permissions, publisher_ids, ci, repository_key, workflow,
        issued_at, expires_at,
    )


async def active_by_hash(conn: asyncpg.Connection | asyncpg.Pool, token_hash: bytes) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"""SELECT id, packages, permissions, publisher_ids, ci, issued_at, expires_at
            FROM tokens WHERE token_hash = $1 AND {ACTIVE}""",
        token_hash,
    )


async def revoke_by_hash(conn: asyncpg.Connection, token_hash: bytes, reason: str) -> asyncpg.Record | None:
    """Revoke one token row; also one a pending rule already covers, so its holder's request is recorded."""
    return await conn.fetchrow(
        f"""UPDATE tokens SET revoked_at = now(), revocation_reason = $2
            WHERE token_hash = $1 AND {LIVE}
            RETURNING id, packages, publisher_ids, ci""",
        token_hash, reason,
    )


async def revoke_by_publisher(conn: asyncpg.Connection, publisher_id: Any, reason: str) -> list[asyncpg.Record]:
    """Unbounded; prefer a 'publisher' revocation rule (tpx.core.db.revocations), which works in batches."""
    return await conn.fetch(
        f"""UPDATE tokens SET revoked_at = now(), revocation_reason = $2
            WHERE publisher_ids @> ARRAY[$1::uuid] AND {LIVE}
            RETURNING id, packages, publisher_ids, ci""",
        publisher_id, reason,
    )


async def list_metadata(
    conn: asyncpg.Connection, *, package: str | None, publisher_id: Any | None, active: bool | None, limit: int,
) -> list[asyncpg.Record]:
    return await conn.fetch(
        f"""SELECT id, packages, permissions, publisher_ids, ci, issued_at, expires_at, revoked_at,
                   revocation_reason, ({ACTIVE}) AS active
            FROM tokens
            WHERE ($1::text IS NULL OR packages @> ARRAY[$1::text])
              AND ($2::uuid IS NULL OR publisher_ids @> ARRAY[$2::uuid])
              AND ($3::boolean IS NULL OR ({ACTIVE}) = $3)
            ORDER BY issued_at DESC, id LIMIT $4""",
        package, publisher_id, active, limit,
    )
