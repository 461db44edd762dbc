"""RTS label handling: read polygons from any vector file, burn them onto a scene grid, and measure agreement.

Conventions shared by chipping, training and evaluation:

* label rasters are ``uint8``: 1 = RTS, 0 = background, :data:`IGNORE` (255) = not labelled (outside the label
  footprint, or over image nodata) — padding is never counted as background;
* rasterisation is by pixel centre (``all_touched=False``), so a polygon and its rasterised pixels have the same
  area on average and nothing is biased towards the RTS class;
* agreement is pixel IoU of the RTS class on the scene's 10 m grid.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeAlias

import geopandas as gpd
import numpy as np
import shapely
from affine import Affine
from pyproj import CRS
from rasterio.features import rasterize
from shapely.geometry.base import BaseGeometry

from pixeldino.errors import InputError, first_line
from pixeldino.metrics import mask_iou

log = logging.getLogger(__name__)

#: Mask value for pixels that carry no label (outside the footprint, image nodata, padding).
IGNORE = 255

Geometries: TypeAlias = gpd.GeoDataFrame | gpd.GeoSeries | BaseGeometry | Sequence[BaseGeometry]


def _polygonal_part(geom: BaseGeometry | None) -> BaseGeometry | None:
    """Keep only the (multi)polygon part of a geometry; None when nothing areal is left."""
    if geom is None or geom.is_empty:
        return None
    if geom.geom_type in ("Polygon", "MultiPolygon"):
        return geom
    polys = [g for g in shapely.get_parts(geom) if g.geom_type in ("Polygon", "MultiPolygon") and not g.is_empty]
    if not polys:
        return None
    merged = shapely.union_all(polys)
    return merged if not merged.is_empty else None


def clean_polygons(gdf: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """Repair invalid geometries (``make_valid``), drop Z, and keep polygonal parts only.

    A self-intersecting "bow-tie" becomes a two-triangle MultiPolygon instead of silently rasterising wrongly;
    line or point debris that ``make_valid`` may produce is dropped, and so are rows left empty.
    """
    geoms = shapely.force_2d(gdf.geometry.values)
    invalid = ~shapely.is_valid(geoms)
    if invalid.any():
        geoms[invalid] = shapely.make_valid(geoms[invalid])
    polys = [_polygonal_part(g) for g in geoms]
    keep = np.array([g is not None for g in polys], dtype=bool)
    out = gdf.loc[keep].copy()
    out = out.set_geometry(gpd.GeoSeries([g for g in polys if g is not None], index=out.index, crs=gdf.crs))
    return out.reset_index(drop=True)


def _choose_layer(path: Path, layer: str | None, what: str) -> str | None:
    """The layer of ``path`` to read: ``layer`` if given, the only layer, or the only polygon layer.

    A multi-layer file (a GeoPackage with labels and their footprint, say) is never read by guessing: GDAL's
    default is the first layer, which may well be the wrong one.

    Raises:
        InputError: ``layer`` is not in the file, or several layers hold polygons and none was named.
    """
    import pyogrio

    try:
        layers = [(str(name), str(kind or "")) for name, kind in pyogrio.list_layers(path)]
    except Exception as exc:  # pyogrio raises DataSourceError and others for unreadable files
        raise InputError(f"cannot read {what} {path} ({first_line(exc)}); is it a valid vector file?") from exc
    names = [name for name, _ in layers]
    if layer is not None:
        if layer not in names:
            raise InputError(f"{what} {path} has no layer {layer!r} (it has {', '.join(names) or 'none'})")
        return layer
    if len(layers) <= 1:
        return None
    polygonal = [name for name, kind in layers if "polygon" in kind.lower() or kind in ("", "Unknown")]
    if len(polygonal) == 1:
        log.info("%s %s: reading layer %r, its only polygon layer (of %s)", what, path, polygonal[0], ", ".join(names))
        return polygonal[0]
    raise InputError(
        f"{what} {path} has {len(layers)} layers ({', '.join(names)}) and it is not clear which one to read; "
        f"give a file with one layer, e.g. `ogr2ogr {path.stem}_{names[0]}{path.suffix} {path.name} {names[0]}`"
    )


def read_labels(
    path: str | os.PathLike[str],
    crs: Any,
    layer: str | None = None,
    what: str = "label file",
    *,
    require_polygons: bool = False,
) -> gpd.GeoDataFrame:
    """Read RTS polygons from any vector file, reproject them to ``crs`` and repair them.

    Invalid geometries are repaired (``make_valid``) and parts that are not polygons dropped, both with a warning
    that says how many; a file with several layers is read only when the layer is named or it is the file's
    only polygon layer.

    Args:
        path: GeoPackage, Shapefile, GeoJSON, GeoParquet, ... (anything pyogrio reads, ``.parquet`` via pyarrow).
        crs: target CRS (anything :class:`pyproj.CRS` accepts, e.g. ``"EPSG:32608"`` or a rasterio CRS); None keeps
            the file's own CRS.
        layer: layer name for multi-layer files; None: the only layer, or the only polygon layer.
        what: how messages name the file (e.g. "AOI file").
        require_polygons: refuse a file that holds no polygon (none at all, or only invalid or non-areal
            features) instead of returning an empty frame.

    Returns:
        A GeoDataFrame in ``crs`` with valid (Multi)Polygon geometries; it may be empty (no RTS in the area) unless
        ``require_polygons``.

    Raises:
        InputError: the file is missing or unreadable, the layer does not exist or is ambiguous, the file has no
            CRS, or (``require_polygons``) it holds no polygon.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"{what} {p} not found; check the path in your config")
    try:
        if p.suffix.lower() in (".parquet", ".geoparquet"):
            gdf = gpd.read_parquet(p)
        else:
            gdf = gpd.read_file(p, layer=_choose_layer(p, layer, what))
    except InputError:
        raise
    except Exception as exc:  # pyogrio/pyarrow raise many types; the user needs the file name and the reason
        raise InputError(f"cannot read {what} {p} ({first_line(exc)}); is it a valid vector file?") from exc
    if gdf.crs is None:
        raise InputError(
            f"{what} {p} has no CRS; assign the right one, e.g. `ogr2ogr -a_srs EPSG:32608 fixed.gpkg {p.name}`"
        )
    n_features = len(gdf)
    if n_features:
        geoms = gdf.geometry.values
        present = ~(shapely.is_missing(geoms) | shapely.is_empty(geoms))
        n_invalid = int((present & ~shapely.is_valid(geoms)).sum())
        gdf = clean_polygons(gdf)
        if n_invalid:
            log.warning("%s %s: repaired %d invalid geometries (make_valid)", what, p, n_invalid)
        if len(gdf) < n_features:
            log.warning(
                "%s %s: %d of %d features left out: no polygon area (points, lines, empty or collapsed rings)",
                what,
                p,
                n_features - len(gdf),
                n_features,
            )
    if require_polygons and not len(gdf):
        detail = (
            "it has no features"
            if not n_features
            else f"none of its {n_features} features is a polygon with an area, even after repair"
        )
        raise InputError(f"{what} {p} has no polygons ({detail}); draw polygons or give the right file")
    return gdf if crs is None else gdf.to_crs(CRS.from_user_input(crs))


def _as_shapes(geoms: Geometries | None) -> list[BaseGeometry]:
    """Normalise the accepted geometry inputs into a list of non-empty shapely geometries."""
    if geoms is None:
        return []
    if isinstance(geoms, gpd.GeoDataFrame):
        values = list(geoms.geometry.values)
    elif isinstance(geoms, gpd.GeoSeries):
        values = list(geoms.values)
    elif isinstance(geoms, BaseGeometry):
        values = [geoms]
    else:
        values = list(geoms)
    return [g for g in values if g is not None and not g.is_empty]


def burn(geoms: Geometries | None, transform: Affine, shape: tuple[int, int], all_touched: bool = False) -> np.ndarray:
    """Rasterise geometries (already in the grid's CRS) into a boolean array, by pixel centre by default."""
    shapes = _as_shapes(geoms)
    if not shapes:
        return np.zeros(shape, dtype=bool)
    out = rasterize(
        [(g, 1) for g in shapes], out_shape=shape, transform=transform, fill=0, dtype="uint8", all_touched=all_touched
    )
    return out.astype(bool)


def rasterize_labels(
    labels_gdf: Geometries,
    transform: Affine,
    shape: tuple[int, int],
    footprint: Geometries | np.ndarray | None = None,
    nodata_mask: np.ndarray | None = None,
    ignore_value: int = IGNORE,
) -> np.ndarray:
    """Burn RTS polygons onto a grid as a training/evaluation mask.

    Args:
        labels_gdf: RTS polygons in the grid's CRS (see :func:`read_labels`).
        transform: affine transform of the grid.
        shape: ``(rows, cols)`` of the grid.
        footprint: where labelling was exhaustive (polygons in the grid's CRS, or a boolean array of ``shape``);
            pixels outside get ``ignore_value``. None: the whole grid was labelled.
        nodata_mask: boolean array of ``shape``, True where the image has no data; those pixels get ``ignore_value``.
        ignore_value: value for unlabelled pixels.

    Returns:
        ``uint8`` array: 1 = RTS, 0 = background, ``ignore_value`` = ignore.
    """
    mask = burn(labels_gdf, transform, shape).astype(np.uint8)
    if footprint is not None:
        inside = footprint if isinstance(footprint, np.ndarray) else burn(footprint, transform, shape)
        if inside.shape != tuple(shape):
            raise ValueError(f"footprint array shape {inside.shape} differs from the grid shape {tuple(shape)}")
        mask[~inside.astype(bool)] = ignore_value
    if nodata_mask is not None:
        if nodata_mask.shape != tuple(shape):
            raise ValueError(f"nodata mask shape {nodata_mask.shape} differs from the grid shape {tuple(shape)}")
        mask[nodata_mask.astype(bool)] = ignore_value
    return mask


def expert_counts(experts: Sequence[Geometries], transform: Affine, shape: tuple[int, int]) -> np.ndarray:
    """Per pixel, how many of the experts' polygon sets cover the pixel centre (``uint16``)."""
    counts = np.zeros(shape, dtype=np.uint16)
    for gdf in experts:
        counts += burn(gdf, transform, shape)
    return counts


def consensus_mask(
    experts: Sequence[Geometries],
    transform: Affine,
    shape: tuple[int, int],
    min_fraction: float = 0.5,
    footprint: Geometries | np.ndarray | None = None,
) -> np.ndarray:
    """Pixels where at least ``min_fraction`` of the experts drew an RTS (boolean array).

    Args:
        experts: one polygon set per expert, all in the grid's CRS (an expert who drew nothing is an empty set and
            still counts in the denominator).
        transform: grid transform.
        shape: grid shape.
        min_fraction: share of experts needed; 0.5 means "at least half" (6 of 12, 5 of 10, 6 of 11).
        footprint: restrict the result to this area (polygons or boolean array).
    """
    if not experts:
        raise ValueError("consensus_mask needs at least one expert")
    counts = expert_counts(experts, transform, shape)
    out = counts >= min_fraction * len(experts)
    if footprint is not None:
        inside = footprint if isinstance(footprint, np.ndarray) else burn(footprint, transform, shape)
        out &= inside.astype(bool)
    return out


def pixel_iou(a: np.ndarray, b: np.ndarray, valid: np.ndarray | None = None) -> float:
    """Agreement of two boolean masks over ``valid`` pixels: their IoU (:func:`pixeldino.metrics.mask_iou`), and
    1.0 where that is undefined because both are empty: two experts who draw nothing agree completely."""
    iou = mask_iou(a, b, valid)
    return 1.0 if iou is None else iou


def expert_agreement(
    experts: Mapping[str, Geometries],
    transform: Affine,
    shape: tuple[int, int],
    footprint: Geometries | np.ndarray | None = None,
    min_fraction: float = 0.5,
) -> dict[str, Any]:
    """Leave-one-out agreement: each expert versus the consensus of all the *other* experts.

    For every expert, the reference is the set of pixels where at least ``min_fraction`` of the remaining experts
    drew an RTS; the score is the pixel IoU (pixel-centre rasterisation on the given grid) inside ``footprint``.
    This is the measure of Nitze et al. (2024) used in ``resources/demo/README.md``.

    Args:
        experts: expert name (e.g. ``"#01"``) -> that expert's polygons in the grid's CRS.
        transform: grid transform.
        shape: grid shape.
        footprint: the study area (polygons or boolean array); None means the whole grid.
        min_fraction: consensus threshold among the other experts.

    Returns:
        ``{"per_expert": {name: iou}, "mean": float, "min": float, "max": float, "n_experts": int}``.
    """
    if len(experts) < 2:
        raise ValueError("expert_agreement needs at least two experts")
    if footprint is None:
        valid = np.ones(shape, dtype=bool)
    else:
        valid = footprint.astype(bool) if isinstance(footprint, np.ndarray) else burn(footprint, transform, shape)
    masks = {name: burn(g, transform, shape) & valid for name, g in experts.items()}
    counts = np.sum([m.astype(np.uint16) for m in masks.values()], axis=0)
    n_others = len(masks) - 1
    per_expert: dict[str, float] = {}
    for name, own in masks.items():
        others = counts - own.astype(np.uint16)
        reference = (others >= min_fraction * n_others) & valid
        per_expert[name] = pixel_iou(own, reference, valid)
    values = np.array(list(per_expert.values()))
    return {
        "per_expert": per_expert,
        "mean": float(values.mean()),
        "min": float(values.min()),
        "max": float(values.max()),
        "n_experts": len(masks),
    }
