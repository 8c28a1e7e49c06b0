"""What the benchmark scripts need: a fresh database, the services as separate processes, loopback
issuers, the CPU time of a target's processes, and a clean broker afterwards. Scripts here measure;
this module only sets up, observes and tears down."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator

import aio_pika
import asyncpg
import httpx

from tpx.core.db.migrate import migrate

ROOT = Path(__file__).resolve().parent.parent
PG = os.environ.get("TPX_BENCH_PG", "postgresql://postgres@127.0.0.1:5432")
LOGS = ROOT / ".bench-logs"
TPX = str(Path(sys.executable).with_name("tpx"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def progress(text: str) -> None:
    print(f"  · {text}", flush=True)


async def empty_database(name: str) -> str:
    """Drop and re-create `name` (no schema) and return its URL."""
    admin = await asyncpg.connect(f"{PG}/postgres")
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return f"{PG}/{name}"


async def fresh_database(name: str, tpx: str | None = None) -> str:
    """Drop and re-create `name`, migrate it, and return its URL. With `tpx` (a `tpx` command), that
    command's `tpx migrate` migrates it: the stack it will serve then finds its own schema, also when it
    runs another tree of tpx (bench/ab.py; an older tpx refuses a newer schema)."""
    url = await empty_database(name)
    if tpx is not None:
        process = await asyncio.create_subprocess_exec(tpx, "migrate", env={**os.environ, "TPX_DATABASE_URL": url},
                                                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        output, _ = await process.communicate()
        if process.returncode:
            raise SystemExit(f"bench: tpx migrate failed:\n{output.decode(errors='replace')[-2000:]}")
        return url
    conn = await asyncpg.connect(url)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    return url


async def drop_database(name: str) -> None:
    admin = await asyncpg.connect(f"{PG}/postgres")
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


def start(command: list[str], env: dict[str, str], name: str) -> subprocess.Popen:
    """Start a process with its output in .bench-logs/<name>.log."""
    LOGS.mkdir(exist_ok=True)
    log = open(LOGS / f"{name}.log", "w")
    return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)


def stop(processes: list[subprocess.Popen]) -> None:
    """SIGTERM each process we started (by its PID), wait for the drain, kill only a straggler."""
    for process in processes:
        process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


async def wait_http(url: str, timeout: float = 30, process: subprocess.Popen | None = None) -> None:
    """Wait until `url` answers 200; give up early if `process` (the server) has exited."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(trust_env=False) as http:
        while True:
            try:
                if (await http.get(url)).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if process is not None and process.poll() is not None:
                raise SystemExit(f"bench: the server for {url} exited with {process.returncode} (see .bench-logs/)")
            if time.monotonic() > deadline:
                raise SystemExit(f"bench: {url} did not answer within {timeout} s (see .bench-logs/)")
            await asyncio.sleep(0.1)


async def delete_amqp_objects(env: dict[str, str], prefix: str) -> None:
    """The run's own exchange, stream and queues, so repeated runs leave the broker clean."""
    connection = await aio_pika.connect(env.get("TPX_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/"))
    async with connection:
        for queue in (f"{prefix}.audit", f"{prefix}.revoker", f"{prefix}.revoker.dead"):
            await (await connection.channel()).queue_delete(queue)
        for exchange in (f"{prefix}.events", f"{prefix}.dlx"):
            await (await connection.channel()).exchange_delete(exchange)


# --- a tpx stack as production runs it ------------------------------------------------------------

def tpx_env(*, database_url: str, port: int, prefix: str, admin_token: str, registry_token: str,
            workers: int = 1, pool: int = 20) -> dict[str, str]:
    """The environment of one benchmark stack: durable defaults, rate limits off, a loopback issuer allowed."""
    return {**os.environ, "TPX_DATABASE_URL": database_url, "TPX_AMQP_PREFIX": prefix, "TPX_PORT": str(port),
            "TPX_ADMIN_TOKENS": admin_token, "TPX_INTROSPECTION_TOKENS": registry_token,
            "TPX_INSECURE_LOOPBACK_ISSUERS": "1", "TPX_LOG_LEVEL": "warning", "TPX_DB_POOL_MAX": str(pool),
            "TPX_DB_POOL_MIN": str(min(pool, 10)),
            # One publisher takes the whole load here; per-publisher limits would measure the limiter.
            "TPX_RATE_PUBLISHER_PER_MINUTE": "0", "TPX_RATE_FAILED_PER_MINUTE": "0",
            "TPX_WORKERS": str(workers)}


WORKER_POOL = 4


def start_tpx(env: dict[str, str], name: str = "", tpx: str = TPX) -> list[subprocess.Popen]:
    """`tpx exchange`, `tpx jwks-refresher` and `tpx revoker` as separate processes, logs named `<name>exchange` etc.
    The pool size in `env` is the exchange's; the two workers take no load here and get WORKER_POOL connections."""
    workers = {**env, "TPX_DB_POOL_MIN": "1", "TPX_DB_POOL_MAX": str(WORKER_POOL)}
    return [
        start([tpx, "exchange"], env, f"{name}exchange"),
        start([tpx, "jwks-refresher"], {**workers, "TPX_OPS_PORT": str(free_port())}, f"{name}jwks-refresher"),
        start([tpx, "revoker"], {**workers, "TPX_OPS_PORT": str(free_port())}, f"{name}revoker"),
    ]


RUNTIME_VENV = ROOT / ".bench-venv" / "tpx-runtime"


async def runtime_tpx() -> str:
    """The `tpx` command of a venv holding tpx as a deployment installs it: this checkout (editable) with
    its runtime dependencies only, at the versions of the project's venv, but none of the test tools
    (import-linter pulls in rich, which structlog then imports: 4 MB of RSS no deployment has)."""
    import hashlib
    import importlib.metadata

    pins = sorted(f"{d.metadata['Name']}=={d.version}" for d in importlib.metadata.distributions()
                  if d.metadata["Name"] and d.metadata["Name"].lower() not in ("tpx", "pip", "setuptools", "wheel"))
    stamp = hashlib.sha256(((ROOT / "pyproject.toml").read_bytes() + "\n".join(pins).encode())).hexdigest()
    python, marker = RUNTIME_VENV / "bin" / "python", RUNTIME_VENV / "bench-stamp"
    if not (python.exists() and marker.exists() and marker.read_text() == stamp):
        progress(f"installing tpx without test extras into {RUNTIME_VENV.relative_to(ROOT)}/ (versions as in .venv)")
        constraints = RUNTIME_VENV.parent / "tpx-runtime-constraints.txt"
        RUNTIME_VENV.parent.mkdir(exist_ok=True)
        constraints.write_text("\n".join(pins) + "\n")
        for command in ([sys.executable, "-m", "venv", "--clear", str(RUNTIME_VENV)],
                        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                         "-c", str(constraints), "-e", str(ROOT)]):
            process = await asyncio.create_subprocess_exec(*command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            output, _ = await process.communicate()
            if process.returncode:
                raise SystemExit(f"bench: {' '.join(command[:5])} ... failed:\n{output.decode(errors='replace')[-3000:]}")
        marker.write_text(stamp)
    return str(RUNTIME_VENV / "bin" / "tpx")


async def register_publisher(base: str, admin_token: str, issuer_url: str, *, package: str = "bench-pkg") -> None:
    """Register the loopback issuer, wait until its keys are in (readiness), and add the one publisher
    of bench-org/bench-repo's release.yml (environment release) that every benchmark token matches."""
    admin = {"Authorization": f"Bearer {admin_token}"}
    async with httpx.AsyncClient(base_url=base, trust_env=False, timeout=30) as http:
        (await http.post("/v1/admin/issuers", json={"url": issuer_url, "kind": "github"}, headers=admin)).raise_for_status()
        await wait_http(f"{base}/readyz")
        (await http.post("/v1/admin/publishers", headers=admin, json={
            "package": package, "provider": "github", "issuer": issuer_url, "repository_owner": "bench-org",
            "repository_owner_id": "1001", "repository_name": "bench-repo", "repository_id": "2002",
            "workflow_filename": "release.yml", "environments": ["release"]})).raise_for_status()


@asynccontextmanager
async def serve_app(app, port: int, **overrides) -> AsyncIterator[None]:
    """Serve an ASGI app (a loopback issuer) in this process until the block ends; `overrides` go to
    uvicorn (ssl_certfile/ssl_keyfile for HTTPS)."""
    from tpx.core.config import Settings
    from tpx.core.serving.server import Server, uvicorn_config

    stop_event = asyncio.Event()
    server = Server(uvicorn_config(app, Settings(), port=port, lifespan="off", **overrides))
    task = asyncio.create_task(server.serve_until(stop_event))
    try:
        await asyncio.wait_for(server.listening.wait(), 30)
        yield
    finally:
        stop_event.set()
        await task


# --- CPU time of a target's processes ------------------------------------------------------------

CLOCK_TICK_MS = 1000 / os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants (uvicorn's worker processes, multiprocessing helpers), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def cpu_ms(pids: list[int]) -> dict[int, float]:
    """User + system CPU time so far of each process still alive, in ms (/proc/<pid>/stat utime + stime,
    all threads of the process)."""
    times = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        times[pid] = (int(fields[11]) + int(fields[12])) * CLOCK_TICK_MS
    return times


def run_queue_ms(pids: list[int]) -> dict[int, float]:
    """Time each live process has spent runnable but waiting for a CPU so far, in ms (`schedstat_ms`).
    Beside CPU time it tells a run bound by the cores from one bound by waits: a process that is busy 75%
    of the time and waits 10% is not saturated, and backends that wait about as long as they run sit
    behind other processes."""
    waits = {}
    for pid in pids:
        try:
            waits[pid] = schedstat_ms(pid)[1]
        except OSError:
            continue
    return waits


def schedstat_ms(pid: int) -> tuple[float, float]:
    """A process's time on a CPU and time runnable but waiting for one, in ms, its live threads summed
    (/proc/<pid>/task/<tid>/schedstat; /proc/<pid>/schedstat is the main thread's alone, and the peer
    runs on threads)."""
    on_cpu = waiting = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        thread_on_cpu, thread_waiting, _slices = Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()
        on_cpu, waiting = on_cpu + int(thread_on_cpu), waiting + int(thread_waiting)
    return on_cpu / 1e6, waiting / 1e6


def rss_mb(pid: int) -> float | None:
    """Resident set size of a live process, in MB (/proc/<pid>/status VmRSS)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def machine_busy_ms() -> float:
    """CPU time all cores spent busy since boot (/proc/stat: user, nice, system, irq, softirq, steal), in ms."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) * CLOCK_TICK_MS


async def backend_pids(conn: asyncpg.Connection, database: str, *, exclude: tuple[int, ...] = ()) -> list[int]:
    """PostgreSQL backends connected to `database`, except the asking connection's own and `exclude`."""
    rows = await conn.fetch("SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                            database)
    return [row["pid"] for row in rows if row["pid"] not in exclude]


async def shared_server_pids(conn: asyncpg.Connection) -> list[int]:
    """The servers every target shares and nobody here started: PostgreSQL's own background processes
    (WAL writer, checkpointer, autovacuum, ...) and RabbitMQ's Erlang VM. Only read, never signalled."""
    rows = await conn.fetch("SELECT pid FROM pg_stat_activity WHERE backend_type <> 'client backend'")
    pids = [row["pid"] for row in rows]
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "comm").read_text().strip() == "beam.smp":
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


async def prefill(service, count: int, chunk: int = 500_000) -> None:
    """`count` live token rows of other repositories, minted over the last 30 days, as a long-running
    registry has (the revoker's retention keeps about a retention period's worth), written by SQL in
    chunks; each stored under a time-stamped lookup key (tpx.core.tokens) of its mint second."""
    conn = await asyncpg.connect(f"{PG}/{service.database}")
    try:
        done = 0
        while done < count:
            size = min(chunk, count - done)
            await conn.execute(
                """INSERT INTO tokens (id, token_hash, issuer_id, packages, permissions, publisher_ids, ci,
                                       repository_key, workflow, issued_at, expires_at)
                   SELECT gen_random_uuid(),
                          substring(int8send(extract(epoch FROM issued)::bigint) FROM 4 FOR 5)
                              || sha256(gen_random_uuid()::text::bytea),
                          gen_random_uuid(), ARRAY['pkg-' || (n % 50000)], '{}'::jsonb, ARRAY[gen_random_uuid()],
                          '{}'::jsonb, 'prefill/repo-' || (n % 50000), 'release.yml', issued, now() + interval '1 day'
                   FROM generate_series($1::bigint, $2::bigint) AS n,
                        LATERAL (SELECT now() - interval '1 hour' - (n % 2592000) * interval '1 second') AS t(issued)
                   """, done, done + size - 1)
            done += size
            progress(f"prefill: {done:,} of {count:,} token rows")
        await conn.execute("VACUUM ANALYZE tokens")
        await conn.execute("CHECKPOINT")   # the bulk load's dirty pages written now, not during the runs
    finally:
        await conn.close()
