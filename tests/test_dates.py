"""Tests for pixeldino.dates: ISO 8601 ranges and seasonal windows."""

from __future__ import annotations

import datetime as dt

import pytest

from pixeldino.dates import date_windows, in_windows, parse_datetime_range
from pixeldino.errors import ConfigError

UTC = dt.timezone.utc


def test_ranges_are_inclusive_utc_bounds() -> None:
    start, end = parse_datetime_range("2021-07-01/2021-08-31")
    assert start == dt.datetime(2021, 7, 1, tzinfo=UTC)
    assert end == dt.datetime(2021, 8, 31, 23, 59, 59, 999999, tzinfo=UTC)
    assert parse_datetime_range("2021-07-01/..") == (dt.datetime(2021, 7, 1, tzinfo=UTC), None)
    assert parse_datetime_range(None) == (None, None)
    day = parse_datetime_range("2021-08-21")
    assert in_windows(dt.datetime(2021, 8, 21, 21, 0, tzinfo=UTC), [day])
    assert not in_windows(dt.datetime(2021, 8, 22, tzinfo=UTC), [day])
    assert parse_datetime_range("2021-07-01T12:00:00Z/2021-07-02T00:00:00")[0] == dt.datetime(
        2021, 7, 1, 12, tzinfo=UTC
    )
    with pytest.raises(ConfigError, match="not ISO 8601"):
        parse_datetime_range("July 2021")
    with pytest.raises(ConfigError, match="ends before it starts"):
        parse_datetime_range("2021-08-01/2021-07-01")


def test_seasonal_windows() -> None:
    assert date_windows("2021-07-01/2021-08-31", [], [7, 8]) == ["2021-07-01/2021-08-31"]
    assert date_windows(None, [], [7, 8]) == [None]
    assert date_windows(None, [2023, 2021], [8, 7]) == ["2021-07-01/2021-08-31", "2023-07-01/2023-08-31"]
    assert date_windows(None, [2021], [12, 1]) == ["2021-01-01/2021-01-31", "2021-12-01/2021-12-31"]
    with pytest.raises(ConfigError, match="month numbers 1-12"):
        date_windows(None, [2021], [13])
    with pytest.raises(ConfigError, match="month numbers 1-12"):
        date_windows(None, [2021], [])
