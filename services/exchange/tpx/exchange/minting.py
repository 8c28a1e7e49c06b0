"""The exchange's decision and its one write.

`decide()` is pure: from a verified token and the candidate publishers it runs
every check of every candidate and returns what one exchange would write (the
matched publishers, what the token grants, how long it lives, which ids to pin),
or raises the refusal. `mint()` then writes that decision in one statement
(`tpx.core.db.tokens.mint`, grouped with concurrent mints by
`tpx.exchange.group_commit`): the mint gate, the publishers check, the JTI claim,
the token and its events, all or nothing. A decision taken on rows that changed
before the write (a publisher deleted, or its ids pinned by another first
exchange) writes nothing and is taken again on fresh rows; a refusal is never
decided on cached rows.
"""

from __future__ import annotations

import asyncio
import fnmatch
from datetime import datetime
from typing import Annotated, Callable

import asyncpg
import msgspec
from msgspec import Meta

from tpx.core import tokens
from tpx.core.bodies import anchored
from tpx.core.backoff import Backoff
from tpx.core.config import Settings
from tpx.core.db import outbox
from tpx.core.db import publishers as publisher_store
from tpx.core.db import tokens as token_store
from tpx.core.db.pool import UNAVAILABLE_ERRORS
from tpx.core.errors import Problem
from tpx.core.events import builders
from tpx.core.events.types import EXCHANGE_SOURCE, Event
from tpx.core.ids import new_id
from tpx.core.logging import get_logger
from tpx.core.providers.base import CheckResult, Publisher
from tpx.core.providers.matching import PublisherEvaluation, denial, evaluate
from tpx.core.times import rfc3339

from tpx.exchange.candidates import CandidateCache
from tpx.exchange.group_commit import MintLost, MintWriter
from tpx.exchange.verification import VerifiedToken

log = get_logger("tpx.exchange.minting")

# A decision can go stale only through a concurrent admin change or first exchange; the second
# decision reads fresh rows, so a third attempt means the publishers keep changing under it.
MAX_ATTEMPTS = 3
TOKEN_REUSED = ("this ID token was already exchanged; request a fresh ID token from your CI provider for each "
                "exchange")
# How long an exchange whose connection died waits to learn whether its mint committed.
RESOLVE_SECONDS = 10.0


class Narrowing(msgspec.Struct, frozen=True):
    """What an exchange asked for, when it wants less than everything its identity is granted: some of
    the matching packages, some of the permissions, a shorter lifetime (`None`: no limit)."""

    packages: tuple[str, ...] | None = None
    permissions: tuple[str, ...] | None = None
    lifetime_seconds: int | None = None


EVERYTHING = Narrowing()


class Decision(msgspec.Struct, frozen=True):
    """What one exchange will write, decided before any write."""

    verified: VerifiedToken
    matched: list[PublisherEvaluation]
    packages: list[str]
    permissions: dict[str, list[str]]
    publisher_ids: list[str]
    lifetime_seconds: int
    # Matched publishers that pin no ids yet, with the ids (neutral field names) this exchange pins.
    unbound: list[tuple[Publisher, dict[str, str]]]


# The token every minting route answers with, in each route's own member.
PublishToken = Annotated[str, Meta(pattern=anchored(tokens.TOKEN_RE.pattern),
                                   description="the publish token, shown only once")]


class ExchangeResult(msgspec.Struct):
    """What `POST /v1/exchange` answers: the publish token (shown once, never stored) and its scope."""

    token: PublishToken
    token_id: Annotated[str, Meta(description="the token's id (a UUID), for revocation and audit")]
    expires_at: Annotated[str, Meta(description="RFC 3339, UTC, whole seconds")]
    expires_in: Annotated[int, Meta(description="seconds from now until expires_at")]
    packages: list[str]
    publisher_ids: list[str]
    permissions: Annotated[dict[str, list[str]], Meta(description="package -> the permissions granted on it")]


class MintedToken(msgspec.Struct, frozen=True):
    token: str
    token_id: str
    packages: list[str]
    permissions: dict[str, list[str]]
    publisher_ids: list[str]
    issued_at: datetime
    expires_at: datetime

    def response(self) -> ExchangeResult:
        return ExchangeResult(
            token=self.token, token_id=self.token_id, expires_at=rfc3339(self.expires_at, seconds=True),
            expires_in=int((self.expires_at - self.issued_at).total_seconds()), packages=self.packages,
            publisher_ids=self.publisher_ids, permissions=self.permissions)


# --- the decision (pure) -------------------------------------------------------------------------------------

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


def sibling_pins_check(verified: VerifiedToken, evaluation: PublisherEvaluation,
                       candidates: list[Publisher]) -> CheckResult | None:
    """A publisher with ids still unpinned binds only the ids its repository's other publishers pin.

    The candidates are all the publishers of this issuer and repository: when one of them
    pins the owner or repository id, that is the repository's id, and a token carrying
    another (an account or repository deleted and re-created under the same name) must not
    bind it through a sibling that happens to be unpinned. Nor may a token that carries no
    id at all (Buildkite's ids are optional claims) match through an unpinned sibling.
    """
    publisher, identity = evaluation.publisher, verified.identity
    wanted = verified.provider.bindings(identity, publisher)
    carried = {"owner_id": identity.owner_id, "name_id": identity.repository_id}
    pins = {field: sorted({getattr(p, field) for p in candidates if p.id != publisher.id and getattr(p, field)})
            for field in carried if getattr(publisher, field) is None}
    if not any(field in wanted or pinned for field, pinned in pins.items()):
        return None
    names = verified.provider.fields
    for field, pinned in pins.items():
        value = carried[field]
        if pinned and pinned != [value]:
            carries = f"the token carries {value}" if value is not None else "the token carries none"
            return CheckResult(
                check="repository_pins", claim=names[field], expected=pinned, actual=value, passed=False,
                note=(f"another publisher of {identity.repository} pins {names[field]} {', '.join(pinned)} and "
                      f"{carries}; the account or repository may have been deleted and its name re-registered by "
                      "someone else"))
    return CheckResult(check="repository_pins", claim=names["owner_id"], expected="the ids other publishers pin",
                       actual=identity.owner_id, passed=True)


def evaluate_candidates(verified: VerifiedToken, candidates: list[Publisher]) -> list[PublisherEvaluation]:
    """Every check of every candidate: the provider's table, then the issuer's package limits and, for an
    unpinned publisher, the ids its siblings pin."""
    evaluations = evaluate(verified.provider, verified.identity, candidates)
    for evaluation in evaluations:
        for extra in (issuer_scope_check(verified, evaluation), sibling_pins_check(verified, evaluation, candidates)):
            if extra is not None:
                evaluation.results.append(extra)
    return evaluations


def decide(verified: VerifiedToken, candidates: list[Publisher], settings: Settings,
           narrowing: Narrowing = EVERYTHING) -> Decision:
    """The exchange's decision on these candidates; raises the refusal when none matches, or when the
    request asks for a package or permission the matching publishers do not grant (`not_granted`)."""
    evaluations = evaluate_candidates(verified, candidates)
    matched = [e for e in evaluations if e.matched]
    if not matched:
        raise denial(verified.provider, verified.identity, evaluations)
    matched = narrowed_publishers(matched, narrowing)
    granted: dict[str, set[str]] = {}
    for evaluation in matched:
        granted.setdefault(evaluation.publisher.package, set()).update(evaluation.publisher.permissions)
    if narrowing.permissions is not None:
        granted = narrowed_permissions(granted, narrowing.permissions)
    packages = sorted(granted)
    lifetime = min(e.publisher.token_ttl_seconds or settings.token_ttl_seconds for e in matched)
    if narrowing.lifetime_seconds is not None:
        lifetime = min(lifetime, narrowing.lifetime_seconds)
    unbound = [(e.publisher, wanted) for e in matched
               if (wanted := verified.provider.bindings(verified.identity, e.publisher))]
    return Decision(
        verified=verified,
        matched=matched,
        packages=packages,
        permissions={package: sorted(granted[package]) for package in packages},
        publisher_ids=[e.publisher.id for e in matched],
        lifetime_seconds=min(lifetime, settings.token_ttl_max_seconds),
        unbound=unbound,
    )


def narrowed_publishers(matched: list[PublisherEvaluation], narrowing: Narrowing) -> list[PublisherEvaluation]:
    """The matching publishers of the packages asked for; every package asked for must be among them."""
    if narrowing.packages is None:
        return matched
    offered = {e.publisher.package for e in matched}
    missing = [package for package in narrowing.packages if package not in offered]
    if missing:
        raise Problem("not_granted", f"packages: {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not "
                                     f"granted to this identity; its matching publishers grant "
                                     f"{', '.join(sorted(offered))}; ask for those only, or add a publisher",
                      extra={"field": "packages"})
    return [e for e in matched if e.publisher.package in narrowing.packages]


def narrowed_permissions(granted: dict[str, set[str]], wanted: tuple[str, ...]) -> dict[str, set[str]]:
    """Each package's permissions, cut to those asked for; a package left with none is refused."""
    narrowed = {package: permissions & set(wanted) for package, permissions in granted.items()}
    empty = sorted(package for package, permissions in narrowed.items() if not permissions)
    if empty:
        raise Problem("not_granted", f"permissions: {', '.join(wanted)} {'is' if len(wanted) == 1 else 'are'} not "
                                     f"granted on {', '.join(empty)} (granted there: "
                                     f"{', '.join(sorted(set().union(*(granted[p] for p in empty))))})",
                      extra={"field": "permissions"})
    return narrowed


def events_of(decision: Decision, token_id: str) -> list[Event]:
    """The events one exchange writes: ids pinned, environments left unpinned, and the token issued."""
    identity, provider = decision.verified.identity, decision.verified.provider
    ci = identity.ci()
    events = [builders.publisher_bound(publisher.id, publisher.package,
                                       {provider.fields[field]: value for field, value in wanted.items()}, ci)
              for publisher, wanted in decision.unbound]
    if identity.environment:
        events += [builders.environment_unpinned(e.publisher.id, e.publisher.package, token_id, identity.environment,
                                                 ci)
                   for e in decision.matched if not e.publisher.environments]
    events.append(builders.token_issued(token_id, decision.packages, decision.permissions, decision.publisher_ids, ci))
    return events


# --- the write -----------------------------------------------------------------------------------------------

class AmbiguousMint(Exception):
    """The connection died while the mint statement was in flight: it may have committed.

    The process still holds the token it generated, so `resolve_ambiguous` can find out.
    """

    def __init__(self, decision: Decision, token: str, token_id: str, backend_pid: int) -> None:
        super().__init__("the database connection was lost while the mint was in flight")
        self.decision = decision
        self.token = token
        self.token_id = token_id
        self.backend_pid = backend_pid


async def resolve_ambiguous(pool: asyncpg.Pool, ambiguous: AmbiguousMint, settings: Settings) -> MintedToken:
    """The token, if the mint committed; otherwise (or if the database stays away) `503 unavailable`.

    The old server session may still be running the statement, or wait on a dead
    connection: it is ended first (tpx.core.db.tokens.settled_mint), so the answer
    is read once the mint has committed or never will.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + RESOLVE_SECONDS
    backoff = Backoff(first=0.05, maximum=0.5)
    lookup_key = tokens.lookup_key(ambiguous.token)
    while True:
        try:
            settled, row = await token_store.settled_mint(pool, lookup_key, ambiguous.backend_pid)
        except UNAVAILABLE_ERRORS:
            settled, row = False, None
        if settled:
            break
        if loop.time() > deadline:
            log.warning("exchange.unresolved", backend_pid=ambiguous.backend_pid, waited_seconds=RESOLVE_SECONDS)
            raise Problem("unavailable", "the database went away while this exchange was being written and did not "
                                         "come back in time to tell whether it was; retry with the same ID token: "
                                         "a 409 token_reused then means it was minted but its answer was lost, so "
                                         "request a fresh ID token and exchange that", retry_after=5)
        await asyncio.sleep(backoff.next())
    if row is None:
        log.info("exchange.resolved", outcome="not_committed")
        raise Problem("unavailable", "the database went away before this exchange was written; nothing was minted "
                                     "and the ID token is unspent: retry with it", retry_after=1)
    decision = ambiguous.decision
    return MintedToken(ambiguous.token, ambiguous.token_id, decision.packages, decision.permissions,
                       decision.publisher_ids, row["issued_at"], row["expires_at"])


async def write(writer: MintWriter, settings: Settings, decision: Decision,
                new_token: Callable[[], str] = tokens.generate) -> MintedToken | None:
    """Write the decision (with others: tpx.exchange.group_commit); None when its publishers changed
    meanwhile (nothing written). `new_token` makes the token (tpx.exchange.token_format)."""
    verified = decision.verified
    identity = verified.identity
    token = new_token()
    token_id = new_id()
    binding = None
    if decision.unbound:
        binding = token_store.Binding([publisher.id for publisher, _ in decision.unbound],
                                      identity.owner_id, identity.repository_id)
    request = token_store.MintRequest(
        issuer_id=verified.issuer.id, kid=verified.kid, jti=verified.jti,
        jti_expires_at=verified.exp + settings.leeway_seconds, publisher_ids=decision.publisher_ids,
        binding=binding, token_id=token_id, lookup_key=tokens.lookup_key(token),
        packages=decision.packages, permissions=decision.permissions, ci=identity.ci(),
        repository_key=identity.repository_key, workflow=identity.workflow,
        lifetime_seconds=decision.lifetime_seconds, events=events_of(decision, token_id), source=EXCHANGE_SOURCE,
    )
    try:
        result = await writer.write(request)
    except MintLost as lost:
        raise AmbiguousMint(decision, token, token_id, lost.backend_pid) from lost.__cause__
    issuer = verified.issuer.url
    if not result.issuer_ok:
        raise Problem("unknown_issuer", f"the issuer {issuer} was disabled (or removed); tokens from it are not "
                                        "accepted", hints=["an operator can enable it with PATCH /v1/admin/issuers/{id}"])
    if not result.key_ok:
        raise Problem("invalid_token", f"the key {verified.kid!r} that signed this token is no longer one of issuer "
                                       f"{issuer}'s keys (it was removed from its JWKS); request a fresh ID token")
    if not result.unexpired:
        raise Problem("invalid_token", "the token has expired (its exp plus the allowed clock leeway has passed); "
                                       "request a fresh ID token and exchange it at once")
    if not result.publishers_ok:
        return None
    if result.issued_at is None or result.expires_at is None:
        raise Problem("token_reused", TOKEN_REUSED)
    return MintedToken(token, token_id, decision.packages, decision.permissions, decision.publisher_ids,
                       result.issued_at, result.expires_at)


async def mint(reader: asyncpg.Pool | asyncpg.Connection, settings: Settings, verified: VerifiedToken,
               cache: CandidateCache, writer: MintWriter, admit: Callable[[Decision], None] | None = None,
               narrowing: Narrowing = EVERYTHING, new_token: Callable[[], str] = tokens.generate) -> MintedToken:
    """Decide on the (possibly cached) candidates, then write; `admit` may refuse the first decision
    before anything is written (the per-publisher rate limit). `reader` reads candidates on a cache miss."""
    issuer_id, repository_key = verified.issuer.id, verified.identity.repository_key
    candidates, fresh = await cache.get(reader, issuer_id, repository_key)
    for _attempt in range(MAX_ATTEMPTS):
        try:
            decision = decide(verified, candidates, settings, narrowing)
        except Problem:
            if fresh:
                raise
            candidates, fresh = await cache.read(reader, issuer_id, repository_key), True
            continue
        if admit is not None:
            admit(decision)
            admit = None
        minted = await write(writer, settings, decision, new_token)
        if minted is not None:
            return minted
        candidates, fresh = await cache.read(reader, issuer_id, repository_key), True
    raise Problem("unavailable", "the matching publishers changed during this exchange again and again; retry shortly",
                  retry_after=1)


# --- explain and denials -------------------------------------------------------------------------------------

async def explain(conn: asyncpg.Connection, verified: VerifiedToken) -> list[PublisherEvaluation]:
    candidates = await publisher_store.candidates(conn, verified.issuer.id, verified.identity.repository_key)
    return evaluate_candidates(verified, candidates)


async def record_denial(conn: asyncpg.Connection, verified: VerifiedToken, problem: Problem) -> None:
    """Tell the repository's owners (through the event stream) that a verified identity was refused."""
    identity = verified.identity
    await outbox.add_events(conn, [builders.exchange_denied(identity.repository, identity.ci(), problem.code,
                                                            problem.detail, problem.checks)],
                            source=EXCHANGE_SOURCE)
