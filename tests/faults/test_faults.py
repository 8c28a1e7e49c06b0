"""The fault suite's CI slice: every scenario of tests/faults/scenarios.py at the CI scale.

Four services run as separate processes behind TCP proxies to PostgreSQL and
RabbitMQ (tests.support.stack); test_failover.py runs its own pair of
PostgreSQL servers. `python -m tests.faults.soak` runs the same scenarios at
the soak scale and prints their figures; here they are printed too (pytest -s).
"""

from __future__ import annotations

import json

import pytest

from tests.conftest import AMQP_URL
from tests.faults import scenarios
from tests.faults.scenarios import CI, FAULT_ENV, FAULT_SERVICES
from tests.support.stack import logs_on_failure, running_stack

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
async def stack():
    async with running_stack(FAULT_SERVICES, name="faults", proxied=True, env=FAULT_ENV) as running:
        yield running


@pytest.fixture(autouse=True)
def show_logs_on_failure(request, stack):
    with logs_on_failure(request, stack):
        yield


def show(name: str, figures: dict) -> None:
    print(f"\n{name}: {json.dumps(figures, default=str)}")


async def test_broker_cut_under_load(stack):
    show("broker cut", await scenarios.broker_cut(stack, CI))


async def test_database_cut_under_load(stack):
    show("database cut", await scenarios.database_cut(stack, CI))


async def test_short_database_cuts_under_load(stack):
    show("short database cuts", await scenarios.short_database_cuts(stack, CI))


async def test_changes_made_during_an_outage_are_in_effect_within_a_second_of_its_end(stack):
    show("caches after an outage", await scenarios.caches_after_outage(stack, CI))


async def test_idp_down_warm_and_cold(stack):
    show("IdP down", await scenarios.idp_down(stack, CI))


async def test_seeded_fuzz(stack):
    show("fuzz", await scenarios.fuzz(stack, CI))


async def test_kill_each_process_under_load(stack):
    show("kill -9 each process", await scenarios.kill_each_process(stack, CI))


async def test_kill_in_a_bulk_revocation(stack):
    show("kill -9 in a bulk revocation", await scenarios.kill_in_bulk_revocation(stack, CI))


async def test_audit_chain_verifies_after_every_fault(stack):
    show("final", await scenarios.final_checks(stack, AMQP_URL))
