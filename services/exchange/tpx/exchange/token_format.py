"""Which token format this replica mints: time-stamped once no replica that reads only the first is left.

Releases before the time-stamped format (tpx.core.tokens) look a token up by its
SHA-256 alone: a time-stamped token would read as unknown there, and a holder's
revocation sent to such a replica would find nothing to revoke. So during a
rolling update a replica mints first-format tokens, which every release reads,
while an older replica's listener is connected to the database (its
application_name says which release it is), and time-stamped ones once two
checks in a row, `CHECK_SECONDS` apart, found none (one check could fall while an
older replica's listener is reconnecting). Migration 0009 keeps an older replica
that restarts from coming back. Both formats stay readable by this release.
"""

from __future__ import annotations

import asyncio

import asyncpg

from tpx.core import tokens
from tpx.core.db import tokens as token_store
from tpx.core.db.pool import UNAVAILABLE_ERRORS
from tpx.core.logging import get_logger
from tpx.core.metrics import TOKENS_TIME_STAMPED

log = get_logger(__name__)

# The exchange listener's application_name from this release on (token_store.FIRST_FORMAT_READER before).
APPLICATION_NAME = "tpx-exchange-listener+time-stamped-tokens"
CHECK_SECONDS = 10.0
CLEAR_CHECKS = 2


class TokenFormat:
    """`generate()` makes a token of the format every connected replica reads."""

    def __init__(self) -> None:
        self._clear_checks = 0

    @property
    def time_stamped(self) -> bool:
        return self._clear_checks >= CLEAR_CHECKS

    def generate(self) -> str:
        return tokens.generate() if self.time_stamped else tokens.generate_first_format()

    async def check(self, pool: asyncpg.Pool) -> None:
        """While the database is away the last answer stands (nothing mints then); a check that fails
        otherwise is said, and counts as one that saw an older replica."""
        try:
            older = await token_store.first_format_readers(pool)
        except UNAVAILABLE_ERRORS:
            return
        except Exception as exc:  # noqa: BLE001 - e.g. pg_stat_activity not readable: mint what every release reads
            log.warning("token_format.check_failed", error=f"{type(exc).__name__}: {exc}"[:300])
            older = None
        was = self.time_stamped
        self._clear_checks = self._clear_checks + 1 if older == 0 else 0
        if self.time_stamped != was:
            log.info("token_format.changed", minting="time-stamped" if self.time_stamped else "first format",
                     older_replicas=older)
        TOKENS_TIME_STAMPED.set(int(self.time_stamped))

    async def run(self, pool: asyncpg.Pool) -> None:
        while True:
            await self.check(pool)
            await asyncio.sleep(CHECK_SECONDS)
