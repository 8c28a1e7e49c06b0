"""Identifiers of rows that only grow (tokens, events): time-ordered UUIDs (RFC 9562 version 7).

A random (version 4) primary key sends every insert to a random page of its
index; once the index outgrows memory each insert reads a page and, after every
checkpoint, writes it whole into the WAL. With 10,000,000 token rows that cost
13% of the exchange rate. A version-7 id starts with the millisecond it was
made, so inserts land at the right edge of the index, as with a sequence. Its
remaining 74 bits are random (os.urandom), so ids stay unguessable and unique
across replicas; they reveal the creation time to the millisecond, which the
same rows publish anyway (`issued_at`, the event's `time`).

The random bytes are drawn from the kernel a few hundred ids at a time: an
exchange makes two ids, and a getrandom() call each cost more than the rest of
the id (docs/decisions.md, "Performance levers"). Each drawn chunk is handed
out once (a deque's popleft is atomic, so threads never share one), and a
forked child drops what its parent drew, so no two processes make the same id.
"""

from __future__ import annotations

import collections
import os
import time

_RANDOM_BYTES = 10
_CHUNKS_PER_DRAW = 256
_chunks: collections.deque[bytes] = collections.deque()


def _random_chunk() -> bytes:
    while True:
        try:
            return _chunks.popleft()
        except IndexError:
            drawn = os.urandom(_RANDOM_BYTES * _CHUNKS_PER_DRAW)
            _chunks.extend(drawn[i:i + _RANDOM_BYTES] for i in range(0, len(drawn), _RANDOM_BYTES))


os.register_at_fork(after_in_child=_chunks.clear)


def new_id() -> str:
    """A UUIDv7 (48-bit Unix milliseconds, version 7, 12 random bits, the variant, 62 random bits) in its
    canonical text form, which is what every caller stores or shows: built straight from the integer, since
    a `uuid.UUID` and its `str()` cost nearly twice as much (4.2 against 2.4 us), and an exchange makes two."""
    value = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(_random_chunk(), "big")
    value = (value & ~(0xF << 76)) | (0x7 << 76)           # version 7
    value = (value & ~(0x3 << 62)) | (0x2 << 62)           # RFC 9562 variant
    digits = f"{value:032x}"
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"
