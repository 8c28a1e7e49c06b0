"""The revoker's queue-depth sampler keeps its memory flat.

Regression: it opened and closed a channel per queue and sample, and aio_pika left a callback behind on
the connection for each: the idle revoker's RSS grew by about 2 KB/s for as long as it ran.
"""

from __future__ import annotations

import gc
import tracemalloc

import aio_pika
import pytest

from tpx.core.metrics import QUEUE_DEPTH
from tpx.revoker.consumer import declare
from tpx.revoker.queue_depth import queue_names, sample_queue_depths
from tests.support.events import isolated

pytestmark = pytest.mark.integration


async def test_sampling_many_times_keeps_memory_flat(settings):
    own = isolated(settings)
    connection = await aio_pika.connect(own.amqp_url)
    async with connection:
        await declare(await connection.channel(), own)  # the queues exist, as once the consumer runs
        await sample_queue_depths(connection, own, interval=0, rounds=20)  # warm: caches fill once
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        await sample_queue_depths(connection, own, interval=0, rounds=400)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        for name in queue_names(own):
            assert QUEUE_DEPTH.labels(name)._value.get() == 0
            await (await connection.channel()).queue_delete(name)
    # Before the fix: some 300 bytes per channel left behind, 800 channels here.
    assert grown < 64 * 1024, f"{grown} bytes kept by 400 samples"
