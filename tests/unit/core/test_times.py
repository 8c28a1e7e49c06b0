"""One spelling of an instant: RFC 3339 in UTC with a `Z`."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from tpx.core.times import rfc3339, rfc3339_or_none

MOMENT = datetime(2026, 12, 4, 23, 12, 42, 5, tzinfo=timezone.utc)


def test_microseconds_by_default_seconds_when_asked():
    assert rfc3339(MOMENT) == "2026-12-04T23:12:42.000005Z"
    assert rfc3339(MOMENT, seconds=True) == "2026-12-04T23:12:42Z"
    assert rfc3339(MOMENT.replace(microsecond=0)) == "2026-12-04T23:12:42.000000Z"  # fixed width


def test_other_zones_are_shown_in_utc():
    assert rfc3339(MOMENT.astimezone(timezone(timedelta(hours=-5)))) == "2026-12-04T23:12:42.000005Z"


def test_naive_times_are_refused_and_none_stays_none():
    with pytest.raises(ValueError):
        rfc3339(datetime(2026, 1, 1))
    assert rfc3339_or_none(None) is None


def test_the_command_lines_one_time_syntax():
    from datetime import datetime, timedelta, timezone

    import pytest

    from tpx.core.times import parse_moment
    now = datetime(2026, 12, 5, 12, 0, tzinfo=timezone.utc)
    assert parse_moment("2h", now=now) == now - timedelta(hours=2)
    assert parse_moment("30m", now=now) == now - timedelta(minutes=30)
    assert parse_moment("7d", now=now) == now - timedelta(days=7)
    assert parse_moment("45s", now=now) == now - timedelta(seconds=45)
    assert parse_moment("2026-12-04T23:00:00Z") == datetime(2026, 12, 4, 23, tzinfo=timezone.utc)
    assert parse_moment("2026-12-04T23:00:00+01:00") == datetime(2026, 12, 4, 22, tzinfo=timezone.utc)
    assert parse_moment("2026-12-04T23:00:00") == datetime(2026, 12, 4, 23, tzinfo=timezone.utc)
    for wrong in ("2 hours", "yesterday", "-2h", ""):
        with pytest.raises(ValueError, match="RFC 3339 time .* or a duration ago"):
            parse_moment(wrong)
