"""Database failover: the primary is lost under load and its synchronous standby takes over.

Both PostgreSQL servers are the test's own (tests.support.postgres_cluster);
the machine's shared instance is never touched. The services reach the
primary through a TCP proxy, which is pointed at the promoted standby, the way
a virtual IP or a DNS name moves in a real failover.
"""

from __future__ import annotations

import json

import pytest

from tests.faults import scenarios
from tests.faults.scenarios import CI, FAULT_ENV, FAULT_SERVICES
from tests.support.postgres_cluster import replicated_postgres
from tests.support.stack import running_stack

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.timeout(300)]


async def test_database_failover_to_a_synchronous_standby():
    async with replicated_postgres() as pair:
        async with running_stack(FAULT_SERVICES, name="failover", proxied=True, pg_url=pair.primary.url,
                                 env=FAULT_ENV) as stack:
            try:
                figures = await scenarios.failover(stack, CI, pair)
            except AssertionError:
                print(f"\nservice logs:\n\n{stack.logs()}")
                raise
    print(f"\nfailover: {json.dumps(figures, default=str)}")
