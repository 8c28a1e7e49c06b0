"""Steady exchange load with fresh ID tokens, and a ledger of what became of each one.

Each ID token is sent the way `tpx ci exchange` sends it, with the client's
own retry policy (tpx.ci.retry.RetryPolicy): a 503 or 429 is retried with the
same ID token after Retry-After (plus a little jitter), a connection error
after an exponential back-off, on the next replica, for at most `attempts`
attempts; then the job would fail. Every attempt is kept, so a scenario can
count answers by status, find the first success after a restore, and compare
what the clients were told with what the database and the event stream say
(tests.faults.ledger).

Each ID token carries a unique `run_id` claim; the exchange stores it in the
token's CI identity, which is how the ledger ties a token row back to the ID
token it was minted for, even when the answer never arrived.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

from tpx.ci.retry import RETRY_STATUSES, RetryPolicy

from tests.support.claims import GitHubRepository
from tests.support.oidc_issuer import LoopbackIssuer, SigningKey



@dataclass
class Attempt:
    at: float  # time.monotonic() when the answer (or the error) came
    replica: str
    status: int | None  # None: no HTTP answer (connection refused, reset, timeout)
    code: str | None = None
    error: str | None = None
    detail: str | None = None  # the problem's explanation, for a report on an ID token that went wrong
    sent: float = 0.0  # time.monotonic() when the request went out

    @property
    def label(self) -> str:
        if self.status is None:
            return f"no answer ({self.error})"
        return f"{self.status} {self.code}" if self.code else str(self.status)


@dataclass
class IdToken:
    run_id: str
    sent_at: float
    attempts: list[Attempt] = field(default_factory=list)
    token_id: str | None = None

    @property
    def final(self) -> Attempt | None:
        return self.attempts[-1] if self.attempts else None

    @property
    def succeeded(self) -> bool:
        return self.token_id is not None


@dataclass(kw_only=True)
class Identity(GitHubRepository):
    """A repository with a trusted publisher; ID tokens for it differ only in jti and run_id."""

    issuer: LoopbackIssuer

    def jwt(self, run_id: str, key: SigningKey | None = None, **overrides: Any) -> str:
        return self.issuer.mint(self.claims(run_id=run_id, **overrides), key=key)


class Load:
    """Send `rate` fresh ID tokens a second, round-robin over `replicas`, while the block runs."""

    def __init__(self, identity: Identity, replicas: dict[str, httpx.AsyncClient], rate: float, *,
                 attempts: int = RetryPolicy.attempts) -> None:
        self.identity = identity
        self.replicas = replicas
        self.rate = rate
        self.policy = RetryPolicy(attempts=attempts)
        self.tokens: list[IdToken] = []
        self._names = itertools.cycle(list(replicas))
        self._tasks: set[asyncio.Task[None]] = set()
        self._stop = asyncio.Event()
        self._generator: asyncio.Task[None] | None = None
        self.started_at = self.stopped_at = 0.0

    async def __aenter__(self) -> "Load":
        self.started_at = time.monotonic()
        self._generator = asyncio.create_task(self._generate())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def stop(self, settle_timeout: float = 120.0) -> None:
        """Stop sending new ID tokens; wait (bounded) until every one sent has a final outcome."""
        self._stop.set()
        if self._generator is not None:
            await self._generator
        self.stopped_at = time.monotonic()
        if self._tasks:
            done, pending = await asyncio.wait(set(self._tasks), timeout=settle_timeout)
            for task in pending:
                task.cancel()
            for task in done:
                task.result()

    async def _generate(self) -> None:
        interval = 1.0 / self.rate
        next_at = time.monotonic()
        while not self._stop.is_set():
            run_id = str(len(self.tokens) + 1) + uuid.uuid4().hex[:6]
            token = IdToken(run_id, time.monotonic())
            self.tokens.append(token)
            task = asyncio.create_task(self._send(token))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            next_at += interval
            delay = next_at - time.monotonic()
            if delay > 0:
                try:
                    await asyncio.wait_for(self._stop.wait(), delay)
                except TimeoutError:
                    pass
            else:
                next_at = time.monotonic()  # fell behind (a slow moment): do not burst to catch up

    async def _send(self, token: IdToken) -> None:
        jwt = self.identity.jwt(token.run_id)
        for attempt in range(1, self.policy.attempts + 1):
            outcome, pause = await self._attempt(next(self._names), jwt, token, attempt)
            token.attempts.append(outcome)
            if pause is None or attempt == self.policy.attempts:
                return
            await asyncio.sleep(pause)  # the client's back-off between two attempts, not synchronisation

    async def _attempt(self, name: str, jwt: str, token: IdToken, attempt: int) -> tuple[Attempt, float | None]:
        """One request; the pause before the next attempt, or None when this answer is final."""
        sent = time.monotonic()
        try:
            response = await self.replicas[name].post("/v1/exchange", json={"jwt": jwt}, timeout=15)
        except httpx.TransportError as exc:
            return (Attempt(time.monotonic(), name, None, error=type(exc).__name__, sent=sent),
                    self.policy.backoff(attempt))
        now = time.monotonic()
        body: dict[str, Any] = {}
        if response.headers.get("content-type", "").startswith("application/"):
            try:
                body = response.json()
            except ValueError:
                pass
        outcome = Attempt(now, name, response.status_code, code=body.get("code"), detail=body.get("detail"), sent=sent)
        if response.status_code == 200:
            token.token_id = body["token_id"]
            return outcome, None
        if response.status_code in RETRY_STATUSES:
            return outcome, self.policy.delay(response, attempt)
        return outcome, None

    # -- figures -----------------------------------------------------------------------------------------

    def answers(self) -> Counter[str]:
        """Every attempt's outcome, by status (and code)."""
        return Counter(attempt.label for token in self.tokens for attempt in token.attempts)

    def finals(self) -> Counter[str]:
        """Each ID token's last outcome."""
        return Counter(token.final.label if token.final else "unsent" for token in self.tokens)

    def server_errors(self) -> list[Attempt]:
        """5xx answers other than 503 (which is the documented, retryable outage answer)."""
        return [a for t in self.tokens for a in t.attempts if a.status is not None and a.status >= 500
                and a.status != 503]

    def first_success_after(self, moment: float) -> float | None:
        """Seconds from `moment` to the first 200 answered after it."""
        times = [a.at for t in self.tokens for a in t.attempts if a.status == 200 and a.at >= moment]
        return min(times) - moment if times else None

    def sent_between(self, start: float, end: float) -> list[IdToken]:
        return [t for t in self.tokens if start <= t.sent_at < end]
