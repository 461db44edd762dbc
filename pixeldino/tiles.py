"""Resolve an area of interest to Sentinel-2 MGRS tiles offline, from the tile grid shipped in ``resources/arctic``.

The grid covers every tile that reaches 55°N or further north (see ``resources/arctic/README.md``). Intersections
are computed in the AOI's own CRS when it is projected (e.g. the circumpolar domain in EPSG:3413), so polar areas
that cross the antimeridian are handled without splitting; geographic AOIs are intersected in EPSG:4326, where
the grid already splits antimeridian tiles into two parts.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import geopandas as gpd
import shapely
from pyproj import CRS
from shapely.geometry import box
from shapely.geometry.base import BaseGeometry

from pixeldino.errors import ConfigError, InputError

ARCTIC = Path(__file__).resolve().parent.parent / "resources" / "arctic"
#: MGRS tile footprints north of 55°N (layer ``tiles``: ``tile``, ``land``), EPSG:4326.
TILE_GRID = ARCTIC / "sentinel2_tiles_north_of_55.gpkg"
#: The circumpolar RTS mapping domain (layer ``domain``), EPSG:3413.
CIRCUMPOLAR_DOMAIN = ARCTIC / "rts_circumpolar_north_domain.gpkg"
#: The ``search.aoi`` value that selects the circumpolar domain.
CIRCUMPOLAR = "circumpolar"

_TILE_RE = re.compile(r"^(\d{2})([C-HJ-NP-X])([A-HJ-NP-Z]{2})$")


@functools.lru_cache(maxsize=2)
def load_tile_grid(land_only: bool = False) -> gpd.GeoDataFrame:
    """The shipped MGRS grid (``tile``, ``land``, geometry in EPSG:4326); cached per process."""
    if not TILE_GRID.exists():
        raise InputError(f"tile grid {TILE_GRID} not found; restore resources/arctic from the repository")
    grid = gpd.read_file(TILE_GRID, layer="tiles")
    grid["geometry"] = shapely.force_2d(grid.geometry.values)
    return grid[grid["land"].astype(bool)].reset_index(drop=True) if land_only else grid


@functools.lru_cache(maxsize=1)
def load_domain() -> gpd.GeoDataFrame:
    """The circumpolar RTS mapping domain (EPSG:3413)."""
    if not CIRCUMPOLAR_DOMAIN.exists():
        raise InputError(f"domain {CIRCUMPOLAR_DOMAIN} not found; restore resources/arctic from the repository")
    return gpd.read_file(CIRCUMPOLAR_DOMAIN, layer="domain")


def utm_crs_for_tile(tile: str) -> str:
    """The UTM CRS Sentinel-2 uses for an MGRS tile (``08WMA`` -> ``EPSG:32608``; bands C-M are south)."""
    m = _TILE_RE.match(tile)
    if not m:
        raise ConfigError(f"{tile!r} is not a 5-character MGRS tile id such as '08WMA'")
    zone, band = int(m.group(1)), m.group(2)
    return f"EPSG:{32600 + zone if band >= 'N' else 32700 + zone}"


def tile_footprint(tile: str) -> BaseGeometry | None:
    """A tile's footprint in EPSG:4326 (a MultiPolygon for antimeridian tiles), or None if it is not in the grid."""
    grid = load_tile_grid()
    parts = grid.geometry[grid["tile"] == tile]
    return shapely.union_all(parts.values) if len(parts) else None


def _bbox_geometry(bbox: Sequence[float]) -> BaseGeometry:
    """A [west, south, east, north] box in EPSG:4326; west > east means the box crosses the antimeridian."""
    if len(bbox) != 4:
        raise ConfigError(f"a bbox needs 4 numbers [west, south, east, north], got {list(bbox)}")
    west, south, east, north = (float(v) for v in bbox)
    if not (-180 <= west <= 180 and -180 <= east <= 180 and -90 <= south < north <= 90):
        raise ConfigError(f"bbox {list(bbox)} is not [west, south, east, north] in degrees (EPSG:4326)")
    if west > east:
        return shapely.union_all([box(west, south, 180, north), box(-180, south, east, north)])
    return box(west, south, east, north)


def read_area(aoi: str | os.PathLike[str] | Sequence[float] | BaseGeometry) -> tuple[BaseGeometry, CRS]:
    """An AOI as (geometry, CRS): vector files keep their CRS; bboxes and shapely geometries are EPSG:4326."""
    if isinstance(aoi, BaseGeometry):
        return aoi, CRS.from_epsg(4326)
    if isinstance(aoi, (list, tuple)):
        return _bbox_geometry(aoi), CRS.from_epsg(4326)
    if str(aoi) == CIRCUMPOLAR:
        domain = load_domain()
        return shapely.union_all(domain.geometry.values), CRS.from_user_input(domain.crs)
    p = Path(aoi)
    if not p.exists():
        raise InputError(f"AOI file {p} not found; check the 'aoi' path in your config")
    try:
        gdf = gpd.read_file(p)
    except Exception as exc:  # pyogrio raises several types for unreadable files
        raise InputError(f"cannot read AOI file {p} ({exc}); is it a valid vector file?") from exc
    if gdf.crs is None:
        raise InputError(f"AOI file {p} has no CRS; assign one (e.g. ogr2ogr -a_srs EPSG:4326)")
    if gdf.empty:
        raise InputError(f"AOI file {p} has no features; draw at least one polygon")
    return shapely.union_all(shapely.make_valid(gdf.geometry.values)), CRS.from_user_input(gdf.crs)


def tiles_for_aoi(
    aoi: str | os.PathLike[str] | Sequence[float] | BaseGeometry, *, land_only: bool = False
) -> list[str]:
    """Sorted MGRS tiles of the shipped grid that intersect an AOI.

    Args:
        aoi: a vector file (any CRS), a ``[west, south, east, north]`` bbox or shapely geometry in EPSG:4326, or
            ``"circumpolar"`` for the shipped RTS mapping domain.
        land_only: keep only tiles flagged as land in the grid.

    Returns:
        Tile ids such as ``"08WMA"``; empty when the AOI lies outside the grid (south of about 55°N).
    """
    geom, crs = read_area(aoi)
    grid = load_tile_grid(land_only)
    if crs.is_geographic:
        geom_ll = gpd.GeoSeries([geom], crs=crs).to_crs(4326).iloc[0]
        hits = grid[grid.intersects(geom_ll)]
    else:
        hits = grid[grid.to_crs(crs).intersects(geom)]
    return sorted(set(hits["tile"]))


def domain_tiles(land_only: bool = True) -> list[str]:
    """The land tiles (default) that intersect the circumpolar RTS mapping domain."""
    return tiles_for_aoi(CIRCUMPOLAR, land_only=land_only)


def tiles_union(tiles: Sequence[str]) -> BaseGeometry | None:
    """The union of the footprints of ``tiles`` in EPSG:4326; None if none of them is in the grid."""
    grid = load_tile_grid()
    parts = grid.geometry[grid["tile"].isin(list(tiles))]
    return shapely.union_all(parts.values) if len(parts) else None


def describe_aoi(aoi: Any) -> str | None:
    """A short JSON-able description of an AOI value for manifests."""
    if aoi is None:
        return None
    if isinstance(aoi, (list, tuple)):
        return "bbox " + ",".join(f"{float(v):g}" for v in aoi)
    if isinstance(aoi, BaseGeometry):
        return "geometry"
    return str(aoi)
