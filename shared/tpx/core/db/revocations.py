"""Revocation rules: the one definition of "token t is matched by revocation r".

A revocation is a rule first: while it is `pending`, introspection treats every
token it matches as inactive (on every replica, since they all read the same
table), so revoking is instant however many tokens it covers. The rule is then
applied to token rows in short batches (the admin API does the first one, the
revoker the rest) and marked `done` once no live token it matches is left.

Both uses render their SQL from the same per-kind conditions (`_condition`):
introspection joins the pending rules (`matched_by_pending_rule`), batch
application binds one rule's values as parameters (`revoke_batch`), so the two
can never disagree on what a rule covers.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from typing import Any, Callable

import asyncpg

from tpx.core.events import types as event_types
from tpx.core.events.outbox import Event, add_events

# Tokens revoked per transaction: large enough to finish typical revocations in the
# admin call, small enough that no transaction holds row locks for long. Read at call
# time (tests lower it with monkeypatch).
BATCH_SIZE = 5000

KINDS = ("token", "publisher", "package", "repository")

# SQL type of every rule field a condition may read, for binding it as a parameter.
_FIELD_TYPES = {
    "token_id": "uuid", "publisher_id": "uuid", "package": "text", "repository_key": "text", "workflow": "text",
    "issued_after": "timestamptz", "issued_before": "timestamptz", "cutoff": "timestamptz",
}

_COLUMNS = """id, kind, token_id, publisher_id, package, repository_key, workflow, issued_after, issued_before,
              cutoff, reason, actor, status, revoked, created_at, completed_at"""

_TOKEN_RETURNING = "id, packages, publisher_ids, ci"


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


@dataclass(frozen=True)
class Selector:
    """What a revocation covers: exactly one kind, with that kind's fields."""

    kind: str
    token_id: uuid.UUID | None = None
    publisher_id: uuid.UUID | None = None
    package: str | None = None
    repository_key: str | None = None
    workflow: str | None = None
    issued_after: datetime | None = None
    issued_before: datetime | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown revocation kind {self.kind!r}")
        required = {"token": "token_id", "publisher": "publisher_id", "package": "package",
                    "repository": "repository_key"}[self.kind]
        if getattr(self, required) is None:
            raise ValueError(f"a {self.kind} revocation needs {required}")

    def to_api(self) -> dict[str, Any]:
        """The selector as the API and events show it (only the fields that apply)."""
        if self.kind == "token":
            return {"token_id": str(self.token_id)}
        if self.kind == "publisher":
            return {"publisher_id": str(self.publisher_id)}
        if self.kind == "package":
            return {"package": self.package}
        out: dict[str, Any] = {"repository": self.repository_key}
        if self.workflow is not None:
            out["workflow"] = self.workflow
        if self.issued_after is not None:
            out["issued_after"] = rfc3339(self.issued_after)
        if self.issued_before is not None:
            out["issued_before"] = rfc3339(self.issued_before)
        return out


@dataclass(frozen=True)
class Rule:
    """A stored revocation rule."""

    id: uuid.UUID
    kind: str
    token_id: uuid.UUID | None
    publisher_id: uuid.UUID | None
    package: str | None
    repository_key: str | None
    workflow: str | None
    issued_after: datetime | None
    issued_before: datetime | None
    cutoff: datetime
    reason: str
    actor: str | None
    status: str
    revoked: int
    created_at: datetime
    completed_at: datetime | None

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> "Rule":
        return cls(**{f.name: row[f.name] for f in fields(cls)})

    @property
    def selector(self) -> Selector:
        return Selector(self.kind, self.token_id, self.publisher_id, self.package, self.repository_key,
                        self.workflow, self.issued_after, self.issued_before)

    @property
    def done(self) -> bool:
        return self.status == "done"

    def to_api(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "kind": self.kind,
            "selector": self.selector.to_api(),
            "token_id": str(self.token_id) if self.token_id else None,
            "publisher_id": str(self.publisher_id) if self.publisher_id else None,
            "package": self.package,
            "repository": self.repository_key,
            "workflow": self.workflow,
            "issued_after": rfc3339(self.issued_after),
            "issued_before": rfc3339(self.issued_before),
            "cutoff": rfc3339(self.cutoff),
            "reason": self.reason,
            "actor": self.actor,
            "status": self.status,
            "revoked": self.revoked,
            "created_at": rfc3339(self.created_at),
            "completed_at": rfc3339(self.completed_at),
        }


def rfc3339(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


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

# Mints hold this advisory lock shared for their whole transaction; a revocation takes it
# exclusively before it fixes its cutoff. So every mint that began before the cutoff has
# committed (and its token is visible to the first batch), and every later mint stamps
# `issued_at` after the cutoff: no token can slip between a rule and its completion.
MINT_GATE_LOCK = 0x7470_7847


async def insert(conn: asyncpg.Connection, selector: Selector, *, reason: str, actor: str | None) -> Rule:
    """Insert a pending rule once in-flight mints have committed; its cutoff is that moment."""
    await conn.execute("SELECT pg_advisory_xact_lock($1)", MINT_GATE_LOCK)
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


async def stale_pending(conn: asyncpg.Connection | asyncpg.Pool, older_than_seconds: float, limit: int) -> list[uuid.UUID]:
    """Pending rules created a while ago: their message may have been lost or dead-lettered."""
    rows = await conn.fetch(
        """SELECT id FROM revocations
           WHERE status = 'pending' AND created_at < now() - make_interval(secs => $1)
           ORDER BY created_at LIMIT $2""",
        older_than_seconds, limit,
    )
    return [row["id"] for row in rows]


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
            RETURNING {_TOKEN_RETURNING}""",
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


RevokedEvent = Callable[[asyncpg.Record, str], Event]


async def apply_batch(
    conn: asyncpg.Connection, rule: Rule, *, batch_size: int, revoked_event: RevokedEvent, source: str,
) -> Progress:
    """Apply one batch of a pending rule inside the caller's transaction, with its events.

    The caller holds the rule row (it inserted it, or `lock`ed it). When the batch
    was not full and no matching live token is left, the rule is marked done and
    one `revocation.completed` event is written. `revoked_event` builds the
    `token.revoked` event of one token row (the exchange's builder, so the event
    has one shape whoever revokes).
    """
    if rule.done:
        return Progress(rule, 0)
    rows = await revoke_batch(conn, rule, batch_size)
    events = [_with_revocation(revoked_event(row, rule.reason), rule.id) for row in rows]
    complete = len(rows) < batch_size and not await has_remaining(conn, rule)
    if rows or complete:
        rule = await _record(conn, rule.id, len(rows), complete=complete)
    if complete:
        events.append(completed_event(rule))
    await add_events(conn, events, source=source)
    return Progress(rule, len(rows))


def _with_revocation(event: Event, rule_id: uuid.UUID) -> Event:
    """Tie a token.revoked event to the rule that caused it, so consumers can correlate."""
    return Event(event.type, data={**event.data, "revocation_id": str(rule_id)}, subject=event.subject,
                 id=event.id, time=event.time)


def requested_event(rule: Rule) -> Event:
    return Event(event_types.REVOCATION_REQUESTED, subject=str(rule.id), data={
        "revocation_id": str(rule.id),
        "kind": rule.kind,
        "selector": rule.selector.to_api(),
        "reason": rule.reason,
        "actor": rule.actor,
        "cutoff": rfc3339(rule.cutoff),
        "revoked": rule.revoked,
    })


def completed_event(rule: Rule) -> Event:
    return Event(event_types.REVOCATION_COMPLETED, subject=str(rule.id), data={
        "revocation_id": str(rule.id),
        "kind": rule.kind,
        "selector": rule.selector.to_api(),
        "reason": rule.reason,
        "actor": rule.actor,
        "revoked": rule.revoked,
        "cutoff": rfc3339(rule.cutoff),
        "created_at": rfc3339(rule.created_at),
        "completed_at": rfc3339(rule.completed_at),
    })
