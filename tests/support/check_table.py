"""What every provider's conformance table needs: a fixture's claims with some changed or left out, the
identity built from them, and the provider's check rows by name."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import pytest

from tpx.core.errors import Problem
from tpx.core.providers.base import CheckResult, Identity, Provider, Publisher


@dataclass(frozen=True)
class CheckTable:
    provider: Provider
    fixture: Callable[[], dict[str, Any]]   # a fresh copy of the documented token's claims
    issuer: str
    omit: object                            # a change to this value leaves the claim out

    def claims_with(self, **changes: Any) -> dict[str, Any]:
        claims = self.fixture()
        for name, value in changes.items():
            if value is self.omit:
                claims.pop(name, None)
            else:
                claims[name] = value
        return claims

    def identity_with(self, issuer: str | None = None, **changes: Any) -> Identity:
        return self.provider.identity(self.claims_with(**changes), issuer or self.issuer)

    def malformed(self, payload: Any = None, **changes: Any) -> Problem:
        """The refusal of a token whose claims (the fixture's with `changes`, or `payload` as given) do not
        read: always `malformed_token`."""
        claims = self.claims_with(**changes) if payload is None else payload
        with pytest.raises(Problem) as raised:
            self.provider.identity(claims, self.issuer)
        assert raised.value.code == "malformed_token", raised.value
        return raised.value

    def results_by_check(self, identity: Identity, publisher: Publisher) -> dict[str, CheckResult]:
        return {r.check: r for r in self.provider.checks(identity, publisher)}

    def failed_checks(self, identity: Identity, publisher: Publisher) -> set[str]:
        return {r.check for r in self.provider.checks(identity, publisher) if not r.passed}
