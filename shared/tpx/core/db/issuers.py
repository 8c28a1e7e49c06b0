"""Writing an issuer's key set to Postgres, the way the jwks-refresher does.

The whole set is replaced in one transaction, so a replica reloading keys sees
either the old set or the new one, never a mix; a key removed upstream is
deleted here and so stops verifying everywhere on the next reload.
"""

from __future__ import annotations

from typing import Any, Mapping

import asyncpg


async def replace_issuer_keys(conn: asyncpg.Connection, issuer_id: Any, jwks: Mapping[str, dict[str, Any]]) -> bool:
    """Store `jwks` (kid -> public JWK) as the issuer's only keys; return True if the set changed."""
    async with conn.transaction():
        current = {row["kid"]: row["jwk"] for row in await conn.fetch(
            "SELECT kid, jwk FROM issuer_keys WHERE issuer_id = $1 FOR UPDATE", issuer_id)}
        changed = current != dict(jwks)
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
        return changed
