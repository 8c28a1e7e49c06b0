"""tpx.core.relay.publish_frames: pamqp's bytes for every publish, built directly where it can."""

from __future__ import annotations

import datetime
import itertools
import random

import pytest
from pamqp.commands import Basic

from tpx.core.relay import publish_frames as module
from tpx.core.relay.publish_frames import pamqp_frames, publish_frames

UTC = datetime.timezone.utc
HANDLED = {
    "content_type": "application/cloudevents+json",
    "delivery_mode": 2,
    "message_id": "0190f3c2-aaaa-7bbb-8ccc-123456789abc",
    "timestamp": datetime.datetime(2026, 12, 6, 3, 0, 0, 987654, tzinfo=UTC),
    "message_type": "dev.tpx.token.issued",
    "app_id": "tpx",
}


def assert_built_directly_as_pamqp(monkeypatch, *publish) -> None:
    """publish_frames(*publish) gives pamqp's bytes without handing anything to pamqp."""
    expected = pamqp_frames(*publish)
    monkeypatch.setattr(module, "pamqp_frames", None)   # the direct path only
    assert publish_frames(*publish) == expected


@pytest.mark.parametrize("present", [combo for n in range(len(HANDLED) + 1)
                                     for combo in itertools.combinations(HANDLED, n)])
def test_every_set_of_the_relays_properties_marshals_as_pamqp_does(present, monkeypatch):
    properties = Basic.Properties(**{name: HANDLED[name] for name in present})
    assert_built_directly_as_pamqp(monkeypatch, 1, "tpx.events", "token.issued", b'{"id":"x"}', properties, 131_072)


def test_empty_strings_are_left_out_as_pamqp_leaves_them(monkeypatch):
    properties = Basic.Properties(**{**HANDLED, "content_type": "", "app_id": ""})   # cluster_id is "" too
    assert_built_directly_as_pamqp(monkeypatch, 1, "e", "k", b"b", properties, 10)


@pytest.mark.parametrize("size", [0, 1, 99, 100, 101, 350])
def test_bodies_are_cut_into_frames_as_pamqp_cuts_them(size, monkeypatch):
    properties = Basic.Properties(**HANDLED)
    assert_built_directly_as_pamqp(monkeypatch, 7, "x", "y", random.Random(size).randbytes(size), properties, 100)


@pytest.mark.parametrize("moment", [
    datetime.datetime(2026, 1, 1, 0, 0, 0, 999999),                                   # naive: taken as UTC
    datetime.datetime(2026, 6, 1, 12, 0, 0, tzinfo=datetime.timezone(datetime.timedelta(hours=-7))),
    datetime.datetime(1970, 1, 1, tzinfo=UTC),
])
def test_timestamps_are_whole_seconds_as_pamqp_gives_them(moment, monkeypatch):
    properties = Basic.Properties(**{**HANDLED, "timestamp": moment})
    assert_built_directly_as_pamqp(monkeypatch, 1, "e", "k", b"b", properties, 10)


@pytest.mark.parametrize("exchange, routing_key, extra", [
    ("events", "token.émis", {}),                                  # a non-ASCII short string
    ("", "", {}),
    ("e", "k" * 255, {}),                                           # the longest short string
    ("e", "k", {"headers": {"a": 1}, "priority": 5, "correlation_id": "c", "reply_to": "r",
                "expiration": "1000", "user_id": "guest", "content_encoding": "gzip"}),   # left to pamqp
])
def test_other_messages_marshal_as_pamqp_does(exchange, routing_key, extra):
    properties = Basic.Properties(**{**HANDLED, **extra})
    assert publish_frames(1, exchange, routing_key, b"body", properties, 1000) == \
        pamqp_frames(1, exchange, routing_key, b"body", properties, 1000)


def test_a_short_string_beyond_255_bytes_is_refused_as_pamqp_refuses_it():
    properties = Basic.Properties(**HANDLED)
    with pytest.raises(Exception) as ours:
        publish_frames(1, "e", "k" * 256, b"b", properties, 10)
    with pytest.raises(Exception) as theirs:
        pamqp_frames(1, "e", "k" * 256, b"b", properties, 10)
    assert type(ours.value) is type(theirs.value)


@pytest.mark.parametrize("exchange", ["événements", "x" * 128])
def test_an_exchange_name_pamqp_refuses_is_refused(exchange):
    properties = Basic.Properties(**HANDLED)
    with pytest.raises(ValueError, match="exchange"):
        publish_frames(1, exchange, "k", b"b", properties, 10)
