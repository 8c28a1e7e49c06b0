"""Fixtures of the CI client's tests: the runner's ID token endpoint on loopback."""

from __future__ import annotations

import pytest

from tests.support.actions import ActionsTokenEndpoint
from tests.support.servers import serve


@pytest.fixture
async def actions(repo):
    endpoint = ActionsTokenEndpoint(repo)
    async with serve(endpoint.app) as url:
        endpoint.url = url
        yield endpoint
