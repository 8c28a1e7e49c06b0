"""Counters an operator alerts on count every path that changes what they count."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

pytestmark = pytest.mark.integration


def revoked(reason: str) -> float:
    return REGISTRY.get_sample_value("tpx_tokens_revoked_total", {"reason": reason}) or 0.0


async def test_a_holder_revocation_is_counted_once(repo, client):
    await repo.add_publisher(repository_owner_id=repo.owner_id, repository_id=repo.repository_id)
    token = (await repo.exchange(repo.token())).json()["token"]
    before = revoked("holder")
    assert (await client.post("/v1/revoke", json={"token": token})).status_code == 204
    assert (await client.post("/v1/revoke", json={"token": token})).status_code == 204   # already revoked
    assert revoked("holder") == before + 1


async def test_build_info_names_the_version(client):
    from importlib import metadata
    text = (await client.get("/metrics")).text
    assert f'tpx_build_info{{service="exchange",version="{metadata.version("tpx")}"}} 1.0' in text


async def test_bulk_revocations_and_publisher_deletions_are_counted(repo, client):
    from tests.integration.conftest import ADMIN
    publisher = await repo.add_publisher()
    before = revoked("revocation")
    assert (await repo.exchange(repo.token())).status_code == 200
    response = await client.post("/v1/admin/revocations", headers=ADMIN, json={"repository": repo.repository})
    assert response.status_code == 202 and response.json()["revoked"] == 1
    assert revoked("revocation") == before + 1
    assert (await repo.exchange(repo.token())).status_code == 200
    deleted = await client.delete(f"/v1/admin/publishers/{publisher['id']}", headers=ADMIN)
    assert deleted.json()["revoked_tokens"] == 1
    assert revoked("revocation") == before + 2


def latency_count(route: str, method: str, status: str) -> float:
    return REGISTRY.get_sample_value("tpx_http_request_duration_seconds_count",
                                     {"route": route, "method": method, "status": status}) or 0.0


async def test_the_routes_served_past_the_router_are_timed_under_their_template(repo, client):
    """/v1/exchange and /v1/introspect skip Starlette's router (tpx.exchange.hot_routes); their latency
    still counts under the route template, like every routed request, and a 405 on the same path too."""
    from tests.support.api import introspect
    await repo.add_publisher()
    before = {key: latency_count(*key) for key in [("/v1/exchange", "POST", "200"), ("/v1/exchange", "POST", "409"),
                                                  ("/v1/introspect", "POST", "200"), ("/v1/exchange", "GET", "405")]}
    id_token = repo.token()
    token = (await repo.exchange(id_token)).json()["token"]
    assert (await repo.exchange(id_token)).status_code == 409
    assert (await introspect(client, token))["active"] is True
    assert (await client.get("/v1/exchange")).status_code == 405
    assert {key: latency_count(*key) - count for key, count in before.items()} == {key: 1.0 for key in before}
