"""The write side of the transactional outbox.

An event is inserted with the same connection, inside the same transaction, as
the change it describes: it commits with that change or not at all. The relay
(`tpx.core.events.relay`) publishes committed events; `OutboxSignal` lets a writer
wake the relay of its own process at once instead of waiting for its poll.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import asyncpg


@dataclass(frozen=True)
class Event:
    type: str
    data: dict[str, Any]
    subject: str | None = None
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    time: datetime = field(default_factory=lambda: datetime.now(timezone.utc))


async def add_events(conn: asyncpg.Connection, events: list[Event], *, source: str) -> None:
    if not events:
        return
    await conn.execute(f"INSERT INTO outbox (event_id, type, source, subject, time, data) {OUTBOX_UNNEST}",
                       *event_columns(events, source))


def event_columns(events: list[Event], source: str) -> tuple[list, list, list, list, list, list]:
    """The events as parallel arrays, for an INSERT ... SELECT FROM unnest(...) inside a larger statement."""
    return ([uuid.UUID(e.id) for e in events], [e.type for e in events], [source] * len(events),
            [e.subject for e in events], [e.time for e in events], [e.data for e in events])


OUTBOX_UNNEST = ("SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], "
                 "$6::jsonb[])")


class OutboxSignal:
    """Wakes a waiting relay; cheap to call on every write."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()

    async def wait(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self._event.wait(), timeout)
        except asyncio.TimeoutError:
            pass
        self._event.clear()
