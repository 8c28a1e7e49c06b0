"""Outbox rows as CloudEvents 1.0 in structured JSON mode (api.md section 5).

The whole event travels in the message body, so an auditor replaying the
stream needs nothing from the AMQP envelope. `sequence` follows the
CloudEvents *sequence* extension, which is a string: zero-padding it to 20
digits (enough for any bigint) makes string order equal numeric order, so
consumers can compare sequences without parsing them.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any, Mapping

SPEC_VERSION = "1.0"
CONTENT_TYPE = "application/cloudevents+json"
DATA_CONTENT_TYPE = "application/json"
SEQUENCE_DIGITS = 20


def format_sequence(sequence: int) -> str:
    if sequence < 0:
        raise ValueError(f"an event sequence is never negative, got {sequence}")
    return f"{sequence:0{SEQUENCE_DIGITS}d}"


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC with a 'Z': one spelling per instant, whatever the source zone."""
    if moment.tzinfo is None:
        raise ValueError("an event time must be timezone-aware")
    return moment.astimezone(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def to_cloudevent(row: Mapping[str, Any]) -> dict[str, Any]:
    """Build the event from an outbox row (a record or mapping with the outbox columns)."""
    if row["sequence"] is None:
        raise ValueError("an outbox row is published only once the relay has given it a sequence")
    data = row["data"]
    if isinstance(data, str):  # a connection without the jsonb codec returns the raw text
        data = json.loads(data)
    event: dict[str, Any] = {
        "specversion": SPEC_VERSION,
        "id": str(row["event_id"]),
        "source": row["source"],
        "type": row["type"],
        "time": format_time(row["time"]),
        "datacontenttype": DATA_CONTENT_TYPE,
        "data": data,
        "sequence": format_sequence(row["sequence"]),
    }
    if row["subject"] is not None:
        event["subject"] = row["subject"]
    chainhash = row.get("chainhash") if hasattr(row, "get") else None
    if chainhash is not None:
        event["chainhash"] = bytes(chainhash).hex()
    return event


def encode(event: Mapping[str, Any]) -> bytes:
    """Compact JSON with sorted keys: the same event always encodes to the same bytes."""
    return json.dumps(event, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode("utf-8")
