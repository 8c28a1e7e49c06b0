"""TPX_WORKERS > 1: any exchange process answers a scrape for all of them (prometheus multiprocess mode)."""

from __future__ import annotations

import re
from contextlib import asynccontextmanager
from typing import AsyncIterator

import httpx
import pytest

from tests.support.amqp import derived_prefix
from tests.support.processes import ServiceProcess, free_ports, service_env, wait_healthy

pytestmark = pytest.mark.integration
REQUESTS = 60


@asynccontextmanager
async def two_exchange_processes(settings, amqp_prefix: str, tmp_path, tag: str, **env: str
                                 ) -> AsyncIterator[tuple[ServiceProcess, str, str]]:
    """`tpx exchange` with TPX_WORKERS=2 on the run's database; (the child, public URL, ops URL). It must
    stop cleanly on SIGTERM."""
    port, ops_port = free_ports(2)
    child = await ServiceProcess.start(f"exchange-{tag}", "exchange", service_env({
        "TPX_DATABASE_URL": settings.database_url, "TPX_AMQP_URL": settings.amqp_url,
        "TPX_AMQP_PREFIX": derived_prefix(amqp_prefix, tag), "TPX_PORT": str(port), "TPX_OPS_PORT": str(ops_port),
        "TPX_WORKERS": "2", "TPX_DB_POOL_MIN": "1", "TPX_DB_POOL_MAX": "2", "TPX_LOG_LEVEL": "warning",
        "TPX_INSECURE_LOOPBACK_ISSUERS": "1", **env}), tmp_path)
    try:
        yield child, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{ops_port}"
    finally:
        await child.stop()
    assert child.returncode == 0, child.describe()


def malformed_count(text: str) -> float:
    match = re.search(r'^tpx_exchanges_total\{code="malformed_request"\} ([0-9.e+]+)$', text, re.M)
    return float(match[1]) if match else 0.0


async def test_every_scrape_counts_the_requests_of_every_process(settings, db, amqp_prefix, tmp_path):
    async with two_exchange_processes(settings, amqp_prefix, tmp_path, "workers",
                                      TPX_RATE_FAILED_PER_MINUTE="0") as (child, base, _ops):
        async with httpx.AsyncClient(trust_env=False, timeout=10) as http:
            await wait_healthy(http, child, f"{base}/healthz")
            before = malformed_count((await http.get(f"{base}/metrics")).text)
            for _ in range(REQUESTS):   # a new connection each time: the kernel spreads them over both processes
                async with httpx.AsyncClient(trust_env=False, timeout=10) as once:
                    response = await once.post(f"{base}/v1/exchange", content=b"{not json",
                                               headers={"Content-Type": "application/json"})
                    assert response.status_code == 400
            scrapes = []
            for _ in range(8):
                async with httpx.AsyncClient(trust_env=False, timeout=10) as once:
                    scrapes.append(malformed_count((await once.get(f"{base}/metrics")).text) - before)
        assert scrapes == [REQUESTS] * 8, f"each scrape must count all {REQUESTS}: {scrapes}\n{child.describe()}"


async def test_ops_separate_moves_metrics_and_the_readiness_report_off_the_public_port(settings, db, amqp_prefix,
                                                                                      tmp_path):
    async with two_exchange_processes(settings, amqp_prefix, tmp_path, "ops",
                                      TPX_OPS_SEPARATE="1") as (child, public, ops):
        async with httpx.AsyncClient(trust_env=False, timeout=10) as http:
            await wait_healthy(http, child, f"{public}/healthz")
            await wait_healthy(http, child, f"{ops}/healthz")
            hidden = await http.get(f"{public}/metrics")
            assert hidden.status_code == 404 and "ops port" in hidden.json()["detail"]
            brief = await http.get(f"{public}/readyz")
            assert set(brief.json()) == {"status"}
            for _ in range(4):   # whichever process answers
                async with httpx.AsyncClient(trust_env=False, timeout=10) as once:
                    scraped = await once.get(f"{ops}/metrics")
                    report = await once.get(f"{ops}/readyz")
                assert scraped.status_code == 200 and 'tpx_build_info{service="exchange"' in scraped.text
                assert {"status", "reasons", "dependencies", "issuers"} <= set(report.json())
                assert report.json()["dependencies"]["database"] == "ok"
