"""The event catalogue against the real system: every event type, emitted by the real code
paths (exchange, admin API, revocations, revoker, jwks-refresher), matches its schema.

The first test drives every type and validates every outbox row it wrote (the
relay is not running, so rows get a stand-in sequence and chainhash, as the
relay would add them). The second runs the relay and validates the events as a
consumer receives them from RabbitMQ, with their real sequence and chainhash.
Neither event body may contain a minted token or a raw ID token.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest

from tpx.core.events import chain, schemas
from tpx.core.events import types as event_types
from tpx.core.events.cloudevents import to_cloudevent
from tpx.core.relay.signal import OutboxSignal
from tpx.core.relay.relay import OutboxRelay
from tpx.jwks_refresher.refresher import JwksRefresher
from tpx.revoker.consumer import RuleApplier
from tpx.revoker.sweeper import Sweeper
from tpx.core.db import revocations as revocation_store
from tests.integration.conftest import ADMIN, Repo
from tests.support.events import Consumer, isolated, running
from tests.support.oidc_issuer import LoopbackIssuer
from tests.support.servers import serve

pytestmark = pytest.mark.integration

# Types this module cannot drive, with the reason. Every type is driven today.
NOT_DRIVEN: dict[str, str] = {}

FAKE_CHAINHASH = bytes(32)


class Secrets:
    """Every minted token and raw ID token of a test, to prove no event carries one."""

    def __init__(self) -> None:
        self.values: list[str] = []

    def add(self, value: str) -> str:
        self.values.append(value)
        if value.count(".") == 2:  # a JWT: its signature alone must not leak either
            self.values.append(value.rsplit(".", 1)[1])
        return value

    def assert_absent(self, text: str, what: str) -> None:
        for value in self.values:
            assert value not in text, f"{what} contains a secret ({value[:8]}...)"


async def exchange(repo: Repo, secrets: Secrets, **claims: Any) -> dict[str, Any]:
    response = await repo.exchange(secrets.add(repo.token(**claims)))
    assert response.status_code == 200, response.text
    body = response.json()
    secrets.add(body["token"])
    return body


async def admin(client, method: str, path: str, expect: int, **kwargs: Any) -> Any:
    response = await client.request(method, path, headers=ADMIN, **kwargs)
    assert response.status_code == expect, response.text
    return response.json() if response.content else None


async def rows_since(db, high_water: int) -> list[dict[str, Any]]:
    rows = await db.fetch(
        "SELECT id, event_id, type, source, subject, time, data, sequence, chainhash FROM outbox WHERE id > $1 "
        "ORDER BY id", high_water)
    return [dict(row) for row in rows]


def as_published(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows as CloudEvents; rows the relay has not numbered yet get a stand-in sequence and chainhash."""
    events = []
    for n, row in enumerate(rows, start=1):
        if row["sequence"] is None:
            row = {**row, "sequence": 10**12 + n}
        if row["chainhash"] is None:
            row = {**row, "chainhash": FAKE_CHAINHASH}
        events.append(to_cloudevent(row))
    return events


async def test_every_event_type_is_emitted_and_matches_its_schema(repo, client, db, settings, monkeypatch):
    secrets = Secrets()
    high_water = await db.fetchval("SELECT coalesce(max(id), 0) FROM outbox")

    # Exchange: a publisher without pinned ids or environments; the first exchange binds the ids
    # (publisher.bound) and, coming from the "prod" environment, gets an unpinned-environment notice.
    publisher = await repo.add_publisher(permissions=["publish-update", "publish-new"])  # publisher.created
    package = publisher["package"]
    first = await exchange(repo, secrets)  # token.issued + publisher.bound + exchange.environment_unpinned
    to_expire = await exchange(repo, secrets, environment=None)  # token.issued on the one-statement path
    batch = [await exchange(repo, secrets) for _ in range(2)]
    by_id = await exchange(repo, secrets)

    # Denial of a verified identity: a workflow the publisher does not name.
    denied = await repo.exchange(secrets.add(repo.token(workflow="deploy.yml")))
    assert denied.status_code == 403, denied.text  # exchange.denied

    # The holder revokes a token.
    revoked = await client.post("/v1/revoke", headers={"Authorization": f"Bearer {first['token']}"})
    assert revoked.status_code == 204, revoked.text  # token.revoked (no revocation_id)

    # A token reaches its expiry: the revoker's sweep announces it.
    await db.execute("UPDATE tokens SET issued_at = now() - interval '1 hour', "
                     "expires_at = now() - interval '1 second' WHERE id = $1", uuid.UUID(to_expire["token_id"]))
    signal = OutboxSignal()
    applier = RuleApplier(db, signal, stopping=asyncio.Event())
    sweeper = Sweeper(settings, db, signal, applier, stale_rule_seconds=10 * 365 * 86400)  # no other rule resumed
    assert (await sweeper.sweep_once())["tokens_expired"] >= 1  # token.expired

    # A small admin revocation is done within the call (token.revoked with revocation_id,
    # revocation.completed from the exchange).
    done = await admin(client, "POST", "/v1/admin/revocations", 202, json={"token_id": by_id["token_id"]})
    assert (done["status"], done["revoked"]) == ("done", 1), done
    # One larger than a batch stays pending (revocation.requested) until the revoker's applier
    # finishes it (token.revoked, revocation.completed from the revoker).
    monkeypatch.setattr(revocation_store, "BATCH_SIZE", 1)
    pending = await admin(client, "POST", "/v1/admin/revocations", 202,
                          json={"package": package, "reason": "runner compromised"})
    assert (pending["status"], pending["revoked"]) == ("pending", 1), pending
    outcome = await applier.run(uuid.UUID(pending["revocation_id"]))
    assert outcome.value == "done"
    monkeypatch.undo()

    # The publisher goes: publisher.deleted, with its (now empty) publisher revocation completing at once.
    deleted = await admin(client, "DELETE", f"/v1/admin/publishers/{publisher['id']}", 200)
    assert deleted["revocation"]["status"] == "done"

    # Issuers: register one, let the jwks-refresher fetch its keys (issuer.keys_rotated, one key
    # skipped), change it, delete it.
    idp = LoopbackIssuer(extra_jwks_keys=[{"kty": "oct", "kid": "symmetric", "k": "c2VjcmV0"}])
    async with serve(idp.app) as url:
        idp.url = url
        created = (await admin(client, "POST", "/v1/admin/issuers", 201,
                               json={"url": url, "kind": "github"}))["issuer"]  # issuer.created
        refresher = JwksRefresher(settings, db)
        assert await refresher.refresh_issuer(created["id"]) is True
        assert refresher.rotations_total == 1  # issuer.keys_rotated
        await admin(client, "PATCH", f"/v1/admin/issuers/{created['id']}", 200,
                    json={"enabled": False, "allowed_packages": ["acme-*"]})  # issuer.updated
        await admin(client, "DELETE", f"/v1/admin/issuers/{created['id']}", 204)  # issuer.deleted

    rows = await rows_since(db, high_water)
    events = as_published(rows)
    seen: dict[str, list[dict[str, Any]]] = {}
    failures = []
    for event in events:
        seen.setdefault(event["type"], []).append(event)
        try:
            schemas.validate(event)
        except schemas.EventSchemaError as exc:
            failures.append(f"{exc}\n  event: {json.dumps(event)[:2000]}")
        secrets.assert_absent(json.dumps(event), f"the {event['type']} event {event['id']}")
    assert not failures, "\n".join(failures)

    missing = set(schemas.all_types()) - set(seen) - set(NOT_DRIVEN)
    assert not missing, f"never emitted: {sorted(missing)}"
    assert not set(NOT_DRIVEN) - set(schemas.all_types())

    # The catalogue's distinctions hold for the events this test caused.
    revocations = [e["data"] for e in seen[event_types.TOKEN_REVOKED]]
    holder = [d for d in revocations if d["token_id"] == first["token_id"]]
    assert holder and "revocation_id" not in holder[0] and holder[0]["reason"] == "revoked by holder"
    by_rule = {d["token_id"]: d for d in revocations if d.get("revocation_id") == pending["revocation_id"]}
    assert set(by_rule) == {t["token_id"] for t in batch}
    assert {e["source"] for e in seen[event_types.TOKEN_REVOKED]} == {"urn:tpx:exchange", "urn:tpx:revoker"}
    assert {e["source"] for e in seen[event_types.REVOCATION_COMPLETED]} >= {"urn:tpx:exchange", "urn:tpx:revoker"}
    [requested] = [e for e in seen[event_types.REVOCATION_REQUESTED] if e["subject"] == pending["revocation_id"]]
    assert requested["data"]["selector"] == {"package": package}
    [expired] = [e for e in seen[event_types.TOKEN_EXPIRED] if e["subject"] == to_expire["token_id"]]
    assert expired["source"] == "urn:tpx:revoker" and expired["data"]["ci"]["environment"] is None
    [rotated] = [e for e in seen[event_types.ISSUER_KEYS_ROTATED] if e["subject"] == created["id"]]
    assert rotated["data"]["skipped"] and rotated["data"]["added"] == [idp.keys[0].kid]
    [bound] = [e for e in seen[event_types.PUBLISHER_BOUND] if e["subject"] == publisher["id"]]
    assert bound["data"]["bound"] == {"repository_owner_id": repo.owner_id, "repository_id": repo.repository_id}
    [unpinned] = [e for e in seen[event_types.EXCHANGE_ENVIRONMENT_UNPINNED]
                  if e["data"]["token_id"] == first["token_id"]]
    assert unpinned["data"]["environment"] == "prod"
    [denial] = [e for e in seen[event_types.EXCHANGE_DENIED] if e["subject"] == repo.repository]
    assert denial["data"]["publishers"][0]["failed_checks"] == ["workflow"]
    for event_type in (event_types.ISSUER_CREATED, event_types.ISSUER_UPDATED, event_types.ISSUER_DELETED):
        assert [e for e in seen[event_type] if e["subject"] == created["id"]], event_type


async def test_published_events_validate_as_consumers_receive_them(repo, settings, db):
    """With the relay running: the bodies on RabbitMQ, real sequence and chainhash included."""
    secrets = Secrets()
    own = isolated(settings)
    high_water = await db.fetchval("SELECT coalesce(max(id), 0) FROM outbox")
    async with Consumer(own) as consumer, running(OutboxRelay(own, db, OutboxSignal())):
        publisher = await repo.add_publisher()
        minted = await exchange(repo, secrets)
        assert (await repo.exchange(secrets.add(repo.token(workflow="deploy.yml")))).status_code == 403
        revoked = await repo.client.post("/v1/revoke", json={"token": minted["token"]})
        assert revoked.status_code == 204
        await repo.client.delete(f"/v1/admin/publishers/{publisher['id']}", headers=ADMIN)
        ids = {str(row["event_id"]) for row in await rows_since(db, high_water)}
        messages = await consumer.collect(ids)

    bodies = [json.loads(message.body) for message in messages]
    assert {body["type"] for body in bodies} == {
        event_types.PUBLISHER_CREATED, event_types.TOKEN_ISSUED, event_types.PUBLISHER_BOUND,
        event_types.EXCHANGE_ENVIRONMENT_UNPINNED, event_types.EXCHANGE_DENIED, event_types.TOKEN_REVOKED,
        event_types.PUBLISHER_DELETED, event_types.REVOCATION_COMPLETED}
    for message, body in zip(messages, bodies):
        secrets.assert_absent(message.body.decode(), f"the {body['type']} message")
        schemas.validate(body)
        assert message.routing_key == body["type"].removeprefix("dev.tpx.")
    report = chain.verify(bodies)
    assert report.ok, report.describe()
