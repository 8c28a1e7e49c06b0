"""The outbox table: events written with the change they describe, then sequenced, chained and published.

An event is inserted with the same connection, inside the same transaction, as
the change it describes: it commits with that change or not at all. The relay
(`tpx.core.relay`) gives committed rows their gap-free sequence and hash-chain
link in its own short transaction, publishes them in sequence order, and marks
what the broker confirmed.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Callable, Sequence

import asyncpg
import msgspec

from tpx.core.db import locks
from tpx.core.db.pool import affected
from tpx.core.events.types import Event

# Rows linked (or messages built) between two turns of the event loop: the relay runs beside requests,
# and a batch of 500 in one go held them up for 10-20 ms (the exchange's p99 at 8 connections).
YIELD_EVERY = 50


def events_json(events: Sequence[Event]) -> str:
    """The events of one write as one JSON array, read back by `events_from`: one parameter however many
    there are. msgspec encodes the Structs in C; as parallel arrays (one per column) the driver checked
    each array and each element against collections.abc in Python, ~36 checks per exchange."""
    return msgspec.json.encode(events).decode()


def events_from(parameter: str) -> str:
    """SQL for the rows of an `events_json` text given as `parameter` (e.g. "$1"), as `e`."""
    return (f"jsonb_to_recordset({parameter}::text::jsonb) "
            "AS e(id uuid, type text, subject text, time timestamptz, data jsonb)")


async def add_events(conn: asyncpg.Connection, events: Sequence[Event], *, source: str) -> None:
    if not events:
        return
    await conn.execute(f"""INSERT INTO outbox (event_id, type, source, subject, time, data)
                           SELECT e.id, e.type, $2::text, e.subject, e.time, e.data FROM {events_from("$1")}""",
                       events_json(events), source)


# --- the relay -----------------------------------------------------------------------------------------------

async def try_lead(conn: asyncpg.Connection, timeout: float) -> bool:
    """Take the relay leadership on this (dedicated) session; False while another relay holds it."""
    return await conn.fetchval("SELECT pg_try_advisory_lock($1)", locks.RELAY_LEADER, timeout=timeout)


async def assign_sequences(pool: asyncpg.Pool, limit: int,
                           link: Callable[[bytes, int, asyncpg.Record], bytes]) -> int:
    """Give up to `limit` committed, unsequenced rows the next sequences and chain links, in `id` order.

    `link(previous chainhash, sequence, row)` returns the row's chainhash. One
    transaction under the sequence lock, so a rolled-back writer never takes a
    number and two relays never interleave; returns how many rows it numbered.
    The rows are read without row locks: the sequence lock is all that orders
    writers of unsequenced rows (only this step updates them, and the purge
    deletes sequenced rows only), and a row lock is a heap write and a WAL
    record per event.
    """
    async with pool.acquire() as conn:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", locks.SEQUENCE)
            rows = await conn.fetch(
                """SELECT id, event_id, type, source, subject, time, data
                   FROM outbox WHERE sequence IS NULL ORDER BY id LIMIT $1""", limit)
            if not rows:
                return 0
            head = await conn.fetchrow("SELECT sequence, chainhash FROM event_chain FOR UPDATE")
            sequence, previous = head["sequence"], bytes(head["chainhash"])
            ids, sequences, hashes = [], [], []
            for index, row in enumerate(rows):
                if index and index % YIELD_EVERY == 0:
                    await asyncio.sleep(0)  # let requests run: a link costs tens of microseconds
                sequence += 1
                previous = link(previous, sequence, row)
                ids.append(row["id"])
                sequences.append(sequence)
                hashes.append(previous)
            await conn.execute(  # one statement for the batch, not one per row
                "UPDATE outbox o SET sequence = u.sequence, chainhash = u.chainhash "
                "FROM unnest($1::bigint[], $2::bigint[], $3::bytea[]) AS u(id, sequence, chainhash) "
                "WHERE o.id = u.id", ids, sequences, hashes)
            await conn.execute("UPDATE event_chain SET sequence = $1, chainhash = $2", sequence, previous)
    return len(rows)


async def unpublished(pool: asyncpg.Pool, limit: int) -> list[asyncpg.Record]:
    """Sequenced rows after the broker-confirmed pointer, in sequence order."""
    return await pool.fetch(
        """SELECT event_id, type, source, subject, time, data, sequence, chainhash FROM outbox
           WHERE sequence > (SELECT published_sequence FROM event_chain) ORDER BY sequence LIMIT $1""", limit)


async def mark_published(pool: asyncpg.Pool, through_sequence: int) -> None:
    """Every event up to `through_sequence` is confirmed: one row written however large the batch."""
    await pool.execute("UPDATE event_chain SET published_sequence = greatest(published_sequence, $1)",
                       through_sequence)


async def is_published(conn: asyncpg.Connection | asyncpg.Pool, event_ids: Sequence[uuid.UUID]) -> int:
    """How many of `event_ids` the broker has confirmed."""
    return await conn.fetchval(
        """SELECT count(*) FROM outbox, event_chain
           WHERE outbox.event_id = ANY($1::uuid[]) AND outbox.sequence <= event_chain.published_sequence""",
        list(event_ids))


async def backlog(pool: asyncpg.Pool) -> tuple[int, float]:
    """Events committed but not confirmed (sequenced or not), and the age in seconds of the oldest one.

    Index scans only: the unsequenced rows (a partial index) and the rows after
    the published pointer (the sequence index); the outbox itself keeps published
    rows for the retention period.
    """
    row = await pool.fetchrow(
        """SELECT count(*) AS backlog, coalesce(extract(epoch FROM now() - min(time)), 0) AS lag FROM (
               SELECT time FROM outbox WHERE sequence IS NULL
               UNION ALL
               SELECT time FROM outbox WHERE sequence > (SELECT published_sequence FROM event_chain)) AS pending""")
    return row["backlog"], float(row["lag"])


async def purge_published(conn: asyncpg.Connection, limit: int, older_than_seconds: float) -> int:
    """Delete published rows older than the retention, oldest first; the row with the highest sequence
    always stays (the relay numbers new events after it). Only the oldest `limit` rows by sequence are
    looked at: published rows form a prefix in sequence order, so this stops at the first recent one."""
    status = await conn.execute(
        """DELETE FROM outbox
           WHERE id = ANY(ARRAY(
               SELECT oldest.id FROM (
                   SELECT id, sequence, time FROM outbox
                   WHERE sequence IS NOT NULL ORDER BY sequence LIMIT $1 FOR UPDATE SKIP LOCKED
               ) oldest
               WHERE oldest.time < now() - make_interval(secs => $2)
                 AND oldest.sequence <= (SELECT published_sequence FROM event_chain)
                 AND oldest.sequence < (SELECT max(sequence) FROM outbox)))""",
        limit, older_than_seconds)
    return affected(status)
