"""Group commit (tpx.exchange.group_commit): concurrent mints share a transaction, each keeps its own outcome."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from msgspec.structs import replace

import asyncpg
import pytest
from prometheus_client import REGISTRY

from tpx.core.db import publishers as publisher_store
from tpx.core.db.locks import MINT_GATE
from tpx.core.db.pool import create_pool
from tpx.exchange import minting
from tpx.exchange.group_commit import GroupCommit, MintLost
from tpx.exchange.minting import decide, write
from tpx.exchange.verification import verify_id_token
from tests.support.events import eventually

pytestmark = pytest.mark.integration


async def decisions(repo, db, exchange_app, settings, count: int, **claims):
    """`count` decisions for distinct ID tokens of `repo` (or the same one, given a fixed jti)."""
    keycache = exchange_app.state.tpx.keycache
    verified = [await verify_id_token(repo.issuer.mint(repo.claims(**claims)), keycache, settings)
                for _ in range(count)]
    candidates = await publisher_store.candidates(db, verified[0].issuer.id, verified[0].identity.repository_key)
    return [decide(v, candidates, settings) for v in verified]


async def transactions_of(db, token_ids) -> int:
    """How many transactions wrote these tokens (rows one transaction inserted share its xmin)."""
    return await db.fetchval("SELECT count(DISTINCT xmin::text) FROM tokens WHERE id = ANY($1::uuid[])",
                             [uuid.UUID(t) for t in token_ids])


async def test_mints_that_arrive_while_one_is_written_commit_together(repo, db, exchange_app, settings):
    await repo.add_publisher(repository_owner_id=repo.owner_id, repository_id=repo.repository_id)
    group_commit = GroupCommit(db, max_in_flight=1)
    first, *rest = await decisions(repo, db, exchange_app, settings, 20)
    async with held_gate(db):
        writes = [asyncio.create_task(write(group_commit, settings, first))]
        await gate_waiter(db)            # the first is in flight, alone
        writes += [asyncio.create_task(write(group_commit, settings, d)) for d in rest]
        await until_queued(group_commit, 19)
    minted = await asyncio.gather(*writes)
    assert all(m is not None for m in minted)
    ids = [m.token_id for m in minted]
    assert len(set(ids)) == 20
    # The other 19 queued behind the first and went in one transaction.
    assert await transactions_of(db, ids) == 2
    events = await db.fetchval("SELECT count(*) FROM outbox WHERE type = 'dev.tpx.token.issued' "
                               "AND subject = ANY($1::text[])", ids)
    assert events == 20


async def test_mints_that_arrive_together_commit_together(repo, db, exchange_app, settings):
    """Exchanges that reach the queue in the same turn of the event loop share the first transaction,
    even with writers free (each used to start one of its own)."""
    await repo.add_publisher(repository_owner_id=repo.owner_id, repository_id=repo.repository_id)
    group_commit = GroupCommit(db, max_in_flight=3)
    minted = await asyncio.gather(*(write(group_commit, settings, d)
                                    for d in await decisions(repo, db, exchange_app, settings, 5)))
    assert await transactions_of(db, [m.token_id for m in minted]) == 1


async def test_an_idle_service_writes_a_lone_mint_at_once_in_its_own_transaction(repo, db, exchange_app, settings):
    await repo.add_publisher(repository_owner_id=repo.owner_id, repository_id=repo.repository_id)
    group_commit = GroupCommit(db)
    ids = []
    for decision in await decisions(repo, db, exchange_app, settings, 3):
        ids.append((await write(group_commit, settings, decision)).token_id)
    assert await transactions_of(db, ids) == 3


async def test_the_same_id_token_twice_in_one_group_is_minted_once(repo, db, exchange_app, settings):
    await repo.add_publisher(repository_owner_id=repo.owner_id, repository_id=repo.repository_id)
    group_commit = GroupCommit(db, max_in_flight=1)
    first, *same = await decisions(repo, db, exchange_app, settings, 4, jti=f"jti-{uuid.uuid4()}")
    other = (await decisions(repo, db, exchange_app, settings, 1))[0]
    outcomes = await asyncio.gather(write(group_commit, settings, other), write(group_commit, settings, first),
                                    *(write(group_commit, settings, d) for d in same), return_exceptions=True)
    assert outcomes[0] is not None and outcomes[1] is not None
    assert [getattr(o, "code", o) for o in outcomes[2:]] == ["token_reused"] * 3
    assert await transactions_of(db, [outcomes[0].token_id, outcomes[1].token_id]) == 1   # one group


async def test_a_mint_that_fails_in_a_group_fails_alone(repo, db, exchange_app, settings, monkeypatch):
    """A database error in one statement rolls the group back; each mint is then written alone, so only
    the one at fault fails (here: its token id is already taken)."""
    await repo.add_publisher(repository_owner_id=repo.owner_id, repository_id=repo.repository_id)
    group_commit = GroupCommit(db, max_in_flight=1)
    decided = await decisions(repo, db, exchange_app, settings, 6)
    taken = (await write(group_commit, settings, decided[0])).token_id
    # The exchanges below draw their token ids in order and go in one group, which the second one's
    # (taken) id fails.
    ids = iter([str(uuid.uuid4()), taken, str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())])
    monkeypatch.setattr(minting, "new_id", lambda: next(ids))
    outcomes = await asyncio.gather(*(write(group_commit, settings, d) for d in decided[1:]), return_exceptions=True)
    assert isinstance(outcomes[1], asyncpg.UniqueViolationError), outcomes
    assert all(isinstance(o, minting.MintedToken) for o in outcomes[:1] + outcomes[2:]), outcomes
    assert await db.fetchval("SELECT count(*) FROM used_jtis WHERE jti = $1", decided[2].verified.jti) == 0
    assert await transactions_of(db, [o.token_id for o in outcomes[2:]]) == 3  # written one by one


async def test_a_group_whose_connection_dies_is_lost_with_the_session_to_settle(repo, db, exchange_app, settings):
    """Lost mid-statement, alone or as a group, every mint is ambiguous with the session that ran it."""
    await repo.add_publisher(repository_owner_id=repo.owner_id, repository_id=repo.repository_id)
    pool = await create_pool(settings, min_size=1, max_size=1)
    try:
        group_commit = GroupCommit(pool, max_in_flight=1)
        decided = await decisions(repo, db, exchange_app, settings, 4)
        async with held_gate(db):
            writes = [asyncio.create_task(write(group_commit, settings, decided[0]))]
            alone = await gate_waiter(db)
            writes += [asyncio.create_task(write(group_commit, settings, d)) for d in decided[1:]]
            await until_queued(group_commit, 3)
            await db.execute("SELECT pg_terminate_backend($1)", alone)
            group = await gate_waiter(db, other_than=alone)
            await db.execute("SELECT pg_terminate_backend($1)", group)
            outcomes = await asyncio.gather(*writes, return_exceptions=True)
    finally:
        await pool.close()
    assert all(isinstance(o, minting.AmbiguousMint) for o in outcomes), outcomes
    assert [o.backend_pid for o in outcomes] == [alone, group, group, group]
    assert await db.fetchval("SELECT count(*) FROM tokens WHERE id = ANY($1::uuid[])",
                             [uuid.UUID(o.token_id) for o in outcomes]) == 0


@contextlib.asynccontextmanager
async def held_gate(db):
    """The mint gate held exclusively in a transaction of its own: every mint waits on it until the block ends."""
    async with db.acquire() as gate:
        transaction = gate.transaction()
        await transaction.start()
        await gate.execute("SELECT pg_advisory_xact_lock($1)", MINT_GATE)
        try:
            yield
        finally:
            await transaction.rollback()


async def until_queued(group_commit: GroupCommit, count: int) -> None:
    """Until `count` mints wait in the queue for a writer (their exchanges have reached it)."""
    for _ in range(1000):
        if len(group_commit._groups._queue) >= count:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"{count} mints never queued")


async def gate_waiter(db, other_than: int | None = None) -> int:
    """The pid of a session waiting for the mint gate (an advisory lock), once there is one."""
    found: list[int] = []

    async def waiting() -> bool:
        pid = await db.fetchval("SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                                "AND pid IS DISTINCT FROM $1 LIMIT 1", other_than)
        found.extend([pid] if pid else [])
        return bool(found)

    await eventually(waiting, "a mint waiting on the gate")
    return found[0]


def test_a_request_that_pins_ids_is_never_grouped():
    from tpx.core.db.tokens import Binding, MintRequest, mint_many
    request = MintRequest(issuer_id=None, kid="k", jti="j", jti_expires_at=0.0, publisher_ids=[],
                          binding=Binding([], "1", "2"), token_id=uuid.uuid4(), lookup_key=b"", packages=[],
                          permissions={}, ci={}, repository_key="r", workflow="w", lifetime_seconds=1, events=[],
                          source="s")
    with pytest.raises(ValueError, match="binding"):
        asyncio.run(mint_many(None, [request, replace(request, binding=None)]))
    assert MintLost(7).backend_pid == 7


async def test_an_exchange_cancelled_while_its_mint_waits_does_not_cancel_the_write(repo, db, exchange_app, settings,
                                                                                     monkeypatch):
    """A client that goes away cancels its own wait only: its mint commits or not with its group (like a
    mint whose answer was lost on the network), and the other exchanges of the group get their tokens."""
    await repo.add_publisher(repository_owner_id=repo.owner_id, repository_id=repo.repository_id)
    group_commit = GroupCommit(db, max_in_flight=1)
    decided = await decisions(repo, db, exchange_app, settings, 4)
    ids = [str(uuid.uuid4()) for _ in decided]
    monkeypatch.setattr(minting, "new_id", iter(ids).__next__)
    async with held_gate(db):
        writes = [asyncio.create_task(write(group_commit, settings, decided[0]))]
        await gate_waiter(db)            # the first is in flight, alone
        writes += [asyncio.create_task(write(group_commit, settings, d)) for d in decided[1:]]
        await until_queued(group_commit, 3)
        writes[0].cancel()               # in flight
        writes[2].cancel()               # queued
    outcomes = await asyncio.gather(*writes, return_exceptions=True)
    assert [type(o).__name__ for o in outcomes] == ["CancelledError", "MintedToken", "CancelledError", "MintedToken"]
    assert await db.fetchval("SELECT count(*) FROM tokens WHERE id = ANY($1::uuid[])", ids) == 4
    assert await transactions_of(db, ids) == 2


def group_metrics() -> tuple[float, float, float]:
    """(groups written, mints in them, groups timed) so far, from the process's metrics."""
    return (REGISTRY.get_sample_value("tpx_mint_group_size_count") or 0.0,
            REGISTRY.get_sample_value("tpx_mint_group_size_sum") or 0.0,
            REGISTRY.get_sample_value("tpx_mint_write_duration_seconds_count") or 0.0)


async def test_each_group_is_measured_once_with_its_size(repo, db, exchange_app, settings):
    await repo.add_publisher(repository_owner_id=repo.owner_id, repository_id=repo.repository_id)
    group_commit = GroupCommit(db, max_in_flight=1)
    decided = await decisions(repo, db, exchange_app, settings, 8)
    groups, mints, timed = group_metrics()
    alone = REGISTRY.get_sample_value("tpx_mint_group_size_bucket", {"le": "4.0"}) or 0.0
    minted = await asyncio.gather(*(write(group_commit, settings, d) for d in decided))
    assert all(m is not None for m in minted)
    # The eight arrived together and went in one group.
    assert group_metrics() == (groups + 1, mints + 8, timed + 1)
    assert REGISTRY.get_sample_value("tpx_mint_group_size_bucket", {"le": "4.0"}) == alone
