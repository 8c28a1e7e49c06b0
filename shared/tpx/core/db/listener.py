"""Long-lived database sessions outside the pool: LISTEN for NOTIFYs, or hold a session lock.

One piece for every loop that follows the database: the exchange's key and
candidate caches, the jwks-refresher's requests, the outbox relay's
leadership. It connects with jittered back-off, notices a dead connection at
once (asyncpg's termination callback, plus a keepalive query for a half-open
TCP connection that never says goodbye), and on every (re)connect runs the
caller's catch-up before it reports itself healthy, because NOTIFYs sent
while it was away are lost.

Its outages are reported to `tpx.core.outages` (one warning when the database
goes away, one info line when it is back), never a line per retry. It retries
every half second or so, so once the database answers again every session is
back, and has caught up, within about a second.
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable, Mapping

import asyncpg

from tpx.core.backoff import Backoff
from tpx.core.db.pool import UNAVAILABLE_ERRORS
from tpx.core.logging import get_logger
from tpx.core.outages import DATABASE, Outage

log = get_logger("tpx.core.db.listener")


class Session:
    """One connection of a `KeptConnection`, as its body sees it."""

    def __init__(self, conn: asyncpg.Connection, owner: "KeptConnection") -> None:
        self.conn = conn
        self.lost = asyncio.Event()
        self._owner = owner
        self._busy = asyncio.Lock()  # one query at a time: the keepalive shares the connection

    async def fetchval(self, sql: str, *args: Any, timeout: float | None = None) -> Any:
        async with self._busy:
            return await self.conn.fetchval(sql, *args, timeout=timeout)

    def ready(self) -> None:
        """The body has caught up and is serving: report healthy until this session is lost."""
        self._owner.healthy.set()


Body = Callable[[Session], Awaitable[None]]


class KeptConnection:
    """A connection kept up for as long as `run(body)` runs; `body(session)` runs on each new connection.

    `body` returns when its work on this connection is over (the session is
    then closed and a new one made) or raises; a lost connection cancels it.
    `healthy` is set while a body has called `session.ready()` and its
    connection lives; `down_since` is the loop time the current outage began.
    """

    def __init__(self, database_url: str, *, name: str, keepalive_seconds: float = 5.0,
                 connect_timeout: float = 5.0, backoff: Backoff | None = None,
                 server_settings: Mapping[str, str] | None = None, outage: Outage = DATABASE) -> None:
        self.database_url = database_url
        self.name = name
        self.keepalive_seconds = keepalive_seconds
        self.connect_timeout = connect_timeout
        self.backoff = backoff or Backoff(first=0.1, maximum=0.5, spread=0.5)
        self.server_settings = {"application_name": f"tpx-{name}", **(server_settings or {})}
        self.outage = outage
        self.healthy = asyncio.Event()
        self.sessions = 0
        self.down_since: float | None = None

    async def run(self, body: Body, stop: asyncio.Event | None = None, *, finish_on_stop: bool = False) -> None:
        """Keep a session up and run `body` on it, until `stop` is set (or the task is cancelled).

        On `stop` the body is cancelled, or, with `finish_on_stop`, awaited: such a
        body watches `stop` itself and returns once its work in flight is done.
        """
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            try:
                conn = await asyncpg.connect(self.database_url, timeout=self.connect_timeout,
                                             server_settings=self.server_settings)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - unreachable, refused, wrong password: retry and say so once
                self._went_down(loop, exc)
                await _sleep_unless(stop, self.backoff.next())
                continue
            session = Session(conn, self)
            conn.add_termination_listener(lambda _conn: session.lost.set())
            self.sessions += 1
            self.backoff.reset()
            self._came_back(loop)
            try:
                await self._serve(session, body, stop, finish_on_stop)
            except asyncio.CancelledError:
                raise
            except UNAVAILABLE_ERRORS as exc:
                self._went_down(loop, exc)
            except Exception as exc:  # noqa: BLE001 - the session is replaced whatever went wrong
                # Not the database going away but a fault in the work done on it: said as such, at error
                # level with its traceback, and retried like an outage (the backoff keeps it from spinning).
                log.error("session.failed", session=self.name, error=f"{type(exc).__name__}: {exc}"[:300],
                          exc_info=exc)
                if self.down_since is None:
                    self.down_since = loop.time()
            finally:
                self.healthy.clear()
                await _close(conn)
            if not stop.is_set():
                if self.down_since is None:  # the body ended the session on purpose (e.g. lost a lock)
                    self.down_since = loop.time()
                await _sleep_unless(stop, self.backoff.next())

    async def _serve(self, session: Session, body: Body, stop: asyncio.Event, finish_on_stop: bool) -> None:
        work = asyncio.create_task(body(session), name=f"{self.name}-body")
        watch = asyncio.create_task(self._keepalive(session), name=f"{self.name}-keepalive")
        stopping = asyncio.create_task(stop.wait())
        lost = asyncio.create_task(session.lost.wait())
        try:
            await asyncio.wait({work, lost, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (watch, lost, stopping):
                task.cancel()
            if not work.done() and (session.lost.is_set() or not (stop.is_set() and finish_on_stop)):
                work.cancel()
            await asyncio.wait({work})
            await asyncio.gather(watch, lost, stopping, return_exceptions=True)
        if session.lost.is_set() and not stop.is_set():
            raise ConnectionError("the database connection was lost")
        if not work.cancelled() and work.exception() is not None:
            raise work.exception()  # type: ignore[misc]

    async def _keepalive(self, session: Session) -> None:
        """A half-open connection answers nothing: a query with a deadline finds out."""
        while not session.lost.is_set():
            await asyncio.sleep(self.keepalive_seconds)
            try:
                await session.fetchval("SELECT 1", timeout=self.keepalive_seconds)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - any failure means the session is gone
                session.lost.set()

    def _went_down(self, loop: asyncio.AbstractEventLoop, exc: BaseException) -> None:
        self.healthy.clear()
        if self.down_since is None:
            self.down_since = loop.time()
        self.outage.failed(exc, session=self.name)

    def _came_back(self, loop: asyncio.AbstractEventLoop) -> None:
        self.down_since = None
        self.outage.recovered(session=self.name)


class Listener:
    """Follows NOTIFY channels: `channels` maps a channel to a callback taking the payload.

    `on_connect` runs after LISTEN is in place on every new connection and before
    the listener reports healthy: it is the catch-up (reload what may have changed).
    """

    def __init__(self, database_url: str, channels: Mapping[str, Callable[[str], None]], *, name: str,
                 on_connect: Callable[[], Awaitable[None]] | None = None, keepalive_seconds: float = 5.0,
                 backoff: Backoff | None = None, outage: Outage = DATABASE,
                 server_settings: Mapping[str, str] | None = None) -> None:
        self.channels = dict(channels)
        self.on_connect = on_connect
        self.connection = KeptConnection(database_url, name=name, keepalive_seconds=keepalive_seconds,
                                         backoff=backoff, outage=outage, server_settings=server_settings)

    @property
    def healthy(self) -> asyncio.Event:
        return self.connection.healthy

    @property
    def sessions(self) -> int:
        return self.connection.sessions

    async def run(self, stop: asyncio.Event | None = None) -> None:
        await self.connection.run(self._listen, stop)

    async def _listen(self, session: Session) -> None:
        for channel, callback in self.channels.items():
            await session.conn.add_listener(channel, _payload_only(callback))
        if self.on_connect is not None:
            await self.on_connect()
        session.ready()
        await session.lost.wait()


def _payload_only(callback: Callable[[str], None]) -> Callable[..., None]:
    def on_notify(_conn: Any, _pid: int, _channel: str, payload: str) -> None:
        callback(payload)

    return on_notify


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except asyncio.TimeoutError:
        pass


async def _close(conn: asyncpg.Connection) -> None:
    if conn.is_closed():
        return
    try:
        await asyncio.wait_for(conn.close(), 2)
    except Exception:  # noqa: BLE001 - a dead connection cannot be closed politely
        conn.terminate()
