"""Co-registration between years: the sub-pixel shift of each scene of a tile against one reference scene.

Sentinel-2 scenes of one MGRS tile share a pixel grid, but the ground is not always where the grid says: before
the Global Reference Image (2021) multi-temporal misregistration reached a pixel, and a slump outline moved by a
pixel reads as several hundred m2 of "growth". So, per tile, every scene is compared with a reference scene (the
clearest of the earliest year) and the shift is measured, recorded in a per-tile JSON sidecar, and removed from
the polygons before tracking (:func:`pixeldino.change.run_change`), or the tracking refuses a shift above
``max_shift_px``.

Method: phase correlation on one stable band (``B08`` by default: 10 m native, strong terrain texture, little
change between summers) over pixels that are valid and clear in both scenes (non-clear pixels are filled with the
clear mean and each block is tapered by a Hann window, so image edges do not correlate). The integer peak of
the normalised cross-power spectrum is refined to 1/``upsample`` px by a matrix-multiply DFT around it
(Guizar-Sicairos et al. 2008, "Efficient subpixel image registration algorithms"). The scene is cut into blocks of
``block`` px and only blocks that are (almost, :data:`MIN_CLEAR_SHARE`) entirely clear in both scenes are used:
phase correlation whitens the spectrum, so the sharp edges of a cloud hole shared by both images would pull the
peak towards zero shift (measured: a 1.6 px shift read as 0.15 px). The median over up to ``max_blocks`` of them
is taken, so memory stays bounded and one changed block cannot pull the estimate.

Convention: ``dx_px``, ``dy_px`` is where the scene's content lies relative to the reference, in pixels (+x =
east/columns, +y = south/rows): a feature at reference pixel (row r, col c) appears at (r + dy, c + dx).
``correction_m`` is the map translation that undoes it (``[-dx * res, +dy * res]`` in the scene CRS).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rasterio.errors import RasterioIOError
from rasterio.windows import Window

from pixeldino import __version__
from pixeldino.bands import band_indexes, canonical_band
from pixeldino.errors import InputError
from pixeldino.io import read_json, write_json
from pixeldino.quality import CLEAR, find_quality_mask
from pixeldino.rasters import open_raster, read_raster

log = logging.getLogger(__name__)

#: Band used for the phase correlation unless told otherwise.
DEFAULT_BAND = "B08"
#: Shifts above this (pixels) make the change tracking stop instead of correcting them.
DEFAULT_MAX_SHIFT_PX = 2.0
#: Sub-pixel refinement factor (1/20 px) and block layout for large scenes.
UPSAMPLE = 20
BLOCK = 256
MAX_BLOCKS = 25
#: A block is measured only with at least this share of pixels clear in both scenes.
MIN_CLEAR_SHARE = 0.98
#: What to do about a scene or mask that cannot be read.
_FIX = "fetch it again (pixeldino fetch)"


def _upsampled_dft(data: np.ndarray, region: int, factor: int, offsets: np.ndarray) -> np.ndarray:
    """Inverse DFT of ``data`` sampled on a ``region``-sized grid at 1/``factor`` px around ``offsets``."""
    for axis in (1, 0):
        n = data.shape[axis]
        kernel = np.exp(-2j * np.pi * (np.arange(region) - offsets[axis])[:, None] * np.fft.fftfreq(n, factor)[None, :])
        data = np.tensordot(kernel, data, axes=(1, axis))
        data = np.moveaxis(data, 0, axis)
    return data


def _prepare(image: np.ndarray, valid: np.ndarray) -> np.ndarray:
    values = image.astype(np.float64)
    mean = values[valid].mean() if valid.any() else 0.0
    values = np.where(valid, values, mean) - mean
    window = np.outer(np.hanning(values.shape[0]), np.hanning(values.shape[1]))
    return values * window


def phase_shift(
    reference: np.ndarray, moving: np.ndarray, valid: np.ndarray | None = None, upsample: int = UPSAMPLE
) -> tuple[float, float, float]:
    """Where ``moving``'s content lies relative to ``reference`` (``dy, dx`` in pixels) and the peak height.

    Args:
        reference, moving: 2-D arrays of the same shape (one band).
        valid: pixels to use (clear in both); default all.
        upsample: sub-pixel refinement factor.

    Returns:
        ``(dy, dx, peak)``; ``peak`` is the height of the normalised correlation peak (1 for a pure shift of
        identical images, near 0 for unrelated ones).
    """
    if valid is None:
        valid = np.ones(reference.shape, bool)
    f_ref = np.fft.fft2(_prepare(reference, valid))
    f_mov = np.fft.fft2(_prepare(moving, valid))
    product = f_ref * f_mov.conj()
    product /= np.maximum(np.abs(product), 1e-12)
    corr = np.fft.ifft2(product)
    peak_idx = np.array(np.unravel_index(np.argmax(np.abs(corr)), corr.shape), dtype=np.float64)
    shape = np.array(corr.shape)
    peak_idx[peak_idx > shape // 2] -= shape[peak_idx > shape // 2]
    # refine around the integer peak
    shifts = np.round(peak_idx * upsample) / upsample
    region = int(np.ceil(upsample * 1.5))
    centre = np.fix(region / 2.0)
    fine = _upsampled_dft(product.conj(), region, upsample, centre - shifts * upsample).conj()
    best = np.array(np.unravel_index(np.argmax(np.abs(fine)), fine.shape), dtype=np.float64) - centre
    shifts = shifts + best / upsample
    peak = float(np.abs(fine).max() / product.size)
    # ``shifts`` registers moving onto reference; the content displacement is its opposite
    return float(-shifts[0]), float(-shifts[1]), peak


def _blocks(height: int, width: int, block: int) -> list[tuple[int, int, int, int]]:
    if height <= block and width <= block:
        return [(0, 0, height, width)]
    rows = range(0, max(height - block, 0) + 1, block)
    cols = range(0, max(width - block, 0) + 1, block)
    return [(r, c, min(block, height - r), min(block, width - c)) for r in rows for c in cols]


def _clear(path: Path, window: Window, shape: tuple[int, int]) -> np.ndarray:
    mask = find_quality_mask(path)
    if mask is None:
        return np.ones(shape, bool)
    with open_raster(mask, "the quality mask", _FIX) as src:
        return read_raster(src, 1, window=window) == CLEAR


def measure_scene_shift(
    reference: str | os.PathLike[str],
    scene: str | os.PathLike[str],
    *,
    band: str = DEFAULT_BAND,
    block: int = BLOCK,
    max_blocks: int = MAX_BLOCKS,
) -> dict[str, Any]:
    """Shift of ``scene`` against ``reference`` (same tile, same CRS and pixel size).

    Returns:
        ``{"dx_px", "dy_px", "dx_m", "dy_m", "correction_m", "peak", "n_blocks", "status"}``; ``status`` is
        ``measured``, or ``unreliable`` (too few clear pixels in common: no correction).

    Raises:
        InputError: unreadable rasters, different CRS or pixel size, or no overlap.
    """
    ref_path, mov_path = Path(reference), Path(scene)
    try:
        with open_raster(ref_path, "scene", _FIX) as ref, open_raster(mov_path, "scene", _FIX) as mov:
            if ref.crs != mov.crs or not np.allclose(ref.res, mov.res):
                raise InputError(
                    f"{mov_path}: CRS/pixel size differ from {ref_path}; co-registration needs scenes "
                    "of one tile fetched at one resolution"
                )
            # the two grids as integer offsets (same tile: same grid, possibly cut to different windows)
            off = np.array([ref.transform.c - mov.transform.c, mov.transform.f - ref.transform.f]) / np.array(
                [ref.res[0], ref.res[1]]
            )
            if not np.allclose(off, np.round(off), atol=1e-6):
                raise InputError(f"{mov_path}: pixel grid is not aligned with {ref_path}; fetch both on the tile grid")
            col_off, row_off = (int(v) for v in np.round(off))  # reference pixel (0, 0) in moving's pixels
            r0, c0 = max(0, -row_off), max(0, -col_off)
            r1 = min(ref.height, mov.height - row_off)
            c1 = min(ref.width, mov.width - col_off)
            if r1 - r0 < 32 or c1 - c0 < 32:
                raise InputError(f"{mov_path}: overlaps {ref_path} by less than 32 x 32 px; cannot co-register")
            fix = "set change.coregistration_band to a band both scenes have"
            (bi_ref,) = band_indexes(ref.descriptions, [band], path=ref_path, fix_hint=fix)
            (bi_mov,) = band_indexes(mov.descriptions, [band], path=mov_path, fix_hint=fix)
            candidates = []
            for br, bc, bh, bw in _blocks(r1 - r0, c1 - c0, block):
                win_ref = Window(c0 + bc, r0 + br, bw, bh)
                win_mov = Window(c0 + bc + col_off, r0 + br + row_off, bw, bh)
                a, b = read_raster(ref, bi_ref, window=win_ref), read_raster(mov, bi_mov, window=win_mov)
                ok = (a != 0) & (b != 0) & _clear(ref_path, win_ref, (bh, bw)) & _clear(mov_path, win_mov, (bh, bw))
                candidates.append((float(ok.mean()), a, b, ok))
    except RasterioIOError as exc:
        raise InputError(f"cannot read {ref_path} or {mov_path} for co-registration ({exc}); fetch again") from None
    candidates.sort(key=lambda c: -c[0])
    used = [c for c in candidates[:max_blocks] if c[0] >= MIN_CLEAR_SHARE]
    res = float(abs(ref.res[0]))
    if not used:
        return {
            "dx_px": 0.0,
            "dy_px": 0.0,
            "dx_m": 0.0,
            "dy_m": 0.0,
            "correction_m": [0.0, 0.0],
            "peak": None,
            "n_blocks": 0,
            "status": "unreliable",
            "note": f"fewer than {MIN_CLEAR_SHARE:.0%} of pixels clear in both scenes; not corrected",
        }
    results = np.array([phase_shift(a, b, ok) for _, a, b, ok in used])
    dy, dx = float(np.median(results[:, 0])), float(np.median(results[:, 1]))
    dx_m, dy_m = dx * res, -dy * res
    return {
        "dx_px": round(dx, 4),
        "dy_px": round(dy, 4),
        "dx_m": round(dx_m, 3),
        "dy_m": round(dy_m, 3),
        "correction_m": [round(-dx_m, 3), round(-dy_m, 3)],
        "peak": round(float(np.median(results[:, 2])), 4),
        "n_blocks": len(used),
        "status": "measured",
    }


def _scene_meta(path: Path) -> dict[str, Any]:
    sidecar = path.with_suffix(".json")
    meta = read_json(sidecar) if sidecar.exists() else {}
    if not meta.get("datetime"):
        with open_raster(path, "scene", _FIX) as src:
            tags = {k.lower(): v for k, v in src.tags().items()}
        meta = {
            **meta,
            "datetime": tags.get("datetime"),
            "scene_id": tags.get("scene_id") or path.stem,
            "tile": tags.get("tile"),
        }
    return meta


def coregister_tile(
    scenes: Sequence[str | os.PathLike[str]],
    out_json: str | os.PathLike[str],
    *,
    band: str = DEFAULT_BAND,
) -> dict[str, Any]:
    """Measure every scene of one tile against the tile's reference scene; write the per-tile JSON sidecar.

    Args:
        scenes: fetched scene COGs of one MGRS tile (with their JSON sidecars), any years.
        out_json: the sidecar to write (atomically).
        band: the band to correlate.

    Returns:
        The written record: ``tile``, ``crs``, ``band``, ``reference`` and, per scene id, ``year`` plus the fields
        of :func:`measure_scene_shift` (the reference has ``status: reference``, shift 0).
    """
    paths = [Path(p) for p in scenes]
    if not paths:
        raise InputError(f"{out_json}: no scenes to co-register; give the scenes of one tile")
    metas = []
    for p in paths:
        if not p.exists():
            raise InputError(f"{p}: scene not found; fetch it first")
        # every scene, the reference too, must carry the band: a tile of one scene would otherwise pass unread
        with open_raster(p, "scene", _FIX) as src:
            band_indexes(
                src.descriptions,
                [canonical_band(band)],
                path=p,
                fix_hint="choose another change.coregistration_band (--band) or fetch the scene with that band",
            )
        meta = _scene_meta(p)
        when = str(meta.get("datetime") or "")
        if len(when) < 4 or not when[:4].isdigit():
            raise InputError(f"{p}: no acquisition date in its sidecar or tags; fetch it again with pixeldino")
        metas.append(
            (int(when[:4]), -(meta.get("clear_fraction") or 0.0), when, str(meta.get("scene_id") or p.stem), p, meta)
        )
    tiles = {m[5].get("tile") for m in metas}
    if len(tiles) > 1:
        raise InputError(
            f"{out_json}: scenes of several tiles {sorted(map(str, tiles))}; co-register one tile at a time"
        )
    metas.sort(key=lambda m: m[:4])
    ref_year, _, _, ref_id, ref_path, ref_meta = metas[0]
    with open_raster(ref_path, "scene", _FIX) as src:
        crs, res = src.crs.to_string(), float(abs(src.res[0]))
    record: dict[str, Any] = {
        "type": "pixeldino_coregistration",
        "tile": ref_meta.get("tile"),
        "crs": crs,
        "resolution": res,
        "band": canonical_band(band),
        "reference": ref_id,
        "method": f"phase correlation, 1/{UPSAMPLE} px",
        "convention": "dx/dy: content offset vs the reference (+x east, +y south, pixels); correction_m undoes it",
        "scenes": {},
    }
    for year, _, _, scene_id, path, _ in metas:
        if scene_id == ref_id:
            entry = {
                "dx_px": 0.0,
                "dy_px": 0.0,
                "dx_m": 0.0,
                "dy_m": 0.0,
                "correction_m": [0.0, 0.0],
                "peak": 1.0,
                "n_blocks": 0,
                "status": "reference",
            }
        else:
            entry = measure_scene_shift(ref_path, path, band=band)
            log.info(
                "%s vs %s: dx %.3f px, dy %.3f px (%s)",
                scene_id,
                ref_id,
                entry["dx_px"],
                entry["dy_px"],
                entry["status"],
            )
        record["scenes"][scene_id] = {"year": year, **entry}
    record["created"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    record["pixeldino_version"] = __version__
    write_json(out_json, record)
    return record


def scene_corrections(
    records: Sequence[str | os.PathLike[str] | dict[str, Any]],
    *,
    max_shift_px: float = DEFAULT_MAX_SHIFT_PX,
) -> dict[str, tuple[float, float]]:
    """``{scene_id: (dx, dy)}`` map translations (scene CRS units) that undo the measured shifts.

    Raises:
        InputError: a measured shift above ``max_shift_px`` (the tracking refuses it rather than report
            misregistration as change), naming the tile, the scenes and the fix.
    """
    out: dict[str, tuple[float, float]] = {}
    for rec in records:
        if not isinstance(rec, dict) and not Path(rec).exists():
            raise InputError(f"{rec}: co-registration sidecar not found; run `pixeldino coregister` for the tile")
        data = rec if isinstance(rec, dict) else read_json(rec)
        _check_record(data, rec if not isinstance(rec, dict) else "co-registration record")
        for scene_id, entry in data.get("scenes", {}).items():
            magnitude = float(np.hypot(entry["dx_px"], entry["dy_px"]))
            if entry.get("status") == "measured" and magnitude > max_shift_px:
                where = rec if not isinstance(rec, dict) else data.get("tile")
                raise InputError(
                    f"{where}: scene {scene_id} is shifted by {magnitude:.2f} px against {data.get('reference')} "
                    f"(> change.max_shift_px {max_shift_px}); check the scenes (wrong tile or processing) or raise "
                    "change.max_shift_px"
                )
            out[scene_id] = (float(entry["correction_m"][0]), float(entry["correction_m"][1]))
    return out


def _check_record(data: Any, source: str | os.PathLike[str]) -> None:
    """Refuse a co-registration record without the fields the corrections are read from.

    Raises:
        InputError: naming the file, what is missing and the fix.
    """
    fix = "run `pixeldino coregister` for the tile again"
    scenes = data.get("scenes") if isinstance(data, dict) else None
    if not isinstance(scenes, dict):
        raise InputError(f"{source}: not a co-registration record (no 'scenes'); {fix}")
    for scene_id, entry in scenes.items():
        shift = entry.get("correction_m") if isinstance(entry, dict) else None
        numbers = (
            isinstance(shift, list)
            and len(shift) == 2
            and all(isinstance(v, (int, float)) for v in [*shift, entry.get("dx_px"), entry.get("dy_px")])
        )
        if not numbers:
            raise InputError(f"{source}: scene {scene_id} lacks its shift (dx_px, dy_px, correction_m); {fix}")
