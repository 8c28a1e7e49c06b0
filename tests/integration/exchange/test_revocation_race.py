"""A token minted while a revocation fixes its cutoff never escapes it.

Regression: the exchange stamped `issued_at` from its own clock before its
transaction, and the revocation marked its rule done at once; a mint that
committed just after the rule was done stayed active though issued "before"
the cutoff. Mints now hold a shared gate lock that a revocation takes
exclusively before fixing its cutoff.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest

from tpx.core import tokens
from tpx.exchange.candidates import CandidateCache
from tpx.exchange.group_commit import OnConnection
from tpx.exchange.minting import mint
from tpx.exchange.verification import verify_id_token
from tests.integration.conftest import ADMIN
from tests.support.api import introspect

pytestmark = pytest.mark.integration


async def test_mint_in_flight_during_a_revocation_is_revoked(repo, client, db, exchange_app, settings):
    publisher = await repo.add_publisher()
    ctx = exchange_app.state.tpx
    verified = await verify_id_token(repo.token(), ctx.keycache, settings)

    async with db.acquire() as conn:
        transaction = conn.transaction()
        await transaction.start()
        # A mint that has begun (and so holds the gate) but not committed yet.
        minted = await mint(conn, settings, verified, CandidateCache(), OnConnection(conn))
        revocation = asyncio.create_task(
            client.post("/v1/admin/revocations", json={"publisher_id": publisher["id"]}, headers=ADMIN))
        done, _ = await asyncio.wait({revocation}, timeout=0.5)
        assert not done, "the revocation must wait for the mint in flight to commit"
        await transaction.commit()
    response = await asyncio.wait_for(revocation, 10)
    assert response.status_code == 202, response.text
    assert response.json()["revoked"] == 1
    assert (await introspect(client, minted.token))["active"] is False
    row = await db.fetchrow("SELECT revoked_at FROM tokens WHERE id = $1", uuid.UUID(minted.token_id))
    assert row["revoked_at"] is not None


async def test_mint_after_the_cutoff_is_not_revoked(repo, client):
    publisher = await repo.add_publisher()
    response = await client.post("/v1/admin/revocations", json={"publisher_id": publisher["id"]}, headers=ADMIN)
    assert response.json()["status"] == "done"
    later = (await repo.exchange(repo.token())).json()
    assert tokens.is_well_formed(later["token"])
    assert (await introspect(client, later["token"]))["active"] is True
