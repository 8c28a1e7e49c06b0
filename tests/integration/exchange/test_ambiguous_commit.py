"""An exchange whose connection dies after the mint was sent: tpx finds out whether it committed.

Regression: with the connection gone after COMMIT, the exchange answered 503 though its token was
committed; the CI job's retry got `409 token_reused`, so it never received a token for an ID token that
was spent. The process still holds the secret it generated, so it looks the token up on a fresh
connection (once the old session is over) and answers 200 if it exists.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import replace

import httpx
import pytest

from tpx.core import tokens
from tpx.core.db import publishers as publisher_store
from tpx.core.db.pool import connect
from tpx.core.errors import Problem
from tpx.exchange.app import create_app
from tpx.exchange.group_commit import OnConnection
from tpx.exchange.minting import AmbiguousMint, decide, resolve_ambiguous, write
from tpx.exchange.verification import verify_id_token
from tests.integration.conftest import Repo
from tests.support.events import eventually
from tests.support.servers import serve
from tests.support.tcp_proxy import TcpProxy, target_of, through

pytestmark = pytest.mark.integration


@pytest.fixture
async def proxy(settings):
    async with TcpProxy(*target_of(settings.database_url, 5432)) as proxy:
        yield proxy


async def decided(conn, exchange_app, settings, repo):
    claims = repo.claims()
    verified = await verify_id_token(repo.issuer.mint(claims), exchange_app.state.tpx.keycache, settings)
    candidates = await publisher_store.candidates(conn, verified.issuer.id, verified.identity.repository_key)
    return claims, decide(verified, candidates, settings)


async def test_a_mint_that_committed_before_the_connection_died_is_answered(repo, db, exchange_app, settings, proxy):
    await repo.add_publisher(repository_owner_id=repo.owner_id, repository_id=repo.repository_id)
    conn = await connect(replace(settings, database_url=through(settings.database_url, proxy)))
    try:
        _, first = await decided(conn, exchange_app, settings, repo)
        assert await write(OnConnection(conn), settings, first) is not None  # the mint statement is now prepared here
        claims, decision = await decided(conn, exchange_app, settings, repo)
        proxy.lose_next_reply()  # the answer to the mint's execution (and its commit)
        with pytest.raises(AmbiguousMint) as caught:
            await write(OnConnection(conn), settings, decision)
    finally:
        conn.terminate()
    minted = await resolve_ambiguous(db, caught.value, settings)
    assert tokens.is_well_formed(minted.token) and minted.packages == decision.packages
    row = await db.fetchrow("SELECT token_hash FROM tokens WHERE id = $1", uuid.UUID(minted.token_id))
    assert bytes(row["token_hash"]) == tokens.lookup_key(minted.token)
    assert await db.fetchval("SELECT count(*) FROM used_jtis WHERE jti = $1", claims["jti"]) == 1


async def test_a_mint_whose_session_lives_on_behind_a_silent_network_is_answered(repo, db, exchange_app, settings,
                                                                              proxy):
    """Regression: behind a network that drops everything, the server committed the mint and its session
    waits on a socket that never errors (until TCP keepalive, hours by default). Resolution waited for that
    session to end, gave up after RESOLVE_SECONDS and answered 503; the retry got 409 token_reused. The old
    session is ended from a fresh connection instead, and then the token is found."""
    await repo.add_publisher(repository_owner_id=repo.owner_id, repository_id=repo.repository_id)
    conn = await connect(replace(settings, database_url=through(settings.database_url, proxy)), command_timeout=1)
    try:
        _, first = await decided(conn, exchange_app, settings, repo)
        assert await write(OnConnection(conn), settings, first) is not None  # the mint statement is now prepared here
        claims, decision = await decided(conn, exchange_app, settings, repo)
        proxy.swallow_next_reply()  # the answer to the mint's execution (and its commit), and all after it
        with pytest.raises(AmbiguousMint) as caught:
            await write(OnConnection(conn), settings, decision)
        # The client gave up on the statement, but nothing tells the server: its session lives on.
        started = time.monotonic()
        minted = await resolve_ambiguous(db, caught.value, settings)
        assert time.monotonic() - started < 3
    finally:
        conn.terminate()
    row = await db.fetchrow("SELECT token_hash FROM tokens WHERE id = $1", uuid.UUID(minted.token_id))
    assert bytes(row["token_hash"]) == tokens.lookup_key(minted.token)
    assert await db.fetchval("SELECT count(*) FROM used_jtis WHERE jti = $1", claims["jti"]) == 1


async def test_a_mint_that_never_reached_the_database_is_a_503_and_the_id_token_still_works(repo, db, exchange_app,
                                                                                        settings, proxy):
    await repo.add_publisher(repository_owner_id=repo.owner_id, repository_id=repo.repository_id)
    conn = await connect(replace(settings, database_url=through(settings.database_url, proxy)))
    try:
        claims, decision = await decided(conn, exchange_app, settings, repo)
        proxy.cut_after(0)  # the statement never arrives
        with pytest.raises(AmbiguousMint) as caught:
            await write(OnConnection(conn), settings, decision)
    finally:
        conn.terminate()
    with pytest.raises(Problem) as refused:
        await resolve_ambiguous(db, caught.value, settings)
    assert refused.value.code == "unavailable" and refused.value.retry_after
    assert await db.fetchval("SELECT count(*) FROM used_jtis WHERE jti = $1", claims["jti"]) == 0
    assert (await repo.exchange(repo.issuer.mint(claims))).status_code == 200  # the retry of the same ID token


async def test_the_exchange_route_answers_200_for_a_mint_whose_answer_was_lost(settings, issuer, proxy):
    app = create_app(replace(settings, database_url=through(settings.database_url, proxy), db_pool_min=1,
                             db_pool_max=1), run_relay=False)
    async with serve(app) as url, httpx.AsyncClient(base_url=url, timeout=30,
                                                     limits=httpx.Limits(keepalive_expiry=2)) as http:
        repo = Repo(issuer, http)
        cache = app.state.tpx.candidates
        await asyncio.wait_for(app.state.tpx.listener.healthy.wait(), 10)  # its catch-up drops the cache
        generation = cache.generation
        await repo.add_publisher(repository_owner_id=repo.owner_id, repository_id=repo.repository_id)
        await eventually(lambda: cache.generation > generation, "the publisher's NOTIFY to reach the replica")
        # One exchange caches the candidates and prepares the mint statement on the pool's one connection.
        assert (await repo.exchange(repo.token())).status_code == 200
        proxy.lose_next_reply()  # the next server answer on the pool's one connection: the mint's
        claims = repo.claims()
        response = await repo.exchange(repo.issuer.mint(claims))
        assert response.status_code == 200, response.text
        assert tokens.is_well_formed(response.json()["token"])
        again = await repo.exchange(repo.issuer.mint(claims))
        assert again.status_code == 409
