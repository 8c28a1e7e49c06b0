"""Group read (tpx.exchange.group_read) behind introspection: concurrent lookups share one statement,
each gets its own answer, and none is answered by a read that began before it was asked."""

from __future__ import annotations

import asyncio

import pytest

from tpx.core import tokens
from tpx.core.db import tokens as token_store
from tpx.exchange.group_read import GroupRead

pytestmark = pytest.mark.integration


class CountedReads:
    """token_store.active_by_keys as it is, with the groups it was called with recorded."""

    def __init__(self) -> None:
        self.groups: list[list[bytes]] = []
        self.hold: asyncio.Event | None = None   # set: the next read waits on it after its statement ran

    async def __call__(self, conn, hashes):
        self.groups.append(list(hashes))
        found = await token_store.active_by_keys(conn, hashes)
        if self.hold is not None:
            hold, self.hold = self.hold, None
            await hold.wait()
        return found


async def minted(repo, count: int) -> list[str]:
    return [(await repo.exchange(repo.token())).json()["token"] for _ in range(count)]


async def test_lookups_that_arrive_while_one_is_read_share_one_statement(repo, db):
    await repo.add_publisher()
    live = await minted(repo, 4)
    revoked = live.pop()
    await token_store.revoke_by_key(db, tokens.lookup_key(revoked), "test")
    unknown = tokens.generate()
    reads = CountedReads()
    reads.hold = release = asyncio.Event()
    group_read = GroupRead(db, reads, max_in_flight=1)
    asked = [live[0], *live, revoked, unknown, live[1]]
    first = asyncio.create_task(group_read.read(tokens.lookup_key(asked[0])))
    while not reads.groups:          # the first is read at once, alone, and held in flight
        await asyncio.sleep(0)
    rest = [asyncio.create_task(group_read.read(tokens.lookup_key(t))) for t in asked[1:]]
    await asyncio.sleep(0)           # their first steps: each queues its lookup behind the first
    release.set()
    rows = await asyncio.gather(first, *rest)
    assert [row is not None for row in rows] == [True, True, True, True, False, False, True]
    assert [str(row["id"]) for row in rows[1:4]] == [
        str(await db.fetchval("SELECT id FROM tokens WHERE token_hash = $1", tokens.lookup_key(t))) for t in live]
    # The other six queued behind the first and went in one statement.
    assert [len(group) for group in reads.groups] == [1, 6]


async def test_lookups_that_arrive_together_share_one_statement(repo, db):
    await repo.add_publisher()
    live = await minted(repo, 3)
    reads = CountedReads()
    group_read = GroupRead(db, reads)
    rows = await asyncio.gather(*(group_read.read(tokens.lookup_key(t)) for t in live))
    assert all(row is not None for row in rows)
    assert [len(group) for group in reads.groups] == [3]


async def test_a_lone_lookup_is_read_at_once(repo, db):
    await repo.add_publisher()
    (token,) = await minted(repo, 1)
    reads = CountedReads()
    group_read = GroupRead(db, reads)
    for _ in range(3):
        assert await group_read.read(tokens.lookup_key(token)) is not None
    assert [len(group) for group in reads.groups] == [1, 1, 1]


async def test_a_lookup_never_joins_a_read_that_began_before_it(repo, db):
    """Revoked while a read of the same token is in flight (its snapshot already taken, token active):
    a lookup asked after the revocation committed waits for a read of its own and sees it revoked."""
    await repo.add_publisher()
    (token,) = await minted(repo, 1)
    key = tokens.lookup_key(token)
    reads = CountedReads()
    reads.hold = release = asyncio.Event()
    group_read = GroupRead(db, reads, max_in_flight=1)
    before = asyncio.create_task(group_read.read(key))
    while not reads.groups:
        await asyncio.sleep(0)
    assert await token_store.revoke_by_key(db, key, "test") is not None
    after = asyncio.create_task(group_read.read(key))
    await asyncio.sleep(0)
    release.set()
    assert await before is not None      # read before the revocation
    assert await after is None           # asked after it: inactive
    assert len(reads.groups) == 2


async def test_a_failed_read_fails_each_of_its_lookups_and_the_next_read_works(repo, db):
    await repo.add_publisher()
    (token,) = await minted(repo, 1)
    calls = 0

    async def failing_once(conn, hashes):
        nonlocal calls
        calls += 1
        if calls == 1:
            await conn.fetchval("SELECT 1 / 0")
        return await token_store.active_by_keys(conn, hashes)

    group_read = GroupRead(db, failing_once, max_in_flight=1)
    failing = asyncio.create_task(group_read.read(tokens.lookup_key(token)))
    while not calls:                 # the first read is in flight, alone
        await asyncio.sleep(0)
    outcomes = await asyncio.gather(failing, *(group_read.read(tokens.lookup_key(token)) for _ in range(2)),
                                    return_exceptions=True)
    assert type(outcomes[0]).__name__ == "DivisionByZeroError"
    assert all(o is not None and not isinstance(o, Exception) for o in outcomes[1:])
    assert await group_read.read(tokens.lookup_key(token)) is not None
