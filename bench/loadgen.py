"""A small closed-loop HTTP/1.1 load generator on raw asyncio streams.

Each client keeps one keep-alive connection and sends its next request as soon
as the previous answer is in. Raw streams instead of an HTTP client library so
the generator costs little CPU on a 2-core machine that also runs the server
and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator


@dataclass
class Result:
    name: str
    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    elapsed: float = 0.0

    @property
    def count(self) -> int:
        return len(self.latencies)

    @property
    def throughput(self) -> float:
        return self.count / self.elapsed if self.elapsed else 0.0

    def percentile(self, p: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))] * 1000

    @property
    def p50(self) -> float:
        return self.percentile(50)

    @property
    def p95(self) -> float:
        return self.percentile(95)

    @property
    def p99(self) -> float:
        return self.percentile(99)

    def summary(self) -> str:
        return (f"{self.name:<22} {self.count:>7} req {self.throughput:>8.0f}/s   p50 {self.p50:6.2f} ms   "
                f"p95 {self.p95:6.2f} ms   p99 {self.p99:6.2f} ms   statuses {dict(sorted(self.statuses.items()))}")


def request_bytes(path: str, body: bytes, headers: dict[str, str], host: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}", "Connection: keep-alive"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return status, (await reader.readexactly(length) if length else b"")


async def run(name: str, host: str, port: int, requests: Iterator[bytes] | Callable[[], bytes], *,
              clients: int, duration: float | None = None, total: int | None = None) -> Result:
    """Drive `clients` connections until `duration` seconds pass or `total` requests were sent."""
    result = Result(name)
    next_request = requests if callable(requests) else (lambda it=requests: next(it))
    sent = 0
    deadline = None
    lock = asyncio.Lock()

    async def client() -> None:
        nonlocal sent
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while True:
                async with lock:
                    if (total is not None and sent >= total) or (deadline is not None and time.perf_counter() > deadline):
                        return
                    try:
                        payload = next_request()
                    except StopIteration:
                        return
                    sent += 1
                started = time.perf_counter()
                writer.write(payload)
                status, _ = await _read_response(reader)
                result.latencies.append(time.perf_counter() - started)
                result.statuses[status] = result.statuses.get(status, 0) + 1
        finally:
            writer.close()

    begin = time.perf_counter()
    if duration is not None:
        deadline = begin + duration
    await asyncio.gather(*(client() for _ in range(clients)))
    result.elapsed = time.perf_counter() - begin
    return result


async def collect(host: str, port: int, request: bytes, *, count: int, clients: int) -> list[bytes]:
    """Send the same request `count` times over `clients` keep-alive connections; return the 2xx bodies
    (setup work such as fetching server-issued nonces, not a measurement). Raises on any other status."""
    bodies: list[bytes] = []

    async def client(share: int) -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            for _ in range(share):
                writer.write(request)
                status, body = await _read_response(reader)
                if not 200 <= status < 300:
                    raise RuntimeError(f"loadgen.collect: {status} {body[:300]!r}")
                bodies.append(body)
        finally:
            writer.close()

    await asyncio.gather(*(client(count // clients + (i < count % clients)) for i in range(clients)))
    return bodies


def ratio(value: float, baseline: float) -> str:
    return f"{value / baseline:.2f}x" if baseline else "n/a"


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")
