"""The tokens and used_jtis tables: minted tokens (their lookup key only, no personal data) and spent ID tokens.

Two notions of "live": `LIVE` is the row's own state (not revoked, not expired)
and is what revoking updates; `ACTIVE` adds "no pending revocation rule matches
it" and is what introspection and listings answer, so a bulk revocation takes
effect on every replica the moment its rule commits, before its rows are updated.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Sequence

import asyncpg
import msgspec

from tpx.core.db import locks
from tpx.core.db.outbox import events_from, events_json
from tpx.core.db.pool import affected
from tpx.core.db.revocations import matched_by_pending_rule
from tpx.core.events.types import TOKEN_ISSUED, Event

LIVE = "revoked_at IS NULL AND expires_at > now()"
# For queries that read `FROM tokens` without an alias: the rule check names the table.
ACTIVE = f"{LIVE} AND NOT {matched_by_pending_rule('tokens')}"


def _rfc3339_seconds(column: str) -> str:
    """SQL rendering an instant as tpx.core.times.rfc3339(..., seconds=True) does."""
    return f"""to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')"""


# --- minting -------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Binding:
    """Pin the token's ids on publishers that have none yet (the first exchange of each)."""

    publisher_ids: list[str]
    owner_id: str
    name_id: str


class MintResult(msgspec.Struct, frozen=True):
    """What the mint statement found after the gate, and what it wrote.

    Nothing is written unless every check holds: the issuer is still enabled, the
    key that verified the token is still stored, the token is unexpired by the
    database's clock, and the matched publishers still exist and pin nothing but
    the token's ids (`publishers_ok` False: decide again). With every check held,
    `issued_at` is None when the JTI was already spent.
    """

    issuer_ok: bool
    key_ok: bool
    unexpired: bool
    publishers_ok: bool
    issued_at: datetime | None
    expires_at: datetime | None


# What a replica's caches may have missed, checked after the gate with the statement's own reads: the
# issuer is enabled, the verifying key ($16) is stored, and the token's exp + leeway ($5) is still ahead
# by this database's clock, the clock the spent-JTI purge uses (so no clock skew reopens a replay).
_KILL_SWITCHES = """EXISTS (SELECT 1 FROM issuers WHERE id = $3 AND enabled) AS issuer_ok,
       EXISTS (SELECT 1 FROM issuer_keys WHERE issuer_id = $3 AND kid = $16) AS key_ok,
       to_timestamp($5) > clock_timestamp() AS unexpired"""

# The claim, the token and its events, written only if every check held after the mint gate. The token
# is stamped with the clock read after the gate, so a revocation that fixed its cutoff while this mint
# waited always covers it or never does (docs/decisions.md, "A gate between mints and revocation
# cutoffs"); it expires `lifetime` seconds later, computed here and nowhere else.
_CLAIM_TOKEN_EVENTS = f"""
claim AS (
    INSERT INTO used_jtis (issuer_id, jti, expires_at)
    SELECT $3, $4, to_timestamp($5) FROM checked
    WHERE checked.ok AND checked.issuer_ok AND checked.key_ok AND checked.unexpired
    ON CONFLICT DO NOTHING
    RETURNING clock_timestamp() AS now),
token AS (
    INSERT INTO tokens (id, token_hash, issuer_id, packages, permissions, publisher_ids, ci, repository_key,
                        workflow, issued_at, expires_at)
    SELECT $6, $7, $3, $8, $9, $2::uuid[], $10, $11, $12, claim.now, claim.now + make_interval(secs => $13)
    FROM claim
    RETURNING issued_at, expires_at),
events AS (
    INSERT INTO outbox (event_id, type, source, subject, time, data)
    SELECT e.id, e.type, $15::text, e.subject, token.issued_at,
           CASE WHEN e.type = '{TOKEN_ISSUED}'
                THEN e.data || jsonb_build_object('issued_at', {_rfc3339_seconds('token.issued_at')},
                                                  'expires_at', {_rfc3339_seconds('token.expires_at')})
                ELSE e.data END
    FROM {events_from("$14")}, token)
SELECT checked.issuer_ok, checked.key_ok, checked.unexpired, checked.ok AS publishers_ok,
       (SELECT issued_at FROM token) AS issued_at, (SELECT expires_at FROM token) AS expires_at
FROM checked
"""

# Every matched publisher pins its ids already (every exchange but a publisher's first): check with a fresh
# snapshot that they all still exist (a VOLATILE function, migration 0004; no row locks, which would cost a
# multixact per concurrent mint of one publisher).
_MINT = f"""
WITH gate AS MATERIALIZED (SELECT pg_advisory_xact_lock_shared($1)),
checked AS MATERIALIZED (
    SELECT tpx_publishers_alive($2::uuid[]) = cardinality($2::uuid[]) AS ok, {_KILL_SWITCHES} FROM gate),
{_CLAIM_TOKEN_EVENTS}"""

# Some matched publisher has no ids yet: lock the matched rows after the gate (the same order as a
# deletion), check that each still exists and pins nothing but the token's ids, and pin those. A
# concurrent first exchange with other ids wins or loses on the row lock; the loser writes nothing.
_MINT_BINDING = f"""
WITH gate AS MATERIALIZED (SELECT pg_advisory_xact_lock_shared($1)),
locked AS MATERIALIZED (
    SELECT p.id, p.owner_id, p.name_id FROM publishers p
    WHERE p.id = ANY($2::uuid[]) AND (SELECT true FROM gate)
    FOR UPDATE OF p),
checked AS MATERIALIZED (
    SELECT count(*) = cardinality($2::uuid[])
           AND coalesce(bool_and(coalesce(owner_id, $17) = $17 AND coalesce(name_id, $18) = $18), false) AS ok,
           {_KILL_SWITCHES}
    FROM locked),
bind AS (
    UPDATE publishers p SET owner_id = coalesce(p.owner_id, $17), name_id = coalesce(p.name_id, $18),
                            bound_at = coalesce(p.bound_at, now())
    FROM checked WHERE checked.ok AND checked.issuer_ok AND checked.key_ok AND checked.unexpired
                       AND p.id = ANY($19::uuid[])
    RETURNING p.id),
{_CLAIM_TOKEN_EVENTS}"""


class MintRequest(msgspec.Struct, frozen=True):
    """One exchange's write: what `mint` and `mint_many` insert once every check holds."""

    issuer_id: Any
    kid: str
    jti: str
    jti_expires_at: float
    publisher_ids: list[str]
    binding: Binding | None
    token_id: str
    lookup_key: bytes
    packages: list[str]
    permissions: dict[str, list[str]]
    ci: dict[str, Any]
    repository_key: str
    workflow: str
    lifetime_seconds: int
    events: Sequence[Event]
    source: str

    def arguments(self) -> list[Any]:
        args: list[Any] = [
            locks.MINT_GATE, self.publisher_ids, self.issuer_id, self.jti, self.jti_expires_at, self.token_id,
            self.lookup_key, self.packages, self.permissions, self.ci, self.repository_key, self.workflow,
            float(self.lifetime_seconds), events_json(self.events), self.source, self.kid,
        ]
        if self.binding is not None:
            args += [self.binding.owner_id, self.binding.name_id, self.binding.publisher_ids]
        return args


def _result(row: asyncpg.Record) -> MintResult:
    return MintResult(row["issuer_ok"], row["key_ok"], row["unexpired"], bool(row["publishers_ok"]),
                      row["issued_at"], row["expires_at"])


async def mint(conn: asyncpg.Connection, request: MintRequest) -> MintResult:
    """Write one exchange in one statement (its own transaction): enter the mint gate, check the kill
    switches and (pinning them, with a binding) the matched publishers, claim the (issuer, jti) pair,
    insert the token and its events.

    Each step runs only if the one before succeeded, so a refusal writes nothing.
    """
    return _result(await conn.fetchrow(_MINT_BINDING if request.binding is not None else _MINT,
                                       *request.arguments()))


async def mint_many(conn: asyncpg.Connection, requests: Sequence[MintRequest]) -> list[MintResult]:
    """Write several exchanges in one round trip and one transaction (group commit), each with the
    statement `mint` runs, so each has its own checks and its own JTI outcome; a JTI spent earlier in
    the same group reads as spent. All or nothing: an error in one statement writes none of them.
    Only for requests without a binding (those lock publisher rows and go alone)."""
    if any(request.binding is not None for request in requests):
        raise ValueError("mint_many takes no request with a binding; write those with mint()")
    return [_result(row) for row in await conn.fetchmany(_MINT, [request.arguments() for request in requests])]


async def settled_mint(pool: asyncpg.Pool, lookup_key: bytes, backend_pid: int) -> tuple[bool, asyncpg.Record | None]:
    """After a mint's connection died: end its server session, then tell whether the mint committed.

    The old session may still be running the statement, or may wait for ever on a connection nobody
    will use again (behind a network that dropped it without a word, the server learns of it only from
    TCP keepalive, hours later). So it is ended here, from a fresh connection (a session of the same role;
    `pg_terminate_backend` waits up to 2 s for it to exit); once it is gone its mint has committed or
    never will. The token is then looked up in a statement of its own, whose snapshot is taken after the
    session ended: a single statement would take its snapshot before it looked at pg_stat_activity, and
    a commit between the two would read as "never committed".

    Returns (settled, the token row if the mint committed).
    """
    gone = await pool.fetchval(
        """SELECT coalesce(bool_and(pg_terminate_backend(pid, 2000)), true)
           FROM pg_stat_activity WHERE pid = $1 AND usename = current_user""",
        backend_pid)
    if not gone:
        return False, None
    row = await pool.fetchrow("SELECT issued_at, expires_at FROM tokens WHERE token_hash = $1", lookup_key)
    return True, row


# --- introspection, revocation by the holder, listings -------------------------------------------------------

# The application_name of an exchange replica's listener in releases that read only first-format tokens
# (tpx.core.tokens; tpx.exchange.token_format): later ones connect under another name.
FIRST_FORMAT_READER = "tpx-exchange-listener"


async def first_format_readers(conn: asyncpg.Pool | asyncpg.Connection) -> int:
    """How many exchange replicas of such a release are connected to this database now."""
    return await conn.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = $1",
        FIRST_FORMAT_READER)


async def active_by_keys(conn: asyncpg.Connection, lookup_keys: Sequence[bytes]) -> dict[bytes, asyncpg.Record]:
    """The active tokens among `lookup_keys` (tpx.core.tokens.lookup_key; one statement for a group of
    introspections), by key."""
    rows = await conn.fetch(
        f"""SELECT token_hash, id, packages, permissions, publisher_ids, ci, issued_at, expires_at
            FROM tokens WHERE token_hash = ANY($1::bytea[]) AND {ACTIVE}""",
        lookup_keys,
    )
    return {bytes(row["token_hash"]): row for row in rows}


async def revoke_by_key(conn: asyncpg.Connection, lookup_key: bytes, reason: str) -> asyncpg.Record | None:
    """Revoke one token row; also one a pending rule already covers, so its holder's request is recorded."""
    return await conn.fetchrow(
        f"""UPDATE tokens SET revoked_at = now(), revocation_reason = $2
            WHERE token_hash = $1 AND {LIVE}
            RETURNING id, packages, publisher_ids, ci""",
        lookup_key, reason,
    )


async def list_metadata(
    conn: asyncpg.Connection, *, package: str | None, publisher_id: Any | None, active: bool | None, limit: int,
) -> list[asyncpg.Record]:
    return await conn.fetch(
        f"""SELECT id, packages, permissions, publisher_ids, ci, issued_at, expires_at, revoked_at,
                   revocation_reason, ({ACTIVE}) AS active
            FROM tokens
            WHERE ($1::text IS NULL OR packages @> ARRAY[$1::text])
              AND ($2::uuid IS NULL OR publisher_ids @> ARRAY[$2::uuid])
              AND ($3::boolean IS NULL OR ({ACTIVE}) = $3)
            ORDER BY issued_at DESC, id LIMIT $4""",
        package, publisher_id, active, limit,
    )


# --- the revoker's sweep -------------------------------------------------------------------------------------

async def mark_expired(conn: asyncpg.Connection, limit: int) -> list[asyncpg.Record]:
    """Live tokens past `expires_at` get `expired_at` (once), oldest first; skips rows others hold."""
    return await conn.fetch(
        """UPDATE tokens SET expired_at = now()
           WHERE id = ANY(ARRAY(
               SELECT id FROM tokens
               WHERE expires_at <= now() AND revoked_at IS NULL AND expired_at IS NULL
               ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED))
           RETURNING id, packages, publisher_ids, ci, issued_at, expires_at""",
        limit)


async def purge_used_jtis(conn: asyncpg.Connection, limit: int) -> int:
    """Forget spent JTIs past their `expires_at` (exp + leeway: such an ID token no longer verifies)."""
    return affected(await conn.execute(
        """DELETE FROM used_jtis
           WHERE ctid = ANY(ARRAY(
               SELECT ctid FROM used_jtis WHERE expires_at < now()
               ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED))""",
        limit))


async def purge_old(conn: asyncpg.Connection, limit: int, older_than_seconds: float) -> int:
    """Delete token rows issued and expired longer ago than the retention.

    expires_at <= issued_at + the longest lifetime, so filtering on the issued_at index first is exact.
    """
    return affected(await conn.execute(
        """DELETE FROM tokens
           WHERE id = ANY(ARRAY(
               SELECT id FROM tokens
               WHERE issued_at < now() - make_interval(secs => $2) AND expires_at < now() - make_interval(secs => $2)
               ORDER BY issued_at LIMIT $1 FOR UPDATE SKIP LOCKED))""",
        limit, older_than_seconds))
