"""Arctic-wide merge: per-scene RTS polygons (any UTM zone) into one deduplicated layer with stable ids.

Detections of the same slump come from overlapping MGRS tiles (often in different UTM zones) and from several
acquisition dates. All polygons are reprojected to one CRS, overlapping ones are grouped (spatial index query for
intersecting pairs, then connected components of that graph: overlap is transitive through chains of detections),
and each group is unioned into one slump with its provenance.

Stable ids: ``rts_id = "RTS_<x>_<y>"`` with ``x``, ``y`` the coordinates of the unioned polygon's
representative point in the target CRS, in kilometres with two decimals (10 m steps), e.g.
``RTS_-2249.31_-437.56`` in EPSG:3413. The representative point depends only on the geometry, so re-running the
merge on the same inputs gives the same ids, whatever the order of the inputs; the id changes when new
detections change the slump's outline. Two different slumps whose points round to the same 10 m cell get
suffixes ``_2``, ``_3``... in a deterministic order.

Areas: EPSG:3413 (the default, the NSIDC polar stereographic grid used by most Arctic permafrost products) is
conformal, not equal-area, so ``area_m2`` is computed in the target CRS only if it is an equal-area projection
(e.g. EPSG:6931, EASE-Grid 2.0 North) and on the WGS84 ellipsoid (geodesic) otherwise. Either way it is the true
ground area.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import pyogrio
import shapely
from pyproj import CRS, Geod
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from pixeldino.errors import InputError
from pixeldino.io import atomic_output
from pixeldino.polygonize import LAYER, as_multipolygon, empty_frame, write_layer

#: Column order and dtypes of the merged ``rts`` layer.
MERGED_SCHEMA: dict[str, str] = {
    "rts_id": "object",
    "area_m2": "float64",
    "n_detections": "int64",
    "n_scenes": "int64",
    "scenes": "object",
    "tiles": "object",
    "first_date": "object",
    "last_date": "object",
    "prob_max": "float64",
    "touches_nodata": "bool",
}
_EQUAL_AREA_METHODS = ("equal area", "equal earth", "mollweide", "sinusoidal", "eckert iv", "eckert vi")


def is_equal_area(crs: CRS) -> bool:
    """Whether ``crs`` is a projection that preserves area."""
    op = crs.coordinate_operation
    return bool(op) and any(m in op.method_name.lower() for m in _EQUAL_AREA_METHODS)


def ground_area_m2(geoms: gpd.GeoSeries) -> np.ndarray:
    """True area (m2) of each geometry: planar in an equal-area CRS, geodesic on the WGS84 ellipsoid otherwise."""
    crs = CRS.from_user_input(geoms.crs)
    if is_equal_area(crs):
        unit = crs.axis_info[0].unit_conversion_factor
        return geoms.area.to_numpy() * unit * unit
    geod = Geod(ellps="WGS84")
    return np.array([abs(geod.geometry_area_perimeter(g)[0]) for g in geoms.to_crs(4326)])


def stable_id(point: shapely.Point, crs: CRS) -> str:
    """``RTS_<x>_<y>`` from a point: km with 2 decimals in a projected CRS, degrees with 5 decimals otherwise."""
    if crs.is_geographic:
        return f"RTS_{point.x:.5f}_{point.y:.5f}"
    unit = crs.axis_info[0].unit_conversion_factor
    return f"RTS_{point.x * unit / 1000:.2f}_{point.y * unit / 1000:.2f}"


def _read_detections(path: Path, crs: CRS) -> gpd.GeoDataFrame:
    if not path.exists():
        raise InputError(f"{path}: polygon file not found; run `pixeldino polygonize` for this scene first")
    try:
        gdf = pyogrio.read_dataframe(path, layer=LAYER)
    except Exception as exc:  # pyogrio raises several types (DataSourceError, DataLayerError, ...)
        raise InputError(f"{path}: cannot read layer {LAYER!r} ({exc}); give a GeoPackage from `pixeldino polygonize`") from None
    if gdf.crs is None:
        raise InputError(f"{path}: layer {LAYER!r} has no CRS; re-create it with `pixeldino polygonize`")
    for column in ("scene_id", "tile", "datetime"):
        if column not in gdf:
            gdf[column] = None
    if "prob_max" not in gdf:
        gdf["prob_max"] = np.nan
    if "touches_nodata" not in gdf:
        gdf["touches_nodata"] = False
    gdf = gdf[["scene_id", "tile", "datetime", "prob_max", "touches_nodata", "geometry"]]
    return gdf.to_crs(crs)


def overlap_groups(geoms: np.ndarray) -> np.ndarray:
    """Group label of each geometry: geometries that intersect, directly or through a chain, share a label."""
    n = len(geoms)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    pairs = shapely.STRtree(geoms).query(geoms, predicate="intersects")
    graph = coo_matrix((np.ones(pairs.shape[1], dtype=np.int8), (pairs[0], pairs[1])), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    return labels


def _joined(values: pd.Series) -> str | None:
    items = sorted({str(v) for v in values if v is not None and not (isinstance(v, float) and np.isnan(v))})
    return ",".join(items) or None


def merge_polygons(
    inputs: Sequence[str | os.PathLike[str]],
    out_gpkg: str | os.PathLike[str],
    *,
    crs: str = "EPSG:3413",
    out_parquet: str | os.PathLike[str] | None = None,
) -> gpd.GeoDataFrame:
    """Merge per-scene RTS layers into one layer of distinct slumps.

    Args:
        inputs: GeoPackages with layer ``rts`` (from :func:`pixeldino.polygonize.polygonize_scene`), any CRS.
        out_gpkg: output GeoPackage, layer ``rts`` in ``crs`` (written atomically).
        crs: target CRS of the merged layer (EPSG:3413 polar stereographic by default; EPSG:6931 is equal-area).
        out_parquet: optional GeoParquet copy of the result (written together with the GeoPackage).

    Returns:
        One row per slump: ``rts_id, area_m2, n_detections, n_scenes, scenes, tiles, first_date, last_date,
        prob_max, touches_nodata``, MultiPolygon geometry; sorted by ``rts_id``.
    """
    target = CRS.from_user_input(crs)
    frames = [_read_detections(Path(p), target) for p in inputs]
    frames = [f for f in frames if len(f)]
    if frames:
        detections = pd.concat(frames, ignore_index=True)
        geoms = detections.geometry.to_numpy()
        invalid = ~shapely.is_valid(geoms)
        geoms[invalid] = shapely.make_valid(geoms[invalid])
        detections["group"] = overlap_groups(geoms)
        detections["date"] = pd.to_datetime(detections["datetime"], utc=True, errors="coerce", format="ISO8601")
        rows: list[dict[str, Any]] = []
        merged_geoms = []
        for _, grp in detections.groupby("group", sort=True):
            merged_geoms.append(as_multipolygon(shapely.union_all(geoms[grp.index.to_numpy()])))
            dates = grp["date"].dropna()
            rows.append(
                {
                    "n_detections": len(grp),
                    "n_scenes": grp["scene_id"].dropna().nunique(),
                    "scenes": _joined(grp["scene_id"]),
                    "tiles": _joined(grp["tile"]),
                    "first_date": dates.min().strftime("%Y-%m-%d") if len(dates) else None,
                    "last_date": dates.max().strftime("%Y-%m-%d") if len(dates) else None,
                    "prob_max": float(grp["prob_max"].max()),
                    "touches_nodata": bool(grp["touches_nodata"].fillna(False).astype(bool).any()),
                }
            )
        gdf = gpd.GeoDataFrame(pd.DataFrame(rows), geometry=merged_geoms, crs=target)
        gdf["area_m2"] = ground_area_m2(gdf.geometry)
        points = shapely.point_on_surface(gdf.geometry.to_numpy())
        gdf["rts_id"] = [stable_id(p, target) for p in points]
        # Deterministic order before de-duplicating ids: by id, then by the geometry itself.
        gdf["_wkb"] = [g.wkb_hex for g in gdf.geometry]
        gdf = gdf.sort_values(["rts_id", "_wkb"], kind="stable").drop(columns="_wkb").reset_index(drop=True)
        rank = gdf.groupby("rts_id").cumcount()
        gdf.loc[rank > 0, "rts_id"] = gdf["rts_id"] + "_" + (rank + 1).astype(str)
        gdf = gdf[[*MERGED_SCHEMA, "geometry"]].astype(MERGED_SCHEMA)
    else:
        gdf = empty_frame(target, MERGED_SCHEMA)

    with atomic_output(out_gpkg) as tmp_gpkg:
        write_layer(gdf, tmp_gpkg)
        if out_parquet is not None:
            with atomic_output(out_parquet) as tmp_parquet:
                gdf.to_parquet(tmp_parquet)
    return gdf
