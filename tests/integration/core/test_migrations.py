"""`tpx migrate` is idempotent and safe when several replicas start at once."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from tpx.core.db.migrate import SchemaMismatch, available_migrations, check_schema, migrate

pytestmark = pytest.mark.integration



async def test_concurrent_migrations_apply_once(empty_database):
    connections = [await asyncpg.connect(empty_database) for _ in range(4)]
    try:
        results = await asyncio.gather(*(migrate(conn) for conn in connections))
        assert sorted(len(applied) for applied in results) == [0, 0, 0, len(available_migrations())]
        assert await check_schema(connections[0]) == available_migrations()[-1].version
        assert await migrate(connections[0]) == []  # idempotent
        issuers = await connections[0].fetchval("SELECT count(*) FROM issuers")
        assert issuers == 2  # the public GitHub and GitLab issuers, seeded once
    finally:
        for conn in connections:
            await conn.close()


async def test_services_refuse_unmigrated_and_newer_schemas(empty_database):
    conn = await asyncpg.connect(empty_database)
    try:
        with pytest.raises(SchemaMismatch, match="tpx migrate"):
            await check_schema(conn)
        await migrate(conn)
        await conn.execute("INSERT INTO schema_migrations (version, name, checksum) VALUES (9999, 'future', 'x')")
        with pytest.raises(SchemaMismatch, match="newer"):
            await check_schema(conn)
        with pytest.raises(SchemaMismatch, match="newer"):
            await migrate(conn)
    finally:
        await conn.close()
