"""Every answer carries a request id, in the body and the X-Request-ID header, and no exception escapes
to the server: what the exchange's outermost middleware guarantees, on bare ASGI apps that fail.

Regression: an exception outside the routes' own handling (a bug, a database outage) was rendered by
Starlette's outermost error middleware, outside the request-id middleware, with `"request_id": null` and
no header, and was then re-raised to uvicorn, which logged a traceback per request.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import asyncpg
import pytest

from tpx.core.errors import Problem
from tpx.exchange import http
from tpx.exchange.http import MAX_HEADER_BYTES, RequestContextMiddleware, parse_json_object
from tests.support.processes import written_by_forked_child
from tests.unit.core.test_jose import AGREEMENT_CASES


EMPTY_BODY = [{"type": "http.request", "body": b"", "more_body": False}]


def answered(app, method: str = "GET", path: str = "/x", headers: list[tuple[bytes, bytes]] | None = None,
             body: list[dict[str, Any]] = EMPTY_BODY) -> tuple[int, dict[bytes, bytes], dict[str, Any]]:
    """One request through an ASGI app, its body given as ASGI messages; the status, headers and JSON
    body it answered. Whatever the app does, the call itself must not raise."""
    sent: list[dict[str, Any]] = []
    pending = list(body)

    async def receive() -> dict[str, Any]:
        return pending.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "raw_path": path.encode(), "root_path": "",
             "headers": headers or [], "query_string": b"", "scheme": "http", "server": ("127.0.0.1", 80),
             "client": ("127.0.0.1", 1234), "http_version": "1.1"}
    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    content = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], dict(start["headers"]), json.loads(content)


def run(app, headers: list[tuple[bytes, bytes]] | None = None) -> tuple[int, dict[bytes, bytes], dict[str, Any]]:
    """One GET through the request-context middleware around `app`."""
    return answered(RequestContextMiddleware(app, route_names={}), headers=headers)


async def bug(scope, receive, send):
    raise RuntimeError("a bug")


async def outage(scope, receive, send):
    raise asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle of operation")


@pytest.mark.parametrize(("app", "status", "code"), [(bug, 500, "internal"), (outage, 503, "unavailable")])
def test_an_exception_is_a_problem_with_the_request_id(app, status, code):
    answered, headers, body = run(app)
    assert (answered, body["code"]) == (status, code)
    assert body["request_id"] and headers[b"x-request-id"] == body["request_id"].encode()
    if status == 503:
        assert headers[b"retry-after"] == b"5"


def test_a_sane_incoming_request_id_is_kept():
    _, headers, body = run(bug, [(b"x-request-id", b"ci-run-1234-step-5")])
    assert body["request_id"] == "ci-run-1234-step-5" and headers[b"x-request-id"] == b"ci-run-1234-step-5"


def test_oversized_headers_are_refused_with_a_request_id():
    status, headers, body = run(bug, [(b"x-filler", b"a" * (MAX_HEADER_BYTES + 1))])
    assert (status, body["code"]) == (431, "headers_too_large")
    assert body["request_id"] and headers[b"x-request-id"] == body["request_id"].encode()


def test_an_exception_after_the_answer_started_is_not_answered_twice():
    async def half(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise RuntimeError("failed while streaming")

    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/x", "headers": [], "query_string": b""}
    asyncio.run(RequestContextMiddleware(half, route_names={})(scope, receive, send))  # does not raise
    assert [m["type"] for m in sent] == ["http.response.start"]


def test_readiness_is_degraded_only_after_the_listener_grace():
    from tpx.exchange.routes.ops import LISTENER_GRACE_SECONDS, listener_degraded

    assert listener_degraded(None, 1000.0, 30) is None
    assert listener_degraded(1000.0, 1000.0 + LISTENER_GRACE_SECONDS, 30) is None
    reason = listener_degraded(1000.0, 1012.0, 30)
    assert reason is not None and "12 s" in reason and "every 30 s" in reason


async def answer(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


def test_a_request_without_an_id_gets_a_new_random_one_each_time():
    ids = {run(answer)[1][b"x-request-id"] for _ in range(20)}
    assert len(ids) == 20 and all(re.fullmatch(rb"[0-9a-f]{32}", i) for i in ids)


@pytest.mark.parametrize(("raw", "fragment"), [
    (b'{"jwt":"a","jwt":"b"}', "appears twice"),
    (b'{"n":NaN}', "NaN"),
    (b'\xef\xbb\xbf{"jwt":"a"}', "BOM"),      # refused as json.loads refuses it
    (b'["jwt"]', "must be a JSON object"),
])
def test_a_body_that_is_not_one_strict_json_object_is_refused(raw, fragment):
    with pytest.raises(Problem) as refused:
        parse_json_object(raw)
    assert refused.value.code == "malformed_request" and fragment in refused.value.detail


def test_a_json_object_body_is_parsed():
    assert parse_json_object(b'{"jwt": "a", "n": [1, {"x": null}]}') == {"jwt": "a", "n": [1, {"x": None}]}


def _body_outcome(raw: bytes) -> Any:
    try:
        value = parse_json_object(raw)
        return value, json.dumps(value)   # json.dumps tells 1 from 1.0 and True
    except Problem as refusal:
        return refusal.code, refusal.detail


@pytest.mark.parametrize("raw", [*AGREEMENT_CASES, b'{"jwt":"a","jwt":"b"}', b'{"jwt":"a"}\n', b'{"jwt":"\\u0061"}',
                                 b'{"jwt":"a","packages":["p","p"],"lifetime_seconds":600}', b"\xff"])
def test_the_body_parser_reads_every_text_as_the_strict_parser_does(monkeypatch, raw):
    """The fast path (orjson, when it writes the text back byte for byte) never changes an outcome."""
    fast = _body_outcome(raw)
    monkeypatch.setattr(http, "round_trip", lambda data: None)
    assert fast == _body_outcome(raw)


def test_a_compact_body_takes_the_fast_parse(monkeypatch):
    """What clients send ({"jwt": ...} written compactly) is read without the strict parser's Python hooks."""
    monkeypatch.setattr(http, "_loads_body", None)   # the strict parser, unreachable
    assert parse_json_object(b'{"jwt":"eyJ.eyJ.c2ln","packages":["a"]}') == {"jwt": "eyJ.eyJ.c2ln", "packages": ["a"]}


def exchange_app_with(monkeypatch, hot_handler):
    """The exchange's own app class (its middleware stack, no lifespan), with test routes: `/boom` fails
    with a bug, `/v1/hot` is served as a hot route by `hot_handler`."""
    from starlette.routing import Route

    from tpx.exchange import app as exchange_app

    async def boom(request):
        raise RuntimeError("a bug")

    monkeypatch.setattr(exchange_app, "HOT_ROUTES", {("POST", "/v1/hot"): hot_handler})
    return exchange_app.ExchangeApp(routes=[Route("/boom", boom, methods=["POST"]),
                                            Route("/v1/hot", hot_handler, methods=["POST"])],
                                    exception_handlers={Problem: exchange_app._problem})


JSON_HEADERS = [(b"content-type", b"application/json")]
BODY = [{"type": "http.request", "body": b'{"a": 1}', "more_body": False}]


@pytest.mark.parametrize("path", ["/boom", "/v1/hot"])
def test_a_bug_in_any_route_of_the_exchange_app_is_a_problem_with_the_request_id(monkeypatch, path):
    """The app's stack has no Starlette ServerErrorMiddleware (it answered plain text and re-raised):
    a bug in a routed handler or a hot one is the request context's problem answer."""
    async def hot(request):
        raise RuntimeError("a bug")

    status, headers, body = answered(exchange_app_with(monkeypatch, hot), "POST", path, JSON_HEADERS, BODY)
    assert (status, body["code"]) == (500, "internal")
    assert body["request_id"] and headers[b"x-request-id"] == body["request_id"].encode()


def test_a_body_is_read_across_messages_and_bounded_across_them(monkeypatch):
    from tpx.exchange.http import JSONResponse, read_object

    async def echo(request):
        return JSONResponse(await read_object(request, 20))

    app = exchange_app_with(monkeypatch, echo)
    parts = [{"type": "http.request", "body": b'{"a":', "more_body": True},
             {"type": "http.request", "body": b"", "more_body": True},
             {"type": "http.request", "body": b' "b"}', "more_body": False}]
    assert answered(app, "POST", "/v1/hot", JSON_HEADERS, parts)[::2] == (200, {"a": "b"})
    too_long = [{"type": "http.request", "body": b'{"a": "' + b"x" * 10, "more_body": True},
                {"type": "http.request", "body": b"x" * 10 + b'"}', "more_body": False}]
    status, _, body = answered(app, "POST", "/v1/hot", JSON_HEADERS, too_long)
    assert (status, body["code"]) == (413, "request_too_large")
    gone = [{"type": "http.request", "body": b'{"a":', "more_body": True}, {"type": "http.disconnect"}]
    status, _, body = answered(app, "POST", "/v1/hot", JSON_HEADERS, gone)
    assert (status, body["code"]) == (400, "malformed_request") and "closed the connection" in body["detail"]


def test_request_ids_are_32_hex_digits_and_differ_in_a_forked_worker():
    from tpx.exchange.http import new_request_id

    assert re.fullmatch(r"[0-9a-f]{32}", new_request_id())
    theirs = written_by_forked_child(lambda: new_request_id().encode())   # what a worker forked now draws first
    assert theirs.decode() != new_request_id() and len({new_request_id() for _ in range(1000)}) == 1000


@pytest.mark.parametrize("content", [{"token": "tpx_x", "packages": ["a", "ü"]}, {}, {"n": 1.5, "nested": {"a": None}}])
def test_a_no_store_answer_is_starlettes_json_answer_with_cache_control(content):
    """The busiest routes' answer builds its headers itself: the same bytes and headers as the JSON answer
    with a Cache-Control header would have, in any order."""
    fast = http.NoStoreJSONResponse(content)
    reference = http.JSONResponse(content, headers={"Cache-Control": "no-store"})
    assert (fast.status_code, fast.body, fast.background) == (reference.status_code, reference.body, None)
    assert sorted(fast.raw_headers) == sorted(reference.raw_headers)
