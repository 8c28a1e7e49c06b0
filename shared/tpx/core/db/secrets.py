"""The server_secrets table: secrets generated once per database and shared by every replica."""

from __future__ import annotations

import asyncpg

ACTOR_FINGERPRINT = "actor_fingerprint"


async def get(conn: asyncpg.Connection | asyncpg.Pool, name: str) -> bytes:
    value = await conn.fetchval("SELECT value FROM server_secrets WHERE name = $1", name)
    if value is None:
        raise RuntimeError(f"the server secret {name!r} is missing; run `tpx migrate`")
    return bytes(value)
