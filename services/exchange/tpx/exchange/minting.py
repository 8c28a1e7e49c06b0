"""The exchange's write: match the identity, then claim the JTI and mint, atomically.

Two paths with one outcome. When every matched publisher already pins its ids
(the steady state), one statement enters the mint gate, checks that those
publishers still exist, claims (issuer, jti), inserts the hashed token and its
events: two round trips in all, with no explicit transaction. A first exchange
that binds ids runs every step in one explicit transaction instead. Either way
a refusal writes nothing: the JTI stays usable, no id is bound, no row is
half-written. The denial event of a verified identity is written afterwards in
its own small transaction.
"""

from __future__ import annotations

import fnmatch
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import asyncpg

from tpx.core import tokens
from tpx.core.config import Settings
from tpx.core.errors import Problem
from tpx.core.events import types as event_types
from tpx.core.events.outbox import Event, add_events, event_columns
from tpx.core.providers.base import CheckResult
from tpx.core.publishers import API_FIELDS
from tpx.core.providers.matching import PublisherEvaluation, denial, evaluate
from tpx.core.db import publishers as publisher_store
from tpx.core.db import tokens as token_store
from tpx.core.db.revocations import MINT_GATE_LOCK

from tpx.exchange.candidates import CandidateCache
from tpx.exchange.ratelimit import RateLimits
from tpx.exchange.verification import VerifiedToken

SOURCE = "urn:tpx:exchange"


@dataclass(frozen=True)
class MintedToken:
    token: str
    token_id: str
    packages: list[str]
    permissions: dict[str, list[str]]
    publisher_ids: list[str]
    issued_at: datetime
    expires_at: datetime

    def response(self) -> dict[str, Any]:
        return {
            "token": self.token,
            "token_id": self.token_id,
            "expires_at": _rfc3339(self.expires_at),
            "expires_in": int((self.expires_at - self.issued_at).total_seconds()),
            "packages": self.packages,
            "publisher_ids": self.publisher_ids,
            "permissions": self.permissions,
        }


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def issuer_scope_check(verified: VerifiedToken, evaluation: PublisherEvaluation) -> CheckResult | None:
    """An issuer limited to some packages can never mint for others, even if a publisher says so."""
    allowed = verified.issuer.allowed_packages
    if allowed is None:
        return None
    package = evaluation.publisher.package
    return CheckResult(
        check="issuer_packages", claim="iss", expected=list(allowed), actual=package,
        passed=any(fnmatch.fnmatchcase(package, pattern) for pattern in allowed),
        note=f"issuer {verified.issuer.url} may only publish packages matching {list(allowed)}",
    )


def evaluate_candidates(verified: VerifiedToken, candidates) -> list[PublisherEvaluation]:
    evaluations = evaluate(verified.provider, verified.identity, candidates)
    for evaluation in evaluations:
        extra = issuer_scope_check(verified, evaluation)
        if extra is not None:
            evaluation.results.append(extra)
    return evaluations


async def explain(conn: asyncpg.Connection, verified: VerifiedToken) -> list[PublisherEvaluation]:
    candidates = await publisher_store.candidates(conn, verified.issuer.id, verified.identity.repository_key)
    return evaluate_candidates(verified, candidates)


def _lifetime(settings: Settings, matched: list[PublisherEvaluation]) -> int:
    ttl = min(e.publisher.token_ttl_seconds or settings.token_ttl_seconds for e in matched)
    return min(ttl, settings.token_ttl_max_seconds)


async def _bind(conn: asyncpg.Connection, verified: VerifiedToken, matched: list[PublisherEvaluation]) -> tuple[list[PublisherEvaluation], list[Event]]:
    """Bind unset ids race-free: the UPDATE locks the row, and COALESCE keeps whatever won first."""
    kept: list[PublisherEvaluation] = []
    events: list[Event] = []
    identity = verified.identity
    for evaluation in matched:
        publisher = evaluation.publisher
        wanted = verified.provider.bindings(identity, publisher)
        if not wanted:
            kept.append(evaluation)
            continue
        owner_id, name_id = await publisher_store.bind_ids(conn, publisher.id, wanted.get("owner_id"), wanted.get("name_id"))
        if owner_id != identity.owner_id or name_id != identity.repository_id:
            continue  # a concurrent exchange bound other ids first; this publisher no longer matches
        kept.append(evaluation)
        events.append(Event(event_types.PUBLISHER_BOUND, subject=publisher.id, data={
            "publisher_id": publisher.id,
            "package": publisher.package,
            "bound": {API_FIELDS[publisher.provider][field]: value for field, value in wanted.items()},
            "ci": identity.ci(),
        }))
    return kept, events


_TOKEN_REUSED = ("this ID token was already exchanged; request a fresh ID token from your CI provider for each "
                 "exchange")

# The whole hot path in one statement (its own implicit transaction): enter the mint gate, check
# with a fresh snapshot that the matched publishers still exist (a deletion takes the gate
# exclusively, so none can commit between this check and our commit), claim the JTI, insert the
# token stamped after the gate, and its events. Each step runs only if the previous one succeeded,
# so a refusal writes nothing.
_MINT = """
WITH gate AS MATERIALIZED (SELECT pg_advisory_xact_lock_shared($1)),
alive AS MATERIALIZED (SELECT tpx_publishers_alive($2::uuid[]) AS n FROM gate),
claim AS (
    INSERT INTO used_jtis (issuer_id, jti, expires_at)
    SELECT $3, $4, to_timestamp($5) FROM alive WHERE alive.n = $6
    ON CONFLICT DO NOTHING
    RETURNING clock_timestamp() AS now),
token AS (
    INSERT INTO tokens (id, token_hash, issuer_id, packages, permissions, publisher_ids, ci, repository_key,
                        workflow, issued_at, expires_at)
    SELECT $7, $8, $3, $9, $10, $2::uuid[], $11, $12, $13, claim.now, claim.now + make_interval(secs => $14)
    FROM claim
    RETURNING issued_at, expires_at),
events AS (
    INSERT INTO outbox (event_id, type, source, subject, time, data)
    SELECT e.id, e.type, e.source, e.subject, token.issued_at,
           CASE WHEN e.type = 'dev.tpx.token.issued'
                THEN e.data || jsonb_build_object(
                    'issued_at', to_char(token.issued_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
                    'expires_at', to_char(token.expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'))
                ELSE e.data END
    FROM unnest($15::uuid[], $16::text[], $17::text[], $18::text[], $19::jsonb[]) AS e(id, type, source, subject, data),
         token)
SELECT (SELECT n FROM alive) AS alive, (SELECT issued_at FROM token) AS issued_at,
       (SELECT expires_at FROM token) AS expires_at
"""


def _grant(matched: list[PublisherEvaluation]) -> tuple[list[str], dict[str, list[str]], list[str]]:
    permissions: dict[str, set[str]] = {}
    for evaluation in matched:
        permissions.setdefault(evaluation.publisher.package, set()).update(evaluation.publisher.permissions)
    packages = sorted(permissions)
    return packages, {package: sorted(permissions[package]) for package in packages}, [e.publisher.id for e in matched]


def _notices(identity, matched: list[PublisherEvaluation], token_id: str, ci: dict[str, Any]) -> list[Event]:
    """Owner-facing notice: a token carried an environment that its publisher does not require."""
    return [Event(event_types.EXCHANGE_ENVIRONMENT_UNPINNED, subject=e.publisher.id, data={
        "publisher_id": e.publisher.id,
        "package": e.publisher.package,
        "token_id": token_id,
        "environment": identity.environment,
        "advice": f"the token came from the environment {identity.environment!r} but the publisher accepts any; "
                  "pin it with \"environments\" so a workflow outside that environment cannot publish",
        "ci": ci,
    }) for e in matched if identity.environment and not e.publisher.environments]


def _issued_event(token_id: str, packages, granted, publisher_ids, ci, issued_at=None, expires_at=None) -> Event:
    data: dict[str, Any] = {"token_id": token_id, "packages": packages, "permissions": granted,
                            "publisher_ids": publisher_ids, "ci": ci}
    if issued_at is not None:
        data.update(issued_at=_rfc3339(issued_at), expires_at=_rfc3339(expires_at))
    return Event(event_types.TOKEN_ISSUED, subject=token_id, data=data)


async def mint(conn: asyncpg.Connection, settings: Settings, verified: VerifiedToken,
               limits: RateLimits | None = None, cache: CandidateCache | None = None) -> MintedToken:
    """Match, then mint. Publishers whose ids are all pinned take the one-statement path; a first
    exchange that binds ids (or a publisher deleted meanwhile) takes the transactional path."""
    identity = verified.identity
    if cache is not None:
        candidates = await cache.get(conn, verified.issuer.id, identity.repository_key)
        matched = [e for e in evaluate_candidates(verified, candidates) if e.matched]
        if not matched:  # never refuse on cached rows: a publisher may have been added just now
            candidates = await cache.read(conn, verified.issuer.id, identity.repository_key)
    else:
        candidates = await publisher_store.candidates(conn, verified.issuer.id, identity.repository_key)
    evaluations = evaluate_candidates(verified, candidates)
    matched = [e for e in evaluations if e.matched]
    if not matched:
        raise denial(identity, evaluations)
    if limits is not None:
        for evaluation in matched:
            limits.take_publisher(evaluation.publisher.id, evaluation.publisher.package)
    if any(verified.provider.bindings(identity, e.publisher) for e in matched):
        return await _mint_in_transaction(conn, settings, verified)
    minted = await _mint_pinned(conn, settings, verified, matched)
    return minted if minted is not None else await _mint_in_transaction(conn, settings, verified)


async def _mint_pinned(conn: asyncpg.Connection, settings: Settings, verified: VerifiedToken,
                       matched: list[PublisherEvaluation]) -> MintedToken | None:
    """The hot path: one statement. None when a matched publisher was deleted meanwhile."""
    identity = verified.identity
    token = tokens.generate()
    token_id = str(uuid.uuid4())
    ttl = _lifetime(settings, matched)
    packages, granted, publisher_ids = _grant(matched)
    ci = identity.ci()
    events = [*_notices(identity, matched, token_id, ci), _issued_event(token_id, packages, granted, publisher_ids, ci)]
    ids, types, sources, subjects, _times, datas = event_columns(events, SOURCE)
    row = await conn.fetchrow(
        _MINT, MINT_GATE_LOCK, publisher_ids, verified.issuer.id, verified.jti, verified.exp + settings.leeway_seconds,
        len(publisher_ids), uuid.UUID(token_id), tokens.hash_token(token), packages, granted, ci,
        identity.repository_key, identity.workflow, float(ttl), ids, types, sources, subjects, datas,
    )
    if row["alive"] != len(publisher_ids):
        return None
    if row["issued_at"] is None:
        raise Problem("token_reused", _TOKEN_REUSED)
    return MintedToken(token, token_id, packages, granted, publisher_ids, row["issued_at"], row["expires_at"])


async def _mint_in_transaction(conn: asyncpg.Connection, settings: Settings, verified: VerifiedToken) -> MintedToken:
    """The general path, for first exchanges that bind ids: every step in one explicit transaction."""
    identity = verified.identity
    async with conn.transaction():
        # Enter the mint gate (shared with every other mint, exclusive with a revocation fixing its
        # cutoff), claim the JTI, and read the clock only after the gate.
        claim = await conn.fetchrow(
            """WITH gate AS (SELECT pg_advisory_xact_lock_shared($4)),
                    claim AS (INSERT INTO used_jtis (issuer_id, jti, expires_at)
                              VALUES ($1, $2, to_timestamp($3)) ON CONFLICT DO NOTHING RETURNING 1)
               SELECT (SELECT count(*) FROM claim) AS claimed, clock_timestamp() AS now FROM gate""",
            verified.issuer.id, verified.jti, verified.exp + settings.leeway_seconds, MINT_GATE_LOCK,
        )
        now = claim["now"]
        if not claim["claimed"]:
            raise Problem("token_reused", _TOKEN_REUSED)
        candidates = await publisher_store.candidates(conn, verified.issuer.id, identity.repository_key)
        evaluations = evaluate_candidates(verified, candidates)
        matched = [e for e in evaluations if e.matched]
        if not matched:
            raise denial(identity, evaluations)
        matched, bound_events = await _bind(conn, verified, matched)
        if not matched:
            raise denial(identity, evaluate_candidates(
                verified, await publisher_store.candidates(conn, verified.issuer.id, identity.repository_key)))
        token = tokens.generate()
        token_id = str(uuid.uuid4())
        expires_at = now + timedelta(seconds=_lifetime(settings, matched))
        packages, granted, publisher_ids = _grant(matched)
        ci = identity.ci()
        events = [*bound_events, *_notices(identity, matched, token_id, ci),
                  _issued_event(token_id, packages, granted, publisher_ids, ci, now, expires_at)]
        await token_store.insert_with_events(
            conn, token_id=uuid.UUID(token_id), token_hash=tokens.hash_token(token), issuer_id=verified.issuer.id,
            packages=packages, permissions=granted, publisher_ids=publisher_ids, ci=ci,
            repository_key=identity.repository_key, workflow=identity.workflow, issued_at=now, expires_at=expires_at,
            events=events, source=SOURCE,
        )
    return MintedToken(token, token_id, packages, granted, publisher_ids, now, expires_at)


async def record_denial(conn: asyncpg.Connection, verified: VerifiedToken, problem: Problem) -> None:
    """Tell the repository's owners (through the event stream) that a verified identity was refused."""
    failed = []
    for publisher in problem.checks or []:
        failed.append({
            "publisher_id": publisher["id"],
            "package": publisher["package"],
            "failed_checks": [c["check"] for c in publisher["checks"] if not c["passed"]],
        })
    await add_events(conn, [Event(event_types.EXCHANGE_DENIED, subject=verified.identity.repository, data={
        "code": problem.code,
        "reason": problem.detail,
        "publishers": failed,
        "ci": verified.identity.ci(),
    })], source=SOURCE)
