"""Ordered SQL migrations, applied under an advisory lock.

Several replicas may start at once: each takes the same transaction-scoped
advisory lock, so exactly one applies a migration while the others wait and
then find nothing left to do. Services refuse to start on an unmigrated or a
newer schema (`check_schema`), so a rollout never runs code against the wrong
tables.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

import asyncpg

from tpx.core.db import locks


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


class SchemaMismatch(Exception):
    """The database schema is not the one this code was built for."""


def available_migrations() -> list[Migration]:
    folder = resources.files("tpx.core.db") / "migrations"
    migrations = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            version_text, _, rest = entry.name.partition("_")
            migrations.append(Migration(int(version_text), rest.removesuffix(".sql"), entry.read_text("utf-8")))
    migrations.sort(key=lambda m: m.version)
    versions = [m.version for m in migrations]
    if versions != list(range(1, len(versions) + 1)):
        raise RuntimeError(f"migration versions must be 1..n without gaps, found {versions}")
    return migrations


async def create_database(maintenance: asyncpg.Connection, name: str) -> bool:
    """Create the database `name` (connected to another database of the server) unless it exists; True if made."""
    if await maintenance.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
        return False
    quoted = '"' + name.replace('"', '""') + '"'
    await maintenance.execute(f"CREATE DATABASE {quoted}")
    return True


async def migrate(conn: asyncpg.Connection, progress=None) -> list[Migration]:
    """Apply every pending migration; return the ones this call applied."""
    applied: list[Migration] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", locks.MIGRATIONS)
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version integer PRIMARY KEY,
                   name text NOT NULL,
                   checksum text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        done = {row["version"]: row["checksum"] for row in await conn.fetch("SELECT version, checksum FROM schema_migrations")}
        known = available_migrations()
        newest = known[-1].version if known else 0
        if done and max(done) > newest:
            raise SchemaMismatch(
                f"the database is at schema version {max(done)}, newer than this tpx ({newest}); "
                "upgrade tpx instead of running an older release against it"
            )
        for migration in known:
            if migration.version in done:
                if done[migration.version] != migration.checksum:
                    raise SchemaMismatch(
                        f"migration {migration.version} ({migration.name}) was changed after it was applied; "
                        "migrations are append-only: add a new one instead"
                    )
                continue
            if progress:
                progress(f"applying migration {migration.version:04d} {migration.name}")
            await conn.execute(migration.sql)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                migration.version, migration.name, migration.checksum,
            )
            applied.append(migration)
    return applied


async def check_schema(conn: asyncpg.Connection) -> int:
    """Return the schema version, or raise SchemaMismatch if it is not exactly the expected one."""
    expected = available_migrations()[-1].version
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    current = await conn.fetchval("SELECT max(version) FROM schema_migrations") if exists else None
    if current is None:
        raise SchemaMismatch("the database has no tpx schema yet; run `tpx migrate` first")
    if current < expected:
        raise SchemaMismatch(
            f"the database is at schema version {current} but this tpx needs {expected}; run `tpx migrate` first"
        )
    if current > expected:
        raise SchemaMismatch(
            f"the database is at schema version {current}, newer than this tpx ({expected}); upgrade tpx"
        )
    return current
