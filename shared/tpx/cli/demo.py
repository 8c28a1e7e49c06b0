"""`tpx demo` (and `make demo`): the whole stack and a real exchange, end to end, on this machine.

Starts PostgreSQL-backed services exactly as production runs them (exchange,
jwks-refresher, revoker in one process, as `tpx dev` does), plus a loopback
development issuer that stands in for GitHub Actions. That issuer exists only
here: the demo sets TPX_INSECURE_LOOPBACK_ISSUERS for its own process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import socket
import sys
import time
from typing import Any

import aio_pika
import asyncpg
import httpx

from tpx.core.config import ConfigError, Settings
from tpx.core.db import issuers as issuer_store
from tpx.core.db.migrate import create_database, migrate
from tpx.core.logging import configure
from tpx.core.serving.server import Server, uvicorn_config

DEMO_DATABASE = "tpx_demo"
DEMO_PREFIX = "tpx-demo"
PACKAGE = "hello-tpx"
PUBLIC_ISSUERS = ["https://token.actions.githubusercontent.com", "https://gitlab.com"]
LOOPBACK_ISSUERS = "http://127.0.0.1:"
REPOSITORY = "octo-org/hello-tpx"


class Printer:
    def __init__(self) -> None:
        color = sys.stdout.isatty() and os.environ.get("NO_COLOR") is None
        self.bold = "\033[1m" if color else ""
        self.dim = "\033[2m" if color else ""
        self.green = "\033[32m" if color else ""
        self.red = "\033[31m" if color else ""
        self.cyan = "\033[36m" if color else ""
        self.yellow = "\033[33m" if color else ""
        self.reset = "\033[0m" if color else ""
        self.step_number = 0

    def title(self, text: str) -> None:
        print(f"\n{self.bold}{text}{self.reset}\n", flush=True)

    def step(self, text: str) -> None:
        self.step_number += 1
        print(f"{self.bold}{self.cyan}[{self.step_number}]{self.reset} {text}", flush=True)

    def ok(self, text: str) -> None:
        print(f"    {self.green}✓{self.reset} {text}", flush=True)

    def refused(self, text: str) -> None:
        print(f"    {self.red}✗{self.reset} {text}", flush=True)

    def info(self, text: str) -> None:
        print(f"    {self.dim}{text}{self.reset}", flush=True)

    def event(self, text: str) -> None:
        print(f"    {self.yellow}⚡ event{self.reset} {text}", flush=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _hidden(token: str) -> str:
    return f"{token[:8]}…{'•' * 6} ({len(token)} chars, shown once, never stored)"


def _demo_settings() -> Settings:
    env = dict(os.environ)
    env.setdefault("TPX_DATABASE_URL", f"postgresql://postgres@127.0.0.1:5432/{DEMO_DATABASE}")
    env.setdefault("TPX_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
    env.setdefault("TPX_AMQP_PREFIX", DEMO_PREFIX)
    env.setdefault("TPX_LOG_FORMAT", "console")
    env.setdefault("TPX_LOG_LEVEL", "warning")
    env["TPX_PORT"] = env.get("TPX_DEMO_PORT", str(_free_port()))
    env["TPX_INSECURE_LOOPBACK_ISSUERS"] = "1"  # the demo's own loopback issuer; never a default
    env.setdefault("TPX_ADMIN_TOKENS", "demo-admin-" + secrets.token_urlsafe(18))
    env.setdefault("TPX_INTROSPECTION_TOKENS", "demo-registry-" + secrets.token_urlsafe(18))
    env.setdefault("TPX_RELAY_POLL_SECONDS", "0.1")
    env.setdefault("TPX_REVOKER_SWEEP_SECONDS", "2")
    return Settings.from_env(env)


async def _prepare_database(settings: Settings, out: Printer) -> None:
    url = settings.database_url
    base, _, name = url.rpartition("/")
    try:
        admin = await asyncpg.connect(f"{base}/postgres", timeout=5)
    except Exception as exc:  # noqa: BLE001
        raise SystemExit(
            f"tpx demo: PostgreSQL does not answer at {base.rpartition('@')[2]} ({exc}).\n"
            "  Start it with: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start") from None
    try:
        created = await create_database(admin, name)
    finally:
        await admin.close()
    out.ok(f"created database {name}" if created else f"database {name} exists")
    conn = await asyncpg.connect(url)
    try:
        applied = await migrate(conn, progress=lambda line: out.info(line))
    finally:
        await conn.close()
    out.ok(f"schema up to date ({len(applied)} migration(s) applied now)")
    conn = await asyncpg.connect(url)
    try:
        # The public issuers cannot be reached from here, and loopback issuers of earlier demo runs are gone.
        await issuer_store.disable(conn, PUBLIC_ISSUERS, LOOPBACK_ISSUERS)
    finally:
        await conn.close()
    out.info("github.com and gitlab.com issuers disabled in this demo database (this machine has no internet)")


async def _watch_events(settings: Settings, out: Printer, ready: asyncio.Event, seen: list[dict]) -> None:
    try:
        connection = await aio_pika.connect(settings.amqp_url, timeout=5)
    except Exception as exc:  # noqa: BLE001
        raise SystemExit(f"tpx demo: RabbitMQ does not answer ({exc}).\n  Start it with: rabbitmq-server -detached") from None
    async with connection:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(settings.events_exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(exchange, routing_key="#")
        ready.set()
        async with queue.iterator() as messages:
            async for message in messages:
                async with message.process():
                    event = json.loads(message.body)
                    seen.append(event)
                    data = event.get("data", {})
                    what = ", ".join(f"{k}={v}" for k, v in _event_summary(event["type"], data).items())
                    out.event(f"{event['type']} #{int(event['sequence'])} {what}")


def _event_summary(event_type: str, data: dict[str, Any]) -> dict[str, Any]:
    if "token_id" in data:
        return {"token": data["token_id"][:8], "packages": data.get("packages")}
    if event_type.endswith("exchange.denied"):
        return {"code": data.get("code"), "repository": (data.get("ci") or {}).get("repository")}
    if event_type.endswith("publisher.bound"):
        return {"publisher": data["publisher_id"][:8], "bound": data.get("bound")}
    if "target" in data:
        return {"target": data["target"][:8], "actor": data.get("actor")}
    if event_type.endswith("keys_rotated"):
        return {"issuer": data.get("issuer"), "key_ids": data.get("key_ids")}
    return {k: v for k, v in data.items() if isinstance(v, (str, int))}


async def tour(settings: Settings, keep_running: bool) -> None:
    from tpx.cli.devissuer import DevIssuer  # Starlette: loaded only when the demo runs
    from tpx.cli.devstack import serve as serve_stack

    out = Printer()
    configure(settings.log_format, settings.log_level)
    out.title("tpx demo — trusted publishing, end to end, on this machine")

    out.step("PostgreSQL: database and schema")
    await _prepare_database(settings, out)

    out.step(f"RabbitMQ: watching the topic exchange {settings.events_exchange}")
    events_ready = asyncio.Event()
    seen: list[dict] = []
    watcher = asyncio.create_task(_watch_events(settings, out, events_ready, seen))
    done, _ = await asyncio.wait({watcher, asyncio.create_task(events_ready.wait())},
                                 return_when=asyncio.FIRST_COMPLETED)
    if watcher in done:
        watcher.result()
    out.ok("bound a queue to every event (routing key #)")

    stop = asyncio.Event()
    issuer = DevIssuer()
    issuer_port = _free_port()
    issuer.url = f"http://127.0.0.1:{issuer_port}"
    issuer_server = Server(uvicorn_config(issuer.app(), settings, port=issuer_port, lifespan="off"))
    issuer_task = asyncio.create_task(issuer_server.serve_until(stop))
    await issuer_server.listening.wait()
    out.step("a development OIDC issuer, standing in for GitHub Actions")
    out.ok(f"{issuer.url} (loopback only; enabled by the demo, never by default)")

    stack = asyncio.create_task(serve_stack(settings, stop))
    base = f"http://{settings.host}:{settings.port}"
    admin = {"Authorization": f"Bearer {settings.admin_tokens[0]}"}
    registry = {"Authorization": f"Bearer {settings.introspection_tokens[0]}"}
    try:
        async with httpx.AsyncClient(base_url=base, timeout=10, trust_env=False) as http:
            out.step("the stack: exchange, jwks-refresher and revoker (as `tpx dev` runs them)")
            await _wait_until(lambda: _answers(http, "/healthz"), 20, "the exchange did not start", stack)
            out.ok(f"exchange listening on {base}")

            out.step("an operator registers the issuer; the jwks-refresher fetches its keys")
            response = await http.get("/v1/admin/issuers", headers=admin)
            existing = [i for i in response.json()["issuers"] if i["url"] == issuer.url]
            if not existing:
                response = await http.post("/v1/admin/issuers", json={"url": issuer.url, "kind": "github"}, headers=admin)
                response.raise_for_status()
            started = time.monotonic()
            await _wait_until(lambda: _has_keys(http, admin, issuer.url), 30,
                              "the jwks-refresher did not fetch the issuer's keys", stack)
            await _wait_until(lambda: _ready(http), 10, "the exchange did not become ready", stack)
            out.ok(f"keys fetched in {time.monotonic() - started:.1f} s; GET /readyz says ready")
            await _expect(seen, "dev.tpx.issuer.keys_rotated")

            out.step(f"a registry backend adds a trusted publisher for package {PACKAGE!r}")
            publisher = await _publisher(http, admin, issuer.url)
            out.ok(f"publisher {publisher['id'][:8]}: {REPOSITORY}, workflow release.yml, environment 'release'")
            await _expect(seen, "dev.tpx.publisher.created")

            out.step("a CI job (GitHub Actions shape) exchanges its ID token")
            jwt = issuer.github_token(repository=REPOSITORY)
            explained = (await http.post("/v1/explain", json={"jwt": jwt})).json()
            passed = [c["check"] for c in explained["publishers"][0]["checks"] if c["passed"]]
            out.info(f"explain (dry run): would_issue={explained['would_issue']}; checks passed: {', '.join(passed)}")
            response = await http.post("/v1/exchange", json={"jwt": jwt})
            minted = response.json()
            out.ok(f"POST /v1/exchange → {response.status_code}: token {_hidden(minted['token'])}")
            out.info(f"packages={minted['packages']} permissions={minted['permissions']} expires_in={minted['expires_in']} s")
            await _expect(seen, "dev.tpx.token.issued")
            replay = await http.post("/v1/exchange", json={"jwt": jwt})
            out.refused(f"the same ID token again → {replay.status_code} {replay.json()['code']}")

            out.step("the registry introspects the token before accepting an upload")
            info = (await http.post("/v1/introspect", json={"token": minted["token"]}, headers=registry)).json()
            out.ok(f"active={info['active']} scope={info['scope']!r} packages={info['packages']} "
                   f"from {info['ci']['repository']} @ {info['ci']['ref']}")

            out.step("a workflow running in the wrong environment is refused, and told why")
            wrong = await http.post("/v1/exchange", json={"jwt": issuer.github_token(repository=REPOSITORY,
                                                                                       environment="staging")})
            problem = wrong.json()
            out.refused(f"{wrong.status_code} {problem['code']}")
            for hint in problem.get("hints", [])[:2]:
                out.info(f"hint: {hint}")
            await _expect(seen, "dev.tpx.exchange.denied")

            out.step("the job revokes its token when done")
            response = await http.post("/v1/revoke", headers={"Authorization": f"Bearer {minted['token']}"})
            info = (await http.post("/v1/introspect", json={"token": minted["token"]}, headers=registry)).json()
            out.ok(f"POST /v1/revoke → {response.status_code}; introspection now says active={info['active']}")

            await _wait_until(lambda: _seen(seen, "dev.tpx.token.revoked"), 10, "the events did not arrive", stack)
            out.step(f"{len(seen)} events arrived on RabbitMQ (CloudEvents, in sequence, no secrets)")
            _next_steps(out, settings, base, issuer, keep_running)
            if keep_running:
                out.info("the stack keeps running; press Ctrl-C (or send SIGTERM) to stop it gracefully")
                await _until_signalled()
    finally:
        stop.set()
        watcher.cancel()
        await asyncio.gather(stack, issuer_task, watcher, return_exceptions=True)
    if stack.done() and not stack.cancelled() and stack.exception():
        raise stack.exception()  # type: ignore[misc]


async def _until_signalled() -> None:
    import signal

    loop = asyncio.get_running_loop()
    requested = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, requested.set)
    try:
        await requested.wait()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    print("\n    stopping: draining the exchange, the jwks-refresher and the revoker…", flush=True)


async def _publisher(http: httpx.AsyncClient, admin: dict, issuer_url: str) -> dict:
    body = {"package": PACKAGE, "provider": "github", "issuer": issuer_url, "repository_owner": "octo-org",
            "repository_name": "hello-tpx", "workflow_filename": "release.yml", "environments": ["release"]}
    response = await http.post("/v1/admin/publishers", json=body, headers=admin)
    if response.status_code == 409:  # a previous demo run left it: reuse it
        listed = (await http.get("/v1/admin/publishers", params={"package": PACKAGE}, headers=admin)).json()
        return next(p for p in listed["publishers"] if p["issuer"] == issuer_url)
    response.raise_for_status()
    return response.json()["publisher"]


async def _answers(http: httpx.AsyncClient, path: str) -> bool:
    try:
        return (await http.get(path)).status_code == 200
    except httpx.TransportError:
        return False


async def _has_keys(http: httpx.AsyncClient, admin: dict, url: str) -> bool:
    issuers = (await http.get("/v1/admin/issuers", headers=admin)).json()["issuers"]
    return any(i["url"] == url and i["key_ids"] for i in issuers)


async def _ready(http: httpx.AsyncClient) -> bool:
    return await _answers(http, "/readyz")


async def _expect(seen: list[dict], event_type: str, timeout: float = 3.0) -> None:
    """Let the step's event arrive before the next step, so the output reads in order (bounded)."""
    deadline = time.monotonic() + timeout
    while not any(e["type"] == event_type for e in seen) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


async def _seen(seen: list[dict], event_type: str) -> bool:
    return any(e["type"] == event_type for e in seen)


async def _wait_until(predicate, timeout: float, failure: str, stack: asyncio.Task) -> None:
    """Poll with a deadline, and stop at once if the stack died (its error says why)."""
    deadline = time.monotonic() + timeout
    while not await predicate():
        if stack.done():
            stack.result()
            raise SystemExit(f"tpx demo: {failure}: the stack stopped")
        if time.monotonic() > deadline:
            raise SystemExit(f"tpx demo: {failure} within {timeout:.0f} s")
        await asyncio.sleep(0.1)


def _next_steps(out: Printer, settings: Settings, base: str, issuer, keep_running: bool) -> None:
    out.title("What to try next")
    admin = settings.admin_tokens[0]
    intro = ("  The stack keeps running. In another shell:" if keep_running else
             "  Keep the stack running with `.venv/bin/tpx demo --keep-running` (it prints its own address\n"
             "  and admin token), then, in another shell:")
    print(f"""{intro}
    export TPX={base} ADMIN={admin}
    curl -s $TPX/readyz | python3 -m json.tool
    curl -s $TPX/v1/admin/publishers -H "Authorization: Bearer $ADMIN" | python3 -m json.tool
    curl -s $TPX/openapi.json | python3 -m json.tool | less
  Run the services separately, as in production (one shell each, this environment in all):
    export TPX_DATABASE_URL={settings.database_url} TPX_AMQP_PREFIX={settings.amqp_prefix} \\
           TPX_ADMIN_TOKENS=$ADMIN TPX_INSECURE_LOOPBACK_ISSUERS=1 TPX_LOG_FORMAT=console
    .venv/bin/tpx exchange
    TPX_OPS_PORT=9001 .venv/bin/tpx jwks-refresher
    TPX_OPS_PORT=9002 .venv/bin/tpx revoker
  Operator commands against it: TPX_URL=http://127.0.0.1:8000 TPX_ADMIN_TOKEN=$ADMIN .venv/bin/tpx publishers list
  Read the API overview in README.md and the design decisions in docs/decisions.md.
""", flush=True)


def register(sub) -> None:
    demo = sub.add_parser("demo", help="run the whole stack with a loopback development issuer and show an exchange")
    demo.add_argument("--keep-running", action="store_true", help="keep the stack running after the tour")
    demo.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    try:
        settings = _demo_settings()
    except ConfigError as exc:
        print(f"tpx demo: configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(tour(settings, keep_running=getattr(args, "keep_running", False)))
    except KeyboardInterrupt:
        print("\nstopped")
    return 0
