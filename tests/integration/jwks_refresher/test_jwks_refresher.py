"""The jwks-refresher against real PostgreSQL, RabbitMQ and loopback OIDC issuers.

The refresher scans every enabled issuer of its database, so this module runs
in a database of its own (the seeded public issuers disabled: there is no
internet here) instead of the session's shared one: nothing here can touch
another module's issuers or keys. Each test serves its own LoopbackIssuer on a
fresh port and registers it with a plain INSERT; the issuer is deleted when
the test ends so later scans leave it alone.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import time
import uuid
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any, AsyncIterator, Awaitable, Callable

import asyncpg
import jwt
import pytest

from tpx.core.config import Settings
from tpx.core.db import outbox
from tpx.core.db.migrate import migrate
from tpx.core.db.pool import create_pool
from tpx.core.events.types import ISSUER_KEYS_ROTATED
from tpx.jwks_refresher.fetch import FetchError, check_addresses, fetch_jwks, max_age
from tpx.jwks_refresher.refresher import PERIODIC, JwksRefresher
from tpx.jwks_refresher.service import serve as serve_refresher
from tests.conftest import PG_HOST
from tests.support.oidc_issuer import LoopbackIssuer, new_rsa_key
from tests.support.servers import serve

from tests.support.events import eventually

pytestmark = pytest.mark.integration

WAIT = 15.0  # upper bound for anything that should happen "soon"




# -- helpers ----------------------------------------------------------------------




@dataclass
class Idp:
    """A served LoopbackIssuer and its issuers row."""

    server: LoopbackIssuer
    id: uuid.UUID
    pool: asyncpg.Pool

    @property
    def url(self) -> str:
        return self.server.url

    async def row(self) -> asyncpg.Record:
        return await self.pool.fetchrow(
            """SELECT jwks_uri, keys_fetched_at, last_error, consecutive_failures, refresh_attempted_at,
                      next_refresh_at, extract(epoch FROM next_refresh_at - now())::float8 AS due_in
               FROM issuers WHERE id = $1""", self.id)

    async def stored(self) -> dict[str, dict[str, Any]]:
        rows = await self.pool.fetch("SELECT kid, jwk FROM issuer_keys WHERE issuer_id = $1", self.id)
        return {row["kid"]: row["jwk"] for row in rows}

    async def rotations(self) -> list[asyncpg.Record]:
        return await self.pool.fetch(
            "SELECT event_id, subject, source, data FROM outbox WHERE type = $1 AND data->>'issuer_id' = $2 "
            "ORDER BY id", ISSUER_KEYS_ROTATED, str(self.id))

    async def end_cooldown(self) -> None:
        """Move the cooldown clock back instead of waiting for it."""
        await self.pool.execute("UPDATE issuers SET refresh_attempted_at = NULL WHERE id = $1", self.id)


def kids(server: LoopbackIssuer) -> set[str]:
    return {key.kid for key in server.keys}


@asynccontextmanager
async def running(refresher: JwksRefresher) -> AsyncIterator[asyncio.Task[None]]:
    """Run `refresher` until the block ends; yield its task once it listens."""
    stop = asyncio.Event()
    task = asyncio.create_task(refresher.run(stop))
    try:
        await asyncio.wait_for(refresher.listener.healthy.wait(), WAIT)
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, WAIT)


async def request_refresh(pool: asyncpg.Pool, issuer_id: uuid.UUID | str) -> None:
    """What an exchange replica does when it meets an unknown kid."""
    await pool.execute("SELECT pg_notify('tpx_jwks_refresh', $1)", str(issuer_id))


# -- fixtures ---------------------------------------------------------------------


@pytest.fixture(scope="module")
async def refresher_settings(settings: Settings) -> AsyncIterator[Settings]:
    """A database of this module's own (see the module docstring), migrated, public issuers disabled."""
    name = f"{settings.database_url.rsplit('/', 1)[1]}_jwks"[:63]
    admin = await asyncpg.connect(f"{PG_HOST}/postgres")
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = f"{PG_HOST}/{name}"
    conn = await asyncpg.connect(url)
    try:
        await migrate(conn)
        await conn.execute("UPDATE issuers SET enabled = false")
    finally:
        await conn.close()
    yield replace(settings, database_url=url, jwks_refresh_cooldown_seconds=30.0, jwks_fetch_timeout_seconds=5.0)
    admin = await asyncpg.connect(f"{PG_HOST}/postgres")
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture(scope="module")
async def rdb(refresher_settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(refresher_settings, min_size=1, max_size=8)
    yield pool
    await pool.close()


@pytest.fixture
def refresher(refresher_settings: Settings, rdb: asyncpg.Pool) -> JwksRefresher:
    return JwksRefresher(refresher_settings, rdb)


@pytest.fixture
async def idp(rdb: asyncpg.Pool) -> AsyncIterator[Callable[..., Awaitable[Idp]]]:
    """Start LoopbackIssuers and register them: `await idp(**LoopbackIssuer options, jwks_hosts=, due=)`."""
    stack = AsyncExitStack()
    started: list[Idp] = []

    async def start(*, jwks_hosts: list[str] | None = None, due: bool = True, **options: Any) -> Idp:
        server = LoopbackIssuer(**options)
        server.url = await stack.enter_async_context(serve(server.app))
        issuer_id = await rdb.fetchval(
            "INSERT INTO issuers (url, kind, jwks_hosts, next_refresh_at) "
            "VALUES ($1, 'github', $2, CASE WHEN $3 THEN NULL ELSE now() + interval '1 hour' END) RETURNING id",
            server.url, jwks_hosts, due)
        started.append(Idp(server, issuer_id, rdb))
        return started[-1]

    yield start
    for item in started:
        if item.server.jwks_gate is not None:
            item.server.jwks_gate.set()  # let a parked handler finish so its server can stop
    # Deleted, not just disabled: the OS may hand the same loopback port (so the same issuer URL)
    # to a later test's server.
    await rdb.execute("DELETE FROM issuers WHERE id = ANY($1::uuid[])", [i.id for i in started])
    await stack.aclose()


# -- one refresh ------------------------------------------------------------------


async def test_refresh_stores_keys_and_announces_only_changes(idp, refresher):
    issuer = await idp()
    first = issuer.server.signing_key

    assert await refresher.refresh_issuer(issuer.id, reason="request") is True
    row = await issuer.row()
    assert row["jwks_uri"] == f"{issuer.url}/.well-known/jwks"
    assert row["keys_fetched_at"] is not None and row["last_error"] is None
    assert row["consecutive_failures"] == 0 and row["next_refresh_at"] is not None
    assert await issuer.stored() == {first.kid: first.public_jwk()}
    [event] = await issuer.rotations()
    assert event["subject"] == str(issuer.id) and event["source"] == "urn:tpx:jwks-refresher"
    assert event["data"] == {
        "issuer": issuer.url, "issuer_id": str(issuer.id), "jwks_uri": f"{issuer.url}/.well-known/jwks",
        "added": [first.kid], "removed": [], "replaced": [], "key_ids": [first.kid], "skipped": [],
    }

    # Within the cooldown nothing is fetched; after it, the same keys are stored again without an event.
    assert await refresher.refresh_issuer(issuer.id, reason="request") is False
    assert issuer.server.jwks_requests == 1
    await issuer.end_cooldown()
    assert await refresher.refresh_issuer(issuer.id, reason="request") is True
    assert issuer.server.jwks_requests == 2
    assert len(await issuer.rotations()) == 1
    assert (await issuer.row())["keys_fetched_at"] > row["keys_fetched_at"]

    # A rotation upstream: the old key goes, a new one comes, and one event says so.
    second = new_rsa_key()
    issuer.server.keys = [second]
    await issuer.end_cooldown()
    assert await refresher.refresh_issuer(issuer.id, reason="request") is True
    assert await issuer.stored() == {second.kid: second.public_jwk()}
    events = await issuer.rotations()
    assert len(events) == 2
    assert (events[1]["data"]["added"], events[1]["data"]["removed"]) == ([second.kid], [first.kid])
    assert refresher.fetches_total == 3 and refresher.failures_total == 0 and refresher.rotations_total == 2


async def test_discovery_issuer_mismatch_keeps_the_old_keys(idp, refresher):
    issuer = await idp()
    assert await refresher.refresh_issuer(issuer.id) is True
    before = await issuer.stored()

    issuer.server.discovery_issuer = issuer.url + "/"  # one byte more
    await issuer.end_cooldown()
    assert await refresher.refresh_issuer(issuer.id) is True
    row = await issuer.row()
    assert row["last_error"] == (
        f"discovery issuer '{issuer.url}/' does not match the configured issuer '{issuer.url}'")
    assert row["consecutive_failures"] == 1
    assert await issuer.stored() == before
    assert issuer.server.jwks_requests == 1  # the JWKS of a mismatching issuer is never fetched
    assert refresher.failures_total == 1


async def test_jwks_uri_on_another_host_needs_approval(idp, rdb, refresher):
    issuer = await idp()
    # Same machine, different host string: not the issuer's host.
    other = issuer.url.replace("127.0.0.1", "localhost") + "/.well-known/jwks"
    issuer.server.jwks_uri = other
    assert await refresher.refresh_issuer(issuer.id) is True
    row = await issuer.row()
    assert row["last_error"] == (
        f"jwks_uri '{other}' is on the host 'localhost', which is neither the issuer's host '127.0.0.1' "
        "nor an approved JWKS host (issuers.jwks_hosts)")
    assert await issuer.stored() == {} and issuer.server.jwks_requests == 0

    await rdb.execute("UPDATE issuers SET jwks_hosts = ARRAY['LocalHost'] WHERE id = $1", issuer.id)
    await issuer.end_cooldown()
    assert await refresher.refresh_issuer(issuer.id) is True
    row = await issuer.row()
    assert row["last_error"] is None and row["jwks_uri"] == other
    assert set(await issuer.stored()) == kids(issuer.server)


async def test_approved_jwks_host_on_a_private_address_is_refused(idp, rdb, refresher_settings):
    issuer = await idp(jwks_hosts=["keys.internal.test"])
    issuer.server.jwks_uri = "https://keys.internal.test/jwks"
    asked: list[tuple[str, int]] = []

    async def resolver(host: str, port: int) -> list[str]:
        asked.append((host, port))
        return ["93.184.215.14", "10.9.8.7"]  # one bad address among good ones is enough to refuse

    refresher = JwksRefresher(refresher_settings, rdb, resolver=resolver)
    assert await refresher.refresh_issuer(issuer.id) is True
    assert asked == [("keys.internal.test", 443)]
    row = await issuer.row()
    assert row["last_error"] == (
        "the host 'keys.internal.test' resolves to 10.9.8.7, a private address; "
        "tpx fetches issuer keys from public addresses only")


@pytest.mark.parametrize("body_kind", ["content-length", "chunked", "gzip"])
async def test_oversized_or_compressed_jwks_is_refused(idp, refresher, body_kind):
    issuer = await idp()
    assert await refresher.refresh_issuer(issuer.id) is True
    before = await issuer.stored()

    document = issuer.server.jwks()
    if body_kind == "gzip":
        document["padding"] = "0" * (4 * 1024 * 1024)  # compresses to a few KiB: a small bomb
        issuer.server.jwks_body = gzip.compress(json.dumps(document).encode())
        issuer.server.jwks_headers = {"Content-Encoding": "gzip"}
    else:
        document["padding"] = "x" * (256 * 1024)
        issuer.server.jwks_body = json.dumps(document).encode()
        issuer.server.jwks_chunked = body_kind == "chunked"
    await issuer.end_cooldown()
    assert await refresher.refresh_issuer(issuer.id) is True
    error = (await issuer.row())["last_error"]
    where = f"the JWKS at '{issuer.url}/.well-known/jwks'"
    if body_kind == "gzip":
        assert error == f"{where} is 'gzip'-encoded; tpx accepts only uncompressed documents"
    elif body_kind == "chunked":
        assert error == f"{where} is larger than the 262144-byte limit"
    else:
        assert error == f"{where} is {len(issuer.server.jwks_body)} bytes, larger than the 262144-byte limit"
    assert await issuer.stored() == before


async def test_slow_idp_hits_the_total_deadline(idp, rdb, refresher_settings):
    issuer = await idp(jwks_gate=asyncio.Event())  # the JWKS handler never answers
    refresher = JwksRefresher(replace(refresher_settings, jwks_fetch_timeout_seconds=0.5), rdb)
    started = time.monotonic()
    assert await refresher.refresh_issuer(issuer.id) is True
    assert time.monotonic() - started < 3
    row = await issuer.row()
    assert row["last_error"] == f"discovery and JWKS of '{issuer.url}' did not arrive within 0.5 s"
    assert issuer.server.jwks_requests == 1


async def test_bad_keys_are_skipped_and_good_ones_kept(idp, refresher):
    private = new_rsa_key()
    private_jwk = jwt.algorithms.RSAAlgorithm.to_jwk(private.private_key, as_dict=True) | {"kid": "private"}
    small = new_rsa_key("small", bits=1024).public_jwk()
    encryption = new_rsa_key("encryption").public_jwk() | {"use": "enc"}
    symmetric = {"kty": "oct", "kid": "symmetric", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQ"}
    issuer = await idp(extra_jwks_keys=[symmetric, private_jwk, small, encryption])

    assert await refresher.refresh_issuer(issuer.id) is True
    good = issuer.server.signing_key
    assert await issuer.stored() == {good.kid: good.public_jwk()}
    row = await issuer.row()
    assert row["last_error"] is None and row["consecutive_failures"] == 0
    [event] = await issuer.rotations()
    skipped = event["data"]["skipped"]
    assert [reason.split(":")[0] for reason in skipped] == [
        "kid=symmetric", "kid=private", "kid=small", "kid=encryption"]
    assert "symmetric keys" in skipped[0] and "private members" in skipped[1]
    assert "1024 bits" in skipped[2] and "use is 'enc'" in skipped[3]


async def test_a_jwks_without_usable_keys_keeps_the_old_set(idp, refresher):
    issuer = await idp()
    assert await refresher.refresh_issuer(issuer.id) is True
    before = await issuer.stored()

    issuer.server.keys = []
    issuer.server.extra_jwks_keys = [{"kty": "oct", "kid": "symmetric", "k": "c2VjcmV0"}]
    await issuer.end_cooldown()
    assert await refresher.refresh_issuer(issuer.id) is True
    row = await issuer.row()
    assert row["last_error"] == (
        f"the JWKS at '{issuer.url}/.well-known/jwks' has no usable key "
        "(kid=symmetric: symmetric keys (kty oct) are never accepted)")
    assert await issuer.stored() == before
    assert len(await issuer.rotations()) == 1


async def test_idp_down_keeps_keys_backs_off_and_recovers(idp, refresher):
    issuer = await idp()
    assert await refresher.refresh_issuer(issuer.id) is True
    before = await issuer.stored()
    fetched_at = (await issuer.row())["keys_fetched_at"]

    issuer.server.available = False
    for failures, delay in ((1, 5.0), (2, 10.0)):
        await issuer.end_cooldown()
        assert await refresher.refresh_issuer(issuer.id) is True
        row = await issuer.row()
        assert row["last_error"] == (
            f"the discovery document at '{issuer.url}/.well-known/openid-configuration' answered HTTP 503")
        assert row["consecutive_failures"] == failures
        assert delay * 0.8 - 1 <= row["due_in"] <= delay * 1.2  # back-off with +-20 % jitter
        assert row["keys_fetched_at"] == fetched_at
        assert await issuer.stored() == before

    issuer.server.available = True
    await issuer.end_cooldown()
    assert await refresher.refresh_issuer(issuer.id) is True
    row = await issuer.row()
    assert row["last_error"] is None and row["consecutive_failures"] == 0
    assert row["keys_fetched_at"] > fetched_at
    assert refresher.failures_total == 2


@pytest.mark.parametrize(("cache_control", "expected"), [
    ("max-age=60", 300),  # clamped up
    ("public, max-age=1200", 1200),
    ("max-age=86400, must-revalidate", 3600),  # clamped down
    ("no-store", 300),
    (None, 900),  # settings.jwks_refresh_seconds
])
async def test_cache_control_max_age_sets_the_next_refresh(idp, refresher, cache_control, expected):
    issuer = await idp(jwks_headers={"Cache-Control": cache_control} if cache_control else {})
    assert await refresher.refresh_issuer(issuer.id) is True
    row = await issuer.row()
    assert row["last_error"] is None
    assert expected - 5 <= row["due_in"] <= expected


async def test_concurrent_periodic_refreshes_fetch_once(idp, rdb, refresher_settings):
    """Five replicas find the same issuer due at once; even with a tiny cooldown one fetches."""
    issuer = await idp()
    quick = replace(refresher_settings, jwks_refresh_cooldown_seconds=0.1)
    replicas = [JwksRefresher(quick, rdb) for _ in range(5)]
    results = await asyncio.gather(*(r.refresh_issuer(issuer.id, reason=PERIODIC) for r in replicas))
    assert sorted(results) == [False, False, False, False, True]
    assert issuer.server.jwks_requests == 1
    assert set(await issuer.stored()) == kids(issuer.server)


async def test_a_fetch_longer_than_the_cooldown_is_still_the_only_one(idp, rdb, refresher_settings):
    """The advisory lock, not only the cooldown, keeps a second replica out while a fetch runs."""
    gate = asyncio.Event()
    issuer = await idp(jwks_gate=gate)
    first, second = (JwksRefresher(refresher_settings, rdb) for _ in range(2))
    slow = asyncio.create_task(first.refresh_issuer(issuer.id, reason=PERIODIC))
    try:
        await eventually(lambda: issuer.server.jwks_requests == 1, "the first fetch to reach the JWKS")
        await issuer.end_cooldown()  # as if the cooldown had passed during the slow fetch
        assert await second.refresh_issuer(issuer.id, reason="request") is False
        assert await second.refresh_issuer(issuer.id, reason=PERIODIC) is False
        gate.set()
        assert await asyncio.wait_for(slow, WAIT) is True
    finally:
        gate.set()
        await asyncio.wait_for(slow, WAIT)
    # Afterwards the issuer is no longer due, so a periodic refresh does nothing even without a cooldown.
    await issuer.end_cooldown()
    assert await second.refresh_issuer(issuer.id, reason=PERIODIC) is False
    assert issuer.server.jwks_requests == 1
    assert second.skipped_total == 3


# -- the running service ----------------------------------------------------------


async def test_two_running_refreshers_fetch_a_due_issuer_once(idp, rdb, refresher_settings):
    async with AsyncExitStack() as stack:
        pools = [await create_pool(refresher_settings, min_size=1, max_size=4) for _ in range(2)]
        for pool in pools:
            stack.push_async_callback(pool.close)
        replicas = [JwksRefresher(refresher_settings, pool) for pool in pools]
        for replica in replicas:
            await stack.enter_async_context(running(replica))

        issuer = await idp()  # due at once; the INSERT's NOTIFY makes both replicas look
        await eventually(issuer.stored, "the keys to be stored")
        # Make both replicas scan again after the fetch, and let everything settle.
        scans = [replica.scans_total for replica in replicas]
        await rdb.execute("SELECT pg_notify('tpx_issuers', '')")
        await eventually(lambda: all(r.scans_total > s and r.idle for r, s in zip(replicas, scans)),
                         "both replicas to scan again")
        assert issuer.server.jwks_requests == 1
        assert sum(replica.fetches_total for replica in replicas) == 1


async def test_a_flood_of_refresh_requests_makes_one_fetch(idp, rdb, refresher_settings):
    """200 concurrent requests (exchanges meeting random unknown kids), heard by two replicas."""
    issuer = await idp(due=False)
    async with AsyncExitStack() as stack:
        pools = [await create_pool(refresher_settings, min_size=1, max_size=4) for _ in range(2)]
        for pool in pools:
            stack.push_async_callback(pool.close)
        replicas = [JwksRefresher(refresher_settings, pool) for pool in pools]
        for replica in replicas:
            await stack.enter_async_context(running(replica))

        await asyncio.gather(*(request_refresh(rdb, issuer.id) for _ in range(200)),
                             request_refresh(rdb, "not-an-issuer-id"))
        await eventually(lambda: all(r.requests_total == 200 and r.idle for r in replicas),
                         "both replicas to handle every request")
        assert issuer.server.jwks_requests == 1
        assert sum(replica.fetches_total for replica in replicas) == 1
        assert set(await issuer.stored()) == kids(issuer.server)

        # Once the cooldown has passed, a new request fetches again.
        await issuer.end_cooldown()
        await request_refresh(rdb, issuer.id)
        await eventually(lambda: issuer.server.jwks_requests == 2, "a second fetch after the cooldown")


async def test_listener_reconnects_after_losing_its_connection(idp, rdb, refresher):
    issuer = await idp(due=False)
    async with running(refresher):
        assert refresher.listener.sessions == 1
        terminated = await rdb.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = 'tpx-jwks-refresher' AND datname = current_database()")
        assert terminated >= 1  # (a previous test's closing listener may still be listed)
        await eventually(lambda: refresher.listener.sessions == 2 and refresher.listener.healthy.is_set(),
                         "the refresher to listen again")
        await request_refresh(rdb, issuer.id)
        await eventually(issuer.stored, "the requested refresh")


async def test_run_returns_promptly_when_stopped(refresher):
    stop = asyncio.Event()
    task = asyncio.create_task(refresher.run(stop))
    await asyncio.wait_for(refresher.listener.healthy.wait(), WAIT)
    started = time.monotonic()
    stop.set()
    await asyncio.wait_for(task, 2)
    assert time.monotonic() - started < 1


async def test_stop_lets_the_fetch_in_flight_finish(idp, rdb, refresher):
    gate = asyncio.Event()
    issuer = await idp(due=False, jwks_gate=gate)
    stop = asyncio.Event()
    task = asyncio.create_task(refresher.run(stop))
    try:
        await asyncio.wait_for(refresher.listener.healthy.wait(), WAIT)
        await request_refresh(rdb, issuer.id)
        await eventually(lambda: issuer.server.jwks_requests == 1, "the fetch to reach the JWKS")
        stop.set()
        done, _ = await asyncio.wait({task}, timeout=0.3)
        assert not done, "run() returned while a fetch was still in flight"
        gate.set()
        await asyncio.wait_for(task, 5)
    finally:
        stop.set()
        gate.set()
        await asyncio.wait_for(task, WAIT)
    assert set(await issuer.stored()) == kids(issuer.server)


async def test_service_refreshes_and_relays_the_rotation(idp, refresher_settings):
    stop = asyncio.Event()
    service = asyncio.create_task(serve_refresher(refresher_settings, stop))
    try:
        issuer = await idp()
        await eventually(issuer.stored, "the service to store the keys")
        await eventually(
            lambda: issuer.rotations(),
            "the keys_rotated event")
        await eventually(
            lambda: _published(issuer),
            "the relay to publish the keys_rotated event")
    finally:
        stop.set()
        await asyncio.wait_for(service, WAIT)


async def _published(issuer: Idp) -> bool:
    rows = await issuer.rotations()
    return bool(rows) and await outbox.is_published(issuer.pool, [row["event_id"] for row in rows]) == len(rows)


# -- the fetch rules on their own ---------------------------------------------------


def test_max_age_parsing():
    assert max_age("public, max-age=1200") == 1200
    assert max_age('max-age="60"') == 60
    assert max_age("no-cache, max-age=600") == 0
    assert max_age("max-age=-1") is None
    assert max_age("private") is None
    assert max_age(None) is None


@pytest.mark.parametrize(("host", "addresses", "allow_loopback", "refusal"), [
    ("idp.example", ["10.0.0.7"], False, "a private address"),
    ("idp.example", ["169.254.169.254"], False, "a link-local address"),
    ("idp.example", ["127.0.0.1"], True, "a loopback address"),  # loopback only for a loopback host
    ("localhost", ["127.0.0.1"], False, "a loopback address"),
    ("idp.example", ["::ffff:192.168.1.1"], False, "a private address"),
    ("idp.example", ["fe80::1%eth0"], False, "a link-local address"),
    ("idp.example", ["2002:a00:1::1"], False, "a private address"),  # 6to4 around 10.0.0.1
    ("idp.example", ["64:ff9b::a9fe:a9fe"], False, "a link-local address"),  # NAT64 around 169.254.169.254
    ("idp.example", ["8.8.8.8", "100.64.0.1"], False, "a reserved address"),
    ("idp.example", ["224.0.0.1"], False, "a multicast address"),
])
def test_addresses_are_checked(host, addresses, allow_loopback, refusal):
    with pytest.raises(FetchError) as caught:
        check_addresses(host, addresses, allow_loopback)
    assert refusal in caught.value.message


def test_public_and_allowed_loopback_addresses_pass():
    assert check_addresses("idp.example", ["8.8.8.8", "2606:4700::1111"], False) == ["8.8.8.8", "2606:4700::1111"]
    assert check_addresses("localhost", ["::1", "127.0.0.1"], True) == ["::1", "127.0.0.1"]


@pytest.mark.parametrize(("issuer_url", "allow_loopback", "refusal"), [
    ("http://idp.example", True, "uses plain http"),
    ("http://127.0.0.1:9", False, "uses plain http"),
    ("https://user:pw@idp.example", False, "must not contain credentials"),
    ("ftp://idp.example", False, "is not an https URL"),
    ("https://idp.example:99999", False, "has an invalid port"),
])
async def test_issuer_urls_are_checked_before_any_connection(issuer_url, allow_loopback, refusal):
    async def resolver(host: str, port: int) -> list[str]:
        raise AssertionError("nothing may be resolved for a refused URL")

    with pytest.raises(FetchError) as caught:
        await fetch_jwks(issuer_url, timeout=5, allow_loopback=allow_loopback, resolver=resolver)
    assert refusal in caught.value.message


async def test_redirects_are_not_followed():
    from starlette.applications import Starlette
    from starlette.responses import RedirectResponse
    from starlette.routing import Route

    async def moved(request):
        return RedirectResponse("http://127.0.0.1:9/elsewhere", status_code=302)

    async with serve(Starlette(routes=[Route("/.well-known/openid-configuration", moved)])) as url:
        with pytest.raises(FetchError) as caught:
            await fetch_jwks(url, timeout=5, allow_loopback=True)
    assert caught.value.message == (
        f"the discovery document at '{url}/.well-known/openid-configuration' answered HTTP 302, a redirect; "
        "tpx follows no redirects")


async def test_proxy_variables_are_ignored(monkeypatch):
    server = LoopbackIssuer()
    async with serve(server.app) as url:
        server.url = url
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
            monkeypatch.setenv(name, "http://127.0.0.1:9")  # nothing listens there
        for name in ("NO_PROXY", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
        result = await fetch_jwks(url, timeout=5, allow_loopback=True)
    assert result.jwks_uri == f"{url}/.well-known/jwks"
    assert [key["kid"] for key in result.document["keys"]] == [server.signing_key.kid]
    assert result.max_age == 300


async def test_a_slow_drip_hits_the_total_deadline():
    """Each read is quick, the whole is not: the deadline covers the fetch, not each read."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    base: dict[str, str] = {}

    async def discovery(request):
        return JSONResponse({"issuer": base["url"], "jwks_uri": f"{base['url']}/jwks"})

    async def drip(request):
        async def body():
            yield b'{"keys": ['
            for _ in range(100):  # simulates a server sending a byte every 50 ms, 5 s in all
                await asyncio.sleep(0.05)
                yield b" "
            yield b"]}"
        return StreamingResponse(body(), media_type="application/json")

    app = Starlette(routes=[Route("/.well-known/openid-configuration", discovery), Route("/jwks", drip)])
    async with serve(app) as url:
        base["url"] = url
        started = time.monotonic()
        with pytest.raises(FetchError) as caught:
            await fetch_jwks(url, timeout=0.5, allow_loopback=True)
        assert time.monotonic() - started < 2
    assert caught.value.message == f"discovery and JWKS of '{url}' did not arrive within 0.5 s"
