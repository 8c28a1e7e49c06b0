"""The fault suite in soak mode: every scenario at full size, with its figures printed.

    .venv/bin/python -m tests.faults.soak                 # everything, about 30 minutes
    .venv/bin/python -m tests.faults.soak --only fuzz --only "broker cut"
    .venv/bin/python -m tests.faults.soak --scale ci      # the CI slice, as a quick look
    .venv/bin/python -m tests.faults.soak --json soak.json

PostgreSQL and RabbitMQ must run on their default local ports (as for
`make test`); the stack gets its own database and AMQP prefix and removes them
afterwards. A scenario that breaks a guarantee is reported with its figures
and the run goes on; the exit code is 1 if any did.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
import traceback
from typing import Any

from tests.conftest import AMQP_URL
from tests.faults import scenarios
from tests.faults.scenarios import CI, FAULT_ENV, FAULT_SERVICES, SCENARIOS, SOAK, Scale
from tests.support.postgres_cluster import replicated_postgres
from tests.support.stack import running_stack

FAILOVER = "database failover"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.faults.soak", description=__doc__.split("\n\n")[0])
    names = [*SCENARIOS, FAILOVER]
    parser.add_argument("--only", action="append", choices=names, metavar="SCENARIO",
                        help=f"run only this scenario (repeatable): {', '.join(names)}")
    parser.add_argument("--scale", choices=("soak", "ci"), default="soak")
    parser.add_argument("--json", help="also write every scenario's figures to this file")
    return parser.parse_args(argv)


def report(name: str, figures: dict[str, Any] | None, seconds: float, error: str | None) -> None:
    state = "FAILED" if error else "ok"
    print(f"\n==> {name}: {state} ({seconds:.0f} s)", flush=True)
    if error:
        print(error, flush=True)
    elif figures is not None:
        print(json.dumps(figures, indent=2, default=str), flush=True)


async def run(args: argparse.Namespace) -> int:
    scale: Scale = SOAK if args.scale == "soak" else CI
    chosen = args.only or [*SCENARIOS, FAILOVER]
    results: dict[str, Any] = {}
    failed: list[str] = []

    async def one(name: str, call) -> None:
        print(f"\n--> {name} ({scale.name} scale) ...", flush=True)
        started = time.monotonic()
        try:
            figures = await call()
        except Exception as exc:  # noqa: BLE001 - report it and go on with the next scenario
            failed.append(name)
            error = str(exc) if isinstance(exc, AssertionError) else traceback.format_exc()
            results[name] = {"failed": error}
            report(name, None, time.monotonic() - started, error)
            return
        results[name] = figures
        report(name, figures, time.monotonic() - started, None)

    in_stack = [name for name in chosen if name in SCENARIOS]
    if in_stack:
        async with running_stack(FAULT_SERVICES, name="soak", proxied=True, env=FAULT_ENV) as stack:
            print(f"stack up: {', '.join(f'{n} (pid {p.pid})' for n, p in stack.processes.items())}; "
                  f"logs in {stack.log_dir}", flush=True)
            for name in in_stack:
                if name == "rss soak" and not scale.soak_seconds:
                    continue
                await one(name, lambda name=name: SCENARIOS[name](stack, scale))
            await one("audit chain", lambda: scenarios.final_checks(stack, AMQP_URL))
    if FAILOVER in chosen:
        async def failover() -> dict[str, Any]:
            async with replicated_postgres() as pair:
                async with running_stack(FAULT_SERVICES, name="failover", proxied=True, pg_url=pair.primary.url,
                                         env=FAULT_ENV) as stack:
                    return await scenarios.failover(stack, scale, pair)

        await one(FAILOVER, failover)

    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(results, out, indent=2, default=str)
    print(f"\n{len(results) - len(failed)} of {len(results)} scenarios held"
          + (f"; FAILED: {', '.join(failed)}" if failed else ""), flush=True)
    return 1 if failed else 0


async def run_until_signalled(args: argparse.Namespace) -> int:
    """SIGTERM or Ctrl-C stops the soak like an error would: the services are stopped and what the run
    made on PostgreSQL and RabbitMQ is deleted before it exits."""
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, task.cancel)
    try:
        return await run(args)
    except asyncio.CancelledError:
        print("\nstopped; the stack was taken down", flush=True)
        return 130


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(run_until_signalled(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
