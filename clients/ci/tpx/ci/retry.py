"""Bounded retries with exponential back-off and jitter, honouring Retry-After.

A CI job that fails because tpx was briefly rate limiting or restarting wastes
a release; a job that hammers a struggling service makes it worse. So: retry
only what is worth retrying (429, 503, connection errors), wait what the server
asks for, otherwise back off exponentially with jitter so that a fleet of jobs
started by the same tag does not retry in lockstep, and give up after a few
attempts with a message saying what happened.
"""

from __future__ import annotations

import email.utils
import random
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, TextIO

import httpx

from tpx.ci.errors import Unreachable

RETRY_STATUSES = frozenset({429, 503})
# httpx raises these before any byte of the request left; anything else may have reached the server.
NOT_SENT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


@dataclass
class RetryPolicy:
    attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 30.0
    sleep: Callable[[float], None] = time.sleep
    log: TextIO = field(default_factory=lambda: sys.stderr)

    def backoff(self, attempt: int) -> float:
        """Exponential back-off with "equal jitter": half fixed, half random."""
        ceiling = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
        return ceiling / 2 + random.uniform(0, ceiling / 2)

    def delay(self, response: httpx.Response, attempt: int) -> float:
        asked = retry_after(response)
        if asked is None:
            return self.backoff(attempt)
        # A little jitter on top of what the server asked for, never less than it.
        return min(self.max_delay, asked + random.uniform(0, min(1.0, asked * 0.1)))


def retry_after(response: httpx.Response) -> float | None:
    """Retry-After as delta-seconds or an HTTP date; None when absent or unreadable."""
    value = response.headers.get("retry-after", "").strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - time.time())


def with_retries(call: Callable[[], httpx.Response], policy: RetryPolicy, *, what: str,
                 on_transport_error: Callable[[httpx.TransportError], None] | None = None) -> httpx.Response:
    """Run `call` until it answers something other than 429/503, or the attempts run out.

    Returns the last response (which may still be a 429/503); raises
    Unreachable when the last attempt failed to connect. `what` names the
    peer in messages, never its URL, which may carry a query string.
    """
    attempts = max(1, policy.attempts)
    for attempt in range(1, attempts + 1):
        try:
            response = call()
        except httpx.TransportError as exc:
            if on_transport_error is not None:
                on_transport_error(exc)
            if attempt == attempts:
                raise Unreachable(f"{what} could not be reached after {attempts} attempt(s): "
                                  f"{type(exc).__name__}: {exc}") from None
            wait = policy.backoff(attempt)
            print(f"tpx: {what} could not be reached ({type(exc).__name__}); retrying in {wait:.1f} s "
                  f"(attempt {attempt + 1} of {attempts})", file=policy.log, flush=True)
            policy.sleep(wait)
            continue
        if response.status_code not in RETRY_STATUSES or attempt == attempts:
            return response
        wait = policy.delay(response, attempt)
        print(f"tpx: {what} answered {response.status_code}; retrying in {wait:.1f} s "
              f"(attempt {attempt + 1} of {attempts})", file=policy.log, flush=True)
        policy.sleep(wait)
    raise AssertionError("unreachable")  # the loop always returns or raises
