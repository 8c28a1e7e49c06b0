"""The one spelling of an instant tpx shows anyone: RFC 3339, UTC, with a `Z`.

Record timestamps (rows, events) keep microseconds, so two changes within a
second stay ordered when read back; token lifetimes are whole seconds, like
their `expires_in`.
"""

from __future__ import annotations

from datetime import datetime, timezone


def rfc3339(moment: datetime, *, seconds: bool = False) -> str:
    """`2026-12-04T23:12:42.123456Z`, or `2026-12-04T23:12:42Z` with `seconds=True`.

    A naive datetime is refused: guessing its zone would silently shift it.
    """
    if moment.tzinfo is None:
        raise ValueError("an instant must be timezone-aware to be shown in UTC")
    spec = "seconds" if seconds else "microseconds"
    return moment.astimezone(timezone.utc).isoformat(timespec=spec).replace("+00:00", "Z")


def rfc3339_or_none(moment: datetime | None, *, seconds: bool = False) -> str | None:
    return None if moment is None else rfc3339(moment, seconds=seconds)
