"""The test helpers that fork: they must not hang the suite, whatever the child writes."""

from __future__ import annotations

import threading

from tests.support.processes import written_by_forked_child


def test_a_forked_child_may_write_more_than_a_pipe_holds():
    result: list[bytes] = []
    reader = threading.Thread(target=lambda: result.append(written_by_forked_child(lambda: b"x" * 300_000)),
                              daemon=True)
    reader.start()
    reader.join(timeout=20)
    assert not reader.is_alive(), "the helper waited for a child that was blocked writing to it"
    assert result == [b"x" * 300_000]
