"""The chain's canonical form is RFC 8785 (JCS), checked against an independent implementation."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
import rfc8785

from tpx.core.events import chain
from tpx.core.events.cloudevents import encode
from tests.unit.core.events.test_schemas import samples

DOC = Path(__file__).resolve().parents[4] / "docs" / "events" / "chain.md"


@pytest.mark.parametrize("label, event", samples(), ids=[label for label, _ in samples()])
def test_every_event_type_encodes_as_rfc_8785(label, event):
    assert encode(event) == rfc8785.dumps(event)


@pytest.mark.parametrize("text", ["café — naïve", "tab\there, newline\n, nul \x00, unit \x1f, del \x7f",
                                  "quote \" backslash \\ slash /", "emoji 😀 and CJK 漢字", "\u2028\u2029",
                                  "surrogate-free astral \U0001F600"])
def test_strings_encode_as_rfc_8785(text):
    event = {"data": {"reason": text, "n": [0, 1, -1, 2**53 - 1, -(2**53 - 1)], "ok": True, "none": None}, "id": "x"}
    assert encode(event) == rfc8785.dumps(event)


def test_the_worked_example_in_the_docs_recomputes():
    text = DOC.read_text()
    canonical = re.search(r"\n   ```\n   (\{.*\})\n   ```", text).group(1).encode()
    expected = re.search(r"lower-case hex:\n   `([0-9a-f]{64})`", text).group(1)
    event = json.loads(re.search(r"```json\n(.*?)\n```", text, re.S).group(1))
    assert event.pop(chain.CHAIN_ATTRIBUTE) == expected
    assert encode(event) == canonical == rfc8785.dumps(event)
    assert f"{len(canonical)} bytes" in text and f"{len(canonical) + 32} bytes" in text
    assert hashlib.sha256(chain.GENESIS + canonical).hexdigest() == expected
    assert chain.link(chain.GENESIS, {**event, chain.CHAIN_ATTRIBUTE: expected}).hex() == expected


def standard_library_form(event) -> bytes:
    return json.dumps(event, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode("utf-8")


@pytest.mark.parametrize("label, event", samples(), ids=[label for label, _ in samples()])
def test_the_encoding_is_byte_for_byte_the_one_chains_were_built_with(label, event):
    """encode() runs on orjson; links made before (standard library) must still verify."""
    assert encode(event) == standard_library_form(event)


def test_a_value_orjson_refuses_encodes_as_before():
    event = {"data": {"big": 2**70, "nested": [{"z": 1, "a": "é\x1f"}]}, "id": "x"}
    assert encode(event) == standard_library_form(event) == b'{"data":{"big":1180591620717411303424,"nested":[{"a":"\xc3\xa9\\u001f","z":1}]},"id":"x"}'


def test_a_value_json_has_no_form_for_is_refused_as_before():
    import datetime
    with pytest.raises(TypeError):
        encode({"time": datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)})
