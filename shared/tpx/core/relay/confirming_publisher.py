"""A publish-only AMQP 0-9-1 connection with publisher confirms, for the outbox relay's hot path.

Why not aio-pika or aiormq for this: they publish one message per call, each with
its own lock, timeout scope, write-queue item, drain future and confirmation
future, and aiormq walks every pending confirmation on each multiple-ack. That
was 100-180 us of CPU per event on this machine, more than an exchange costs, so
the relay fell behind the exchanges it serves. Here a batch is marshalled into
one buffer (`publish_frames`: pamqp's bytes, built directly), written with one
call, and its confirms are counted in a list.

Scope, deliberately small: at opening, the declarations the relay needs (its
topic exchange and the audit stream bound to it, on a channel of their own, so a
stream an operator configured differently cannot close the publishing channel);
then one channel in confirm mode, `basic.publish` only. The broker's heartbeats
are answered, and a connection that stays silent for two intervals counts as
dead. Any failure closes the whole connection; the relay then opens a new one
(events wait in Postgres meanwhile). The exchange process thus loads no AMQP
client library (aio-pika and aiormq with their dependencies: 4 MB of RSS).
"""

from __future__ import annotations

import asyncio
import ssl
import struct
from dataclasses import dataclass
from typing import Sequence
from urllib.parse import unquote, urlsplit

from pamqp import commands, constants, frame, header, heartbeat

from tpx.core.relay.publish_frames import publish_frames

CHANNEL = 1
DECLARING_CHANNEL = 2
WRITE_CHUNK = 50  # messages marshalled per turn of the event loop (~10 us each)
_FRAME_HEADER = struct.Struct(">BHI")
_HEARTBEAT = frame.marshal(heartbeat.Heartbeat(), 0)


class PublisherClosed(ConnectionError):
    """The connection or channel is gone (the broker closed it, the socket failed, or it went silent)."""


class Nacked(Exception):
    """The broker refused to take responsibility for a message (basic.nack)."""


@dataclass(frozen=True)
class Declarations:
    """What must exist before the first publish: a durable topic exchange, and a stream bound to all of it."""

    exchange: str
    stream: str
    stream_arguments: dict[str, object]


@dataclass(frozen=True)
class Outgoing:
    """One message: where it goes, its body and its AMQP properties."""

    exchange: str
    routing_key: str
    body: bytes
    properties: commands.Basic.Properties


@dataclass
class _Batch:
    first_tag: int
    outcomes: list[bool | None]
    done: asyncio.Future[None]
    resolved: int = 0

    def settle(self, tag: int, acked: bool, multiple: bool) -> None:
        start = 0 if multiple else tag - self.first_tag
        for index in range(max(start, 0), min(tag - self.first_tag + 1, len(self.outcomes))):
            if self.outcomes[index] is None:
                self.outcomes[index] = acked
                self.resolved += 1
        if self.resolved == len(self.outcomes) and not self.done.done():
            self.done.set_result(None)


class ConfirmingPublisher:
    """Open with `connect()`; `publish()` one batch at a time; `close()` when done or broken."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, frame_max: int,
                 heartbeat_seconds: int) -> None:
        self._reader = reader
        self._writer = writer
        self._body_max = frame_max - 8 if frame_max else 131_072
        self._heartbeat = heartbeat_seconds
        self._next_tag = 1
        self._batch: _Batch | None = None
        self._error: BaseException | None = None
        self._lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self.stream_differs: str | None = None

    # -- opening ------------------------------------------------------------------

    @classmethod
    async def connect(cls, url: str, *, timeout: float, name: str, heartbeat_seconds: int = 30,
                      declarations: Declarations | None = None) -> ConfirmingPublisher:
        """Open the connection, declare, and open a confirming channel; heartbeats at most every
        `heartbeat_seconds` (or the broker's interval, if shorter; 0 where both agree to none).
        `stream_differs` then holds the broker's refusal if the stream exists with other arguments."""
        parts = urlsplit(url)
        secure = parts.scheme == "amqps"
        context = ssl.create_default_context() if secure else None
        reader, writer = await asyncio.wait_for(asyncio.open_connection(
            parts.hostname or "localhost", parts.port or (5671 if secure else 5672), ssl=context), timeout)
        try:
            publisher = await asyncio.wait_for(
                cls._handshake(reader, writer, parts, name, heartbeat_seconds, declarations), timeout)
        except BaseException:
            writer.close()
            raise
        publisher._tasks = [asyncio.create_task(publisher._read_forever(), name="amqp-publisher-reader")]
        if publisher._heartbeat:
            publisher._tasks.append(asyncio.create_task(publisher._beat_forever(), name="amqp-publisher-heartbeat"))
        return publisher

    @classmethod
    async def _handshake(cls, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, parts, name: str,
                         wanted_heartbeat: int, declarations: Declarations | None) -> ConfirmingPublisher:
        writer.write(header.ProtocolHeader().marshal())
        await _expect(reader, commands.Connection.Start)
        response = f"\0{unquote(parts.username or 'guest')}\0{unquote(parts.password or 'guest')}"
        writer.write(frame.marshal(commands.Connection.StartOk(
            client_properties={"product": "tpx", "connection_name": name,
                               "capabilities": {"publisher_confirms": True, "basic.nack": True}},
            mechanism="PLAIN", response=response), 0))
        tune = await _expect(reader, commands.Connection.Tune)
        frame_max = min(tune.frame_max or 131_072, 131_072)
        beat = min(b for b in (tune.heartbeat, wanted_heartbeat) if b) if tune.heartbeat or wanted_heartbeat else 0
        writer.write(frame.marshal(commands.Connection.TuneOk(channel_max=DECLARING_CHANNEL, frame_max=frame_max,
                                                              heartbeat=beat), 0))
        vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
        writer.write(frame.marshal(commands.Connection.Open(virtual_host=vhost), 0))
        await _expect(reader, commands.Connection.OpenOk)
        stream_differs = await _declare(reader, writer, declarations) if declarations else None
        writer.write(frame.marshal(commands.Channel.Open(), CHANNEL))
        await _expect(reader, commands.Channel.OpenOk)
        writer.write(frame.marshal(commands.Confirm.Select(), CHANNEL))
        await _expect(reader, commands.Confirm.SelectOk)
        publisher = cls(reader, writer, frame_max, beat)
        publisher.stream_differs = stream_differs
        return publisher

    # -- publishing ---------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._error is not None

    async def publish(self, messages: Sequence[Outgoing], timeout: float) -> tuple[int, BaseException | None]:
        """Send `messages` in order; return how many leading ones the broker confirmed, and the first failure
        (a nack, the connection's end, or the deadline). Only a confirmed prefix is safe to mark published."""
        async with self._lock:
            if self._error is not None:
                return 0, self._error
            batch = _Batch(self._next_tag, [None] * len(messages), asyncio.get_running_loop().create_future())
            self._next_tag += len(messages)
            self._batch = batch
            try:
                for start in range(0, len(messages), WRITE_CHUNK):
                    if start:
                        await asyncio.sleep(0)  # a turn for the requests sharing this event loop
                    self._writer.write(b"".join(self._frames(m) for m in messages[start:start + WRITE_CHUNK]))
                await asyncio.wait_for(self._drained_and_confirmed(batch), timeout)
            except asyncio.TimeoutError:
                self._fail(PublisherClosed(f"no publisher confirm within {timeout} s"))
            except (OSError, PublisherClosed) as exc:
                self._fail(exc)
            except BaseException:  # cancelled mid-batch: later confirms would belong to nobody
                self._fail(PublisherClosed("a batch was abandoned"))
                raise
            finally:
                self._batch = None
            confirmed = 0
            for outcome in batch.outcomes:
                if outcome is not True:
                    break
                confirmed += 1
            if confirmed == len(messages):
                return confirmed, None
            if batch.outcomes[confirmed] is False:
                return confirmed, Nacked(f"the broker refused message {confirmed + 1} of {len(messages)}")
            return confirmed, self._error or PublisherClosed("the batch was not confirmed")

    async def _drained_and_confirmed(self, batch: _Batch) -> None:
        await self._writer.drain()
        await batch.done

    def _frames(self, message: Outgoing) -> bytes:
        return publish_frames(CHANNEL, message.exchange, message.routing_key, message.body, message.properties,
                              self._body_max)

    # -- the broker's side --------------------------------------------------------

    async def _read_forever(self) -> None:
        try:
            while True:
                value = await asyncio.wait_for(_read_frame(self._reader), 2 * self._heartbeat or None)
                if isinstance(value, (commands.Basic.Ack, commands.Basic.Nack)):
                    batch = self._batch
                    if batch is not None:
                        batch.settle(value.delivery_tag, isinstance(value, commands.Basic.Ack), value.multiple)
                elif isinstance(value, commands.Channel.Close):
                    self._writer.write(frame.marshal(commands.Channel.CloseOk(), CHANNEL))
                    raise PublisherClosed(f"the broker closed the channel: {value.reply_code} {value.reply_text}")
                elif isinstance(value, commands.Connection.Close):
                    self._writer.write(frame.marshal(commands.Connection.CloseOk(), 0))
                    raise PublisherClosed(f"the broker closed the connection: {value.reply_code} {value.reply_text}")
        except asyncio.TimeoutError:
            self._fail(PublisherClosed(f"the broker sent nothing for {2 * self._heartbeat} s (two heartbeats)"))
        except (OSError, EOFError, asyncio.IncompleteReadError, PublisherClosed) as exc:
            self._fail(exc if isinstance(exc, PublisherClosed) else PublisherClosed(f"connection lost: {exc!r}"))

    async def _beat_forever(self) -> None:
        while True:
            await asyncio.sleep(self._heartbeat / 2)
            if self._error is not None:
                return
            self._writer.write(_HEARTBEAT)

    def _fail(self, error: BaseException) -> None:
        if self._error is None:
            self._error = error
        batch = self._batch
        if batch is not None and not batch.done.done():
            batch.done.set_exception(self._error)
            batch.done.exception()  # retrieved here; the outcome is read from the batch
        self._writer.close()

    async def close(self) -> None:
        if self._error is None:
            try:
                self._writer.write(frame.marshal(commands.Connection.Close(reply_code=200, reply_text="bye", class_id=0, method_id=0), 0))
            except OSError:
                pass
        self._fail(PublisherClosed("closed by tpx"))
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()
        await asyncio.gather(*(t for t in self._tasks if t is not current), return_exceptions=True)
        try:
            await asyncio.wait_for(self._writer.wait_closed(), 2)
        except (OSError, asyncio.TimeoutError):
            pass


async def _declare(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, declarations: Declarations
                   ) -> str | None:
    """Declare on a channel of its own, closed afterwards; returns the broker's refusal of the stream (an
    operator set other arguments: they stay as set, and the exchange is then not bound to it here)."""
    def send(method) -> None:
        writer.write(frame.marshal(method, DECLARING_CHANNEL))

    send(commands.Channel.Open())
    await _expect(reader, commands.Channel.OpenOk)
    send(commands.Exchange.Declare(exchange=declarations.exchange, exchange_type="topic", durable=True))
    await _expect(reader, commands.Exchange.DeclareOk)
    send(commands.Queue.Declare(queue=declarations.stream, durable=True, arguments=declarations.stream_arguments))
    reply = await _read_frame(reader)
    if isinstance(reply, commands.Channel.Close) and reply.reply_code == 406:   # PRECONDITION_FAILED
        send(commands.Channel.CloseOk())
        return f"{reply.reply_code} {reply.reply_text}"
    if not isinstance(reply, commands.Queue.DeclareOk):
        raise PublisherClosed(f"declaring the audit stream: unexpected {type(reply).__name__} "
                              f"{getattr(reply, 'reply_text', '')}")
    send(commands.Queue.Bind(queue=declarations.stream, exchange=declarations.exchange, routing_key="#"))
    await _expect(reader, commands.Queue.BindOk)
    send(commands.Channel.Close(reply_code=200, reply_text="declared", class_id=0, method_id=0))
    await _expect(reader, commands.Channel.CloseOk)
    return None


async def _read_frame(reader: asyncio.StreamReader):
    head = await reader.readexactly(7)
    _type, _channel, size = _FRAME_HEADER.unpack(head)
    rest = await reader.readexactly(size + 1)
    if rest[-1] != constants.FRAME_END:
        raise PublisherClosed("a malformed frame from the broker")
    return frame.unmarshal(head + rest)[2]


async def _expect(reader: asyncio.StreamReader, kind: type):
    while True:
        value = await _read_frame(reader)
        if isinstance(value, kind):
            return value
        if isinstance(value, (commands.Connection.Close, commands.Channel.Close)):
            raise PublisherClosed(f"the broker refused: {value.reply_code} {value.reply_text}")
        if not isinstance(value, heartbeat.Heartbeat):
            raise PublisherClosed(f"unexpected {type(value).__name__} from the broker while opening")
