"""Revocations end to end: the admin API, the rule check in introspection, and the revoker
(consumer, sweeper, drain) against the real PostgreSQL and RabbitMQ.

Tests that run the revoker give it an AMQP prefix of their own and delete what it
declared. The database is shared by the session, so assertions filter by the ids
each test created. Waiting is always a bounded poll of a condition, never a sleep.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any, AsyncIterator
from urllib.parse import urlsplit

import aio_pika
import asyncpg
import pytest

from tpx.core import tokens
from tpx.core.config import Settings
from tpx.core.events import types
from tpx.core.relay.signal import OutboxSignal
from tpx.revoker.consumer import DELIVERY_LIMIT, RuleApplier, Topology, declare
from tpx.revoker.service import Revoker
from tpx.revoker.sweeper import Sweeper
from tpx.core.db import revocations as revocation_store
from tpx.core.db import tokens as token_store
from tpx.core.db.revocations import Selector
from tests.conftest import INTROSPECTION_TOKEN
from tests.integration.conftest import ADMIN
from tests.support.amqp import derived_prefix
from tests.support.tcp_proxy import TcpProxy, through

from tests.support.events import eventually

pytestmark = pytest.mark.integration

INTROSPECT = {"Authorization": f"Bearer {INTROSPECTION_TOKEN}"}
WAIT = 20.0




# -- helpers ----------------------------------------------------------------------




async def active(client, token: str) -> bool:
    response = await client.post("/v1/introspect", json={"token": token}, headers=INTROSPECT)
    assert response.status_code == 200, response.text
    return response.json()["active"]


async def active_count(db: asyncpg.Pool, raw: list[str]) -> int:
    """How many of `raw` introspection would call active (its own query; HTTP is checked on samples)."""
    async with db.acquire() as conn:
        active = await token_store.active_by_keys(conn, [tokens.lookup_key(t) for t in raw])
    return sum(tokens.lookup_key(t) in active for t in raw)


async def mint(repo, **claims: Any) -> dict[str, Any]:
    response = await repo.exchange(repo.token(**claims))
    assert response.status_code == 200, response.text
    return response.json()


async def revoke(client, body: dict[str, Any], expect: int = 202) -> dict[str, Any]:
    response = await client.post("/v1/admin/revocations", json=body, headers=ADMIN)
    assert response.status_code == expect, response.text
    return response.json()


async def insert_tokens(
    db: asyncpg.Pool, count: int, *, packages: tuple[str, ...] = ("bulk-pkg",), publisher_ids: tuple[str, ...] = (),
    repository: str = "bulk-org/bulk-repo", workflow: str = "release.yml", issued_at: datetime | None = None,
    expires_at: datetime | None = None, revoked: bool = False,
) -> list[str]:
    """Token rows written directly (fast bulk); returns the raw tokens, which introspection accepts."""
    now = datetime.now(timezone.utc)
    issued_at = issued_at or now - timedelta(seconds=1)
    raw = [tokens.generate() for _ in range(count)]
    await db.executemany(
        """INSERT INTO tokens (id, token_hash, issuer_id, packages, permissions, publisher_ids, ci, repository_key,
                               workflow, issued_at, expires_at, revoked_at, revocation_reason)
           VALUES ($1, $2, $3, $4, $5, $6::uuid[], $7, $8, $9, $10, $11, $12, $13)""",
        [(uuid.uuid4(), tokens.lookup_key(token), uuid.uuid4(), list(packages),
          {p: ["publish-update"] for p in packages}, list(publisher_ids),
          {"provider": "github", "repository": repository, "workflow": workflow}, repository.lower(), workflow,
          issued_at, expires_at or now + timedelta(minutes=30), now if revoked else None,
          "test" if revoked else None)
         for token in raw],
    )
    return raw


async def rule_of(db: asyncpg.Pool, revocation_id: str) -> asyncpg.Record:
    return await db.fetchrow("SELECT * FROM revocations WHERE id = $1", uuid.UUID(revocation_id))


async def is_done(db: asyncpg.Pool, revocation_id: str) -> bool:
    return (await rule_of(db, revocation_id))["status"] == "done"


async def events_of(db: asyncpg.Pool, event_type: str, key: str, value: str) -> list[asyncpg.Record]:
    return await db.fetch("SELECT event_id, data FROM outbox WHERE type = $1 AND data->>$2 = $3",
                          event_type, key, value)


async def revoked_rows(db: asyncpg.Pool, raw: list[str]) -> int:
    return await db.fetchval("SELECT count(*) FROM tokens WHERE token_hash = ANY($1::bytea[]) AND revoked_at IS NOT NULL",
                             [tokens.lookup_key(t) for t in raw])


def isolated(settings: Settings) -> Settings:
    return replace(settings, amqp_prefix=derived_prefix(settings.amqp_prefix, "rv"))


async def delete_topology(settings: Settings) -> None:
    names = Topology.of(settings)
    connection = await aio_pika.connect(settings.amqp_url)
    try:
        channel = await connection.channel()
        for queue in (names.queue, names.dead, settings.audit_stream):
            await channel.queue_delete(queue)
        for exchange in (names.events, names.dlx):
            await channel.exchange_delete(exchange)
    finally:
        await connection.close()


@asynccontextmanager
async def broker(settings: Settings) -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    """A channel on which the revoker's topology is declared; everything is deleted afterwards."""
    connection = await aio_pika.connect(settings.amqp_url)
    try:
        channel = await connection.channel()
        await declare(channel, settings)
        yield channel
    finally:
        await connection.close()
        await delete_topology(settings)


async def publish_to_work_queue(channel: aio_pika.abc.AbstractChannel, settings: Settings, body: bytes) -> None:
    await channel.default_exchange.publish(
        aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT), routing_key=Topology.of(settings).queue)


def cloudevent(event_type: str, data: dict[str, Any], subject: str | None = None) -> bytes:
    return json.dumps({"specversion": "1.0", "id": str(uuid.uuid4()), "source": "/tests/revoker", "type": event_type,
                       "time": datetime.now(timezone.utc).isoformat(), "subject": subject, "data": data}).encode()


async def ready_messages(channel: aio_pika.abc.AbstractChannel, queue: str) -> int:
    declared = await channel.declare_queue(queue, passive=True)
    return declared.declaration_result.message_count


@asynccontextmanager
async def running(settings: Settings, **options: Any) -> AsyncIterator[tuple[Revoker, asyncio.Event, asyncio.Task[None]]]:
    """The revoker service as a task, consuming before the test goes on; stopped (drained) at the end."""
    options.setdefault("stale_rule_seconds", 3600.0)  # tests drive stale-rule recovery explicitly
    revoker = Revoker(settings, **options)
    stop = asyncio.Event()
    task = asyncio.create_task(revoker.run(stop))
    try:
        await eventually(lambda: task.done() or (revoker.consumer is not None and revoker.consumer.consuming),
                         "the revoker to consume")
        if task.done():
            task.result()  # re-raise why it could not start
        yield revoker, stop, task
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.shield(task), 30)


# -- the admin API and instant effect ---------------------------------------------


async def test_revoke_by_token_id(repo, client, db):
    await repo.add_publisher()
    first, second = await mint(repo), await mint(repo)
    body = await revoke(client, {"token_id": first["token_id"], "reason": "leaked in a build log"})
    assert body["status"] == "done" and body["revoked"] == 1
    assert not await active(client, first["token"])
    assert await active(client, second["token"])

    response = await client.get(f"/v1/admin/revocations/{body['revocation_id']}", headers=ADMIN)
    assert response.status_code == 200
    revocation = response.json()["revocation"]
    assert revocation["id"] == body["revocation_id"]
    assert revocation["kind"] == "token" and revocation["selector"] == {"token_id": first["token_id"]}
    assert revocation["status"] == "done" and revocation["revoked"] == 1
    assert revocation["reason"] == "leaked in a build log"
    assert revocation["actor"].startswith("credential:")
    assert revocation["created_at"] and revocation["completed_at"] and revocation["cutoff"]

    [revoked] = await events_of(db, types.TOKEN_REVOKED, "token_id", first["token_id"])
    assert revoked["data"]["revocation_id"] == body["revocation_id"]
    assert revoked["data"]["reason"] == "leaked in a build log"
    [completed] = await events_of(db, types.REVOCATION_COMPLETED, "revocation_id", body["revocation_id"])
    assert completed["data"]["revoked"] == 1 and completed["data"]["selector"] == {"token_id": first["token_id"]}
    assert completed["data"]["actor"] == revocation["actor"]
    assert first["token"] not in json.dumps(completed["data"])


async def test_revoke_by_publisher_id(repo, client):
    publisher = await repo.add_publisher()
    other = repo.__class__(repo.issuer, client)
    await other.add_publisher()
    mine, theirs = await mint(repo), await mint(other)
    body = await revoke(client, {"publisher_id": publisher["id"]})
    assert (body["status"], body["revoked"]) == ("done", 1)
    assert not await active(client, mine["token"])
    assert await active(client, theirs["token"])


async def test_revoke_by_package_leaves_other_packages(repo, client):
    target = await repo.add_publisher()
    other = repo.__class__(repo.issuer, client)
    await other.add_publisher()
    hit, spared = await mint(repo), await mint(other)
    body = await revoke(client, {"package": target["package"]})
    assert (body["status"], body["revoked"]) == ("done", 1)
    assert not await active(client, hit["token"])
    assert await active(client, spared["token"])
    listed = await client.get("/v1/admin/tokens", params={"package": target["package"]}, headers=ADMIN)
    assert [t["active"] for t in listed.json()["tokens"]] == [False]


async def test_revoke_by_repository_and_workflow(repo, client):
    await repo.add_publisher()
    await repo.add_publisher(workflow_filename="nightly.yml")
    release = await mint(repo)
    nightly = await mint(repo, workflow="nightly.yml")
    body = await revoke(client, {"repository": repo.repository.upper(), "workflow": "release.yml"})
    assert (body["status"], body["revoked"]) == ("done", 1)
    assert not await active(client, release["token"])
    assert await active(client, nightly["token"])  # another workflow of the same repository

    everything = await revoke(client, {"repository": repo.repository})
    assert everything["revoked"] == 1
    assert not await active(client, nightly["token"])


async def test_revoke_by_repository_within_a_time_window(repo, client, db):
    await repo.add_publisher()
    before, inside, after = await mint(repo), await mint(repo), await mint(repo)
    issued = {row["id"]: row["issued_at"] for row in await db.fetch(
        "SELECT id, issued_at FROM tokens WHERE id = ANY($1::uuid[])",
        [before["token_id"], inside["token_id"], after["token_id"]])}
    start, end = issued[uuid.UUID(inside["token_id"])], issued[uuid.UUID(after["token_id"])]
    assert issued[uuid.UUID(before["token_id"])] < start < end
    body = await revoke(client, {"repository": repo.repository, "issued_after": start.isoformat(),
                                 "issued_before": end.isoformat().replace("+00:00", "Z")})
    assert (body["status"], body["revoked"]) == ("done", 1)
    assert await active(client, before["token"])  # issued before the window
    assert not await active(client, inside["token"])  # issued_after is inclusive
    assert await active(client, after["token"])  # issued_before is exclusive


async def test_tokens_issued_after_the_cutoff_are_not_affected(repo, client, monkeypatch):
    monkeypatch.setattr(revocation_store, "BATCH_SIZE", 1)  # a full first batch leaves the rule pending
    publisher = await repo.add_publisher()
    old = await mint(repo)
    body = await revoke(client, {"publisher_id": publisher["id"]})
    assert (body["status"], body["revoked"]) == ("pending", 1)
    new = await mint(repo)  # the publisher still exists; its new tokens are not covered by the earlier rule
    assert not await active(client, old["token"])
    assert await active(client, new["token"])


@pytest.mark.parametrize(("body", "field"), [
    ({}, "selector"),
    ({"reason": "no selector"}, "selector"),
    ({"token_id": None}, "selector"),
    ({"token_id": str(uuid.uuid4()), "package": "two-selectors"}, "package"),
    ({"package": "p", "repository": "a/b"}, "repository"),
    ({"token_id": "not-a-uuid"}, "token_id"),
    ({"publisher_id": 42}, "publisher_id"),
    ({"package": "bad package name"}, "package"),
    ({"repository": "no-slash"}, "repository"),
    ({"repository": "a/b\n"}, "repository"),
    ({"package": "p", "workflow": "release.yml"}, "workflow"),
    ({"token_id": str(uuid.uuid4()), "issued_after": "2025-01-01T00:00:00Z"}, "issued_after"),
    ({"repository": "a/b", "issued_after": "yesterday"}, "issued_after"),
    ({"repository": "a/b", "issued_before": "2025-01-01T00:00:00"}, "issued_before"),  # no zone
    ({"repository": "a/b", "issued_after": "2025-02-01T00:00:00Z", "issued_before": "2025-01-01T00:00:00Z"},
     "issued_before"),
    ({"repository": "a/b", "issued_after": "2025-13-01T00:00:00Z"}, "issued_after"),
    ({"package": "p", "reason": 7}, "reason"),
    ({"package": "p", "colour": "red"}, "colour"),
])
async def test_invalid_selectors_are_refused_naming_the_field(client, body, field):
    response = await client.post("/v1/admin/revocations", json=body, headers=ADMIN)
    assert response.status_code == 422, response.text
    problem = response.json()
    assert problem["code"] == "invalid_request"
    assert problem["field"] == field
    assert field in problem["detail"]


async def test_revocation_endpoints_need_the_admin_credential_and_known_ids(client):
    assert (await client.post("/v1/admin/revocations", json={"package": "p"})).status_code == 401
    assert (await client.get(f"/v1/admin/revocations/{uuid.uuid4()}")).status_code == 401
    for missing in (str(uuid.uuid4()), "not-a-uuid"):
        response = await client.get(f"/v1/admin/revocations/{missing}", headers=ADMIN)
        assert response.status_code == 404
        assert response.json()["code"] == "not_found"


async def test_rule_check_and_batch_application_agree(db):
    """The two renderings of the predicate (pending-rule join, bound batch) select the same tokens."""
    now = datetime.now(timezone.utc)
    run = uuid.uuid4().hex[:8]
    publisher = str(uuid.uuid4())
    repository = f"agree-{run}/repo"
    await insert_tokens(db, 3, packages=(f"a-{run}",), publisher_ids=(publisher,), repository=repository)
    await insert_tokens(db, 2, packages=(f"b-{run}", f"a-{run}"), repository=repository, workflow="nightly.yml")
    await insert_tokens(db, 2, packages=(f"c-{run}",), repository=repository, issued_at=now - timedelta(hours=2))
    await insert_tokens(db, 1, packages=(f"c-{run}",), repository=f"other-{run}/repo")
    await insert_tokens(db, 1, packages=(f"a-{run}",), repository=repository, revoked=True)
    await insert_tokens(db, 1, packages=(f"a-{run}",), repository=repository, expires_at=now - timedelta(seconds=1))
    await insert_tokens(db, 1, packages=(f"a-{run}",), repository=repository, issued_at=now + timedelta(hours=1))
    selectors = [
        Selector("publisher", publisher_id=uuid.UUID(publisher)),
        Selector("package", package=f"a-{run}"),
        Selector("repository", repository_key=repository, workflow="nightly.yml"),
        Selector("repository", repository_key=repository, issued_before=now - timedelta(hours=1)),
        Selector("repository", repository_key=repository, issued_after=now - timedelta(hours=1)),
    ]
    expected_counts = [3, 5, 2, 2, 5]
    scope = "SELECT id FROM tokens WHERE packages && $1::text[] AND revoked_at IS NULL AND expires_at > now()"
    names = [f"a-{run}", f"b-{run}", f"c-{run}"]
    for selector, expected in zip(selectors, expected_counts):
        async with db.acquire() as conn:
            async with conn.transaction():
                rule = await revocation_store.insert(conn, selector, reason="agreement", actor=None)
            inactive = {row["id"] for row in await conn.fetch(f"{scope} AND NOT ({token_store.ACTIVE})", names)}
            async with conn.transaction():
                locked = await revocation_store.lock(conn, rule.id)
                rows = await revocation_store.revoke_batch(conn, locked, 1000)
                applied = {row["id"] for row in rows}
                assert not await revocation_store.has_remaining(conn, locked)
                await conn.execute("UPDATE revocations SET status = 'done', completed_at = now() WHERE id = $1", rule.id)
                # keep the tokens live for the next selector: undo the batch, keep the rule done
                await conn.execute("UPDATE tokens SET revoked_at = NULL, revocation_reason = NULL "
                                   "WHERE id = ANY($1::uuid[])", list(applied))
        assert inactive == applied, selector
        assert len(inactive) == expected, selector


async def test_deleting_a_publisher_creates_a_rule_and_revokes_in_batches(repo, client, db, monkeypatch):
    monkeypatch.setattr(revocation_store, "BATCH_SIZE", 5)
    publisher = await repo.add_publisher()
    minted = await mint(repo)
    bulk = await insert_tokens(db, 11, packages=(publisher["package"],), publisher_ids=(publisher["id"],))
    response = await client.delete(f"/v1/admin/publishers/{publisher['id']}", headers=ADMIN)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["revoked_tokens"] == 5
    assert body["revocation"]["status"] == "pending" and body["revocation"]["revoked"] == 5
    for token in [minted["token"], bulk[0], bulk[-1]]:  # inactive at once, rows revoked or not
        assert not await active(client, token)
    assert await active_count(db, bulk) == 0
    rule = await rule_of(db, body["revocation"]["revocation_id"])
    assert rule["kind"] == "publisher" and str(rule["publisher_id"]) == publisher["id"]
    assert rule["reason"] == "publisher deleted"
    assert await events_of(db, types.REVOCATION_REQUESTED, "revocation_id", body["revocation"]["revocation_id"])


# -- the revoker ------------------------------------------------------------------


async def test_large_revocation_is_instant_then_completed_by_the_revoker(client, db, settings, monkeypatch):
    monkeypatch.setattr(revocation_store, "BATCH_SIZE", 10)
    package = f"big-{uuid.uuid4().hex[:8]}"
    bulk = await insert_tokens(db, 57, packages=(package,))
    spared = await insert_tokens(db, 3, packages=(f"{package}-other",))
    body = await revoke(client, {"package": package, "reason": "compromised"})
    assert (body["status"], body["revoked"]) == ("pending", 10)
    for token in (bulk[0], bulk[-1]):  # the rule answers before the rows are updated
        assert not await active(client, token)
    assert await active_count(db, bulk) == 0
    assert await active(client, spared[0])
    assert await active_count(db, spared) == len(spared)
    assert await revoked_rows(db, bulk) == 10
    [requested] = await events_of(db, types.REVOCATION_REQUESTED, "revocation_id", body["revocation_id"])
    assert requested["data"]["selector"] == {"package": package}

    test_settings = isolated(settings)
    try:
        async with running(test_settings, batch_size=7) as (revoker, _stop, _task):
            await eventually(lambda: is_done(db, body["revocation_id"]), "the revoker to complete the revocation")
            assert revoker.applier.rules_completed >= 1
    finally:
        await delete_topology(test_settings)
    rule = await rule_of(db, body["revocation_id"])
    assert rule["revoked"] == 57 and rule["completed_at"] is not None
    assert await revoked_rows(db, bulk) == 57
    assert await revoked_rows(db, spared) == 0
    revoked_events = await events_of(db, types.TOKEN_REVOKED, "revocation_id", body["revocation_id"])
    assert len(revoked_events) == 57 == len({e["data"]["token_id"] for e in revoked_events})
    [completed] = await events_of(db, types.REVOCATION_COMPLETED, "revocation_id", body["revocation_id"])
    assert completed["data"]["revoked"] == 57 and completed["data"]["reason"] == "compromised"
    assert await active_count(db, bulk) == 0


async def test_duplicate_requests_are_harmless(client, db, settings, monkeypatch):
    monkeypatch.setattr(revocation_store, "BATCH_SIZE", 5)
    package = f"dup-{uuid.uuid4().hex[:8]}"
    bulk = await insert_tokens(db, 30, packages=(package,))
    body = await revoke(client, {"package": package})
    assert body["status"] == "pending"
    message = cloudevent(types.REVOCATION_REQUESTED, {"revocation_id": body["revocation_id"]}, body["revocation_id"])

    test_settings = isolated(settings)
    async with broker(test_settings) as channel:
        for _ in range(3):  # redeliveries and duplicates, before and beside the relay's own copy
            await publish_to_work_queue(channel, test_settings, message)
        async with running(test_settings, batch_size=4, prefetch=10) as (revoker, _stop, _task):
            consumer = revoker.consumer
            await eventually(lambda: is_done(db, body["revocation_id"]), "the revocation to complete")
            await eventually(lambda: consumer.received >= 4 and consumer.acked == consumer.received,
                             "every copy to be acked")
            assert await ready_messages(channel, Topology.of(test_settings).queue) == 0
            assert await ready_messages(channel, Topology.of(test_settings).dead) == 0
    rule = await rule_of(db, body["revocation_id"])
    assert rule["revoked"] == 30 == await revoked_rows(db, bulk)
    revoked_events = await events_of(db, types.TOKEN_REVOKED, "revocation_id", body["revocation_id"])
    assert len(revoked_events) == 30 == len({e["data"]["token_id"] for e in revoked_events})
    assert len(await events_of(db, types.REVOCATION_COMPLETED, "revocation_id", body["revocation_id"])) == 1


async def test_publisher_deleted_event_revokes_and_is_idempotent(repo, client, db, settings):
    publisher = await repo.add_publisher()
    minted = await mint(repo)
    kept = await repo.add_publisher()  # a deletion message for a publisher that exists is ignored
    # A deletion that bypassed the API (no rule yet): the message alone must revoke its tokens.
    await db.execute("DELETE FROM publishers WHERE id = $1", uuid.UUID(publisher["id"]))
    assert await active(client, minted["token"])
    deleted = cloudevent(types.PUBLISHER_DELETED, {"actor": "credential:test", "target": publisher["id"],
                                                   "before": {"id": publisher["id"]}, "after": None}, publisher["id"])
    stale = cloudevent(types.PUBLISHER_DELETED, {"target": kept["id"]}, kept["id"])
    unknown = cloudevent(types.REVOCATION_REQUESTED, {"revocation_id": str(uuid.uuid4())})

    test_settings = isolated(settings)
    async with broker(test_settings) as channel:
        for body in (deleted, deleted, stale, unknown):
            await publish_to_work_queue(channel, test_settings, body)
        async with running(test_settings) as (revoker, _stop, _task):
            consumer = revoker.consumer
            await eventually(lambda: consumer.acked >= 4 and consumer.acked == consumer.received,
                             "the messages to be handled")
            assert await ready_messages(channel, Topology.of(test_settings).dead) == 0
    assert not await active(client, minted["token"])
    [rule] = await db.fetch("SELECT * FROM revocations WHERE kind = 'publisher' AND publisher_id = $1",
                            uuid.UUID(publisher["id"]))
    assert (rule["status"], rule["revoked"], rule["actor"]) == ("done", 1, "credential:test")
    assert not await db.fetch("SELECT 1 FROM revocations WHERE publisher_id = $1", uuid.UUID(kept["id"]))


async def test_poison_messages_are_dead_lettered(settings):
    test_settings = isolated(settings)
    names = Topology.of(test_settings)
    poison = [
        b"\xff not even utf-8",
        b"{not json",
        b"[1, 2, 3]",
        cloudevent(types.REVOCATION_REQUESTED, {"revocation_id": "not-a-uuid"}),
        cloudevent(types.TOKEN_ISSUED, {"token_id": str(uuid.uuid4())}),
    ]
    async with broker(test_settings) as channel:
        async with running(test_settings) as (revoker, _stop, _task):
            for body in poison:
                await publish_to_work_queue(channel, test_settings, body)
            dead = await channel.declare_queue(names.dead, passive=True)
            received: list[aio_pika.abc.AbstractIncomingMessage] = []

            async def all_dead() -> bool:
                message = await dead.get(no_ack=True, fail=False)
                if message is not None:
                    received.append(message)
                return len(received) == len(poison)

            await eventually(all_dead, "every poison message to be dead-lettered")
            assert sorted(m.body for m in received) == sorted(poison)
            assert revoker.consumer.rejected == len(poison)
            death = received[0].headers["x-death"][0]
            assert death["reason"] == "rejected" and death["queue"] == names.queue


async def test_transient_failures_are_retried_then_dead_lettered(client, db, settings, monkeypatch):
    monkeypatch.setattr(revocation_store, "BATCH_SIZE", 1)
    package = f"outage-{uuid.uuid4().hex[:8]}"
    bulk = await insert_tokens(db, 3, packages=(package,))
    body = await revoke(client, {"package": package})
    assert body["status"] == "pending"
    host, port = urlsplit(settings.database_url).hostname, urlsplit(settings.database_url).port or 5432
    proxy = TcpProxy(host, port)
    await proxy.start()
    test_settings = replace(isolated(settings), database_url=through(settings.database_url, proxy),
                            db_pool_min=1, db_pool_max=2)
    names = Topology.of(test_settings)
    try:
        async with broker(test_settings) as channel:
            async with running(test_settings, batch_size=1, retry_base_seconds=0.01) as (revoker, _stop, _task):
                await proxy.cut()  # the database vanishes under the revoker
                await publish_to_work_queue(channel, test_settings, cloudevent(
                    types.REVOCATION_REQUESTED, {"revocation_id": body["revocation_id"]}))
                dead = await channel.declare_queue(names.dead, passive=True)
                arrived: list[aio_pika.abc.AbstractIncomingMessage] = []

                async def dead_lettered() -> bool:
                    message = await dead.get(no_ack=True, fail=False)
                    if message is not None:
                        arrived.append(message)
                    return bool(arrived)

                await eventually(dead_lettered, "the message to be dead-lettered after its delivery limit", 60)
                assert revoker.consumer.requeued >= DELIVERY_LIMIT
                assert revoker.consumer.rejected == 0
                assert arrived[0].headers["x-death"][0]["reason"] == "delivery_limit"
                await proxy.restore()
    finally:
        await proxy.close()
    # The rule stayed pending, so its tokens stayed inactive; the sweeper resumes rules like it.
    assert not await is_done(db, body["revocation_id"])
    assert not await active(client, bulk[-1])
    assert await active_count(db, bulk) == 0
    applier = RuleApplier(db, OutboxSignal(), stopping=asyncio.Event(), batch_size=2)
    sweeper = Sweeper(settings, db, OutboxSignal(), applier, stale_rule_seconds=0)

    async def swept_to_done() -> bool:
        await sweeper.sweep_once()  # resumes the oldest pending rules first, a few per sweep
        return await is_done(db, body["revocation_id"])

    await eventually(swept_to_done, "the sweeper to resume the stalled rule")
    assert sweeper.totals["stale_revocations_resumed"] >= 1
    assert await revoked_rows(db, bulk) == 3


async def test_stop_drains_and_acks_only_finished_work(client, db, settings, monkeypatch):
    monkeypatch.setattr(revocation_store, "BATCH_SIZE", 10)
    package = f"drain-{uuid.uuid4().hex[:8]}"
    bulk = await insert_tokens(db, 60, packages=(package,))
    body = await revoke(client, {"package": package})
    assert (body["status"], body["revoked"]) == ("pending", 10)
    revocation_id = uuid.UUID(body["revocation_id"])
    stop_now = asyncio.Event()

    def stop_after_our_first_batch(progress) -> None:
        if progress.rule.id == revocation_id:
            stop_now.set()

    test_settings = isolated(settings)
    names = Topology.of(test_settings)
    async with broker(test_settings) as channel:
        revoker = Revoker(test_settings, batch_size=5, on_batch=stop_after_our_first_batch, stale_rule_seconds=3600)
        stop = asyncio.Event()
        task = asyncio.create_task(revoker.run(stop))
        await asyncio.wait_for(stop_now.wait(), WAIT)  # work is in flight: the revoker is between batches
        stop.set()  # what SIGTERM does
        await asyncio.wait_for(task, WAIT)  # returns: drained, nothing left running
        assert task.exception() is None

        rule = await rule_of(db, body["revocation_id"])
        assert rule["status"] == "pending"  # not finished, so its message was not acked...
        assert rule["revoked"] == await revoked_rows(db, bulk)  # ...and what was done is committed and counted
        assert 15 <= rule["revoked"] < 60
        assert await ready_messages(channel, names.queue) >= 1  # ...but given back to the queue
        assert not await active(client, bulk[-1])
        assert await active_count(db, bulk) == 0

        # The next revoker (the relay will not publish the request again) finishes it from the queue.
        async with running(test_settings, batch_size=5) as (_revoker, _stop, _task):
            await eventually(lambda: is_done(db, body["revocation_id"]), "the requeued work to finish")
    rule = await rule_of(db, body["revocation_id"])
    assert rule["revoked"] == 60 == await revoked_rows(db, bulk)
    assert len(await events_of(db, types.REVOCATION_COMPLETED, "revocation_id", body["revocation_id"])) == 1


async def test_stop_is_prompt_while_the_broker_is_away(settings):
    amqp = urlsplit(settings.amqp_url)
    proxy = TcpProxy(amqp.hostname or "127.0.0.1", amqp.port or 5672)
    await proxy.start()
    await proxy.cut()  # refuses every connection from the start
    revoker = Revoker(replace(isolated(settings), amqp_url=through(settings.amqp_url, proxy)))
    stop = asyncio.Event()
    task = asyncio.create_task(revoker.run(stop))
    try:
        await eventually(lambda: revoker.consumer is not None and revoker.consumer.broker_failures >= 2,
                         "the consumer to back off")
        assert revoker.relay is not None and not revoker.relay.is_leader  # nothing relayed to an undeclared queue
        loop = asyncio.get_running_loop()
        started = loop.time()
        stop.set()
        await asyncio.wait_for(task, 5)
        assert loop.time() - started < 2
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.shield(task), 30)
        await proxy.close()


# -- the sweeper ------------------------------------------------------------------


def sweeper_for(settings: Settings, db: asyncpg.Pool, **options: Any) -> Sweeper:
    signal = OutboxSignal()
    applier = RuleApplier(db, signal, stopping=asyncio.Event())
    options.setdefault("stale_rule_seconds", 3600.0)
    return Sweeper(settings, db, signal, applier, **options)


async def test_sweep_marks_expired_tokens_and_announces_them(db, settings):
    now = datetime.now(timezone.utc)
    run = f"exp-{uuid.uuid4().hex[:8]}"
    expired = await insert_tokens(db, 7, packages=(run,), issued_at=now - timedelta(hours=1),
                                  expires_at=now - timedelta(minutes=1))
    revoked = await insert_tokens(db, 1, packages=(run,), issued_at=now - timedelta(hours=1),
                                  expires_at=now - timedelta(minutes=1), revoked=True)
    live = await insert_tokens(db, 2, packages=(run,))
    sweeper = sweeper_for(settings, db, batch_size=3)  # several batches
    counts = await sweeper.sweep_once()
    assert counts["tokens_expired"] >= 7

    def hashes(raw: list[str]) -> list[bytes]:
        return [tokens.lookup_key(t) for t in raw]

    rows = await db.fetch("SELECT id, expired_at FROM tokens WHERE token_hash = ANY($1::bytea[])", hashes(expired))
    assert all(row["expired_at"] is not None for row in rows)
    assert await db.fetchval("SELECT count(*) FROM tokens WHERE token_hash = ANY($1::bytea[]) AND expired_at IS NOT NULL",
                             hashes(revoked + live)) == 0
    ids = [str(row["id"]) for row in rows]
    events = await db.fetch("SELECT data FROM outbox WHERE type = $1 AND data->>'token_id' = ANY($2::text[])",
                            types.TOKEN_EXPIRED, ids)
    assert sorted(e["data"]["token_id"] for e in events) == sorted(ids)
    assert all(e["data"]["packages"] == [run] and e["data"]["expires_at"].endswith("Z") for e in events)

    await sweeper.sweep_once()  # announced once only
    again = await db.fetchval("SELECT count(*) FROM outbox WHERE type = $1 AND data->>'token_id' = ANY($2::text[])",
                              types.TOKEN_EXPIRED, ids)
    assert again == 7
    assert sweeper.totals["tokens_expired"] >= 7 and sweeper.sweeps == 2


async def test_sweep_purges_old_rows_and_keeps_recent_ones(db, settings):
    now = datetime.now(timezone.utc)
    retention = timedelta(seconds=settings.token_retention_seconds)
    long_ago = now - retention - timedelta(days=1)
    issuer_id = uuid.uuid4()
    await db.executemany("INSERT INTO used_jtis (issuer_id, jti, expires_at) VALUES ($1, $2, $3)", [
        (issuer_id, "old-1", now - timedelta(seconds=1)),
        (issuer_id, "old-2", now - timedelta(days=2)),
        (issuer_id, "fresh", now + timedelta(minutes=5)),  # its ID token could still be replayed
    ])
    run = f"purge-{uuid.uuid4().hex[:8]}"
    ancient = await insert_tokens(db, 3, packages=(run,), issued_at=long_ago - timedelta(hours=1), expires_at=long_ago)
    recent = await insert_tokens(db, 2, packages=(run,), issued_at=now - timedelta(days=2),
                                 expires_at=now - timedelta(days=2) + timedelta(minutes=30))
    old_rule, pending_rule, recent_rule = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    await db.executemany(
        """INSERT INTO revocations (id, kind, package, reason, status, cutoff, created_at, completed_at)
           VALUES ($1, 'package', $2, 'test', $3, $4, $4, $5)""",
        [(old_rule, f"{run}-old", "done", long_ago, long_ago),
         (pending_rule, f"{run}-pending", "pending", long_ago, None),
         (recent_rule, f"{run}-recent", "done", now, now)])
    low = await db.fetchval("SELECT least(coalesce(min(sequence), 0), 0) FROM outbox")
    old_events = [uuid.uuid4() for _ in range(3)]
    await db.executemany(  # published long ago, with sequences older than any other
        """INSERT INTO outbox (event_id, type, source, time, data, sequence)
           VALUES ($1, 'dev.tpx.test', '/tests/revoker', $2, '{}', $3)""",
        [(event_id, long_ago, low - 10 + n) for n, event_id in enumerate(old_events)])

    counts = await sweeper_for(settings, db, batch_size=2, stale_rule_seconds=10 * 86400 * 365).sweep_once()
    assert counts["used_jtis_purged"] >= 2 and counts["tokens_purged"] >= 3
    assert counts["revocations_purged"] >= 1 and counts["outbox_purged"] >= 3
    jtis = {r["jti"] for r in await db.fetch("SELECT jti FROM used_jtis WHERE issuer_id = $1", issuer_id)}
    assert jtis == {"fresh"}
    assert await db.fetchval("SELECT count(*) FROM tokens WHERE packages = ARRAY[$1]", run) == len(recent)
    assert not await db.fetchval("SELECT count(*) FROM tokens WHERE token_hash = ANY($1::bytea[])",
                                 [tokens.lookup_key(t) for t in ancient])
    rules = {r["id"] for r in await db.fetch("SELECT id FROM revocations WHERE id = ANY($1::uuid[])",
                                             [old_rule, pending_rule, recent_rule])}
    assert rules == {pending_rule, recent_rule}  # pending rules are never purged
    assert not await db.fetchval("SELECT count(*) FROM outbox WHERE event_id = ANY($1::uuid[])", old_events)
    assert await db.fetchval("SELECT max(sequence) FROM outbox") is not None  # the newest row always stays
