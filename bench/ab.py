"""A/B: this checkout against an earlier commit of tpx, both up at once, the same wrk runs alternating.

    .venv/bin/python bench/ab.py --ref a92137c [--runs 3] [--duration 8] [--connections 32 8] [--workers 1]

Why: a lever is kept only if it pays, and this machine's speed drifts by tens of percent between
hours (other tenants), so "before" must be measured in the same minutes as "after". This starts two
stacks as bench/peer.py does (durable defaults, rate limits off, wrk, single-use ID tokens): one from
this checkout, one from `--ref` checked out into a temporary git worktree and put first on the
services' PYTHONPATH (the same runtime venv, so the same library versions). Each round runs every
(stack, connections) pair and the introspection of each stack, alternating which stack goes first;
it prints medians and the ratio new/old of throughput, sustained throughput (relay drain included),
p99 and CPU per 2xx. Nothing here is kept: both databases, AMQP prefixes and the worktree go at the end.

    .venv/bin/python bench/ab.py --ref HEAD --prefill-tokens 10000000 --no-introspection

gives the new stack's database 10,000,000 more token rows first: the same code with and without a large
table, in the same minutes (a before/after in sequence measures the host's drift as much as the table).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from peer import ISSUERS, Minter, Target, introspection_service, measure, start_tpx_service  # noqa: E402
from support import PG, ROOT, free_port, prefill, progress, runtime_tpx, serve_app  # noqa: E402

import asyncpg  # noqa: E402

from tpx.cli.devissuer import DevIssuer  # noqa: E402

# Where the namespace package `tpx` has its parts (pyproject.toml's package directories).
SOURCE_ROOTS = ("shared", "services/exchange", "services/jwks-refresher", "services/revoker")


@contextlib.contextmanager
def worktree(ref: str):
    path = Path(tempfile.mkdtemp(prefix="tpx-bench-ab-"))
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "--quiet", str(path), ref], check=True)
    try:
        yield path
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)], check=False)
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def python_path(first: Path | None):
    """Services started inside run `first`'s tpx (PYTHONPATH is read by bench/support.tpx_env's os.environ)."""
    saved = os.environ.get("PYTHONPATH")
    if first is not None:
        os.environ["PYTHONPATH"] = os.pathsep.join(str(first / root) for root in SOURCE_ROOTS)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved


def row(label: str, new: list, old: list, metric: str, better: str) -> str:
    a, b = statistics.median(getattr(s, metric) for s in new), statistics.median(getattr(s, metric) for s in old)
    return f"  {label:<34} {metric:<11} new {a:9.2f}   old {b:9.2f}   new/old {a / b:5.2f}x ({better} is better)"


async def main(args: argparse.Namespace) -> None:
    if not shutil.which("wrk"):
        raise SystemExit("bench: wrk is not installed (apt-get install wrk)")
    ref = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", args.ref], check=True,
                         capture_output=True, text=True).stdout.strip()
    ISSUERS["tpx"] = issuer = DevIssuer()
    port = free_port()
    issuer.url = f"http://127.0.0.1:{port}"
    minter = Minter()   # forks now, before any signal handler or connection exists
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, asyncio.current_task().cancel)
    registry_token = "bench-registry-" + secrets.token_urlsafe(16)
    async with contextlib.AsyncExitStack() as stack:
        stack.callback(minter.close)
        tmp = Path(tempfile.mkdtemp(prefix="tpx-bench-ab-run-"))
        stack.callback(shutil.rmtree, tmp, True)
        old_tree = stack.enter_context(worktree(ref))
        await stack.enter_async_context(serve_app(issuer.app(), port))
        admin = await asyncpg.connect(f"{PG}/postgres")
        stack.push_async_callback(admin.close)
        common = dict(workers=args.workers, issuer_url=issuer.url, minter=minter, pool=10,
                      admin_token="bench-admin-" + secrets.token_urlsafe(16), registry_token=registry_token,
                      tpx=await runtime_tpx())
        services = {}
        for side, tree in (("new", None), ("old", old_tree)):
            with python_path(tree):   # the tree's own `tpx migrate` migrates its database (bench/support.py)
                services[side] = await start_tpx_service(stack, name=f"ab{side}", **common)
            progress(f"  ({side}: {'this checkout' if tree is None else ref})")
        if args.prefill_tokens:
            progress(f"the new stack's tokens table gets {args.prefill_tokens:,} more rows; the old stack's none")
            await prefill(services["new"], args.prefill_tokens)
        targets = {}
        for side, service in services.items():
            for c in args.connections:
                targets[(side, f"exchange, {c} connections")] = Target(f"{side}-{c}", f"{side}, {c} connections",
                                                                       service, c, 2000)
            if args.introspection:
                inspect = await introspection_service(service, registry_token, minter)
                targets[(side, f"introspection, {args.connections[0]} connections")] = Target(
                    f"{side}-i", f"{side} introspection", inspect, args.connections[0], 5000)
        progress("warm-up")
        for target in targets.values():
            await measure(target, duration=2, tmp=tmp, admin=admin)
        samples: dict = {key: [] for key in targets}
        names = sorted({name for _, name in targets})
        for round_ in range(args.runs):
            progress(f"round {round_ + 1}/{args.runs}")
            for name in names:
                sides = ("new", "old") if round_ % 2 == 0 else ("old", "new")
                for side in sides:
                    samples[(side, name)].append(await measure(targets[(side, name)], duration=args.duration,
                                                               tmp=tmp, admin=admin))
        progress("stopping both stacks")
    prefilled = f" with {args.prefill_tokens:,} more token rows" if args.prefill_tokens else ""
    print(f"\nA/B, medians of {args.runs} alternating runs of {args.duration} s (wrk -t1), {args.workers} exchange "
          f"process(es): new = this checkout{prefilled}, old = {ref}")
    invalid = sum(1 for runs in samples.values() for s in runs if not s.valid)
    for name in names:
        new, old = samples[("new", name)], samples[("old", name)]
        print(row(name, new, old, "rps", "higher"))
        if name.startswith("exchange"):
            print(row("", new, old, "sustained", "higher"))
        print(row("", new, old, "p99", "lower"))
        print(row("", new, old, "cpu_per_ok", "lower"))
    print("valid: every response 2xx" if not invalid else f"INVALID: {invalid} runs had non-2xx or socket errors")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ref", required=True, help="the earlier commit (or tag, branch) to compare with")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument("--connections", type=int, nargs="+", default=[32, 8])
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--no-introspection", dest="introspection", action="store_false")
    parser.add_argument("--prefill-tokens", type=int, default=0,
                        help="add this many token rows to the new stack's database first (with --ref HEAD: the same "
                             "code with and without a large tokens table, in the same minutes)")
    asyncio.run(main(parser.parse_args()))
