"""Per-pixel quality mask from the Sentinel-2 L2A scene classification (SCL), and the policy that uses it.

The mask is a uint8 raster on the scene's 10 m grid, written next to the scene as ``<scene>_mask.tif`` (a COG).
Zero means a clear land pixel; every other value names what the SCL saw there:

=====  ============  =========================================================
value  name          SCL classes
=====  ============  =========================================================
0      clear         4 vegetation, 5 not vegetated, 7 unclassified
1      invalid       0 no data, 1 saturated or defective
2      cloud         8 cloud medium probability, 9 cloud high probability
3      cloud_shadow  3 cloud shadow
4      snow          11 snow or ice
5      water         6 water
6      dark_area     2 dark area pixels / topographic shadow
7      cirrus        10 thin cirrus
=====  ============  =========================================================

Masks written before values 6 and 7 existed (dark area folded into 3, cirrus into 2) read the same way, with
those pixels in the coarser class.

Quality policy. Only the classes in ``nodata_classes`` (default :data:`DEFAULT_NODATA_CLASSES`: invalid, cloud,
cloud shadow, snow) are blanked in the prediction; every other class is predicted like clear land and recorded:
polygons carry the share of their pixels in each kept class (``water_fraction``, ``dark_area_fraction``,
``cirrus_fraction``). The SCL calls wet slump floors water, shaded headwalls dark area and hazy days cirrus, so
blanking them (what pixeldino did before) cuts slumps apart exactly where they are most active.

Permanent water. A user layer of permanent water (a vector file, or a raster such as a water-occurrence map in
percent, e.g. the JRC Global Surface Water ``occurrence`` layer) separates lakes and sea from wet slump floors:
polygons with more than ``max_share`` of their pixels inside it are flagged (``in_permanent_water``) or dropped
(:func:`permanent_water_grid`, used by :func:`pixeldino.polygonize.polygonize_scene`).

The mask is a separate file rather than an extra band so that the scene stays a pure stack of reflectance bands
(uint16, nodata 0, band descriptions = band ids) and the mask keeps its own dtype and nearest-neighbour overviews.
L1C products have no SCL: then no mask is written and the sidecar says so (``"quality_mask": null``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

CLEAR, INVALID, CLOUD, CLOUD_SHADOW, SNOW, WATER, DARK_AREA, CIRRUS = 0, 1, 2, 3, 4, 5, 6, 7
SHADOW = CLOUD_SHADOW  # the name of value 3 before dark area got its own value
CLASS_NAMES = {CLEAR: "clear", INVALID: "invalid", CLOUD: "cloud", CLOUD_SHADOW: "cloud_shadow", SNOW: "snow",
               WATER: "water", DARK_AREA: "dark_area", CIRRUS: "cirrus"}
CLASS_VALUES = {name: value for value, name in CLASS_NAMES.items()}

#: SCL class -> mask value (index = SCL value 0..11; unknown values count as invalid).
SCL_TO_MASK = np.array(
    [INVALID, INVALID, DARK_AREA, CLOUD_SHADOW, CLEAR, CLEAR, WATER, CLEAR, CLOUD, CLOUD, CIRRUS, SNOW],
    dtype=np.uint8,
)

#: Mask classes blanked (nodata) in the prediction unless ``quality.nodata_classes`` says otherwise.
DEFAULT_NODATA_CLASSES: tuple[str, ...] = ("invalid", "cloud", "cloud_shadow", "snow")
#: Kept classes whose share of each polygon's pixels is recorded (column ``<name>_fraction``).
RECORDED_CLASSES: tuple[str, ...] = ("water", "dark_area", "cirrus")
#: Permanent-water policy defaults: what happens to polygons mostly inside the layer, how much is "mostly", and
#: from which value (percent of time water) a water-occurrence raster counts as permanent water.
WATER_ACTIONS: tuple[str, ...] = ("flag", "drop")
DEFAULT_WATER_ACTION = "flag"
DEFAULT_WATER_MAX_SHARE = 0.5
DEFAULT_WATER_MIN_OCCURRENCE = 50.0

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


def nodata_lookup(nodata_classes: Sequence[str] | None = None) -> np.ndarray:
    """A 256-entry boolean table: ``table[mask_value]`` is True when the policy blanks that value.

    Values without a class name (8-255) are always blanked, like invalid pixels.

    Raises:
        ConfigError: a class name that does not exist (the message lists the valid ones).
    """
    from pixeldino.errors import ConfigError

    names = DEFAULT_NODATA_CLASSES if nodata_classes is None else tuple(nodata_classes)
    unknown = [n for n in names if n not in CLASS_VALUES]
    if unknown:
        raise ConfigError(
            f"quality.nodata_classes: unknown class(es) {unknown}; choose from {sorted(CLASS_VALUES)}"
        )
    if "clear" in names:
        raise ConfigError("quality.nodata_classes: 'clear' cannot be nodata; remove it from the list")
    table = np.ones(256, dtype=bool)
    table[: len(CLASS_NAMES)] = False
    for name in names:
        table[CLASS_VALUES[name]] = True
    return table


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


def permanent_water_grid(
    path: str | os.PathLike[str], crs: Any, transform: Any, shape: tuple[int, int],
    *, min_occurrence: float = DEFAULT_WATER_MIN_OCCURRENCE,
) -> np.ndarray:
    """The permanent-water layer as a boolean array on a raster grid (pixel centres).

    Args:
        path: a vector file (every feature is water) or a single-band raster; a raster pixel is water when its value
            is >= ``min_occurrence`` (a water-occurrence map in percent; a 0/1 raster works with any value in (0, 1]).
        crs, transform, shape: the target grid (e.g. a probability raster's).
        min_occurrence: threshold for a raster layer.

    Raises:
        InputError: the file is missing or is neither a readable vector nor raster layer.
    """
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.errors import RasterioIOError
    from rasterio.vrt import WarpedVRT

    from pixeldino.errors import InputError

    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: permanent-water layer not found; fix quality.permanent_water.file")
    raster = p.suffix.lower() in (".tif", ".tiff", ".vrt", ".img", ".jp2") or p.suffix.lower() == ".nc"
    if raster:
        try:
            with rasterio.open(p) as src:
                if src.crs is None:
                    raise InputError(f"{p}: permanent-water raster has no CRS; georeference it")
                with WarpedVRT(src, crs=crs, transform=transform, width=shape[1], height=shape[0],
                               resampling=Resampling.nearest, nodata=src.nodata) as vrt:
                    values = vrt.read(1, masked=True)
        except RasterioIOError as exc:
            raise InputError(f"{p}: cannot read the permanent-water raster ({exc}); give a GeoTIFF") from None
        return np.asarray(values.filled(0) >= min_occurrence)
    import pyogrio
    from rasterio.features import rasterize
    from rasterio.transform import array_bounds
    from rasterio.warp import transform_bounds

    try:
        info = pyogrio.read_info(p)
        bbox = array_bounds(shape[0], shape[1], transform)
        layer_crs = info.get("crs") or crs
        west, south, east, north = transform_bounds(crs, layer_crs, bbox[0], bbox[1], bbox[2], bbox[3])
        gdf = pyogrio.read_dataframe(p, bbox=(west, south, east, north))
    except Exception as exc:  # pyogrio raises several types for unreadable files
        raise InputError(f"{p}: cannot read the permanent-water layer ({exc}); give a vector file or a GeoTIFF") from None
    if gdf.crs is None:
        raise InputError(f"{p}: permanent-water layer has no CRS; set one (e.g. with ogr2ogr -a_srs)")
    geoms = [g for g in gdf.to_crs(crs).geometry if g is not None and not g.is_empty]
    if not geoms:
        return np.zeros(shape, dtype=bool)
    return rasterize([(g, 1) for g in geoms], out_shape=shape, transform=transform, fill=0, dtype="uint8") == 1
