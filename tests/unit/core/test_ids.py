"""Time-ordered ids (tpx.core.ids): RFC 9562 version 7, unique, in creation order across milliseconds."""

from __future__ import annotations

import time
import uuid

from tpx.core.ids import new_id


def test_an_id_is_a_version_7_uuid_of_now():
    before = time.time_ns() // 1_000_000
    value = new_id()
    after = time.time_ns() // 1_000_000
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
    assert len({i.int & ((1 << 62) - 1) for i in first}) == 2000   # the random tail differs
