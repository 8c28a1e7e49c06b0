"""Bearer credentials for the admin and introspection APIs, compared in constant time.

Credentials are compared as SHA-256 digests so neither their content nor their
length leaks through timing. The actor recorded in admin events is a short
HMAC of the credential under a server secret (`server_secrets`), never the
credential, and nothing a reader of the events can test guesses against.
"""

from __future__ import annotations

import hashlib
import hmac

from starlette.requests import Request

from tpx.core.errors import Problem


class Credentials:
    def __init__(self, tokens: tuple[str, ...], what: str, variable: str, *, fingerprint_key: bytes) -> None:
        self._digests = [hashlib.sha256(t.encode()).digest() for t in tokens]
        self._fingerprint_key = fingerprint_key
        self.what = what
        self.variable = variable

    def accepts(self, request: Request) -> bool:
        """Whether the request carries a valid credential (for answers that only add detail for it)."""
        try:
            self.require(request)
        except Problem:
            return False
        return True

    def authenticate(self, request: Request) -> str:
        """Return the caller's fingerprint (the actor of the events it causes), or raise 401 unauthorized."""
        presented = self.require(request)
        return "credential:" + hmac.new(self._fingerprint_key, presented, hashlib.sha256).hexdigest()[:12]

    def require(self, request: Request) -> bytes:
        """Return the presented credential if it is valid, or raise 401 unauthorized. For routes that
        record no actor (introspection): the fingerprint's HMAC was 2.4% of an introspection process's samples."""
        header = request.headers.get("authorization", "")
        scheme, _, credential = header.partition(" ")
        if scheme.lower() != "bearer" or not credential.strip():
            raise Problem("unauthorized", f"this endpoint needs `Authorization: Bearer <{self.what}>`")
        presented = credential.strip().encode("utf-8", "surrogateescape")
        digest = hashlib.sha256(presented).digest()
        matched = False
        for known in self._digests:  # no early exit: same time whichever credential matches
            matched |= hmac.compare_digest(digest, known)
        if not matched:
            hint = "" if self._digests else f" (none is configured: set {self.variable})"
            raise Problem("unauthorized", f"the {self.what} is not valid{hint}", challenge="invalid_token")
        return presented
