"""`settled_mint`: after a mint's connection died, end the old session and tell whether the mint committed.

Whatever the old session was doing when asked (still inserting, committing, already gone), the answer
must agree with what the database holds for good afterwards: "committed" exactly when the row exists.
A wrong "never committed" makes the exchange answer 503 (retry, the ID token is unspent) for a spent ID
token, whose retry then gets 409 token_reused: the CI job's token is lost.
"""

from __future__ import annotations

import asyncio
import secrets
import uuid

import asyncpg
import pytest

from tpx.core.db.tokens import settled_mint

pytestmark = pytest.mark.integration

RACES = 50


async def insert_token(conn: asyncpg.Connection, token_hash: bytes) -> None:
    await conn.execute(
        """INSERT INTO tokens (id, token_hash, issuer_id, packages, permissions, publisher_ids, ci, repository_key,
                               workflow, issued_at, expires_at)
           VALUES ($1, $2, $3, ARRAY['race'], '{}', '{}', '{}', 'race/race', 'release.yml', now(),
                   now() + interval '1 minute')""", uuid.uuid4(), token_hash, uuid.uuid4())


async def test_the_answer_agrees_with_what_the_database_keeps(db, settings):
    disagreements = []
    for race in range(RACES):
        old = await asyncpg.connect(settings.database_url)
        pid = old.get_server_pid()
        token_hash = secrets.token_bytes(32)
        transaction = old.transaction()
        await transaction.start()
        await insert_token(old, token_hash)

        async def commit_and_go() -> None:
            try:
                await transaction.commit()
            except (asyncpg.PostgresError, OSError, asyncpg.InterfaceError):
                pass  # ended by settled_mint before it committed: then the mint never happened
            finally:
                old.terminate()

        finishing = asyncio.create_task(commit_and_go())
        if race % 2:
            await asyncio.sleep(0)  # half the time the commit gets a head start
        while True:  # what resolve_ambiguous does, as fast as it can, while the old session commits and ends
            settled, row = await settled_mint(db, token_hash, pid)
            if settled:
                break
        await finishing
        kept = await db.fetchval("SELECT count(*) FROM tokens WHERE token_hash = $1", token_hash)
        if (row is not None) != (kept == 1):
            disagreements.append((race, row is not None, kept))
    await db.execute("DELETE FROM tokens WHERE packages = ARRAY['race']")
    assert not disagreements, f"{len(disagreements)} of {RACES} answers disagree with the database: {disagreements[:5]}"


async def test_a_session_behind_a_silent_network_is_ended_and_its_commit_found(db, settings):
    """The old session committed and then waits on a connection that will never speak again."""
    old = await asyncpg.connect(settings.database_url)
    token_hash = secrets.token_bytes(32)
    await insert_token(old, token_hash)  # committed; the session stays, idle, as if its client had vanished
    try:
        settled, row = await settled_mint(db, token_hash, old.get_server_pid())
        assert settled and row is not None
        assert await db.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", old.get_server_pid()) == 0
    finally:
        old.terminate()
        await db.execute("DELETE FROM tokens WHERE packages = ARRAY['race']")
