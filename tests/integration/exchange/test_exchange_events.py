"""Exchange events on RabbitMQ, broker and database outages seen from the exchange."""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import replace

import httpx
import pytest

from tpx.core.events import chain
from tpx.core.relay.signal import OutboxSignal
from tpx.core.relay.relay import OutboxRelay
from tpx.exchange.app import create_app
from tests.conftest import ADMIN_TOKEN
from tests.integration.conftest import ADMIN, Repo
from tests.support.events import Consumer, isolated, running
from tests.support.servers import serve
from tests.support.tcp_proxy import TcpProxy, target_of, through

pytestmark = pytest.mark.integration
CE_ATTRIBUTES = {"specversion", "id", "source", "type", "time", "subject", "datacontenttype", "data", "sequence",
                 "chainhash"}


async def outbox_ids(db, since_id: int) -> set[str]:
    rows = await db.fetch("SELECT event_id FROM outbox WHERE id > $1", since_id)
    return {str(row["event_id"]) for row in rows}


async def test_events_arrive_with_documented_fields_and_no_secret(repo, settings, db):
    own = isolated(settings)
    high_water = await db.fetchval("SELECT coalesce(max(id), 0) FROM outbox")
    async with Consumer(own) as consumer, running(OutboxRelay(own, db, OutboxSignal())):
        publisher = await repo.add_publisher(environments=["prod"])
        minted = (await repo.exchange(repo.token())).json()
        denied = await repo.exchange(repo.token(environment="staging"))
        assert denied.status_code == 403
        revoked = await repo.client.post("/v1/revoke", json={"token": minted["token"]})
        assert revoked.status_code == 204
        messages = await consumer.collect(await outbox_ids(db, high_water))

    events = {}
    for message in messages:
        assert message.content_type == "application/cloudevents+json"
        assert message.delivery_mode == 2  # persistent
        body = json.loads(message.body)
        assert message.routing_key == body["type"].removeprefix("dev.tpx.")
        assert minted["token"] not in message.body.decode()
        assert "tpx_" not in message.body.decode()
        events.setdefault(body["type"], []).append(body)

    created = [e for e in events["dev.tpx.publisher.created"] if e["data"]["target"] == publisher["id"]]
    assert created and created[0]["data"]["after"]["package"] == publisher["package"]
    # The actor is an HMAC of the admin credential under the database's own secret, not a bare hash of it.
    key = bytes(await db.fetchval("SELECT value FROM server_secrets WHERE name = 'actor_fingerprint'"))
    assert created[0]["data"]["actor"] == "credential:" + hmac.new(key, ADMIN_TOKEN.encode(), hashlib.sha256).hexdigest()[:12]
    assert created[0]["data"]["actor"] != "credential:" + hashlib.sha256(ADMIN_TOKEN.encode()).hexdigest()[:12]

    [issued] = [e for e in events["dev.tpx.token.issued"] if e["data"]["token_id"] == minted["token_id"]]
    assert set(issued) == CE_ATTRIBUTES
    assert issued["specversion"] == "1.0" and issued["datacontenttype"] == "application/json"
    data = issued["data"]
    assert data["packages"] == minted["packages"] and data["publisher_ids"] == minted["publisher_ids"]
    for field in ("provider", "issuer", "repository", "workflow", "environment", "ref", "sha", "run_id", "actor"):
        assert field in data["ci"], field
    assert data["ci"]["repository"] == repo.repository

    [bound] = [e for e in events["dev.tpx.publisher.bound"] if e["data"]["publisher_id"] == publisher["id"]]
    assert bound["data"]["bound"] == {"repository_owner_id": repo.owner_id, "repository_id": repo.repository_id}

    [denial] = [e for e in events["dev.tpx.exchange.denied"] if e["subject"] == repo.repository]
    assert denial["data"]["code"] == "no_matching_publisher"
    assert denial["data"]["publishers"][0]["failed_checks"] == ["environment"]

    [revocation] = [e for e in events["dev.tpx.token.revoked"] if e["data"]["token_id"] == minted["token_id"]]
    assert revocation["data"]["packages"] == minted["packages"]

    sequences = [int(json.loads(m.body)["sequence"]) for m in messages]
    assert sequences == sorted(sequences)
    everything = [json.loads(m.body) for m in consumer.received]
    report = chain.verify(everything)
    assert report.ok, report.describe()


async def test_unverifiable_garbage_writes_no_event(client, db):
    high_water = await db.fetchval("SELECT coalesce(max(id), 0) FROM outbox")
    for jwt in ("garbage", "a.b.c"):
        assert (await client.post("/v1/exchange", json={"jwt": jwt})).status_code == 400
    assert await outbox_ids(db, high_water) == set()


async def test_exchanges_work_while_the_broker_is_unreachable_and_events_arrive_after(repo, settings, db):
    proxy = TcpProxy(*target_of(settings.amqp_url, 5672))
    await proxy.start()
    own = isolated(settings)
    relay = OutboxRelay(replace(own, amqp_url=through(own.amqp_url, proxy)), db, OutboxSignal())
    try:
        async with Consumer(own) as consumer, running(relay):
            await repo.add_publisher()
            await proxy.cut()
            high_water = await db.fetchval("SELECT coalesce(max(id), 0) FROM outbox")
            minted = []
            for _ in range(5):
                response = await repo.exchange(repo.token())
                assert response.status_code == 200, response.text
                minted.append(response.json()["token_id"])
            written = await outbox_ids(db, high_water)
            issued = await db.fetchval("SELECT count(*) FROM outbox WHERE id > $1 AND type = 'dev.tpx.token.issued'",
                                       high_water)
            assert issued == 5
            await proxy.restore()
            messages = await consumer.collect(written)
        arrived = [json.loads(m.body)["data"]["token_id"] for m in messages
                   if json.loads(m.body)["type"] == "dev.tpx.token.issued"]
        assert sorted(set(arrived)) == sorted(minted)
        first_seen = list(dict.fromkeys(arrived))
        assert first_seen == minted  # in order
        # The chain across the outage is unbroken (first deliveries, in sequence order).
        unique = {}
        for message in consumer.received:
            event = json.loads(message.body)
            unique.setdefault(event["id"], event)
        report = chain.verify(sorted(unique.values(), key=lambda e: e["sequence"]))
        assert report.ok, report.describe()
    finally:
        await proxy.close()


async def test_database_outage_gives_503_never_a_token(settings, oidc_issuer, issuer, db, caplog):
    """A second exchange replica whose database connection goes through a proxy the test cuts.

    Every outage answer carries its request id (body and header), and no exception reaches uvicorn
    (regression: each 503 came back with a null request id, and uvicorn logged a traceback for it)."""
    proxy = TcpProxy(*target_of(settings.database_url, 5432))
    await proxy.start()
    replica_settings = replace(settings, database_url=through(settings.database_url, proxy), db_pool_min=1,
                               db_pool_max=2)
    app = create_app(replica_settings, run_relay=False)
    try:
        async with serve(app) as url, httpx.AsyncClient(base_url=url, timeout=30, limits=httpx.Limits(keepalive_expiry=2)) as http:
            repo = Repo(oidc_issuer, http)
            await repo.add_publisher()
            assert (await http.get("/readyz")).status_code == 200
            await proxy.cut()
            response = await repo.exchange(repo.token())
            assert response.status_code == 503, response.text
            assert response.json()["code"] == "unavailable"
            assert response.headers["retry-after"]
            assert "tpx_" not in response.text
            assert response.json()["request_id"] and response.json()["request_id"] == response.headers["x-request-id"]
            listing = await http.get("/v1/admin/publishers", headers=ADMIN)  # an outage outside the exchange route
            assert listing.status_code == 503 and listing.json()["request_id"] == listing.headers["x-request-id"]
            ready = await http.get("/readyz")
            assert ready.status_code == 503
            assert "database" in ready.json()["reasons"][0]
            await proxy.restore()
            recovered = await repo.exchange(repo.token())
            assert recovered.status_code == 200, recovered.text
    finally:
        await proxy.close()
    assert not [r for r in caplog.records if "Exception in ASGI application" in r.getMessage()]
