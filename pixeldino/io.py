"""Small I/O helpers shared by all stages: temporaries, atomic outputs, interruptions, JSON, raster conventions.

Temporaries. Every temporary file or directory pixeldino makes lies beside the output it is for and is named after
it, this host and this process: ``.<output name>.tmp-<host>-<pid>-<random><suffix>`` (:func:`new_temporary`;
:func:`temporary` removes it on exit, :func:`atomic_output` renames it into place). A run killed with SIGKILL cannot
remove its temporaries, so starting an output first removes the stale temporaries *of that output* whose process
is gone (same host, PID no longer alive: :func:`remove_stale_temporaries`); a live process's temporaries, and those
of other hosts (whose PIDs cannot be checked from here), are never touched, so concurrent jobs are safe.

Interruptions. SIGINT and SIGTERM become an :class:`Interrupted` exception in the main thread
(:func:`raise_interrupted`, installed by :mod:`pixeldino.runner`), so every ``finally`` and context manager cleans
up; before it is raised, the worker threads of dask are let finish their running task (queued ones are cancelled),
so that no thread still writes into a temporary being removed. Renames that must happen together run in a
:func:`critical_section`, which holds the interruption back until they are done.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import stat
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask, read without changing it where the platform allows.

    ``os.umask`` can only be read by setting it; between the two calls another thread's files would be created
    with the temporary value. Linux reports the umask in ``/proc/self/status``, so that is tried first; the
    fallback sets the restrictive 0o077 for that instant, so a racing file can only come out too private,
    never too open.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


def _umask_mode(st_mode: int, umask: int) -> int:
    """The permission bits ``open()``/``mkdir()`` would have given an entry of this type under ``umask``."""
    if stat.S_ISDIR(st_mode):
        # setgid on a directory is inherited from a group-shared parent by mkdir and mkdtemp alike; keep it
        return (0o777 & ~umask) | (st_mode & stat.S_ISGID)
    if st_mode & stat.S_IXUSR:
        return 0o777 & ~umask  # an executable the writer made on purpose stays executable (for those allowed)
    return 0o666 & ~umask


def follow_umask(path: str | os.PathLike[str]) -> None:
    """Give ``path`` (and, for a directory, everything below it) the mode a plain ``open()``/``mkdir()`` would.

    Writers that go through a private temporary (``tempfile.mkdtemp`` makes 0700 directories, safetensors'
    ``save_file`` writes 0600 files) would otherwise publish outputs that colleagues in the same group cannot
    read. Call it on the temporary just before renaming it into place, so the final name never appears with the
    wrong mode. Symbolic links are left alone (their mode is meaningless and chmod would follow them). Only
    entries whose mode differs are touched, so a large zarr store costs one ``stat`` per file.
    """
    umask = current_umask()
    root = Path(path)

    def fix(p: Path) -> None:
        st = p.lstat()
        if stat.S_ISLNK(st.st_mode) or not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
            return
        mode = _umask_mode(st.st_mode, umask)
        if stat.S_IMODE(st.st_mode) != mode:
            os.chmod(p, mode)

    fix(root)
    if root.is_dir() and not root.is_symlink():
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                fix(Path(dirpath, name))


# ------------------------------------------------------------------------------------------------ temporaries

#: the marker between an output's name and the owner of its temporary
_TMP_MARK = ".tmp-"
_IN_PROGRESS: list[Path] = []
#: the temporaries this process made and has not removed yet (see :func:`remove_own_temporaries`)
_OWN_TEMPORARIES: set[Path] = set()
# reentrant: never held while waiting, and the signal handler only copies the list without it
_IN_PROGRESS_LOCK = threading.RLock()


def _host_tag() -> str:
    """This host's name as it appears in temporary names (letters, digits and dashes only)."""
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname().split(".")[0])[:32] or "host"


def _temporary_pattern(final: Path) -> re.Pattern[str]:
    return re.compile(
        # leading dots: a temporary of a temporary (an atomic write nested in another) starts with one more
        r"^\.+" + re.escape(f"{final.name}{_TMP_MARK}") + r"(?P<host>[A-Za-z0-9-]+)-(?P<pid>\d+)-[0-9a-f]{8}"
    )


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    except OSError:
        return True  # cannot tell: keep its files
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def remove_stale_temporaries(path: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporaries of output ``path`` left by processes of this host that are gone (e.g. SIGKILLed).

    Returns:
        The temporaries removed.
    """
    final = Path(path)
    if not final.parent.is_dir():
        return []
    pattern = _temporary_pattern(final)
    host = _host_tag()
    removed: list[Path] = []
    for entry in final.parent.glob(f".*{glob_escape(final.name)}{_TMP_MARK}*"):
        match = pattern.match(entry.name)
        if match is None or match["host"] != host or _pid_alive(int(match["pid"])):
            continue
        _remove(entry)
        removed.append(entry)
    return removed


def is_temporary(path: str | os.PathLike[str]) -> bool:
    """True for a name made by :func:`new_temporary` (``.<output>.tmp-<host>-<pid>-<random>...``)."""
    return re.match(r"^\..+" + re.escape(_TMP_MARK) + r"[A-Za-z0-9-]+-\d+-[0-9a-f]{8}", Path(path).name) is not None


def glob_escape(name: str) -> str:
    """``name`` with glob's special characters escaped (``[`` ``]`` ``*`` ``?``)."""
    return re.sub(r"([\[\]*?])", r"[\1]", name)


def new_temporary(path: str | os.PathLike[str], *, directory: bool = False, suffix: str | None = None) -> Path:
    """A new temporary beside output ``path``, named after it, this host and this process (see module docs).

    Stale temporaries of the same output are removed first. A directory is created (with the mode the umask
    gives, unlike ``tempfile.mkdtemp``'s 0700); a file is only named, for the writer to create.

    Args:
        path: the output the temporary is for.
        directory: create a directory.
        suffix: the name's ending; default the output's suffix for a file (drivers chosen by extension still
            work), none for a directory.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(final)
    ending = ("" if directory else final.suffix) if suffix is None else suffix
    tmp = final.with_name(f".{final.name}{_TMP_MARK}{_host_tag()}-{os.getpid()}-{secrets.token_hex(4)}{ending}")
    _OWN_TEMPORARIES.add(tmp)  # before it exists: an interruption may come before the caller holds it
    if directory:
        tmp.mkdir()
    return tmp


def remove_own_temporaries() -> list[Path]:
    """Remove every temporary this process made that is still there; for the end of an interrupted run.

    A signal can arrive between the creation of a temporary and the moment its maker's ``try``/``finally`` holds
    it (Python runs the handler right after the ``mkdir`` call returns); this removes such a temporary too. Only
    this process's own temporaries are touched: their names carry its host and PID.
    """
    removed = []
    for tmp in sorted(_OWN_TEMPORARIES):
        if tmp.exists() or tmp.is_symlink():
            _remove_temporary(tmp)
            removed.append(tmp)
        _OWN_TEMPORARIES.discard(tmp)
    return removed


def _remove_temporary(tmp: Path) -> None:
    if _INTERRUPTED and _in_main_thread():
        stop_worker_threads()  # an interrupted run's helpers might still write into it
    _remove(tmp)
    # side-cars a writer may have made next to a temporary file (GDAL's .aux.xml, SQLite's -journal)
    for extra in tmp.parent.glob(glob_escape(tmp.name) + "*"):
        _remove(extra)
    _OWN_TEMPORARIES.discard(tmp)


@contextlib.contextmanager
def writing(*paths: str | os.PathLike[str] | None) -> Iterator[None]:
    """Mark outputs as being written during the block: an interruption names them (:func:`outputs_in_progress`)."""
    entries = [Path(p) for p in paths if p is not None]
    with _IN_PROGRESS_LOCK:
        _IN_PROGRESS.extend(entries)
    try:
        yield
    finally:
        with _IN_PROGRESS_LOCK:
            for entry in entries:
                _IN_PROGRESS.remove(entry)


def outputs_in_progress() -> list[Path]:
    """The outputs being written now (each once, in the order they were started; temporaries written atomically
    themselves are left out: their output is named instead)."""
    with _IN_PROGRESS_LOCK:
        return [p for p in dict.fromkeys(_IN_PROGRESS) if not is_temporary(p)]


@contextlib.contextmanager
def temporary(
    path: str | os.PathLike[str],
    *,
    directory: bool = False,
    suffix: str | None = None,
    outputs: Sequence[str | os.PathLike[str] | None] | None = None,
) -> Iterator[Path]:
    """A temporary beside output ``path`` (:func:`new_temporary`), removed on exit whatever happens.

    Args:
        path: the output the temporary is for.
        directory: a directory (created) instead of a file name.
        suffix: the name's ending; default the output's suffix.
        outputs: the outputs being written meanwhile (default ``path``), named if the run is interrupted.

    Example:
        >>> with temporary(out, directory=True) as tmpdir:
        ...     write_parts(tmpdir); gtiff_to_cog(tmpdir / "stack.tif", out)
    """
    tmp = new_temporary(path, directory=directory, suffix=suffix)
    try:
        with writing(*(outputs if outputs is not None else [path])):
            yield tmp
    finally:
        _remove_temporary(tmp)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary sibling path; rename it to ``path`` only if the block finishes without error.

    An interrupted or failed stage therefore never leaves a file (or directory, e.g. a zarr store) that looks
    complete, and a killed one leaves a temporary that the next write of ``path`` removes (module docs). The
    temporary name keeps the suffix so that drivers chosen by extension (GPKG, GeoTIFF) still work. The published
    output gets the mode the umask gives a plain ``open()``/``mkdir()`` (:func:`follow_umask`), whatever private
    mode the writer gave its file.

    Example:
        >>> with atomic_output("out.gpkg") as tmp:
        ...     gdf.to_file(tmp, layer="rts")
    """
    final = Path(path)
    tmp = new_temporary(final)
    try:
        with writing(final):
            yield tmp
            if tmp.exists():
                follow_umask(tmp)
        # an old directory removed must be followed by the new one renamed; an interruption held back meanwhile is
        # raised after it, when this output no longer counts as being written
        with critical_section():
            if final.is_dir() and not final.is_symlink():
                shutil.rmtree(final)
            os.replace(tmp, final)
    finally:
        _remove_temporary(tmp)


# ---------------------------------------------------------------------------------------------- interruptions


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived; raised in the main thread so that every ``finally`` and context manager runs.

    A :class:`KeyboardInterrupt`, so ``except Exception`` handlers let it pass.

    Attributes:
        signum: the signal's number (exit status ``128 + signum``: 130 for SIGINT, 143 for SIGTERM).
        outputs: the outputs that were being written when it arrived (:func:`outputs_in_progress`).
    """

    def __init__(self, signum: int, outputs: Sequence[Path] = ()) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.outputs = list(outputs)


_CRITICAL_DEPTH = 0
_DASK_DEPTH = 0
_PENDING: list[int] = []
#: set once an interruption was raised: temporaries removed from then on first let background writers settle
_INTERRUPTED: list[int] = []
_INTERRUPTED_OUTPUTS: list[Path] = []


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def critical_section() -> Iterator[None]:
    """Hold an interruption back until the block is done (in the main thread, where it is raised).

    For short steps that must not be cut in two, e.g. removing an old output and renaming the new one into place.
    An interruption that arrived meanwhile is raised when the block ends without an error of its own.
    """
    global _CRITICAL_DEPTH
    if not _in_main_thread():
        yield
        return
    _CRITICAL_DEPTH += 1
    try:
        yield
    except BaseException:
        _CRITICAL_DEPTH -= 1
        raise
    _CRITICAL_DEPTH -= 1
    _raise_pending()


def _raise_pending() -> None:
    """Raise an interruption held back, once no critical section and no dask computation holds it any more."""
    if _PENDING and _CRITICAL_DEPTH == 0 and _DASK_DEPTH == 0:
        signum = _PENDING[0]
        _PENDING.clear()
        _raise(signum, drain=False)


def stop_worker_threads(timeout: float = 120.0) -> None:
    """Let the background writers of an interrupted main thread settle, so that its cleanup can run.

    A computation interrupted in the main thread leaves its helpers running, and they would go on writing into
    files that the cleanup is about to close or remove (or recreate a removed temporary directory). So:

    * dask's worker threads finish the task each is running; the queued ones are cancelled. The pools are
      forgotten, so a later computation in this process starts new ones.
    * zarr's event loop finishes the writes it has in flight (each is one array assignment).

    Called from safe points of the main thread only (never from a signal handler, which may have interrupted the
    main thread while it held one of the locks these pools need): after a dask task completed
    (:func:`dask_interruptible`) and before a temporary is removed after an interruption.
    """
    _settle_zarr(timeout)
    threaded = sys.modules.get("dask.threaded")
    if threaded is None:
        return
    pools = [getattr(threaded, "default_pool", None)]
    with threaded.pools_lock:
        for per_thread in list(threaded.pools.values()):
            pools.extend(list(per_thread.values()))
        setattr(threaded, "default_pool", None)  # noqa: B010  (a module attribute dask's stubs do not declare)
        threaded.pools.clear()
    for pool in pools:
        if pool is not None and hasattr(pool, "shutdown"):
            pool.shutdown(wait=True, cancel_futures=True)


def _settle_zarr(timeout: float) -> None:
    """Wait until zarr's IO event loop has finished every task it runs (see :func:`stop_worker_threads`)."""
    import asyncio

    zsync = sys.modules.get("zarr.core.sync")
    loops = getattr(zsync, "loop", None) if zsync is not None else None
    zloop = loops[0] if loops else None
    if zloop is None or not zloop.is_running():
        return

    async def settle() -> None:
        current = asyncio.current_task()
        pending = [t for t in asyncio.all_tasks() if t is not current]
        if pending:
            await asyncio.wait(pending, timeout=timeout)

    try:
        asyncio.run_coroutine_threadsafe(settle(), zloop).result(timeout=timeout + 5)
    except Exception:  # a loop stopping under us: nothing left to wait for
        pass


def raise_interrupted(signum: int) -> None:
    """Raise :class:`Interrupted` for ``signum`` now, or at the next safe point.

    Called by the signal handler of :mod:`pixeldino.runner` (in the main thread, between any two bytecodes, so it
    takes no lock and waits for nothing). Held back while a :func:`critical_section` runs (raised at its end) and
    while the main thread runs a dask computation (raised after the next task completes, once the workers have
    finished their running task: :func:`dask_interruptible`), so that no worker still writes into a file that the
    cleanup closes or removes.

    Raises:
        Interrupted: unless held back.
    """
    if _CRITICAL_DEPTH > 0 or _DASK_DEPTH > 0:
        if not _PENDING:
            _PENDING.append(signum)
        return
    _raise(signum, drain=False)


def _raise(signum: int, *, drain: bool) -> None:
    if drain:
        stop_worker_threads()
    outputs = _outputs_now()
    _INTERRUPTED_OUTPUTS[:] = outputs
    _INTERRUPTED.append(signum)
    raise Interrupted(signum, outputs)


def interrupted_outputs() -> list[Path]:
    """The outputs an interruption found being written; before it is raised, those being written now.

    Lock-free (a copy of the list), so that a signal handler or a watchdog thread can call it whatever the main
    thread holds.
    """
    if _INTERRUPTED:
        return list(_INTERRUPTED_OUTPUTS)
    return _outputs_now()


def _outputs_now() -> list[Path]:
    """:func:`outputs_in_progress` without its lock: a copy of the list (safe from a signal handler)."""
    return list(dict.fromkeys(p for p in list(_IN_PROGRESS) if not is_temporary(p)))


def reset_interruption() -> None:
    """Forget an interruption of an earlier stage run in this process (a new run starts clean)."""
    _PENDING.clear()
    _INTERRUPTED.clear()
    _INTERRUPTED_OUTPUTS.clear()


@contextlib.contextmanager
def dask_interruptible() -> Iterator[None]:
    """During the block, an interruption of a dask computation in the main thread waits for a safe point.

    The signal handler cannot stop dask's workers itself (see :func:`stop_worker_threads`): a dask callback counts
    the computations the main thread runs and, after each completed task (or at the computation's end), raises a
    pending interruption once the workers have finished their running task and the queued ones are cancelled.
    """
    from dask.callbacks import Callback

    def start(dsk: Any) -> None:
        global _DASK_DEPTH
        if _in_main_thread():
            _DASK_DEPTH += 1

    def posttask(key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
        if _in_main_thread() and _PENDING:
            signum = _PENDING[0]
            _PENDING.clear()
            _raise(signum, drain=True)  # dask's finish callback (below) then lowers the depth

    def finish(dsk: Any, state: Any, failed: bool) -> None:
        global _DASK_DEPTH
        if _in_main_thread():
            _DASK_DEPTH -= 1
            if not failed:
                _raise_pending()

    with Callback(start=start, posttask=posttask, finish=finish):
        yield


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_json(path: str | os.PathLike[str], data: Any) -> Path:
    """Write ``data`` as indented JSON atomically (numpy scalars and paths are converted)."""
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=_json_default) + "\n")
    return Path(path)


def read_json(path: str | os.PathLike[str]) -> Any:
    """Read a JSON file, turning a missing or malformed file into a clear :class:`InputError`."""
    from pixeldino.errors import InputError

    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: file not found")
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{p}: not valid JSON ({exc.msg} at line {exc.lineno}); re-create it") from exc


#: Creation options for every GeoTIFF pixeldino writes: tiled, compressed, overviews built by the COG driver.
COG_PROFILE: dict[str, Any] = {
    "driver": "COG",
    "compress": "DEFLATE",
    "predictor": "2",
    "blocksize": 512,
    "overview_resampling": "nearest",
    "BIGTIFF": "IF_SAFER",
}

#: Creation options of the intermediate tiled GeoTIFF that streamed (windowed) writes go to before COG conversion.
TILED_GTIFF_PROFILE: dict[str, Any] = {
    "driver": "GTiff",
    "tiled": True,
    "blockxsize": 512,
    "blockysize": 512,
    "compress": "DEFLATE",
    "predictor": 2,
    "BIGTIFF": "IF_SAFER",
}


def gtiff_to_cog(src: str | os.PathLike[str], dst: str | os.PathLike[str], **overrides: Any) -> Path:
    """Convert a (tiled) GeoTIFF into a Cloud-Optimized GeoTIFF at ``dst`` (atomically).

    GDAL's COG driver streams block by block, so this does not hold the raster in memory.
    """
    import rasterio
    import rasterio.shutil

    options = {k: v for k, v in COG_PROFILE.items() if k != "driver"}
    options.update(overrides)
    with atomic_output(dst) as tmp:
        # a fixed block cache: GDAL's default (5 % of RAM) would grow with the raster being converted
        with rasterio.Env(GDAL_NUM_THREADS="ALL_CPUS", GDAL_CACHEMAX=256):
            rasterio.shutil.copy(str(src), str(tmp), driver="COG", **options)
    return Path(dst)
