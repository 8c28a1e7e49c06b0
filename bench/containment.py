"""Benchmark: incident containment — revoke every live token of a repository.

    .venv/bin/python bench/containment.py [--tokens 10000]

Starts `tpx exchange` and `tpx revoker` against a fresh `tpx_bench_containment`
database holding N live tokens of one repository (plus N of another, for the
baseline), then measures:
- containment: from `POST /v1/admin/revocations {"repository"}` to its answer,
  after which every matching token introspects inactive on every replica;
- completion: until every token row is revoked, each with its `token.revoked`
  event, and `revocation.completed` is written;
against a baseline measured in the same run: one bare SQL UPDATE revoking the
other repository's N tokens (no rule, no events). Target: N = 10,000 contained
in under 1 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import sys
import time
import uuid
from pathlib import Path

import asyncpg
import httpx

from tpx.core import tokens

sys.path.insert(0, str(Path(__file__).resolve().parent))
from support import TPX, delete_amqp_objects, drop_database, free_port, fresh_database, progress, start, stop, wait_http  # noqa: E402

DATABASE = "tpx_bench_containment"


async def seed(url: str, repository: str, count: int) -> list[str]:
    """Insert `count` live tokens of `repository`; return a few raw tokens to introspect."""
    raw = [tokens.generate() for _ in range(count)]
    conn = await asyncpg.connect(url)
    try:
        issuer = await conn.fetchval("SELECT id FROM issuers LIMIT 1")
        ci = json.dumps({"provider": "github", "repository": repository, "workflow": "release.yml"})
        await conn.copy_records_to_table("tokens", columns=[
            "id", "token_hash", "issuer_id", "packages", "permissions", "publisher_ids", "ci", "repository_key",
            "workflow", "issued_at", "expires_at"], records=[
            (uuid.uuid4(), tokens.lookup_key(t), issuer, ["pkg"], json.dumps({"pkg": ["publish-update"]}), [],
             ci, repository.lower(), "release.yml", _now(-60), _now(1800)) for t in raw])
    finally:
        await conn.close()
    return random.sample(raw, 20)


def _now(offset: float):
    from datetime import datetime, timedelta, timezone

    return datetime.now(timezone.utc) + timedelta(seconds=offset)


async def main(args: argparse.Namespace) -> None:
    print(f"tpx containment benchmark: {args.tokens} live tokens of one repository\n", flush=True)
    url = await fresh_database(DATABASE)
    progress("seeding tokens (not measured)")
    sample = await seed(url, "incident-org/compromised", args.tokens)
    await seed(url, "baseline-org/other", args.tokens)

    port = free_port()
    admin_token, registry_token = "bench-admin-" + secrets.token_urlsafe(16), "bench-reg-" + secrets.token_urlsafe(16)
    prefix = f"tpx-bench-containment-{os.getpid()}"
    env = {**os.environ, "TPX_DATABASE_URL": url, "TPX_PORT": str(port), "TPX_ADMIN_TOKENS": admin_token,
           "TPX_INTROSPECTION_TOKENS": registry_token, "TPX_AMQP_PREFIX": prefix, "TPX_LOG_LEVEL": "warning"}
    processes = [
        start([TPX, "exchange"], env, "containment-exchange"),
        start([TPX, "revoker"], {**env, "TPX_OPS_PORT": str(free_port())}, "containment-revoker"),
    ]
    try:
        await wait_http(f"http://127.0.0.1:{port}/healthz")
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", trust_env=False, timeout=60) as http:

            conn = await asyncpg.connect(url)
            started = time.perf_counter()
            await conn.execute("UPDATE tokens SET revoked_at = now(), revocation_reason = 'baseline' "
                               "WHERE repository_key = 'baseline-org/other' AND revoked_at IS NULL")
            baseline = time.perf_counter() - started
            await conn.close()

            started = time.perf_counter()
            response = await http.post("/v1/admin/revocations", json={"repository": "incident-org/compromised"},
                                       headers={"Authorization": f"Bearer {admin_token}"})
            contained = time.perf_counter() - started
            response.raise_for_status()
            answer = response.json()
            registry = {"Authorization": f"Bearer {registry_token}"}
            active = [(await http.post("/v1/introspect", json={"token": t}, headers=registry)).json()["active"]
                      for t in sample]
            while True:
                state = (await http.get(f"/v1/admin/revocations/{answer['revocation_id']}",
                                        headers={"Authorization": f"Bearer {admin_token}"})).json()["revocation"]
                if state["status"] == "done":
                    break
                await asyncio.sleep(0.02)
            completed = time.perf_counter() - started
        conn = await asyncpg.connect(url)
        live = await conn.fetchval("SELECT count(*) FROM tokens WHERE repository_key = 'incident-org/compromised' "
                                   "AND revoked_at IS NULL")
        events = await conn.fetchval("SELECT count(*) FROM outbox WHERE type = 'dev.tpx.token.revoked'")
        completions = await conn.fetchval("SELECT count(*) FROM outbox WHERE type = 'dev.tpx.revocation.completed'")
        await conn.close()
    finally:
        stop(processes)
        await drop_database(DATABASE)
        await delete_amqp_objects(env, prefix)

    print(f"\n  baseline: bare SQL UPDATE of {args.tokens} rows        {baseline * 1000:8.1f} ms")
    print(f"  containment: API answer (all inactive everywhere)  {contained * 1000:8.1f} ms   "
          f"{contained / baseline:.2f}x baseline   first batch revoked {answer['revoked']} rows")
    print(f"  completion: every row revoked + events           {completed * 1000:8.1f} ms   "
          f"{completed / baseline:.2f}x baseline")
    print(f"  sampled introspections after the answer: {active.count(False)}/{len(active)} inactive")
    print(f"  rows still live: {live}; token.revoked events: {events}; revocation.completed events: {completions}")
    verdict = "PASS" if contained < 1.0 and live == 0 and not any(active) else "MISS"
    print(f"\n  {verdict}  {args.tokens} live tokens contained in under 1 s (measured {contained:.3f} s)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=10_000)
    asyncio.run(main(parser.parse_args()))
