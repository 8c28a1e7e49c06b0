"""Group commit: the mints that arrive while others are being written share one round trip and one commit.

Every mint is a synchronous-commit transaction, and under load most of its cost
is per transaction and per round trip, not per row: the client's call, the
server's statement start and commit, the WAL flush the answer waits for. So the
exchange's mints are queued here and written by at most `max_in_flight` writers
at a time, each on a pooled connection it keeps while groups follow each other;
each writer takes everything queued (up to `max_group`) and writes it with
`tpx.core.db.tokens.mint_many`: one statement per mint, each with its own checks
and JTI outcome, in one transaction. There is no timer: an idle service
writes a lone mint at once, and groups only form while writes are in flight, so
batching never adds a wait that load did not already cause.

A mint that pins publisher ids (a publisher's first exchange) locks publisher
rows and is written alone. If a group fails with a database error (not a lost
connection), each of its mints is written again alone, so one bad mint fails
only itself. If the connection is lost with the group in flight, every mint of
it is `MintLost`, with the server session's pid, for the caller to settle
(`tpx.exchange.minting.resolve_ambiguous`).
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

import asyncpg

from tpx.core.db import tokens as token_store
from tpx.core.db.pool import UNAVAILABLE_ERRORS
from tpx.core.db.tokens import MintRequest, MintResult
from tpx.core.logging import get_logger
from tpx.core.metrics import MINT_GROUP_SIZE, MINT_WRITE_LATENCY

from tpx.exchange.grouping import Groups, fail

log = get_logger("tpx.exchange.group_commit")

MAX_GROUP = 64
MAX_IN_FLIGHT = 3


def writers_per_process(workers: int) -> int:
    """Mint writers in flight for each of `workers` exchange processes: three for one process, one each
    for several. PostgreSQL serves every process's writers; with several processes on a host, each has a
    share of the connections and its groups hold one or two mints, so more writers only mean more
    transactions and wake-ups per exchange (docs/decisions.md, "One mint writer per process")."""
    return MAX_IN_FLIGHT if workers == 1 else 1


class MintLost(Exception):
    """The connection died while the mint was in flight: it may have committed on server session `backend_pid`."""

    def __init__(self, backend_pid: int) -> None:
        super().__init__("the database connection was lost while the mint was in flight")
        self.backend_pid = backend_pid


class MintWriter(Protocol):
    async def write(self, request: MintRequest) -> MintResult: ...


class OnConnection:
    """Writes each mint alone on one given connection (tests, tools)."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def write(self, request: MintRequest) -> MintResult:
        backend_pid = self.conn.get_server_pid()  # read now: a dead connection no longer says
        try:
            return await token_store.mint(self.conn, request)
        except UNAVAILABLE_ERRORS as exc:
            raise MintLost(backend_pid) from exc


class GroupCommit:
    """Writes queued mints in groups on connections of `pool` (tpx.exchange.grouping)."""

    def __init__(self, pool: asyncpg.Pool, *, max_group: int = MAX_GROUP, max_in_flight: int = MAX_IN_FLIGHT) -> None:
        self._pool = pool
        self._groups: Groups[MintRequest, MintResult, asyncpg.Connection] = Groups(
            self._write_group, session=pool.acquire, max_group=max_group, max_in_flight=max_in_flight,
            name="mint-group")

    async def write(self, request: MintRequest) -> MintResult:
        if request.binding is not None:
            async with self._pool.acquire() as conn:
                return await OnConnection(conn).write(request)
        # A cancelled exchange (its client went away) cancels only its own future, not the group's write:
        # its mint commits or not with the others, like a mint whose answer was lost on the network. (No
        # asyncio.shield: it would cost one more turn of the event loop per exchange.)
        return await self._groups.enqueue(request)

    async def _write_group(self, group: list[tuple[MintRequest, asyncio.Future[MintResult]]],
                           conn: asyncpg.Connection) -> None:
        started = time.perf_counter()
        MINT_GROUP_SIZE.observe(len(group))
        backend_pid = conn.get_server_pid()
        try:
            results = (await token_store.mint_many(conn, [request for request, _ in group]) if len(group) > 1
                       else [await token_store.mint(conn, group[0][0])])
        except UNAVAILABLE_ERRORS as exc:
            raise MintLost(backend_pid) from exc
        except asyncpg.PostgresError as exc:
            if len(group) == 1:
                raise
            log.warning("group_commit.group_failed", mints=len(group), error=f"{type(exc).__name__}: {exc}")
            for request, future in group:  # one at a time, so only the mint at fault fails
                try:
                    result = await OnConnection(conn).write(request)
                except Exception as single:  # noqa: BLE001 - handed to its own waiter
                    if not future.done():
                        fail(future, single)
                else:
                    if not future.done():
                        future.set_result(result)
            return
        finally:   # before the waiters are settled below, so their answer follows the measurement
            MINT_WRITE_LATENCY.observe(time.perf_counter() - started)
        for (_request, future), result in zip(group, results):
            if not future.done():
                future.set_result(result)
