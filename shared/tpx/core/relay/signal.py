"""Waking the outbox relay of this process the moment a writer commits events.

Writers put events in the outbox inside their own transaction
(`tpx.core.db.outbox.add_events`) and, once committed, call `notify()`; the
relay of the same process publishes at once instead of waiting for its poll.
Relays of other processes poll (`TPX_RELAY_POLL_SECONDS` when idle, 0.05 s while events flow): NOTIFY would
serialise every committing exchange (docs/decisions.md).
"""

from __future__ import annotations

import asyncio


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
