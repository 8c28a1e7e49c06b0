"""Provider-neutral matching: run a provider's check table over the candidate
publishers and turn a miss into a precise refusal.

Exchange, explain and the denial hints all read the same `PublisherEvaluation`
objects, so what a client is told can never drift from what was decided. The
messages built here quote only verified claim values and the publishers' own
configuration, never anything else from the token.
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass
from typing import Any, Iterable

import msgspec

from tpx.core.errors import Problem
from tpx.core.providers.base import CheckResult, Identity, Provider, Publisher

_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)

FORBIDDEN_TRIGGER = "forbidden_trigger"


def ascii_lower(value: str) -> str:
    """Lower-case A-Z only.

    `str.lower()` also folds non-ASCII letters, some onto ASCII ones (KELVIN
    SIGN -> 'k'), which would let a configured name match a different token
    value; folding only A-Z keeps "case-insensitive" meaning exactly that. On
    an ASCII string `lower()` changes A-Z alone, so it is used there: 14 times
    faster than `translate`, which looks every character up in a dict (1.4%
    of the exchange process's samples).
    """
    return value.lower() if value.isascii() else value.translate(_ASCII_LOWER)


def ascii_iequal(a: str, b: str) -> bool:
    return ascii_lower(a) == ascii_lower(b)


class CheckRow(msgspec.Struct, omit_defaults=True):
    """One row of a check table as explain and denials show it."""

    check: str
    claim: str
    expected: Any
    actual: Any
    passed: bool
    note: str | None = None


class PublisherExplanation(msgspec.Struct):
    """One candidate publisher with every row of its check table (`PublisherEvaluation.as_explain`)."""

    id: str
    package: str
    matched: bool
    checks: list[CheckRow]


@dataclass
class PublisherEvaluation:
    """One publisher and every row of the check table evaluated against it."""

    publisher: Publisher
    results: list[CheckResult]

    @property
    def matched(self) -> bool:
        # An empty table must never mean "everything passed".
        return bool(self.results) and all(r.passed for r in self.results)

    @property
    def failed(self) -> list[CheckResult]:
        return [r for r in self.results if not r.passed]

    def as_explain(self) -> dict[str, Any]:
        return {
            "id": self.publisher.id,
            "package": self.publisher.package,
            "matched": self.matched,
            "checks": [r.as_dict() for r in self.results],
        }


def evaluate(provider: Provider, identity: Identity, publishers: Iterable[Publisher]) -> list[PublisherEvaluation]:
    """Evaluate every candidate, skipping any of another provider or issuer.

    The store already loads candidates by verified issuer; skipping here too
    means a lookup bug can never let a self-hosted instance's token match a
    public-instance publisher (or the reverse).
    """
    return [
        PublisherEvaluation(p, provider.checks(identity, p))
        for p in publishers
        if p.provider == identity.provider and p.issuer == identity.issuer
    ]


def denial(provider: Provider, identity: Identity, evaluations: list[PublisherEvaluation]) -> Problem:
    """The refusal for an identity no publisher matched, saying what to change."""
    if not evaluations:
        return _no_candidates(provider, identity)
    checks = [e.as_explain() for e in evaluations]
    hints = [line for e in evaluations for line in _hint_lines(e)]
    trigger_failures = [_first(e, FORBIDDEN_TRIGGER) for e in evaluations]
    if all(r is not None for r in trigger_failures):
        failure = trigger_failures[0]
        assert failure is not None
        return Problem(
            FORBIDDEN_TRIGGER,
            f"the token comes from a workflow triggered by {_show(failure.actual)}, which may not publish: "
            "such workflows can run code that someone outside the repository controls. Publish from a "
            "workflow triggered by push, release, workflow_dispatch or a tag instead",
            hints=hints,
            checks=checks,
        )
    closest = min(evaluations, key=lambda e: len(e.failed))
    first = closest.failed[0]
    total = len(closest.failed)
    more = f", and {total - 1} more difference{'s' if total > 2 else ''}" if total > 1 else ""
    return Problem(
        "no_matching_publisher",
        f"no trusted publisher for {identity.repository} matches this token; the closest is publisher "
        f"{closest.publisher.id} (package {closest.publisher.package}), whose {first.check} check failed: "
        f"{_claim_is(first)}, expected {_expected(first.expected)}{more}; the hints list every difference",
        hints=hints,
        checks=checks,
    )


def _no_candidates(provider: Provider, identity: Identity) -> Problem:
    body = {"package": "<package>", "provider": identity.provider, "issuer": identity.issuer,
            **provider.publisher_hint(identity)}
    return Problem(
        "no_matching_publisher",
        f"no trusted publisher is configured for repository {identity.repository} on issuer {identity.issuer}",
        hints=[
            f"add one: POST /v1/admin/publishers with {json.dumps(body)}",
            "publishers are matched per issuer: one registered for another issuer (for example github.com "
            "instead of an enterprise or self-hosted instance) never matches this token",
        ],
        checks=[],
    )


def _first(evaluation: PublisherEvaluation, code: str) -> CheckResult | None:
    return next((r for r in evaluation.failed if r.code == code), None)


def _hint_lines(evaluation: PublisherEvaluation) -> list[str]:
    p = evaluation.publisher
    lines = []
    for r in evaluation.failed:
        actual = f"the token has no {r.claim}" if r.actual is None else f"the token has {_show(r.actual)}"
        note = f" ({r.note})" if r.note else ""
        lines.append(
            f"publisher {p.id} (package {p.package}): {r.check}: {actual}, expected {_expected(r.expected)}{note}"
        )
    return lines


def _claim_is(result: CheckResult) -> str:
    if result.actual is None:
        return f"claim {result.claim} is absent"
    return f"claim {result.claim} is {_show(result.actual)}"


def _expected(expected: Any) -> str:
    if isinstance(expected, (list, tuple)):
        return f"one of {list(expected)!r}"
    return _show(expected)


def _show(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)
