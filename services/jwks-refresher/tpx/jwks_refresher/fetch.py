"""Fetching an issuer's OIDC discovery document and JWKS, treating the IdP as hostile.

The refresher is the only tpx component that talks to the outside world, and
what it fetches decides which signatures tpx accepts. So every step is bounded
and checked (security.md, "JWKS refresher"):

- Discovery is read from `{issuer}/.well-known/openid-configuration`; its
  `issuer` must equal the configured issuer byte for byte.
- `jwks_uri` must be https on the issuer's own host or on a host the operator
  approved (`issuers.jwks_hosts`); plain http only for a loopback host when the
  operator allowed loopback dev issuers.
- Redirects are never followed (a redirect is the easiest way to point a fetch
  somewhere else), proxy variables are ignored (`trust_env=False`), and only
  uncompressed responses are accepted (`Accept-Encoding: identity`; anything
  else is refused, so there is nothing to decompress and no compression bomb).
- Each document is capped at 256 KiB: a larger `Content-Length` is refused
  before reading, and a body without one is streamed and abandoned once over.
- One deadline covers the whole fetch (resolution, connects, TLS, both
  documents), enforced with `asyncio.timeout`, so a slow-drip server cannot
  stretch it read by read.
- Host names are resolved here, every address is checked (no loopback,
  private, link-local, multicast or reserved ranges, unless loopback dev
  issuers are allowed and the host is a loopback host), and the connection is
  then made to a checked address: the request URL carries the address, while
  the `Host` header and TLS (SNI and certificate check) carry the host name.

Caveat (TOCTOU): the connection goes to an address checked moments earlier by
this process, so DNS rebinding between check and connect does not apply; what
remains trusted is the resolver itself. Each request uses a fresh client without
keep-alive, so a TLS session verified for one host name is never reused for
another host that happens to share an address.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterable, NamedTuple, Sequence
from urllib.parse import SplitResult, urlsplit, urlunsplit

import httpx

from tpx.core.errors import Problem
from tpx.core.issuers import is_loopback_host
from tpx.core.jose.strict_json import loads_object, quote

MAX_DOCUMENT_BYTES = 256 * 1024
MAX_URL_LENGTH = 1024
DISCOVERY_PATH = "/.well-known/openid-configuration"
USER_AGENT = "tpx-jwks-refresher"

# host, port -> the addresses to connect to; injectable so tests can play DNS.
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_ssl_context: ssl.SSLContext | None = None


class FetchError(Exception):
    """The fetch failed or was refused; `message` is one human sentence saying what and why."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class FetchResult(NamedTuple):
    jwks_uri: str
    document: dict[str, Any]
    max_age: int | None  # Cache-Control max-age of the JWKS response (0 for no-cache/no-store), if any


@dataclass(frozen=True)
class _Target:
    url: str
    parts: SplitResult
    host: str  # lower-case, without brackets
    port: int


async def fetch_jwks(
    issuer_url: str,
    *,
    timeout: float,
    allow_loopback: bool = False,
    jwks_hosts: Iterable[str] = (),
    resolver: Resolver | None = None,
) -> FetchResult:
    """Run discovery for `issuer_url` and fetch its JWKS, or raise FetchError.

    The JWKS is returned as parsed (strict JSON: no duplicate members); judging
    its keys one by one is the caller's job (`tpx.core.jose.parse_jwks`).
    """
    try:
        async with asyncio.timeout(timeout):
            return await _fetch(issuer_url, allow_loopback, jwks_hosts, resolver or resolve)
    except TimeoutError:
        raise FetchError(
            f"discovery and JWKS of {quote(issuer_url)} did not arrive within {timeout:g} s"
        ) from None


async def resolve(host: str, port: int) -> list[str]:
    """Every address `host` resolves to, through the system resolver (off the event loop)."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as exc:
        raise FetchError(f"cannot resolve the host {quote(host)} ({_short(exc)})") from None
    addresses: list[str] = []
    for info in infos:
        address = str(info[4][0])
        if address not in addresses:
            addresses.append(address)
    return addresses


def max_age(cache_control: str | None) -> int | None:
    """The `max-age` of a Cache-Control header; 0 for no-cache/no-store; None when absent or unreadable."""
    if not cache_control:
        return None
    found: int | None = None
    for directive in cache_control.split(","):
        name, _, value = directive.strip().partition("=")
        name = name.strip().lower()
        if name in ("no-store", "no-cache"):
            return 0
        if name == "max-age":
            value = value.strip().strip('"')
            if value.isascii() and value.isdigit() and len(value) <= 10:
                found = int(value)
    return found


# -- the two documents ------------------------------------------------------------


async def _fetch(issuer_url: str, allow_loopback: bool, jwks_hosts: Iterable[str], resolver: Resolver) -> FetchResult:
    issuer = _target(issuer_url, "the issuer URL", allow_loopback)
    discovery_url = issuer_url.rstrip("/") + DISCOVERY_PATH
    body, _ = await _get(_target(discovery_url, "the discovery URL", allow_loopback),
                         "discovery document", resolver, allow_loopback)
    discovery = _json(body, "discovery document")

    claimed = discovery.get("issuer")
    if claimed != issuer_url:
        raise FetchError(f"discovery issuer {quote(claimed)} does not match the configured issuer {quote(issuer_url)}")
    jwks_uri = discovery.get("jwks_uri")
    if not isinstance(jwks_uri, str):
        raise FetchError(f"the discovery document of {quote(issuer_url)} has no jwks_uri string")
    jwks = _target(jwks_uri, "jwks_uri", allow_loopback)
    approved = {issuer.host} | {host.strip().lower().strip("[]") for host in jwks_hosts if host}
    if jwks.host not in approved:
        raise FetchError(
            f"jwks_uri {quote(jwks_uri)} is on the host {quote(jwks.host)}, which is neither the issuer's host "
            f"{quote(issuer.host)} nor an approved JWKS host (issuers.jwks_hosts)"
        )

    body, headers = await _get(jwks, "JWKS", resolver, allow_loopback)
    return FetchResult(jwks_uri, _json(body, "JWKS"), max_age(headers.get("cache-control")))


def _json(body: bytes, what: str) -> dict[str, Any]:
    try:
        return loads_object(body, what)
    except Problem as exc:
        raise FetchError(exc.detail) from None


# -- URL and address rules ----------------------------------------------------------


def _target(url: object, what: str, allow_loopback: bool) -> _Target:
    if not isinstance(url, str) or not url.isascii() or not url.isprintable() or " " in url:
        raise FetchError(f"{what} {quote(url)} is not a printable ASCII URL")
    if len(url) > MAX_URL_LENGTH:
        raise FetchError(f"{what} is longer than {MAX_URL_LENGTH} characters")
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        raise FetchError(f"{what} {quote(url)} has an invalid port") from None
    host = parts.hostname
    if parts.scheme not in ("https", "http") or not host:
        raise FetchError(f"{what} {quote(url)} is not an https URL with a host")
    if parts.username is not None or parts.password is not None or parts.fragment:
        raise FetchError(f"{what} {quote(url)} must not contain credentials or a fragment")
    if parts.scheme == "http" and not (allow_loopback and is_loopback_host(host)):
        raise FetchError(
            f"{what} {quote(url)} uses plain http; only https is accepted "
            "(http only for a loopback host with TPX_INSECURE_LOOPBACK_ISSUERS=1)"
        )
    return _Target(url, parts, host, port or (443 if parts.scheme == "https" else 80))


def check_addresses(host: str, addresses: Iterable[str], allow_loopback: bool) -> list[str]:
    """Return `addresses` if every one of them may be fetched from; raise FetchError naming the first that may not.

    All addresses are checked, not just the one used, so a host cannot hide an
    internal address behind a public one.
    """
    loopback_ok = allow_loopback and is_loopback_host(host)
    checked: list[str] = []
    for address in addresses:
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            raise FetchError(f"the host {quote(host)} resolved to {quote(address)}, which is not an IP address") from None
        kind = _forbidden_kind(ip)
        if kind == "loopback" and loopback_ok:
            kind = None
        if kind is not None:
            raise FetchError(
                f"the host {quote(host)} resolves to {ip}, a {kind} address; "
                "tpx fetches issuer keys from public addresses only"
            )
        checked.append(address)
    if not checked:
        raise FetchError(f"the host {quote(host)} resolved to no address")
    return checked


def _forbidden_kind(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour or (
            ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF) if ip in _NAT64 else None)
        if embedded is not None:
            return _forbidden_kind(embedded)
        if ip.teredo is not None:
            return "Teredo"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_private:
        return "private"
    if ip.is_reserved or not ip.is_global:
        return "reserved"
    return None


# -- one GET --------------------------------------------------------------------------


class _ConnectFailed(Exception):
    """This address did not take the connection; the next one may."""


async def _get(target: _Target, what: str, resolver: Resolver, allow_loopback: bool) -> tuple[bytes, httpx.Headers]:
    addresses = check_addresses(target.host, await _resolve(target, resolver), allow_loopback)
    failure: _ConnectFailed | None = None
    for address in addresses:
        try:
            return await _get_from(address, target, what)
        except _ConnectFailed as exc:
            failure = exc
    raise FetchError(f"cannot connect to {target.parts.netloc} for the {what} ({failure})")


async def _resolve(target: _Target, resolver: Resolver) -> Sequence[str]:
    try:
        ipaddress.ip_address(target.host)
        return [target.host]  # an address literal needs no resolver
    except ValueError:
        return await resolver(target.host, target.port)


async def _get_from(address: str, target: _Target, what: str) -> tuple[bytes, httpx.Headers]:
    netloc = f"[{address}]:{target.port}" if ":" in address else f"{address}:{target.port}"
    pinned = urlunsplit((target.parts.scheme, netloc, target.parts.path or "/", target.parts.query, ""))
    headers = {
        "Host": target.parts.netloc,
        "Accept": "application/json",
        "Accept-Encoding": "identity",
        "User-Agent": USER_AGENT,
    }
    extensions = {"sni_hostname": target.host} if target.parts.scheme == "https" else None
    async with httpx.AsyncClient(
        trust_env=False,
        follow_redirects=False,
        verify=_tls_context(),
        limits=httpx.Limits(max_keepalive_connections=0),
        timeout=None,  # the caller's asyncio.timeout is the one deadline
    ) as client:
        try:
            async with client.stream("GET", pinned, headers=headers, extensions=extensions) as response:
                return await _read(response, target, what), response.headers
        except httpx.ConnectError as exc:
            raise _ConnectFailed(f"{address}: {_short(exc)}") from None
        except httpx.HTTPError as exc:
            raise FetchError(f"the {what} request to {quote(target.url)} failed ({_short(exc)})") from None


async def _read(response: httpx.Response, target: _Target, what: str) -> bytes:
    where = f"the {what} at {quote(target.url)}"
    status = response.status_code
    if 300 <= status < 400:
        raise FetchError(f"{where} answered HTTP {status}, a redirect; tpx follows no redirects")
    if status != 200:
        raise FetchError(f"{where} answered HTTP {status}")
    encoding = response.headers.get("content-encoding", "").strip().lower()
    if encoding not in ("", "identity"):
        raise FetchError(f"{where} is {quote(encoding)}-encoded; tpx accepts only uncompressed documents")
    length = response.headers.get("content-length", "").strip()
    if length.isdigit() and int(length) > MAX_DOCUMENT_BYTES:
        raise FetchError(f"{where} is {int(length)} bytes, larger than the {MAX_DOCUMENT_BYTES}-byte limit")
    body = bytearray()
    async for chunk in response.aiter_raw():
        body += chunk
        if len(body) > MAX_DOCUMENT_BYTES:
            raise FetchError(f"{where} is larger than the {MAX_DOCUMENT_BYTES}-byte limit")
    return bytes(body)


def _tls_context() -> ssl.SSLContext:
    """Certificate-verifying TLS; trusts SSL_CERT_FILE/SSL_CERT_DIR when set (a private CA), else certifi."""
    global _ssl_context
    if _ssl_context is None:
        _ssl_context = httpx.create_ssl_context()
    return _ssl_context


def _short(exc: BaseException) -> str:
    """An exception as a short single line of printable ASCII, safe for last_error and logs."""
    text = str(exc) or type(exc).__name__
    return "".join(ch if " " <= ch <= "~" else "?" for ch in text[:160])
