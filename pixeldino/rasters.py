"""Opening and reading rasters so that a failure is never silent: the one home of every raster read in pixeldino.

Every stage opens its input rasters with :func:`open_raster` and reads them with :func:`read_raster` (or inside
:func:`reading`), so that a missing, unreadable, ungeoreferenced, truncated or corrupt file becomes one
:class:`~pixeldino.errors.InputError` line naming the file and the fix, instead of a traceback or, worse, zeros.

Why a read can lie. GDAL reports a failure in two ways: the call returns an error, which rasterio turns into a
``RasterioIOError``; or the failure is only *reported to GDAL's error handler* while the call succeeds. The second
happens when a driver decodes in GDAL's own worker threads: a truncated JPEG2000 band read with several threads
logs ``opj_get_decoded_tile() failed`` on stderr and returns a block of zeros (GDAL 3.10, JP2OpenJPEG). Three
defences, all here:

1. Reads run with ``GDAL_NUM_THREADS=1`` (:data:`READ_OPTIONS`): the decoder runs in the reading thread, where a
   decode failure is the call's own error and reaches rasterio (measured: the truncated JPEG2000 band then raises
   ``Read failed`` instead of returning zeros). The parallelism of the stages comes from reading several windows or
   bands at once, not from GDAL's threads inside one read.
2. Errors that GDAL reports in the reading thread while the call still succeeds reach rasterio's error handler,
   which logs them as ``GDAL signalled an error`` on the ``rasterio._err`` / ``rasterio._env`` loggers; a tap on
   those loggers (:class:`_GdalErrorTap`) collects them during a read, and :func:`reading` fails on any.
3. Every rasterio/GDAL exception of a read becomes an InputError quoting GDAL's own message (:func:`gdal_message`).

A Python error handler installed process-wide in GDAL would see the worker threads' messages too, but GDAL calls it
while holding its error mutex and the callback must take the GIL: a thread that holds the GIL and reports an error
at the same moment would deadlock the process. Hence (1) rather than such a handler.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import warnings
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.io
from affine import Affine
from rasterio.errors import NotGeoreferencedWarning, RasterioError

from pixeldino.errors import InputError, first_line

#: GDAL options of every read: decode in the reading thread, so that a decode failure is an error (module docs).
READ_OPTIONS: dict[str, str] = {"GDAL_NUM_THREADS": "1"}
#: The default advice for a raster that cannot be read.
DEFAULT_FIX = "re-create or re-download it"
#: What rasterio's error handler logs for each error GDAL reports (rasterio >= 1.4).
_SIGNAL = "GDAL signalled an error"
_TAPPED_LOGGERS = ("rasterio._err", "rasterio._env")

#: what/fix of the datasets opened by :func:`open_raster`, so that reads name them without repeating it
_LABELS: weakref.WeakKeyDictionary[Any, tuple[str, str]] = weakref.WeakKeyDictionary()


class _Capture:
    """The GDAL errors reported during one :func:`reading` block (in its thread, or in any thread)."""

    def __init__(self, thread: int | None) -> None:
        self.thread = thread
        self.messages: list[str] = []


class _GdalErrorTap(logging.Filter):
    """A filter on rasterio's error loggers: hands every ``GDAL signalled an error`` record to the open captures.

    The tapped loggers are set to pass INFO records (rasterio logs GDAL's errors at INFO), so the filter decides
    their visibility itself: a record is shown only when the ``rasterio`` logger's level (what the user or
    :func:`pixeldino.runner.setup_logging` configured) lets it through.
    """

    def __init__(self) -> None:
        super().__init__()
        self.captures: list[_Capture] = []
        self.lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage().startswith(_SIGNAL) and self.captures:
            message = _signalled_message(record)
            with self.lock:
                for capture in self.captures:
                    if capture.thread is None or capture.thread == record.thread:
                        capture.messages.append(message)
        parent = logging.getLogger("rasterio")
        return record.levelno >= parent.getEffectiveLevel()


_TAP = _GdalErrorTap()
_TAP_LOCK = threading.Lock()


def _signalled_message(record: logging.LogRecord) -> str:
    """GDAL's own text from a ``GDAL signalled an error: err_no=.., msg=..`` record."""
    args = record.args
    if isinstance(args, tuple) and len(args) == 2 and isinstance(args[1], str):
        return args[1]
    return record.getMessage()


def _install_tap() -> None:
    """Attach the tap to rasterio's error loggers (once) and let their INFO records (and any finer ones the
    ``rasterio`` logger shows, e.g. GDAL's debug messages) reach it."""
    level = min(logging.INFO, logging.getLogger("rasterio").getEffectiveLevel())
    for name in _TAPPED_LOGGERS:
        logger = logging.getLogger(name)
        # checked on every read: setLevel clears every logger's cache, so it is only called when needed
        if logger.level != level:
            with _TAP_LOCK:
                logger.setLevel(level)
        if _TAP not in logger.filters:
            with _TAP_LOCK:
                if _TAP not in logger.filters:
                    logger.addFilter(_TAP)


def gdal_message(exc: BaseException) -> str:
    """The most telling line of a rasterio/GDAL exception: GDAL's own message from its chain of causes.

    rasterio raises ``Read failed. See previous exception for details.`` with GDAL's errors as ``__cause__``
    (e.g. ``IReadBlock failed at X offset 0, Y offset 1: opj_get_decoded_tile() failed``); that cause is quoted.
    """
    from rasterio._err import CPLE_BaseError

    cause: BaseException | None = exc
    seen: set[int] = set()
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, CPLE_BaseError):
            return first_line(cause)
        cause = cause.__cause__ or cause.__context__
    return first_line(exc)


def _one_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[0] if lines else "no message"


def _is_local(path: str | os.PathLike[str]) -> bool:
    text = str(path)
    return "://" not in text and not text.startswith("/vsi")


def georeference_problem(crs: Any, transform: Affine, gcps: bool = False) -> str | None:
    """Why a raster with this CRS and geotransform cannot be placed on the map; None when it can."""
    if gcps:
        return None  # placed by ground control points (a warp places it)
    if crs is None:
        return "has no CRS"
    if transform is None or transform.is_identity:
        return "has no geotransform"
    return None


@contextlib.contextmanager
def open_raster(
    path: str | os.PathLike[str],
    what: str = "raster",
    fix: str = DEFAULT_FIX,
    *,
    georeferenced: bool = True,
) -> Iterator[rasterio.io.DatasetReader]:
    """Open a raster for reading; every problem with the file is one :class:`InputError` line.

    Reads inside the block should go through :func:`read_raster` (which names the file and ``fix`` the same way
    and runs with :data:`READ_OPTIONS`).

    Args:
        path: a local path or a GDAL-readable URL.
        what: what the file is, for messages (``"scene"``, ``"quality mask"``, ``"probability raster"``).
        fix: what the user should do when the file is unreadable (e.g. ``"fetch the scene again"``).
        georeferenced: require a CRS and a geotransform (or ground control points).

    Raises:
        InputError: the file is missing, cannot be opened (not a raster, truncated header, unsupported format), or
            (with ``georeferenced``) has no CRS or no geotransform.

    Example:
        >>> with open_raster("scene.tif", "scene", "fetch the scene again") as src:
        ...     block = read_raster(src, 1, window=((0, 256), (0, 256)))
    """
    p = Path(path) if _is_local(path) else path
    if isinstance(p, Path) and not p.exists():
        raise InputError(f"{p}: {what} not found; check the path")
    with rasterio.Env(**READ_OPTIONS), warnings.catch_warnings():
        # an ungeoreferenced file is reported below as one line, not as a warning
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        try:
            ds = rasterio.open(p)
        except (RasterioError, OSError) as exc:
            raise InputError(f"{p}: cannot read {what} ({gdal_message(exc)}); {fix}") from exc
    # no rasterio.Env around the block: datasets are closed in any order (rasterio's Envs must nest), and every
    # read sets READ_OPTIONS itself (read_raster, reading)
    with ds:
        if georeferenced:
            problem = georeference_problem(ds.crs, ds.transform, gcps=bool(ds.gcps[0]))
            if problem:
                raise InputError(
                    f"{p}: {what} {problem}, so it cannot be placed on the map; "
                    f"set it (gdal_edit.py -a_srs / -a_ullr) or {fix}"
                )
        _LABELS[ds] = (what, fix)
        yield ds


@contextlib.contextmanager
def gdal_errors(all_threads: bool = False) -> Iterator[list[str]]:
    """Collect the errors GDAL reports during the block (the list fills as they come), raised or only logged.

    The block runs with :data:`READ_OPTIONS`. Nothing is raised here: callers that retry transient errors
    (:mod:`pixeldino.loader`) decide per attempt; others use :func:`reading`.

    Args:
        all_threads: also collect errors reported in other threads (for reads that a thread pool does, e.g. the
            dask threads of odc-stac); by default only this thread's errors count, so that a concurrent read of
            another file is not blamed on this one.
    """
    _install_tap()
    capture = _Capture(None if all_threads else threading.get_ident())
    with _TAP.lock:
        _TAP.captures.append(capture)
    try:
        with rasterio.Env(**READ_OPTIONS):
            yield capture.messages
    finally:
        with _TAP.lock:
            _TAP.captures.remove(capture)


def read_failure(path: str | os.PathLike[str], what: str, fix: str, detail: str) -> InputError:
    """The one-line error of a read that failed (``detail``: GDAL's message)."""
    return InputError(f"{path}: cannot read {what} ({_one_line(detail)}); the file is corrupt or truncated: {fix}")


@contextlib.contextmanager
def reading(
    path: str | os.PathLike[str],
    what: str = "raster",
    fix: str = DEFAULT_FIX,
    *,
    all_threads: bool = False,
) -> Iterator[None]:
    """Run reads of ``path`` so that any failure GDAL reports, raised or only logged, is one InputError line.

    Args:
        path: the file read in the block, named in the message.
        what: what it is, for the message.
        fix: what to do about it, for the message.
        all_threads: see :func:`gdal_errors`.

    Raises:
        InputError: a rasterio/GDAL error was raised, or GDAL reported an error while the read seemed to succeed.
    """
    with gdal_errors(all_threads) as errors:
        try:
            yield
        except RasterioError as exc:
            raise read_failure(path, what, fix, gdal_message(exc)) from exc
    if errors:
        raise read_failure(path, what, fix, f"GDAL reported: {errors[0]}")


def read_raster(src: rasterio.io.DatasetReader, *args: Any, **kwargs: Any) -> np.ndarray:
    """``src.read(*args, **kwargs)``, checked by :func:`reading`: a failed or partly decoded read is an InputError.

    The file is named with the ``what``/``fix`` given to :func:`open_raster` (defaults for other datasets, e.g. a
    ``WarpedVRT``: ``raster`` / :data:`DEFAULT_FIX`); pass ``what=`` and ``fix=`` to override them.
    """
    what, fix = _LABELS.get(src, ("raster", DEFAULT_FIX))
    what = kwargs.pop("what", what)
    fix = kwargs.pop("fix", fix)
    with reading(src.name, what, fix):
        data: np.ndarray = src.read(*args, **kwargs)  # a masked array with masked=True: kept as it is
    return data
