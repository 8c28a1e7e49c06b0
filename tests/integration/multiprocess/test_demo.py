"""`tpx demo` (what `make demo` runs) completes its tour end to end."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid

import aio_pika
import asyncpg
import pytest

from tests.conftest import AMQP_URL, PG_HOST

pytestmark = pytest.mark.integration


async def test_demo_tour_runs_end_to_end():
    database = f"tpx_demo_test_{uuid.uuid4().hex[:8]}"
    prefix = f"tpx-demo-test-{uuid.uuid4().hex[:6]}"
    env = {**os.environ, "TPX_DATABASE_URL": f"{PG_HOST}/{database}", "TPX_AMQP_PREFIX": prefix,
           "TPX_AMQP_URL": AMQP_URL, "NO_COLOR": "1"}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tpx.cli", "demo", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        output, _ = await asyncio.wait_for(process.communicate(), 120)
    finally:
        if process.returncode is None:
            process.kill()
        admin = await asyncpg.connect(f"{PG_HOST}/postgres")
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await admin.close()
        connection = await aio_pika.connect(AMQP_URL)
        async with connection:
            for queue in (f"{prefix}.audit", f"{prefix}.revoker", f"{prefix}.revoker.dead"):
                await (await connection.channel()).queue_delete(queue)
            for exchange in (f"{prefix}.events", f"{prefix}.dlx"):
                await (await connection.channel()).exchange_delete(exchange)
    text = output.decode()
    assert process.returncode == 0, text
    assert "POST /v1/exchange → 200" in text
    assert "409 token_reused" in text
    assert "403 no_matching_publisher" in text
    assert "introspection now says active=False" in text
    assert "dev.tpx.token.issued" in text and "dev.tpx.token.revoked" in text
    # The minted token is never shown whole.
    assert not any(word.startswith("tpx_") and len(word) >= 50 for word in text.split())
