"""Areas of interest and MGRS tiles: AOI values, tile ids, and which tiles an area covers (offline).

An area of interest (``search.aoi``) is a vector file (any CRS), a ``[west, south, east, north]`` bbox in degrees,
or ``"circumpolar"`` for the shipped RTS mapping domain; :func:`load_aoi` turns one into an EPSG:4326 geometry and
:func:`parse_aoi_text` reads it from a command-line string. A tile id is written ``08WMA`` (zone, latitude band,
100 km square); :func:`normalise_tile` is the one parser of the spellings providers and users write.

Areas resolve to tiles with the tile grid shipped as package data (``pixeldino/data``, provenance in
``resources/arctic/README.md``). The grid covers every tile that reaches
55°N or further north (see ``resources/arctic/README.md``). Intersections are computed in the AOI's own CRS when it
is projected (e.g. the circumpolar domain in EPSG:3413), so polar areas that cross the antimeridian are handled
without splitting; geographic AOIs are intersected in EPSG:4326, where the grid already splits antimeridian tiles
into two parts.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, TypeAlias

import geopandas as gpd
import shapely
from pyproj import CRS
from shapely.geometry import box, shape
from shapely.geometry.base import BaseGeometry

from pixeldino.errors import ConfigError, InputError

#: Package data (importlib.resources, so a non-editable install finds it too); provenance in resources/arctic/README.md.
ARCTIC = Path(str(resources.files("pixeldino") / "data"))
#: MGRS tile footprints north of 55°N (layer ``tiles``: ``tile``, ``land``), EPSG:4326.
TILE_GRID = ARCTIC / "sentinel2_tiles_north_of_55.gpkg"
#: The circumpolar RTS mapping domain (layer ``domain``), EPSG:3413.
CIRCUMPOLAR_DOMAIN = ARCTIC / "rts_circumpolar_north_domain.gpkg"
#: The ``search.aoi`` value that selects the circumpolar domain.
CIRCUMPOLAR = "circumpolar"

#: An area of interest as the library takes it (see :func:`load_aoi`).
AoiValue: TypeAlias = str | os.PathLike[str] | BaseGeometry | Mapping[str, Any] | Sequence[float] | None

# The MGRS grammar, in one place: UTM zone, latitude band (C-X without I and O), 100 km square (no I, O).
_ZONE, _BAND, _SQUARE = r"\d{1,2}", r"[C-HJ-NP-X]", r"[A-HJ-NP-Z]{2}"
#: A tile id as a config may write it (``08WMA`` or ``8WMA``): the JSON-schema ``pattern`` of tile lists.
TILE_ID_PATTERN = f"^{_ZONE}{_BAND}{_SQUARE}$"
# what providers and users write: optional ``MGRS-`` (Earth Search's grid:code) and ``T`` (ESA product names)
_TILE_RE = re.compile(f"^(?:MGRS-)?T?({_ZONE})({_BAND})({_SQUARE})$")
# a tile inside a product or item id, between separators: S2B_52WEE_20210721_0_L1C, S2B_MSIL2A_..._T08WMA_...
_TILE_IN_TEXT_RE = re.compile(f"(?:^|[_-])T?({_ZONE}{_BAND}{_SQUARE})(?:[_-]|$)")


def normalise_tile(tile: str) -> str:
    """Return the 5-character MGRS tile id (``"T8WMA"``, ``"8wma"``, ``"MGRS-08WMA"`` -> ``"08WMA"``).

    Raises:
        ConfigError: ``tile`` is not an MGRS tile id.
    """
    m = _TILE_RE.match(str(tile).strip().upper())
    if not m:
        raise ConfigError(f"{tile!r} is not an MGRS tile id; write it like '08WMA' (zone, latitude band, square)")
    return f"{int(m.group(1)):02d}{m.group(2)}{m.group(3)}"


def find_tile(text: str) -> str | None:
    """The MGRS tile named in a product or item id (``S2B_52WEE_20210721_0_L1C`` -> ``52WEE``), or None."""
    m = _TILE_IN_TEXT_RE.search(str(text).upper())
    return normalise_tile(m.group(1)) if m else None


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
        raise InputError(f"domain {CIRCUMPOLAR_DOMAIN} not found; reinstall pixeldino (it is package data)")
    return gpd.read_file(CIRCUMPOLAR_DOMAIN, layer="domain")


def utm_crs_for_tile(tile: str) -> str:
    """The UTM CRS Sentinel-2 uses for an MGRS tile (``08WMA`` -> ``EPSG:32608``; bands C-M are south)."""
    try:
        canonical = normalise_tile(tile) == tile
    except ConfigError:
        canonical = False
    if not canonical:  # the grid, manifests and sidecars hold canonical ids only: anything else is a bug upstream
        raise ConfigError(f"{tile!r} is not a 5-character MGRS tile id such as '08WMA'")
    zone, band = int(tile[:2]), tile[2]
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
    if not isinstance(aoi, (str, os.PathLike)):
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


def parse_aoi_text(value: str) -> str | list[float]:
    """An AOI given as text (a command-line option): ``W,S,E,N`` in degrees becomes a bbox, anything else (a vector
    file, ``circumpolar``) stays as it is."""
    parts = value.split(",")
    if len(parts) == 4:
        try:
            return [float(v) for v in parts]
        except ValueError:
            pass  # a file name with three commas
    return value


def load_aoi(aoi: AoiValue) -> BaseGeometry | None:
    """Return an area of interest as one shapely geometry in EPSG:4326.

    Args:
        aoi: a vector file (any CRS; all features are unioned), a ``[west, south, east, north]`` bbox in degrees,
            a shapely geometry or GeoJSON-like mapping (both taken to be EPSG:4326), or None. The circumpolar
            domain has no sensible EPSG:4326 outline (it wraps the pole): it gives None here and is used as a
            tile list instead (:func:`domain_tiles`).

    Raises:
        InputError: the file is missing or unreadable, or the geometry is empty.
        ConfigError: a malformed bbox.
    """
    if aoi is None or (isinstance(aoi, str) and aoi == CIRCUMPOLAR):
        return None
    if isinstance(aoi, BaseGeometry):
        geom = aoi
    elif isinstance(aoi, Mapping):
        geom = shape(aoi.get("geometry", aoi))
    else:
        area, crs = read_area(aoi)
        geom = gpd.GeoSeries([area], crs=crs).to_crs(4326).iloc[0] if not crs.equals("EPSG:4326") else area
    if geom.is_empty:
        raise InputError("the AOI geometry is empty; give a polygon that covers your study area")
    return shapely.make_valid(geom)


def describe_aoi(aoi: Any) -> str | None:
    """A short JSON-able description of an AOI value for manifests."""
    if aoi is None:
        return None
    if isinstance(aoi, (list, tuple)):
        return "bbox " + ",".join(f"{float(v):g}" for v in aoi)
    if isinstance(aoi, BaseGeometry):
        return "geometry"
    return str(aoi)
