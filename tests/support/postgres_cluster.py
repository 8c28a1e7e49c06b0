"""A PostgreSQL primary and a synchronous streaming standby of the test's own, for failover tests.

The machine's shared PostgreSQL is never touched: both servers are new
clusters (initdb, then pg_basebackup) in a temporary directory, on free
loopback ports, run by the `postgres` system user when the tests run as root
(PostgreSQL refuses to run as root). They are throwaway: fsync is off, and
both are stopped and deleted when the block ends.
"""

from __future__ import annotations

import asyncio
import glob
import os
import shutil
import tempfile
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator

import asyncpg

from tests.support.processes import free_ports

STANDBY_NAME = "tpx_standby"


def _bin_dir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if not found:
        raise AssertionError("the failover tests need PostgreSQL's server binaries (initdb, pg_ctl, pg_basebackup) "
                             "under /usr/lib/postgresql/<version>/bin; install the postgresql package")
    return Path(found[-1]).parent


def _as_postgres() -> list[str]:
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


async def _run(*args: str) -> None:
    process = await asyncio.create_subprocess_exec(*_as_postgres(), *args, stdin=asyncio.subprocess.DEVNULL,
                                                   stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    output, _ = await process.communicate()
    if process.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({process.returncode}):\n{output.decode(errors='replace')}")


@dataclass
class PostgresServer:
    """One cluster: its data directory and port."""

    name: str
    data_dir: Path
    port: int
    bin_dir: Path

    @property
    def url(self) -> str:
        """Server URL without a database, as tests.support.stack.running_stack takes it."""
        return f"postgresql://postgres@127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir.parent / f"{self.name}.log"

    async def start(self) -> None:
        await _run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-l", str(self.log_path), "-w", "-t", "60",
                   "start")

    async def stop(self, mode: str = "fast") -> None:
        """`immediate` is a crash (no checkpoint, clients cut): how a lost primary goes."""
        await _run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-m", mode, "-w", "-t", "60", "stop")

    async def promote(self) -> None:
        await _run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-w", "-t", "60", "promote")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-5000:]
        except OSError as exc:
            return f"(cannot read {self.log_path}: {exc})"


@dataclass
class ReplicatedPostgres:
    primary: PostgresServer
    standby: PostgresServer

    async def sync_state(self) -> str | None:
        """The standby's state as the primary sees it: 'sync' once commits wait for it."""
        conn = await asyncpg.connect(f"{self.primary.url}/postgres")
        try:
            return await conn.fetchval("SELECT sync_state FROM pg_stat_replication WHERE application_name = $1",
                                       STANDBY_NAME)
        finally:
            await conn.close()


def _append(path: Path, lines: list[str]) -> None:
    with open(path, "a", encoding="utf-8") as config:
        config.write("\n" + "\n".join(lines) + "\n")


@asynccontextmanager
async def replicated_postgres() -> AsyncIterator[ReplicatedPostgres]:
    """A running primary with a synchronous standby streaming from it (application_name tpx_standby)."""
    bin_dir = _bin_dir()
    base = Path(tempfile.mkdtemp(prefix="tpx-pg-failover-"))
    if os.geteuid() == 0:
        shutil.chown(base, "postgres", "postgres")
    primary_port, standby_port = free_ports(2)
    primary = PostgresServer("primary", base / "primary", primary_port, bin_dir)
    standby = PostgresServer("standby", base / "standby", standby_port, bin_dir)
    started: list[PostgresServer] = []
    try:
        await _run(str(bin_dir / "initdb"), "-D", str(primary.data_dir), "-U", "postgres", "--auth=trust",
                   "-E", "UTF8", "--no-sync")
        _append(primary.data_dir / "postgresql.conf", [
            f"port = {primary_port}", "listen_addresses = '127.0.0.1'", f"unix_socket_directories = '{base}'",
            "wal_level = replica", "max_wal_senders = 4", "hot_standby = on", "fsync = off",
            "shared_buffers = 32MB", "max_connections = 60",
            f"synchronous_standby_names = '{STANDBY_NAME}'", "synchronous_commit = on",
        ])
        await primary.start()
        started.append(primary)
        await _run(str(bin_dir / "pg_basebackup"), "-h", "127.0.0.1", "-p", str(primary_port), "-U", "postgres",
                   "-D", str(standby.data_dir), "-X", "stream", "-R", "--no-sync")
        # The standby keeps the primary's configuration except where it must differ; once promoted it has
        # no standby of its own, so it must not wait for one.
        _append(standby.data_dir / "postgresql.auto.conf", [
            f"port = {standby_port}", "synchronous_standby_names = ''",
            f"primary_conninfo = 'host=127.0.0.1 port={primary_port} user=postgres application_name={STANDBY_NAME}'",
        ])
        await standby.start()
        started.append(standby)
        pair = ReplicatedPostgres(primary, standby)
        for _ in range(600):  # bounded: up to 30 s for the standby to connect and be synchronous
            if await pair.sync_state() == "sync":
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError(f"the standby did not become synchronous\n{primary.log()}\n{standby.log()}")
        yield pair
    finally:
        for server in reversed(started):
            try:
                await server.stop("immediate")
            except AssertionError:
                pass  # already stopped (a failover test stops the primary itself)
        shutil.rmtree(base, ignore_errors=True)
