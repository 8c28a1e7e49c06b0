"""A short-lived, cluster-invalidated cache of the publishers of a repository.

Reading and decoding the candidate publishers was a sixth of an exchange's CPU,
for rows that almost never change. It is safe to reuse them briefly because:
- a publisher's configuration is immutable; its ids only go from unset to set;
- the mint statement checks, after the mint gate, that the matched publishers
  still exist and pin nothing but the token's ids, and writes nothing if not
  (the exchange then decides again on fresh rows);
- any change to `publishers` NOTIFYs `tpx_publishers`, and every replica drops
  its cache; an entry read before such a change is never stored after it
  (generation check), and entries expire after a few seconds even if a
  notification was missed;
- a denial is never decided on cached rows: they are re-read first.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any

import asyncpg

from tpx.core.db import publishers as publisher_store
from tpx.core.providers.base import Publisher

TTL_SECONDS = 5.0
MAX_ENTRIES = 10_000


class CandidateCache:
    def __init__(self, ttl: float = TTL_SECONDS, max_entries: int = MAX_ENTRIES) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self.generation = 0
        self._entries: OrderedDict[tuple[Any, str], tuple[float, list[Publisher]]] = OrderedDict()

    def invalidate(self, *_args: Any) -> None:
        self.generation += 1
        self._entries.clear()

    async def get(self, conn: asyncpg.Connection, issuer_id: Any, repository_key: str) -> tuple[list[Publisher], bool]:
        """The candidates, and whether they were read just now (False: from the cache)."""
        hit = self._entries.get((issuer_id, repository_key))
        if hit is not None and time.monotonic() - hit[0] < self.ttl:
            return hit[1], False
        return await self.read(conn, issuer_id, repository_key), True

    async def read(self, conn: asyncpg.Connection, issuer_id: Any, repository_key: str) -> list[Publisher]:
        generation = self.generation
        found = await publisher_store.candidates(conn, issuer_id, repository_key)
        if generation == self.generation:  # nothing changed while we read: safe to keep
            self._entries[(issuer_id, repository_key)] = (time.monotonic(), found)
            self._entries.move_to_end((issuer_id, repository_key))
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return found
