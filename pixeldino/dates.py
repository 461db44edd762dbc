"""Search dates: ISO 8601 ranges (``START/END``) and seasonal windows (the same months of several years).

A scene search covers one or more date windows, each an inclusive ``START/END`` string: either the range the user
gave (``search.datetime``) or one window per year and run of consecutive months (``search.years`` and
``search.months``), so that a change map gets the same season of every year.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from pixeldino.errors import ConfigError


def _parse_instant(text: str, end: bool, key: str) -> dt.datetime | None:
    """Parse one side of a datetime range; a bare date as the end means the whole day (inclusive)."""
    text = text.strip()
    if text in ("", ".."):
        return None
    try:
        if len(text) == 10:
            day = dt.date.fromisoformat(text)
            start = dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc)
            return start + dt.timedelta(days=1) - dt.timedelta(microseconds=1) if end else start
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(
            f"{key}: {text!r} is not ISO 8601; use e.g. '2021-06-01/2021-09-30' or '2021-07-01T00:00:00Z'"
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)


def parse_datetime_range(
    value: str | None, key: str = "search.datetime"
) -> tuple[dt.datetime | None, dt.datetime | None]:
    """Parse ``"start/end"`` (either side may be ``..``) or a single date into inclusive UTC bounds.

    Args:
        value: the range.
        key: the config key (or option) the range comes from, named in the errors.

    Raises:
        ConfigError: a side is not ISO 8601, or the range ends before it starts.
    """
    if value is None or str(value).strip() in ("", ".."):
        return None, None
    text = str(value)
    if "/" in text:
        left, right = text.split("/", 1)
    else:
        left = right = text
    start, end = _parse_instant(left, end=False, key=key), _parse_instant(right, end=True, key=key)
    if start and end and start > end:
        # a reversed range would match nothing and end in a misleading "no scenes" error
        raise ConfigError(
            f"{key}: the range {value!r} ends before it starts; give START/END with START first, "
            f"e.g. '{right.strip()}/{left.strip()}'"
        )
    return start, end


def date_windows(
    datetime: str | None,
    years: Sequence[int],
    months: Sequence[int],
) -> list[str | None]:
    """The date windows to search, as ``START/END`` strings (``[None]`` means any date).

    Args:
        datetime: one range ``"2021-07-01/2021-08-31"``, or None for any date.
        years: if not empty, one window per year and run of consecutive ``months`` instead of ``datetime``
            (``years=[2021, 2023], months=[7, 8]`` -> July-August 2021 and July-August 2023).
        months: months 1-12 of the season searched in each of ``years``.

    Raises:
        ConfigError: a month outside 1-12 or a malformed range.
    """
    if years:
        season = sorted({int(m) for m in months})
        if not season or season[0] < 1 or season[-1] > 12:
            raise ConfigError(f"search.months {list(months)} must be month numbers 1-12")
        runs: list[list[int]] = [[season[0]]]
        for m in season[1:]:
            if m == runs[-1][-1] + 1:
                runs[-1].append(m)
            else:
                runs.append([m])
        windows: list[str | None] = []
        for year in sorted({int(y) for y in years}):
            for run in runs:
                first = dt.date(year, run[0], 1)
                nxt = dt.date(year + (run[-1] == 12), run[-1] % 12 + 1, 1)
                windows.append(f"{first.isoformat()}/{(nxt - dt.timedelta(days=1)).isoformat()}")
        return windows
    parse_datetime_range(datetime)  # validates
    return [datetime]


def in_windows(when: dt.datetime, bounds: Sequence[tuple[dt.datetime | None, dt.datetime | None]]) -> bool:
    """True when ``when`` lies in any of the inclusive ``(start, end)`` bounds (None: open end)."""
    return any((start is None or when >= start) and (end is None or when <= end) for start, end in bounds)
