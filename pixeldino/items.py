"""What pixeldino reads from a Sentinel-2 STAC item: its MGRS tile, band and SCL assets, quality and scene record.

Providers spell the same things differently (Earth Search: ``grid:code`` ``MGRS-08WMA`` and ``red`` assets;
Planetary Computer: ``s2:mgrs_tile``; Copernicus Data Space: ``B04_10m`` assets). Everything here maps them onto
pixeldino's conventions: canonical band ids (``B02``...), 5-character tile ids, and one manifest entry per scene
(:func:`scene_record`).

Scenes of a tile are ranked by their **clear-land fraction** (:func:`clear_fraction`)
``(1 - nodata%/100) * max(0, 1 - (cloud% + cloud shadow% + snow%)/100)`` (missing properties count as 0), then by
lower cloud cover, earlier date and id (:func:`rank_key`).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from typing import Any

import pystac
import shapely
from shapely.geometry import box, shape
from shapely.geometry.base import BaseGeometry

from pixeldino.bands import S2_BANDS, canonical_band
from pixeldino.errors import ConfigError, InputError
from pixeldino.quality import SCL_ASSET_NAMES
from pixeldino.tiles import find_tile, normalise_tile, utm_crs_for_tile

#: A scene whose tile is (almost) all nodata (``s2:nodata_pixel_percentage`` above this) is rejected.
MAX_NODATA_PERCENT = 99.9

_RES_IN_KEY_RE = re.compile(r"_(\d+)m$")


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
    return find_tile(item.id)


def item_datetime(item: pystac.Item) -> dt.datetime | None:
    """When an item was acquired: its ``datetime``, else the start of its ``start_datetime``/``end_datetime`` range."""
    return item.datetime or item.common_metadata.start_datetime


def item_geometry(item: pystac.Item) -> BaseGeometry | None:
    """An item's footprint in EPSG:4326: its (repaired) geometry, else its bbox, else None."""
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


def _number(props: Mapping[str, Any], *keys: str) -> float | None:
    """The first of ``keys`` that holds a number; None when none does (missing, null or not numeric)."""
    for key in keys:
        if props.get(key) is not None:
            try:
                return float(props[key])
            except (TypeError, ValueError):
                continue
    return None


def cloud_cover(props: Mapping[str, Any]) -> float | None:
    """An item's cloud cover in percent (``eo:cloud_cover``), or None when not stated."""
    return _number(props, "eo:cloud_cover")


def snow_cover(props: Mapping[str, Any]) -> float | None:
    """An item's snow/ice cover in percent (``s2:snow_ice_percentage``, else ``eo:snow_cover``), or None."""
    return _number(props, "s2:snow_ice_percentage", "eo:snow_cover")


def clear_fraction(props: Mapping[str, Any]) -> float:
    """Expected share of the tile that is valid, cloud-free, shadow-free and snow-free land (0-1).

    ``(1 - nodata%/100) * max(0, 1 - (cloud% + cloud shadow% + snow%)/100)``; missing properties count as 0.
    """
    nodata = _number(props, "s2:nodata_pixel_percentage") or 0.0
    bad = sum(v or 0.0 for v in (cloud_cover(props), _number(props, "s2:cloud_shadow_percentage"), snow_cover(props)))
    return round(max(0.0, 1.0 - nodata / 100.0) * max(0.0, 1.0 - bad / 100.0), 6)


def product_level(item: pystac.Item) -> str | None:
    """``L2A`` or ``L1C`` from ``s2:product_type`` (``S2MSI2A``), else from the collection id; None if neither says."""
    product = str(item.properties.get("s2:product_type") or "").upper()
    if product.endswith("2A"):
        return "L2A"
    if product.endswith("1C"):
        return "L1C"
    collection = (item.collection_id or "").lower()
    return "L2A" if "l2a" in collection else "L1C" if "l1c" in collection else None


def item_crs(item: pystac.Item) -> str | None:
    """An item's CRS as ``EPSG:<code>`` from ``proj:code`` or ``proj:epsg``; None when not stated."""
    props = item.properties
    crs = props.get("proj:code")
    if not crs and props.get("proj:epsg"):
        crs = f"EPSG:{int(props['proj:epsg'])}"
    return str(crs) if crs else None


def scene_record(item: pystac.Item, tile: str, bands: list[str]) -> dict[str, Any]:
    """The manifest entry of one item (see :mod:`pixeldino.manifest`), with the hrefs of ``bands`` only.

    Raises:
        InputError: the item has no asset for one of ``bands``.
    """
    props = item.properties
    assets = band_assets(item)
    missing = [b for b in bands if b not in assets]
    if missing:
        raise InputError(
            f"scene {item.id} has no asset for band(s) {', '.join(missing)} "
            f"(it has {', '.join(sorted(assets)) or 'none'});"
            " drop them from 'bands' or use a collection that provides them"
        )
    geom = item_geometry(item)
    when = item_datetime(item)
    offset_applied = props.get("earthsearch:boa_offset_applied")
    return {
        "id": re.sub(r"[^A-Za-z0-9._-]", "_", item.id),
        "stac_id": item.id,
        "collection": item.collection_id,
        "tile": tile,
        "datetime": when.isoformat() if when else None,
        "cloud_cover": cloud_cover(props),
        "snow_cover": snow_cover(props),
        "nodata_percentage": _number(props, "s2:nodata_pixel_percentage"),
        "clear_fraction": clear_fraction(props),
        "processing_baseline": str(props["s2:processing_baseline"]) if props.get("s2:processing_baseline") else None,
        "product_level": product_level(item),
        "boa_offset_applied": bool(offset_applied) if offset_applied is not None else None,
        "crs": item_crs(item),
        "bbox": list(geom.bounds) if geom is not None else None,
        "assets": {b: assets[b] for b in bands},
        "mask_asset": scl_asset(item),
    }


def rank_key(item: pystac.Item) -> tuple[float, float, str, str]:
    """Sort key that puts the best scene of a tile first: clearest land, then least cloud, earliest, by id."""
    props = item.properties
    cloud = cloud_cover(props)
    when = item_datetime(item)
    return (-clear_fraction(props), cloud if cloud is not None else 100.0, when.isoformat() if when else "", item.id)


def reject_reason(item: pystac.Item, tile: str) -> str | None:
    """Why a scene that passed the filters cannot be used (no valid pixel, unexpected CRS), or None."""
    nodata = _number(item.properties, "s2:nodata_pixel_percentage")
    if nodata is not None and nodata >= MAX_NODATA_PERCENT:
        return f"no valid data ({nodata:g}% nodata)"
    crs = item_crs(item)
    if crs is not None:
        try:
            expected = utm_crs_for_tile(tile)
        except ConfigError:
            return None
        if crs.upper() != expected:
            return f"unexpected CRS {crs} for MGRS tile {tile} (expected {expected})"
    return None
