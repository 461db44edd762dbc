"""Arctic-wide merge: per-scene RTS polygons (any UTM zone) into one deduplicated layer with stable ids.

Detections of the same slump come from overlapping MGRS tiles (often in different UTM zones) and from several
acquisition dates. All polygons are reprojected to one CRS; detections that overlap are found with a spatial index
(STRtree query for intersecting pairs, so nothing is quadratic).

Geometry rule (``geometry``):

* ``best`` (default): each slump is its **best single detection**, not the union of all of them. Two detections
  are the same slump when their intersection covers at least ``min_overlap`` (default
  :data:`DEFAULT_MIN_OVERLAP`) of the smaller one. Detections are ranked (:func:`detection_rank`): outline not
  touching nodata or the scene edge first, then the lowest ``low_quality_fraction`` (share of the outline hidden by
  the quality mask), then the farthest from its scene edge (``edge_distance_m``), then the highest mean
  probability; the best detection is kept and every detection that duplicates it is assigned to it, greedily down
  the ranking (non-maximum suppression). Unioning would add the rasterisation and misregistration noise of every
  view: two 10 m grids in different UTM zones inflate a slump by a pixel ring (2 % in total, up to 20 % for one
  slump); the best detection keeps one grid's area.
* ``union``: the pre-0.2 rule: every chain of intersecting detections becomes one slump, its outline the union.

Either way provenance keeps every detection: ``n_detections``, ``scenes``, ``tiles``, first/last date over all of
them, the chosen one's ``source_scene``/``source_tile``/``source_date``, and a second layer ``rts_detections``
with every input detection (in the target CRS), the ``rts_id`` it went into and whether it was ``chosen``.

Stable ids: ``rts_id = "RTS_<x>_<y>"`` with ``x``, ``y`` the coordinates of the slump polygon's
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import geopandas as gpd
import numpy as np
import pandas as pd
import pyogrio
import shapely
from pyproj import CRS, Geod
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from pixeldino.errors import ConfigError, InputError, first_line
from pixeldino.io import atomic_output
from pixeldino.polygonize import LAYER, as_multipolygon, empty_frame, write_qgis_style

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
    "source_scene": "object",
    "source_tile": "object",
    "source_date": "object",
    "prob_max": "float64",
    "touches_nodata": "bool",
    "low_quality_fraction": "float64",
    "water_fraction": "float64",
    "dark_area_fraction": "float64",
    "cirrus_fraction": "float64",
    "in_permanent_water": "bool",
}
#: Columns of the ``rts_detections`` provenance layer (every input detection).
DETECTION_SCHEMA: dict[str, str] = {
    "rts_id": "object",
    "chosen": "bool",
    "scene_id": "object",
    "tile": "object",
    "datetime": "object",
    "area_m2": "float64",
    "prob_mean": "float64",
    "prob_max": "float64",
    "touches_nodata": "bool",
    "low_quality_fraction": "float64",
    "edge_distance_m": "float64",
}
DETECTIONS_LAYER = "rts_detections"
GeometryRule = Literal["best", "union"]
GEOMETRY_RULES: tuple[str, ...] = get_args(GeometryRule)
#: Share of the smaller detection two detections must share to be one slump (``best``).
DEFAULT_MIN_OVERLAP = 0.5


@dataclass
class MergeParams:
    """How per-scene polygons merge into one map (config section ``merge``; ``pixeldino merge`` options).

    Attributes:
        crs: target CRS of the merged map (EPSG:3413, NSIDC polar stereographic, by default; areas are computed on
            the ellipsoid, so they are exact in any CRS).
        geometry: ``best``: each slump is its best single detection (farthest from its scene edge, least hidden by
            the quality mask), not the union of all views; ``union``: the union of every chain of overlapping
            detections (see the module docs).
        min_overlap: ``best``: two detections are one slump when they share this share of the smaller one.
    """

    crs: str = "EPSG:3413"
    geometry: GeometryRule = "best"
    min_overlap: float = field(default=DEFAULT_MIN_OVERLAP, metadata={"exclusiveMinimum": 0, "maximum": 1})

    def __post_init__(self) -> None:
        if self.geometry not in GEOMETRY_RULES:
            raise ConfigError(f"merge.geometry {self.geometry!r} is not one of {', '.join(GEOMETRY_RULES)}")
        if not 0.0 < self.min_overlap <= 1.0:
            raise ConfigError(f"merge.min_overlap {self.min_overlap} must be in (0, 1]")
        try:
            CRS.from_user_input(self.crs)
        except Exception:  # pyproj raises CRSError, a few others for odd input
            raise ConfigError(f"merge.crs {self.crs!r} is not a CRS pyproj knows; use e.g. EPSG:3413") from None


_EQUAL_AREA_METHODS = ("equal area", "equal earth", "mollweide", "sinusoidal", "eckert iv", "eckert vi")
#: Per-scene columns the merge reads, with the value a layer from an older pixeldino without them gets.
_DETECTION_DEFAULTS: dict[str, Any] = {
    "scene_id": None,
    "tile": None,
    "datetime": None,
    "prob_mean": np.nan,
    "prob_max": np.nan,
    "touches_nodata": False,
    "low_quality_fraction": np.nan,
    "edge_distance_m": np.nan,
    "water_fraction": np.nan,
    "dark_area_fraction": np.nan,
    "cirrus_fraction": np.nan,
    "in_permanent_water": False,
}


def is_equal_area(crs: CRS) -> bool:
    """Whether ``crs`` is a projection that preserves area."""
    op = crs.coordinate_operation
    return op is not None and any(m in op.method_name.lower() for m in _EQUAL_AREA_METHODS)


def ground_area_m2(geoms: gpd.GeoSeries) -> np.ndarray:
    """True area (m2) of each geometry: planar in an equal-area CRS, geodesic on the WGS84 ellipsoid otherwise."""
    crs = CRS.from_user_input(geoms.crs)
    if is_equal_area(crs):
        unit = crs.axis_info[0].unit_conversion_factor
        return geoms.area.to_numpy() * unit * unit
    geod = Geod(ellps="WGS84")
    return np.array([abs(geod.geometry_area_perimeter(g)[0]) for g in geoms.to_crs(4326)])


def stable_id(point: shapely.Point, crs: CRS, prefix: str = "RTS") -> str:
    """``RTS_<x>_<y>`` from a point: km with 2 decimals in a projected CRS, degrees with 5 decimals otherwise."""
    if crs.is_geographic:
        return f"{prefix}_{point.x:.5f}_{point.y:.5f}"
    unit = crs.axis_info[0].unit_conversion_factor
    return f"{prefix}_{point.x * unit / 1000:.2f}_{point.y * unit / 1000:.2f}"


def unique_ids(ids: pd.Series, geoms: Sequence[shapely.Geometry]) -> tuple[pd.Series, np.ndarray]:
    """Ids made unique with ``_2``, ``_3``... suffixes, in an order fixed by id and geometry; returns the new ids
    and the sort order that was used (positions into the inputs)."""
    frame = pd.DataFrame({"id": ids.to_numpy(), "wkb": [g.wkb_hex for g in geoms]})
    order = frame.sort_values(["id", "wkb"], kind="stable").index.to_numpy()
    sorted_ids = frame["id"].to_numpy()[order]
    rank = pd.Series(sorted_ids).groupby(sorted_ids).cumcount().to_numpy()
    out = np.array([i if r == 0 else f"{i}_{r + 1}" for i, r in zip(sorted_ids, rank)], dtype=object)
    return pd.Series(out), order


def read_detections(
    path: str | os.PathLike[str], crs: CRS | str, shifts: dict[str, tuple[float, float]] | None = None
) -> gpd.GeoDataFrame:
    """One per-scene ``rts`` layer in ``crs``, with the columns the merge uses (missing ones get defaults).

    Args:
        path: GeoPackage from :func:`pixeldino.polygonize.run_polygonize`.
        crs: target CRS.
        shifts: optional ``{scene_id: (dx, dy)}`` translation in the layer's own CRS units, applied before
            reprojection (the co-registration correction, :mod:`pixeldino.coregister`).
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: polygon file not found; run `pixeldino polygonize` for this scene first")
    fix = "give the GeoPackage `pixeldino polygonize` wrote for the scene"
    try:
        layers = [str(name) for name, _ in pyogrio.list_layers(path)]
    except Exception as exc:  # pyogrio raises several types (DataSourceError, ...)
        raise InputError(f"{path}: cannot read the polygon file ({first_line(exc)}); {fix}") from None
    if LAYER not in layers:
        raise InputError(f"{path}: no layer {LAYER!r} (it has {', '.join(layers) or 'no layers'}); {fix}")
    try:
        gdf = pyogrio.read_dataframe(path, layer=LAYER)
    except Exception as exc:  # pyogrio raises several types (DataSourceError, DataLayerError, ...)
        raise InputError(f"{path}: cannot read layer {LAYER!r} ({first_line(exc)}); {fix}") from None
    if gdf.crs is None:
        raise InputError(f"{path}: layer {LAYER!r} has no CRS; re-create it with `pixeldino polygonize`")
    for column, default in _DETECTION_DEFAULTS.items():
        if column not in gdf:
            gdf[column] = default
    gdf = gdf[[*_DETECTION_DEFAULTS, "geometry"]]
    if shifts and len(gdf):
        geoms = gdf.geometry.to_numpy().copy()
        for scene, (dx, dy) in shifts.items():
            rows = (gdf["scene_id"] == scene).to_numpy()
            if rows.any() and (dx or dy):
                geoms[rows] = shapely.transform(geoms[rows], lambda xy, d=(dx, dy): xy + np.asarray(d))
        gdf = gdf.set_geometry(gpd.GeoSeries(geoms, crs=gdf.crs, index=gdf.index))
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


def overlapping_pairs(geoms: np.ndarray, areas: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs ``i < j`` of intersecting geometries with their intersection area (spatial index, not quadratic).

    Returns:
        ``(i, j, intersection_area)`` arrays, in the geometries' CRS units.
    """
    if len(geoms) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0)
    i, j = shapely.STRtree(geoms).query(geoms, predicate="intersects")
    keep = i < j
    i, j = i[keep], j[keep]
    inter = shapely.area(shapely.intersection(geoms[i], geoms[j])) if len(i) else np.zeros(0)
    return i, j, inter


def detection_rank(detections: pd.DataFrame) -> np.ndarray:
    """Order of detections from best to worst (see module docs); ties are broken by scene id, deterministically."""
    frame = pd.DataFrame(
        {
            "touches": detections["touches_nodata"].fillna(False).astype(bool).to_numpy(),
            "low_quality": -detections["low_quality_fraction"].fillna(0.0).round(3).to_numpy(),
            "edge": detections["edge_distance_m"].fillna(0.0).to_numpy(),
            "prob": detections["prob_mean"].fillna(0.0).to_numpy(),
            "scene": detections["scene_id"].fillna("").astype(str).to_numpy(),
            "key": [g.wkb_hex for g in detections.geometry],
        }
    )
    order = frame.sort_values(
        ["touches", "low_quality", "edge", "prob", "scene", "key"],
        ascending=[True, False, False, False, True, True],
        kind="stable",
    ).index.to_numpy()
    return order


def best_detection_groups(geoms: np.ndarray, order: np.ndarray, min_overlap: float = DEFAULT_MIN_OVERLAP) -> np.ndarray:
    """For each detection, the index of the detection it is merged into (itself when it is chosen).

    Greedy non-maximum suppression down ``order``: a detection not yet assigned is chosen, and every unassigned
    detection whose overlap with it covers ``>= min_overlap`` of the smaller of the two is assigned to it.
    """
    n = len(geoms)
    owner = np.full(n, -1, dtype=np.int64)
    if n == 0:
        return owner
    areas = shapely.area(geoms)
    i, j, inter = overlapping_pairs(geoms)
    smaller = np.minimum(areas[i], areas[j])
    dup = inter >= min_overlap * np.where(smaller > 0, smaller, np.inf)
    i, j = i[dup], j[dup]
    # adjacency in CSR form: neighbours of k are nbr[ptr[k]:ptr[k + 1]]
    src = np.concatenate([i, j])
    dst = np.concatenate([j, i])
    by_src = np.argsort(src, kind="stable")
    nbr = dst[by_src]
    ptr = np.searchsorted(src[by_src], np.arange(n + 1))
    for k in order:
        if owner[k] >= 0:
            continue
        owner[k] = k
        neighbours = nbr[ptr[k] : ptr[k + 1]]
        free = neighbours[owner[neighbours] < 0]
        owner[free] = k
    return owner


def _joined(values: pd.Series) -> str | None:
    items = sorted({str(v) for v in values if v is not None and not (isinstance(v, float) and np.isnan(v))})
    return ",".join(items) or None


def _day(value: Any) -> str | None:
    return value.strftime("%Y-%m-%d") if value is not None and not pd.isna(value) else None


def merge_detections(detections: gpd.GeoDataFrame, params: MergeParams) -> tuple[gpd.GeoDataFrame, gpd.GeoDataFrame]:
    """Deduplicate detections (all in one CRS) into slumps.

    Args:
        detections: rows as from :func:`read_detections`, already in the target CRS.
        params: the geometry rule and overlap share (``params.crs`` is not used: the detections' CRS is).

    Returns:
        ``(slumps, provenance)``: the merged layer (:data:`MERGED_SCHEMA`, sorted by ``rts_id``) and every
        detection with the ``rts_id`` it went into (:data:`DETECTION_SCHEMA`).
    """
    target = CRS.from_user_input(detections.crs)
    if len(detections) == 0:
        return empty_frame(target, MERGED_SCHEMA), empty_frame(target, DETECTION_SCHEMA)
    detections = detections.reset_index(drop=True)
    geoms = detections.geometry.to_numpy().copy()
    invalid = ~shapely.is_valid(geoms)
    geoms[invalid] = shapely.make_valid(geoms[invalid])
    detections = detections.set_geometry(gpd.GeoSeries(geoms, crs=target))
    order = detection_rank(detections)
    if params.geometry == "best":
        owner = best_detection_groups(geoms, order, params.min_overlap)
    else:
        labels = overlap_groups(geoms)
        rank_of = np.empty(len(order), dtype=np.int64)
        rank_of[order] = np.arange(len(order))
        # each group's owner: its best-ranked member (provenance of the chosen detection)
        frame = pd.DataFrame({"label": labels, "rank": rank_of})
        best_of_label = frame.groupby("label")["rank"].transform("min").to_numpy()
        owner = order[best_of_label]
    dates = pd.to_datetime(detections["datetime"], utc=True, errors="coerce", format="ISO8601")
    frame = pd.DataFrame(
        {
            "owner": owner,
            "scene": detections["scene_id"],
            "tile": detections["tile"],
            "date": dates,
            "prob_max": detections["prob_max"].astype(float),
        }
    )
    grouped = frame.groupby("owner", sort=True)
    owners = np.array(sorted(grouped.groups))
    chosen = detections.loc[owners]
    if params.geometry == "best":
        merged_geoms = [as_multipolygon(g) for g in geoms[owners]]
    else:
        members = grouped.indices
        merged_geoms = [as_multipolygon(shapely.union_all(geoms[members[o]])) for o in owners]
    first = grouped["date"].min()
    last = grouped["date"].max()
    gdf = gpd.GeoDataFrame(
        {
            "n_detections": grouped.size().loc[owners].to_numpy(),
            "n_scenes": grouped["scene"].nunique().loc[owners].to_numpy(),
            "scenes": [_joined(v) for v in grouped["scene"].apply(list).loc[owners]],
            "tiles": [_joined(v) for v in grouped["tile"].apply(list).loc[owners]],
            "first_date": [_day(v) for v in first.loc[owners]],
            "last_date": [_day(v) for v in last.loc[owners]],
            "source_scene": chosen["scene_id"].to_numpy(),
            "source_tile": chosen["tile"].to_numpy(),
            "source_date": [_day(v) for v in dates.loc[owners]],
            "prob_max": grouped["prob_max"].max().loc[owners].to_numpy(),
            "touches_nodata": chosen["touches_nodata"].fillna(False).astype(bool).to_numpy(),
            "low_quality_fraction": chosen["low_quality_fraction"].astype(float).to_numpy(),
            "water_fraction": chosen["water_fraction"].astype(float).to_numpy(),
            "dark_area_fraction": chosen["dark_area_fraction"].astype(float).to_numpy(),
            "cirrus_fraction": chosen["cirrus_fraction"].astype(float).to_numpy(),
            "in_permanent_water": chosen["in_permanent_water"].fillna(False).astype(bool).to_numpy(),
            "_owner": owners,
        },
        geometry=merged_geoms,
        crs=target,
    )
    gdf["area_m2"] = ground_area_m2(gdf.geometry)
    points = shapely.point_on_surface(gdf.geometry.to_numpy())
    # Deterministic order before de-duplicating ids: by id, then by the geometry itself.
    ids, order = unique_ids(pd.Series([stable_id(p, target) for p in points]), gdf.geometry.to_numpy())
    gdf = gdf.iloc[order].reset_index(drop=True)
    gdf["rts_id"] = ids.to_numpy()
    id_of_owner = dict(zip(gdf["_owner"], gdf["rts_id"]))
    slumps = gdf[[*MERGED_SCHEMA, "geometry"]].astype(MERGED_SCHEMA)

    prov = detections.copy()
    prov["rts_id"] = [id_of_owner[o] for o in owner]
    prov["chosen"] = owner == np.arange(len(owner))
    prov["area_m2"] = ground_area_m2(prov.geometry)
    prov["geometry"] = [as_multipolygon(g) for g in prov.geometry]
    prov = prov.sort_values(["rts_id", "chosen", "scene_id"], ascending=[True, False, True], kind="stable")
    provenance = prov[[*DETECTION_SCHEMA, "geometry"]].astype(DETECTION_SCHEMA).reset_index(drop=True)
    return slumps, provenance


def write_layers(out_gpkg: str | os.PathLike[str], layers: dict[str, gpd.GeoDataFrame]) -> Path:
    """Write several MultiPolygon layers (each with the pixeldino QGIS style) into one GeoPackage, atomically."""
    with atomic_output(out_gpkg) as tmp:
        for name, gdf in layers.items():
            pyogrio.write_dataframe(
                gdf,
                tmp,
                layer=name,
                driver="GPKG",
                geometry_type="MultiPolygon",
                promote_to_multi=True,
                append=tmp.exists(),
            )
            write_qgis_style(tmp, name)
    return Path(out_gpkg)


def run_merge(
    params: MergeParams,
    inputs: Sequence[str | os.PathLike[str]],
    out_gpkg: str | os.PathLike[str],
    out_parquet: str | os.PathLike[str] | None = None,
) -> gpd.GeoDataFrame:
    """The merge stage: per-scene RTS layers into one layer of distinct slumps.

    Args:
        params: target CRS and geometry rule.
        inputs: GeoPackages with layer ``rts`` (from :func:`pixeldino.polygonize.run_polygonize`), any CRS.
        out_gpkg: output GeoPackage, layer ``rts`` in ``params.crs`` and the provenance layer ``rts_detections``
            (written atomically).
        out_parquet: optional GeoParquet copy of the ``rts`` layer (written together with the GeoPackage).

    Returns:
        The ``rts`` layer: one row per slump (:data:`MERGED_SCHEMA`), MultiPolygon geometry, sorted by ``rts_id``.
    """
    if not inputs:
        raise InputError(
            f"{out_gpkg}: no polygon files to merge; give the per-scene GeoPackages (layer {LAYER!r}) that "
            "`pixeldino polygonize` wrote"
        )
    target = CRS.from_user_input(params.crs)
    frames = [read_detections(p, target) for p in inputs]
    frames = [f for f in frames if len(f)]
    detections = (
        gpd.GeoDataFrame(pd.concat(frames, ignore_index=True), crs=target)
        if frames
        else empty_frame(target, {k: "object" for k in _DETECTION_DEFAULTS})
    )
    gdf, provenance = merge_detections(detections, params)
    with atomic_output(out_gpkg) as tmp_gpkg:
        write_layers(tmp_gpkg, {LAYER: gdf, DETECTIONS_LAYER: provenance})
        if out_parquet is not None:
            with atomic_output(out_parquet) as tmp_parquet:
                gdf.to_parquet(tmp_parquet)
    return gdf
