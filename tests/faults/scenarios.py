"""The fault scenarios, each a function of a running stack and a scale.

The same code runs in two sizes: `CI` (a slice that fits `make test`) and
`SOAK` (`python -m tests.faults.soak`, the figures in the issue: a 60-s broker
cut, 40 short database cuts, 100,000 fuzzed requests, a 10-minute RSS soak).
Each scenario checks its guarantees itself (AssertionError with the figures
when one breaks) and returns its figures, so the soak prints them and pytest
shows them with -s.

The stack (tests.support.stack, `proxied=True`) reaches PostgreSQL and
RabbitMQ through TCP proxies; the test reads and checks through direct
connections. Every scenario leaves every service running and ready.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import secrets
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import asyncpg
import httpx

from tests.faults.ledger import Ledger, audit_chain_verifies, reconcile
from tests.faults.load import Identity, Load
from tests.support.oidc_issuer import LoopbackIssuer, new_rsa_key
from tests.support.processes import poll
from tests.support.servers import serve
from tests.support.stack import SOON, ServiceStack

CACHE_BOUND = 1.0  # seconds after the database is back by which every change is in effect on every replica


@dataclass(frozen=True)
class Scale:
    name: str
    rate: float  # fresh ID tokens per second during every scenario
    broker_cut: float  # seconds
    db_cut: float
    short_cuts: int
    short_cut: float
    short_gap: float
    around: float  # seconds of load before and after each fault
    bulk_tokens: int
    fuzz_requests: int
    soak_seconds: float  # the RSS soak; 0 skips it


CI = Scale("ci", rate=20, broker_cut=5, db_cut=3, short_cuts=10, short_cut=0.3, short_gap=0.5, around=1.5,
           bulk_tokens=16_000, fuzz_requests=2_000, soak_seconds=0)
SOAK = Scale("soak", rate=30, broker_cut=60, db_cut=10, short_cuts=40, short_cut=0.5, short_gap=1.0, around=5,
             bulk_tokens=16_000, fuzz_requests=100_000, soak_seconds=600)

Figures = dict[str, Any]


def check(condition: bool, what: str, figures: Figures) -> None:
    if not condition:
        raise AssertionError(f"{what}\nfigures: {json.dumps(figures, indent=2, default=str)}")


async def pause(seconds: float) -> None:
    """Let the load run for `seconds`: the scenario's timeline, not synchronisation with anything."""
    await asyncio.sleep(seconds)


async def new_identity(stack: ServiceStack, issuer: LoopbackIssuer | None = None, via: str | None = None) -> Identity:
    identity = Identity(issuer=issuer or stack.issuer)
    client = stack.client(via or stack.exchange_names[0])
    response = await client.post("/v1/admin/publishers", json=identity.publisher(identity.issuer.url), headers=stack.admin_headers)
    assert response.status_code == 201, response.text
    return identity


def load_on(stack: ServiceStack, identity: Identity, scale: Scale) -> Load:
    return Load(identity, {name: stack.client(name) for name in stack.exchange_names}, scale.rate)


def load_figures(load: Load) -> Figures:
    return {"ID tokens": len(load.tokens), "answers": dict(load.answers()), "final": dict(load.finals())}


def check_ledger(ledger: Ledger, figures: Figures, what: str = "") -> None:
    """Every answer agrees with the token rows and the events (tests.faults.ledger)."""
    check(not ledger.problems, what + "; ".join(ledger.problems), figures)


def check_load(load: Load, figures: Figures, *, all_succeed: bool = True) -> None:
    """No 5xx but the documented 503; every ID token got its token, or (`all_succeed=False`, an outage
    longer than the client's retries) its client gave up on 503s, which the ledger proves left it unspent."""
    check(not load.server_errors(), "an exchange answered a 5xx other than 503", figures)
    failed = [t for t in load.tokens if not t.succeeded]
    if all_succeed:
        check(not failed, f"{len(failed)} ID tokens never got their token", figures)
    else:
        other = [t for t in failed if t.final is None or t.final.label != "503 unavailable"]
        check(not other, f"{len(other)} ID tokens ended with something else than a 200 or a 503", figures)


async def all_ready(stack: ServiceStack) -> None:
    """Every service answers /readyz 200: the scenario left the stack as it found it."""
    async def ready() -> bool:
        for name in stack.processes:
            if name in stack.http_ports:
                response = await stack.client(name).get("/readyz")
            else:
                response = await stack.ops.get(f"http://127.0.0.1:{stack.ops_ports[name]}/readyz")
            if response.status_code != 200:
                return False
        return True

    await poll(ready, "every service to be ready again", SOON * 2, alive=stack.processes.values())


def outage_lines(said: dict[str, list[str]]) -> Figures:
    """What the services logged about one outage: `dependency.down` warnings, errors and tracebacks."""
    return {name: {"dependency.down": sum("dependency.down" in line for line in lines),
                   "error lines": sum("[error" in line or '"level": "error"' in line for line in lines),
                   "tracebacks": sum(line.startswith("Traceback") for line in lines)}
            for name, lines in said.items()}


def check_quiet(stack: ServiceStack, marks: dict[str, int], figures: Figures) -> None:
    """An outage is one warning per process when it starts (and an info line when it ends, below this
    stack's log level); never an error line or a traceback per attempt or per request. What the services
    logged since `marks` goes into the figures."""
    said = stack.log_since(marks)
    figures["logged"] = outage_lines(said)
    for name, counts in figures["logged"].items():
        check(counts["dependency.down"] <= 1 and not counts["error lines"] and not counts["tracebacks"],
              f"{name} logged more about one outage than one warning:\n" + "\n".join(said[name][:20]), figures)


# -- the broker -------------------------------------------------------------------------------------------

async def broker_cut(stack: ServiceStack, scale: Scale) -> Figures:
    """RabbitMQ unreachable for a while under load: every exchange still succeeds, and every event arrives."""
    assert stack.amqp_proxy is not None
    identity = await new_identity(stack)
    async with load_on(stack, identity, scale) as load:
        await pause(scale.around)
        marks = stack.log_marks()
        await stack.amqp_proxy.cut()
        await pause(scale.broker_cut)
        await stack.amqp_proxy.restore()
        restored = time.monotonic()
        await pause(scale.around)
    ledger = await reconcile(stack, load)
    # Events of tokens answered before the restore that arrived after it: the backlog the relays kept.
    before = {t.token_id for t in load.tokens if t.succeeded and t.final is not None and t.final.at < restored}
    backlog = [stack.events.arrived[e["id"]] for e in stack.events.bodies("dev.tpx.token.issued")
               if e["data"]["token_id"] in before and stack.events.arrived[e["id"]] >= restored]
    figures = {"cut (s)": scale.broker_cut, **load_figures(load), **ledger.figures(),
               "backlog delivered after restore": len(backlog),
               "backlog delivered within (s)": round(max(backlog) - restored, 2) if backlog else None}
    check_load(load, figures)
    check_quiet(stack, marks, figures)
    check_ledger(ledger, figures)
    await all_ready(stack)
    return figures


# -- the database -----------------------------------------------------------------------------------------

async def database_cut(stack: ServiceStack, scale: Scale) -> Figures:
    """PostgreSQL unreachable under load: 503 with Retry-After meanwhile, service back at once, nothing lost."""
    assert stack.pg_proxy is not None
    identity = await new_identity(stack)
    async with load_on(stack, identity, scale) as load:
        await pause(scale.around)
        cut = time.monotonic()
        marks = stack.log_marks()
        await stack.pg_proxy.cut()
        await pause(scale.db_cut)
        await stack.pg_proxy.restore()
        restored = time.monotonic()
        await pause(scale.around)
    during = Counter(a.label for t in load.tokens for a in t.attempts if cut + 0.5 <= a.at < restored)
    ledger = await reconcile(stack, load)
    recovered = load.first_success_after(restored)
    figures = {"cut (s)": scale.db_cut, **load_figures(load), "answers during the cut": dict(during),
               "first 200 after restore (s)": recovered and round(recovered, 3), **ledger.figures()}
    check_load(load, figures, all_succeed=False)
    check_quiet(stack, marks, figures)
    check(set(during) <= {"503 unavailable"}, "an answer during the cut was not 503 unavailable", figures)
    check(recovered is not None and recovered < 2.0, "the exchanges did not succeed within 2 s of the restore",
          figures)
    check_ledger(ledger, figures)
    await all_ready(stack)
    return figures


async def short_database_cuts(stack: ServiceStack, scale: Scale) -> Figures:
    """Many short cuts under load: the cuts land on commits in flight, whose answers must still be right."""
    assert stack.pg_proxy is not None
    identity = await new_identity(stack)
    async with load_on(stack, identity, scale) as load:
        await pause(scale.around)
        for _ in range(scale.short_cuts):
            await stack.pg_proxy.cut()
            await pause(scale.short_cut)
            await stack.pg_proxy.restore()
            await pause(scale.short_gap)
        await pause(scale.around)
    ledger = await reconcile(stack, load)
    met_outage = sum(1 for t in load.tokens if any(a.status != 200 for a in t.attempts))
    figures = {"cuts": f"{scale.short_cuts} x {scale.short_cut} s", **load_figures(load),
               "ID tokens that met an outage": met_outage, **ledger.figures()}
    check_load(load, figures, all_succeed=False)
    check("409 token_reused" not in load.answers(), "a retry was told token_reused: an answer was lost", figures)
    check_ledger(ledger, figures)
    await all_ready(stack)
    return figures


@dataclass
class Probe:
    """One change to watch on every replica after the outage: an ID token to send and the answer meaning 'in effect'."""

    name: str
    jwt: Callable[[], str]
    in_effect: Callable[[httpx.Response], bool]
    seconds: dict[str, float | None]


async def caches_after_outage(stack: ServiceStack, scale: Scale) -> Figures:
    """Changes made while the replicas could not reach the database are in effect on every replica within
    CACHE_BOUND of its return; so are changes made right after it.

    During the cut an exchange and a refresher that still reach the database (another zone's) make the
    changes through the product's own paths: an issuer disabled, a publisher deleted, a new issuer with a
    publisher, a key removed upstream (a fetch prompted by a new key). The proxied replicas miss every
    notification, so only their catch-up on reconnect can bring the changes in.
    """
    assert stack.pg_proxy is not None
    to_disable = LoopbackIssuer()
    to_add = LoopbackIssuer()
    late = LoopbackIssuer()
    async with serve(to_disable.app) as url1, serve(to_add.app) as url2, serve(late.app) as url3:
        to_disable.url, to_add.url, late.url = url1, url2, url3
        disabled_id = await stack.register_issuer(to_disable)
        on_disabled = await new_identity(stack, to_disable)
        deleted = await new_identity(stack)
        publisher_id = (await stack.db.fetchval(
            "SELECT id::text FROM publishers WHERE package = $1", deleted.package))
        # A second key of the main issuer, in every replica's cache before the cut.
        removed_key = new_rsa_key()
        stack.issuer.keys.append(removed_key)
        keyed = await new_identity(stack)  # the key probes' own publisher, so the load's ledger is only the load's
        main = await new_identity(stack)
        for name in stack.exchange_names:
            async def known(client: httpx.AsyncClient = stack.client(name)) -> bool:
                response = await client.post("/v1/exchange", json={"jwt": keyed.jwt(fresh_run(), key=removed_key)})
                return response.status_code == 200

            await poll(known, f"{name} to know the second key", SOON, alive=stack.processes.values())

        direct = {"TPX_DATABASE_URL": stack.database_url, "TPX_AMQP_URL": stack.env["TPX_AMQP_URL"]}
        await asyncio.gather(stack.add("exchange-direct", "exchange", direct),
                             stack.add("refresher-direct", "jwks-refresher", direct))
        direct_client = stack.client("exchange-direct")
        # Not among the replicas under test (nor the processes a later scenario kills).
        stack.commands.pop("exchange-direct")
        stack.commands.pop("refresher-direct")
        changed: Figures = {}
        async with load_on(stack, main, scale) as load:
            await pause(scale.around)
            await stack.pg_proxy.cut()
            cut_at = time.monotonic()
            response = await direct_client.patch(f"/v1/admin/issuers/{disabled_id}", json={"enabled": False},
                                                 headers=stack.admin_headers)
            assert response.status_code == 200, response.text
            response = await direct_client.delete(f"/v1/admin/publishers/{publisher_id}", headers=stack.admin_headers)
            assert response.status_code in (200, 204), response.text
            response = await direct_client.post("/v1/admin/issuers", json={"url": to_add.url, "kind": "github"},
                                                headers=stack.admin_headers)
            assert response.status_code == 201, response.text
            added = await new_identity(stack, to_add, via="exchange-direct")
            # The main issuer drops the second key and signs with a new one: the direct exchange meets the
            # new kid, asks for a refresh, and the direct refresher stores the new set without the old key.
            stack.issuer.keys.remove(removed_key)
            newer_key = new_rsa_key()
            stack.issuer.keys.append(newer_key)
            response = await direct_client.post("/v1/exchange", json={"jwt": keyed.jwt(fresh_run(), key=newer_key)})
            assert response.status_code == 200, response.text

            async def to_add_fetched() -> bool:
                return await stack.db.fetchval("SELECT keys_fetched_at IS NOT NULL FROM issuers WHERE url = $1",
                                               to_add.url)

            await poll(to_add_fetched, "the direct refresher to fetch the new issuer's keys", SOON)
            await asyncio.gather(stack.stop("exchange-direct"), stack.stop("refresher-direct"))
            changed["changes made during the cut (s)"] = round(time.monotonic() - cut_at, 2)
            await pause(max(0.0, scale.db_cut - (time.monotonic() - cut_at)))

            probes = [
                Probe("issuer disabled", lambda: on_disabled.jwt(fresh_run()), refused("unknown_issuer"), {}),
                Probe("publisher deleted", lambda: deleted.jwt(fresh_run()), refused("no_matching_publisher"), {}),
                Probe("key removed", lambda: keyed.jwt(fresh_run(), key=removed_key),
                      refused("invalid_token"), {}),
                Probe("issuer created", lambda: added.jwt(fresh_run()), succeeded, {}),
            ]
            await stack.pg_proxy.restore()
            restored = time.monotonic()
            await watch(stack, probes, restored)

            # Right after the outage, through a proxied replica: enable the issuer again, register another.
            response = await stack.client(stack.exchange_names[0]).patch(
                f"/v1/admin/issuers/{disabled_id}", json={"enabled": True}, headers=stack.admin_headers)
            assert response.status_code == 200, response.text
            enabled_at = time.monotonic()
            late_id = await stack.register_issuer(late, wait=False)
            registered_at = time.monotonic()
            on_late = await new_identity(stack, late)
            after = [Probe("issuer enabled", lambda: on_disabled.jwt(fresh_run()), succeeded, {})]
            await watch(stack, after, enabled_at)
            created = [Probe("issuer created after", lambda: on_late.jwt(fresh_run()), succeeded, {})]
            await watch(stack, created, registered_at)
            await pause(scale.around)
        ledger = await reconcile(stack, load)
        for issuer_id in (disabled_id, late_id):
            response = await stack.client(stack.exchange_names[0]).patch(
                f"/v1/admin/issuers/{issuer_id}", json={"enabled": False}, headers=stack.admin_headers)
            assert response.status_code == 200, response.text
        await stack.db.execute("UPDATE issuers SET enabled = false WHERE url = $1", to_add.url)

    figures = {**changed, **{f"{p.name}, in effect after restore (s)": p.seconds for p in probes},
               **{f"{p.name}, in effect after the call (s)": p.seconds for p in after + created},
               **load_figures(load), **ledger.figures()}
    slow = [p.name for p in probes + after if any(s is None or s > CACHE_BOUND for s in p.seconds.values())]
    check(not slow, f"not in effect on every replica within {CACHE_BOUND} s: {slow}", figures)
    # A new issuer also needs its first JWKS fetch (the refresher's listener, then HTTP to the IdP).
    slow_new = [p.name for p in created if any(s is None or s > CACHE_BOUND + 1.0 for s in p.seconds.values())]
    check(not slow_new, f"a new issuer was not usable on every replica within {CACHE_BOUND + 1.0} s", figures)
    check_load(load, figures, all_succeed=False)
    check_ledger(ledger, figures)
    await all_ready(stack)
    return figures


def fresh_run() -> str:
    return str(secrets.randbelow(10**12))


def refused(code: str) -> Callable[[httpx.Response], bool]:
    return lambda response: 400 <= response.status_code < 500 and response.json().get("code") == code


def succeeded(response: httpx.Response) -> bool:
    return response.status_code == 200


async def watch(stack: ServiceStack, probes: list[Probe], since: float, timeout: float = 10.0) -> None:
    """Send each probe to each replica (50 ms apart) until it is in effect there; record the seconds `since`."""
    pending = {(probe.name, name) for probe in probes for name in stack.exchange_names}
    by_name = {probe.name: probe for probe in probes}
    for probe in probes:
        probe.seconds = {name: None for name in stack.exchange_names}
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        async def one(probe_name: str, replica: str) -> None:
            probe = by_name[probe_name]
            try:
                response = await stack.client(replica).post("/v1/exchange", json={"jwt": probe.jwt()}, timeout=5)
            except httpx.TransportError:
                return
            if probe.in_effect(response):
                probe.seconds[replica] = round(time.monotonic() - since, 3)
                pending.discard((probe_name, replica))

        await asyncio.gather(*(one(probe_name, replica) for probe_name, replica in list(pending)))
        await asyncio.sleep(0.05)  # the probes' pace


# -- kill -9 ----------------------------------------------------------------------------------------------

async def kill_each_process(stack: ServiceStack, scale: Scale) -> Figures:
    """kill -9 each service in turn under load, then start it again: nothing answered is lost, no event lost."""
    figures: Figures = {}
    for index, name in enumerate(list(stack.processes)):
        identity = await new_identity(stack)
        async with load_on(stack, identity, scale) as load:
            await pause(scale.around)
            killed_at = time.monotonic()
            await stack.kill(name)
            await pause(scale.around)
            await stack.start(name)
            back = time.monotonic() - killed_at - scale.around
            await pause(scale.around)
        # Only ID tokens that met a connection cut by the kill may have been spent without an answer.
        cut_off = sum(1 for t in load.tokens if any(a.status is None for a in t.attempts))
        ledger = await reconcile(stack, load, may_spend_unanswered=cut_off)
        part = {**load_figures(load), "requests cut by the kill": cut_off, **ledger.figures(),
                "healthy after restart (s)": round(back, 2)}
        figures[name] = part
        check(not load.server_errors(), f"a 5xx other than 503 around the kill of {name}", figures)
        lost = [t for t in load.tokens if not t.succeeded and not any(a.status is None for a in t.attempts)]
        check(not lost, f"{len(lost)} ID tokens failed around the kill of {name} without meeting it", figures)
        check_ledger(ledger, figures, f"{name}: ")
        await all_ready(stack)
    return figures


async def kill_in_bulk_revocation(stack: ServiceStack, scale: Scale) -> Figures:
    """kill -9 the revoker (and an exchange, which relays events) in the middle of a bulk revocation."""
    identity = await new_identity(stack)
    package = identity.package
    issuer_id = uuid.UUID(stack.issuer_id)
    await stack.db.execute(
        """INSERT INTO tokens (id, token_hash, issuer_id, packages, permissions, publisher_ids, ci, repository_key,
                               workflow, issued_at, expires_at)
           SELECT gen_random_uuid(), sha256(gen_random_uuid()::text::bytea), $1, ARRAY[$2], '{}'::jsonb, '{}',
                  '{}'::jsonb, 'bulk/revocation', 'release.yml', now(), now() + interval '1 hour'
           FROM generate_series(1, $3)""", issuer_id, package, scale.bulk_tokens)
    revoker = next(name for name, command in stack.commands.items() if command == "revoker")
    relay = stack.exchange_names[0]
    async with load_on(stack, await new_identity(stack), scale) as load:
        response = await stack.client(relay).post("/v1/admin/revocations", json={"package": package, "reason": "fault test"},
                                                  headers=stack.admin_headers)
        assert response.status_code in (200, 202), response.text
        rule_id = response.json()["revocation_id"]
        answered_revoked = response.json()["revoked"]

        async def revoker_under_way() -> Any:
            row = await stack.db.fetchrow("SELECT status, revoked FROM revocations WHERE id = $1::uuid", rule_id)
            return row if row["revoked"] > answered_revoked or row["status"] == "done" else None

        at_kill = await poll(revoker_under_way, "the revoker to commit its first batch", SOON, interval=0.005)
        started = time.monotonic()
        await asyncio.gather(stack.kill(revoker), stack.kill(relay))
        await asyncio.gather(stack.start(revoker), stack.start(relay))

        async def done() -> bool:
            return await stack.db.fetchval("SELECT status = 'done' FROM revocations WHERE id = $1::uuid", rule_id)

        await poll(done, "the revocation to complete after the restart", 60, alive=stack.processes.values())
        completed = time.monotonic() - started
    live = await stack.db.fetchval("""SELECT count(*) FROM tokens WHERE $1 = ANY(packages) AND revoked_at IS NULL""",
                                   package)
    revoked_ids = {str(r["id"]) for r in await stack.db.fetch("SELECT id FROM tokens WHERE $1 = ANY(packages)", package)}

    async def every_event() -> bool:
        return revoked_ids <= {e["data"]["token_id"] for e in stack.events.bodies("dev.tpx.token.revoked")}

    await poll(every_event, f"a token.revoked event for each of {len(revoked_ids)} tokens", 60, interval=0.2)
    per_token = Counter(e["data"]["token_id"] for e in {e["id"]: e for e in stack.events.bodies(
        "dev.tpx.token.revoked")}.values() if e["data"]["token_id"] in revoked_ids)
    completions = {e["id"] for e in stack.events.bodies("dev.tpx.revocation.completed")
                   if e["data"]["revocation_id"] == rule_id}
    ledger = await reconcile(stack, load, may_spend_unanswered=sum(
        1 for t in load.tokens if any(a.status is None for a in t.attempts)))
    figures = {"tokens": scale.bulk_tokens, "revoked by the admin call": answered_revoked,
               "revoked when killed": at_kill["revoked"], "status when killed": at_kill["status"],
               "completed after restart (s)": round(completed, 2), "still live": live,
               "token.revoked events": sum(per_token.values()), "revocation.completed events": len(completions),
               **load_figures(load), **ledger.figures()}
    check(at_kill["status"] == "pending", "the revocation was already complete when the revoker was killed", figures)
    check(live == 0, "tokens the revocation covers are still live", figures)
    check(set(per_token.values()) == {1} and len(per_token) == len(revoked_ids),
          "not exactly one token.revoked event per revoked token", figures)
    check(len(completions) == 1, "not exactly one revocation.completed event", figures)
    check_ledger(ledger, figures)
    await all_ready(stack)
    return figures


# -- the identity provider --------------------------------------------------------------------------------

async def idp_down(stack: ServiceStack, scale: Scale) -> Figures:
    """The IdP unreachable: known keys keep every exchange working (warm); an issuer never fetched is a 503."""
    identity = await new_identity(stack)
    stack.issuer.available = False
    try:
        async with load_on(stack, identity, scale) as load:
            await pause(scale.around * 2)
    finally:
        stack.issuer.available = True
    cold = LoopbackIssuer(available=False)
    async with serve(cold.app) as url:
        cold.url = url
        cold_id = await stack.register_issuer(cold, wait=False)
        on_cold = await new_identity(stack, cold)
        answers = Counter()
        for name in stack.exchange_names:
            response = await stack.client(name).post("/v1/exchange", json={"jwt": on_cold.jwt(fresh_run())})
            answers[f"{response.status_code} {response.json().get('code')}"] += 1
            retry_after = response.headers.get("retry-after")
        response = await stack.client(stack.exchange_names[0]).patch(
            f"/v1/admin/issuers/{cold_id}", json={"enabled": False}, headers=stack.admin_headers)
        assert response.status_code == 200, response.text
    ledger = await reconcile(stack, load)
    figures = {"warm": {**load_figures(load), **ledger.figures()}, "cold": dict(answers),
               "cold Retry-After": retry_after}
    check_load(load, figures)
    check_ledger(ledger, figures)
    check(set(answers) == {"503 keys_unavailable"} and retry_after is not None,
          "an issuer whose keys were never fetched did not answer 503 keys_unavailable with Retry-After", figures)
    return figures


# -- fuzz -------------------------------------------------------------------------------------------------

def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Mutator:
    """Seeded mutations of well-formed requests: bodies, JWTs, content types, paths and headers."""

    PATHS = ("/v1/exchange", "/v1/explain", "/v1/introspect", "/v1/revoke", "/api/v1/trusted_publishing/tokens",
             "/_/oidc/mint-token", "/_/oidc/github/mint-token", "/v1/exchange?x=1", "/v1/exchange/", "//v1/exchange")
    CHARS = "AZaz09-_.=+/ \x00\u00e9\u202e\"\\{}[]"

    def __init__(self, seed: int, jwts: list[str]) -> None:
        self.rng = random.Random(seed)
        self.jwts = jwts

    def jwt(self) -> str:
        rng = self.rng
        valid = rng.choice(self.jwts)
        head, payload, signature = valid.split(".")
        choice = rng.randrange(8)
        if choice == 0:
            chars = list(valid)
            for _ in range(rng.randint(1, 6)):
                chars[rng.randrange(len(chars))] = rng.choice(self.CHARS)
            return "".join(chars)
        if choice == 1:
            return valid[:rng.randrange(len(valid))]
        if choice == 2:
            parts = [head, payload, signature]
            rng.shuffle(parts)
            return ".".join(parts[:rng.randint(1, 3)])
        if choice == 3:
            claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
            key = rng.choice(list(claims))
            claims[key] = rng.choice([None, 0, -1, 2**70, "", [], {}, True, "x" * rng.randint(1, 5000), 1.5e308])
            return f"{head}.{_b64(json.dumps(claims).encode())}.{signature}"
        if choice == 4:
            header = rng.choice([{"alg": "none"}, {"alg": "HS256", "kid": "k"}, {"alg": "RS256", "kid": None},
                                 {"alg": "RS256", "kid": "../../etc"}, {"alg": "ES256", "jku": "http://x"}, {}])
            return f"{_b64(json.dumps(header).encode())}.{payload}.{signature}"
        if choice == 5:
            return valid + rng.choice([".", "..", " ", "\n", "=", "%00"])
        if choice == 6:
            return _b64(rng.randbytes(rng.randint(0, 3000)))
        return ".".join(_b64(rng.randbytes(rng.randint(0, 300))) for _ in range(3))

    def request(self) -> tuple[str, dict[str, bytes], bytes]:
        rng = self.rng
        path = rng.choice(self.PATHS)
        shape = rng.randrange(8)
        if shape == 0:
            body: Any = {"jwt": self.jwt()}
        elif shape == 1:
            body = {rng.choice(["jwt", "token", "JWT", "", "jwt\x00"]): rng.choice(
                [self.jwt(), None, 1, [], {}, True, "x" * rng.randint(0, 70000)])}
        elif shape == 2:
            body = rng.choice([[], None, 0, "jwt", [{"jwt": self.jwt()}], {"jwt": [self.jwt()]}])
        elif shape == 3:
            body = {"jwt": self.jwt(), "extra": {"a": [1] * rng.randint(0, 50)}, "scope": rng.choice(
                [None, "", [], ["x" * 300], [1, 2], {"a": 1}])}
        elif shape == 4:
            nested: Any = self.jwt()
            for _ in range(rng.randint(1, 200)):
                nested = {"jwt": nested}
            body = nested
        else:
            body = {"jwt": self.jwt()}
        raw = json.dumps(body).encode()
        if rng.random() < 0.1:
            raw = raw[:rng.randrange(len(raw) + 1)]
        content_type = rng.choice(["application/json"] * 6 + ["text/plain", "application/x-www-form-urlencoded",
                                                                "multipart/form-data", "", "application/json; charset=latin-1"])
        if content_type == "application/x-www-form-urlencoded" and rng.random() < 0.5:
            raw = f"jwt={self.jwt()}&jwt={self.jwt()}".encode()
        headers = {"content-type": content_type} if content_type else {}
        if rng.random() < 0.1:
            headers["authorization"] = rng.choice(["Bearer", "Bearer " + self.jwt(), "Basic !!", "Bearer tpx_x"])
        if rng.random() < 0.05:
            headers["x-forwarded-for"] = rng.choice(["::1", "1.2.3.4, 5.6.7.8", "garbage", "", "300.1.1.1"])
        # Header values as raw bytes: non-ASCII goes on the wire as UTF-8 (obs-text), as a hostile client sends it.
        return path, {name: value.encode() for name, value in headers.items()}, raw


async def fuzz(stack: ServiceStack, scale: Scale, seed: int = 20261204) -> Figures:
    """Seeded mutated requests at every CI-facing route: never a 5xx, never a token for a mutated ID token."""
    identity = await new_identity(stack)
    jwts = [identity.jwt(fresh_run()) for _ in range(64)]
    mutator = Mutator(seed, jwts)
    statuses: Counter[str] = Counter()
    by_path: Counter[str] = Counter()
    server_errors: list[tuple[str, int, str]] = []
    names = stack.exchange_names
    started = time.monotonic()
    sent = 0
    queue: asyncio.Queue[tuple[str, dict[str, bytes], bytes] | None] = asyncio.Queue(maxsize=64)
    report_every = max(1, scale.fuzz_requests // 10)

    async def worker(index: int) -> None:
        nonlocal sent
        client = stack.client(names[index % len(names)])
        while (item := await queue.get()) is not None:
            path, headers, raw = item
            try:
                response = await client.post(path, content=raw, headers=headers, timeout=30)
            except httpx.LocalProtocolError:
                statuses["not sendable (illegal header)"] += 1
                continue
            statuses[str(response.status_code)] += 1
            by_path[f"{path.split('?')[0]} {response.status_code}"] += 1
            if response.status_code >= 500:
                server_errors.append((path, response.status_code, response.text[:300]))
            sent += 1
            if sent % report_every == 0 and scale.name != "ci":
                print(f"  fuzz: {sent:,}/{scale.fuzz_requests:,} requests, {dict(statuses)}", flush=True)

    workers = [asyncio.create_task(worker(i)) for i in range(8)]
    for _ in range(scale.fuzz_requests):
        await queue.put(mutator.request())
    for _ in workers:
        await queue.put(None)
    await asyncio.gather(*workers)
    minted = await stack.db.fetchval("SELECT count(*) FROM tokens WHERE repository_key = $1", identity.repository_key)
    figures = {"requests": scale.fuzz_requests, "seed": seed, "by status": dict(sorted(statuses.items())),
               "by route": dict(sorted(by_path.items())),
               "tokens minted": minted, "requests/s": round(scale.fuzz_requests / (time.monotonic() - started))}
    check(not server_errors, f"{len(server_errors)} answers were 5xx, e.g. {server_errors[:3]}", figures)
    # /v1/explain answers 200 with its analysis; every other 200 here hands out a token.
    handed_out = sum(count for key, count in by_path.items() if key.endswith(" 200") and "explain" not in key)
    check(handed_out == minted, "a 200 answer does not match a minted token", figures)
    await all_ready(stack)
    return figures


# -- RSS over a soak --------------------------------------------------------------------------------------

async def rss_soak(stack: ServiceStack, scale: Scale, sample_every: float = 30.0,
                   growth_limit: int = 8 * 1024 * 1024) -> Figures:
    """Steady load for `soak_seconds`: each process's RSS after warm-up stays flat within a few MB."""
    identity = await new_identity(stack)
    samples: dict[str, list[int]] = {name: [] for name in stack.processes}
    async with load_on(stack, identity, scale) as load:
        started = time.monotonic()
        while time.monotonic() - started < scale.soak_seconds:
            for name, child in stack.processes.items():
                samples[name].append(child.rss_bytes() or 0)
            minute = (time.monotonic() - started) / 60
            print(f"  rss at {minute:4.1f} min: " + ", ".join(
                f"{name} {values[-1] / 2**20:.1f} MB" for name, values in samples.items()), flush=True)
            await pause(sample_every)
    for name, child in stack.processes.items():
        samples[name].append(child.rss_bytes() or 0)
    ledger = await reconcile(stack, load)
    # The first two samples are warm-up (imports, pools, first requests); growth is measured after them.
    growth = {name: values[-1] - min(values[2:]) for name, values in samples.items() if len(values) > 3}
    figures = {"seconds": scale.soak_seconds, **load_figures(load), **ledger.figures(),
               "rss MB (every sample)": {name: [round(v / 2**20, 1) for v in values] for name, values in samples.items()},
               "growth after warm-up (MB)": {name: round(v / 2**20, 2) for name, v in growth.items()}}
    check_load(load, figures)
    check_ledger(ledger, figures)
    check(all(v < growth_limit for v in growth.values()), "a process's RSS grew by more than 8 MB", figures)
    return figures


# -- database failover ------------------------------------------------------------------------------------

async def failover(stack: ServiceStack, scale: Scale, pair: Any) -> Figures:
    """The primary is lost under load; the synchronous standby is promoted and the address moved to it.

    Nothing answered 200 is missing on the new primary, no ID token is minted twice, no event is lost,
    and the services follow the new primary within seconds.
    """
    assert stack.pg_proxy is not None
    identity = await new_identity(stack)
    async with load_on(stack, identity, scale) as load:
        await pause(scale.around * 2)
        lost_at = time.monotonic()
        stack.db.terminate()  # the test's own pool points at the primary about to be lost
        await pair.primary.stop("immediate")
        await pair.standby.promote()
        await stack.pg_proxy.retarget("127.0.0.1", pair.standby.port)
        moved = time.monotonic()
        await pause(scale.around * 2)
    database = stack.database_url.rsplit("/", 1)[1]
    stack.db = await asyncpg.create_pool(f"{pair.standby.url}/{database}", min_size=1, max_size=4)
    try:
        ledger = await reconcile(stack, load)
    finally:
        await stack.db.close()
    recovered = load.first_success_after(moved)
    figures = {**load_figures(load), "primary lost to address moved (s)": round(moved - lost_at, 2),
               "first 200 after the move (s)": recovered and round(recovered, 3), **ledger.figures()}
    check_load(load, figures)
    check(recovered is not None and recovered < 5.0, "the services did not follow the new primary within 5 s",
          figures)
    check_ledger(ledger, figures)
    await all_ready(stack)
    return figures


Scenario = Callable[[ServiceStack, Scale], Awaitable[Figures]]

# In the order the soak runs them (the kills last: they restart processes, which resets their RSS).
SCENARIOS: dict[str, Scenario] = {
    "broker cut": broker_cut,
    "database cut": database_cut,
    "short database cuts": short_database_cuts,
    "caches after an outage": caches_after_outage,
    "IdP down": idp_down,
    "fuzz": fuzz,
    "rss soak": rss_soak,
    "kill -9 each process": kill_each_process,
    "kill -9 in a bulk revocation": kill_in_bulk_revocation,
}

FAULT_SERVICES = {"exchange-a": "exchange", "exchange-b": "exchange", "refresher": "jwks-refresher",
                  "revoker": "revoker"}
# An unknown kid waits at most half a second for the refresher (the default is 2 s): probes that meet a
# removed key answer quickly, so what they measure is when a change took effect, not that wait.
FAULT_ENV = {"TPX_KEYS_WAIT_SECONDS": "0.5", "TPX_JWKS_REFRESH_COOLDOWN_SECONDS": "0.5"}


async def final_checks(stack: ServiceStack, amqp_url: str) -> Figures:
    return {"tpx audit verify": await audit_chain_verifies(stack, amqp_url)}
