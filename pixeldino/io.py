"""Small I/O helpers shared by all stages: atomic outputs, JSON, and raster writing conventions."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import threading
import uuid
from collections.abc import Iterator
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


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary sibling path; rename it to ``path`` only if the block finishes without error.

    An interrupted or failed stage therefore never leaves a file (or directory, e.g. a zarr store) that looks
    complete. The temporary name keeps the suffix so that drivers chosen by extension (GPKG, GeoTIFF) still work.
    The published output gets the mode the umask gives a plain ``open()``/``mkdir()`` (:func:`follow_umask`),
    whatever private mode the writer gave its file.

    Example:
        >>> with atomic_output("out.gpkg") as tmp:
        ...     gdf.to_file(tmp, layer="rts")
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.stem}.tmp-{uuid.uuid4().hex[:8]}{final.suffix}")
    try:
        yield tmp
        if tmp.exists():
            follow_umask(tmp)
        if final.is_dir() and not final.is_symlink():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()
        # GDAL side-cars (e.g. .aux.xml) that may have been created next to the temporary file
        for extra in tmp.parent.glob(tmp.name + ".*"):
            extra.unlink(missing_ok=True)


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
