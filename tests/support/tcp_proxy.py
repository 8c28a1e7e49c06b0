"""A loopback TCP proxy that can fail on demand.

Tests put it between a client and a real server (RabbitMQ, PostgreSQL) to
simulate an outage without stopping or reconfiguring the shared server: `cut()`
behaves like the server vanishing (connections reset, new ones refused) and
`restore()` like it coming back on the same address; `partition()` like a
network that drops everything while both ends still think the connection lives;
`retarget()` like a failover that moves the address to another server.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Callable
from urllib.parse import urlsplit, urlunsplit


class _Link:
    """One client connection and its upstream twin; aborting either kills both."""

    def __init__(self, client: asyncio.StreamWriter, upstream: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream = upstream

    def abort(self) -> None:
        for writer in (self.client, self.upstream):
            writer.transport.abort()

    def close(self) -> None:
        for writer in (self.client, self.upstream):
            writer.close()


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._budget: int | None = None
        self._partitioned = False
        self._lose_reply = False
        self._swallow_reply = False
        self._healed = asyncio.Event()
        self._healed.set()

    async def start(self, port: int = 0) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        self.port = sock.getsockname()[1]
        self._server = await asyncio.start_server(self._handle, sock=sock)

    @property
    def listening(self) -> bool:
        return self._server is not None

    async def cut(self) -> None:
        """Refuse new connections and reset every open one."""
        self._sever()
        await self._drain_tasks()

    def cut_after(self, client_bytes: int) -> None:
        """Cut once clients have sent `client_bytes` more bytes: an outage in the middle of a write."""
        self._budget = client_bytes

    def lose_next_reply(self) -> None:
        """The server's next answer is dropped and that connection reset: the server did the work (a
        COMMIT, say) but the client never hears of it, the ambiguous end of a request."""
        self._lose_reply = True

    def swallow_next_reply(self) -> None:
        """The server's next answer is dropped, and from then on everything (partition()): the server did the
        work and its session lives on, waiting on a connection that will never say another word."""
        self._swallow_reply = True

    def partition(self) -> None:
        """Drop every byte both ways but keep the connections open: a peer that vanished without a word."""
        self._partitioned = True
        self._healed.clear()

    async def restore(self) -> None:
        """Listen again on the same port, and forward again."""
        self._partitioned = False
        self._healed.set()
        if self._server is None:
            await self.start(self.port)

    def retarget(self, host: str, port: int) -> None:
        """Forward new connections to another server and reset the open ones: a failover behind one address."""
        self.target_host, self.target_port = host, port
        for link in list(self._links):
            link.abort()

    async def close(self) -> None:
        await self.cut()

    async def __aenter__(self) -> "TcpProxy":
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _sever(self) -> None:
        self._budget = None
        self._healed.set()  # held connections go too
        if self._server is not None:
            self._server.close()
            self._server = None
        for link in list(self._links):
            link.abort()

    def _spend(self, size: int) -> bool:
        """Account for client bytes; False (and everything severed) once the budget is exhausted."""
        if self._budget is None:
            return True
        self._budget -= size
        if self._budget >= 0:
            return True
        self._sever()
        return False

    def _reply(self, link: _Link) -> bool:
        """Let a server answer through, unless one is to be lost: then reset this connection instead."""
        if self._swallow_reply:
            self._swallow_reply = False
            self.partition()  # this answer, and everything after it, is dropped
            return True
        if not self._lose_reply:
            return True
        self._lose_reply = False
        link.abort()
        return False

    def _dropping(self) -> bool:
        return self._partitioned

    async def _drain_tasks(self) -> None:
        tasks = set(self._tasks)
        if tasks:
            await asyncio.wait(tasks, timeout=5)

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            try:
                upstream_reader, upstream_writer = await asyncio.open_connection(self.target_host, self.target_port)
            except OSError:
                client_writer.transport.abort()
                return
            link = _Link(client_writer, upstream_writer)
            self._links.add(link)
            try:
                # When either direction ends, the whole connection ends (AMQP and PG never half-close).
                pipes = {
                    asyncio.create_task(_pipe(client_reader, upstream_writer, self._spend, self._dropping)),
                    asyncio.create_task(_pipe(upstream_reader, client_writer, lambda size: self._reply(link),
                                              self._dropping)),
                }
                _, pending = await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
                for pipe in pending:
                    pipe.cancel()
                await asyncio.wait(pipes)
                if self._partitioned:
                    # A partitioned network carries no FIN or RST either: the far end keeps its half of
                    # the connection until the network heals (or the proxy is cut).
                    await self._healed.wait()
            finally:
                self._links.discard(link)
                link.close()
        finally:
            self._tasks.discard(task)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, allow: Callable[[int], bool],
                dropping: Callable[[], bool]) -> None:
    try:
        while data := await reader.read(65536):
            if not allow(len(data)):
                return
            if dropping():
                continue
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass


def through(url: str, proxy: TcpProxy) -> str:
    """`url` (postgresql:// or amqp://) with its host and port replaced by the proxy's."""
    parts = urlsplit(url)
    credentials = parts.netloc.rpartition("@")[0]
    netloc = f"{credentials}@127.0.0.1:{proxy.port}" if credentials else f"127.0.0.1:{proxy.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def target_of(url: str, default_port: int) -> tuple[str, int]:
    """The host and port a URL points at: what a proxy in front of it forwards to."""
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or default_port
