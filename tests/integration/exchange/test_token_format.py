"""Time-stamped tokens, and first-format ones while a replica of an earlier release may still serve."""

from __future__ import annotations

import contextlib
import uuid

import asyncpg
import pytest
from prometheus_client import REGISTRY

from tpx.core import tokens
from tpx.core.db import tokens as token_store
from tpx.exchange.token_format import TokenFormat
from tests.support.api import introspect

pytestmark = pytest.mark.integration


@contextlib.asynccontextmanager
async def older_replica(settings):
    """What an exchange replica of a release before time-stamped tokens shows the database: its listener."""
    conn = await asyncpg.connect(settings.database_url,
                                 server_settings={"application_name": token_store.FIRST_FORMAT_READER})
    try:
        yield conn
    finally:
        await conn.close()


async def test_first_format_while_an_older_replica_is_connected_time_stamped_after_two_clear_checks(settings, db):
    token_format = TokenFormat()
    await token_format.check(db)
    assert not token_format.time_stamped, "one check may fall while an older replica's listener reconnects"
    async with older_replica(settings):
        for _ in range(3):
            await token_format.check(db)
            assert not token_format.time_stamped
            assert tokens.minted_second(token_format.generate()) is None
    await token_format.check(db)
    assert not token_format.time_stamped
    assert REGISTRY.get_sample_value("tpx_tokens_time_stamped") == 0
    await token_format.check(db)
    assert token_format.time_stamped
    assert REGISTRY.get_sample_value("tpx_tokens_time_stamped") == 1
    assert tokens.minted_second(token_format.generate()) is not None
    async with older_replica(settings):
        await token_format.check(db)
        assert not token_format.time_stamped


async def stored_key(db, token_id: str) -> bytes:
    return bytes(await db.fetchval("SELECT token_hash FROM tokens WHERE id = $1", uuid.UUID(token_id)))


async def test_both_formats_are_minted_read_and_revoked_through_the_exchange(settings, db, exchange_app, repo, client):
    """Tokens minted during a rollout (first format) stay active and revocable after it, beside
    time-stamped ones; each is stored under the key it is looked up by."""
    token_format = exchange_app.state.tpx.token_format
    await repo.add_publisher()
    async with older_replica(settings):
        await token_format.check(db)
        first = (await repo.exchange(repo.token())).json()
    await token_format.check(db)
    await token_format.check(db)
    stamped = (await repo.exchange(repo.token())).json()

    assert tokens.minted_second(first["token"]) is None
    assert await stored_key(db, first["token_id"]) == tokens.hash_token(first["token"])
    second = tokens.minted_second(stamped["token"])
    assert second is not None
    assert await stored_key(db, stamped["token_id"]) == second.to_bytes(5, "big") + tokens.hash_token(stamped["token"])

    for minted in (first, stamped):
        info = await introspect(client, minted["token"])
        assert info["active"] is True and info["token_id"] == minted["token_id"]
    assert (await client.post("/v1/revoke", json={"token": stamped["token"]})).status_code == 204
    assert (await introspect(client, stamped["token"]))["active"] is False
    assert (await introspect(client, first["token"]))["active"] is True
    assert (await client.post("/v1/revoke", json={"token": first["token"]})).status_code == 204
    assert (await introspect(client, first["token"]))["active"] is False
