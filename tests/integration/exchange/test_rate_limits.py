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


async def test_replays_do_not_use_up_the_publishers_allowance(limited):
    """A captured, already-used ID token replayed from several addresses is refused as reused each time,
    and the real publisher can still exchange: only exchanges that pass verification and the replay
    check are charged to the publisher."""
    await limited.add_publisher()
    captured = limited.token()
    assert (await limited.client.post("/v1/exchange", json={"jwt": captured},
                                      headers={"X-Forwarded-For": "198.51.100.10"})).status_code == 200
    for n in range(6):
        replay = await limited.client.post("/v1/exchange", json={"jwt": captured},
                                           headers={"X-Forwarded-For": f"192.0.2.{n + 1}"})
        assert replay.status_code == 409, replay.text
    fresh = await limited.client.post("/v1/exchange", json={"jwt": limited.token()},
                                      headers={"X-Forwarded-For": "198.51.100.10"})
    assert fresh.status_code == 200, fresh.text
    spent = await limited.client.post("/v1/exchange", json={"jwt": limited.token()},
                                      headers={"X-Forwarded-For": "198.51.100.10"})
    assert spent.status_code == 429, "two exchanges a minute: the third is over the publisher's budget"


async def test_explain_counts_against_the_failure_budget(limited):
    headers = {"X-Forwarded-For": "203.0.113.20"}
    for _ in range(3):
        assert (await limited.client.post("/v1/explain", json={"jwt": "garbage"}, headers=headers)).status_code == 400
    refused = await limited.client.post("/v1/explain", json={"jwt": "garbage"}, headers=headers)
    assert refused.status_code == 429 and refused.json()["code"] == "rate_limited"
    # Exchange and explain share one budget per address.
    assert (await limited.client.post("/v1/exchange", json={"jwt": "garbage"}, headers=headers)).status_code == 429


async def test_every_forwarded_for_line_counts_and_the_right_most_untrusted_hop_is_the_client(limited):
    """HAProxy's `option forwardfor` adds its own header line after the client's: the client's line must
    not pick the key."""
    for n in range(3):
        headers = [("X-Forwarded-For", f"10.9.9.{n}"), ("X-Forwarded-For", "203.0.113.30")]
        assert (await limited.client.post("/v1/exchange", json={"jwt": "garbage"}, headers=headers)).status_code == 400
    refused = await limited.client.post("/v1/exchange", json={"jwt": "garbage"},
                                        headers=[("X-Forwarded-For", "10.9.9.99"), ("X-Forwarded-For", "203.0.113.30")])
    assert refused.status_code == 429


async def test_ipv6_clients_are_limited_by_their_64_bit_prefix(limited):
    for n in range(3):
        headers = {"X-Forwarded-For": f"2001:db8:7:7::{n + 1:x}"}
        assert (await limited.client.post("/v1/exchange", json={"jwt": "garbage"}, headers=headers)).status_code == 400
    same_prefix = await limited.client.post("/v1/exchange", json={"jwt": "garbage"},
                                            headers={"X-Forwarded-For": "2001:db8:7:7:ffff:ffff:ffff:ffff"})
    assert same_prefix.status_code == 429
    other_prefix = await limited.client.post("/v1/exchange", json={"jwt": "garbage"},
                                             headers={"X-Forwarded-For": "2001:db8:7:8::1"})
    assert other_prefix.status_code == 400
