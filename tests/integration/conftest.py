"""Integration fixtures: the exchange app on loopback, the loopback issuer registered
with its keys written to Postgres the way the jwks-refresher writes them."""

from __future__ import annotations

import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

import httpx
import pytest

from tpx.exchange.app import create_app
from tpx.core.jose import parse_jwks
from tpx.core.db.issuers import store_keys
from tests.support import api
from tests.support.api import ADMIN
from tests.support.claims import github_claims
from tests.support.oidc_issuer import LoopbackIssuer
from tests.support.servers import serve



@pytest.fixture
async def empty_database():
    """A database of its own with no schema, dropped afterwards (for migration and start-up tests)."""
    import asyncpg

    from tests.conftest import PG_HOST

    name = f"tpx_empty_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(f"{PG_HOST}/postgres")
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{PG_HOST}/{name}"
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture(scope="session")
async def exchange_app(settings):
    # The relay is started by the tests that watch events, so each owns the relay lock while it runs.
    app = create_app(settings, run_relay=False)
    async with serve(app) as url:
        app.state.url = url
        yield app


@pytest.fixture(scope="session")
async def client(exchange_app):
    # Idle connections are dropped before the server's 5 s keep-alive timeout closes them, so a
    # request never races the server closing the connection it is sent on.
    async with httpx.AsyncClient(base_url=exchange_app.state.url, timeout=30,
                                 limits=httpx.Limits(keepalive_expiry=2)) as http:
        yield http


async def publish_issuer_keys(db, exchange_app, issuer_id, oidc_issuer) -> None:
    """Fetch the issuer's JWKS over HTTP, store it like the refresher, and wait until the exchange sees it."""
    async with httpx.AsyncClient() as http:
        document = (await http.get(f"{oidc_issuer.url}/.well-known/jwks")).json()
    keys, _skipped = parse_jwks(document)
    by_kid = {jwk["kid"]: jwk for jwk in document["keys"] if jwk.get("kid") in keys}
    cache = exchange_app.state.tpx.keycache
    version = cache.snapshot.version
    async with db.acquire() as conn:
        await store_keys(conn, issuer_id, by_kid)
    assert await cache.wait_for_version(version, timeout=10), "the exchange did not pick up the new keys"


@pytest.fixture(scope="session")
async def issuer(client, db, exchange_app, oidc_issuer):
    response = await client.post("/v1/admin/issuers", json={"url": oidc_issuer.url, "kind": "github"}, headers=ADMIN)
    assert response.status_code == 201, response.text
    issuer_id = uuid.UUID(response.json()["issuer"]["id"])
    await publish_issuer_keys(db, exchange_app, issuer_id, oidc_issuer)
    return oidc_issuer


@dataclass
class Repo:
    """A fresh GitHub repository identity per test, so tests never see each other's publishers."""

    issuer: Any
    client: httpx.AsyncClient
    owner: str = field(default_factory=lambda: f"org-{uuid.uuid4().hex[:8]}")
    repo: str = field(default_factory=lambda: f"repo-{uuid.uuid4().hex[:8]}")
    owner_id: str = field(default_factory=lambda: str(uuid.uuid4().int % 10**9))
    repository_id: str = field(default_factory=lambda: str(uuid.uuid4().int % 10**9))

    @property
    def repository(self) -> str:
        return f"{self.owner}/{self.repo}"

    def claims(self, **overrides: Any) -> dict[str, Any]:
        base = dict(owner=self.owner, repo=self.repo, owner_id=self.owner_id, repository_id=self.repository_id)
        base.update(overrides)
        return github_claims(**base)

    def token(self, **overrides: Any) -> str:
        return self.issuer.mint(self.claims(**overrides))

    async def add_publisher(self, expect: int = 201, **fields: Any) -> dict[str, Any]:
        body = {
            "package": f"pkg-{uuid.uuid4().hex[:8]}", "provider": "github", "issuer": self.issuer.url,
            "repository_owner": self.owner, "repository_name": self.repo, "workflow_filename": "release.yml",
        }
        body.update(fields)
        body = {k: v for k, v in body.items() if v is not None}
        return await api.add_publisher(self.client, body, expect)

    async def exchange(self, jwt: str) -> httpx.Response:
        return await api.exchange(self.client, jwt)


@pytest.fixture
def repo(issuer, client) -> Repo:
    return Repo(issuer, client)


@dataclass
class OwnIssuer:
    """A loopback GitHub-shaped issuer of one test's own, registered and with its keys stored."""

    issuer: LoopbackIssuer
    id: uuid.UUID
    client: httpx.AsyncClient

    def repo(self) -> Repo:
        return Repo(self.issuer, self.client)

    async def set_enabled(self, enabled: bool) -> None:
        response = await self.client.patch(f"/v1/admin/issuers/{self.id}", json={"enabled": enabled}, headers=ADMIN)
        assert response.status_code == 200, response.text


@asynccontextmanager
async def registered_issuer(client, db, exchange_app, kind: str) -> AsyncIterator[OwnIssuer]:
    """A loopback issuer served, registered and with its keys stored; disabled when its server stops,
    so no later test (or refresher) tries to reach it."""
    issuer = LoopbackIssuer()
    async with serve(issuer.app) as url:
        issuer.url = url
        response = await client.post("/v1/admin/issuers", json={"url": url, "kind": kind}, headers=ADMIN)
        assert response.status_code == 201, response.text
        own = OwnIssuer(issuer, uuid.UUID(response.json()["issuer"]["id"]), client)
        await publish_issuer_keys(db, exchange_app, own.id, issuer)
        yield own
        await own.set_enabled(False)


@pytest.fixture
async def own_issuer(client, db, exchange_app):
    """For tests that disable, rotate or otherwise change an issuer: never the session's shared one."""
    async with registered_issuer(client, db, exchange_app, "github") as own:
        yield own
