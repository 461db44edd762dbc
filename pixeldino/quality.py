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
(:func:`permanent_water_grid`, used by :func:`pixeldino.polygonize.run_polygonize`).

The mask is a separate file rather than an extra band so that the scene stays a pure stack of reflectance bands
(uint16, nodata 0, band descriptions = band ids) and the mask keeps its own dtype and nearest-neighbour overviews.
L1C products have no SCL: then no mask is written and the sidecar says so (``"quality_mask": null``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from pixeldino.errors import ConfigError

if TYPE_CHECKING:  # rasterio stays a lazy import: the CLI imports this module at start-up
    from affine import Affine
    from rasterio.crs import CRS
    from rasterio.io import DatasetReader

CLEAR, INVALID, CLOUD, CLOUD_SHADOW, SNOW, WATER, DARK_AREA, CIRRUS = 0, 1, 2, 3, 4, 5, 6, 7
SHADOW = CLOUD_SHADOW  # the name of value 3 before dark area got its own value
CLASS_NAMES = {
    CLEAR: "clear",
    INVALID: "invalid",
    CLOUD: "cloud",
    CLOUD_SHADOW: "cloud_shadow",
    SNOW: "snow",
    WATER: "water",
    DARK_AREA: "dark_area",
    CIRRUS: "cirrus",
}
CLASS_VALUES = {name: value for value, name in CLASS_NAMES.items()}

#: SCL class -> mask value (index = SCL value 0..11; unknown values count as invalid).
SCL_TO_MASK = np.array(
    [INVALID, INVALID, DARK_AREA, CLOUD_SHADOW, CLEAR, CLEAR, WATER, CLEAR, CLOUD, CLOUD, CIRRUS, SNOW],
    dtype=np.uint8,
)

#: A mask class the policy may blank (every class but clear).
NodataClass = Literal["invalid", "cloud", "cloud_shadow", "snow", "water", "dark_area", "cirrus"]
#: Mask classes blanked (nodata) in the prediction unless ``quality.nodata_classes`` says otherwise.
DEFAULT_NODATA_CLASSES: tuple[NodataClass, ...] = ("invalid", "cloud", "cloud_shadow", "snow")
#: Kept classes whose share of each polygon's pixels is recorded (column ``<name>_fraction``).
RECORDED_CLASSES: tuple[str, ...] = ("water", "dark_area", "cirrus")
#: Permanent-water policy defaults: what happens to polygons mostly inside the layer, how much is "mostly", and
#: from which value (percent of time water) a water-occurrence raster counts as permanent water.
WATER_ACTIONS: tuple[str, ...] = ("flag", "drop")
DEFAULT_WATER_ACTION = "flag"
DEFAULT_WATER_MAX_SHARE = 0.5
DEFAULT_WATER_MIN_OCCURRENCE = 50.0


@dataclass
class WaterParams:
    """The permanent-water layer and what it does to polygons (config ``quality.permanent_water``).

    Attributes:
        file: permanent water: a vector file, or a raster such as a water-occurrence map in percent (JRC Global
            Surface Water 'occurrence'); null: none. Polygons mostly inside it are flagged or dropped.
        action: ``flag`` (keep, with in_permanent_water true) or ``drop``.
        max_share: share of a polygon's pixels in permanent water above which it is inside.
        min_occurrence: raster layers: values from this up are permanent water.
    """

    file: str | None = None
    action: Literal["flag", "drop"] = DEFAULT_WATER_ACTION  # type: ignore[assignment]
    max_share: float = field(default=DEFAULT_WATER_MAX_SHARE, metadata={"minimum": 0, "maximum": 1})
    min_occurrence: float = DEFAULT_WATER_MIN_OCCURRENCE

    def __post_init__(self) -> None:
        if self.action not in WATER_ACTIONS:
            raise ConfigError(
                f"quality.permanent_water.action {self.action!r} is not one of {', '.join(WATER_ACTIONS)}"
            )
        if not 0.0 <= self.max_share <= 1.0:
            raise ConfigError(f"quality.permanent_water.max_share {self.max_share} must be in [0, 1]")


@dataclass
class QualityParams:
    """What the SCL quality mask does (config section ``quality``; see the module docs).

    Attributes:
        nodata_classes: mask classes blanked (nodata) in the prediction; every other class is predicted and its
            share recorded per polygon (water_fraction, dark_area_fraction, cirrus_fraction).
        permanent_water: the permanent-water layer and its policy.
    """

    nodata_classes: list[NodataClass] = field(
        default_factory=lambda: list(DEFAULT_NODATA_CLASSES), metadata={"uniqueItems": True}
    )
    permanent_water: WaterParams = field(default_factory=WaterParams)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.nodata_classes) - set(CLASS_VALUES) | ({"clear"} & set(self.nodata_classes)))
        if unknown:
            raise ConfigError(
                f"quality.nodata_classes: {unknown[0]!r} is not a mask class that can be blanked; "
                f"choose from {', '.join(n for n in CLASS_VALUES if n != 'clear')}"
            )


#: Asset keys / band names that hold the SCL layer across providers (Earth Search, Planetary Computer, CDSE).
SCL_ASSET_NAMES = ("scl", "SCL", "SCL_20m", "scl_20m")

#: Suffix of the mask file next to a scene (``<scene>.tif`` -> ``<scene>_mask.tif``).
MASK_SUFFIX = "_mask.tif"

#: Two grids are the same when every pixel corner of one lies within this many pixels of the other's: the
#: round-off of writing a transform, never a real shift.
GRID_TOLERANCE_PX = 1e-6


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
        raise ConfigError(f"quality.nodata_classes: unknown class(es) {unknown}; choose from {sorted(CLASS_VALUES)}")
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


def quality_mask_of(sidecar: str | os.PathLike[str]) -> Path | None:
    """The quality mask a fetched scene's JSON sidecar names (``quality_mask``: a file name beside it, or null).

    None when the sidecar names none (L1C, or fetched without SCL) or the file is gone.
    """
    import json

    side = Path(sidecar)
    try:
        meta: dict[str, Any] = json.loads(side.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    name = meta.get("quality_mask")
    path = side.with_name(name) if name else None
    return path if path is not None and path.exists() else None


def find_quality_mask(scene_path: str | os.PathLike[str]) -> Path | None:
    """The quality mask of a scene given on its own (``pixeldino predict SCENE``): what the JSON sidecar beside it
    names (:func:`quality_mask_of`), else a ``<scene>_mask.tif`` beside a scene that has no sidecar.

    The workflow passes the sidecar itself (:func:`quality_mask_of`); this is the CLI's convenience.
    """
    scene = Path(scene_path)
    sidecar = scene.with_suffix(".json")
    if sidecar.exists():
        return quality_mask_of(sidecar)
    path = mask_path_for(scene)
    return path if path.exists() else None


@dataclass(frozen=True)
class Grid:
    """A raster's pixel grid: CRS, affine transform and ``(height, width)``."""

    crs: CRS | None
    transform: Affine
    shape: tuple[int, int]

    @classmethod
    def of(cls, ds: DatasetReader) -> Grid:
        """The grid of an open raster."""
        return cls(ds.crs, ds.transform, (ds.height, ds.width))

    def matches(self, other: Grid) -> bool:
        """True when both grids have the same CRS and shape and their pixels coincide within
        :data:`GRID_TOLERANCE_PX`."""
        if self.crs != other.crs or tuple(self.shape) != tuple(other.shape):
            return False
        # the other grid's pixel coordinates in this grid's pixels: the identity when the grids coincide
        relative = ~self.transform * other.transform
        return bool(relative.almost_equals(type(relative).identity(), precision=GRID_TOLERANCE_PX))

    def __str__(self) -> str:
        """``EPSG:32608, 64x64 px, pixel size 10, origin (500000, 7700000)``: enough to see which part differs."""
        t = self.transform
        return (
            f"{self.crs}, {self.shape[1]}x{self.shape[0]} px, pixel size {abs(t.a):g}, origin ({t.c:.10g}, {t.f:.10g})"
        )


@contextlib.contextmanager
def open_quality_mask(
    path: str | os.PathLike[str], grid: Grid, raster: str | os.PathLike[str]
) -> Iterator[DatasetReader]:
    """Open a quality mask after checking that it lies on the grid of the raster it qualifies.

    Args:
        path: the quality mask.
        grid: the grid of the scene (or of a raster on the scene's grid, such as its probability map).
        raster: that scene or raster, named in the errors.

    Yields:
        The open mask (closed on exit).

    Raises:
        InputError: the mask is missing, unreadable or on another grid.
    """
    from pixeldino.errors import InputError
    from pixeldino.rasters import open_raster

    mask = Path(path)
    if not mask.exists():
        raise InputError(f"{mask}: quality mask not found; fetch the scene again or give the mask fetched with it")
    with open_raster(mask, "the quality mask", "fetch the scene again") as ds:
        mask_grid = Grid.of(ds)
        if not grid.matches(mask_grid):
            raise InputError(
                f"{mask}: quality mask grid ({mask_grid}) is not on the grid of {raster} ({grid}); use the mask "
                "fetched with this scene (`pixeldino fetch` writes both on one grid)"
            )
        yield ds


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
    path: str | os.PathLike[str],
    crs: Any,
    transform: Any,
    shape: tuple[int, int],
    *,
    min_occurrence: float = DEFAULT_WATER_MIN_OCCURRENCE,
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
    from rasterio.enums import Resampling
    from rasterio.errors import RasterioIOError
    from rasterio.vrt import WarpedVRT

    from pixeldino.errors import InputError
    from pixeldino.rasters import open_raster, read_raster

    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: permanent-water layer not found; fix quality.permanent_water.file")
    raster = p.suffix.lower() in (".tif", ".tiff", ".vrt", ".img", ".jp2") or p.suffix.lower() == ".nc"
    if raster:
        fix = "give a readable, georeferenced GeoTIFF"
        try:
            with open_raster(p, "the permanent-water raster", fix) as src:
                with WarpedVRT(
                    src,
                    crs=crs,
                    transform=transform,
                    width=shape[1],
                    height=shape[0],
                    resampling=Resampling.nearest,
                    nodata=src.nodata,
                ) as vrt:
                    values = np.ma.asarray(read_raster(vrt, 1, masked=True, what="the permanent-water raster", fix=fix))
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
        raise InputError(
            f"{p}: cannot read the permanent-water layer ({exc}); give a vector file or a GeoTIFF"
        ) from None
    if gdf.crs is None:
        raise InputError(f"{p}: permanent-water layer has no CRS; set one (e.g. with ogr2ogr -a_srs)")
    geoms = [g for g in gdf.to_crs(crs).geometry if g is not None and not g.is_empty]
    if not geoms:
        return np.zeros(shape, dtype=bool)
    return rasterize([(g, 1) for g in geoms], out_shape=shape, transform=transform, fill=0, dtype="uint8") == 1
