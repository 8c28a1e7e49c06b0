"""The asyncpg pool and the mapping of database failures to `503 unavailable`."""

from __future__ import annotations

import asyncio

import asyncpg
import orjson

from tpx.core.config import Settings

# Failures that mean "the database is not reachable right now", never "bad input".
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.InterfaceError,
)


def _jsonb_encode(value: object) -> bytes:
    return b"\x01" + orjson.dumps(value)   # jsonb's binary format: version 1, then the text


def _jsonb_decode(data: bytes) -> object:
    return orjson.loads(data[1:])


async def _init_connection(conn: asyncpg.Connection) -> None:
    """JSON columns as Python values, through orjson and the binary wire format (no str round trip:
    the mint writes three JSON values per exchange)."""
    await conn.set_type_codec("jsonb", encoder=_jsonb_encode, decoder=_jsonb_decode, schema="pg_catalog",
                              format="binary")
    await conn.set_type_codec("json", encoder=orjson.dumps, decoder=orjson.loads, schema="pg_catalog",
                              format="binary")


async def _keep_session(_conn: asyncpg.Connection) -> None:
    """Return connections to the pool as they are.

    asyncpg's default reset costs a round trip on every release (unlock all
    advisory locks, close cursors, UNLISTEN, RESET ALL). tpx never leaves
    session state on a pooled connection: LISTEN runs on dedicated
    connections, session advisory locks are released where they are taken,
    and nothing SETs session parameters.
    """


class DatabaseUnreachable(RuntimeError):
    """The database cannot be reached at start; the message says where and what to check."""


def _where(url: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return f"{parts.hostname or 'localhost'}:{parts.port or 5432}{parts.path}"


async def create_pool(settings: Settings, *, min_size: int | None = None, max_size: int | None = None) -> asyncpg.Pool:
    try:
        return await _create_pool(settings, min_size, max_size)
    except (OSError, asyncio.TimeoutError, asyncpg.exceptions.PostgresError) as exc:
        raise DatabaseUnreachable(
            f"cannot reach the database at {_where(settings.database_url)} ({type(exc).__name__}: {exc}); "
            "check TPX_DATABASE_URL and that PostgreSQL is running") from None


async def _create_pool(settings: Settings, min_size: int | None, max_size: int | None) -> asyncpg.Pool:
    return await asyncpg.create_pool(
        settings.database_url,
        min_size=settings.db_pool_min if min_size is None else min_size,
        max_size=settings.db_pool_max if max_size is None else max_size,
        init=_init_connection,
        reset=_keep_session,
        command_timeout=10,
        timeout=5,
    )


async def connect(settings: Settings, *, command_timeout: float | None = None) -> asyncpg.Connection:
    """One connection outside the pool, with the pool's codecs; statements wait at most `command_timeout`."""
    try:
        conn = await asyncpg.connect(settings.database_url, timeout=5, command_timeout=command_timeout)
    except (OSError, asyncio.TimeoutError, asyncpg.exceptions.PostgresError) as exc:
        raise DatabaseUnreachable(
            f"cannot reach the database at {_where(settings.database_url)} ({type(exc).__name__}: {exc}); "
            "check TPX_DATABASE_URL and that PostgreSQL is running") from None
    await _init_connection(conn)
    return conn


async def ping(pool: asyncpg.Pool, timeout: float = 2.0) -> bool:
    """Whether the database answers within `timeout` (readiness probes)."""
    try:
        await asyncio.wait_for(pool.fetchval("SELECT 1"), timeout)
    except UNAVAILABLE_ERRORS:
        return False
    return True


def affected(status: str) -> int:
    """The row count of a command status such as `DELETE 42`."""
    return int(status.rsplit(" ", 1)[-1])
