"""Session fixtures: an isolated database and AMQP prefix per run, a real loopback
OIDC issuer, and the exchange service served by uvicorn on loopback."""

from __future__ import annotations

import os
import secrets
import uuid
from dataclasses import replace

import asyncpg
import pytest

from tpx.core.config import Settings
from tpx.core.db.migrate import migrate
from tpx.core.db.pool import create_pool
from tpx.core.logging import configure as configure_logging
from tests.support.amqp import DERIVED_PREFIXES, delete_objects
from tests.support.oidc_issuer import LoopbackIssuer
from tests.support.servers import serve

PG_HOST = os.environ.get("TPX_TEST_PG", "postgresql://postgres@127.0.0.1:5432")
AMQP_URL = os.environ.get("TPX_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
configure_logging("console", os.environ.get("TPX_TEST_LOG_LEVEL", "warning"))
ADMIN_TOKEN = "test-admin-" + secrets.token_urlsafe(24)
INTROSPECTION_TOKEN = "test-introspect-" + secrets.token_urlsafe(24)


@pytest.fixture(scope="session")
def run_id() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture(scope="session")
async def database_url(run_id):
    """Create (or adopt, when `make test` made it) the run's database; drop it at the end."""
    name = os.environ.get("TPX_TEST_DATABASE") or f"tpx_test_{run_id}"
    admin = await asyncpg.connect(f"{PG_HOST}/postgres")
    try:
        exists = await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = f"{PG_HOST}/{name}"
    conn = await asyncpg.connect(url)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    yield url
    admin = await asyncpg.connect(f"{PG_HOST}/postgres")
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture(scope="session")
def amqp_prefix(run_id) -> str:
    return os.environ.get("TPX_TEST_AMQP_PREFIX") or f"tpx-test-{run_id}"


@pytest.fixture(scope="session", autouse=True)
async def run_cleanup(amqp_prefix):
    """Delete what this run made on the shared servers: its database (even when no test used it,
    since `make test` creates it up front) and what it declared under its AMQP prefix."""
    yield
    name = os.environ.get("TPX_TEST_DATABASE")
    if name:
        admin = await asyncpg.connect(f"{PG_HOST}/postgres")
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()
    await delete_objects(AMQP_URL, [amqp_prefix, *DERIVED_PREFIXES])


@pytest.fixture(scope="session")
def settings(database_url, amqp_prefix) -> Settings:
    return Settings(
        database_url=database_url,
        amqp_url=AMQP_URL,
        amqp_prefix=amqp_prefix,
        audience="tpx",
        admin_tokens=(ADMIN_TOKEN,),
        introspection_tokens=(INTROSPECTION_TOKEN,),
        insecure_loopback_issuers=True,
        log_format="console",
        log_level="warning",
        relay_poll_seconds=0.05,
        # The whole suite talks from 127.0.0.1 and fails on purpose a lot; the limits get their own tests.
        ops_port=0,  # workers' ops endpoints on a free port, so several can run at once
        rate_failed_per_minute=0,
        rate_publisher_per_minute=0,
    )


@pytest.fixture(scope="session")
async def db(settings):
    pool = await create_pool(settings, min_size=1, max_size=5)
    yield pool
    await pool.close()


@pytest.fixture(scope="session")
async def oidc_issuer():
    issuer = LoopbackIssuer()
    async with serve(issuer.app) as url:
        issuer.url = url
        yield issuer


@pytest.fixture
def admin_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
def introspection_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {INTROSPECTION_TOKEN}"}


def with_settings(settings: Settings, **changes) -> Settings:
    return replace(settings, **changes)
