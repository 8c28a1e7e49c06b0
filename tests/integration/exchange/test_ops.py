"""Operations endpoints: health, readiness, metrics, OpenAPI, request ids."""

from __future__ import annotations

import pytest

from tests.support.events import eventually

pytestmark = pytest.mark.integration


async def test_healthz_and_readyz(client, issuer):
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    body = ready.json()
    assert body["status"] == "ready" and body["dependencies"]["database"] == "ok"
    [entry] = [i for i in body["issuers"] if i["url"] == issuer.url]
    assert entry["state"] == "ready"
    public = [i for i in body["issuers"] if i["url"] == "https://token.actions.githubusercontent.com"]
    assert public and public[0]["state"] == "no usable keys"


async def test_readiness_details_are_for_operators_only(client, db, own_issuer, admin_headers):
    """Regression: the unauthenticated /readyz showed each issuer's last_error, which can carry internal
    addresses. The public answer says each issuer's state; the detail needs the admin credential."""
    secret = "connect to 10.20.30.40:8443 refused (internal-jwks.corp.example)"
    await db.execute("UPDATE issuers SET last_error = $2 WHERE id = $1", own_issuer.id, secret)

    async def entry(headers: dict[str, str]) -> dict:
        body = (await client.get("/readyz", headers=headers)).json()
        return next(i for i in body["issuers"] if i["url"] == own_issuer.issuer.url)

    public = await entry({})
    assert set(public) == {"url", "kind", "state"} and secret not in str(public)
    public_text = (await client.get("/readyz")).text
    assert "10.20.30.40" not in public_text and "last_error" not in public_text
    async def detailed() -> bool:  # the key cache reloads on the issuers NOTIFY
        shown = await entry(admin_headers)
        return shown["last_error"] == secret and shown["key_count"] >= 1 and bool(shown["key_ids"])

    await eventually(detailed, "the operator's view to show the issuer's last error", timeout=5)


async def test_metrics_use_bounded_labels_and_never_carry_tokens(repo, client):
    await repo.add_publisher()
    minted = (await repo.exchange(repo.token())).json()
    await client.get(f"/v1/admin/publishers/{'x' * 40}")  # an attacker-chosen path must not become a label
    text = (await client.get("/metrics")).text
    assert 'tpx_exchanges_total{code="issued"}' in text
    assert 'route="/v1/exchange"' in text
    assert 'route="/v1/admin/publishers/{id}"' in text
    assert "x" * 40 not in text
    assert minted["token"] not in text and "tpx_" + minted["token"][4:10] not in text
    assert "tpx_db_pool_connections" in text
    assert f'tpx_issuer_keys{{issuer="{repo.issuer.url}"}}' in text


async def test_request_id_is_echoed_or_generated(client):
    response = await client.get("/healthz", headers={"X-Request-ID": "ci-run-1234-abcd"})
    assert response.headers["x-request-id"] == "ci-run-1234-abcd"
    hostile = await client.get("/healthz", headers={"X-Request-ID": "bad id\twith spaces"})
    assert hostile.headers["x-request-id"] != "bad id\twith spaces"
    assert len(hostile.headers["x-request-id"]) == 32


async def test_openapi_describes_the_native_api(client):
    document = (await client.get("/openapi.json")).json()
    assert document["openapi"].startswith("3.")
    for path in ("/v1/exchange", "/v1/explain", "/v1/revoke", "/v1/introspect", "/v1/admin/issuers",
                 "/v1/admin/publishers", "/v1/admin/tokens", "/healthz", "/readyz"):
        assert path in document["paths"], path
    codes = document["components"]["schemas"]["Problem"]["properties"]["code"]["enum"]
    assert "no_matching_publisher" in codes and "token_reused" in codes


async def test_readiness_turns_false_while_draining(settings, issuer):
    import asyncio
    import socket
    from dataclasses import replace

    import httpx

    from tpx.exchange.service import serve as serve_exchange
    from tests.support.events import eventually

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    stop = asyncio.Event()
    task = asyncio.create_task(serve_exchange(replace(settings, port=port, drain_seconds=3.0), stop))
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
        async def answers() -> bool:
            try:
                return (await http.get("/readyz")).status_code == 200
            except httpx.TransportError:
                return False

        await eventually(answers, "the exchange to be ready")
        stop.set()
        await eventually(lambda: _not_ready(http), "readiness to turn false while draining", timeout=2.5)
        response = await http.get("/readyz")
        assert "the service is shutting down" in response.json()["reasons"]
        assert (await http.get("/healthz")).status_code == 200  # still alive while draining
    await asyncio.wait_for(task, 30)


async def _not_ready(http) -> bool:
    return (await http.get("/readyz")).status_code == 503
