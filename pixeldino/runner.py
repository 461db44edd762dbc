"""Run a stage as a user-facing program: logging set up, user errors as one line, exit codes.

Used by the CLI and by the Snakemake scripts in ``workflow/scripts`` (which pass ``snakemake.log``); this module
does not import Snakemake.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from pixeldino.errors import PixeldinoError

T = TypeVar("T")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
log = logging.getLogger("pixeldino")


def setup_logging(log_file: str | os.PathLike[str] | None = None, verbose: bool = False) -> None:
    """Log to stderr and, when given, to ``log_file`` (created with its directory)."""
    console = logging.StreamHandler(sys.stderr)
    # user errors are printed once, plainly, by run_stage; keep them out of the console log
    console.addFilter(lambda record: not getattr(record, "user_error", False))
    handlers: list[logging.Handler] = [console]
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, mode="w"))
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format=LOG_FORMAT, handlers=handlers, force=True
    )
    logging.captureWarnings(True)
    for noisy in ("rasterio", "fiona", "pyogrio", "urllib3", "matplotlib", "PIL", "numexpr"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run_stage(name: str, func: Callable[[], T], log_files: Sequence[str] | None = None) -> T:
    """Run ``func`` with logging; on a :class:`PixeldinoError` print ``error: <message>`` and exit with status 1.

    Other exceptions are bugs: they propagate with their traceback (which also goes to the log file).
    """
    setup_logging(log_files[0] if log_files else None)
    started = time.perf_counter()
    log.info("%s: started", name)
    try:
        result = func()
    except PixeldinoError as exc:
        log.debug("details", exc_info=True)
        logging.getLogger(f"pixeldino.{name}").error("%s", exc, extra={"user_error": True})
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    except Exception:
        log.exception("%s failed with an unexpected error (a bug: please report it with this log)", name)
        raise
    log.info("%s: done in %.1f s", name, time.perf_counter() - started)
    return result


def snakemake_stage(smk: Any, name: str, func: Callable[[], T]) -> T:
    """Run a Snakemake script's stage, logging to its ``log:`` file and honouring its ``threads``."""
    # read by torch/numpy thread pools at import time, so before the stage imports them
    os.environ.setdefault("OMP_NUM_THREADS", str(int(getattr(smk, "threads", 1) or 1)))
    return run_stage(name, func, list(smk.log) if smk.log else None)
