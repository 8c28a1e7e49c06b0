"""The revocations table: revocation rules, and applying them to token rows in batches.

The one definition of "token t is matched by rule r" lives here (`_condition`):
introspection joins the pending rules (`matched_by_pending_rule`), batch
application binds one rule's values as parameters (`revoke_batch`), so the two
can never disagree on what a rule covers.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Callable

import asyncpg

from tpx.core.db import locks
from tpx.core.db.outbox import add_events
from tpx.core.db.pool import affected
from tpx.core.events import builders
from tpx.core.revocations import KINDS, Rule, Selector

# Tokens revoked per transaction: large enough to finish typical revocations in the
# admin call, small enough that no transaction holds row locks for long. Read at call
# time (tests lower it with monkeypatch).
BATCH_SIZE = 5000

# SQL type of every rule field a condition may read, for binding it as a parameter.
_FIELD_TYPES = {
    "token_id": "uuid", "publisher_id": "uuid", "package": "text", "repository_key": "text", "workflow": "text",
    "issued_after": "timestamptz", "issued_before": "timestamptz", "cutoff": "timestamptz",
}

_COLUMNS = """id, kind, token_id, publisher_id, package, repository_key, workflow, issued_after, issued_before,
              cutoff, reason, actor, status, revoked, created_at, completed_at"""


def _condition(kind: str, field: Callable[[str], str], t: str) -> str:
    """When token `t` is matched by a rule of `kind`; `field(name)` renders one of the rule's fields.

    `@>` on a one-element array means the same as `= ANY(...)` for a non-NULL value,
    and it is what the GIN indexes on `tokens.publisher_ids` and `tokens.packages` serve.
    """
    if kind == "token":
        return f"{t}.id = {field('token_id')}"
    if kind == "publisher":
        return f"{t}.publisher_ids @> ARRAY[{field('publisher_id')}]"
    if kind == "package":
        return f"{t}.packages @> ARRAY[{field('package')}]"
    if kind == "repository":
        return (
            f"{t}.repository_key = {field('repository_key')}"
            f" AND ({field('workflow')} IS NULL OR {t}.workflow = {field('workflow')})"
            f" AND ({field('issued_after')} IS NULL OR {t}.issued_at >= {field('issued_after')})"
            f" AND ({field('issued_before')} IS NULL OR {t}.issued_at < {field('issued_before')})"
        )
    raise ValueError(f"unknown revocation kind {kind!r}")


def matches(r: str, t: str) -> str:
    """SQL: rule row `r` matches token row `t` (any kind). Only tokens issued up to the cutoff are affected."""
    def field(name: str) -> str:
        return f"{r}.{name}"

    arms = " OR ".join(f"({r}.kind = '{kind}' AND {_condition(kind, field, t)})" for kind in KINDS)
    return f"({t}.issued_at <= {r}.cutoff AND ({arms}))"


def matched_by_pending_rule(t: str) -> str:
    """SQL: some pending rule matches token row `t`. Cheap: pending rules are few (partial index)."""
    return f"EXISTS (SELECT 1 FROM revocations pending_rule WHERE pending_rule.status = 'pending' AND {matches('pending_rule', t)})"


def _bound(rule: Rule, t: str) -> tuple[str, list[Any]]:
    """The rule's condition on token `t` with its values as parameters $1..$n (only the ones it reads)."""
    names: list[str] = []

    def field(name: str) -> str:
        if name not in names:
            names.append(name)
        return f"${names.index(name) + 1}::{_FIELD_TYPES[name]}"

    condition = _condition(rule.kind, field, t)
    sql = f"{t}.issued_at <= {field('cutoff')} AND {condition}"
    return sql, [getattr(rule, name) for name in names]


# --- rules ---------------------------------------------------------------------------------------------------

async def enter_gate_alone(conn: asyncpg.Connection) -> None:
    """Take the mint gate exclusively for this transaction: every mint that began earlier has committed,
    and every later one stamps its token after this moment (docs/decisions.md)."""
    await conn.execute("SELECT pg_advisory_xact_lock($1)", locks.MINT_GATE)


async def insert(conn: asyncpg.Connection, selector: Selector, *, reason: str, actor: str | None) -> Rule:
    """Insert a pending rule once in-flight mints have committed; its cutoff is that moment."""
    await enter_gate_alone(conn)
    row = await conn.fetchrow(
        f"""INSERT INTO revocations (kind, token_id, publisher_id, package, repository_key, workflow,
                                     issued_after, issued_before, reason, actor, cutoff)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, clock_timestamp()) RETURNING {_COLUMNS}""",
        selector.kind, selector.token_id, selector.publisher_id, selector.package, selector.repository_key,
        selector.workflow, selector.issued_after, selector.issued_before, reason, actor,
    )
    return Rule.from_row(row)


async def get(conn: asyncpg.Connection | asyncpg.Pool, rule_id: uuid.UUID) -> Rule | None:
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM revocations WHERE id = $1", rule_id)
    return Rule.from_row(row) if row else None


async def lock(conn: asyncpg.Connection, rule_id: uuid.UUID) -> Rule | None:
    """Lock the rule for this transaction: appliers of one rule take turns, so none marks it done
    while another's batch is still uncommitted."""
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM revocations WHERE id = $1 FOR UPDATE", rule_id)
    return Rule.from_row(row) if row else None


async def for_publisher(conn: asyncpg.Connection, publisher_id: uuid.UUID) -> list[Rule]:
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM revocations WHERE kind = 'publisher' AND publisher_id = $1 ORDER BY created_at",
        publisher_id,
    )
    return [Rule.from_row(row) for row in rows]


async def lock_publisher_deletion(conn: asyncpg.Connection, publisher_id: uuid.UUID) -> None:
    """Serialise, for this transaction, the handling of one publisher's deletion (two deliveries of its
    message must not both create a rule)."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", f"tpx.revoker.publisher:{publisher_id}")


async def stale_pending(conn: asyncpg.Connection | asyncpg.Pool, older_than_seconds: float, limit: int) -> list[uuid.UUID]:
    """Pending rules created a while ago: their message may have been lost or dead-lettered."""
    rows = await conn.fetch(
        """SELECT id FROM revocations
           WHERE status = 'pending' AND created_at < now() - make_interval(secs => $1)
           ORDER BY created_at LIMIT $2""",
        older_than_seconds, limit,
    )
    return [row["id"] for row in rows]


async def purge_done(conn: asyncpg.Connection, limit: int, older_than_seconds: float) -> int:
    """Delete rules that finished longer ago than the retention."""
    return affected(await conn.execute(
        """DELETE FROM revocations
           WHERE id = ANY(ARRAY(
               SELECT id FROM revocations
               WHERE status = 'done' AND completed_at < now() - make_interval(secs => $2)
               LIMIT $1 FOR UPDATE SKIP LOCKED))""",
        limit, older_than_seconds))


# --- applying a rule -----------------------------------------------------------------------------------------

async def revoke_batch(conn: asyncpg.Connection, rule: Rule, limit: int) -> list[asyncpg.Record]:
    """Revoke up to `limit` live tokens the rule matches; skip rows other transactions hold."""
    condition, args = _bound(rule, "t")
    n = len(args)
    return await conn.fetch(
        f"""UPDATE tokens SET revoked_at = now(), revocation_reason = ${n + 2}
            WHERE id = ANY(ARRAY(
                SELECT t.id FROM tokens t
                WHERE {condition} AND t.revoked_at IS NULL AND t.expires_at > now()
                LIMIT ${n + 1} FOR UPDATE SKIP LOCKED))
            RETURNING id, packages, publisher_ids, ci""",
        *args, limit, rule.reason,
    )


async def has_remaining(conn: asyncpg.Connection, rule: Rule) -> bool:
    """Whether a live token the rule matches is left, including rows others hold locked (never skipped here)."""
    condition, args = _bound(rule, "t")
    return await conn.fetchval(
        f"SELECT EXISTS (SELECT 1 FROM tokens t WHERE {condition} AND t.revoked_at IS NULL AND t.expires_at > now())",
        *args,
    )


async def _record(conn: asyncpg.Connection, rule_id: uuid.UUID, revoked: int, *, complete: bool) -> Rule:
    row = await conn.fetchrow(
        f"""UPDATE revocations SET revoked = revoked + $2,
                   status = CASE WHEN $3 THEN 'done' ELSE status END,
                   completed_at = CASE WHEN $3 THEN now() ELSE completed_at END
            WHERE id = $1 RETURNING {_COLUMNS}""",
        rule_id, revoked, complete,
    )
    return Rule.from_row(row)


@dataclass(frozen=True)
class Progress:
    """The outcome of one batch: the rule afterwards and how many tokens this batch revoked."""

    rule: Rule
    revoked: int

    @property
    def done(self) -> bool:
        return self.rule.done


async def apply_batch(conn: asyncpg.Connection, rule: Rule, *, batch_size: int, source: str) -> Progress:
    """Apply one batch of a pending rule inside the caller's transaction, with its events.

    The caller holds the rule row (it inserted it, or `lock`ed it). When the batch
    was not full and no matching live token is left, the rule is marked done and
    one `revocation.completed` event is written.
    """
    if rule.done:
        return Progress(rule, 0)
    rows = await revoke_batch(conn, rule, batch_size)
    events = [builders.token_revoked(row, rule.reason, rule.id) for row in rows]
    complete = len(rows) < batch_size and not await has_remaining(conn, rule)
    if rows or complete:
        rule = await _record(conn, rule.id, len(rows), complete=complete)
    if complete:
        events.append(builders.revocation_completed(rule))
    await add_events(conn, events, source=source)
    return Progress(rule, len(rows))


async def start(conn: asyncpg.Connection, selector: Selector, *, reason: str, actor: str, source: str) -> Progress:
    """Inside the caller's transaction: commit the rule, apply its first batch, announce what is left.

    A rule still pending after the first batch gets a `revocation.requested`
    event, which wakes the revoker; until then introspection already treats
    every token it matches as inactive.
    """
    rule = await insert(conn, selector, reason=reason, actor=actor)
    progress = await apply_batch(conn, rule, batch_size=BATCH_SIZE, source=source)
    if not progress.done:
        await add_events(conn, [builders.revocation_requested(progress.rule)], source=source)
    return progress
