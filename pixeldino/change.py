"""RTS maps per year and change between years: per-year layers, slump tracks with stable ids, growth and status.

Per year, the detections of that year's scenes are shifted by their co-registration correction
(:mod:`pixeldino.coregister`) and merged with the merge's rule (:func:`pixeldino.merge.merge_detections`: best
single detection per slump), giving layer ``rts_<year>``.

Tracking rule. Two slumps of different years are linked when their intersection covers at least ``min_overlap``
(default :data:`DEFAULT_TRACK_OVERLAP`) of the smaller one. The overlap share, not IoU, is used because a growing
slump's earlier outline lies inside its later one (IoU 0.5 for a slump that doubled, overlap share 1). Pairs are
found with a spatial index over all years at once (nothing quadratic), so a slump missed in one year is still linked
across the gap. A track is a connected set of linked slumps: when one slump of a year is linked to two of the next
year it **split**, when two are linked to one they **merged**; both stay one track and the event is recorded in
``events`` (e.g. ``split 2021-2023``) and in the link table ``rts_track_links``.

Track ids: ``TRK_<x>_<y>`` from the representative point of the track's outline in its first year (km in the
target CRS, as ``rts_id``), so adding a later year does not change the id of a track that already existed.

Per-track table (layer ``rts_tracks``, geometry: the outline in the last year seen):

* ``area_<year>_m2``: the summed area of the track's slumps that year (empty when not seen);
* ``first_year``, ``last_year``, ``n_years``: years seen;
* ``growth_m2_per_yr``: (area in the last year seen - area in the first) / (years between); empty if seen once;
* ``growth_rel``: relative change of area between those two years;
* ``status``: ``new`` (first seen after the first year and still seen in the last), ``not seen`` (not detected in the
  last year: vanished or stabilised below detection), else ``growing`` / ``shrinking`` when the area changed by more
  than ``stable_tolerance`` (default :data:`DEFAULT_STABLE_TOLERANCE`, relative) between first and last year, and
  ``stable`` otherwise.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from pyproj import CRS
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from pixeldino.coregister import DEFAULT_BAND, DEFAULT_MAX_SHIFT_PX, scene_corrections
from pixeldino.errors import ConfigError, InputError
from pixeldino.io import atomic_output
from pixeldino.merge import (
    MERGED_SCHEMA,
    MergeParams,
    merge_detections,
    overlapping_pairs,
    read_detections,
    stable_id,
    unique_ids,
    write_layers,
)
from pixeldino.polygonize import as_multipolygon, empty_frame

log = logging.getLogger(__name__)

#: Two slumps of different years are one track when they share this share of the smaller one.
DEFAULT_TRACK_OVERLAP = 0.5
#: Relative area change between first and last year below which a track is ``stable``.
DEFAULT_STABLE_TOLERANCE = 0.1
TRACKS_LAYER = "rts_tracks"
LINKS_LAYER = "rts_track_links"
STATUSES = ("new", "growing", "stable", "shrinking", "not seen")


@dataclass
class ChangeParams:
    """Co-registration and slump tracking between years (config section ``change``; ``pixeldino change`` and
    ``pixeldino coregister`` options). The within-year merge follows :class:`pixeldino.merge.MergeParams`.

    Attributes:
        min_overlap: slumps of two years are one track when they share this share of the smaller one.
        stable_tolerance: relative area change between first and last year below which a track is stable.
        max_shift_px: a co-registration shift above this (pixels) stops the change rule instead of being corrected.
        coregistration_band: band for the phase correlation between years.
    """

    min_overlap: float = field(default=DEFAULT_TRACK_OVERLAP, metadata={"exclusiveMinimum": 0, "maximum": 1})
    stable_tolerance: float = field(default=DEFAULT_STABLE_TOLERANCE, metadata={"minimum": 0})
    max_shift_px: float = field(default=DEFAULT_MAX_SHIFT_PX, metadata={"exclusiveMinimum": 0})
    coregistration_band: str = DEFAULT_BAND

    def __post_init__(self) -> None:
        if not 0.0 < self.min_overlap <= 1.0:
            raise ConfigError(f"change.min_overlap {self.min_overlap} must be in (0, 1]")
        if self.stable_tolerance < 0 or self.max_shift_px <= 0:
            raise ConfigError("change.stable_tolerance must be at least 0 and change.max_shift_px positive")


def year_layer(year: int) -> str:
    """GeoPackage layer name of one year's map."""
    return f"rts_{year}"


def track_slumps(
    years: dict[int, gpd.GeoDataFrame],
    *,
    min_overlap: float = DEFAULT_TRACK_OVERLAP,
    stable_tolerance: float = DEFAULT_STABLE_TOLERANCE,
) -> tuple[gpd.GeoDataFrame, dict[int, gpd.GeoDataFrame], pd.DataFrame]:
    """Link the slumps of several years into tracks.

    Args:
        years: ``{year: layer}``, each with ``rts_id``, ``area_m2`` and polygon geometry, all in one projected CRS.
        min_overlap: linking rule (see module docs).
        stable_tolerance: relative area change that separates ``stable`` from growing/shrinking.

    Returns:
        ``(tracks, years_with_track_id, links)``: the per-track table (module docs), the input layers with a
        ``track_id`` column, and the link table (``from_rts_id, to_rts_id, from_year, to_year, overlap_share, iou,
        track_id``).
    """
    if not 0.0 < min_overlap <= 1.0:
        raise ConfigError(f"change.min_overlap {min_overlap} must be within (0, 1]")
    if stable_tolerance < 0:
        raise ConfigError(f"change.stable_tolerance {stable_tolerance} must not be negative")
    order = sorted(years)
    if not order:
        raise InputError("no years to track; give at least one year's layer")
    crs = CRS.from_user_input(next(iter(years.values())).crs)
    frames = []
    for y in order:
        f = years[y][["rts_id", "area_m2", "geometry"]].copy()
        f["year"] = y
        frames.append(f)
    allp = gpd.GeoDataFrame(pd.concat(frames, ignore_index=True), crs=crs)
    n = len(allp)
    geoms = allp.geometry.to_numpy()
    year = allp["year"].to_numpy()
    area = allp["area_m2"].to_numpy(dtype=np.float64)

    i, j, inter = overlapping_pairs(geoms)
    planar = shapely.area(geoms)
    cross = year[i] != year[j]
    i, j, inter = i[cross], j[cross], inter[cross]
    smaller = np.minimum(planar[i], planar[j])
    share = np.divide(inter, smaller, out=np.zeros_like(inter), where=smaller > 0)
    link = share >= min_overlap
    i, j, inter, share = i[link], j[link], inter[link], share[link]
    iou = inter / (planar[i] + planar[j] - inter)
    # orient every link from the earlier to the later year
    swap = year[i] > year[j]
    i, j = np.where(swap, j, i), np.where(swap, i, j)
    graph = coo_matrix((np.ones(len(i), np.int8), (i, j)), shape=(n, n))
    _, label = connected_components(graph, directed=False)
    allp["track"] = label

    # ---- per (track, year): summed area; per track: years seen
    per_year = pd.DataFrame({"track": label, "year": year, "area": area}).groupby(["track", "year"])["area"].sum()
    wide = per_year.unstack("year").reindex(columns=order)
    seen = wide.notna()
    year_arr = np.array(order)
    first_idx = seen.to_numpy().argmax(axis=1)
    last_idx = len(order) - 1 - seen.to_numpy()[:, ::-1].argmax(axis=1)
    first_year = year_arr[first_idx]
    last_year = year_arr[last_idx]
    wide_np = wide.to_numpy()
    rows = np.arange(len(wide))
    a_first = wide_np[rows, first_idx]
    a_last = wide_np[rows, last_idx]
    span = (last_year - first_year).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        growth = np.where(span > 0, (a_last - a_first) / span, np.nan)
        rel = np.where(span > 0, a_last / a_first - 1.0, np.nan)
    status = np.where(rel > stable_tolerance, "growing", np.where(rel < -stable_tolerance, "shrinking", "stable"))
    status = np.where(first_year > order[0], "new", status)
    status = np.where(last_year < order[-1], "not seen", status)

    # ---- events: splits and merges between consecutive years the track was seen in
    links = pd.DataFrame(
        {
            "i": i,
            "j": j,
            "track": label[i],
            "from_year": year[i],
            "to_year": year[j],
            "overlap_share": share,
            "iou": iou,
        }
    )
    present = per_year.reset_index()[["track", "year"]].sort_values(["track", "year"])
    present["next_year"] = present.groupby("track")["year"].shift(-1)
    links = links.merge(present.rename(columns={"year": "from_year"}), on=["track", "from_year"], how="left")
    links["consecutive"] = links["to_year"] == links["next_year"]
    consecutive = links[links["consecutive"]]
    events: dict[int, list[str]] = {}
    for kind, key, other in (("split", "i", "j"), ("merge", "j", "i")):
        counts = consecutive.groupby(key)[other].nunique()
        for k in counts.index[counts.to_numpy() >= 2]:
            row = consecutive[consecutive[key] == k].iloc[0]
            events.setdefault(int(row.track), []).append(f"{kind} {int(row.from_year)}-{int(row.to_year)}")

    # ---- geometry and id per track
    members = allp.groupby("track").indices
    tracks_index = wide.index.to_numpy()
    first_geoms, last_geoms, rts_ids = [], [], []
    for t, fy, ly in zip(tracks_index, first_year, last_year):
        idx = members[t]
        fy_idx = idx[year[idx] == fy]
        ly_idx = idx[year[idx] == ly]
        first_geoms.append(geoms[fy_idx[0]] if len(fy_idx) == 1 else shapely.union_all(geoms[fy_idx]))
        last_geoms.append(geoms[ly_idx[0]] if len(ly_idx) == 1 else shapely.union_all(geoms[ly_idx]))
        rts_ids.append(";".join(f"{year[k]}:{allp.at[k, 'rts_id']}" for k in idx[np.argsort(year[idx], kind="stable")]))
    points = shapely.point_on_surface(np.array(first_geoms, dtype=object))
    raw_ids = pd.Series([stable_id(p, crs, prefix="TRK") for p in points])
    ids, id_order = unique_ids(raw_ids, first_geoms)
    track_id = np.empty(len(tracks_index), dtype=object)
    track_id[id_order] = ids.to_numpy()

    table: dict[str, Any] = {
        "track_id": track_id,
        "status": status,
        "first_year": first_year,
        "last_year": last_year,
        "n_years": seen.sum(axis=1).to_numpy(),
    }
    for k, y in enumerate(order):
        table[f"area_{y}_m2"] = wide_np[:, k]
    table.update(
        {
            "growth_m2_per_yr": growth,
            "growth_rel": rel,
            "n_polygons": np.array([len(members[t]) for t in tracks_index]),
            "events": [", ".join(events.get(int(t), [])) or None for t in tracks_index],
            "rts_ids": rts_ids,
        }
    )
    tracks = gpd.GeoDataFrame(table, geometry=[as_multipolygon(g) for g in last_geoms], crs=crs)
    tracks = tracks.sort_values("track_id", kind="stable").reset_index(drop=True)

    id_of_label = dict(zip(tracks_index, track_id))
    allp["track_id"] = [id_of_label[t] for t in label]
    out_years = {}
    for y in order:
        layer = years[y].copy()
        layer["track_id"] = allp.loc[allp["year"] == y, "track_id"].to_numpy()
        out_years[y] = layer
    rts_id = allp["rts_id"].to_numpy()
    link_table = (
        pd.DataFrame(
            {
                "track_id": [id_of_label[t] for t in links["track"]],
                "from_rts_id": rts_id[links["i"].to_numpy()],
                "to_rts_id": rts_id[links["j"].to_numpy()],
                "from_year": links["from_year"].astype(int),
                "to_year": links["to_year"].astype(int),
                "overlap_share": links["overlap_share"].round(4),
                "iou": links["iou"].round(4),
                "consecutive": links["consecutive"].astype(bool),
            }
        )
        .sort_values(["track_id", "from_year", "from_rts_id", "to_rts_id"])
        .reset_index(drop=True)
    )
    return tracks, out_years, link_table


def _scene_year(frame: gpd.GeoDataFrame, path: Path) -> int | None:
    dates = pd.to_datetime(frame["datetime"], utc=True, errors="coerce", format="ISO8601").dropna()
    if len(frame) and not len(dates):
        raise InputError(
            f"{path}: polygons have no acquisition date (column 'datetime'); re-run polygonize on a "
            "prediction of a fetched scene"
        )
    return int(dates.dt.year.iloc[0]) if len(dates) else None


def run_change(
    params: ChangeParams,
    merge: MergeParams,
    inputs: Sequence[str | os.PathLike[str]],
    out_gpkg: str | os.PathLike[str],
    *,
    years: Sequence[int] | None = None,
    coregistration: Sequence[str | os.PathLike[str]] = (),
    out_tracks_parquet: str | os.PathLike[str] | None = None,
    out_years_parquet: str | os.PathLike[str] | None = None,
    out_change_png: str | os.PathLike[str] | None = None,
    out_growth_png: str | os.PathLike[str] | None = None,
) -> gpd.GeoDataFrame:
    """Per-year RTS maps and slump tracks from per-scene polygons of several years.

    Args:
        params: the tracking rule and the largest co-registration shift accepted.
        merge: the within-year merge rule and the target CRS (:class:`pixeldino.merge.MergeParams`).
        inputs: per-scene GeoPackages (layer ``rts``) of all years.
        out_gpkg: GeoPackage with layers ``rts_<year>`` (each year's merged map, co-registered, with
            ``track_id``), ``rts_tracks`` and the attribute table ``rts_track_links``.
        years: the years to map (default: those found); a year without detections gets an empty layer.
        coregistration: per-tile JSON sidecars from :func:`pixeldino.coregister.coregister_tile`; each scene's
            polygons are shifted by its ``correction_m`` before merging.
        out_tracks_parquet: GeoParquet copy of ``rts_tracks``.
        out_years_parquet: GeoParquet of all year layers in one table (column ``year``).
        out_change_png, out_growth_png: a change map (tracks by status) and the growth distribution.

    Returns:
        The ``rts_tracks`` table.
    """
    target = CRS.from_user_input(merge.crs)
    shifts = scene_corrections(coregistration, max_shift_px=params.max_shift_px)
    by_year: dict[int, list[gpd.GeoDataFrame]] = {int(y): [] for y in (years or [])}
    for path in inputs:
        frame = read_detections(path, target, shifts)
        y = _scene_year(frame, Path(path))
        if y is None:
            continue
        if years and y not in by_year:
            log.warning("%s: detections of %d, which is not among the years %s; left out", path, y, list(years))
            continue
        by_year.setdefault(y, []).append(frame)
    if not by_year:
        raise InputError(
            f"no detections and no years to map in {len(inputs)} polygon file(s); give search.years "
            "or polygons of dated scenes"
        )
    if len(by_year) < 2:
        # one year has no change to track: every slump would come out "new", which reads like a result
        names = ", ".join(Path(p).name for p in list(inputs)[:3]) + (" ..." if len(inputs) > 3 else "")
        source = "the years asked for (--years, search.years)" if years else f"{len(inputs)} polygon file(s) ({names})"
        raise InputError(
            f"change needs at least two years but {source} give only {next(iter(by_year))}; add the polygons of "
            "another year (search.years), or map one year with `pixeldino merge`"
        )
    layers: dict[int, gpd.GeoDataFrame] = {}
    for y in sorted(by_year):
        frames = [f for f in by_year[y] if len(f)]
        detections = (
            gpd.GeoDataFrame(pd.concat(frames, ignore_index=True), crs=target)
            if frames
            else empty_frame(target, {"scene_id": "object"})
        )
        if not frames:
            layers[y] = empty_frame(target, MERGED_SCHEMA)
            continue
        layers[y], _ = merge_detections(detections, merge)
    tracks, layers, links = track_slumps(
        layers, min_overlap=params.min_overlap, stable_tolerance=params.stable_tolerance
    )
    counts = tracks["status"].value_counts().to_dict()
    log.info("%d tracks over %s: %s", len(tracks), sorted(layers), counts)

    links_gdf = gpd.GeoDataFrame(links, geometry=gpd.GeoSeries([None] * len(links), crs=target), crs=target)
    with atomic_output(out_gpkg) as tmp:
        write_layers(tmp, {**{year_layer(y): layers[y] for y in sorted(layers)}, TRACKS_LAYER: tracks})
        import pyogrio

        pyogrio.write_dataframe(links_gdf.drop(columns="geometry"), tmp, layer=LINKS_LAYER, driver="GPKG", append=True)
        if out_tracks_parquet is not None:
            with atomic_output(out_tracks_parquet) as tmp_parquet:
                tracks.to_parquet(tmp_parquet)
        if out_years_parquet is not None:
            stacked = gpd.GeoDataFrame(
                pd.concat([layers[y].assign(year=y) for y in sorted(layers)], ignore_index=True), crs=target
            )
            with atomic_output(out_years_parquet) as tmp_parquet:
                stacked.to_parquet(tmp_parquet)
    if out_change_png is not None or out_growth_png is not None:
        plot_change(tracks, out_change_png, out_growth_png, years=sorted(layers))
    return tracks


STATUS_COLOURS = {
    "new": "#1b9e77",
    "growing": "#d95f02",
    "stable": "#7570b3",
    "shrinking": "#e7298a",
    "not seen": "#999999",
}


def plot_change(
    tracks: gpd.GeoDataFrame,
    out_map: str | os.PathLike[str] | None,
    out_growth: str | os.PathLike[str] | None,
    *,
    years: Sequence[int],
) -> None:
    """A change map (each track at its outline's point, coloured by status, sized by area) and a histogram of growth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    span = f"{years[0]}-{years[-1]}" if years else ""
    if out_map is not None:
        fig, ax = plt.subplots(figsize=(7, 6), dpi=120)
        pts = shapely.point_on_surface(tracks.geometry.to_numpy()) if len(tracks) else np.array([])
        last_area = tracks.filter(like="area_").max(axis=1).fillna(0).to_numpy() if len(tracks) else np.array([])
        for status in STATUSES:
            sel = (tracks["status"] == status).to_numpy() if len(tracks) else np.zeros(0, bool)
            if sel.any():
                xy = np.array([(p.x, p.y) for p in pts[sel]]) / 1000.0
                ax.scatter(
                    xy[:, 0],
                    xy[:, 1],
                    s=np.clip(np.sqrt(last_area[sel]) / 3, 4, 200),
                    c=STATUS_COLOURS[status],
                    label=f"{status} ({int(sel.sum())})",
                    alpha=0.8,
                    edgecolors="none",
                )
        ax.set_xlabel(f"x (km, {tracks.crs.to_string() if tracks.crs else ''})")
        ax.set_ylabel("y (km)")
        ax.set_title(f"RTS tracks {span} by status ({len(tracks)} tracks)")
        if len(tracks):
            ax.legend(loc="best", fontsize=8)
        ax.set_aspect("equal", adjustable="datalim")
        fig.tight_layout()
        with atomic_output(out_map) as tmp:
            fig.savefig(tmp, format="png")
        plt.close(fig)
    if out_growth is not None:
        fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
        growth = tracks["growth_m2_per_yr"].dropna().to_numpy() if len(tracks) else np.array([])
        if len(growth):
            ax.hist(growth, bins=min(50, max(5, len(growth) // 5)), color="#d95f02")
            ax.axvline(np.median(growth), color="k", lw=1, ls="--", label=f"median {np.median(growth):.0f} m²/yr")
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no track seen in two years", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel("growth (m² per year)")
        ax.set_ylabel("tracks")
        ax.set_title(f"RTS growth {span} (tracks seen in at least two years: {len(growth)})")
        fig.tight_layout()
        with atomic_output(out_growth) as tmp:
            fig.savefig(tmp, format="png")
        plt.close(fig)
