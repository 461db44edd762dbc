"""Scene search: pick the best Sentinel-2 scenes per MGRS tile from a STAC catalog and write a manifest.

``catalog`` is either a local static STAC catalog (a ``catalog.json``/``collection.json`` path, walked with pystac)
or the URL of a STAC API (searched with pystac-client). Both paths apply the same client-side filters (AOI
intersection, MGRS tile, inclusive date range, cloud cover), so a local mirror and the API select the same scenes.

The manifest is the checkpoint output of the workflow: a small JSON file a user can read, with one entry per
chosen scene and absolute asset hrefs keyed by canonical band id (``B02``...)::

    {"pixeldino_manifest": 1, "created": "...", "catalog": "...", "collection": "...", "query": {...},
     "scenes": [{"id": "S2_08WMA_20210821", "tile": "08WMA", "datetime": "...", "cloud_cover": 2.0,
                 "snow_cover": null, "processing_baseline": "03.00", "crs": "EPSG:32608",
                 "bbox": [w, s, e, n], "assets": {"B02": "/abs/path/B02.tif", ...}}]}
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pystac
import shapely
from shapely.geometry import box, mapping, shape
from shapely.geometry.base import BaseGeometry

from pixeldino.bands import S2_BANDS, canonical_band, canonical_bands
from pixeldino.errors import ConfigError, InputError, NoScenesError, PixeldinoError
from pixeldino.io import read_json, write_json

MANIFEST_VERSION = 1

#: Upper bound on items pulled from a STAC API in one search, so a too-wide query fails fast instead of paging
#: through the whole archive.
MAX_API_ITEMS = 5000

_TILE_RE = re.compile(r"^T?(\d{1,2})([C-HJ-NP-X])([A-HJ-NP-Z]{2})$")
_TILE_IN_ID_RE = re.compile(r"(?:^|[_-])T?(\d{1,2}[C-HJ-NP-X][A-HJ-NP-Z]{2})(?:[_-]|$)")


def normalise_tile(tile: str) -> str:
    """Return the 5-character MGRS tile id (``"T8WMA"``, ``"8wma"``, ``"MGRS-08WMA"`` -> ``"08WMA"``)."""
    text = str(tile).strip().upper()
    if text.startswith("MGRS-"):
        text = text[5:]
    m = _TILE_RE.match(text)
    if not m:
        raise ConfigError(f"{tile!r} is not an MGRS tile id; write it like '08WMA' (zone, latitude band, square)")
    return f"{int(m.group(1)):02d}{m.group(2)}{m.group(3)}"


def item_tile(item: pystac.Item) -> str | None:
    """The MGRS tile of an item, from ``grid:code``, ``s2:mgrs_tile``, the ``mgrs:*`` fields or its id."""
    props = item.properties
    candidates: list[str] = []
    if isinstance(props.get("grid:code"), str):
        candidates.append(props["grid:code"])
    for key in ("s2:mgrs_tile", "mgrs:tile", "tile"):
        if isinstance(props.get(key), str):
            candidates.append(props[key])
    if all(k in props for k in ("mgrs:utm_zone", "mgrs:latitude_band", "mgrs:grid_square")):
        candidates.append(f"{int(props['mgrs:utm_zone']):02d}{props['mgrs:latitude_band']}{props['mgrs:grid_square']}")
    for text in candidates:
        try:
            return normalise_tile(text)
        except ConfigError:
            continue
    m = _TILE_IN_ID_RE.search(item.id.upper())
    return normalise_tile(m.group(1)) if m else None


def _parse_instant(text: str, end: bool) -> dt.datetime | None:
    """Parse one side of a datetime range; a bare date as the end means the whole day (inclusive)."""
    text = text.strip()
    if text in ("", ".."):
        return None
    try:
        if len(text) == 10:
            day = dt.date.fromisoformat(text)
            start = dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc)
            return start + dt.timedelta(days=1) - dt.timedelta(microseconds=1) if end else start
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(
            f"datetime {text!r} is not ISO 8601; use e.g. '2021-06-01/2021-09-30' or '2021-07-01T00:00:00Z'"
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)


def parse_datetime_range(value: str | None) -> tuple[dt.datetime | None, dt.datetime | None]:
    """Parse ``"start/end"`` (either side may be ``..``) or a single date into inclusive UTC bounds."""
    if value is None or str(value).strip() in ("", ".."):
        return None, None
    text = str(value)
    if "/" in text:
        left, right = text.split("/", 1)
    else:
        left = right = text
    start, end = _parse_instant(left, end=False), _parse_instant(right, end=True)
    if start and end and start > end:
        raise ConfigError(f"datetime range {value!r} ends before it starts")
    return start, end


def load_aoi(aoi: str | os.PathLike[str] | BaseGeometry | Mapping[str, Any] | None) -> BaseGeometry | None:
    """Return an area of interest as one shapely geometry in EPSG:4326.

    Args:
        aoi: a vector file (any CRS; all features are unioned), a shapely geometry or GeoJSON-like mapping
            (both taken to be EPSG:4326), or None.
    """
    if aoi is None:
        return None
    if isinstance(aoi, BaseGeometry):
        geom = aoi
    elif isinstance(aoi, Mapping):
        geom = shape(aoi.get("geometry", aoi))
    else:
        import geopandas as gpd

        p = Path(aoi)
        if not p.exists():
            raise InputError(f"AOI file {p} not found; check the 'aoi' path in your config")
        try:
            gdf = gpd.read_file(p)
        except Exception as exc:
            raise InputError(f"cannot read AOI file {p} ({exc}); is it a valid vector file?") from exc
        if gdf.crs is None:
            raise InputError(f"AOI file {p} has no CRS; assign one (e.g. ogr2ogr -a_srs EPSG:4326)")
        if gdf.empty:
            raise InputError(f"AOI file {p} has no features; draw at least one polygon")
        geom = shapely.union_all(shapely.make_valid(gdf.to_crs(4326).geometry.values))
    if geom.is_empty:
        raise InputError("the AOI geometry is empty; give a polygon that covers your study area")
    return shapely.make_valid(geom)


def _item_geometry(item: pystac.Item) -> BaseGeometry | None:
    if item.geometry:
        return shapely.make_valid(shape(item.geometry))
    if item.bbox:
        return box(*item.bbox[:2], *item.bbox[-2:]) if len(item.bbox) == 6 else box(*item.bbox)
    return None


def _asset_band_names(key: str, asset: pystac.Asset) -> list[str]:
    """Names an asset may be known by: its ``eo:bands``/``bands`` entries, then its key."""
    names: list[str] = []
    for field in ("eo:bands", "bands"):
        entries = asset.extra_fields.get(field)
        if isinstance(entries, list) and len(entries) == 1 and isinstance(entries[0], dict):
            for attr in ("name", "eo:common_name", "common_name"):
                if isinstance(entries[0].get(attr), str):
                    names.append(entries[0][attr])
    names.append(key)
    return names


def band_assets(item: pystac.Item) -> dict[str, str]:
    """Map canonical band id -> absolute asset href for one item.

    Providers often publish the same band twice (Earth Search: ``blue`` as COG and ``blue-jp2`` as JPEG2000);
    GeoTIFF assets and assets whose key itself names the band win.
    """
    best: dict[str, tuple[tuple[int, int], str]] = {}
    for key, asset in item.assets.items():
        roles = asset.roles or []
        if any(r in ("thumbnail", "overview", "metadata", "visual") for r in roles):
            continue
        for name in _asset_band_names(key, asset):
            try:
                band = canonical_band(name)
            except ConfigError:
                continue
            media = (asset.media_type or "").lower()
            is_tiff = "tiff" in media or asset.href.lower().endswith((".tif", ".tiff"))
            key_names_band = name == key
            score = (int(is_tiff), int(key_names_band))
            if band not in best or score > best[band][0]:
                best[band] = (score, asset.get_absolute_href() or asset.href)
            break
    return {band: href for band, (_, href) in best.items()}


def _scene_record(item: pystac.Item, tile: str, bands: list[str]) -> dict[str, Any]:
    props = item.properties
    assets = band_assets(item)
    missing = [b for b in bands if b not in assets]
    if missing:
        raise InputError(
            f"scene {item.id} has no asset for band(s) {', '.join(missing)} "
            f"(it has {', '.join(sorted(assets)) or 'none'});"
            " drop them from 'bands' or use a collection that provides them"
        )
    crs = props.get("proj:code")
    if not crs and props.get("proj:epsg"):
        crs = f"EPSG:{int(props['proj:epsg'])}"
    snow = props.get("s2:snow_ice_percentage", props.get("eo:snow_cover"))
    geom = _item_geometry(item)
    when = item.datetime or item.common_metadata.start_datetime
    return {
        "id": re.sub(r"[^A-Za-z0-9._-]", "_", item.id),
        "stac_id": item.id,
        "tile": tile,
        "datetime": when.isoformat() if when else None,
        "cloud_cover": float(props["eo:cloud_cover"]) if props.get("eo:cloud_cover") is not None else None,
        "snow_cover": float(snow) if snow is not None else None,
        "processing_baseline": str(props["s2:processing_baseline"]) if props.get("s2:processing_baseline") else None,
        "crs": crs,
        "bbox": list(geom.bounds) if geom is not None else None,
        "assets": {b: assets[b] for b in bands},
    }


def _local_items(catalog: str, collection: str | None) -> Iterable[pystac.Item]:
    path = Path(catalog)
    if path.is_dir():
        names = ("catalog.json", "collection.json")
        path = next((path / n for n in names if (path / n).exists()), path / "catalog.json")
    if not path.exists():
        raise InputError(f"STAC catalog {path} not found; give a catalog.json path or an http(s) STAC API URL")
    try:
        root = pystac.read_file(str(path))
    except Exception as exc:
        raise InputError(f"cannot read STAC catalog {path} ({exc}); is it a STAC catalog or collection?") from exc
    if isinstance(root, pystac.Item):
        items: Iterable[pystac.Item] = [root]
    elif isinstance(root, pystac.Catalog):
        items = root.get_items(recursive=True)
    else:
        raise InputError(f"{path} is a {type(root).__name__}, not a STAC catalog, collection or item")
    for item in items:
        if collection is None or item.collection_id == collection:
            yield item


def _api_items(
    url: str,
    collection: str | None,
    aoi: BaseGeometry | None,
    tiles: list[str] | None,
    datetime: str | None,
    max_cloud_cover: float,
) -> Iterable[pystac.Item]:
    from pystac_client import Client

    if collection is None:
        raise ConfigError(f"searching the STAC API {url} needs a 'collection' (e.g. sentinel-2-l1c)")
    query: dict[str, Any] = {"eo:cloud_cover": {"lte": max_cloud_cover}}
    if aoi is None and tiles:
        # Without a geometry, the server must narrow by tile itself; grid:code is the Earth Search convention.
        query["grid:code"] = {"in": [f"MGRS-{t}" for t in tiles]}
    try:
        client = Client.open(url)
        search = client.search(
            collections=[collection],
            intersects=mapping(aoi) if aoi is not None else None,
            datetime=datetime,
            query=query,
            max_items=MAX_API_ITEMS,
        )
        yield from search.items()
    except PixeldinoError:
        raise
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"STAC API search at {url} failed ({reason}); check the URL, collection and network") from exc


def search_scenes(
    catalog: str | os.PathLike[str],
    *,
    collection: str | None = None,
    aoi: str | os.PathLike[str] | BaseGeometry | Mapping[str, Any] | None = None,
    tiles: list[str] | None = None,
    datetime: str | None = None,
    max_cloud_cover: float = 100.0,
    max_scenes_per_tile: int = 1,
    bands: list[str] | None = None,
) -> dict[str, Any]:
    """Search a STAC catalog or API and keep the least cloudy scenes per MGRS tile.

    Args:
        catalog: local static catalog (``catalog.json`` or its folder) or an http(s) STAC API URL.
        collection: collection id (``sentinel-2-l1c``); None on a local catalog means all collections.
        aoi: area of interest (vector file, or shapely geometry / GeoJSON mapping in EPSG:4326).
        tiles: MGRS tiles to keep (``["08WMA"]``); None keeps all tiles that pass the other filters.
        datetime: inclusive range ``"2021-06-01/2021-09-30"`` (open ends as ``..``) or one date.
        max_cloud_cover: keep scenes with ``eo:cloud_cover`` <= this (%); scenes without the field pass only at 100.
        max_scenes_per_tile: how many scenes to keep per tile, least cloudy first (earlier date breaks ties).
        bands: canonical or provider band names every scene must provide; all 13 L1C bands if None.

    Returns:
        The manifest dict (see module docs); write it with :func:`write_manifest`.

    Raises:
        NoScenesError: nothing matched.
        InputError: the catalog is unreadable, or a chosen scene lacks a requested band.
    """
    if max_scenes_per_tile < 1:
        raise ConfigError(f"max_scenes_per_tile must be at least 1, got {max_scenes_per_tile}")
    band_list = canonical_bands(list(bands)) if bands else list(S2_BANDS)
    tile_set = [normalise_tile(t) for t in tiles] if tiles else None
    aoi_geom = load_aoi(aoi)
    start, end = parse_datetime_range(datetime)
    catalog_str = str(catalog)
    is_api = catalog_str.startswith(("http://", "https://"))

    if is_api:
        items = _api_items(catalog_str, collection, aoi_geom, tile_set, datetime, max_cloud_cover)
    else:
        catalog_str = str(Path(catalog_str).resolve())
        items = _local_items(catalog_str, collection)

    per_tile: dict[str, list[pystac.Item]] = {}
    for item in items:
        tile = item_tile(item)
        if tile is None or (tile_set is not None and tile not in tile_set):
            continue
        when = item.datetime or item.common_metadata.start_datetime
        if when is None or (start and when < start) or (end and when > end):
            continue
        cloud = item.properties.get("eo:cloud_cover")
        if (cloud is None and max_cloud_cover < 100) or (cloud is not None and float(cloud) > max_cloud_cover):
            continue
        if aoi_geom is not None:
            footprint = _item_geometry(item)
            if footprint is None or not footprint.intersects(aoi_geom):
                continue
        per_tile.setdefault(tile, []).append(item)

    if not per_tile:
        where = f"tiles {', '.join(tile_set)}" if tile_set else ""
        if aoi_geom is not None:
            b = ", ".join(f"{v:.3f}" for v in aoi_geom.bounds)
            where = f"{where} and " if where else ""
            where += f"AOI [{b}]"
        where = where or "any tile"
        raise NoScenesError(
            f"no scenes in {catalog_str} ({collection or 'all collections'}) for {where} between "
            f"{datetime or 'any date'} with cloud cover <= {max_cloud_cover:g}%; "
            "widen the dates or relax max_cloud_cover"
        )

    scenes: list[dict[str, Any]] = []
    for tile in sorted(per_tile):
        ranked = sorted(
            per_tile[tile],
            key=lambda it: (
                float(it.properties["eo:cloud_cover"]) if it.properties.get("eo:cloud_cover") is not None else 100.0,
                (it.datetime or it.common_metadata.start_datetime).isoformat(),
                it.id,
            ),
        )
        for item in ranked[:max_scenes_per_tile]:
            scenes.append(_scene_record(item, tile, band_list))

    found = sorted({it.collection_id or "" for its in per_tile.values() for it in its})
    collection_name = collection or ",".join(c for c in found if c)
    return {
        "pixeldino_manifest": MANIFEST_VERSION,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "catalog": catalog_str,
        "collection": collection_name,
        "query": {
            "collection": collection,
            "aoi": str(aoi) if isinstance(aoi, (str, os.PathLike)) else None,
            "aoi_bbox": list(aoi_geom.bounds) if aoi_geom is not None else None,
            "tiles": tile_set,
            "datetime": datetime,
            "max_cloud_cover": max_cloud_cover,
            "max_scenes_per_tile": max_scenes_per_tile,
            "bands": band_list,
        },
        "scenes": scenes,
    }


_SCENE_KEYS = ("id", "tile", "datetime", "crs", "assets")


def _validate_manifest(manifest: Any, source: str) -> dict[str, Any]:
    if not isinstance(manifest, dict) or manifest.get("pixeldino_manifest") != MANIFEST_VERSION:
        raise InputError(
            f"{source} is not a pixeldino scene manifest (version {MANIFEST_VERSION}); re-run `pixeldino search`"
        )
    scenes = manifest.get("scenes")
    if not isinstance(scenes, list):
        raise InputError(f"{source}: manifest has no 'scenes' list; re-run `pixeldino search`")
    for i, scene in enumerate(scenes):
        missing = [k for k in _SCENE_KEYS if k not in scene]
        if missing:
            raise InputError(f"{source}: scene #{i} lacks {', '.join(missing)}; re-run `pixeldino search`")
    return manifest


def write_manifest(manifest: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Validate and write a scene manifest as JSON (atomically)."""
    _validate_manifest(manifest, "manifest to write")
    return write_json(path, manifest)


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate a scene manifest written by :func:`write_manifest`."""
    return _validate_manifest(read_json(path), str(path))
