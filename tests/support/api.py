"""Calls the integration tests make of the exchange's API, written once."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import httpx

from tests.conftest import ADMIN_TOKEN, INTROSPECTION_TOKEN

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
INTROSPECT = {"Authorization": f"Bearer {INTROSPECTION_TOKEN}"}


async def add_publisher(client: httpx.AsyncClient, body: dict[str, Any], expect: int = 201) -> dict[str, Any]:
    """POST the publisher, check the status; the publisher (or, for a refusal, the problem body)."""
    response = await client.post("/v1/admin/publishers", json=body, headers=ADMIN)
    assert response.status_code == expect, response.text
    return response.json().get("publisher", response.json())


async def get_publisher(client: httpx.AsyncClient, publisher_id: str) -> dict[str, Any]:
    response = await client.get(f"/v1/admin/publishers/{publisher_id}", headers=ADMIN)
    assert response.status_code == 200, response.text
    return response.json()["publisher"]


async def exchange(client: httpx.AsyncClient, jwt: str) -> httpx.Response:
    return await client.post("/v1/exchange", json={"jwt": jwt})


async def introspect(client: httpx.AsyncClient, token: str) -> dict:
    response = await client.post("/v1/introspect", json={"token": token}, headers=INTROSPECT)
    assert response.status_code == 200, response.text
    return response.json()


def problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The problem body of a refusal, after checking its status and code."""
    assert response.status_code == status, response.text
    body = response.json()
    assert body["code"] == code, body
    return body


def replay_key(jwt: str) -> str:
    """What tpx stores against replay for a token without jti (Google, CircleCI): the SHA-256 of its decoded
    payload, computed here independently of tpx.exchange.verification."""
    payload = jwt.split(".")[1]
    return "sha256:" + hashlib.sha256(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))).hexdigest()
