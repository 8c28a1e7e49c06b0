"""Where one tpx exchange process spends its time under wrk load: py-spy's view, summarised.

    .venv/bin/python bench/profile_exchange.py [--connections 32] [--duration 10] [--py-spy PATH]

Starts the stack as bench/peer.py does (one exchange process, durable defaults, rate limits
off), warms it up, then runs wrk for --duration seconds while `py-spy record --format raw`
samples the exchange process (native frames included), and prints the share of samples
that pass through each of a few layers (our handler, the database driver, the HTTP server,
JSON, the relay, garbage collection, ...) and the heaviest leaf functions. py-spy is not a
dependency of tpx: install it anywhere (`pip install py-spy`) and pass its path, or have it
on PATH. Needs root or ptrace permission. With --introspection, the load is a registry's
`POST /v1/introspect` over live tokens (as bench/peer.py's introspection row) instead of exchanges.
With --relay, the process sampled is the jwks-refresher, which leads the outbox relay.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from peer import ISSUERS, Minter, Target, introspection_service, measure, start_tpx_service  # noqa: E402
from support import PG, free_port, prefill, progress, rss_mb, runtime_tpx, serve_app  # noqa: E402

import asyncpg  # noqa: E402

from tpx.cli.devissuer import DevIssuer  # noqa: E402

# Layers, matched against "function (file)" frames, first match wins per layer; a sample counts once per layer.
LAYERS = {
    "exchange handler (tpx/exchange/routes/exchange.py)": "routes/exchange.py",
    "introspection handler (tpx/exchange/routes/tokens.py)": "routes/tokens.py",
    "group read (tpx/exchange/group_read.py)": "exchange/group_read.py",
    "ID token verification (tpx/exchange/verification.py)": "exchange/verification.py",
    "matching (tpx/core/providers)": "core/providers/",
    "group commit + mint (tpx/exchange/group_commit.py, db/tokens.py)": ("group_commit.py", "db/tokens.py"),
    "outbox relay (tpx/core/relay)": "core/relay/",
    "asyncpg": "asyncpg/",
    "uvicorn": "uvicorn/",
    "starlette": "starlette/",
    "json": ("json/", "orjson"),
    "structlog": "structlog/",
    "prometheus_client": "prometheus_client/",
    "garbage collection": "gc_collect",
}


def summarise(raw: Path, top: int) -> None:
    layers: collections.Counter[str] = collections.Counter()
    leaves: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        leaves[frames[-1][:110]] += count
        for layer, needles in LAYERS.items():
            needles = (needles,) if isinstance(needles, str) else needles
            if any(needle in frame for frame in frames for needle in needles):
                layers[layer] += count
    idle = sum(c for leaf, c in leaves.items() if "epoll" in leaf or "(select" in leaf)
    print(f"\n{total} samples of the exchange process; {100 * idle / max(total, 1):.1f}% waiting in epoll (idle)")
    print("\nshare of samples through each layer (a sample may count in several)")
    for layer, count in layers.most_common():
        print(f"  {100 * count / total:5.1f}%  {layer}")
    print(f"\nheaviest leaf frames (top {top})")
    for leaf, count in leaves.most_common(top):
        print(f"  {100 * count / total:5.1f}%  {leaf}")


async def recorded(command: list[str], target, args: argparse.Namespace, tmp: Path, admin) -> subprocess.Popen:
    """One wrk run with `command` (a profiler that stops by itself) started as wrk starts, not before: the
    bodies take seconds to prepare, with the process idle. If wrk runs again (it ran out of bodies), the
    recording restarts, so it is of the last run. Returns the recorder, still running or done."""
    recorders: list[subprocess.Popen] = []

    def record() -> None:
        if recorders:
            recorders.pop().kill()
        recorders.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))

    try:
        await measure(target, duration=args.duration, tmp=tmp, admin=admin, on_load=record)
    except BaseException:
        for recorder in recorders:
            recorder.kill()
        raise
    return recorders[-1]


async def perf_profile(pid: int, target, args: argparse.Namespace, tmp: Path, admin) -> None:
    """Linux perf's view (C frames and the kernel; Python 3.11's own frames all read as the interpreter),
    by shared object and by symbol: what the process spends outside Python code, which py-spy misses."""
    data = tmp / "perf.data"
    progress(f"wrk {args.duration} s at {args.connections} connections, perf on pid {pid} while wrk runs")
    await asyncio.to_thread((await recorded(
        ["perf", "record", "-F", "499", "-p", str(pid), "-o", str(data), "--", "sleep", str(max(args.duration - 1, 1))],
        target, args, tmp, admin)).communicate)
    for sort in ("dso", "dso,sym"):
        report = subprocess.run(["perf", "report", "-i", str(data), "--no-children", "--sort", sort, "--stdio",
                                 "--percent-limit", "0.7"], capture_output=True, text=True)
        print("\n".join(line for line in report.stdout.splitlines() if line and not line.startswith("#")))


async def main(args: argparse.Namespace) -> None:
    py_spy = args.py_spy or shutil.which("py-spy")
    if not py_spy and not args.runs and not args.perf:
        raise SystemExit("bench: py-spy not found; pip install py-spy (anywhere) and pass --py-spy PATH")
    if not shutil.which("wrk"):
        raise SystemExit("bench: wrk is not installed (apt-get install wrk)")
    ISSUERS["tpx"] = issuer = DevIssuer()
    port = free_port()
    issuer.url = f"http://127.0.0.1:{port}"
    minter = Minter()
    async with contextlib.AsyncExitStack() as stack:
        stack.callback(minter.close)
        tmp = Path(tempfile.mkdtemp(prefix="tpx-bench-profile-"))
        stack.callback(shutil.rmtree, tmp, True)
        await stack.enter_async_context(serve_app(issuer.app(), port))
        admin = await asyncpg.connect(f"{PG}/postgres")
        stack.push_async_callback(admin.close)
        registry_token = "bench-registry-" + secrets.token_urlsafe(16)
        service = await start_tpx_service(stack, name="profile", workers=1, issuer_url=issuer.url, minter=minter,
                                          pool=10, admin_token="bench-admin-" + secrets.token_urlsafe(16),
                                          registry_token=registry_token, tpx=await runtime_tpx())
        target = Target("tpx", f"tpx, {args.connections} connections", service, args.connections, 3000)
        if args.introspection:
            target = Target("tpx-introspect", f"tpx introspection, {args.connections} connections",
                            await introspection_service(service, registry_token, minter), args.connections)
        progress(f"exchange process RSS before any load: {rss_mb(service.processes[0].pid):.1f} MB")
        progress("warm-up, 3 s")
        await measure(target, duration=3, tmp=tmp, admin=admin)
        if args.runs:  # figures only, no profiler attached
            empty = [await measure(target, duration=args.duration, tmp=tmp, admin=admin) for _ in range(args.runs)]
            if args.prefill_tokens:
                await prefill(service, args.prefill_tokens)
                progress("the same runs with the prefilled tokens table")
                full = [await measure(target, duration=args.duration, tmp=tmp, admin=admin) for _ in range(args.runs)]
                before, after = (statistics.median(s.sustained for s in runs) for runs in (empty, full))
                print(f"\nsustained req/s, median of {args.runs}: {before:.0f} with the table as the runs left it, "
                      f"{after:.0f} with {args.prefill_tokens:,} more token rows: {after / before:.2f}x")
            progress(f"exchange process RSS after the runs: {rss_mb(service.processes[0].pid):.1f} MB")
            return
        raw = tmp / "profile.txt"
        pid = service.processes[1 if args.relay else 0].pid   # start_tpx: exchange, jwks-refresher, revoker
        if args.perf:
            await perf_profile(pid, target, args, tmp, admin)
            return
        # --native unwinds C frames too, but pauses the process for each sample and loses most of them under
        # load; --python-only takes Python frames only (more samples, idle ones left out).
        mode = [] if args.python_only else ["--native"]
        progress(f"wrk {args.duration} s at {args.connections} connections, py-spy on pid {pid} while wrk runs")
        recorder = await recorded([py_spy, "record", "--pid", str(pid), *mode, "--format", "raw", "--rate", "250",
                                   "--duration", str(max(args.duration - 1, 1)), "--output", str(raw)],
                                  target, args, tmp, admin)
        _, errors = await asyncio.to_thread(recorder.communicate)
        if not raw.exists():
            raise SystemExit(f"bench: py-spy wrote nothing: {errors.decode(errors='replace')[-500:]}")
        summarise(raw, args.top)
        if args.keep:
            shutil.copy(raw, args.keep)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--py-spy", default=os.environ.get("PY_SPY"))
    parser.add_argument("--python-only", action="store_true",
                        help="sample without pausing the process: Python frames only, many more samples")
    parser.add_argument("--perf", action="store_true", help="sample with Linux perf instead of py-spy")
    parser.add_argument("--keep", help="also copy py-spy's raw (collapsed) stacks to this file")
    parser.add_argument("--introspection", action="store_true",
                        help="load with introspections of live tokens instead of exchanges")
    parser.add_argument("--relay", action="store_true",
                        help="sample the jwks-refresher process, the outbox relay's leader, instead of the exchange")
    parser.add_argument("--runs", type=int, default=0, help="only measure, this many wrk runs, without py-spy")
    parser.add_argument("--prefill-tokens", type=int, default=0,
                        help="with --runs: measure, add this many token rows, measure again, print the ratio")
    asyncio.run(main(parser.parse_args()))
