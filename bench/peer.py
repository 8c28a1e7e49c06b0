"""Benchmark: tpx next to a peer (oidc-exchange 0.4.1) and a jwt.decode baseline, driven by wrk.

    .venv/bin/python bench/peer.py [--repetitions 3] [--duration 10] [--connections 32 8]
    .venv/bin/python bench/peer.py --quick      # one repetition of 5 s: a smoke run

Why: bench/exchange.py compares tpx with a bare endpoint only. This script puts it next to another
service that exchanges a CI-style OIDC ID token, single use, for a token of its own, with durable
PostgreSQL storage: oidc-exchange (PyPI, a Rust service with Python bindings, served as its ASGI app
under uvicorn). Both are loaded by the same C load generator, wrk, so the client costs the same.

How: it starts, on loopback only, and keeps up for the whole run,
- tpx as production runs it (bench/support.py: `tpx exchange`, `tpx jwks-refresher`, `tpx revoker` as
  processes, a fresh database and AMQP prefix each; durable defaults: synchronous commit, events through
  the outbox relay with publisher confirms; rate limits off; tpx's default pool of 10 connections per
  exchange process), once with one exchange process and once with two (TPX_WORKERS=2), with a loopback
  development issuer (tpx.cli.devissuer.DevIssuer) over HTTP;
- oidc-exchange==0.4.1 from PyPI in a throwaway venv of its own (.bench-venv/, git-ignored, reused by
  later runs; --remove-venv deletes it), in its own process: its ASGI app under the uvicorn options tpx
  uses, PostgreSQL storage (its own fresh database; 10 connections per pool), rate limits off, audit
  events off (no event publishing), the direct ID-token grant on. It only accepts an HTTPS issuer, so a
  second DevIssuer is served over HTTPS with a CA and server certificate made for this run (in a
  temporary directory, removed at the end); the peer trusts that CA through SSL_CERT_FILE (its TLS
  stack, rustls with rustls-native-certs, reads it). Its direct grant wants a server-issued nonce in
  every ID token: each token gets its own from the peer's `POST /nonce` before the run (the peer stores
  its digest and burns it in the exchange, then records the token's jti against replay);
- the baseline, bench/baseline_app.py's `POST /decode`: a bare Starlette endpoint that only runs
  jwt.decode (RS256) on the same tokens tpx gets.
Each run gets single-use bodies minted up front (a distinct ID token each; minting and nonce fetching
are not measured), sent once each by `wrk -t1 -c<N> -d<duration>s -s bench/wrk_bodies.lua` over
keep-alive connections. Targets are rotated within each of R repetitions (each repetition starts one
further along); the table shows medians.

Per target: req/s (2xx / wrk's window); sustained (for tpx: 2xx / (window + the time the outbox
relay then needs until the broker has confirmed every event: tpx.core.db.outbox.backlog() is 0, i.e.
no outbox row unpublished, whichever way the migrated schema records it)); p50 and p99 from wrk's
latency distribution; non-2xx (any makes the run invalid, and says so); CPU ms per 2xx: user + system
time (/proc/<pid>/stat) from the start of wrk to the end of the relay drain, of the target's
processes and all their descendants, plus the PostgreSQL backends connected to its database (not wrk,
not this script, not the issuers), also split into those two parts. PostgreSQL's background processes
and RabbitMQ are shared servers: their CPU is reported on a separate line, not in the table. So is the
CPU everything else on the machine used during each run (/proc/stat less all of the above): runs it
disturbed are named. Each run's progress line also shows how many cores the target's processes and its
backends kept busy and how many they spent runnable but waiting for a CPU (/proc/<pid>/schedstat): a
target busy well under a core per process that still waits tells a run bound by the chain of waits
between processes on a shared machine, not by any one process's CPU.
Everything started here is stopped, and the databases, AMQP objects and temporary files are removed,
also on error or Ctrl-C. Run it on an otherwise idle machine: it takes both cores. The tpx services
run from this checkout, as it is.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import importlib.metadata
import ipaddress
import json
import math
import multiprocessing
import os
import resource
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Awaitable, Callable
from urllib.parse import urlencode

import asyncpg
import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

import loadgen  # noqa: E402
from support import (  # noqa: E402
    PG, TPX, WORKER_POOL, backend_pids, cpu_ms, delete_amqp_objects, drop_database, empty_database, free_port, fresh_database,
    machine_busy_ms, process_tree, progress, register_publisher, rss_mb, run_queue_ms, runtime_tpx, serve_app, shared_server_pids, start, start_tpx, stop, tpx_env,
    wait_http,
)

from tpx.cli.devissuer import DevIssuer  # noqa: E402
from tpx.core.db import outbox  # noqa: E402

PEER, PEER_VERSION = "oidc-exchange", "0.4.1"
PEER_VENV = ROOT / ".bench-venv" / f"{PEER}-{PEER_VERSION}"
PEER_CLIENT_ID = "tpx-bench-peer"          # the `aud` the peer's provider entry pins
REPOSITORY = "bench-org/bench-repo"       # the one publisher every token matches (bench/support.py)
WRK_SCRIPT = ROOT / "bench" / "wrk_bodies.lua"
DISTURBED_CORES = 0.15                    # other load during a run above this is reported
ISSUERS: dict[str, DevIssuer] = {}        # filled before the minting processes fork, so they share the keys

# The peer's host process: its ASGI app under the same uvicorn options tpx's exchange uses
# (tpx.core.serving.server.uvicorn_config), written into the run's temporary directory.
PEER_HOST = '''"""oidc-exchange's ASGI app under uvicorn, as bench/peer.py configured it (temporary file)."""
import asyncio
import os
from concurrent.futures import ThreadPoolExecutor

import uvicorn
from oidc_exchange import OidcExchange

with open(os.environ["PEER_CONFIG"]) as config:
    app = OidcExchange(config_string=config.read()).asgi_app()

if int(os.environ.get("PEER_THREADS", "0")):
    # Its ASGI adapter runs each request in asyncio's default executor (asyncio.to_thread); widen it.
    shipped, executor = app, ThreadPoolExecutor(int(os.environ["PEER_THREADS"]))

    async def app(scope, receive, send):
        asyncio.get_running_loop().set_default_executor(executor)
        await shipped(scope, receive, send)

uvicorn.run(app, host="127.0.0.1", port=int(os.environ["PEER_PORT"]), lifespan="off", log_level="warning",
            access_log=False, server_header=False, timeout_keep_alive=5, timeout_graceful_shutdown=20,
            limit_concurrency=2048, h11_max_incomplete_event_size=16 * 1024)
'''


# --- the peer: venv, TLS, configuration ----------------------------------------------------------

async def output_of(command: list[str]) -> tuple[int, str]:
    """Run a command to its end and return (exit status, stdout + stderr); killed if this script is interrupted."""
    process = await asyncio.create_subprocess_exec(*command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        output, _ = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    return process.returncode, output.decode(errors="replace")


async def run_checked(command: list[str]) -> None:
    """Run a setup command (venv, pip); stop the benchmark with its output if it fails."""
    status, output = await output_of(command)
    if status:
        raise SystemExit(f"bench: {' '.join(command[:4])} ... failed:\n{output[-3000:]}")


async def ensure_peer_venv() -> Path:
    """oidc-exchange and the same uvicorn, uvloop and httptools as tpx's, in a venv that is not the project's."""
    pins = [f"{PEER}=={PEER_VERSION}"] + [f"{name}=={importlib.metadata.version(name)}"
                                          for name in ("uvicorn", "uvloop", "httptools")]
    python, marker = PEER_VENV / "bin" / "python", PEER_VENV / "bench-pins.txt"
    if python.exists() and marker.exists() and marker.read_text() == "\n".join(pins):
        progress(f"peer venv {PEER_VENV.relative_to(ROOT)}/ already holds {', '.join(pins)}")
        return python
    progress(f"installing {', '.join(pins)} into a throwaway venv {PEER_VENV.relative_to(ROOT)}/ (not the project's)")
    shutil.rmtree(PEER_VENV, ignore_errors=True)
    await run_checked([sys.executable, "-m", "venv", str(PEER_VENV)])
    await run_checked([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *pins])
    marker.write_text("\n".join(pins))
    return python


def write_private(path: Path, data: bytes) -> Path:
    path.touch(mode=0o600)
    path.write_bytes(data)
    return path


def make_tls(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a certificate for 127.0.0.1 it signed: (CA cert, server cert, server key) files."""
    now = datetime.datetime.now(datetime.timezone.utc)
    valid = dict(not_valid_before=now - datetime.timedelta(minutes=5), not_valid_after=now + datetime.timedelta(days=1))
    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tpx bench throwaway CA")])
    ca = (x509.CertificateBuilder(subject_name=ca_name, issuer_name=ca_name, public_key=ca_key.public_key(),
                                  serial_number=x509.random_serial_number(), **valid)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    server = (x509.CertificateBuilder(subject_name=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]),
                                      issuer_name=ca_name, public_key=server_key.public_key(),
                                      serial_number=x509.random_serial_number(), **valid)
              .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                             critical=False)
              .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
              .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
              .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
              .sign(ca_key, hashes.SHA256()))
    ca_file = directory / "ca.pem"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file = directory / "issuer-cert.pem"
    cert_file.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    key_file = write_private(directory / "issuer-key.pem", server_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return ca_file, cert_file, key_file


def https_issuer_app(issuer: DevIssuer) -> Starlette:
    """DevIssuer's JWKS, with a discovery document that also names a token endpoint (the peer requires one)."""
    async def discovery(_request):
        return JSONResponse({
            "issuer": issuer.url, "jwks_uri": f"{issuer.url}/.well-known/jwks", "token_endpoint": f"{issuer.url}/token",
            "response_types_supported": ["id_token"], "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
        })

    return Starlette(routes=[Route("/.well-known/openid-configuration", discovery), Mount("/", app=issuer.app())])


def peer_threads(args: argparse.Namespace) -> str:
    return (f"{args.peer_threads} executor threads" if args.peer_threads else
            f"Python's default executor, {min(32, (os.cpu_count() or 1) + 4)} threads")


def peer_config(*, port: int, database_url: str, signing_key: Path, issuer_url: str, pool: int) -> str:
    """The peer's TOML (its README's configuration section; merged over its compiled-in defaults)."""
    return f'''
[server]
issuer = "https://127.0.0.1:{port}"   # its own tokens' issuer (it serves plain HTTP here, as tpx does)
role = "exchange"                     # the public plane only: /nonce, /token, /revoke, /keys, discovery

[registration]
mode = "open"                         # the first exchange of a subject registers it (one subject here)

[token]
access_token_ttl = "30m"              # tpx's default token lifetime (TPX_TOKEN_TTL_SECONDS=1800)
refresh_token_ttl = "1d"
audience = "bench-registry"

[grants]
id_token = true                       # the direct ID-token grant: POST /token grant_type=id_token
nonce_ttl = "15m"
max_assertion_lifetime = "1h"

[key_manager]
adapter = "local"                     # Ed25519 key made for this run
[key_manager.local]
private_key_path = "{signing_key}"
algorithm = "EdDSA"
kid = "bench"

[repository]
adapter = "postgres"                  # users, sessions and single-use records (nonces, replay markers)
[repository.postgres]
url = "{database_url}"
max_connections = {pool}
run_migrations = true

[audit]
adapter = "noop"                      # no event publishing

[rate_limit]
enabled = false

[telemetry]
enabled = false
exporter = "none"

[providers.github]
adapter = "oidc"                      # discovery + JWKS over HTTPS, cached
issuer = "{issuer_url}"
client_id = "{PEER_CLIENT_ID}"
'''


# --- single-use bodies ---------------------------------------------------------------------------

def mint_tpx(count: int) -> list[str]:
    """`count` JSON bodies, each with a distinct GitHub-shaped ID token (runs in a minting process), written
    compactly as tpx's CI client (httpx) sends them."""
    issuer = ISSUERS["tpx"]
    return [json.dumps({"jwt": issuer.github_token(repository=REPOSITORY)}, separators=(",", ":"))
            for _ in range(count)]


def mint_peer(nonces: list[str]) -> list[str]:
    """One direct-grant form body per nonce. The peer registers users, so it needs a verified email."""
    issuer = ISSUERS["peer"]
    return [urlencode({"grant_type": "id_token", "provider": "github", "id_token": issuer.github_token(
        repository=REPOSITORY, audience=PEER_CLIENT_ID, nonce=nonce, email="release@bench.example",
        email_verified=True)}) for nonce in nonces]


def _ready() -> None:
    return None


class Minter:
    """Two forked processes that sign ID tokens (RSA-2048, about 1 ms each) in chunks."""

    CHUNK = 500

    def __init__(self) -> None:
        self.pool = ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("fork"))
        self.pool.submit(_ready).result()   # fork now, before this process has threads or connections

    async def _chunks(self, function: Callable, arguments: list) -> list[str]:
        loop = asyncio.get_running_loop()
        results = await asyncio.gather(*(loop.run_in_executor(self.pool, function, a) for a in arguments))
        return [body for chunk in results for body in chunk]

    async def tpx_bodies(self, count: int) -> list[str]:
        return await self._chunks(mint_tpx, [min(self.CHUNK, count - i) for i in range(0, count, self.CHUNK)])

    async def peer_bodies(self, nonces: list[str]) -> list[str]:
        return await self._chunks(mint_peer, [nonces[i:i + self.CHUNK] for i in range(0, len(nonces), self.CHUNK)])

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


async def peer_nonces(port: int, count: int) -> list[str]:
    """`count` nonces from the peer's `POST /nonce` (each stored there, single use, for nonce_ttl)."""
    request = loadgen.request_bytes("/nonce", b"", {}, f"127.0.0.1:{port}")
    bodies = await loadgen.collect("127.0.0.1", port, request, count=count, clients=min(16, count))
    return [json.loads(body)["nonce"] for body in bodies]


# --- services and targets ------------------------------------------------------------------------

@dataclass
class Service:
    name: str
    port: int
    path: str
    content_type: str
    processes: list[subprocess.Popen]
    bodies: Callable[[int], Awaitable[list[str]]]   # n single-use bodies (or a fixed set, for `cycle`)
    database: str | None = None
    relay_conn: asyncpg.Connection | None = None     # tpx: where to wait for the outbox relay
    mode: str = "once"
    headers: list[str] = field(default_factory=list)

    def service_pids(self) -> list[int]:
        return [pid for process in self.processes for pid in process_tree(process.pid)]

    async def database_pids(self, admin: asyncpg.Connection) -> list[int]:
        if not self.database:
            return []
        own = (self.relay_conn.get_server_pid(),) if self.relay_conn else ()   # this script's relay check
        return await backend_pids(admin, self.database, exclude=own)


@dataclass
class Target:
    key: str
    label: str
    service: Service
    connections: int
    expected_rps: float = 0.0


@dataclass
class Sample:
    requests: int
    non2xx: int
    socket_errors: int
    window: float
    drain: float
    p50: float
    p99: float
    cpu_ms: float           # the target's processes + its database's backends
    db_cpu_ms: float        # of which the backends
    shared_cpu_ms: float
    other_cores: float      # CPU of everything else on the machine (not the target, the shared servers, wrk, us)
    cores: dict[str, tuple[float, float]] = field(default_factory=dict)   # group -> (busy, waiting for a CPU)
    first_error: str = ""

    @property
    def ok(self) -> int:
        return self.requests - self.non2xx

    @property
    def rps(self) -> float:
        return self.ok / self.window

    @property
    def sustained(self) -> float:
        return self.ok / (self.window + self.drain)

    @property
    def cpu_per_ok(self) -> float:
        return self.cpu_ms / self.ok if self.ok else math.nan

    @property
    def db_cpu_per_ok(self) -> float:
        return self.db_cpu_ms / self.ok if self.ok else math.nan

    @property
    def shared_cpu_per_ok(self) -> float:
        return self.shared_cpu_ms / self.ok if self.ok else math.nan

    @property
    def valid(self) -> bool:
        return self.non2xx == 0 and self.socket_errors == 0


async def start_tpx_service(stack: contextlib.AsyncExitStack, *, name: str, workers: int, issuer_url: str,
                            minter: Minter, pool: int, admin_token: str, registry_token: str,
                            tpx: str = TPX) -> Service:
    database = f"tpx_bench_peer_{name}"
    stack.push_async_callback(drop_database, database)
    url = await fresh_database(database, tpx)
    port, prefix = free_port(), f"tpx-bench-peer-{name}-{os.getpid()}"
    env = tpx_env(database_url=url, port=port, prefix=prefix, admin_token=admin_token,
                  registry_token=registry_token, workers=workers, pool=pool)
    stack.push_async_callback(delete_amqp_objects, env, prefix)
    processes = start_tpx(env, f"peer-{name}-", tpx=tpx)
    stack.callback(stop, processes)
    base = f"http://127.0.0.1:{port}"
    await wait_http(f"{base}/healthz", timeout=60, process=processes[0])
    await register_publisher(base, admin_token, issuer_url)
    relay_conn = await asyncpg.connect(url)
    stack.push_async_callback(relay_conn.close)
    progress(f"tpx ({workers} exchange process{'es' if workers > 1 else ''}) up on :{port}, database {database}, "
             f"AMQP prefix {prefix}")
    return Service(f"tpx-{name}", port, "/v1/exchange", "application/json", processes, minter.tpx_bodies,
                   database=database, relay_conn=relay_conn)


async def start_peer(stack: contextlib.AsyncExitStack, *, python: Path, tmp: Path, ca_file: Path, issuer_url: str,
                     minter: Minter, pool: int, threads: int) -> Service:
    database = "tpx_bench_peer_oidcx"
    stack.push_async_callback(drop_database, database)
    url = await empty_database(database)   # the peer migrates its own schema
    port = free_port()
    signing_key = write_private(tmp / "peer-signing-key.pem", ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    config = tmp / "peer.toml"
    config.write_text(peer_config(port=port, database_url=url, signing_key=signing_key, issuer_url=issuer_url,
                                  pool=pool))
    host = tmp / "peer_host.py"
    host.write_text(PEER_HOST)
    env = {**os.environ, "PEER_CONFIG": str(config), "PEER_PORT": str(port), "SSL_CERT_FILE": str(ca_file),
           "RUST_LOG": "warn",   # its log level, as tpx runs at TPX_LOG_LEVEL=warning
           "PEER_THREADS": str(threads)}
    env.pop("SSL_CERT_DIR", None)
    process = start([str(python), str(host)], env, "peer-oidc-exchange")
    stack.callback(stop, [process])
    await wait_http(f"http://127.0.0.1:{port}/health", timeout=60, process=process)

    async def bodies(count: int) -> list[str]:
        return await minter.peer_bodies(await peer_nonces(port, count))

    await check_peer(port, bodies)
    progress(f"{PEER} {PEER_VERSION} up on :{port} (pid {process.pid}), database {database}; HTTPS issuer "
             f"{issuer_url} trusted through SSL_CERT_FILE")
    return Service(PEER, port, "/token", "application/x-www-form-urlencoded", [process], bodies, database=database)


async def check_peer(port: int, bodies: Callable[[int], Awaitable[list[str]]]) -> None:
    """One exchange must succeed and its replay must be refused, or the comparison means nothing."""
    [body] = await bodies(1)
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", trust_env=False, timeout=30) as http:
        first = await http.post("/token", content=body, headers=headers)
        replay = await http.post("/token", content=body, headers=headers)
    if first.status_code != 200 or "access_token" not in first.json() or replay.status_code != 400:
        raise SystemExit(f"bench: {PEER} does not exchange as configured: {first.status_code} {first.text[:300]}; "
                         f"replay {replay.status_code} {replay.text[:200]} (see .bench-logs/peer-oidc-exchange.log)")
    progress(f"{PEER}: nonce -> ID token -> 200 (access + refresh token); the same body again -> "
             f"{replay.status_code} {replay.json().get('error')}")


async def start_baseline(stack: contextlib.AsyncExitStack, *, issuer: DevIssuer, minter: Minter) -> Service:
    port = free_port()
    async with httpx.AsyncClient(trust_env=False) as http:
        jwk = (await http.get(f"{issuer.url}/.well-known/jwks")).json()["keys"][0]
    env = {**os.environ, "BASELINE_PORT": str(port), "BASELINE_JWK": json.dumps(jwk), "BASELINE_AUDIENCE": "tpx",
           "BASELINE_ISSUER": issuer.url}
    process = start([sys.executable, str(ROOT / "bench" / "baseline_app.py")], env, "peer-baseline")
    stack.callback(stop, [process])
    await wait_port(port, process)
    progress(f"baseline (Starlette + jwt.decode) up on :{port} (pid {process.pid})")
    return Service("baseline", port, "/decode", "application/json", [process], minter.tpx_bodies)


async def wait_port(port: int, process: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"bench: nothing listens on :{port} (see .bench-logs/)")
            await asyncio.sleep(0.1)


async def introspection_service(tpx: Service, registry_token: str, minter: Minter, count: int = 200) -> Service:
    """tpx's `POST /v1/introspect` with a registry's credential, over `count` live tokens (idempotent: cycled)."""
    live = []
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{tpx.port}", trust_env=False, timeout=30) as http:
        for body in await minter.tpx_bodies(count):
            response = await http.post("/v1/exchange", content=body, headers={"Content-Type": "application/json"})
            response.raise_for_status()
            live.append(json.dumps({"token": response.json()["token"]}, separators=(",", ":")))

    async def bodies(_count: int) -> list[str]:
        return live

    return Service("tpx-introspect", tpx.port, "/v1/introspect", "application/json", tpx.processes, bodies,
                   database=tpx.database, relay_conn=tpx.relay_conn, mode="cycle",
                   headers=[f"Authorization: Bearer {registry_token}"])


# --- one run ----------------------------------------------------------------------------------------

async def run_wrk(service: Service, bodies_file: Path, connections: int, duration: int) -> tuple[dict, str]:
    command = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--timeout", "10s", "-s", str(WRK_SCRIPT),
               f"http://127.0.0.1:{service.port}", "--", str(bodies_file), service.path, service.content_type,
               service.mode, *service.headers]
    status, text = await output_of(command)
    lines = {line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in text.splitlines()
             if line.startswith(("WRK_RESULT ", "WRK_FIRST_ERROR "))}
    if status or "WRK_RESULT" not in lines:
        raise SystemExit(f"bench: wrk failed ({status}):\n{text[-2000:]}")
    return json.loads(lines["WRK_RESULT"]), lines.get("WRK_FIRST_ERROR", "")


async def wait_for_relay(conn: asyncpg.Connection, timeout: float = 120) -> float:
    """Seconds until the broker has confirmed every committed event. Asks tpx's own definition of the
    backlog (tpx.core.db.outbox.backlog: rows without a sequence, and sequenced rows not yet confirmed),
    so it follows the schema the run migrated to (published_at IS NULL up to migration 0006; rows past
    event_chain.published_sequence since 0007) and reads indexes only, never the whole outbox."""
    began = time.monotonic()
    pointer = await conn.fetchval("""SELECT EXISTS (SELECT 1 FROM information_schema.columns
                                     WHERE table_name = 'event_chain' AND column_name = 'published_sequence')""")

    async def backlog() -> int:
        if pointer:
            return (await outbox.backlog(conn))[0]
        # A tpx from before migration 0007 (bench/ab.py --ref): every unconfirmed row has published_at unset.
        return await conn.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL")

    while await backlog():
        if time.monotonic() - began > timeout:
            raise SystemExit(f"bench: the outbox relay did not publish everything within {timeout} s")
        await asyncio.sleep(0.02)
    return time.monotonic() - began


def own_rusage_ms() -> float:
    """CPU of this script and its reaped children (wrk, once a run is over), in ms."""
    return sum(usage.ru_utime + usage.ru_stime
               for usage in (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN))
               ) * 1000


def cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    """Time used in between (CPU, or waiting for a CPU); a process that started in between counts whole, one
    that exited is lost."""
    return sum(after[pid] - before.get(pid, 0.0) for pid in after)


async def measure(target: Target, *, duration: int, tmp: Path, admin: asyncpg.Connection,
                  on_load: Callable[[], None] | None = None) -> Sample:
    """Prepare bodies, run wrk once, wait for the relay; retry with more bodies if wrk ran out.
    `on_load` is called as wrk starts (after the bodies are ready): a profiler started before would
    spend its window on the preparation, which takes seconds."""
    service = target.service
    count = math.ceil(max(target.expected_rps, 300) * duration * 1.3) + 100
    while True:
        began = time.monotonic()
        bodies = await service.bodies(count)
        bodies_file = tmp / "bodies.txt"
        bodies_file.write_text("\n".join(bodies) + "\n")
        prepared = time.monotonic() - began
        if service.relay_conn:
            await wait_for_relay(service.relay_conn)
        pids = {"service": service.service_pids(), "db": await service.database_pids(admin),
                "shared": await shared_server_pids(admin)}
        before = {group: cpu_ms(group_pids) for group, group_pids in pids.items()}
        waits_before = {group: run_queue_ms(group_pids) for group, group_pids in pids.items()}
        machine_before, ours_before, wall_before = machine_busy_ms(), own_rusage_ms(), time.monotonic()
        if on_load is not None:
            on_load()
        result, first_error = await run_wrk(service, bodies_file, target.connections, duration)
        drain = await wait_for_relay(service.relay_conn) if service.relay_conn and service.mode == "once" else 0.0
        now = {"service": service.service_pids(), "db": await service.database_pids(admin),
               "shared": await shared_server_pids(admin)}
        seen = {group: sorted(set(pids[group]) | set(now[group])) for group in pids}
        used = {group: cpu_delta(before[group], cpu_ms(seen[group])) for group in pids}
        waited = {group: cpu_delta(waits_before[group], run_queue_ms(seen[group])) for group in pids}
        other = machine_busy_ms() - machine_before - sum(used.values()) - (own_rusage_ms() - ours_before)
        seconds = time.monotonic() - wall_before
        other_cores = max(other, 0.0) / 1000 / seconds
        cores = {group: (used[group] / 1000 / seconds, waited[group] / 1000 / seconds) for group in ("service", "db")}
        if not result["exhausted"]:
            break
        count *= 2
        progress(f"    {target.label}: ran out of single-use bodies; again with {count}")
    sample = Sample(
        requests=result["requests"], non2xx=result["non2xx"],
        socket_errors=sum(result[k] for k in ("connect_errors", "read_errors", "write_errors", "timeouts")),
        window=result["duration_us"] / 1e6, drain=drain, p50=result["p50_us"] / 1000, p99=result["p99_us"] / 1000,
        cpu_ms=used["service"] + used["db"], db_cpu_ms=used["db"], shared_cpu_ms=used["shared"],
        other_cores=other_cores, cores=cores, first_error=first_error)
    target.expected_rps = max(target.expected_rps, sample.rps)
    relay = f", relay drained in {sample.drain:.2f} s" if service.relay_conn and service.mode == "once" else ""
    flag = "" if sample.valid else (f"  INVALID: {sample.non2xx} non-2xx, {sample.socket_errors} socket errors; "
                                    f"first: {sample.first_error[:200]}")
    busy = f"; other load {sample.other_cores:.2f} cores" if sample.other_cores >= DISTURBED_CORES else ""
    progress(f"    {target.label}: {len(bodies)} bodies prepared in {prepared:.1f} s; {sample.rps:.0f} req/s, "
             f"p50 {sample.p50:.1f} ms, p99 {sample.p99:.1f} ms, CPU {sample.cpu_per_ok:.2f} ms/2xx "
             f"(PostgreSQL backends {sample.db_cpu_per_ok:.2f}); cores busy/waiting for a CPU: "
             f"{service.name} {'/'.join(f'{v:.2f}' for v in sample.cores['service'])}, "
             f"PostgreSQL backends {'/'.join(f'{v:.2f}' for v in sample.cores['db'])}{relay}{busy}{flag}")
    return sample


# --- the report --------------------------------------------------------------------------------------

def median(samples: list[Sample], metric: str) -> float:
    return statistics.median(getattr(s, metric) for s in samples)


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "n/a"


def report(targets: list[Target], samples: dict[str, list[Sample]], args: argparse.Namespace) -> None:
    invalid = [(t, s) for t in targets for s in samples[t.key] if not s.valid]
    print(f"\nresults: medians of {args.repetitions} repetition(s); wrk -t1, {args.duration} s per run, keep-alive, "
          "a distinct single-use ID token per request")
    print("durable: synchronous commit everywhere; tpx also publishes every event through its outbox relay "
          f"with confirms; {PEER} publishes none; {PEER}'s ASGI adapter: {peer_threads(args)}\n")
    print("| 1 process | req/s | sustained | p50 ms | p99 ms | CPU ms per 2xx, all processes |")
    print("|---|---:|---:|---:|---:|---:|")
    for target in targets:
        if target.service.mode == "cycle":
            continue
        rows = samples[target.key]
        mark = "" if all(s.valid for s in rows) else " (!)"
        print(f"| {target.label}{mark} | {median(rows, 'rps'):.0f} | {median(rows, 'sustained'):.0f} | "
              f"{median(rows, 'p50'):.1f} | {median(rows, 'p99'):.1f} | {median(rows, 'cpu_per_ok'):.2f} |")

    for target in targets:
        if target.service.mode == "cycle":
            rows = samples[target.key]
            print(f"\n{target.label}: {median(rows, 'rps'):.0f} req/s, p50 {median(rows, 'p50'):.1f} ms, "
                  f"p99 {median(rows, 'p99'):.1f} ms, CPU {median(rows, 'cpu_per_ok'):.2f} ms per 2xx")

    print(f"\ntpx / {PEER} (throughput and sustained: higher is better for tpx; p99: lower is)")
    for connections in args.connections:
        peer = samples.get(f"peer-{connections}")
        for name, label in (("tpx1", "tpx, 1 process"), ("tpx2", "tpx, 2 processes")):
            tpx = samples.get(f"{name}-{connections}")
            if tpx and peer:
                print(f"  {label:<17} {connections:>3} connections: throughput "
                      f"{ratio(median(tpx, 'rps'), median(peer, 'rps'))}, sustained "
                      f"{ratio(median(tpx, 'sustained'), median(peer, 'sustained'))}, p99 "
                      f"{ratio(median(tpx, 'p99'), median(peer, 'p99'))}")

    print("\ntpx outbox relay: time after the wrk window until every event was published (median, max)")
    for target in targets:
        if target.service.relay_conn and target.service.mode == "once":
            drains = [s.drain for s in samples[target.key]]
            print(f"  {target.label:<45} {statistics.median(drains):.2f} s, {max(drains):.2f} s")

    print("\nreq/s of each repetition")
    for target in targets:
        print(f"  {target.label:<45} " + "  ".join(f"{s.rps:.0f}" for s in samples[target.key]))

    print("\nCPU ms per 2xx of the table: service processes + PostgreSQL backends of the target's database (median)")
    for target in targets:
        rows = samples[target.key]
        print(f"  {target.label:<45} {median(rows, 'cpu_per_ok') - median(rows, 'db_cpu_per_ok'):.2f} + "
              f"{median(rows, 'db_cpu_per_ok'):.2f}")

    print("\nnot in the table: CPU ms per 2xx of the shared servers during each target's runs (PostgreSQL's "
          "background processes: WAL writer, checkpointer, autovacuum; RabbitMQ), median")
    for target in targets:
        print(f"  {target.label:<45} {median(samples[target.key], 'shared_cpu_per_ok'):.2f}")
    print("CPU in the table: user + system time of the target's own processes and their descendants "
          "(tpx: exchange, jwks-refresher, revoker; the peer: its uvicorn process with the Rust runtime's "
          "threads; the baseline: its process) plus the PostgreSQL backends connected to its database, "
          "from the start of wrk to the end of the relay drain. Not counted: wrk, this script, the issuers.")
    others = [(s.other_cores, t.label) for t in targets for s in samples[t.key]]
    disturbed = [label for cores, label in others if cores >= DISTURBED_CORES]
    print(f"\nother load on the machine during the runs (all CPU but the target's, the shared servers', wrk's "
          f"and this script's; includes the idle other stacks): median {statistics.median(c for c, _ in others):.2f} "
          f"cores, max {max(others)[0]:.2f} ({max(others)[1]})"
          + (f"; {len(disturbed)} run(s) above {DISTURBED_CORES} cores: {', '.join(disturbed)}" if disturbed else ""))
    if invalid:
        print(f"\nINVALID RUNS ({len(invalid)}): a run must answer every request 2xx without socket errors")
        for target, sample in invalid:
            print(f"  {target.label}: {sample.non2xx} non-2xx of {sample.requests}, {sample.socket_errors} socket "
                  f"errors; first: {sample.first_error[:300]}")
    else:
        total = sum(s.requests for rows in samples.values() for s in rows)
        print(f"\nvalid: all {total} responses in all runs were 2xx, no socket errors")


def resident_sizes(services: dict[str, Service]) -> dict[str, list[str]]:
    """RSS of each service process and its children (tpx: exchange, jwks-refresher, revoker; with 2
    exchange processes, uvicorn's supervisor and its workers)."""
    sizes: dict[str, list[str]] = {}
    for key in ("tpx1", "tpx2", "peer", "baseline"):
        service = services[key]
        sizes[service.name] = [f"{rss:.1f}" for pid in service.service_pids() if (rss := rss_mb(pid)) is not None]
    return sizes


# --- the whole run ---------------------------------------------------------------------------------

async def check_connection_budget(admin: asyncpg.Connection, pool: int) -> None:
    """Everything stays up for the whole run, so every pool must fit in PostgreSQL's max_connections at once:
    3 tpx exchange processes (pool + a listener and a lock connection each), 4 tpx workers (WORKER_POOL + 2),
    the peer's two pools, this script's 3 connections."""
    needed = 3 * (pool + 3) + 4 * (WORKER_POOL + 2) + 2 * pool + 3
    limit = int(await admin.fetchval("SHOW max_connections"))
    used = await admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'")
    if needed > limit - used:
        raise SystemExit(f"bench: this run may need {needed} PostgreSQL connections and only {limit - used} of "
                         f"max_connections={limit} are free; lower --pool (now {pool})")
    progress(f"PostgreSQL connections: up to {needed} needed, {limit - used} of {limit} free")


def build_targets(services: dict[str, Service], connections: list[int]) -> list[Target]:
    first = connections[0]
    targets = []
    for c in connections:
        targets.append(Target(f"tpx1-{c}", f"tpx, {c} connections", services["tpx1"], c))
        targets.append(Target(f"peer-{c}", f"{PEER} {PEER_VERSION}, {c} connections", services["peer"], c))
        if c == first:
            targets.append(Target(f"baseline-{c}", f"baseline (jwt.decode), {c} connections",
                                  services["baseline"], c))
    for c in connections:
        targets.append(Target(f"tpx2-{c}", f"tpx, 2 processes, {c} connections", services["tpx2"], c))
    targets.append(Target(f"introspect-{first}", f"tpx introspection (1 process, {first} connections)",
                          services["introspect"], first))
    return targets


async def warm_up(targets: list[Target], *, seconds: int, tmp: Path, admin: asyncpg.Connection) -> None:
    """One short run per service at the most connections: warms caches and pools, and sizes the bodies."""
    seen: dict[int, Target] = {}
    for target in targets:
        seen.setdefault(id(target.service), target)
    for target in seen.values():
        progress(f"warm-up: {target.service.name}, {seconds} s at {target.connections} connections")
        sample = await measure(Target(target.key, f"warm-up {target.service.name}", target.service,
                                      target.connections, 3000), duration=seconds, tmp=tmp, admin=admin)
        for other in targets:
            if other.service is target.service:
                other.expected_rps = sample.rps


async def main(args: argparse.Namespace) -> None:
    if not shutil.which("wrk"):
        raise SystemExit("bench: wrk is not installed (apt-get install wrk)")
    print(f"tpx vs {PEER} {PEER_VERSION} vs a jwt.decode baseline, driven by wrk\n", flush=True)
    admin_token = "bench-admin-" + secrets.token_urlsafe(16)
    registry_token = "bench-registry-" + secrets.token_urlsafe(16)
    tpx_issuer, peer_issuer = ISSUERS["tpx"], ISSUERS["peer"] = DevIssuer(), DevIssuer()
    tpx_port, peer_port = free_port(), free_port()
    tpx_issuer.url, peer_issuer.url = f"http://127.0.0.1:{tpx_port}", f"https://127.0.0.1:{peer_port}"
    minter = Minter()   # forks now, with the issuers complete, before any signal handler or connection exists
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, asyncio.current_task().cancel)
    async with contextlib.AsyncExitStack() as stack:
        stack.callback(minter.close)
        if args.remove_venv:
            stack.callback(shutil.rmtree, PEER_VENV, True)
        tmp = Path(tempfile.mkdtemp(prefix="tpx-bench-peer-"))
        stack.callback(shutil.rmtree, tmp, True)
        python = await ensure_peer_venv()

        ca_file, cert_file, key_file = make_tls(tmp)
        await stack.enter_async_context(serve_app(tpx_issuer.app(), tpx_port))
        await stack.enter_async_context(serve_app(https_issuer_app(peer_issuer), peer_port,
                                                  ssl_certfile=str(cert_file), ssl_keyfile=str(key_file)))
        progress(f"issuers: {tpx_issuer.url} for tpx and the baseline, {peer_issuer.url} (throwaway CA) for {PEER}")
        admin = await asyncpg.connect(f"{PG}/postgres")
        stack.push_async_callback(admin.close)
        await check_connection_budget(admin, args.pool)

        common = dict(issuer_url=tpx_issuer.url, minter=minter, pool=args.pool, admin_token=admin_token,
                      registry_token=registry_token, tpx=await runtime_tpx())
        services = {"tpx1": await start_tpx_service(stack, name="w1", workers=1, **common),
                    "tpx2": await start_tpx_service(stack, name="w2", workers=2, **common),
                    "peer": await start_peer(stack, python=python, tmp=tmp, ca_file=ca_file,
                                             issuer_url=peer_issuer.url, minter=minter, pool=args.pool,
                                             threads=args.peer_threads),
                    "baseline": await start_baseline(stack, issuer=tpx_issuer, minter=minter)}
        services["introspect"] = await introspection_service(services["tpx1"], registry_token, minter)
        targets = build_targets(services, args.connections)

        await warm_up(targets, seconds=args.warmup, tmp=tmp, admin=admin)
        in_use = await admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'")
        progress(f"PostgreSQL client connections in use after the warm-up: {in_use}")
        samples: dict[str, list[Sample]] = {t.key: [] for t in targets}
        for repetition in range(args.repetitions):
            order = targets[repetition % len(targets):] + targets[:repetition % len(targets)]
            progress(f"repetition {repetition + 1}/{args.repetitions}: {len(order)} runs of {args.duration} s")
            for target in order:
                samples[target.key].append(await measure(target, duration=args.duration, tmp=tmp, admin=admin))
        rss = resident_sizes(services)
        progress("stopping everything, dropping the databases and AMQP objects")
    report(targets, samples, args)
    print("\nresident memory after the runs (VmRSS, MB): " + "; ".join(f"{name} {', '.join(sizes)}"
                                                                     for name, sizes in rss.items()))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repetitions", type=int, default=3, help="rounds over all targets; medians are reported")
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, nargs="+", default=[32, 8],
                        help="keep-alive connections per run (the first also for the baseline and introspection)")
    parser.add_argument("--warmup", type=int, default=3, help="seconds of warm-up per service")
    parser.add_argument("--pool", type=int, default=10,
                        help="database connections per tpx exchange process (tpx's default TPX_DB_POOL_MAX) and per "
                             "pool of the peer (it has two: users, sessions)")
    parser.add_argument("--peer-threads", type=int, default=0,
                        help="threads the peer's ASGI adapter may block at once (default: as shipped, Python's "
                             "default executor)")
    parser.add_argument("--quick", action="store_true", help="smoke run: one repetition of 5 s, 2 s warm-up")
    parser.add_argument("--remove-venv", action="store_true", help=f"delete {PEER_VENV.relative_to(ROOT)}/ at the end")
    args = parser.parse_args()
    if args.quick:
        args.repetitions, args.duration, args.warmup = 1, 5, 2
    return args


if __name__ == "__main__":
    try:
        asyncio.run(main(parse_args()))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("\nbench: interrupted; everything it started is stopped and removed", file=sys.stderr)
        sys.exit(130)
