"""Time-ordered ids (tpx.core.ids): RFC 9562 version 7, unique, in creation order across milliseconds."""

from __future__ import annotations

import time
import uuid

from tpx.core.ids import new_id
from tests.support.processes import written_by_forked_child


def test_an_id_is_a_version_7_uuid_of_now():
    before = time.time_ns() // 1_000_000
    text = new_id()
    after = time.time_ns() // 1_000_000
    value = uuid.UUID(text)
    assert str(value) == text   # the canonical form: lower-case hex, 8-4-4-4-12
    assert value.version == 7 and value.variant == uuid.RFC_4122
    assert before <= value.int >> 80 <= after


def test_ids_of_later_milliseconds_sort_later_and_all_differ():
    first = [new_id() for _ in range(2000)]
    deadline = time.time_ns() // 1_000_000 + 2
    while time.time_ns() // 1_000_000 < deadline:   # a later millisecond, without a sleep
        pass
    later = [new_id() for _ in range(2000)]
    assert max(first) < min(later)
    assert len({*first, *later}) == 4000
    assert len({uuid.UUID(i).int & ((1 << 62) - 1) for i in first}) == 2000   # the random tail differs


def test_a_forked_process_never_makes_the_ids_its_parent_makes():
    """The random bytes are drawn in advance: a child forked with some left over must not reuse them."""
    new_id()   # the parent now holds drawn bytes it has not used
    raw = written_by_forked_child(lambda: b"".join(uuid.UUID(new_id()).bytes for _ in range(300)))
    theirs = {raw[i:i + 16][6:] for i in range(0, len(raw), 16)}     # the random part (and version, variant)
    ours = {uuid.UUID(new_id()).bytes[6:] for _ in range(300)}
    assert len(theirs) == 300 and not theirs & ours


def test_threads_never_share_drawn_bytes():
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        batches = list(pool.map(lambda _: [uuid.UUID(new_id()).int & ((1 << 62) - 1) for _ in range(700)], range(8)))
    assert len({tail for batch in batches for tail in batch}) == 8 * 700
