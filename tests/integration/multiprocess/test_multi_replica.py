"""Several replicas against one database and one broker, each a separate OS process.

Two `tpx exchange` processes (A and B), two `tpx jwks-refresher` processes and
one `tpx revoker`, started the way an operator runs them, share a database of
this module's own and one AMQP prefix. A LoopbackIssuer served in this test's
event loop stands in for GitHub Actions; its keys reach the exchanges only
through the refreshers. The tests check what replication must not break:

1. the same ID token sent to both exchanges at once mints exactly once;
2. a revocation made on one replica is visible on the other when the call returns;
3. a key rotation (a new key, then the old one removed) reaches both exchanges;
4. two refreshers answer a burst of unknown-kid requests with one fetch per cooldown;
5. the revoker is up, and the events of all this reached RabbitMQ as CloudEvents.

The children log at warning level to files that are printed when a test fails;
TPX_STACK_LOG_LEVEL=info (or debug) makes them say more.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tpx.core.events import schemas
from tests.support.claims import GitHubRepository
from tests.support.events import eventually
from tests.support.oidc_issuer import SigningKey, new_rsa_key
from tests.support.processes import poll
from tests.support.stack import SOON, ServiceStack, logs_on_failure, running_stack

pytestmark = pytest.mark.integration

COOLDOWN = 0.5  # TPX_JWKS_REFRESH_COOLDOWN_SECONDS for the refreshers and the exchanges
KEYS_WAIT = 2.0  # TPX_KEYS_WAIT_SECONDS (the default): how long an exchange waits for an unknown kid


# -- the stack ----------------------------------------------------------------------------------


class Stack(ServiceStack):
    """Two exchanges (A and B), two refreshers and a revoker, with what these tests remember between steps."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.unknown_kid_sent_at = float("-inf")  # time.monotonic() after the last unknown-kid exchange
        self.issued_token_ids: list[str] = []
        self.revoked_token_ids: list[str] = []

    @property
    def a(self) -> httpx.AsyncClient:
        return self.clients["exchange-a"]

    @property
    def b(self) -> httpx.AsyncClient:
        return self.clients["exchange-b"]

    @property
    def exchanges(self) -> list[httpx.AsyncClient]:
        return [self.a, self.b]

    async def repo(self) -> "Repo":
        repo = Repo(stack=self)
        await repo.add_publisher()
        return repo

    async def exchange(self, client: httpx.AsyncClient, jwt: str) -> httpx.Response:
        response = await client.post("/v1/exchange", json={"jwt": jwt})
        if response.status_code == 200:
            self.issued_token_ids.append(response.json()["token_id"])
        return response

    async def introspect(self, client: httpx.AsyncClient, token: str) -> dict[str, Any]:
        response = await client.post("/v1/introspect", json={"token": token}, headers=self.introspection_headers)
        assert response.status_code == 200, response.text
        return response.json()

    async def keys_fetched_at(self, different_from: Any = ...) -> Any:
        """The issuer's keys_fetched_at; with `different_from`, whether it has moved on from that value."""
        value = await self.db.fetchval("SELECT keys_fetched_at FROM issuers WHERE id = $1::uuid", self.issuer_id)
        return value if different_from is ... else value != different_from

    async def refresh_cooldown_over(self) -> None:
        """Wait (bounded) until the next refresh request starts a fetch at once: the cluster-wide cooldown
        since the last fetch attempt has passed, and so has each exchange's own (counted from our last
        unknown-kid request, which is later than the exchange's), so counts start from a quiet state.
        """

        async def over() -> bool:
            db_ok = await self.db.fetchval(
                "SELECT coalesce(refresh_attempted_at <= now() - make_interval(secs => $2), true) "
                "FROM issuers WHERE id = $1::uuid", self.issuer_id, COOLDOWN)
            return db_ok and time.monotonic() - self.unknown_kid_sent_at >= COOLDOWN

        await poll(over, "the JWKS refresh cooldown to pass", SOON, alive=self.processes.values())


@dataclass(kw_only=True)
class Repo(GitHubRepository):
    """A fresh GitHub repository identity with one trusted publisher of its own."""

    stack: Stack

    async def add_publisher(self) -> None:
        response = await self.stack.a.post("/v1/admin/publishers", json=self.publisher(self.stack.issuer.url),
                                           headers=self.stack.admin_headers)
        assert response.status_code == 201, response.text

    def jwt(self, key: SigningKey | None = None, **overrides: Any) -> str:
        return self.stack.issuer.mint(self.claims(**overrides), key=key)

    async def mint(self, client: httpx.AsyncClient) -> dict[str, Any]:
        response = await self.stack.exchange(client, self.jwt())
        assert response.status_code == 200, response.text
        return response.json()


SERVICES = {"exchange-a": "exchange", "exchange-b": "exchange", "refresher-1": "jwks-refresher",
            "refresher-2": "jwks-refresher", "revoker": "revoker"}


@pytest.fixture(scope="module")
async def stack():
    env = {"TPX_JWKS_REFRESH_COOLDOWN_SECONDS": str(COOLDOWN), "TPX_KEYS_WAIT_SECONDS": str(KEYS_WAIT)}
    async with running_stack(SERVICES, name="multi", env=env, stack_class=Stack) as running:
        yield running


@pytest.fixture(autouse=True)
def show_logs_on_failure(request, stack):
    with logs_on_failure(request, stack):
        yield


# -- the tests ----------------------------------------------------------------------------------


async def test_same_id_token_to_both_exchanges_mints_once(stack: Stack):
    repo = await stack.repo()
    claims = repo.claims()
    jwt = stack.issuer.mint(claims)
    clients = [stack.a if i % 2 == 0 else stack.b for i in range(10)]

    responses = await asyncio.gather(*(stack.exchange(client, jwt) for client in clients))

    statuses = sorted(response.status_code for response in responses)
    assert statuses == [200] + [409] * 9, [(r.status_code, r.json().get("code")) for r in responses]
    for response in responses:
        if response.status_code == 409:
            assert response.json()["code"] == "token_reused", response.text
    assert await stack.db.fetchval("SELECT count(*) FROM used_jtis WHERE jti = $1", claims["jti"]) == 1
    assert await stack.db.fetchval("SELECT count(*) FROM tokens WHERE repository_key = $1", repo.repository_key) == 1
    # The winner's token is live on both replicas.
    token = next(r.json()["token"] for r in responses if r.status_code == 200)
    for client in stack.exchanges:
        assert (await stack.introspect(client, token))["active"] is True


async def test_revocation_is_visible_on_both_when_the_call_returns(stack: Stack):
    by_id, by_package, by_holder = await stack.repo(), await stack.repo(), await stack.repo()
    first, second, third = await by_id.mint(stack.a), await by_package.mint(stack.a), await by_holder.mint(stack.a)
    for minted in (first, second, third):
        for client in stack.exchanges:
            assert (await stack.introspect(client, minted["token"]))["active"] is True

    # An operator revokes one token by id on B; A must agree as soon as B has answered.
    response = await stack.b.post("/v1/admin/revocations", json={"token_id": first["token_id"]},
                                  headers=stack.admin_headers)
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "done" and response.json()["revoked"] == 1, response.text
    stack.revoked_token_ids.append(first["token_id"])
    assert (await stack.introspect(stack.a, first["token"])) == {"active": False}
    assert (await stack.introspect(stack.b, first["token"])) == {"active": False}

    # A package-wide revocation on B, same guarantee.
    response = await stack.b.post("/v1/admin/revocations", json={"package": by_package.package},
                                  headers=stack.admin_headers)
    assert response.status_code == 202, response.text
    assert response.json()["revoked"] == 1, response.text
    stack.revoked_token_ids.append(second["token_id"])
    assert (await stack.introspect(stack.a, second["token"])) == {"active": False}
    assert (await stack.introspect(stack.b, second["token"])) == {"active": False}

    # The holder revokes its own token on A; B must agree at once.
    response = await stack.a.post("/v1/revoke", headers={"Authorization": f"Bearer {third['token']}"})
    assert response.status_code == 204, response.text
    stack.revoked_token_ids.append(third["token_id"])
    assert (await stack.introspect(stack.b, third["token"])) == {"active": False}
    assert (await stack.introspect(stack.a, third["token"])) == {"active": False}


async def test_kill_switches_bite_on_the_other_replica_when_the_call_returns(stack: Stack):
    """Disabling the issuer, or deleting a publisher, on B refuses the very next exchange on A, whatever
    A's caches have heard; enabling the issuer again works on A within a second."""
    repo = await stack.repo()
    await repo.mint(stack.a)  # A has the issuer and the publisher cached now
    disabled = await stack.b.patch(f"/v1/admin/issuers/{stack.issuer_id}", json={"enabled": False},
                                   headers=stack.admin_headers)
    assert disabled.status_code == 200, disabled.text
    try:
        refused = await stack.exchange(stack.a, repo.jwt())
        assert refused.status_code == 401 and refused.json()["code"] == "unknown_issuer", refused.text
    finally:
        enabled = await stack.b.patch(f"/v1/admin/issuers/{stack.issuer_id}", json={"enabled": True},
                                      headers=stack.admin_headers)
        assert enabled.status_code == 200, enabled.text

    async def works_again() -> bool:
        return (await stack.exchange(stack.a, repo.jwt())).status_code == 200

    await eventually(works_again, "A to mint again after the issuer was enabled", timeout=1.0)

    listed = await stack.b.get("/v1/admin/publishers", params={"package": repo.package}, headers=stack.admin_headers)
    [publisher] = listed.json()["publishers"]
    deleted = await stack.b.delete(f"/v1/admin/publishers/{publisher['id']}", headers=stack.admin_headers)
    assert deleted.status_code == 200, deleted.text
    refused = await stack.exchange(stack.a, repo.jwt())
    assert refused.status_code == 403, refused.text


async def test_key_rotation_reaches_both_exchanges(stack: Stack):
    repo = await stack.repo()
    old = stack.issuer.keys[0]
    new = new_rsa_key()

    # Make the rotation land right after a fetch, inside the cooldown (the hard case): B asks for a kid
    # nobody knows, a refresher fetches; as soon as that fetch is stored, the IdP starts signing with a
    # new key. A's request for it cannot be served at once and must be answered when the cooldown ends.
    await stack.refresh_cooldown_over()
    fetched_before = await stack.keys_fetched_at()
    primer = asyncio.create_task(stack.exchange(stack.b, repo.jwt(key=new_rsa_key())))
    await poll(lambda: stack.keys_fetched_at(different_from=fetched_before), "the refresh B asked for",
               SOON, alive=stack.processes.values())
    stack.timings["rotation_inside_cooldown_by"] = await stack.db.fetchval(
        "SELECT extract(epoch FROM now() - refresh_attempted_at)::float8 FROM issuers WHERE id = $1::uuid",
        stack.issuer_id)
    stack.issuer.keys.insert(0, new)

    started = time.monotonic()
    response = await stack.exchange(stack.a, repo.jwt(key=new))
    stack.timings["rotation_first_exchange_a"] = time.monotonic() - started
    assert response.status_code == 200, f"the first exchange with the new key failed on A: {response.text}"
    started = time.monotonic()
    response = await stack.exchange(stack.b, repo.jwt(key=new))
    stack.timings["rotation_first_exchange_b"] = time.monotonic() - started
    assert response.status_code == 200, f"the first exchange with the new key failed on B: {response.text}"
    primed = await primer
    stack.unknown_kid_sent_at = time.monotonic()
    assert primed.status_code == 401 and primed.json()["code"] == "invalid_token", primed.text

    # The IdP retires the old key. One token naming yet another unknown kid, sent to A, makes a refresher
    # look again; both replicas' key caches (their /readyz) must then hold exactly the new key.
    stack.issuer.keys.remove(old)
    started = time.monotonic()
    trigger = asyncio.create_task(stack.exchange(stack.a, repo.jwt(key=new_rsa_key())))

    async def old_key_gone_everywhere() -> bool:
        views = [await stack.ready_issuer(client) for client in stack.exchanges]
        return all(view is not None and view["key_ids"] == [new.kid] for view in views)

    await poll(old_key_gone_everywhere, "both exchanges to drop the retired key", SOON,
               alive=stack.processes.values())
    stack.timings["rotation_old_key_gone"] = time.monotonic() - started
    triggered = await trigger
    stack.unknown_kid_sent_at = time.monotonic()
    assert triggered.status_code == 401 and triggered.json()["code"] == "invalid_token", triggered.text
    response = await stack.a.get(f"/v1/admin/issuers/{stack.issuer_id}", headers=stack.admin_headers)
    assert response.json()["issuer"]["key_ids"] == [new.kid], response.text

    refused = await asyncio.gather(*(stack.exchange(client, repo.jwt(key=old)) for client in stack.exchanges))
    stack.unknown_kid_sent_at = time.monotonic()
    for client_name, response in zip("AB", refused):
        assert response.status_code == 401, f"{client_name} accepted a token signed with the retired key: {response.text}"
        assert response.json()["code"] == "invalid_token", response.text
    # And the new key keeps working on both.
    for client in stack.exchanges:
        response = await stack.exchange(client, repo.jwt(key=new))
        assert response.status_code == 200, response.text


async def test_two_refreshers_fetch_once_per_cooldown_for_a_burst(stack: Stack):
    repo = await stack.repo()
    ghost = new_rsa_key()  # never published: every exchange below meets an unknown kid
    refreshers = ("refresher-1", "refresher-2")

    async def total_fetches() -> int:
        return sum([(await stack.worker_ready(name))["fetches"] for name in refreshers])

    tokens = [repo.jwt(key=ghost) for _ in range(20)]
    await stack.refresh_cooldown_over()  # nothing from earlier tests in flight or deferred: the count is the burst's
    jwks_before = stack.issuer.jwks_requests
    fetches_before = await total_fetches()
    started = time.monotonic()
    responses = await asyncio.gather(*(stack.exchange(stack.a if i % 2 == 0 else stack.b, token)
                                       for i, token in enumerate(tokens)))
    elapsed = time.monotonic() - started
    stack.unknown_kid_sent_at = time.monotonic()
    for response in responses:
        assert response.status_code == 401 and response.json()["code"] == "invalid_token", response.text

    jwks_fetches = stack.issuer.jwks_requests - jwks_before
    claimed = await total_fetches() - fetches_before
    windows = elapsed / COOLDOWN
    stack.timings["burst_seconds"] = elapsed
    stack.timings["burst_jwks_fetches"] = jwks_fetches
    assert jwks_fetches >= 1, "no refresher fetched the JWKS for a burst of unknown kids"
    assert jwks_fetches <= windows + 1, (
        f"{jwks_fetches} JWKS fetches for one burst of {len(tokens)} unknown-kid exchanges over {elapsed:.2f} s; "
        f"at most one per {COOLDOWN} s cooldown across both refreshers was expected (<= {windows + 1:.1f})")
    assert claimed == jwks_fetches, (
        f"the refreshers report {claimed} fetches, the issuer saw {jwks_fetches} JWKS requests")


async def test_revoker_is_ready_and_events_reached_the_broker(stack: Stack):
    for name in ("revoker", "refresher-1", "refresher-2"):
        body = await stack.worker_ready(name)
        assert body["http_status"] == 200 and body["status"] == "ready", (name, body)

    # This test's own issue and revocation, so it stands alone, plus whatever the earlier tests did.
    repo = await stack.repo()
    minted = await repo.mint(stack.b)
    response = await stack.a.post("/v1/revoke", json={"token": minted["token"]})
    assert response.status_code == 204, response.text
    stack.revoked_token_ids.append(minted["token_id"])

    issued, revoked = set(stack.issued_token_ids), set(stack.revoked_token_ids)

    async def all_arrived() -> bool:
        seen_issued = {event["data"]["token_id"] for event in stack.events.bodies("dev.tpx.token.issued")}
        seen_revoked = {event["data"]["token_id"] for event in stack.events.bodies("dev.tpx.token.revoked")}
        return issued <= seen_issued and revoked <= seen_revoked

    await poll(all_arrived, f"token.issued for {len(issued)} tokens and token.revoked for {len(revoked)} tokens "
                            f"on {stack.prefix}.events", SOON, alive=stack.processes.values())

    for message in stack.events.messages:
        event = json.loads(message.body)
        assert message.content_type == "application/cloudevents+json"
        assert message.message_id == event["id"]
        assert message.routing_key == event["type"].removeprefix("dev.tpx.")
        assert event["specversion"] == "1.0"
        assert event["source"].startswith("urn:tpx:")
        assert event["type"].startswith("dev.tpx.")
        assert event["datacontenttype"] == "application/json"
        assert len(event["sequence"]) == 20 and event["sequence"].isdigit()
        uuid.UUID(event["id"])
        assert event["time"].endswith("Z")
        assert "tpx_" not in message.body.decode(), "an event carries a token"
        schemas.validate(event)  # the event catalogue (docs/events), envelope and data
    for event in stack.events.bodies("dev.tpx.token.issued") + stack.events.bodies("dev.tpx.token.revoked"):
        assert event["subject"] == event["data"]["token_id"]
    for event in stack.events.bodies("dev.tpx.token.revoked"):
        if event["data"]["token_id"] in revoked:
            assert event["data"]["reason"], event

    # One relay leader among five processes: the sequence numbers we saw have no gap and do not go back.
    sequences = [int(json.loads(message.body)["sequence"]) for message in stack.events.messages]
    distinct = sorted(set(sequences))
    assert distinct == list(range(distinct[0], distinct[-1] + 1)), f"gaps in the event sequence: {distinct}"
    first_seen = list(dict.fromkeys(sequences))
    assert first_seen == distinct, "events arrived out of sequence order"
