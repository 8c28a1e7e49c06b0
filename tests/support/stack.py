"""A tpx deployment of separate OS processes, for the multi-replica and fault tests.

`running_stack` gives the services a database and an AMQP prefix of their own
on the PostgreSQL and RabbitMQ it is pointed at, starts each service the way
an operator does (`python -m tpx.cli <command>`), registers a LoopbackIssuer
that stands in for GitHub Actions, and waits until every exchange has its keys
(fetched by a jwks-refresher, the only way keys reach an exchange).

With `proxied=True` every service reaches PostgreSQL and RabbitMQ through a
TcpProxy the test controls (`await stack.pg_proxy.cut()`), each in a process of
its own (tests.support.proxy_process) so the test's load does not slow it down,
while the test itself
talks to both directly: it can look at and change what the services cannot
reach at that moment. Every event is recorded through an exclusive queue bound
before any service starts, so nothing published can be missed.

Children log at warning level to files that `stack.logs()` shows when a test
fails; TPX_STACK_LOG_LEVEL=info (or debug) makes them say more.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import tempfile
import time
import uuid
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Iterator, Mapping

import aio_pika
import asyncpg
import httpx

from tests.conftest import AMQP_URL, PG_HOST
from tests.support.amqp import delete_objects
from tests.support.oidc_issuer import LoopbackIssuer
from tests.support.processes import ServiceProcess, free_ports, poll, run_cli, service_env, stop_all, wait_healthy
from tests.support.servers import serve
from tests.support.proxy_process import ProxyProcess
from tests.support.tcp_proxy import target_of, through

START_TIMEOUT = 30.0
SOON = 15.0  # upper bound for anything that should happen "soon"
PUBLIC_ISSUERS = ("https://token.actions.githubusercontent.com", "https://gitlab.com")
# The services close idle keep-alive connections after 5 s (uvicorn's timeout_keep_alive); a client that
# reuses one at that very moment gets a ReadError. Idle connections expire sooner on this side.
CLIENT_LIMITS = httpx.Limits(keepalive_expiry=2.0)


@dataclass
class EventLog:
    """Every message of `<prefix>.events`, through an exclusive queue bound with `#` before any service runs."""

    messages: list[aio_pika.abc.AbstractIncomingMessage] = field(default_factory=list)
    decoded: list[dict[str, Any]] = field(default_factory=list)  # the bodies, parsed once on arrival
    arrived: dict[str, float] = field(default_factory=dict)  # event id -> time.monotonic() of its first delivery

    async def on_message(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        self.messages.append(message)
        event = json.loads(message.body)
        self.decoded.append(event)
        self.arrived.setdefault(event["id"], time.monotonic())

    def bodies(self, event_type: str | None = None) -> list[dict[str, Any]]:
        return [event for event in self.decoded if event_type is None or event["type"] == event_type]


class ServiceStack:
    """The running deployment: its processes, clients for each exchange, and the test's own connections."""

    def __init__(self, *, issuer: LoopbackIssuer, db: asyncpg.Pool, database_url: str, prefix: str, env: dict[str, str],
                 events: EventLog, log_dir: Path, ops: httpx.AsyncClient, pg_proxy: ProxyProcess | None,
                 amqp_proxy: ProxyProcess | None, admin_token: str, introspection_token: str) -> None:
        self.issuer = issuer
        self.issuer_id = ""
        self.db = db
        self.database_url = database_url  # the test's direct URL (services may go through pg_proxy)
        self.prefix = prefix
        self.env = env
        self.events = events
        self.log_dir = log_dir
        self.ops = ops
        self.pg_proxy = pg_proxy
        self.amqp_proxy = amqp_proxy
        self.admin_headers = {"Authorization": f"Bearer {admin_token}"}
        self.introspection_headers = {"Authorization": f"Bearer {introspection_token}"}
        self.processes: dict[str, ServiceProcess] = {}
        self.commands: dict[str, str] = {}
        self.http_ports: dict[str, int] = {}
        self.ops_ports: dict[str, int] = {}
        self.clients: dict[str, httpx.AsyncClient] = {}
        self.timings: dict[str, float] = {}
        self.problems: list[str] = []
        self._generations: dict[str, int] = {}
        self._overrides: dict[str, dict[str, str]] = {}
        self._cleanup = AsyncExitStack()

    # -- processes ---------------------------------------------------------------------------------------

    @property
    def exchange_names(self) -> list[str]:
        return [name for name, command in self.commands.items() if command == "exchange"]

    def client(self, name: str) -> httpx.AsyncClient:
        return self.clients[name]

    def health_url(self, name: str) -> str:
        if name in self.http_ports:
            return f"http://127.0.0.1:{self.http_ports[name]}/healthz"
        return f"http://127.0.0.1:{self.ops_ports[name]}/healthz"

    async def add(self, name: str, command: str, env: Mapping[str, str] | None = None) -> None:
        """Declare a service (ports and client) and start it; `env` overrides the stack's environment for it."""
        http_port, ops_port = free_ports(2)
        self.commands[name] = command
        self.ops_ports[name] = ops_port
        self._overrides[name] = dict(env or {})
        if command == "exchange":
            self.http_ports[name] = http_port
            self.clients[name] = await self._cleanup.enter_async_context(httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{http_port}", timeout=30, limits=CLIENT_LIMITS))
        await self.start(name)

    async def start(self, name: str, wait: bool = True) -> ServiceProcess:
        """Start (again) the declared service `name`; with `wait`, until its /healthz answers."""
        env = {**self.env, "TPX_OPS_PORT": str(self.ops_ports[name]), "TPX_HOST": "127.0.0.1",
               **self._overrides[name]}
        if name in self.http_ports:
            env["TPX_PORT"] = str(self.http_ports[name])
        generation = self._generations.get(name, 0) + 1
        self._generations[name] = generation
        log_name = name if generation == 1 else f"{name}.{generation}"
        child = await ServiceProcess.start(log_name, self.commands[name], env, self.log_dir)
        self.processes[name] = child
        if wait:
            await wait_healthy(self.ops, child, self.health_url(name), START_TIMEOUT)
        return child

    async def kill(self, name: str) -> ServiceProcess:
        """kill -9 the service `name` (by its pid) and wait until it is gone; it stays down until `start`."""
        child = self.processes.pop(name)
        await child.kill()
        return child

    async def stop(self, name: str) -> int:
        child = self.processes.pop(name)
        code = await child.stop()
        if code != 0 or child.killed:
            self.problems.append(f"{name} did not drain gracefully on SIGTERM (exit code {code})")
        return code

    async def stop_all(self) -> None:
        stopping = time.monotonic()
        codes = await stop_all(self.processes.values())
        self.timings["stop"] = time.monotonic() - stopping
        for name, code in codes.items():
            child = next(c for c in self.processes.values() if c.name == name)
            if code != 0 or child.killed:
                self.problems.append(f"{name} did not drain gracefully on SIGTERM (exit code {code}"
                                     f"{', killed after the timeout' if child.killed else ''})")
        self.processes.clear()

    def log_marks(self) -> dict[str, int]:
        """Where each running service's log ends now, for `log_since`."""
        return {name: child.log_path.stat().st_size for name, child in self.processes.items()}

    def log_since(self, marks: dict[str, int]) -> dict[str, list[str]]:
        """What each service (still the same process) logged after `marks`, line by line."""
        said: dict[str, list[str]] = {}
        for name, child in self.processes.items():
            if name in marks:
                with open(child.log_path, "rb") as log:
                    log.seek(marks[name])
                    said[name] = log.read().decode(errors="replace").splitlines()
        return said

    def logs(self, tail: int = 150) -> str:
        return "\n\n".join(child.describe(tail) for child in self.processes.values())

    # -- views ---------------------------------------------------------------------------------------

    async def ready_issuer(self, client: httpx.AsyncClient, url: str | None = None) -> dict[str, Any] | None:
        """This exchange's own view (its in-memory key cache, through the operator's /readyz) of an issuer."""
        response = await client.get("/readyz", headers=self.admin_headers)
        for entry in response.json().get("issuers", []):
            if entry["url"] == (url or self.issuer.url):
                return entry
        return None

    async def worker_ready(self, name: str) -> dict[str, Any]:
        response = await self.ops.get(f"http://127.0.0.1:{self.ops_ports[name]}/readyz")
        body = response.json()
        body["http_status"] = response.status_code
        return body

    async def register_issuer(self, issuer: LoopbackIssuer, via: str | None = None, wait: bool = True) -> str:
        """Register `issuer` through an exchange's admin API; with `wait`, until every exchange has its keys."""
        client = self.clients[via or self.exchange_names[0]]
        response = await client.post("/v1/admin/issuers", json={"url": issuer.url, "kind": "github"},
                                      headers=self.admin_headers)
        assert response.status_code == 201, response.text
        issuer_id = response.json()["issuer"]["id"]
        if wait:
            await self.wait_issuer_ready(issuer.url)
        return issuer_id

    async def wait_issuer_ready(self, url: str, timeout: float = SOON) -> None:
        async def all_ready() -> bool:
            views = [await self.ready_issuer(self.clients[name], url) for name in self.exchange_names]
            return all(view is not None and view["state"] == "ready" for view in views)

        await poll(all_ready, f"every exchange to report {url} ready (keys fetched by a refresher)", timeout,
                   alive=self.processes.values())


@contextmanager
def logs_on_failure(request: Any, stack: ServiceStack) -> Iterator[None]:
    """Around one test (an autouse fixture's body): if it failed, print what every child process wrote."""
    failed_before = request.session.testsfailed
    yield
    if request.session.testsfailed > failed_before:
        reporter = request.config.pluginmanager.get_plugin("terminalreporter")
        text = f"service logs after {request.node.name} failed:\n\n{stack.logs()}"
        if reporter is None:  # pragma: no cover - pytest always has one unless run with -p no:terminal
            print(text)
            return
        reporter.write_line("")
        reporter.write_sep("-", "service logs")
        reporter.write_line(text)


async def _create_database(admin_url: str, name: str) -> None:
    admin = await asyncpg.connect(f"{admin_url}/postgres")
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()


async def _drop_database(admin_url: str, name: str) -> None:
    try:
        admin = await asyncpg.connect(f"{admin_url}/postgres", timeout=10)
    except (OSError, asyncpg.PostgresError):
        return  # a test's own server that is already gone took the database with it
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@asynccontextmanager
async def running_stack(services: Mapping[str, str], *, name: str = "stack", proxied: bool = False,
                        pg_url: str = PG_HOST, amqp_url: str = AMQP_URL, env: Mapping[str, str] | None = None,
                        stack_class: type[ServiceStack] = ServiceStack) -> AsyncIterator[ServiceStack]:
    """Run `services` (name -> `tpx` command) until the block ends; then stop them and delete what they made.

    `pg_url` is a server URL without a database (postgresql://user@host:port). On the way out every child
    must drain on SIGTERM; one that does not fails the block, with every log.
    """
    run = uuid.uuid4().hex[:10]
    database = f"tpx_{name}_{run}"
    prefix = f"tpx-{name}-{run}"
    admin_token = f"{name}-admin-" + secrets.token_urlsafe(24)
    introspection_token = f"{name}-introspect-" + secrets.token_urlsafe(24)
    log_dir = Path(tempfile.mkdtemp(prefix=f"tpx-{name}-"))
    started = time.monotonic()

    async with AsyncExitStack() as cleanup:
        # Registered first, so it runs last: the database and the broker objects go whatever happened.
        cleanup.push_async_callback(delete_objects, amqp_url, [prefix])
        cleanup.push_async_callback(_drop_database, pg_url, database)
        await _create_database(pg_url, database)
        database_url = f"{pg_url}/{database}"

        pg_proxy = amqp_proxy = None
        service_db_url, service_amqp_url = database_url, amqp_url
        if proxied:
            pg_proxy = await cleanup.enter_async_context(ProxyProcess(*target_of(pg_url, 5432)))
            amqp_proxy = await cleanup.enter_async_context(ProxyProcess(*target_of(amqp_url, 5672)))
            service_db_url, service_amqp_url = through(database_url, pg_proxy), through(amqp_url, amqp_proxy)

        base_env = service_env({
            "TPX_DATABASE_URL": service_db_url,
            "TPX_AMQP_URL": service_amqp_url,
            "TPX_AMQP_PREFIX": prefix,
            "TPX_INSECURE_LOOPBACK_ISSUERS": "1",
            "TPX_ADMIN_TOKENS": admin_token,
            "TPX_INTROSPECTION_TOKENS": introspection_token,
            "TPX_RATE_FAILED_PER_MINUTE": "0",
            "TPX_RATE_PUBLISHER_PER_MINUTE": "0",
            "TPX_LOG_LEVEL": os.environ.get("TPX_STACK_LOG_LEVEL", "warning"),
            "TPX_LOG_FORMAT": "console",
            "TPX_RELAY_POLL_SECONDS": "0.1",
            # Several processes share a PostgreSQL that other work may be using too: small pools.
            "TPX_DB_POOL_MIN": "1",
            "TPX_DB_POOL_MAX": "4",
            **(env or {}),
        })
        code, output = await run_cli(["migrate"], {**base_env, "TPX_DATABASE_URL": database_url})
        assert code == 0, f"tpx migrate failed ({code}):\n{output}"
        setup = await asyncpg.connect(database_url)
        try:
            # There is no internet here: the seeded public issuers would only make the refreshers fail and retry.
            await setup.execute("UPDATE issuers SET enabled = false WHERE url = ANY($1::text[])", list(PUBLIC_ISSUERS))
        finally:
            await setup.close()

        events = EventLog()
        connection = await aio_pika.connect(amqp_url)
        cleanup.push_async_callback(connection.close)
        channel = await connection.channel()
        events_exchange = await channel.declare_exchange(f"{prefix}.events", aio_pika.ExchangeType.TOPIC, durable=True)
        queue = await channel.declare_queue("", exclusive=True, auto_delete=True)
        await queue.bind(events_exchange, routing_key="#")
        await queue.consume(events.on_message, no_ack=True)

        issuer = LoopbackIssuer()
        issuer.url = await cleanup.enter_async_context(serve(issuer.app))
        db = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
        cleanup.push_async_callback(db.close)
        ops = await cleanup.enter_async_context(httpx.AsyncClient(timeout=10, limits=CLIENT_LIMITS))

        stack = stack_class(issuer=issuer, db=db, database_url=database_url, prefix=prefix, env=base_env,
                            events=events, log_dir=log_dir, ops=ops, pg_proxy=pg_proxy, amqp_proxy=amqp_proxy,
                            admin_token=admin_token, introspection_token=introspection_token)
        # Clients close before the children stop (exit-stack order), so no keep-alive holds a drain up.
        cleanup.push_async_callback(stack.stop_all)
        await cleanup.enter_async_context(stack._cleanup)
        stack.timings["database"] = time.monotonic() - started
        try:
            await asyncio.gather(*(stack.add(service, command) for service, command in services.items()))
            stack.timings["processes_up"] = time.monotonic() - started
            stack.issuer_id = await stack.register_issuer(issuer)
            stack.timings["issuer_ready"] = time.monotonic() - started
        except BaseException as exc:
            raise AssertionError(f"the {name} stack did not come up: {exc}\n\n{stack.logs()}") from exc

        yield stack

    print(f"\n{name} stack timings (s): " + ", ".join(f"{k}={v:.2f}" for k, v in stack.timings.items()))
    if stack.problems:
        raise AssertionError("; ".join(stack.problems) + f"\n\n(logs in {log_dir})")
    shutil.rmtree(log_dir, ignore_errors=True)
