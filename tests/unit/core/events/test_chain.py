"""The audit hash chain: verification names the first broken link."""

from __future__ import annotations

import copy

import pytest

from tpx.core.events import chain


def make_events(count: int, start: int = 1) -> list[dict]:
    previous = chain.GENESIS
    events = []
    for sequence in range(1, start + count):
        event = {"specversion": "1.0", "id": f"id-{sequence}", "source": "urn:tpx:test", "type": "dev.tpx.token.issued",
                 "time": "2026-11-27T00:00:00.000000Z", "datacontenttype": "application/json",
                 "data": {"token_id": f"t{sequence}", "packages": ["foo"]}, "sequence": f"{sequence:020d}"}
        previous = chain.link(previous, event)
        event["chainhash"] = previous.hex()
        if sequence >= start:
            events.append(event)
    return events


def test_intact_chain_verifies_from_genesis():
    report = chain.verify(make_events(10))
    assert report.ok and report.checked == 10 and (report.first_sequence, report.last_sequence) == (1, 10)


def test_a_range_in_the_middle_verifies_with_its_first_link_as_anchor():
    assert chain.verify(make_events(5, start=20)).ok


def test_modified_event_is_named():
    events = make_events(6)
    events[3]["data"]["packages"] = ["evil"]
    report = chain.verify(events)
    assert not report.ok and report.broken_sequence == 4 and "modified" in report.problem


def test_modified_first_event_of_genesis_range_is_detected():
    events = make_events(3)
    events[0]["data"]["packages"] = ["evil"]
    assert chain.verify(events).broken_sequence == 1


def test_recomputed_hash_after_modification_breaks_the_next_link():
    events = make_events(6)
    events[2]["data"]["packages"] = ["evil"]
    events[2]["chainhash"] = chain.link(bytes.fromhex(events[1]["chainhash"]), events[2]).hex()
    report = chain.verify(events)
    assert not report.ok and report.broken_sequence == 4


def test_deleted_event_is_named():
    events = make_events(6)
    del events[2]
    report = chain.verify(events)
    assert not report.ok and report.broken_sequence == 3 and "missing" in report.problem


@pytest.mark.parametrize("swap", [(1, 2), (0, 5)])
def test_reordered_events_are_named(swap):
    events = make_events(6)
    a, b = swap
    events[a], events[b] = events[b], events[a]
    report = chain.verify(events)
    assert not report.ok and ("reordered" in report.problem or "missing" in report.problem or "modified" in report.problem)


def test_an_event_without_a_link_fails():
    events = make_events(3)
    stripped = copy.deepcopy(events)
    del stripped[1]["chainhash"]
    assert not chain.verify(stripped).ok


def test_a_redelivered_event_is_not_tampering():
    events = make_events(5)
    replayed = events[:3] + [dict(events[1]), dict(events[2])] + events[3:]
    assert chain.verify(replayed).ok


def test_a_repeated_id_with_other_content_is_named():
    events = make_events(5)
    forged = dict(events[1])
    forged["data"] = {"token_id": "evil", "packages": ["x"]}
    report = chain.verify(events[:3] + [forged] + events[3:])
    assert not report.ok and "twice" in report.problem
