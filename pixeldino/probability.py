"""The probability raster: the one format rule shared by predict (writes it), polygonize and evaluate (read it).

A probability raster is a single-band GeoTIFF on the scene's grid. ``pixeldino predict`` writes uint8
``round(p * PROBABILITY_SCALE)`` with nodata :data:`NODATA_U8` and band scale ``1 / PROBABILITY_SCALE``, and tags
the model (``MODEL``), its calibrated ``THRESHOLD`` and the scene's provenance. Readers accept any single-band
raster whose band scale and offset turn its values into probabilities in [0, 1] (a float32 raster of
probabilities works too); anything else (a multi-band scene given by mistake, a uint16 raster without a scale) is
refused with one line instead of being thresholded as if it were probabilities.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from pixeldino.errors import ConfigError, InputError
from pixeldino.rasters import open_raster, read_raster

#: Probabilities are stored as ``round(p * PROBABILITY_SCALE)`` in uint8; :data:`NODATA_U8` is nodata.
PROBABILITY_SCALE = 254
NODATA_U8 = 255
#: Threshold of a raster without a ``THRESHOLD`` tag (one not written by ``pixeldino predict``).
DEFAULT_THRESHOLD = 0.5


def profile(like: Any) -> dict[str, Any]:
    """The GeoTIFF creation profile of a uint8 probability (or QA) band on the grid of the open raster ``like``."""
    from pixeldino.io import TILED_GTIFF_PROFILE

    return dict(
        TILED_GTIFF_PROFILE,
        width=like.width,
        height=like.height,
        count=1,
        dtype="uint8",
        nodata=NODATA_U8,
        crs=like.crs,
        transform=like.transform,
    )


def check_probability_raster(src: Any, path: str | os.PathLike[str]) -> None:
    """Refuse, in one line, a raster that is not a probability raster (band count, dtype, value range, CRS)."""
    if src.crs is None or src.transform.is_identity:
        raise InputError(
            f"{path}: probability raster has no CRS or geotransform; re-run prediction on a georeferenced scene"
        )
    if src.count != 1:
        raise InputError(
            f"{path}: {src.count} bands; a probability raster has one (give the *_prob.tif that "
            "`pixeldino predict` wrote, not the scene)"
        )
    dtype = np.dtype(src.dtypes[0])
    scale = src.scales[0] if src.scales else 1.0
    offset = src.offsets[0] if src.offsets else 0.0
    if dtype.kind in "ui":
        top = np.iinfo(dtype).max
        nodata = src.nodata
        highest = top - 1 if nodata == top else top
        if offset < -1e-9 or offset + highest * scale > 1.0 + 1e-6:
            raise InputError(
                f"{path}: {dtype} values with scale {scale} and offset {offset} are not probabilities "
                "in [0, 1]; give the *_prob.tif that `pixeldino predict` wrote"
            )
    elif dtype.kind != "f":
        raise InputError(f"{path}: data type {dtype} is not a probability raster (uint8 or float)")


def read_probability(path: Path, window: Any = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Band 1 of a probability raster (or a window of it) and what is needed to interpret it.

    Returns:
        ``(values, info)``; ``info`` has ``transform`` (of the window), ``crs``, ``nodata``, ``scale``,
        ``offset``, ``tags`` and ``shape``.
    """
    if not path.exists():
        raise InputError(f"{path}: probability raster not found; run `pixeldino predict` first")
    with open_raster(path, "the probability raster", "re-run prediction") as src:
        info = {
            "transform": src.window_transform(window) if window is not None else src.transform,
            "crs": src.crs,
            "nodata": src.nodata,
            "scale": src.scales[0] if src.scales else 1.0,
            "offset": src.offsets[0] if src.offsets else 0.0,
            "tags": src.tags(),
            "shape": (src.height, src.width),
        }
        check_probability_raster(src, path)
        values = read_raster(src, 1, window=window)
        info["shape"] = values.shape
        return values, info


def to_probability(values: np.ndarray, info: dict[str, Any]) -> np.ndarray:
    return values.astype(np.float64) * info["scale"] + info["offset"]


def invalid_mask(values: np.ndarray, info: dict[str, Any]) -> np.ndarray:
    """Nodata pixels (the raster's nodata value, and NaN for float rasters)."""
    nodata = info["nodata"]
    invalid = np.isnan(values) if values.dtype.kind == "f" else np.zeros(values.shape, bool)
    if nodata is not None and not np.isnan(nodata):
        invalid |= values == nodata
    return invalid


def positive_mask(values: np.ndarray, info: dict[str, Any], threshold: float) -> np.ndarray:
    """``p >= threshold`` on valid pixels; integer rasters go through a lookup table, never a float copy."""
    if values.dtype in (np.uint8, np.uint16):
        codes = np.arange(np.iinfo(values.dtype).max + 1)
        lut = (to_probability(codes, info) >= threshold) & ~invalid_mask(codes.astype(values.dtype), info)
        return lut[values]
    return (to_probability(values, info) >= threshold) & ~invalid_mask(values, info)


def resolve_threshold(threshold: float | None, tags: dict[str, str], path: Path) -> float:
    """Explicit threshold, else the raster's THRESHOLD tag, else 0.5."""
    if threshold is None:
        try:
            threshold = float(tags.get("THRESHOLD", DEFAULT_THRESHOLD))
        except ValueError:
            raise InputError(f"{path}: THRESHOLD tag {tags['THRESHOLD']!r} is not a number; pass a threshold") from None
    if not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"threshold {threshold} must be within [0, 1]")
    return float(threshold)
