"""Scene search: pick the best Sentinel-2 scenes per MGRS tile from a STAC catalog or API and write a manifest.

Where scenes come from is a provider (:mod:`pixeldino.providers`): a local static catalog (walked with pystac) or
a STAC API (Earth Search, Planetary Computer, Copernicus Data Space, any URL; searched with pystac-client). On an
API, the cloud, snow and tile limits go to the server as a CQL2-JSON ``filter`` when its landing page announces
the Filter extension in ``conformsTo``, as a ``query`` when it only announces the Query extension, and nowhere
otherwise. Every path then applies the same client-side filters (MGRS tile, date windows, cloud and snow cover,
AOI intersection, expected UTM CRS), so a local mirror and any API select the same scenes.

Areas resolve to tiles offline with the shipped Arctic grid (:mod:`pixeldino.tiles`): ``aoi`` may be a vector
file, a ``[west, south, east, north]`` bbox, or ``"circumpolar"`` for the RTS mapping domain.

For each tile, scenes are ranked by their **clear-land fraction**
``(1 - nodata%/100) * max(0, 1 - (cloud% + cloud shadow% + snow%)/100)`` (missing properties count as 0), then
by lower cloud cover, earlier date and id; the best ``max_scenes_per_tile`` are kept.

The manifest is the checkpoint output of the workflow: a small JSON file a user can read, with one entry per
chosen scene and absolute asset hrefs keyed by canonical band id (``B02``...)::

    {"pixeldino_manifest": 1, "created": "...", "provider": {...}, "catalog": "...", "collection": "...",
     "query": {...}, "rejected": [{"stac_id": "...", "tile": "...", "reason": "..."}],
     "scenes": [{"id": "S2_08WMA_20210821", "stac_id": "...", "tile": "08WMA", "datetime": "...",
                 "cloud_cover": 2.0, "snow_cover": null, "clear_fraction": 0.98, "processing_baseline": "03.00",
                 "product_level": "L1C", "boa_offset_applied": null, "crs": "EPSG:32608", "bbox": [w, s, e, n],
                 "assets": {"B02": "/abs/path/B02.tif", ...}, "mask_asset": null}]}

Hrefs are stored unsigned: Planetary Computer tokens expire, so the fetch signs them just before reading.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pystac
import shapely
from shapely.geometry import box, mapping, shape
from shapely.geometry.base import BaseGeometry

from pixeldino.bands import S2_BANDS, canonical_band, canonical_bands
from pixeldino.errors import ConfigError, InputError, NoScenesError, PixeldinoError
from pixeldino.io import read_json, write_json
from pixeldino.providers import Provider, cql2_filter, resolve_provider, server_capabilities
from pixeldino.quality import SCL_ASSET_NAMES
from pixeldino.tiles import CIRCUMPOLAR, describe_aoi, domain_tiles, read_area, tiles_union, utm_crs_for_tile

log = logging.getLogger(__name__)

MANIFEST_VERSION = 1

#: Upper bound on items pulled from a STAC API in one request, so a too-wide query fails fast instead of paging
#: through the whole archive.
MAX_API_ITEMS = 5000
#: Tiles per API request when searching by tile (keeps the request geometry and the CQL2 ``in`` list small).
TILES_PER_REQUEST = 50
#: A scene whose tile is (almost) all nodata (``s2:nodata_pixel_percentage`` above this) is rejected.
MAX_NODATA_PERCENT = 99.9
#: AOIs with more vertices than this are sent to an API as their convex hull (the client re-checks exactly).
_MAX_QUERY_VERTICES = 500

_TILE_RE = re.compile(r"^T?(\d{1,2})([C-HJ-NP-X])([A-HJ-NP-Z]{2})$")
_TILE_IN_ID_RE = re.compile(r"(?:^|[_-])T?(\d{1,2}[C-HJ-NP-X][A-HJ-NP-Z]{2})(?:[_-]|$)")
_RES_IN_KEY_RE = re.compile(r"_(\d+)m$")


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


def date_windows(
    datetime: str | Sequence[str] | None = None,
    years: Sequence[int] | None = None,
    months: Sequence[int] | None = None,
) -> list[str | None]:
    """The date windows to search, as ``START/END`` strings (``[None]`` means any date).

    Args:
        datetime: one range ``"2021-07-01/2021-08-31"`` or a list of ranges.
        years: if given, they take precedence over ``datetime``: one window per year and run of consecutive
            ``months`` (``years=[2021, 2023], months=[7, 8]`` -> July-August 2021 and July-August 2023).
        months: months 1-12 of the season (default July and August).

    Raises:
        ConfigError: a month outside 1-12 or a malformed range.
    """
    if years:
        season = sorted({int(m) for m in (months or (7, 8))})
        if not season or season[0] < 1 or season[-1] > 12:
            raise ConfigError(f"search.months {list(months or [])} must be month numbers 1-12")
        runs: list[list[int]] = [[season[0]]]
        for m in season[1:]:
            if m == runs[-1][-1] + 1:
                runs[-1].append(m)
            else:
                runs.append([m])
        windows: list[str | None] = []
        for year in sorted({int(y) for y in years}):
            for run in runs:
                first = dt.date(year, run[0], 1)
                nxt = dt.date(year + (run[-1] == 12), run[-1] % 12 + 1, 1)
                windows.append(f"{first.isoformat()}/{(nxt - dt.timedelta(days=1)).isoformat()}")
        return windows
    if datetime is None:
        return [None]
    ranges = [datetime] if isinstance(datetime, str) else list(datetime)
    for r in ranges:
        parse_datetime_range(r)  # validates
    return list(ranges) or [None]


def load_aoi(
    aoi: str | os.PathLike[str] | BaseGeometry | Mapping[str, Any] | Sequence[float] | None,
) -> BaseGeometry | None:
    """Return an area of interest as one shapely geometry in EPSG:4326.

    Args:
        aoi: a vector file (any CRS; all features are unioned), a ``[west, south, east, north]`` bbox in degrees,
            a shapely geometry or GeoJSON-like mapping (both taken to be EPSG:4326), or None. The circumpolar
            domain has no sensible EPSG:4326 outline (it wraps the pole): it gives None here and is used as a
            tile list instead (:func:`pixeldino.tiles.domain_tiles`).
    """
    if aoi is None or (isinstance(aoi, str) and aoi == CIRCUMPOLAR):
        return None
    if isinstance(aoi, BaseGeometry):
        geom = aoi
    elif isinstance(aoi, Mapping):
        geom = shape(aoi.get("geometry", aoi))
    else:
        import geopandas as gpd

        area, crs = read_area(aoi)  # type: ignore[arg-type]
        geom = gpd.GeoSeries([area], crs=crs).to_crs(4326).iloc[0] if not crs.equals("EPSG:4326") else area
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


def _asset_resolution(key: str, asset: pystac.Asset) -> float | None:
    """An asset's pixel size in metres, from its key (``B02_20m``), ``gsd`` or ``raster:bands``, if stated."""
    m = _RES_IN_KEY_RE.search(key)
    if m:
        return float(m.group(1))
    if isinstance(asset.extra_fields.get("gsd"), (int, float)):
        return float(asset.extra_fields["gsd"])
    bands = asset.extra_fields.get("raster:bands")
    if isinstance(bands, list) and bands and isinstance(bands[0], dict):
        res = bands[0].get("spatial_resolution")
        if isinstance(res, (int, float)):
            return float(res)
    return None


def band_assets(item: pystac.Item) -> dict[str, str]:
    """Map canonical band id -> absolute asset href for one item.

    Providers often publish the same band more than once (Earth Search: ``blue`` as COG and ``blue-jp2`` as
    JPEG2000; Copernicus Data Space: ``B02_10m``, ``B02_20m``, ``B02_60m``). GeoTIFF assets win, then assets at
    the band's native resolution, then assets whose key itself names the band.
    """
    best: dict[str, tuple[tuple[int, int, int], str]] = {}
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
            res = _asset_resolution(key, asset)
            native = 1 if res is None else 2 * int(abs(res - S2_BANDS[band].resolution) < 1e-6)
            key_names_band = name == key
            score = (int(is_tiff), native, int(key_names_band))
            if band not in best or score > best[band][0]:
                best[band] = (score, asset.get_absolute_href() or asset.href)
            break
    return {band: href for band, (_, href) in best.items()}


def scl_asset(item: pystac.Item) -> str | None:
    """The href of the item's scene-classification (SCL) asset, or None (e.g. L1C)."""
    for key, asset in item.assets.items():
        names = [key] + [n for n in _asset_band_names(key, asset) if n != key]
        if any(n in SCL_ASSET_NAMES for n in names):
            return asset.get_absolute_href() or asset.href
    return None


def _float(props: Mapping[str, Any], *keys: str) -> float | None:
    for key in keys:
        if props.get(key) is not None:
            try:
                return float(props[key])
            except (TypeError, ValueError):
                continue
    return None


def _snow(props: Mapping[str, Any]) -> float | None:
    return _float(props, "s2:snow_ice_percentage", "eo:snow_cover")


def clear_fraction(props: Mapping[str, Any]) -> float:
    """Expected share of the tile that is valid, cloud-free, shadow-free and snow-free land (0-1).

    ``(1 - nodata%/100) * max(0, 1 - (cloud% + cloud shadow% + snow%)/100)``; missing properties count as 0.
    """
    nodata = _float(props, "s2:nodata_pixel_percentage") or 0.0
    bad = sum(v or 0.0 for v in (_float(props, "eo:cloud_cover"), _float(props, "s2:cloud_shadow_percentage"),
                                 _snow(props)))
    return round(max(0.0, 1.0 - nodata / 100.0) * max(0.0, 1.0 - bad / 100.0), 6)


def _product_level(item: pystac.Item) -> str | None:
    product = str(item.properties.get("s2:product_type") or "").upper()
    if product.endswith("2A"):
        return "L2A"
    if product.endswith("1C"):
        return "L1C"
    collection = (item.collection_id or "").lower()
    return "L2A" if "l2a" in collection else "L1C" if "l1c" in collection else None


def _item_crs(item: pystac.Item) -> str | None:
    props = item.properties
    crs = props.get("proj:code")
    if not crs and props.get("proj:epsg"):
        crs = f"EPSG:{int(props['proj:epsg'])}"
    return str(crs) if crs else None


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
    geom = _item_geometry(item)
    when = item.datetime or item.common_metadata.start_datetime
    offset_applied = props.get("earthsearch:boa_offset_applied")
    return {
        "id": re.sub(r"[^A-Za-z0-9._-]", "_", item.id),
        "stac_id": item.id,
        "collection": item.collection_id,
        "tile": tile,
        "datetime": when.isoformat() if when else None,
        "cloud_cover": _float(props, "eo:cloud_cover"),
        "snow_cover": _snow(props),
        "nodata_percentage": _float(props, "s2:nodata_pixel_percentage"),
        "clear_fraction": clear_fraction(props),
        "processing_baseline": str(props["s2:processing_baseline"]) if props.get("s2:processing_baseline") else None,
        "product_level": _product_level(item),
        "boa_offset_applied": bool(offset_applied) if offset_applied is not None else None,
        "crs": _item_crs(item),
        "bbox": list(geom.bounds) if geom is not None else None,
        "assets": {b: assets[b] for b in bands},
        "mask_asset": scl_asset(item),
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


def open_client(url: str, timeout: float = 60.0, retries: int = 5) -> Any:
    """Open a STAC API with pystac-client, retrying transient HTTP errors (429, 5xx) with exponential backoff."""
    from pystac_client import Client
    from pystac_client.stac_api_io import StacApiIO
    from urllib3.util.retry import Retry

    retry = Retry(
        total=retries, backoff_factor=0.5, status_forcelist=(429, 500, 502, 503, 504),
        allowed_methods=None,  # searches are POSTs; they are read-only, so retrying them is safe
    )
    return Client.open(url, stac_io=StacApiIO(max_retries=retry, timeout=timeout), timeout=timeout)


def _query_geometry(geom: BaseGeometry) -> dict[str, Any]:
    """GeoJSON for a server-side ``intersects``: the convex hull of complex areas (a superset, re-checked later)."""
    if shapely.get_num_coordinates(geom) > _MAX_QUERY_VERTICES:
        geom = geom.convex_hull
    return mapping(geom)


def _api_items(
    provider: Provider,
    windows: list[str | None],
    aoi: BaseGeometry | None,
    tiles: list[str] | None,
    max_cloud_cover: float,
    max_snow_cover: float,
) -> tuple[list[pystac.Item], str]:
    """Search a STAC API; returns the items and how the filters were applied (``filter``, ``query`` or ``client``)."""
    url = provider.catalog
    if provider.collection is None:
        raise ConfigError(f"searching the STAC API {url} needs a 'collection' (e.g. sentinel-2-l2a)")
    try:
        client = open_client(url)
        caps = server_capabilities(client.extra_fields.get("conformsTo") or [])
        mode = "filter" if caps["filter"] else "query" if caps["query"] else "client"
        # without an AOI, search tile by tile (in batches): the union of the tile footprints bounds the request
        batches: list[list[str] | None] = (
            [tiles[i : i + TILES_PER_REQUEST] for i in range(0, len(tiles), TILES_PER_REQUEST)]
            if tiles and aoi is None else [tiles]
        )
        items: dict[str, pystac.Item] = {}
        for batch in batches:
            if aoi is not None:
                geometry: dict[str, Any] | None = _query_geometry(aoi)
            else:
                footprint = tiles_union(batch) if batch else None
                geometry = _query_geometry(footprint) if footprint is not None else None
            kwargs: dict[str, Any] = {}
            tile_values = [provider.tile_value(t) for t in batch] if batch else []
            if mode == "filter":
                flt = cql2_filter(
                    max_cloud_cover=max_cloud_cover, max_snow_cover=max_snow_cover,
                    snow_property=provider.snow_property, tile_property=provider.tile_property,
                    tile_values=tile_values,
                )
                if flt is not None:
                    kwargs.update(filter=flt, filter_lang="cql2-json")
            elif mode == "query":
                query: dict[str, Any] = {}
                if max_cloud_cover < 100:
                    query["eo:cloud_cover"] = {"lte": max_cloud_cover}
                if tile_values:
                    query[provider.tile_property] = {"in": tile_values}
                if query:
                    kwargs["query"] = query
            for window in windows:
                search = client.search(
                    collections=[provider.collection], intersects=geometry, datetime=window,
                    max_items=MAX_API_ITEMS, **kwargs,
                )
                for item in search.items():
                    items.setdefault(item.id, item)
        log.info("searched %s (%s): %d items, filters applied by %s", url, provider.collection, len(items),
                 "the server (CQL2)" if mode == "filter" else "the server (query)" if mode == "query"
                 else "the client (the server announces no filter extension)")
        return list(items.values()), mode
    except PixeldinoError:
        raise
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"STAC API search at {url} failed ({reason}); check the URL, collection and network") from exc


def _in_windows(when: dt.datetime, bounds: list[tuple[dt.datetime | None, dt.datetime | None]]) -> bool:
    return any((start is None or when >= start) and (end is None or when <= end) for start, end in bounds)


def _describe_tiles(tiles: list[str]) -> str:
    shown = ", ".join(tiles[:8])
    return f"tiles {shown}" + (f" and {len(tiles) - 8} more" if len(tiles) > 8 else "")


def search_scenes(
    catalog: str | os.PathLike[str] | None = None,
    *,
    provider: str | None = None,
    collection: str | None = None,
    aoi: str | os.PathLike[str] | BaseGeometry | Mapping[str, Any] | Sequence[float] | None = None,
    tiles: list[str] | None = None,
    datetime: str | Sequence[str] | None = None,
    years: Sequence[int] | None = None,
    months: Sequence[int] | None = None,
    max_cloud_cover: float = 100.0,
    max_snow_cover: float = 100.0,
    max_scenes_per_tile: int = 1,
    bands: list[str] | None = None,
) -> dict[str, Any]:
    """Search a STAC catalog or API and keep the clearest scenes per MGRS tile.

    Args:
        catalog: local static catalog (``catalog.json`` or its folder) or STAC API URL; for the presets
            (``earth-search``, ``planetary-computer``, ``cdse``) it is ignored and may be None.
        provider: one of :data:`pixeldino.providers.PROVIDERS`; None infers ``local`` or ``custom`` from ``catalog``.
        collection: collection id; None takes the provider's default (all collections on a local catalog).
        aoi: area of interest: vector file, ``[west, south, east, north]`` bbox, shapely geometry / GeoJSON mapping
            in EPSG:4326, or ``"circumpolar"`` (the shipped RTS mapping domain, as its tiles).
        tiles: MGRS tiles to keep (``["08WMA"]``); None keeps all tiles that pass the other filters.
        datetime: inclusive range ``"2021-06-01/2021-09-30"`` (open ends as ``..``), one date, or a list of ranges.
        years: search ``months`` of each of these years instead of ``datetime`` (see :func:`date_windows`).
        months: months of the season when ``years`` is given (default July and August).
        max_cloud_cover: keep scenes with ``eo:cloud_cover`` <= this (%); scenes without the field pass only at 100.
        max_snow_cover: keep scenes with snow/ice cover <= this (%); scenes without the field always pass.
        max_scenes_per_tile: how many scenes to keep per tile (per tile and year with ``years``), clearest first
            (see module docs).
        bands: canonical or provider band names every scene must provide; all 13 bands if None.

    Returns:
        The manifest dict (see module docs); write it with :func:`write_manifest`.

    Raises:
        NoScenesError: nothing matched (the message names the tiles, dates and limits).
        InputError: the catalog is unreadable, or every candidate of a tile lacks a requested band.
        ConfigError: invalid provider, tile, dates or limits.
    """
    if max_scenes_per_tile < 1:
        raise ConfigError(f"max_scenes_per_tile must be at least 1, got {max_scenes_per_tile}")
    prov = resolve_provider(provider, catalog, collection)
    band_list = canonical_bands(list(bands)) if bands else list(S2_BANDS)
    tile_set = sorted({normalise_tile(t) for t in tiles}) if tiles else None
    if isinstance(aoi, str) and aoi == CIRCUMPOLAR:
        domain = domain_tiles()
        tile_set = sorted(set(domain) & set(tile_set)) if tile_set else domain
    aoi_geom = load_aoi(aoi)  # type: ignore[arg-type]
    windows = date_windows(datetime, years, months)
    bounds = [parse_datetime_range(w) for w in windows]

    if prov.is_api:
        items, server_filter = _api_items(prov, windows, aoi_geom, tile_set, max_cloud_cover, max_snow_cover)
        catalog_str = prov.catalog
    else:
        catalog_str = str(Path(prov.catalog).resolve())
        items, server_filter = list(_local_items(catalog_str, prov.collection)), "client"

    # with years, the limit is per tile and year: a change map needs every year of every tile
    per_tile: dict[tuple[str, int | None], list[pystac.Item]] = {}
    rejected: list[dict[str, Any]] = []
    for item in items:
        tile = item_tile(item)
        if tile is None or (tile_set is not None and tile not in tile_set):
            continue
        when = item.datetime or item.common_metadata.start_datetime
        if when is None or not _in_windows(when, bounds):
            continue
        cloud = _float(item.properties, "eo:cloud_cover")
        if (cloud is None and max_cloud_cover < 100) or (cloud is not None and cloud > max_cloud_cover):
            continue
        snow = _snow(item.properties)
        if snow is not None and snow > max_snow_cover:
            continue
        if aoi_geom is not None:
            footprint = _item_geometry(item)
            if footprint is None or not footprint.intersects(aoi_geom):
                continue
        reason = _reject_reason(item, tile)
        if reason:
            log.warning("scene %s (tile %s) skipped: %s", item.id, tile, reason)
            rejected.append({"stac_id": item.id, "tile": tile, "reason": reason})
            continue
        per_tile.setdefault((tile, when.year if years else None), []).append(item)

    if not per_tile:
        raise NoScenesError(_no_scenes_message(catalog_str, prov.collection, tile_set, aoi_geom, windows,
                                               max_cloud_cover, max_snow_cover, rejected))

    scenes: list[dict[str, Any]] = []
    for key in sorted(per_tile, key=lambda k: (k[0], k[1] or 0)):
        tile = key[0]
        ranked = sorted(per_tile[key], key=_rank_key)
        chosen: list[dict[str, Any]] = []
        first_error: InputError | None = None
        for item in ranked:
            if len(chosen) == max_scenes_per_tile:
                break
            try:
                chosen.append({**_scene_record(item, tile, band_list), "provider": prov.name})
            except InputError as exc:
                # one item without a band asset must not sink the tile when others have it
                first_error = first_error or exc
                log.warning("%s", exc)
                rejected.append({"stac_id": item.id, "tile": tile, "reason": f"missing band asset ({exc})"})
        if not chosen and first_error is not None:
            raise first_error
        scenes.extend(chosen)

    found = sorted({it.collection_id or "" for its in per_tile.values() for it in its})
    collection_name = prov.collection or ",".join(c for c in found if c)
    return {
        "pixeldino_manifest": MANIFEST_VERSION,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "provider": {**prov.describe(), "catalog": catalog_str, "server_filter": server_filter},
        "catalog": catalog_str,
        "collection": collection_name,
        "query": {
            "collection": prov.collection,
            "aoi": describe_aoi(aoi) if not isinstance(aoi, Mapping) else "geometry",
            "aoi_bbox": list(aoi_geom.bounds) if aoi_geom is not None else None,
            "tiles": tile_set,
            "datetime": datetime if isinstance(datetime, (str, type(None))) else list(datetime),
            "windows": windows,
            "max_cloud_cover": max_cloud_cover,
            "max_snow_cover": max_snow_cover,
            "max_scenes_per_tile": max_scenes_per_tile,
            "bands": band_list,
        },
        "rejected": rejected,
        "scenes": scenes,
    }


def _rank_key(item: pystac.Item) -> tuple[float, float, str, str]:
    props = item.properties
    cloud = _float(props, "eo:cloud_cover")
    when = item.datetime or item.common_metadata.start_datetime
    return (-clear_fraction(props), cloud if cloud is not None else 100.0, when.isoformat() if when else "", item.id)


def _reject_reason(item: pystac.Item, tile: str) -> str | None:
    """Why a scene that passed the filters cannot be used (no valid pixel, unexpected CRS), or None."""
    nodata = _float(item.properties, "s2:nodata_pixel_percentage")
    if nodata is not None and nodata >= MAX_NODATA_PERCENT:
        return f"no valid data ({nodata:g}% nodata)"
    crs = _item_crs(item)
    if crs is not None:
        try:
            expected = utm_crs_for_tile(tile)
        except ConfigError:
            return None
        if crs.upper() != expected:
            return f"unexpected CRS {crs} for MGRS tile {tile} (expected {expected})"
    return None


def _no_scenes_message(
    catalog: str,
    collection: str | None,
    tiles: list[str] | None,
    aoi: BaseGeometry | None,
    windows: list[str | None],
    max_cloud_cover: float,
    max_snow_cover: float,
    rejected: list[dict[str, Any]],
) -> str:
    where = _describe_tiles(tiles) if tiles else ""
    if aoi is not None:
        b = ", ".join(f"{v:.3f}" for v in aoi.bounds)
        where = f"{where} and " if where else ""
        where += f"AOI [{b}]"
    where = where or "any tile"
    dates = ", ".join(w or "any date" for w in windows)
    snow = f" and snow cover <= {max_snow_cover:g}%" if max_snow_cover < 100 else ""
    skipped = f" ({len(rejected)} scene(s) skipped as unusable, see the log)" if rejected else ""
    relax = "max_cloud_cover" + (" or max_snow_cover" if snow else "")
    return (
        f"no scenes in {catalog} ({collection or 'all collections'}) for {where} between {dates} "
        f"with cloud cover <= {max_cloud_cover:g}%{snow}{skipped}; widen the dates or relax {relax}"
    )


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
