"""The AMQP frames of one `basic.publish`, marshalled directly: part of the relay's cost per event.

pamqp marshals a publish (the method frame, the content header with its
properties, the body frames) generically, in about 12 us on this machine; the
relay sends every event with the same few properties, and building those
frames with `struct` takes about 4 us. The bytes are pamqp's, byte for byte
(tests/unit/core/test_publish_frames.py); a message with any other property,
or a value these few lines do not handle, is marshalled by pamqp.
"""

from __future__ import annotations

import datetime
import functools
import operator
import struct

from pamqp import commands, constants, frame, header
from pamqp.body import ContentBody

_FRAME = struct.Struct(">BHI")                  # frame type, channel, payload size
_FRAME_END = b"\xce"
_METHOD, _HEADER, _BODY = 1, 2, 3
_PUBLISH = struct.pack(">HHH", 60, 40, 0)       # basic.publish, the reserved ticket
_NOT_MANDATORY_NOR_IMMEDIATE = b"\x00"
_CONTENT_HEADER = struct.Struct(">HHQH")        # class basic, weight 0, body size, property flags
_TIMESTAMP = struct.Struct(">Q")

# The properties handled here, with their flag bits (AMQP 0-9-1, basic class), in wire order.
_CONTENT_TYPE, _DELIVERY_MODE, _MESSAGE_ID, _TIMESTAMP_FLAG, _TYPE, _APP_ID = 0x8000, 0x1000, 0x80, 0x40, 0x20, 0x08
_OTHERS = operator.attrgetter("content_encoding", "headers", "priority", "correlation_id", "reply_to",
                              "expiration", "user_id", "cluster_id")
_OTHERS_UNSET = (None,) * 7 + ("",)   # pamqp's defaults


class _Unhandled(Exception):
    """A value these frames leave to pamqp."""


@functools.lru_cache(maxsize=64)
def _exchange_ok(exchange: str) -> bool:
    """The names pamqp's basic.publish accepts; it refuses the others, so they are left to it."""
    return len(exchange) <= 127 and constants.DOMAIN_REGEX["exchange-name"].fullmatch(exchange) is not None


def _short_string(value: str) -> bytes:
    data = value.encode("utf-8")
    if len(data) > 255:
        raise _Unhandled
    return bytes((len(data),)) + data


def _frame(kind: int, channel: int, payload: bytes) -> bytes:
    return _FRAME.pack(kind, channel, len(payload)) + payload + _FRAME_END


def _present(value: object) -> bool:
    return value is not None and value != ""   # pamqp leaves out both (cluster_id defaults to "")


def _properties(properties: commands.Basic.Properties) -> tuple[int, bytes]:
    others = _OTHERS(properties)
    if others != _OTHERS_UNSET and any(_present(value) for value in others):
        raise _Unhandled
    flags, parts = 0, []
    if _present(properties.content_type):
        flags |= _CONTENT_TYPE
        parts.append(_short_string(properties.content_type))
    if _present(properties.delivery_mode):
        flags |= _DELIVERY_MODE
        parts.append(bytes((properties.delivery_mode,)))
    if _present(properties.message_id):
        flags |= _MESSAGE_ID
        parts.append(_short_string(properties.message_id))
    if _present(properties.timestamp):
        moment = properties.timestamp
        if not isinstance(moment, datetime.datetime):
            raise _Unhandled
        if moment.tzinfo is None or moment.tzinfo.utcoffset(moment) is None:
            moment = moment.replace(tzinfo=datetime.timezone.utc)   # pamqp takes a naive time as UTC
        flags |= _TIMESTAMP_FLAG
        parts.append(_TIMESTAMP.pack(int(moment.timestamp())))
    if _present(properties.message_type):
        flags |= _TYPE
        parts.append(_short_string(properties.message_type))
    if _present(properties.app_id):
        flags |= _APP_ID
        parts.append(_short_string(properties.app_id))
    return flags, b"".join(parts)


def publish_frames(channel: int, exchange: str, routing_key: str, body: bytes,
                   properties: commands.Basic.Properties, body_max: int) -> bytes:
    """The method, content header and body frames (bodies cut at `body_max` bytes) of one publish."""
    try:
        if not _exchange_ok(exchange):
            raise _Unhandled
        flags, encoded = _properties(properties)
        method = _PUBLISH + _short_string(exchange) + _short_string(routing_key) + _NOT_MANDATORY_NOR_IMMEDIATE
    except _Unhandled:
        return pamqp_frames(channel, exchange, routing_key, body, properties, body_max)
    parts = [_frame(_METHOD, channel, method),
             _frame(_HEADER, channel, _CONTENT_HEADER.pack(60, 0, len(body), flags) + encoded)]
    for offset in range(0, len(body), body_max):
        parts.append(_frame(_BODY, channel, body[offset:offset + body_max]))
    return b"".join(parts)


def pamqp_frames(channel: int, exchange: str, routing_key: str, body: bytes,
                 properties: commands.Basic.Properties, body_max: int) -> bytes:
    """The same frames from pamqp's generic marshalling."""
    parts = [frame.marshal(commands.Basic.Publish(exchange=exchange, routing_key=routing_key), channel),
             frame.marshal(header.ContentHeader(0, len(body), properties), channel)]
    for offset in range(0, len(body), body_max):
        parts.append(frame.marshal(ContentBody(body[offset:offset + body_max]), channel))
    return b"".join(parts)
