"""Calls the integration tests make of the exchange's API, written once."""

from __future__ import annotations

import httpx

from tests.conftest import INTROSPECTION_TOKEN

INTROSPECT = {"Authorization": f"Bearer {INTROSPECTION_TOKEN}"}


async def introspect(client: httpx.AsyncClient, token: str) -> dict:
    response = await client.post("/v1/introspect", json={"token": token}, headers=INTROSPECT)
    assert response.status_code == 200, response.text
    return response.json()
