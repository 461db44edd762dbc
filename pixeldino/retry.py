"""Reading remote files robustly: GDAL's HTTP settings, retries of transient errors, and honouring Retry-After.

GDAL retries transient HTTP errors (500, 502, 504, timeouts) itself (``GDAL_HTTP_MAX_RETRY``, see
:data:`GDAL_READ_OPTIONS`) and each header read and block read is retried again with exponential backoff
(:func:`retry_read`). "Too many requests" and "busy" (429, 503) are left to pixeldino, because GDAL ignores the
``Retry-After`` header a provider sends with them: before GDAL opens a remote file, and again after such an error,
a HEAD request asks the server, and while it answers 429 or 503 the read waits for as long as its ``Retry-After``
says (an HTTP date or seconds, at most :data:`MAX_RETRY_AFTER_S`), or with exponential backoff when it says nothing
(:func:`wait_until_served`).
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import re
import time
from collections.abc import Callable
from typing import TypeVar

from pixeldino import __version__
from pixeldino.errors import PixeldinoError, first_line

log = logging.getLogger(__name__)
T = TypeVar("T")

#: GDAL options for reading remote files: retries of transient HTTP errors, no directory listing per open.
GDAL_READ_OPTIONS = {
    "GDAL_HTTP_MAX_RETRY": "5",
    "GDAL_HTTP_RETRY_DELAY": "1",
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "GDAL_HTTP_TIMEOUT": "60",
    # 429 and 503 come back to Python at once, which honours their Retry-After (GDAL >= 3.10; older GDAL retries
    # them itself with its own delays)
    "GDAL_HTTP_RETRY_CODES": "500,502,504",
}
#: "Come back later" statuses, handled with the server's Retry-After (see module docs).
THROTTLE_STATUSES = (429, 503)
#: Longest Retry-After honoured, seconds (a longer one is capped), and waits before giving up.
MAX_RETRY_AFTER_S = 300.0
THROTTLE_ATTEMPTS = 6
#: Backoff when a throttling server gives no Retry-After: 2, 4, 8, ... s.
THROTTLE_BACKOFF_S = 2.0
_THROTTLED = re.compile(r"\b(429|503)\b|too many requests|slow ?down|server busy", re.IGNORECASE)
#: Python-level attempts for a header or block read that failed with a transient error.
READ_ATTEMPTS = 4
_TRANSIENT = re.compile(r"\b(429|500|502|503|504)\b|timed? ?out|connection|curl error|temporar", re.IGNORECASE)


def retry_after_seconds(value: str | None, now: dt.datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date (RFC 9110), capped at
    :data:`MAX_RETRY_AFTER_S`; None when absent or unreadable."""
    if not value:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.timezone.utc)
        seconds = (when - (now or dt.datetime.now(dt.timezone.utc))).total_seconds()
    if math.isnan(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def _ask_server(href: str) -> tuple[int | None, float | None]:
    """Status and Retry-After of a HEAD request to an http(s) ``href``; ``(None, None)`` when it cannot be asked."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(href, method="HEAD", headers={"User-Agent": f"pixeldino/{__version__}"})
    try:
        with urllib.request.urlopen(request, timeout=float(GDAL_READ_OPTIONS["GDAL_HTTP_TIMEOUT"])) as resp:
            return resp.status, None
    except urllib.error.HTTPError as exc:
        return exc.code, retry_after_seconds(exc.headers.get("Retry-After"))
    except (urllib.error.URLError, OSError, ValueError):
        return None, None  # unreachable or not HTTP: GDAL will say what is wrong


def wait_until_served(href: str, what: str, attempts: int = THROTTLE_ATTEMPTS) -> None:
    """Wait while the server of an http(s) ``href`` answers 429 or 503, as long as its Retry-After says.

    Returns when the server answers anything else (including errors, which the read then reports), after
    ``attempts`` waits, or at once for non-HTTP hrefs.
    """
    if not href.startswith(("http://", "https://")):
        return
    for attempt in range(1, attempts + 1):
        status, retry_after = _ask_server(href)
        if status not in THROTTLE_STATUSES:
            return
        delay = retry_after if retry_after is not None else THROTTLE_BACKOFF_S * 2 ** (attempt - 1)
        log.warning(
            "%s: the server answers %d; waiting %.1f s (%s, %d/%d)",
            what,
            status,
            delay,
            "its Retry-After" if retry_after is not None else "backoff",
            attempt,
            attempts,
        )
        time.sleep(delay)


def retry_read(func: Callable[[], T], what: str, attempts: int = READ_ATTEMPTS, href: str | None = None) -> T:
    """Call ``func``; retry transient I/O errors (HTTP 5xx, timeouts) with exponential backoff, and 429/503 once
    the server of ``href`` no longer throttles (honouring its Retry-After, see :func:`wait_until_served`)."""
    for attempt in range(1, attempts + 1):
        try:
            return func()
        except PixeldinoError:
            raise
        except Exception as exc:
            if attempt == attempts or not _TRANSIENT.search(str(exc)):
                raise
            if _THROTTLED.search(str(exc)) and href and href.startswith(("http://", "https://")):
                log.warning(
                    "%s failed (%s); retry %d/%d when the server is ready", what, first_line(exc), attempt, attempts - 1
                )
                wait_until_served(href, what)
                continue
            delay = 0.5 * 2 ** (attempt - 1)
            if _THROTTLED.search(str(exc)):
                delay = max(delay, THROTTLE_BACKOFF_S * 2 ** (attempt - 1))
            log.warning("%s failed (%s); retry %d/%d in %.1f s", what, first_line(exc), attempt, attempts - 1, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")
