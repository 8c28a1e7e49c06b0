"""The publishers table: trusted-publisher configurations.

Any change NOTIFYs `tpx_publishers` (a statement trigger, migration 0005), so
every exchange replica drops its cached candidates.
"""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg

from tpx.core.providers.base import Publisher
from tpx.core.publishers import identity_key

CHANGED_CHANNEL = "tpx_publishers"

_COLUMNS = """p.id, p.package, p.provider, i.url AS issuer, p.owner, p.owner_id, p.name, p.name_id, p.workflow,
              p.environments, p.ref_patterns, p.allow_self_hosted_runners, p.require_protected_ref,
              p.token_ttl_seconds, p.permissions, p.created_at, p.conditions"""


def from_row(row: asyncpg.Record) -> Publisher:
    return Publisher(
        id=str(row["id"]),
        package=row["package"],
        provider=row["provider"],
        issuer=row["issuer"],
        owner=row["owner"],
        owner_id=row["owner_id"],
        name=row["name"],
        name_id=row["name_id"],
        workflow=row["workflow"],
        environments=tuple(row["environments"]),
        ref_patterns=tuple(row["ref_patterns"]),
        allow_self_hosted_runners=row["allow_self_hosted_runners"],
        require_protected_ref=row["require_protected_ref"],
        token_ttl_seconds=row["token_ttl_seconds"],
        permissions=tuple(row["permissions"]),
        created_at=row["created_at"],
        conditions=row["conditions"],
    )


async def candidates(conn: asyncpg.Connection, issuer_id: Any, repository_key: str) -> list[Publisher]:
    """The publishers an identity of this issuer and repository may match (the exchange's lookup)."""
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM publishers p JOIN issuers i ON i.id = p.issuer_id "
        "WHERE p.issuer_id = $1 AND p.repository_key = $2 ORDER BY p.created_at, p.id",
        issuer_id, repository_key,
    )
    return [from_row(row) for row in rows]


async def get(conn: asyncpg.Connection, publisher_id: Any) -> Publisher | None:
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM publishers p JOIN issuers i ON i.id = p.issuer_id WHERE p.id = $1", publisher_id)
    return from_row(row) if row else None


async def list_(conn: asyncpg.Connection, package: str | None, limit: int) -> list[Publisher]:
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM publishers p JOIN issuers i ON i.id = p.issuer_id "
        "WHERE ($1::text IS NULL OR p.package = $1) ORDER BY p.created_at, p.id LIMIT $2",
        package, limit,
    )
    return [from_row(row) for row in rows]


async def insert(conn: asyncpg.Connection, publisher: Publisher, issuer_id: Any) -> Publisher | None:
    """Insert; None when an equal publisher already exists."""
    row = await conn.fetchrow(
        """INSERT INTO publishers (package, provider, issuer_id, owner, owner_id, name, name_id, workflow,
                                   environments, ref_patterns, allow_self_hosted_runners, require_protected_ref,
                                   token_ttl_seconds, permissions, identity_key, conditions)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)
           ON CONFLICT (issuer_id, identity_key) DO NOTHING
           RETURNING id""",
        publisher.package, publisher.provider, issuer_id, publisher.owner, publisher.owner_id, publisher.name,
        publisher.name_id, publisher.workflow, list(publisher.environments), list(publisher.ref_patterns),
        publisher.allow_self_hosted_runners, publisher.require_protected_ref, publisher.token_ttl_seconds,
        list(publisher.permissions), identity_key(publisher), dict(publisher.conditions),
    )
    return await get(conn, row["id"]) if row else None


async def delete(conn: asyncpg.Connection, publisher_id: Any) -> bool:
    return await conn.fetchval("DELETE FROM publishers WHERE id = $1 RETURNING true", publisher_id) is True


async def exists(conn: asyncpg.Connection, publisher_id: uuid.UUID) -> bool:
    return await conn.fetchval("SELECT EXISTS (SELECT 1 FROM publishers WHERE id = $1)", publisher_id)


async def count_for_issuer(conn: asyncpg.Connection, issuer_id: uuid.UUID) -> int:
    return await conn.fetchval("SELECT count(*) FROM publishers WHERE issuer_id = $1", issuer_id)
