"""Rate limits: failed exchanges per client address, exchanges per publisher, trusted proxies."""

from __future__ import annotations

from dataclasses import replace

import httpx
import pytest

from tpx.exchange.app import create_app
from tests.integration.conftest import Repo
from tests.support.servers import serve

pytestmark = pytest.mark.integration


@pytest.fixture
async def limited(settings, issuer):
    app = create_app(replace(settings, rate_failed_per_minute=3, rate_publisher_per_minute=2,
                             trusted_proxies=("127.0.0.1/32",)), run_relay=False)
    async with serve(app) as url, httpx.AsyncClient(base_url=url, timeout=30, limits=httpx.Limits(keepalive_expiry=2)) as http:
        yield Repo(issuer, http)


async def test_failed_exchanges_per_client_address(limited):
    headers = {"X-Forwarded-For": "203.0.113.7"}
    for _ in range(3):
        response = await limited.client.post("/v1/exchange", json={"jwt": "garbage"}, headers=headers)
        assert response.status_code == 400
    refused = await limited.client.post("/v1/exchange", json={"jwt": "garbage"}, headers=headers)
    assert refused.status_code == 429
    assert refused.json()["code"] == "rate_limited"
    assert int(refused.headers["retry-after"]) >= 1
    # Another client address (as told by the trusted proxy) is not affected.
    other = await limited.client.post("/v1/exchange", json={"jwt": "garbage"}, headers={"X-Forwarded-For": "203.0.113.8"})
    assert other.status_code == 400


async def test_exchanges_per_publisher_and_no_jti_consumed(limited, db):
    await limited.add_publisher()
    headers = {"X-Forwarded-For": "198.51.100.1"}
    for _ in range(2):
        assert (await limited.client.post("/v1/exchange", json={"jwt": limited.token()}, headers=headers)).status_code == 200
    claims = limited.claims()
    refused = await limited.client.post("/v1/exchange", json={"jwt": limited.issuer.mint(claims)}, headers=headers)
    assert refused.status_code == 429 and refused.json()["code"] == "rate_limited"
    assert await db.fetchval("SELECT count(*) FROM used_jtis WHERE jti = $1", claims["jti"]) == 0
