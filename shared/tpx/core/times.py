"""The one spelling of an instant tpx shows anyone: RFC 3339, UTC, with a `Z`.

Record timestamps (rows, events) keep microseconds, so two changes within a
second stay ordered when read back; token lifetimes are whole seconds, like
their `expires_in`.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone


def rfc3339(moment: datetime, *, seconds: bool = False) -> str:
    """`2026-12-04T23:12:42.123456Z`, or `2026-12-04T23:12:42Z` with `seconds=True`.

    A naive datetime is refused: guessing its zone would silently shift it.
    """
    if moment.tzinfo is None:
        raise ValueError("an instant must be timezone-aware to be shown in UTC")
    spec = "seconds" if seconds else "microseconds"
    if moment.tzinfo is not timezone.utc:   # the database driver's instants already are (an exchange shows two)
        moment = moment.astimezone(timezone.utc)
    return moment.isoformat(timespec=spec).replace("+00:00", "Z")


def rfc3339_or_none(moment: datetime | None, *, seconds: bool = False) -> str | None:
    return None if moment is None else rfc3339(moment, seconds=seconds)


_AGO = re.compile(r"([0-9]+)([smhd])")
MOMENT_SYNTAX = "an RFC 3339 time (2026-12-04T23:00:00Z) or a duration ago (30m, 2h, 7d)"


def parse_moment(value: str, *, now: datetime | None = None) -> datetime:
    """The one time syntax of the command line: an RFC 3339 time (UTC if it names no zone), or a
    duration ago (`30s`, `30m`, `2h`, `7d`). Raises ValueError naming both forms."""
    ago = _AGO.fullmatch(value.strip())
    if ago:
        seconds = int(ago[1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[ago[2]]
        return (now or datetime.now(timezone.utc)) - timedelta(seconds=seconds)
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(f"{value!r} is not {MOMENT_SYNTAX}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
