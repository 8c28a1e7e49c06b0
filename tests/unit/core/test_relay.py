"""The relay's message for an outbox row: the body it kept from sequencing, only if it is this row's.

Regression: the relay keeps the encoded event from its sequencing step for the
publish step. A sequencing transaction that rolled back, or another leader that
numbered the row meanwhile, left a kept body with another sequence and chain
link, and the relay published those bytes for a row the database links otherwise.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone

from tpx.core.events import chain
from tpx.core.events.cloudevents import encode, to_cloudevent
from tpx.core.relay.relay import _message


def row(sequence: int, chainhash: bytes) -> dict:
    return {"event_id": uuid.UUID(int=7), "type": "dev.tpx.token.issued", "source": "urn:tpx:exchange",
            "subject": "s", "time": datetime(2026, 12, 4, tzinfo=timezone.utc), "data": {"token_id": "t"},
            "sequence": sequence, "chainhash": chainhash}


def kept_body(sequence: int, previous: bytes) -> tuple[bytes, bytes]:
    """What sequencing keeps: the canonical event with its link in front, and the link."""
    canonical = encode(to_cloudevent({**row(sequence, b""), "chainhash": None}))
    link = chain.link_encoded(previous, canonical)
    return b'{"chainhash":"' + link.hex().encode() + b'",' + canonical[1:], link


def test_the_kept_body_is_published_when_it_is_this_rows():
    body, link = kept_body(5, bytes(32))
    assert _message("tpx.events", row(5, link), body).body == body


def test_a_kept_body_of_another_numbering_is_rebuilt_from_the_row():
    stale, _ = kept_body(5, bytes(32))
    _, link = kept_body(9, b"\x01" * 32)  # another leader gave the row sequence 9
    published = json.loads(_message("tpx.events", row(9, link), stale).body)
    assert published["sequence"] == f"{9:020d}" and published["chainhash"] == link.hex()


def test_without_a_kept_body_the_row_is_encoded():
    _, link = kept_body(3, bytes(32))
    assert json.loads(_message("tpx.events", row(3, link)).body)["chainhash"] == link.hex()
