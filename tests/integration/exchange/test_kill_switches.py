"""Kill switches bite when the call returns, on every replica, whatever a replica's caches say.

A replica's key cache follows issuer changes by NOTIFY, which may arrive late
or not at all (a listener that is reconnecting). So the mint statement itself
checks, after the mint gate, what the caches might have missed: the issuer is
still enabled, the token's key is still stored, the token has not expired by
the database's clock (the clock the spent-JTI purge uses), and the matched
publishers still exist. These tests decide on the cache's view, change the
database behind it, and write: nothing may be minted and no JTI spent.
"""

from __future__ import annotations

import time
from msgspec.structs import replace

import pytest

from tpx.core.db import issuers as issuer_store
from tpx.core.db import publishers as publisher_store
from tpx.core.errors import Problem
from tpx.exchange.group_commit import OnConnection
from tpx.exchange.minting import decide, write
from tpx.exchange.verification import VerifiedToken, verify_id_token
from tests.support.events import eventually
from tests.support.oidc_issuer import new_rsa_key

pytestmark = pytest.mark.integration


async def decided(conn, exchange_app, settings, repo, **claims):
    """Verify and decide as the exchange does, from this replica's caches."""
    values = repo.claims(**claims)
    verified = await verify_id_token(repo.issuer.mint(values), exchange_app.state.tpx.keycache, settings)
    candidates = await publisher_store.candidates(conn, verified.issuer.id, verified.identity.repository_key)
    return values, verified, decide(verified, candidates, settings)


async def spent(db, jti: str) -> int:
    return await db.fetchval("SELECT count(*) FROM used_jtis WHERE jti = $1", jti)


async def refused(conn, settings, decision, code: str, phrase: str) -> Problem:
    with pytest.raises(Problem) as caught:
        await write(OnConnection(conn), settings, decision)
    assert caught.value.code == code, caught.value
    assert phrase in caught.value.detail, caught.value.detail
    return caught.value


async def test_a_disabled_issuer_mints_nothing_even_where_the_cache_says_enabled(own_issuer, db, exchange_app,
                                                                                 settings):
    repo = own_issuer.repo()
    await repo.add_publisher(repository_owner_id=repo.owner_id, repository_id=repo.repository_id)
    async with db.acquire() as conn:
        claims, verified, decision = await decided(conn, exchange_app, settings, repo)
        await own_issuer.set_enabled(False)
        await refused(conn, settings, decision, "unknown_issuer", "disabled")
    assert await spent(db, claims["jti"]) == 0


async def test_disabling_bites_at_once_and_enabling_again_works_within_a_second(own_issuer, exchange_app):
    repo = own_issuer.repo()
    await repo.add_publisher()
    assert (await repo.exchange(repo.token())).status_code == 200
    await own_issuer.set_enabled(False)
    refusal = await repo.exchange(repo.token())
    assert refusal.status_code == 401 and refusal.json()["code"] == "unknown_issuer", refusal.text
    await own_issuer.set_enabled(True)
    started = time.monotonic()

    async def minted() -> bool:
        return (await repo.exchange(repo.token())).status_code == 200

    await eventually(minted, "an exchange to work again after re-enabling", timeout=1.0)
    assert time.monotonic() - started < 1.0


async def test_a_key_removed_from_the_stored_set_verifies_nothing_more(own_issuer, db, exchange_app, settings):
    repo = own_issuer.repo()
    await repo.add_publisher(repository_owner_id=repo.owner_id, repository_id=repo.repository_id)
    async with db.acquire() as conn:
        claims, verified, decision = await decided(conn, exchange_app, settings, repo)
        # The refresher stores the IdP's new set, without the key that signed this token.
        other = new_rsa_key()
        await issuer_store.store_keys(conn, own_issuer.id, {other.kid: other.public_jwk()})
        await refused(conn, settings, decision, "invalid_token", verified.kid)
    assert await spent(db, claims["jti"]) == 0


async def test_a_token_expired_by_the_database_clock_spends_no_jti(own_issuer, db, exchange_app, settings):
    """The spent-JTI purge forgets a JTI at exp + leeway by the database's clock; a token past that moment
    by the same clock must not be minted, or an app clock behind the database's would reopen a replay."""
    repo = own_issuer.repo()
    await repo.add_publisher(repository_owner_id=repo.owner_id, repository_id=repo.repository_id)
    async with db.acquire() as conn:
        claims, verified, decision = await decided(conn, exchange_app, settings, repo)
        past = int(time.time()) - settings.leeway_seconds - 5  # as an app whose clock lags would have accepted
        stale: VerifiedToken = replace(verified, claims={**verified.claims, "exp": past})
        await refused(conn, settings, replace(decision, verified=stale), "invalid_token", "expired")
    assert await spent(db, claims["jti"]) == 0
