"""A small synchronous client for tpx's CI-facing endpoints, with retries.

Synchronous on purpose: a CI step does one thing at a time, and sync httpx
keeps the command free of an event loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping
from urllib.parse import urlsplit

import httpx

from tpx.ci import client_version
from tpx.ci.claims import claim_lines
from tpx.ci.errors import CiError, Refused, UsageError, scrub
from tpx.ci.idtoken import IdTokenSource
from tpx.ci.retry import NOT_SENT_ERRORS, RetryPolicy, with_retries


USER_AGENT = f"tpx-ci/{client_version()}"


def resolve_url(given: str | None, env: Mapping[str, str]) -> str:
    """The service's base URL from --url or $TPX_URL, without a trailing slash."""
    url = (given or env.get("TPX_URL") or "").strip()
    if not url:
        raise UsageError("where is tpx? pass --url or set TPX_URL (e.g. https://tpx.example.com)")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UsageError(f"the tpx URL {url!r} is not an http(s) URL")
    if parts.query or parts.fragment:
        raise UsageError(f"the tpx URL {url!r} must not carry a query string or fragment")
    return url.rstrip("/")


@dataclass(frozen=True)
class Exchanged:
    token: str
    body: dict[str, Any]


def _problem(response: httpx.Response) -> dict[str, Any] | None:
    if "json" not in response.headers.get("content-type", ""):
        return None
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) and ("code" in body or "detail" in body) else None


class TpxClient:
    def __init__(self, base_url: str, *, timeout: float, policy: RetryPolicy, http: httpx.Client | None = None) -> None:
        self.base_url = base_url
        self.policy = policy
        self.http = http or httpx.Client(timeout=timeout, headers={"User-Agent": USER_AGENT}, follow_redirects=False)

    def __enter__(self) -> "TpxClient":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.http.close()

    def _failure(self, response: httpx.Response, action: str, secrets: list[str | None]) -> CiError:
        problem = _problem(response)
        if problem is not None:
            cleaned = {k: scrub(v, secrets) if isinstance(v, str) else v for k, v in problem.items()}
            if isinstance(problem.get("hints"), list):
                cleaned["hints"] = [scrub(h, secrets) for h in problem["hints"] if isinstance(h, str)]
            return Refused(response.status_code, cleaned, action=action)
        snippet = scrub(response.text[:300], secrets).strip()
        return CiError(f"{action} failed: {response.status_code} without problem details; is {self.base_url} "
                       "a tpx service (check --url / TPX_URL)?", [f"response: {snippet}"] if snippet else [])

    def audience(self) -> str:
        """The audience ID tokens must carry for this service (GET /_/oidc/audience)."""
        url = f"{self.base_url}/_/oidc/audience"
        response = with_retries(lambda: self.http.get(url), self.policy, what=f"tpx at {self.base_url}")
        try:
            audience = response.json().get("audience") if response.status_code == 200 else None
        except (ValueError, AttributeError):
            audience = None
        if not isinstance(audience, str) or not audience:
            raise CiError(f"could not learn the ID token audience from {url} ({response.status_code})",
                          ["pass --audience with the value of the service's TPX_AUDIENCE"])
        return audience

    def exchange(self, source: IdTokenSource, *, packages: list[str] | None = None,
                 lifetime_seconds: int | None = None) -> Exchanged:
        """POST /v1/exchange; retried on 429/503/connection errors, with a fresh ID token when that is possible.

        After a failure that may have reached the server (the answer was lost),
        resending the same ID token would only meet token_reused, so a source
        that can mint a new one is asked again.
        """
        url = f"{self.base_url}/v1/exchange"
        narrowing: dict[str, object] = {}
        if packages:
            narrowing["packages"] = packages
        if lifetime_seconds is not None:
            narrowing["lifetime_seconds"] = lifetime_seconds
        state = {"jwt": source.get(), "refresh": False, "maybe_used": False}

        def note(exc: httpx.TransportError) -> None:
            if not isinstance(exc, NOT_SENT_ERRORS):
                state["refresh"] = True

        def call() -> httpx.Response:
            if state["refresh"]:
                state["refresh"] = False
                if source.can_refresh:
                    state["jwt"] = source.get()
                else:
                    state["maybe_used"] = True
            return self.http.post(url, json={"jwt": state["jwt"], **narrowing})

        response = with_retries(call, self.policy, what=f"tpx at {self.base_url}", on_transport_error=note)
        jwt = str(state["jwt"])
        if response.status_code == 200:
            try:
                body = response.json()
            except ValueError:
                body = None
            token = body.get("token") if isinstance(body, dict) else None
            if not isinstance(token, str) or not token:
                raise CiError(f"tpx at {self.base_url} answered 200 without a token")
            return Exchanged(token, body)
        error = self._failure(response, "the exchange", [jwt])
        if isinstance(error, Refused):
            if error.code in ("no_matching_publisher", "forbidden_trigger"):
                error.details.append(f"every check, without minting: POST {self.base_url}/v1/explain with a fresh "
                                     "ID token of this job")
            if error.code == "token_reused" and state["maybe_used"]:
                error.details.append("an earlier attempt whose answer was lost may have minted a token with this ID "
                                     "token; that token expires on its own. Rerun the job for a fresh ID token")
            error.details.append("the ID token's claims (decoded here without verification, for debugging only):")
            error.details += [f"  {line}" for line in claim_lines(jwt)]
        raise error

    def revoke(self, token: str) -> None:
        """POST /v1/revoke; idempotent, so every retry is safe."""
        url = f"{self.base_url}/v1/revoke"
        headers = {"Authorization": f"Bearer {token}"}
        response = with_retries(lambda: self.http.post(url, headers=headers), self.policy,
                                what=f"tpx at {self.base_url}")
        if response.status_code != 204:
            raise self._failure(response, "the revocation", [token])
