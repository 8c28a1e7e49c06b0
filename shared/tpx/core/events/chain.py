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
from collections import OrderedDict
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


# Redeliveries (at-least-once publishing: a batch whose confirms were lost is published again) arrive
# within a few batches of the original; this many recent events are remembered to recognise them, so
# verifying a stream of any length takes constant memory.
REDELIVERY_WINDOW = 10_000


class ChainVerifier:
    """Checks a replayed range one event at a time, in arrival order; `feed` returns the report of the
    first broken link (and every later call returns it again), None while the chain holds.

    Without an `anchor` (the chainhash of the event before the range), the
    first event's own link is taken on trust, unless it is sequence 1, whose
    predecessor is the genesis value.
    """

    def __init__(self, anchor: bytes | None = None, window: int = REDELIVERY_WINDOW) -> None:
        self._previous_hash = anchor
        self._previous_sequence: int | None = None
        self._first: int | None = None
        self._window = window
        self._recent: OrderedDict[str, bytes] = OrderedDict()   # event id -> digest of its canonical form
        self.checked = 0
        self.broken: ChainReport | None = None

    @property
    def last_sequence(self) -> int | None:
        return self._previous_sequence

    def _fail(self, problem: str, sequence: int | None, event_id: str | None) -> ChainReport:
        self.broken = ChainReport(False, self.checked, self._first, self._previous_sequence, problem, sequence,
                                  event_id)
        return self.broken

    def feed(self, event: Mapping[str, Any]) -> ChainReport | None:
        if self.broken is not None:
            return self.broken
        sequence = int(event["sequence"])
        event_id = str(event.get("id"))
        claimed = event.get(CHAIN_ATTRIBUTE)
        # Encoded once: the canonical form gives the link, and with the claimed link the event's identity.
        canonical = encode({k: v for k, v in event.items() if k != CHAIN_ATTRIBUTE})
        digest = hashlib.sha256(canonical + str(claimed).encode()).digest()
        if event_id in self._recent:
            # Delivery is at least once: a redelivered event is the same bytes again, not tampering.
            if self._recent[event_id] == digest and self._previous_sequence is not None \
                    and sequence <= self._previous_sequence:
                return None
            return self._fail("modified: an event id appears twice with different content", sequence, event_id)
        if self._first is None:
            self._first = sequence
            if self._previous_hash is None and sequence == 1:
                self._previous_hash = GENESIS
        if claimed is None:
            return self._fail("the event carries no chainhash", sequence, event_id)
        if self._previous_sequence is not None:
            if sequence <= self._previous_sequence:
                return self._fail(f"reordered: sequence {sequence} arrived after {self._previous_sequence}",
                                  sequence, event_id)
            if sequence != self._previous_sequence + 1:
                return self._fail(f"missing: sequences {self._previous_sequence + 1}..{sequence - 1} are absent",
                                  self._previous_sequence + 1, None)
        if self._previous_hash is not None and link_encoded(self._previous_hash, canonical).hex() != claimed:
            return self._fail("modified: the event does not match its chainhash (its content or an earlier "
                              "event was changed)", sequence, event_id)
        self._recent[event_id] = digest
        if len(self._recent) > self._window:
            self._recent.popitem(last=False)
        self._previous_hash = bytes.fromhex(claimed)
        self._previous_sequence = sequence
        self.checked += 1
        return None

    def report(self) -> ChainReport:
        return self.broken or ChainReport(True, self.checked, self._first, self._previous_sequence)


def verify(events: Iterable[Mapping[str, Any]], anchor: bytes | None = None) -> ChainReport:
    """Check a replayed range in arrival order and name the first broken link (see ChainVerifier)."""
    verifier = ChainVerifier(anchor)
    for event in events:
        if verifier.feed(event) is not None:
            break
    return verifier.report()
