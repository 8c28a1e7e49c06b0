"""Events: what one is, and every type tpx emits (api.md section 5).

The routing key is the type without the `dev.tpx.` prefix. Each type has a
builder in `tpx.core.events.builders` and a JSON Schema in `schemas/`.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import msgspec

from tpx.core.ids import new_id

TYPE_PREFIX = "dev.tpx."

TOKEN_ISSUED = "dev.tpx.token.issued"
TOKEN_REVOKED = "dev.tpx.token.revoked"
TOKEN_EXPIRED = "dev.tpx.token.expired"
EXCHANGE_DENIED = "dev.tpx.exchange.denied"
EXCHANGE_ENVIRONMENT_UNPINNED = "dev.tpx.exchange.environment_unpinned"
PUBLISHER_CREATED = "dev.tpx.publisher.created"
PUBLISHER_DELETED = "dev.tpx.publisher.deleted"
PUBLISHER_BOUND = "dev.tpx.publisher.bound"
ISSUER_CREATED = "dev.tpx.issuer.created"
ISSUER_UPDATED = "dev.tpx.issuer.updated"
ISSUER_DELETED = "dev.tpx.issuer.deleted"
ISSUER_KEYS_ROTATED = "dev.tpx.issuer.keys_rotated"
REVOCATION_REQUESTED = "dev.tpx.revocation.requested"  # a rule left pending for the revoker to finish
REVOCATION_COMPLETED = "dev.tpx.revocation.completed"

# The `source` of events, by the component that writes them.
EXCHANGE_SOURCE = "urn:tpx:exchange"
JWKS_REFRESHER_SOURCE = "urn:tpx:jwks-refresher"
REVOKER_SOURCE = "urn:tpx:revoker"


class Event(msgspec.Struct, frozen=True):
    """An event before it enters the outbox; the relay adds `sequence` and the chain link."""

    type: str
    data: dict[str, Any]
    subject: str | None = None
    id: str = msgspec.field(default_factory=new_id)  # time-ordered: the outbox's index grows at its edge
    time: datetime = msgspec.field(default_factory=lambda: datetime.now(timezone.utc))


def routing_key(event_type: str) -> str:
    return event_type.removeprefix(TYPE_PREFIX)
