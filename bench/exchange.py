"""Benchmark: exchanges and introspections against the running stack, next to a bare Starlette baseline.

    .venv/bin/python bench/exchange.py [--clients 32] [--exchanges 8000] [--duration 8]

Starts its own stack as production runs it (`tpx exchange`, `tpx jwks-refresher`,
`tpx revoker` as separate processes, a fresh `tpx_bench` database, its own AMQP
prefix) plus a loopback development issuer, pre-mints distinct ID tokens
(minting is not measured), then drives N concurrent keep-alive clients. Every
write is durable (PostgreSQL defaults, synchronous commit). Prints throughput
and p50/p95/p99 for each, and ratios against the baseline measured in the
same run, since this machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import secrets
import sys
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

import loadgen  # noqa: E402
from support import (  # noqa: E402
    delete_amqp_objects, drop_database, free_port, fresh_database, progress, register_publisher, serve_app, start,
    start_tpx, stop, tpx_env, wait_http,
)

from tpx.cli.devissuer import DevIssuer  # noqa: E402

DATABASE = "tpx_bench"
TARGETS = {"exchange_rps": 1000, "exchange_p99_ms": 50, "introspect_rps": 3000}


async def main(args: argparse.Namespace) -> None:
    print("tpx benchmark: exchange and introspection vs a bare Starlette endpoint\n", flush=True)
    progress("fresh database tpx_bench, migrated")
    database_url = await fresh_database(DATABASE)
    admin_token = "bench-admin-" + secrets.token_urlsafe(16)
    registry_token = "bench-registry-" + secrets.token_urlsafe(16)
    port, baseline_port = free_port(), free_port()
    env = {**tpx_env(database_url=database_url, port=port, prefix=f"tpx-bench-{os.getpid()}", admin_token=admin_token,
                     registry_token=registry_token, workers=args.workers, pool=args.pool),
           "BASELINE_PORT": str(baseline_port)}

    issuer = DevIssuer()
    issuer_port = free_port()
    issuer.url = f"http://127.0.0.1:{issuer_port}"
    issuer_server = contextlib.AsyncExitStack()
    await issuer_server.enter_async_context(serve_app(issuer.app(), issuer_port))

    processes = [*start_tpx(env), start([sys.executable, str(ROOT / "bench" / "baseline_app.py")], env, "baseline")]
    try:
        base = f"http://127.0.0.1:{port}"
        await wait_http(f"{base}/healthz")
        progress(f"stack up: exchange :{port}, jwks-refresher, revoker (pids {[p.pid for p in processes]})")
        await register_publisher(base, admin_token, issuer.url)
        progress("issuer registered; keys fetched by the jwks-refresher")
        async with httpx.AsyncClient(base_url=base, trust_env=False, timeout=30) as http:
            total = args.exchanges + args.warmup + args.introspect_tokens
            progress(f"pre-minting {total} distinct ID tokens (not measured)")
            jwts = []
            for i in range(total):
                jwts.append(issuer.github_token(repository="bench-org/bench-repo"))
                if (i + 1) % 2000 == 0:
                    progress(f"  {i + 1}/{total}")
            live_tokens = []
            for jwt in jwts[:args.introspect_tokens]:
                response = await http.post("/v1/exchange", json={"jwt": jwt})
                if response.status_code != 200:
                    raise SystemExit(f"bench: a setup exchange failed: {response.status_code} {response.text}")
                live_tokens.append(response.json()["token"])
            jwts = jwts[args.introspect_tokens:]

        host = f"127.0.0.1:{port}"
        exchange_requests = (loadgen.request_bytes("/v1/exchange", json.dumps({"jwt": j}).encode(),
                                                   {"Content-Type": "application/json"}, host) for j in jwts)
        baseline_body = json.dumps({"jwt": jwts[0]}).encode()
        baseline_request = loadgen.request_bytes("/echo", baseline_body, {"Content-Type": "application/json"},
                                                 f"127.0.0.1:{baseline_port}")
        introspect_requests = itertools.cycle([
            loadgen.request_bytes("/v1/introspect", json.dumps({"token": t}).encode(),
                                  {"Content-Type": "application/json", "Authorization": f"Bearer {registry_token}"}, host)
            for t in live_tokens])

        progress(f"warm-up: {args.warmup} exchanges")
        await loadgen.run("warmup", "127.0.0.1", port, exchange_requests, clients=args.clients, total=args.warmup)
        progress(f"baseline: bare Starlette POST for {args.duration} s at {args.clients} clients")
        baseline = await loadgen.run("baseline (Starlette)", "127.0.0.1", baseline_port, lambda: baseline_request,
                                     clients=args.clients, duration=args.duration)
        progress(f"exchange: {args.exchanges} distinct ID tokens at {args.clients} clients")
        exchange = await loadgen.run("exchange", "127.0.0.1", port, exchange_requests, clients=args.clients,
                                     total=args.exchanges)
        progress(f"introspection: {args.duration} s at {args.clients} clients")
        introspection = await loadgen.run("introspection", "127.0.0.1", port, introspect_requests,
                                          clients=args.clients, duration=args.duration)
    finally:
        stop(processes)
        await issuer_server.aclose()
        await delete_amqp_objects(env, env["TPX_AMQP_PREFIX"])
        await drop_database(DATABASE)

    print(f"\nresults ({args.clients} clients, {args.workers} exchange process(es); durable: synchronous commit, "
          "one PostgreSQL transaction per exchange)\n")
    for result in (baseline, exchange, introspection):
        print("  " + result.summary())
    print("\nratios against the baseline measured in this run")
    for result in (exchange, introspection):
        print(f"  {result.name:<14} throughput {loadgen.ratio(result.throughput, baseline.throughput):>7}   "
              f"p99 {loadgen.ratio(result.p99, baseline.p99):>7}")
    print("\ntargets (2-core machine)")
    checks = [
        (f"exchange >= {TARGETS['exchange_rps']}/s", exchange.throughput >= TARGETS["exchange_rps"], f"{exchange.throughput:.0f}/s"),
        (f"exchange p99 <= {TARGETS['exchange_p99_ms']} ms", exchange.p99 <= TARGETS["exchange_p99_ms"], f"{exchange.p99:.1f} ms"),
        (f"introspection >= {TARGETS['introspect_rps']}/s", introspection.throughput >= TARGETS["introspect_rps"],
         f"{introspection.throughput:.0f}/s"),
    ]
    for label, ok, value in checks:
        print(f"  {'PASS' if ok else 'MISS'}  {label:<28} measured {value}")
    bad = {s: n for r in (exchange, introspection) for s, n in r.statuses.items() if s != 200}
    if bad:
        print(f"\n  non-200 answers: {bad} (see .bench-logs/)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--exchanges", type=int, default=8000)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--introspect-tokens", type=int, default=200)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--pool", type=int, default=20, help="database pool size per exchange process")
    parser.add_argument("--workers", type=int, default=2, help="exchange processes (TPX_WORKERS; one per core)")
    asyncio.run(main(parser.parse_args()))
