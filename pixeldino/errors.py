"""Errors that pixeldino reports to users as one clear line.

Library code raises a subclass of :class:`PixeldinoError` whenever the cause is the user's input (a missing file,
a wrong CRS, an empty search, ...). The message must name the offending file or value *and* the fix. The CLI and
the workflow scripts print ``error: <message>`` and exit non-zero instead of a traceback; anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations


class PixeldinoError(Exception):
    """Base class for user-facing errors (bad input, bad config); the message is shown as is."""


class ConfigError(PixeldinoError):
    """The configuration is invalid."""


class InputError(PixeldinoError):
    """An input file is missing, corrupt or inconsistent (bands, CRS, nodata)."""


class NoScenesError(PixeldinoError):
    """A scene search matched nothing."""


class ModelError(PixeldinoError):
    """A model file is missing, corrupt, or does not fit the data."""


class TrainingError(PixeldinoError):
    """Training cannot start or cannot go on (empty chip store, no positives, NaN loss)."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's text, for a one-line message; its type name when the text is empty.

    Third-party errors (GDAL, pyogrio, pystac, torch) often carry multi-line texts whose first line says what went
    wrong; a user-facing error quotes only that line so it stays one line.
    """
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
