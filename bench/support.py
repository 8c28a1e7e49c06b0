"""What both benchmark scripts need: a fresh database, the services as separate processes, and a
clean broker afterwards. Scripts here measure; this module only sets up and tears down."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

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


async def fresh_database(name: str) -> str:
    """Drop and re-create `name`, migrate it, and return its URL."""
    admin = await asyncpg.connect(f"{PG}/postgres")
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = f"{PG}/{name}"
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


async def wait_http(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(trust_env=False) as http:
        while True:
            try:
                if (await http.get(url)).status_code == 200:
                    return
            except httpx.TransportError:
                pass
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
