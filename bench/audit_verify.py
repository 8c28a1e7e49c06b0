"""`tpx audit verify` on a stream of N hash-chained events: wall time, rate and peak memory.

    .venv/bin/python bench/audit_verify.py [--events 1000000]

Writes N token.issued-shaped CloudEvents, chained exactly as the relay chains them
(tpx.core.events.chain), into a fresh audit stream of a throwaway AMQP prefix (published
through the relay's own confirming publisher, in batches), then runs `tpx audit verify`
on it as a separate process and reports its wall time and peak RSS (the child's
ru_maxrss). The baseline is the same process doing nothing but importing tpx and
connecting (`tpx audit verify --limit 1`). The stream is deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import subprocess
import sys
import time
import uuid
from pathlib import Path

import aio_pika
from pamqp.commands import Basic

sys.path.insert(0, str(Path(__file__).resolve().parent))

from support import TPX, progress  # noqa: E402

from tpx.core.events import chain  # noqa: E402
from tpx.core.events.cloudevents import encode  # noqa: E402
from tpx.core.relay.confirming_publisher import ConfirmingPublisher, Declarations, Outgoing  # noqa: E402

AMQP = os.environ.get("TPX_BENCH_AMQP", "amqp://guest:guest@127.0.0.1:5672/")
BATCH = 5_000


def event(sequence: int) -> dict:
    return {
        "specversion": "1.0", "id": str(uuid.uuid4()), "source": "tpx/exchange", "type": "dev.tpx.token.issued",
        "time": "2026-12-05T04:00:00.000000Z", "datacontenttype": "application/json",
        "subject": str(uuid.uuid4()), "sequence": f"{sequence:020d}",
        "data": {"token_id": str(uuid.uuid4()), "packages": ["bench-pkg"], "permissions": {"bench-pkg": ["publish"]},
                 "publisher_ids": [str(uuid.uuid4())], "issued_at": "2026-12-05T04:00:00Z",
                 "expires_at": "2026-12-05T04:30:00Z",
                 "ci": {"provider": "github", "repository": "bench-org/bench-repo", "workflow": "release.yml",
                        "ref": "refs/tags/v1.0.0", "sha": "0" * 40, "run_id": str(sequence)}},
    }


async def fill(stream: str, exchange: str, count: int) -> None:
    publisher = await ConfirmingPublisher.connect(AMQP, timeout=10, name="tpx bench audit", declarations=Declarations(
        exchange, stream, {"x-queue-type": "stream", "x-max-age": "1D", "x-max-length-bytes": 20 * 1024**3}))
    try:
        previous, sequence, began = chain.GENESIS, 0, time.monotonic()
        properties = Basic.Properties(content_type="application/cloudevents+json", delivery_mode=2)
        while sequence < count:
            messages = []
            for _ in range(min(BATCH, count - sequence)):
                sequence += 1
                body = event(sequence)
                previous = chain.link_encoded(previous, encode(body))
                messages.append(Outgoing(exchange, "token.issued",
                                         encode({**body, chain.CHAIN_ATTRIBUTE: previous.hex()}), properties))
            confirmed, failure = await publisher.publish(messages, timeout=60)
            if failure is not None:
                raise SystemExit(f"bench: publishing failed after {confirmed} of a batch: {failure}")
            if sequence % 100_000 == 0 or sequence == count:
                progress(f"{sequence:,} of {count:,} events in the stream ({time.monotonic() - began:.0f} s)")
    finally:
        await publisher.close()


def run_verify(prefix: str, *extra: str) -> tuple[float, float, str]:
    """Wall seconds, peak RSS in MB, and the output of one `tpx audit verify`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    began = time.monotonic()
    result = subprocess.run([TPX, "audit", "verify", *extra], capture_output=True, text=True,
                            env={**os.environ, "TPX_AMQP_URL": AMQP, "TPX_AMQP_PREFIX": prefix})
    wall = time.monotonic() - began
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if result.returncode != 0:
        raise SystemExit(f"bench: tpx audit verify exited {result.returncode}: {result.stdout}{result.stderr}")
    # ru_maxrss of children is the largest of any child so far: the baseline runs first, so a larger
    # figure afterwards is the verify's own.
    return wall, max(peak, before) / 1024, result.stdout.strip()


async def delete(stream: str, exchange: str) -> None:
    connection = await aio_pika.connect(AMQP)
    async with connection:
        channel = await connection.channel()
        await channel.queue_delete(stream)
        await channel.exchange_delete(exchange)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    args = parser.parse_args()
    prefix = f"tpx-bench-audit-{os.getpid()}"
    stream, exchange = f"{prefix}.audit", f"{prefix}.events"
    try:
        asyncio.run(fill(stream, exchange, args.events))
        base_wall, base_rss, _ = run_verify(prefix, "--limit", "1")
        progress(f"baseline (verify --limit 1): {base_wall:.1f} s, peak RSS {base_rss:.1f} MB")
        wall, rss, output = run_verify(prefix)
        print(f"\n{output}\n`tpx audit verify` on {args.events:,} events: {wall:.1f} s ({args.events / wall:,.0f} "
              f"events/s), peak RSS {rss:.1f} MB (baseline {base_rss:.1f} MB: {rss / base_rss:.2f}x)")
    finally:
        asyncio.run(delete(stream, exchange))


if __name__ == "__main__":
    main()
