"""A short-lived, cluster-invalidated cache of the publishers of a repository.

Reading and decoding the candidate publishers was a sixth of an exchange's CPU,
for rows that almost never change. It is safe to reuse them briefly because:
- a publisher's configuration is immutable; its ids only go from unset to set,
  and an unset id sends the exchange down the transactional path, which reads
  afresh;
- a deleted publisher is caught by the mint statement's fresh-snapshot check,
  which also falls back to the transactional path;
- any change to `publishers` NOTIFYs `tpx_publishers`, and every replica drops
  its cache (see KeyCache.run); an entry read before such a change is never
  stored after it (generation check), and entries expire after a few seconds
  even if a notification was missed;
- a denial is never decided on cached rows: it is re-read first.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any

import asyncpg

from tpx.core.publishers import Publisher
from tpx.core.db import publishers as publisher_store

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

    async def get(self, conn: asyncpg.Connection, issuer_id: Any, repository_key: str) -> list[Publisher]:
        key = (issuer_id, repository_key)
        now = time.monotonic()
        hit = self._entries.get(key)
        if hit is not None and now - hit[0] < self.ttl:
            return hit[1]
        return await self.read(conn, issuer_id, repository_key)

    async def read(self, conn: asyncpg.Connection, issuer_id: Any, repository_key: str) -> list[Publisher]:
        generation = self.generation
        found = await publisher_store.candidates(conn, issuer_id, repository_key)
        if generation == self.generation:  # nothing changed while we read: safe to keep
            self._entries[(issuer_id, repository_key)] = (time.monotonic(), found)
            self._entries.move_to_end((issuer_id, repository_key))
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return found
