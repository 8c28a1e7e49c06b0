"""The audit hash chain: each event commits to every event before it.

`chainhash(n) = SHA-256(chainhash(n-1) || canonical(event n without chainhash))`,
with 32 zero bytes before the first event. The canonical form is the
CloudEvent encoded with sorted keys and no whitespace (tpx.core.events.cloudevents.encode).
A modified event breaks its own link; a deleted one leaves a gap in `sequence`;
reordered events fail both. Only one relay assigns links at a time (it holds
the sequence lock), so the chain is a single line.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from tpx.core.events.cloudevents import encode

GENESIS = bytes(32)
CHAIN_ATTRIBUTE = "chainhash"


def link(previous: bytes, event: Mapping[str, Any]) -> bytes:
    body = {k: v for k, v in event.items() if k != CHAIN_ATTRIBUTE}
    return link_encoded(previous, encode(body))


def link_encoded(previous: bytes, canonical: bytes) -> bytes:
    """The link over an event already in canonical form (without its chainhash)."""
    return hashlib.sha256(previous + canonical).digest()


@dataclass(frozen=True)
class ChainReport:
    ok: bool
    checked: int
    first_sequence: int | None
    last_sequence: int | None
    problem: str | None = None
    broken_sequence: int | None = None
    broken_id: str | None = None

    def describe(self) -> str:
        if self.ok:
            span = f"sequences {self.first_sequence}..{self.last_sequence}" if self.checked else "no events"
            return f"OK: {self.checked} events verified ({span}); every link matches"
        return f"BROKEN at sequence {self.broken_sequence} (event {self.broken_id}): {self.problem}"


def verify(events: Iterable[Mapping[str, Any]], anchor: bytes | None = None) -> ChainReport:
    """Check a replayed range in arrival order and name the first broken link.

    Without an `anchor` (the chainhash of the event before the range), the
    first event's own link is taken on trust, unless it is sequence 1, whose
    predecessor is the genesis value.
    """
    previous_hash = anchor
    previous_sequence: int | None = None
    first: int | None = None
    checked = 0
    seen: dict[str, bytes] = {}
    for event in events:
        sequence = int(event["sequence"])
        event_id = str(event.get("id"))
        if event_id in seen:
            # Delivery is at least once: a redelivered event is the same bytes again, not tampering.
            if seen[event_id] == encode(event) and previous_sequence is not None and sequence <= previous_sequence:
                continue
            return ChainReport(False, checked, first, previous_sequence,
                               "modified: an event id appears twice with different content", sequence, event_id)
        seen[event_id] = encode(event)
        claimed = event.get(CHAIN_ATTRIBUTE)
        if first is None:
            first = sequence
            if previous_hash is None and sequence == 1:
                previous_hash = GENESIS
        if claimed is None:
            return ChainReport(False, checked, first, previous_sequence,
                               "the event carries no chainhash", sequence, str(event.get("id")))
        if previous_sequence is not None:
            if sequence <= previous_sequence:
                return ChainReport(False, checked, first, previous_sequence,
                                   f"reordered: sequence {sequence} arrived after {previous_sequence}",
                                   sequence, str(event.get("id")))
            if sequence != previous_sequence + 1:
                return ChainReport(False, checked, first, previous_sequence,
                                   f"missing: sequences {previous_sequence + 1}..{sequence - 1} are absent",
                                   previous_sequence + 1, None)
        if previous_hash is not None and link(previous_hash, event).hex() != claimed:
            return ChainReport(False, checked, first, previous_sequence,
                               "modified: the event does not match its chainhash (its content or an earlier "
                               "event was changed)", sequence, str(event.get("id")))
        previous_hash = bytes.fromhex(claimed)
        previous_sequence = sequence
        checked += 1
    return ChainReport(True, checked, first, previous_sequence)
