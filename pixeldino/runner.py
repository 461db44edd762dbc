"""Run a stage as a user-facing program: logging set up, user errors as one line, interruptions, exit codes.

Used by the CLI and by the Snakemake scripts in ``workflow/scripts`` (which pass ``snakemake.log`` and
``snakemake.output``); this module does not import Snakemake.

Exit statuses: 0 done; 1 a user error (``error: <message>``, one line); 130 interrupted by SIGINT (Ctrl-C) and 143
by SIGTERM (what SLURM and Snakemake send on timeout or cancel), each after one line ``interrupted; nothing written
to <outputs>`` once the stage's temporaries are removed (:mod:`pixeldino.io`); other errors are bugs and keep
their traceback.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

from pixeldino.errors import PixeldinoError
from pixeldino.io import (
    dask_interruptible,
    interrupted_outputs,
    raise_interrupted,
    remove_own_temporaries,
    reset_interruption,
    stop_worker_threads,
)

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


#: The signals that end a stage cleanly.
INTERRUPT_SIGNALS = (signal.SIGINT, signal.SIGTERM)
#: Seconds an interrupted stage may spend cleaning up before it ends anyway (environment variable
#: PIXELDINO_INTERRUPT_GRACE_S): third-party code cut short by the signal (a writer thread's queue, a progress bar)
#: can wait forever, and SLURM sends SIGKILL 30 s after its SIGTERM by default.
INTERRUPT_GRACE_S = 25.0


#: Code that must not be cut by an exception raised from a signal handler: the synchronisation primitives of the
#: standard library. An exception raised in ``Condition.notify`` between waking a waiter and dropping it from the
#: queue of waiters loses the next wake-up (seen: tensorboard's writer thread then never stops, ~1 in 10
#: interrupted trainings); one raised in ``Queue.put`` after the item is in but before the consumer is woken does
#: the same. Waiting (``Condition.wait``, ``Thread.join``) is safe to cut: it is written for KeyboardInterrupt.
_UNSAFE_FILES = {os.path.realpath(threading.__file__), os.path.realpath(queue.__file__)}
_SAFE_WAITS = {"wait", "wait_for", "_wait_for_tstate_lock"}
#: Delay before a signal that arrived in such code is handled again (via SIGALRM).
_RETRY_S = 0.002


def _cut_here_is_unsafe(frame: FrameType | None) -> bool:
    """True when the main thread was interrupted inside the standard library's locking code (see above)."""
    if frame is None:
        return False
    code = frame.f_code
    return code.co_name not in _SAFE_WAITS and os.path.realpath(code.co_filename) in _UNSAFE_FILES


class Interruption:
    """The first SIGINT/SIGTERM of a stage run, and a watchdog that ends a cleanup that hangs.

    The signal handler only notes the signal and raises (:func:`pixeldino.io.raise_interrupted`), except inside
    the standard library's locking code, where it tries again a moment later (SIGALRM). The watchdog, a daemon
    thread idle until then, ends the process with the usual line and status ``INTERRUPT_GRACE_S`` seconds after the
    signal if the cleanup has not finished, after removing this process's temporaries: a library cut by the
    exception may wait forever. It touches no Python lock the stuck main thread might hold: it writes to file
    descriptor 2 directly and leaves with ``os._exit``.
    """

    def __init__(self, describe: Callable[[int, list[Path]], str]) -> None:
        self.describe = describe
        self.signum: int | None = None  # the signal, once raised
        self.arrived: int | None = None  # the signal, from its arrival on
        self.at = 0.0
        self.report_lock = threading.Lock()
        self.done = threading.Event()
        self.grace = float(os.environ.get("PIXELDINO_INTERRUPT_GRACE_S", INTERRUPT_GRACE_S))
        self.watchdog = threading.Thread(target=self._watch, name="pixeldino-interrupt-watchdog", daemon=True)

    def handler(self, signum: int, frame: FrameType | None) -> None:
        """The handler of SIGINT, SIGTERM (the first one counts, later ones are ignored) and of the retry alarm."""
        if signum == signal.SIGALRM:
            if self.arrived is None or self.signum is not None:
                return
        elif self.arrived is not None:
            return
        else:
            self.arrived, self.at = signum, time.monotonic()
        if _cut_here_is_unsafe(frame):
            signal.setitimer(signal.ITIMER_REAL, _RETRY_S)
            return
        self.signum = self.arrived
        raise_interrupted(self.signum)

    def _watch(self) -> None:
        while not self.done.wait(0.25):
            if self.arrived is not None and time.monotonic() - self.at > self.grace:
                if not self.report_lock.acquire(blocking=False):
                    return  # the main thread is reporting: it is not stuck
                remove_own_temporaries()
                message = self.describe(self.arrived, interrupted_outputs())
                os.write(2, f"{message}\n".encode())
                os._exit(128 + self.arrived)


@contextmanager
def interruptible(describe: Callable[[int, list[Path]], str] | None = None) -> Iterator[Interruption | None]:
    """Turn SIGINT and SIGTERM into :class:`pixeldino.io.Interrupted` in the main thread during the block.

    The first signal is raised at once, or at the next safe point (after a critical rename, or once dask's workers
    finished their running task: :func:`pixeldino.io.raise_interrupted`); later ones are ignored, so that a second
    Ctrl-C or a repeated SIGTERM cannot cut the cleanup short. Outside the main thread (where Python cannot install
    handlers) the block runs unchanged and yields None.

    Args:
        describe: the line to print for a signal and the outputs that were being written, should the cleanup hang
            (:class:`Interruption`).

    Yields:
        The interruption state; after an interruption its watchdog runs until ``done`` is set (the caller reports).
    """
    if threading.current_thread() is not threading.main_thread():
        yield None
        return
    state = Interruption(describe or (lambda signum, outputs: "interrupted"))
    reset_interruption()
    previous = {sig: signal.signal(sig, state.handler) for sig in (*INTERRUPT_SIGNALS, signal.SIGALRM)}
    state.watchdog.start()
    try:
        with dask_interruptible():
            yield state
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        for sig, old in previous.items():
            signal.signal(sig, old)
        if state.signum is None:  # no interruption raised (none came, or it came as the stage ended): no watchdog
            state.done.set()


def interrupted_message(in_progress: Sequence[Path], outputs: Sequence[str]) -> str:
    """``interrupted; nothing written to <outputs>``: those being written, else the stage's outputs."""
    named = [str(p) for p in in_progress] or list(outputs)
    return f"interrupted; nothing written to {', '.join(named)}" if named else "interrupted; nothing written"


def run_stage(
    name: str,
    func: Callable[[], T],
    log_files: Sequence[str] | None = None,
    outputs: Sequence[str | os.PathLike[str]] | None = None,
) -> T:
    """Run ``func`` with logging; on a :class:`PixeldinoError` print ``error: <message>`` and exit with status 1.

    SIGINT and SIGTERM end it with ``interrupted; nothing written to <outputs>`` and status 130 / 143, after every
    temporary was removed (see module docs). The outputs named are those being written when the signal came
    (:attr:`pixeldino.io.Interrupted.outputs`), else ``outputs`` (the CLI passes its output options), else the verb's
    line (``name`` is the verb when the CLI calls).
    Other exceptions are bugs: they propagate with their traceback (which also goes to the log file).
    """
    setup_logging(log_files[0] if log_files else None)
    started = time.perf_counter()
    log.info("%s: started", name)
    declared = [str(p) for p in outputs or []]
    state: Interruption | None = None
    try:
        with interruptible(lambda signum, written: interrupted_message(written, declared)) as state:
            result = func()
    except KeyboardInterrupt as exc:
        if threading.current_thread() is threading.main_thread():
            for sig in INTERRUPT_SIGNALS:  # the cleanup is done; nothing may cut the report short
                signal.signal(sig, signal.SIG_IGN)
        stop_worker_threads()
        remove_own_temporaries()  # one made just before the signal, that no finally held yet
        if state is not None:
            state.report_lock.acquire()  # held by the watchdog only when it is about to end the process
        signum = int(getattr(exc, "signum", signal.SIGINT))
        message = interrupted_message(getattr(exc, "outputs", []), declared)
        logging.getLogger(f"pixeldino.{name}").warning(
            "%s (%s)", message, signal.Signals(signum).name, extra={"user_error": True}
        )
        print(message, file=sys.stderr)
        if state is not None:
            state.done.set()
        raise SystemExit(128 + signum) from None
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
    """Run a Snakemake script's stage, logging to its ``log:`` file, honouring its ``threads``, naming its
    ``output:`` files when interrupted."""
    # read by torch/numpy thread pools at import time, so before the stage imports them
    os.environ.setdefault("OMP_NUM_THREADS", str(int(getattr(smk, "threads", 1) or 1)))
    outputs = [str(p) for p in getattr(smk, "output", None) or []]
    return run_stage(name, func, list(smk.log) if smk.log else None, outputs=outputs)
