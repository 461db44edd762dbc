"""Per-pixel quality mask from the Sentinel-2 L2A scene classification (SCL).

The mask is a uint8 raster on the scene's 10 m grid, written next to the scene as ``<scene>_mask.tif`` (a COG).
Zero means a clear land pixel; every other value names why a pixel is not usable, so consumers that only need
"good or bad" test ``mask != 0`` (as :func:`pixeldino.predict.predict_scene` does):

=====  ===========  =========================================================
value  name         SCL classes
=====  ===========  =========================================================
0      clear        4 vegetation, 5 not vegetated, 7 unclassified
1      invalid      0 no data, 1 saturated or defective
2      cloud        8 cloud medium probability, 9 cloud high probability, 10 thin cirrus
3      shadow       2 dark area / topographic shadow, 3 cloud shadow
4      snow         11 snow or ice
5      water        6 water
=====  ===========  =========================================================

The mask is a separate file rather than an extra band so that the scene stays a pure stack of reflectance bands
(uint16, nodata 0, band descriptions = band ids) and the mask keeps its own dtype and nearest-neighbour overviews.
L1C products have no SCL: then no mask is written and the sidecar says so (``"quality_mask": null``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

CLEAR, INVALID, CLOUD, SHADOW, SNOW, WATER = 0, 1, 2, 3, 4, 5
CLASS_NAMES = {CLEAR: "clear", INVALID: "invalid", CLOUD: "cloud", SHADOW: "shadow", SNOW: "snow", WATER: "water"}

#: SCL class -> mask value (index = SCL value 0..11; unknown values count as invalid).
SCL_TO_MASK = np.array(
    [INVALID, INVALID, SHADOW, SHADOW, CLEAR, CLEAR, WATER, CLEAR, CLOUD, CLOUD, CLOUD, SNOW],
    dtype=np.uint8,
)

#: Asset keys / band names that hold the SCL layer across providers (Earth Search, Planetary Computer, CDSE).
SCL_ASSET_NAMES = ("scl", "SCL", "SCL_20m", "scl_20m")

#: Suffix of the mask file next to a scene (``<scene>.tif`` -> ``<scene>_mask.tif``).
MASK_SUFFIX = "_mask.tif"


def scl_to_mask(scl: np.ndarray) -> np.ndarray:
    """Map an SCL array to quality-mask values (see module table); values above 11 become ``INVALID``."""
    scl = np.asarray(scl)
    out = np.full(scl.shape, INVALID, dtype=np.uint8)
    known = scl < len(SCL_TO_MASK)
    out[known] = SCL_TO_MASK[scl[known].astype(np.intp)]
    return out


def class_fractions(mask: np.ndarray) -> dict[str, float]:
    """Share of each mask class (``{"clear": 0.7, "cloud": 0.2, ...}``) over all pixels."""
    counts = np.bincount(np.asarray(mask, dtype=np.uint8).ravel(), minlength=len(CLASS_NAMES))
    total = max(int(counts.sum()), 1)
    return {name: round(float(counts[value]) / total, 6) for value, name in CLASS_NAMES.items()}


def mask_path_for(scene_path: str | os.PathLike[str]) -> Path:
    """Where the quality mask of a scene lives (whether or not it exists)."""
    p = Path(scene_path)
    return p.with_name(p.stem + MASK_SUFFIX)


def find_quality_mask(scene_path: str | os.PathLike[str]) -> Path | None:
    """The quality mask of a fetched scene, or None when the scene has none (L1C, or fetched without SCL).

    The scene's JSON sidecar is authoritative when it exists (``quality_mask``: file name or null); a mask file
    next to a scene without a sidecar is used as is.
    """
    import json

    scene = Path(scene_path)
    sidecar = scene.with_suffix(".json")
    if sidecar.exists():
        try:
            meta: dict[str, Any] = json.loads(sidecar.read_text())
        except json.JSONDecodeError:
            meta = {}
        if "quality_mask" in meta:
            name = meta["quality_mask"]
            path = scene.with_name(name) if name else None
            return path if path is not None and path.exists() else None
    path = mask_path_for(scene)
    return path if path.exists() else None


def is_skipped(scene_path: str | os.PathLike[str]) -> bool:
    """True when a fetched scene's sidecar marks it as skipped (no valid or no clear pixel)."""
    import json

    sidecar = Path(scene_path).with_suffix(".json")
    if not sidecar.exists():
        return False
    try:
        return bool(json.loads(sidecar.read_text()).get("skipped", False))
    except json.JSONDecodeError:
        return False
