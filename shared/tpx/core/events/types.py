"""Event types (api.md section 5). Routing key = type without the `dev.tpx.` prefix."""

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


def routing_key(event_type: str) -> str:
    return event_type.removeprefix(TYPE_PREFIX)
