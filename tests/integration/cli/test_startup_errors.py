"""Services that cannot start say why in one sentence and exit non-zero (no traceback)."""

from __future__ import annotations

import asyncio
import os
import socket
import sys

import pytest


pytestmark = pytest.mark.integration


async def run_tpx(*args: str, **env: str) -> tuple[int, str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("TPX_")}
    full.update(env)
    process = await asyncio.create_subprocess_exec(sys.executable, "-m", "tpx.cli", *args, env=full,
                                                   stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(process.communicate(), 60)
    return process.returncode, err.decode()



@pytest.mark.parametrize("command", ["exchange", "jwks-refresher", "revoker"])
async def test_unmigrated_database_is_refused(empty_database, command):
    code, err = await run_tpx(command, TPX_DATABASE_URL=empty_database, TPX_PORT="0", TPX_OPS_PORT="0")
    assert code == 1
    assert "run `tpx migrate` first" in err and "Traceback" not in err


@pytest.mark.parametrize("command", ["exchange", "revoker", "migrate"])
async def test_unreachable_database_names_the_variable(command):
    code, err = await run_tpx(command, TPX_DATABASE_URL="postgresql://postgres@127.0.0.1:1/nothing", TPX_PORT="0",
                              TPX_OPS_PORT="0")
    assert code == 1
    assert "TPX_DATABASE_URL" in err and "127.0.0.1:1" in err and "Traceback" not in err


async def test_taken_port_names_the_address(database_url):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, err = await run_tpx("exchange", TPX_DATABASE_URL=database_url, TPX_PORT=str(port))
    assert code == 1
    assert f"127.0.0.1:{port}" in err and "TPX_PORT" in err and "Traceback" not in err


async def test_bad_configuration_names_the_variable():
    code, err = await run_tpx("exchange", TPX_TOKEN_TTL_SECONDS="forever")
    assert code == 2 and "TPX_TOKEN_TTL_SECONDS" in err
