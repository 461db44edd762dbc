"""Scene search: pick the best Sentinel-2 scenes per MGRS tile from a STAC catalog or API and write a manifest.

Where scenes come from is a provider (:mod:`pixeldino.providers`, config section ``stac``): a local static catalog
(walked with pystac) or a STAC API (Earth Search, Planetary Computer, Copernicus Data Space, any URL; searched with
pystac-client). Which scenes is :class:`SearchParams` (config section ``search``). On an API, the cloud, snow and
tile limits go to the server as a CQL2-JSON ``filter`` when its landing page announces the Filter extension in
``conformsTo``, as a ``query`` when it only announces the Query extension, and nowhere otherwise. Every path then
applies the same client-side filters (MGRS tile, date windows, cloud and snow cover, AOI intersection, expected
UTM CRS), so a local mirror and any API select the same scenes.

Areas resolve to tiles offline with the shipped Arctic grid (:mod:`pixeldino.tiles`): ``aoi`` may be a vector
file, a ``[west, south, east, north]`` bbox, or ``"circumpolar"`` for the RTS mapping domain. Date windows come
from :mod:`pixeldino.dates`.

For each tile (and year, with ``years``), scenes are ranked by their clear-land fraction, then by lower cloud
cover, earlier date and id (:func:`pixeldino.items.rank_key`); the best ``max_scenes_per_tile`` are kept. The
result is the scene manifest (:mod:`pixeldino.manifest`), the checkpoint output of the workflow.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pystac
import shapely
from shapely.geometry import mapping
from shapely.geometry.base import BaseGeometry

from pixeldino.bands import S2_BANDS, canonical_bands
from pixeldino.dates import date_windows, in_windows, parse_datetime_range
from pixeldino.errors import ConfigError, InputError, NoScenesError, PixeldinoError, first_line
from pixeldino.items import (
    cloud_cover,
    item_datetime,
    item_geometry,
    item_tile,
    rank_key,
    reject_reason,
    scene_record,
    snow_cover,
)
from pixeldino.manifest import MANIFEST_VERSION, read_manifest, write_manifest
from pixeldino.providers import Provider, StacParams, cql2_filter, resolve_provider, server_capabilities
from pixeldino.tiles import (
    CIRCUMPOLAR,
    TILE_ID_PATTERN,
    describe_aoi,
    domain_tiles,
    load_aoi,
    normalise_tile,
    parse_aoi_text,
    tiles_union,
)

log = logging.getLogger(__name__)

#: Upper bound on items pulled from a STAC API in one request, so a too-wide query fails fast instead of paging
#: through the whole archive.
MAX_API_ITEMS = 5000
#: Tiles per API request when searching by tile (keeps the request geometry and the CQL2 ``in`` list small).
TILES_PER_REQUEST = 50
#: AOIs with more vertices than this are sent to an API as their convex hull (the client re-checks exactly).
_MAX_QUERY_VERTICES = 500


@dataclass
class SearchParams:
    """Which scenes to search for: the config section ``search`` and the options of ``pixeldino search``.

    Attributes:
        aoi: area of interest: a vector file (GeoPackage, GeoJSON, ...; all features are unioned), a bbox
            [west, south, east, north] in degrees, or 'circumpolar' for the shipped RTS mapping domain
            (pixeldino/data). It resolves to MGRS tiles offline with the shipped tile grid; None: no area limit.
        tiles: MGRS tiles (e.g. 08WMA); empty means every tile that intersects the AOI.
        datetime: date range START/END (inclusive); None: any date. Give either this or ``years``.
        years: search the ``months`` of each of these years (one window per year) instead of ``datetime``.
        months: months of the season searched in each of ``years``.
        max_cloud_cover: keep scenes with cloud cover <= this (%); scenes without the property pass only at 100.
        max_snow_cover: keep scenes with snow/ice cover <= this (%); scenes without the property always pass.
        max_scenes_per_tile: scenes kept per tile (per tile and year with ``years``), ranked by clear-land
            fraction (see pixeldino/items.py).
        manifest: use this pre-made scene manifest (as written by `pixeldino search`) instead of searching: the
            workflow plans every scene up front and needs no network until the fetch.
    """

    aoi: str | list[float] | None = field(
        default=None, metadata={"minItems": 4, "maxItems": 4, "cli": {"type": parse_aoi_text, "nargs": None}}
    )
    tiles: list[str] = field(default_factory=list, metadata={"items": {"pattern": TILE_ID_PATTERN}})
    datetime: str | None = field(
        default=None, metadata={"pattern": r"^[0-9]{4}-[0-9]{2}-[0-9]{2}/[0-9]{4}-[0-9]{2}-[0-9]{2}$"}
    )
    years: list[int] = field(
        default_factory=list, metadata={"uniqueItems": True, "items": {"minimum": 2015, "maximum": 2100}}
    )
    months: list[int] = field(
        default_factory=lambda: [7, 8],
        metadata={"uniqueItems": True, "minItems": 1, "items": {"minimum": 1, "maximum": 12}},
    )
    max_cloud_cover: float = field(default=20.0, metadata={"minimum": 0, "maximum": 100})
    max_snow_cover: float = field(default=100.0, metadata={"minimum": 0, "maximum": 100})
    max_scenes_per_tile: int = field(default=1, metadata={"minimum": 1})
    manifest: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.aoi, os.PathLike):
            self.aoi = os.fspath(self.aoi)  # a Path from Python callers; configs hold strings
        elif self.aoi is not None and not isinstance(self.aoi, str):
            self.aoi = [float(v) for v in self.aoi]
        try:
            self.tiles = [normalise_tile(t) for t in self.tiles]
        except ConfigError as exc:
            raise ConfigError(f"search.tiles (--tiles): {exc}") from None
        if self.datetime is not None and self.years:
            raise ConfigError(
                f"search.datetime ({self.datetime}) and search.years ({self.years}) are both set; give one of them "
                "(years searches the months of each year)"
            )
        if self.max_scenes_per_tile < 1:
            raise ConfigError(f"search.max_scenes_per_tile must be at least 1, got {self.max_scenes_per_tile}")
        date_windows(self.datetime, self.years, self.months)  # validates the range and the months


def run_search(
    params: SearchParams, stac: StacParams, *, bands: Sequence[str], out_manifest: str | os.PathLike[str]
) -> dict[str, Any]:
    """The search stage: search (or take the pre-made ``params.manifest``) and write the manifest.

    Args:
        params: which scenes (config section ``search``).
        stac: where from (config section ``stac``).
        bands: canonical or provider band names every scene must provide.
        out_manifest: the manifest JSON to write.

    Returns:
        The manifest written.

    Raises:
        NoScenesError: nothing matched (see :func:`search_scenes`).
        InputError: the catalog or the pre-made manifest is unreadable, or a tile's scenes lack a band.
        ConfigError: invalid provider, tile or AOI.
    """
    if params.manifest:
        manifest = read_manifest(params.manifest)
        log.info(
            "using the pre-made manifest %s (%d scenes) instead of searching", params.manifest, len(manifest["scenes"])
        )
    else:
        manifest = search_scenes(params, stac, bands=bands)
    write_manifest(manifest, out_manifest)
    return manifest


def search_scenes(params: SearchParams, stac: StacParams, *, bands: Sequence[str] | None = None) -> dict[str, Any]:
    """Search a STAC catalog or API and keep the clearest scenes per MGRS tile.

    Args:
        params: AOI or tiles, dates, cloud and snow limits, scenes per tile (see :class:`SearchParams`).
        stac: the provider, catalog and collection (see :class:`pixeldino.providers.StacParams`).
        bands: canonical or provider band names every scene must provide; all 13 bands if None.

    Returns:
        The manifest dict (see :mod:`pixeldino.manifest`); write it with :func:`pixeldino.manifest.write_manifest`.

    Raises:
        NoScenesError: nothing matched (the message names the tiles, dates and limits).
        InputError: the catalog is unreadable, or every candidate of a tile lacks a requested band.
        ConfigError: invalid provider, tile or AOI.
    """
    prov = resolve_provider(stac)
    band_list = canonical_bands(list(bands)) if bands else list(S2_BANDS)
    tile_set = sorted(set(params.tiles)) if params.tiles else None
    if params.aoi == CIRCUMPOLAR:
        domain = domain_tiles()
        tile_set = sorted(set(domain) & set(tile_set)) if tile_set else domain
    aoi_geom = load_aoi(params.aoi)
    windows = date_windows(params.datetime, params.years, params.months)
    bounds = [parse_datetime_range(w) for w in windows]

    if prov.is_api:
        items, server_filter = _api_items(prov, windows, aoi_geom, tile_set, params)
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
        when = item_datetime(item)
        if when is None or not in_windows(when, bounds):
            continue
        cloud = cloud_cover(item.properties)
        if (cloud is None and params.max_cloud_cover < 100) or (cloud is not None and cloud > params.max_cloud_cover):
            continue
        snow = snow_cover(item.properties)
        if snow is not None and snow > params.max_snow_cover:
            continue
        if aoi_geom is not None:
            footprint = item_geometry(item)
            if footprint is None or not footprint.intersects(aoi_geom):
                continue
        reason = reject_reason(item, tile)
        if reason:
            log.warning("scene %s (tile %s) skipped: %s", item.id, tile, reason)
            rejected.append({"stac_id": item.id, "tile": tile, "reason": reason})
            continue
        per_tile.setdefault((tile, when.year if params.years else None), []).append(item)

    if not per_tile:
        raise NoScenesError(
            _no_scenes_message(catalog_str, prov.collection, tile_set, aoi_geom, windows, params, rejected)
        )

    scenes: list[dict[str, Any]] = []
    for key in sorted(per_tile, key=lambda k: (k[0], k[1] or 0)):
        tile = key[0]
        ranked = sorted(per_tile[key], key=rank_key)
        chosen: list[dict[str, Any]] = []
        first_error: InputError | None = None
        for item in ranked:
            if len(chosen) == params.max_scenes_per_tile:
                break
            try:
                chosen.append({**scene_record(item, tile, band_list), "provider": prov.name})
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
            "aoi": describe_aoi(params.aoi),
            "aoi_bbox": list(aoi_geom.bounds) if aoi_geom is not None else None,
            "tiles": tile_set,
            "datetime": params.datetime,
            "windows": windows,
            "max_cloud_cover": params.max_cloud_cover,
            "max_snow_cover": params.max_snow_cover,
            "max_scenes_per_tile": params.max_scenes_per_tile,
            "bands": band_list,
        },
        "rejected": rejected,
        "scenes": scenes,
    }


def _local_items(catalog: str, collection: str | None) -> Iterable[pystac.Item]:
    """The items of a static catalog (``catalog.json``, ``collection.json`` or their folder), of one collection.

    Raises:
        InputError: the catalog is missing or not a STAC catalog, collection or item.
    """
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
        total=retries,
        backoff_factor=0.5,
        status_forcelist=(429, 500, 502, 503, 504),
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
    params: SearchParams,
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
            if tiles and aoi is None
            else [tiles]
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
                    max_cloud_cover=params.max_cloud_cover,
                    max_snow_cover=params.max_snow_cover,
                    snow_property=provider.snow_property,
                    tile_property=provider.tile_property,
                    tile_values=tile_values,
                )
                if flt is not None:
                    kwargs.update(filter=flt, filter_lang="cql2-json")
            elif mode == "query":
                query: dict[str, Any] = {}
                if params.max_cloud_cover < 100:
                    query["eo:cloud_cover"] = {"lte": params.max_cloud_cover}
                if tile_values:
                    query[provider.tile_property] = {"in": tile_values}
                if query:
                    kwargs["query"] = query
            for window in windows:
                search = client.search(
                    collections=[provider.collection],
                    intersects=geometry,
                    datetime=window,
                    max_items=MAX_API_ITEMS,
                    **kwargs,
                )
                for item in search.items():
                    items.setdefault(item.id, item)
        log.info(
            "searched %s (%s): %d items, filters applied by %s",
            url,
            provider.collection,
            len(items),
            "the server (CQL2)"
            if mode == "filter"
            else "the server (query)"
            if mode == "query"
            else "the client (the server announces no filter extension)",
        )
        return list(items.values()), mode
    except PixeldinoError:
        raise
    except Exception as exc:
        raise InputError(
            f"STAC API search at {url} failed ({first_line(exc)}); check the URL, collection and network"
        ) from exc


def _describe_tiles(tiles: list[str]) -> str:
    """The first tiles of a list, and how many more, for messages about thousands of tiles."""
    shown = ", ".join(tiles[:8])
    return f"tiles {shown}" + (f" and {len(tiles) - 8} more" if len(tiles) > 8 else "")


def _no_scenes_message(
    catalog: str,
    collection: str | None,
    tiles: list[str] | None,
    aoi: BaseGeometry | None,
    windows: list[str | None],
    params: SearchParams,
    rejected: list[dict[str, Any]],
) -> str:
    """One line that says what was searched for and found nothing, and which limit to relax."""
    where = _describe_tiles(tiles) if tiles else ""
    if aoi is not None:
        b = ", ".join(f"{v:.3f}" for v in aoi.bounds)
        where = f"{where} and " if where else ""
        where += f"AOI [{b}]"
    where = where or "any tile"
    dates = ", ".join(w or "any date" for w in windows)
    snow = f" and snow cover <= {params.max_snow_cover:g}%" if params.max_snow_cover < 100 else ""
    skipped = f" ({len(rejected)} scene(s) skipped as unusable, see the log)" if rejected else ""
    relax = "max_cloud_cover" + (" or max_snow_cover" if snow else "")
    return (
        f"no scenes in {catalog} ({collection or 'all collections'}) for {where} between {dates} "
        f"with cloud cover <= {params.max_cloud_cover:g}%{snow}{skipped}; widen the dates or relax {relax}"
    )
