"""bench/support.py's reading of the scheduler: what the benchmark's "cores busy/waiting" line rests on."""

from __future__ import annotations

import importlib.util
import os
import threading
import time
from pathlib import Path

_SPEC = importlib.util.spec_from_file_location("bench_support",
                                               Path(__file__).resolve().parents[2] / "bench" / "support.py")
support = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(support)


def test_a_process_is_read_with_all_its_threads():
    """A thread other than the main one that keeps a CPU busy counts: /proc/<pid>/schedstat alone is the
    main thread's, which waits here, and would read next to nothing. (Read while the thread lives: the
    kernel keeps no schedstat of a thread that ended; the benchmark's processes keep theirs.)"""
    pid = os.getpid()
    on_cpu, waited = support.schedstat_ms(pid)
    spent: list[float] = []
    done, leave = threading.Event(), threading.Event()

    def busy() -> None:
        started = time.thread_time()
        while time.thread_time() - started < 0.2:
            pass
        spent.append((time.thread_time() - started) * 1000)
        done.set()
        leave.wait()

    worker = threading.Thread(target=busy)
    worker.start()
    try:
        assert done.wait(timeout=20)
        on_cpu_now, waited_now = support.schedstat_ms(pid)
        assert on_cpu_now - on_cpu >= 0.9 * spent[0]
        assert waited_now >= waited and support.run_queue_ms([pid])[pid] >= waited_now
    finally:
        leave.set()
        worker.join()
