"""tpx services as separate OS processes, for the tests that need real replicas.

Each child is `python -m tpx.cli <command>` started with asyncio (the test's
event loop keeps running: it may be serving the loopback issuer the children
fetch from). Its stdout and stderr go to one log file, so a failing test can
show what the child said. Children are stopped by their own pid with SIGTERM,
and killed only if they do not drain in time.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Awaitable, Callable, Iterable, Mapping

import httpx

STOP_TIMEOUT = 30.0


def _stop_with_parent() -> None:
    """In the child, before exec: SIGTERM it when the test process dies, however it dies (Linux)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def written_by_forked_child(produce: Callable[[], bytes]) -> bytes:
    """What `produce()` returns in a child forked now (as a worker process is): for state that must not
    carry over a fork. The child exits at once, without running the parent's cleanup."""
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            os.close(read_end)   # or a child whose parent stopped reading would block for ever
            with os.fdopen(write_end, "wb") as pipe:
                pipe.write(produce())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:   # read before waiting: a child writing more than the pipe holds
        written = pipe.read()                 # would otherwise block for ever
    os.waitpid(child, 0)
    return written


def free_ports(count: int) -> list[int]:
    """`count` distinct free loopback ports (all held open while choosing, so none repeats)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def service_env(overrides: Mapping[str, str]) -> dict[str, str]:
    """This process's environment without any TPX_* variable, plus `overrides`."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("TPX_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(overrides)
    return env


@dataclass
class ServiceProcess:
    """One running `tpx <command>` child."""

    name: str
    command: str
    process: asyncio.subprocess.Process
    log_path: Path
    _log_file: IO[bytes] | None = field(default=None, repr=False)
    killed: bool = False

    @classmethod
    async def start(cls, name: str, command: str, env: Mapping[str, str], log_dir: Path) -> "ServiceProcess":
        log_path = log_dir / f"{name}.log"
        log_file = open(log_path, "wb")
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "tpx.cli", command, env=dict(env),
                stdin=asyncio.subprocess.DEVNULL, stdout=log_file, stderr=asyncio.subprocess.STDOUT,
                preexec_fn=_stop_with_parent)
        except BaseException:
            log_file.close()
            raise
        return cls(name, command, process, log_path, log_file)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    def log(self, tail: int = 150) -> str:
        try:
            lines = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError as exc:
            return f"(cannot read {self.log_path}: {exc})"
        shown = lines[-tail:]
        skipped = f"... ({len(lines) - len(shown)} earlier lines in {self.log_path})\n" if len(lines) > len(shown) else ""
        return skipped + "\n".join(shown)

    def describe(self, tail: int = 150) -> str:
        state = "running" if self.returncode is None else f"exit code {self.returncode}"
        if self.killed:
            state += " (killed: it did not exit after SIGTERM)"
        return f"----- {self.name} (tpx {self.command}, pid {self.pid}, {state}) -----\n{self.log(tail) or '(no output)'}"

    def terminate(self) -> None:
        """Send SIGTERM to this child, by its pid."""
        if self.returncode is None:
            try:
                os.kill(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    async def wait_stopped(self, timeout: float = STOP_TIMEOUT) -> int:
        """Wait for the exit after `terminate()`; SIGKILL (by pid) only when it does not come in time."""
        try:
            await asyncio.wait_for(self.process.wait(), timeout)
        except TimeoutError:
            self.killed = True
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            await self.process.wait()
        finally:
            if self._log_file is not None:
                self._log_file.close()
                self._log_file = None
        assert self.returncode is not None
        return self.returncode

    async def kill(self) -> int:
        """kill -9, by pid: the process gets no chance to finish anything."""
        if self.returncode is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return await self.wait_stopped()

    def rss_bytes(self) -> int | None:
        """Resident set size now (from /proc), or None once the process is gone."""
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return None
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return None

    async def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        self.terminate()
        return await self.wait_stopped(timeout)


async def stop_all(processes: Iterable[ServiceProcess], timeout: float = STOP_TIMEOUT) -> dict[str, int]:
    """SIGTERM every child, then wait for all of them together; name -> exit code."""
    processes = list(processes)
    for child in processes:
        child.terminate()
    codes = await asyncio.gather(*(child.wait_stopped(timeout) for child in processes))
    return {child.name: code for child, code in zip(processes, codes)}


async def run_cli(args: Iterable[str], env: Mapping[str, str], timeout: float = 60.0) -> tuple[int, str]:
    """Run `python -m tpx.cli <args>` to completion; (exit code, stdout and stderr together)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tpx.cli", *args, env=dict(env),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        output, _ = await asyncio.wait_for(process.communicate(), timeout)
    except BaseException:
        if process.returncode is None:
            process.kill()
            await process.wait()
        raise
    assert process.returncode is not None
    return process.returncode, output.decode(errors="replace")


async def poll(check: Callable[[], Awaitable[Any]], what: str, timeout: float,
               alive: Iterable[ServiceProcess] = (), interval: float = 0.05) -> Any:
    """Call `check` until it returns something truthy; fail after `timeout`, or at once if a child died.

    The only sleep here is the pause between two bounded attempts.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    watched = list(alive)
    last_error: BaseException | None = None
    while True:
        dead = [child for child in watched if child.returncode is not None]
        if dead:
            raise AssertionError(f"while waiting for {what}, a service exited:\n\n"
                                 + "\n\n".join(child.describe() for child in dead))
        try:
            result = await check()
            if result:
                return result
            last_error = None
        except (httpx.TransportError, OSError) as exc:
            last_error = exc
        if loop.time() > deadline:
            detail = f" (last error: {type(last_error).__name__}: {last_error})" if last_error else ""
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}{detail}")
        await asyncio.sleep(interval)


async def wait_healthy(http: httpx.AsyncClient, child: ServiceProcess, url: str, timeout: float = 30.0) -> None:
    """Poll `url` (a /healthz) until it answers 200, failing early if the child exits."""

    async def answers() -> bool:
        response = await http.get(url, timeout=2)
        return response.status_code == 200

    await poll(answers, f"{child.name} to answer {url}", timeout, alive=[child])
