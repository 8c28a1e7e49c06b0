"""Failures of the CI client, each carrying what the job log should say.

Nothing here ever holds a token: messages are built from the server's problem
details (which, by contract, never contain one) and scrubbed again before
printing, in case a proxy in between echoed the request.
"""

from __future__ import annotations

from typing import Any, Iterable

EXIT_FAILED = 1
EXIT_USAGE = 2
REDACTED = "<redacted>"


class CiError(Exception):
    """A failure to report on stderr; `details` are extra lines (hints, request id, claims)."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str, details: Iterable[str] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.details = list(details)


class UsageError(CiError):
    """The job is set up wrongly (no URL, no ID token, bad option); nothing was sent."""

    exit_code = EXIT_USAGE


class Refused(CiError):
    """tpx answered with problem details: the code, detail and hints say what to change."""

    def __init__(self, status: int, problem: dict[str, Any], *, action: str) -> None:
        self.status = status
        self.problem = problem
        self.code = str(problem.get("code") or "unknown")
        self.detail = str(problem.get("detail") or problem.get("title") or "(no detail)")
        details = [f"code: {self.code}", f"detail: {self.detail}"]
        details += [f"hint: {hint}" for hint in problem.get("hints") or [] if isinstance(hint, str)]
        if problem.get("request_id"):
            details.append(f"request id: {problem['request_id']}")
        super().__init__(f"{action} was refused ({status} {self.code})", details)


class Unreachable(CiError):
    """tpx (or the CI provider's token endpoint) could not be reached after every retry."""


def scrub(text: str, secrets: Iterable[str | None]) -> str:
    """Replace every occurrence of a secret, should a server or proxy have echoed one back."""
    for secret in secrets:
        if secret and len(secret) >= 8:
            text = text.replace(secret, REDACTED)
    return text
