"""A TcpProxy in a process of its own, driven over its stdin: for tests that put load on the services.

In the test's own event loop a proxy competes with the load generator for one
CPU: under a retry storm every database round trip of every service then
waits for the test process, and what is measured is the test, not tpx. Here
the proxy has a core's worth of time to itself.

    python -m tests.support.proxy_process <target host> <target port>

prints its port, then takes one command per line (`cut`, `restore`,
`partition`, `swallow`, `lose`, `retarget <host> <port>`, `quit`) and answers
`ok` once the command took effect.
"""

from __future__ import annotations

import asyncio
import sys

from tests.support.tcp_proxy import TcpProxy


class ProxyProcess:
    """The test side: the same verbs as TcpProxy, each awaited until the proxy process has done it."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.port = 0
        self._process: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        self._process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.support.proxy_process", self.target_host, str(self.target_port),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        self.port = int(await self._line())

    async def _line(self) -> str:
        assert self._process is not None and self._process.stdout is not None
        line = await asyncio.wait_for(self._process.stdout.readline(), 30)
        if not line:
            raise AssertionError("the proxy process exited")
        return line.decode().strip()

    async def _command(self, *words: object) -> None:
        assert self._process is not None and self._process.stdin is not None
        async with self._lock:
            self._process.stdin.write((" ".join(map(str, words)) + "\n").encode())
            await self._process.stdin.drain()
            answer = await self._line()
        assert answer == "ok", f"the proxy process answered {answer!r} to {words}"

    async def cut(self) -> None:
        await self._command("cut")

    async def restore(self) -> None:
        await self._command("restore")

    async def partition(self) -> None:
        await self._command("partition")

    async def swallow_next_reply(self) -> None:
        await self._command("swallow")

    async def lose_next_reply(self) -> None:
        await self._command("lose")

    async def retarget(self, host: str, port: int) -> None:
        await self._command("retarget", host, port)
        self.target_host, self.target_port = host, port

    async def close(self) -> None:
        if self._process is None or self._process.returncode is not None:
            return
        try:
            await self._command("quit")
        except (AssertionError, ConnectionError):
            pass
        try:
            await asyncio.wait_for(self._process.wait(), 10)
        except TimeoutError:
            self._process.kill()
            await self._process.wait()

    async def __aenter__(self) -> "ProxyProcess":
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


async def _serve(host: str, port: int) -> None:
    proxy = TcpProxy(host, port)
    await proxy.start()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    def say(text: str) -> None:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    say(str(proxy.port))
    while line := (await reader.readline()).decode().split():
        verb, *args = line
        if verb == "cut":
            await proxy.cut()
        elif verb == "restore":
            await proxy.restore()
        elif verb == "partition":
            proxy.partition()
        elif verb == "swallow":
            proxy.swallow_next_reply()
        elif verb == "lose":
            proxy.lose_next_reply()
        elif verb == "retarget":
            proxy.retarget(args[0], int(args[1]))
        elif verb == "quit":
            await proxy.close()
            say("ok")
            return
        else:
            say(f"unknown command {verb!r}")
            continue
        say("ok")
    await proxy.close()  # stdin closed: the test process is gone


if __name__ == "__main__":
    import uvloop  # comes with uvicorn[standard]; a proxy should cost as little as it can

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(_serve(sys.argv[1], int(sys.argv[2])))
