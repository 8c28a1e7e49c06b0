"""HTTP edges shared by every route: request ids, bounded bodies, problem responses.

Bodies are refused by their declared length before any byte is read, and
again while streaming, so an oversized or endless body never reaches a parser.
"""

from __future__ import annotations

import contextvars
import random
import re
import time
from typing import Any
from urllib.parse import parse_qsl

import msgspec
import structlog
from starlette import responses
from starlette.requests import Request
from starlette.responses import Response

from tpx.core.db.pool import UNAVAILABLE_ERRORS
from tpx.core.errors import Problem
from tpx.core.inputs import invalid
from tpx.core.jose.strict_json import loads_with, round_trip
from tpx.core.logging import get_logger
from tpx.core.metrics import HTTP_LATENCY, Children
from tpx.core.outages import DATABASE

log = get_logger("tpx.exchange.http")
request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
_REQUEST_ID_RE = re.compile(rb"[A-Za-z0-9._:-]{8,128}")
JSON_TYPES = ("application/json",)
MAX_HEADER_COUNT = 100
MAX_HEADER_BYTES = 16 * 1024
FORM_TYPE = "application/x-www-form-urlencoded"
_LATENCY = Children(HTTP_LATENCY)   # by (route template, method, status)


class RequestContextMiddleware:
    """Per request: a request id (a sane incoming X-Request-ID or a new one) bound to the logs and
    echoed back, the latency recorded by route template (never the raw path, which a client
    controls), method and status, and the last word on failures: an exception that escapes the app
    (a bug, a dependency outage) becomes a problem answer with the request id, logged once, and never
    reaches the server. One middleware for all of it, since every layer costs on the hot path."""

    def __init__(self, app, route_names: dict) -> None:
        self.app = app
        self.route_names = route_names

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = scope["headers"]
        incoming = next((v for k, v in headers if k == b"x-request-id"), None)
        request_id = incoming.decode() if incoming and _REQUEST_ID_RE.fullmatch(incoming) else new_request_id()
        token = request_id_var.set(request_id)
        structlog.contextvars.bind_contextvars(request_id=request_id)
        header = (b"x-request-id", request_id.encode())
        status = 0

        async def send_with_context(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), header]
            await send(message)

        try:
            if len(headers) > MAX_HEADER_COUNT or sum(len(k) + len(v) for k, v in headers) > MAX_HEADER_BYTES:
                # uvicorn's httptools parser has no header limit of its own: refuse before any route runs.
                await problem_response(Problem(
                    "headers_too_large", f"the request headers exceed {MAX_HEADER_COUNT} fields or "
                                         f"{MAX_HEADER_BYTES} bytes; send fewer or smaller headers"),
                )(scope, receive, send_with_context)
                return
            try:
                await self.app(scope, receive, send_with_context)
            except Exception as exc:  # noqa: BLE001 - the last word: answer, log once, never re-raise
                problem = _unexpected(exc, scope)
                if status == 0:
                    await problem_response(problem)(scope, receive, send_with_context)
        finally:
            structlog.contextvars.unbind_contextvars("request_id")
            request_id_var.reset(token)
            route = self.route_names.get(scope.get("endpoint"), "unmatched")
            _LATENCY[route, scope["method"] if route != "unmatched" else "other", status or 500].observe(
                time.perf_counter() - started)


def new_request_id() -> str:
    """128 random bits as 32 hex digits, the shape uuid4().hex has. From `random`, not the kernel: a request
    id only correlates log lines and answers, so it needs to be unique, not unguessable, and a getrandom
    call per request was the costliest line of a trivial request (docs/decisions.md, "Performance levers").
    `random` reseeds itself in a forked child, so worker processes draw different ids."""
    return f"{random.getrandbits(128):032x}"


def _unexpected(exc: Exception, scope) -> Problem:
    """What an exception that escaped the app means for the client; logged here, once."""
    path = scope.get("path", "")[:200]
    if isinstance(exc, UNAVAILABLE_ERRORS):
        DATABASE.failed(exc, path=path)
        return Problem("unavailable", "the database is not reachable right now; retry shortly", retry_after=5)
    log.error("request.failed", path=path, exc_info=exc)
    return Problem("internal", "an unexpected error occurred; it has been logged with this request id")


class JSONResponse(responses.JSONResponse):
    """Starlette's JSON answer rendered by msgspec: an answer declared as a type (a Struct) or a plain
    dict, as the same compact UTF-8 bytes json.dumps would give, in a fraction of its time."""

    def render(self, content: Any) -> bytes:
        return msgspec.json.encode(content)


class NoStoreJSONResponse(JSONResponse):
    """A 200 JSON answer that holds a credential or what one grants, so no cache keeps it (Cache-Control:
    no-store): an exchange's token, an introspection. Its three headers are written straight as bytes,
    without Starlette's pass over a headers dict; these are the two busiest routes' answers."""

    def __init__(self, content: Any) -> None:
        self.status_code = 200
        self.background = None
        self.body = body = self.render(content)
        self.raw_headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body)),
                            (b"cache-control", b"no-store")]


class ProblemResponse(JSONResponse):
    media_type = "application/problem+json"


def problem_response(problem: Problem, headers: dict[str, str] | None = None) -> Response:
    """The problem as RFC 9457 JSON, with the headers HTTP asks of its status: Retry-After for a
    503/429 that knows when, WWW-Authenticate on every 401 (RFC 9110 section 11.6.1; RFC 6750's
    Bearer scheme, with `error="invalid_token"` when a credential was presented and refused)."""
    headers = dict(headers or {})
    if problem.retry_after is not None:
        headers["Retry-After"] = str(problem.retry_after)
    if problem.status == 401:
        error = f', error="{problem.challenge}"' if problem.challenge else ""
        headers["WWW-Authenticate"] = f'Bearer realm="tpx"{error}'
    return ProblemResponse(problem.body(request_id_var.get()), status_code=problem.status, headers=headers)


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"the member {key!r} appears twice")
        result[key] = value
    return result


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


_loads_body = loads_with(object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant)


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object: duplicate members and NaN/Infinity refused, like the ID token's parts.
    A compact body that orjson writes back byte for byte has neither, and is read so (a third of the
    strict parse's cost); anything else takes the strict parser and its precise refusal."""
    value = round_trip(raw)
    if value is not None:
        return value
    try:
        value = _loads_body(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise Problem("malformed_request", "the body is not UTF-8; send UTF-8 encoded JSON") from None
    except RecursionError:
        raise Problem("malformed_request", "the JSON body is nested too deeply; send a flat JSON object") from None
    except ValueError as exc:
        raise Problem("malformed_request", f"the body is not valid JSON ({exc}); send a JSON object") from None
    if not isinstance(value, dict):
        raise Problem("malformed_request", "the body must be a JSON object, e.g. {\"jwt\": \"...\"}")
    return value


def parse_form(raw: bytes, *, max_fields: int = 20, repeatable: tuple[str, ...] = (),
               blank_is_absent: bool = False) -> dict[str, Any]:
    """A urlencoded form as a dict: every parameter at most once, except `repeatable` ones (as lists);
    with `blank_is_absent`, a parameter without a value is left out (RFC 6749 section 3.1)."""
    try:
        pairs = parse_qsl(raw.decode("ascii"), keep_blank_values=True, strict_parsing=bool(raw),
                          max_num_fields=max_fields)
    except (UnicodeDecodeError, ValueError):
        raise Problem("malformed_request", "the form body is not valid application/x-www-form-urlencoded") from None
    form: dict[str, Any] = {}
    for name, value in pairs:
        if blank_is_absent and value == "":
            continue
        if name in repeatable:
            form.setdefault(name, []).append(value)
        elif name in form:
            may = f" (only {' and '.join(repeatable)} may repeat)" if repeatable else ""
            raise invalid("malformed_request", name, f"is given more than once; send each parameter once{may}")
        else:
            form[name] = value
    return form


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def read_body(request: Request, max_bytes: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise Problem("malformed_request", "the Content-Length header is not a number")
        if int(declared) > max_bytes:
            raise Problem("request_too_large", f"the body is {int(declared)} bytes; the limit is {max_bytes} bytes")
    # Straight from the ASGI messages, as Request.stream() reads them, without an async generator per
    # request (each one is also registered with the event loop). Routes read their body here only, once.
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await request.receive()
        if message["type"] != "http.request":   # http.disconnect
            raise Problem("malformed_request", "the client closed the connection before the body was complete")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > max_bytes:
            raise Problem("request_too_large", f"the body is larger than the limit of {max_bytes} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def read_object(request: Request, max_bytes: int, *, allow_form: bool = False) -> dict[str, Any]:
    """The request body as a JSON object (or, where the contract allows it, a urlencoded form)."""
    kind = media_type(request)
    if kind not in JSON_TYPES and not (allow_form and kind == FORM_TYPE):
        accepted = "application/json" + (" or application/x-www-form-urlencoded" if allow_form else "")
        raise Problem("unsupported_media_type",
                      f"Content-Type {kind or '(none)'!r} is not accepted here; send {accepted}")
    raw = await read_body(request, max_bytes)
    if kind == FORM_TYPE:
        return parse_form(raw)
    if not raw:
        raise Problem("malformed_request", "the body is empty; send a JSON object")
    return parse_json_object(raw)
