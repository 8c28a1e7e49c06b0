"""Key rotation seen from the exchange, with the real jwks-refresher running.

Runs in a database of its own (the public issuers disabled: no internet here),
with the exchange app and the refresher service side by side, as `tpx dev` runs them.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace

import asyncpg
import httpx
import pytest

from tpx.core.db.migrate import migrate
from tpx.exchange.app import create_app
from tpx.jwks_refresher.service import serve as serve_refresher
from tests.conftest import ADMIN_TOKEN, PG_HOST
from tests.integration.conftest import Repo
from tests.support.amqp import derived_prefix
from tests.support.events import eventually
from tests.support.oidc_issuer import LoopbackIssuer, new_rsa_key
from tests.support.servers import serve

pytestmark = pytest.mark.integration
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


class Stack:
    def __init__(self, http: httpx.AsyncClient, app, db: asyncpg.Pool) -> None:
        self.http, self.app, self.db = http, app, db

    async def register(self, issuer: LoopbackIssuer) -> str:
        response = await self.http.post("/v1/admin/issuers", json={"url": issuer.url, "kind": "github"}, headers=ADMIN)
        assert response.status_code == 201, response.text
        return response.json()["issuer"]["id"]

    async def key_ids(self, issuer_id: str) -> list[str]:
        return (await self.http.get(f"/v1/admin/issuers/{issuer_id}", headers=ADMIN)).json()["issuer"]["key_ids"]

    async def cooldown_passed(self, issuer_id: str) -> None:
        """Refresh requests inside the cluster-wide cooldown after a fetch are dropped by design
        (floods of unknown kids make one fetch); wait it out before asking for a refresh."""
        async def passed() -> bool:
            return await self.db.fetchval(
                "SELECT refresh_attempted_at IS NULL OR refresh_attempted_at < now() - make_interval(secs => $2) "
                "FROM issuers WHERE id = $1", uuid.UUID(issuer_id),
                self.app.state.tpx.settings.jwks_refresh_cooldown_seconds)
        await eventually(passed, "the refresh cooldown to pass")

    def cached_kids(self, url: str) -> set[str]:
        entry = self.app.state.tpx.keycache.snapshot.issuers.get(url)
        return set(entry.keys) if entry else set()


@pytest.fixture(scope="module")
async def stack(settings):
    name = f"tpx_rotation_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(f"{PG_HOST}/postgres")
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = f"{PG_HOST}/{name}"
    conn = await asyncpg.connect(url)
    await migrate(conn)
    await conn.execute("UPDATE issuers SET enabled = false")
    await conn.close()
    own = replace(settings, database_url=url, jwks_refresh_cooldown_seconds=0.2, keys_wait_seconds=3.0,
                  amqp_prefix=derived_prefix(settings.amqp_prefix, "rot"))
    stop = asyncio.Event()
    refresher = asyncio.create_task(serve_refresher(own, stop))
    app = create_app(own, run_relay=False)
    db = await asyncpg.create_pool(url, min_size=1, max_size=2)
    try:
        async with serve(app) as base, httpx.AsyncClient(base_url=base, timeout=30, limits=httpx.Limits(keepalive_expiry=2)) as http:
            yield Stack(http, app, db)
    finally:
        stop.set()
        await asyncio.wait_for(refresher, 30)
        await db.close()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
        import aio_pika

        connection = await aio_pika.connect(own.amqp_url)
        async with connection:
            await (await connection.channel()).queue_delete(own.audit_stream)
            await (await connection.channel()).exchange_delete(own.events_exchange)


@pytest.fixture(scope="module")
async def idp(stack):
    issuer = LoopbackIssuer()
    async with serve(issuer.app) as url:
        issuer.url = url
        issuer_id = await stack.register(issuer)
        await eventually(lambda: stack.cached_kids(url) == {issuer.signing_key.kid}, "the first keys")
        yield issuer, issuer_id


async def test_a_new_signing_key_works_on_its_first_use(stack, idp):
    issuer, issuer_id = idp
    repo = Repo(issuer, stack.http)
    await repo.add_publisher()
    assert (await repo.exchange(repo.token())).status_code == 200
    await stack.cooldown_passed(issuer_id)
    issuer.keys.insert(0, new_rsa_key())  # the IdP starts signing with a key tpx has never seen
    response = await repo.exchange(repo.token())
    assert response.status_code == 200, response.text


async def test_a_key_removed_upstream_stops_verifying(stack, idp):
    issuer, issuer_id = idp
    repo = Repo(issuer, stack.http)
    await repo.add_publisher()
    removed = issuer.keys.pop()  # the oldest key leaves the IdP's JWKS
    stale_token = issuer.mint(repo.claims(), key=removed)
    # Any refresh (here: asked for by a token with an unknown kid) drops it everywhere.
    await stack.cooldown_passed(issuer_id)
    unknown = await repo.exchange(issuer.mint(repo.claims(), key=new_rsa_key()))
    assert unknown.status_code == 401
    await eventually(lambda: removed.kid not in stack.cached_kids(issuer.url), "the removed key to leave the cache")
    assert removed.kid not in await stack.key_ids(issuer_id)
    refused = await repo.exchange(stale_token)
    assert refused.status_code == 401 and refused.json()["code"] == "invalid_token"


async def test_idp_down_with_warm_keys_keeps_exchanging(stack, idp):
    issuer, _ = idp
    repo = Repo(issuer, stack.http)
    await repo.add_publisher()
    issuer.available = False
    try:
        assert (await repo.exchange(repo.token())).status_code == 200
    finally:
        issuer.available = True


async def test_idp_down_from_cold_fails_closed(stack, idp):
    warm, warm_id = idp
    cold = LoopbackIssuer(available=False)
    async with serve(cold.app) as url:
        cold.url = url
        cold_id = await stack.register(cold)
        await eventually(lambda: url in stack.app.state.tpx.keycache.snapshot.issuers, "the cold issuer in the cache")
        repo = Repo(cold, stack.http)
        await repo.add_publisher()
        response = await repo.exchange(repo.token())
        assert response.status_code == 503, response.text
        assert response.json()["code"] == "keys_unavailable" and response.headers["retry-after"]
        issuers = (await stack.http.get("/v1/admin/issuers", headers=ADMIN)).json()["issuers"]
        [entry] = [i for i in issuers if i["id"] == cold_id]
        await eventually(lambda: _last_error(stack, cold_id), "the refresher to record why")
        # With only the cold issuer enabled, the service is not ready and says why.
        await stack.http.patch(f"/v1/admin/issuers/{warm_id}", json={"enabled": False}, headers=ADMIN)
        try:
            await eventually(lambda: not stack.app.state.tpx.keycache.snapshot.issuers[warm.url].enabled, "disabled")
            ready = await stack.http.get("/readyz", headers=ADMIN)  # the operator's view carries the error
            assert ready.status_code == 503
            assert any("no enabled issuer has usable keys" in reason for reason in ready.json()["reasons"])
            [state] = [i for i in ready.json()["issuers"] if i["url"] == url]
            assert state["state"] == "no usable keys" and state["last_error"]
        finally:
            await stack.http.patch(f"/v1/admin/issuers/{warm_id}", json={"enabled": True}, headers=ADMIN)
            await stack.http.patch(f"/v1/admin/issuers/{cold_id}", json={"enabled": False}, headers=ADMIN)
        assert entry["keys_fetched_at"] is None


async def _last_error(stack: Stack, issuer_id: str) -> bool:
    issuer = (await stack.http.get(f"/v1/admin/issuers/{issuer_id}", headers=ADMIN)).json()["issuer"]
    return bool(issuer["last_error"])


async def test_stale_keys_fail_closed(stack, idp):
    issuer, issuer_id = idp
    repo = Repo(issuer, stack.http)
    await repo.add_publisher()
    await stack.db.execute("UPDATE issuers SET keys_fetched_at = now() - interval '2 days' WHERE id = $1",
                           uuid.UUID(issuer_id))
    await eventually(lambda: _stale(stack, issuer.url), "the exchange to see the old fetch time")
    response = await repo.exchange(repo.token())
    assert response.status_code == 503 and response.json()["code"] == "keys_unavailable"
    assert "staleness" in response.json()["detail"]
    ready = (await stack.http.get("/readyz")).json()
    [state] = [i for i in ready["issuers"] if i["url"] == issuer.url]
    assert state["state"] == "stale keys"


def _stale(stack: Stack, url: str) -> bool:
    entry = stack.app.state.tpx.keycache.snapshot.issuers[url]
    return entry.keys_fetched_at is not None and entry.keys_fetched_at.year and (
        __import__("datetime").datetime.now(__import__("datetime").timezone.utc) - entry.keys_fetched_at
    ).total_seconds() > 86400


async def test_a_key_rotated_right_after_a_fetch_works_on_first_use(stack, idp):
    """Regressions: a refresh request inside the cooldown was dropped (now answered when the cooldown
    ends), and an exchange that re-requested a refresh did not wait for it (it measured its wait
    from the previous request). Either made a key the IdP started using just after a fetch fail."""
    issuer, issuer_id = idp
    repo = Repo(issuer, stack.http)
    await repo.add_publisher()
    await stack.cooldown_passed(issuer_id)
    before = issuer.jwks_requests
    assert (await repo.exchange(issuer.mint(repo.claims(), key=new_rsa_key()))).status_code == 401  # a fetch now
    await eventually(lambda: issuer.jwks_requests > before, "the fetch")
    issuer.keys.insert(0, new_rsa_key())  # rotated right after that fetch, inside the cooldown
    response = await repo.exchange(repo.token())
    assert response.status_code == 200, response.text


async def test_a_request_during_an_older_fetch_is_answered_after_it(stack, idp):
    """Regression: a refresh request that arrived while a fetch was in flight was folded into it,
    though that fetch may have read the key set before the IdP rotated."""
    issuer, issuer_id = idp
    repo = Repo(issuer, stack.http)
    await repo.add_publisher()
    await stack.cooldown_passed(issuer_id)
    issuer.jwks_gate = asyncio.Event()  # the next fetch reads the old set, then waits on the wire
    before = issuer.jwks_requests
    try:
        unknown = asyncio.create_task(repo.exchange(issuer.mint(repo.claims(), key=new_rsa_key())))
        await eventually(lambda: issuer.jwks_requests > before, "a fetch to be in flight")
        issuer.keys.insert(0, new_rsa_key())  # the IdP rotates while that fetch is on the wire
        cache = stack.app.state.tpx.keycache
        asked = cache._refresh_requested.get(uuid.UUID(issuer_id))
        loop = asyncio.get_running_loop()
        cooldown = stack.app.state.tpx.settings.jwks_refresh_cooldown_seconds
        # Past the exchange's own cooldown, so it sends a second request instead of joining the first.
        await eventually(lambda: loop.time() - asked >= cooldown, "the exchange's cooldown to pass")
        rotated = asyncio.create_task(repo.exchange(repo.token()))
        await eventually(lambda: cache._refresh_requested.get(uuid.UUID(issuer_id)) != asked,
                         "the exchange to ask for a refresh while the first fetch is in flight")
    finally:
        issuer.jwks_gate.set()
        issuer.jwks_gate = None
    assert (await unknown).status_code == 401
    response = await rotated
    assert response.status_code == 200, response.text

