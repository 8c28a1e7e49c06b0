"""`make test` step: check that PostgreSQL and RabbitMQ answer, then create the run's own database.

Runs before pytest so a missing dependency gives one clear sentence on how to
start it, instead of a wall of connection errors.
"""

from __future__ import annotations

import asyncio
import os
import sys

import aio_pika
import asyncpg

ADMIN_DSN = os.environ.get("TPX_TEST_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
AMQP_URL = os.environ.get("TPX_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


def fail(message: str) -> None:
    print(f"\n  make test: {message}\n", file=sys.stderr)
    sys.exit(2)


async def drop() -> None:
    """After pytest, whatever happened (even a collection error, when no fixture ran): drop the run's database."""
    database = os.environ.get("TPX_TEST_DATABASE", "")
    if database:
        conn = await asyncpg.connect(ADMIN_DSN, timeout=5)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        finally:
            await conn.close()


async def main() -> None:
    database = os.environ.get("TPX_TEST_DATABASE", "")
    try:
        conn = await asyncpg.connect(ADMIN_DSN, timeout=5)
    except Exception as exc:  # noqa: BLE001 - any failure means "not reachable"
        fail(
            f"PostgreSQL does not answer at {ADMIN_DSN} ({type(exc).__name__}: {exc}).\n"
            "  Start it with: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
        )
    try:
        if database:
            await conn.execute(f'CREATE DATABASE "{database}"')
    finally:
        await conn.close()
    try:
        amqp = await aio_pika.connect(AMQP_URL, timeout=5)
        await amqp.close()
    except Exception as exc:  # noqa: BLE001
        fail(
            f"RabbitMQ does not answer at {AMQP_URL.replace('guest:guest@', '')} ({type(exc).__name__}: {exc}).\n"
            "  Start it with: rabbitmq-server -detached"
        )
    print(f"preflight: PostgreSQL and RabbitMQ answer; test database {database or '(created by pytest)'}, "
          f"AMQP prefix {os.environ.get('TPX_TEST_AMQP_PREFIX', '(chosen by pytest)')}")


if __name__ == "__main__":
    asyncio.run(drop() if sys.argv[1:] == ["--drop"] else main())
