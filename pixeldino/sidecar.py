"""The JSON sidecar of a fetched scene: its provenance, and the request that tells a finished output from a stale one.

The sidecar ``<scene>.json`` is written last, after the COG and its quality mask, so its presence marks a finished
scene. It records where the bands came from, how they were resampled and harmonised, the grid, the pixel
statistics and whether the scene is ``skipped`` (no valid or no clear pixel); it never holds credentials or signed
URLs. The request fields (:func:`request_signature`) let a resumed fetch reuse an output only when it was fetched
with the same bands, AOI cut, resolution, offset and mask (:func:`is_finished`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from affine import Affine
from rasterio.crs import CRS
from shapely.geometry.base import BaseGeometry

from pixeldino import __version__
from pixeldino.bands import S2_BANDS
from pixeldino.errors import InputError
from pixeldino.io import read_json
from pixeldino.loader import RESAMPLING
from pixeldino.providers import Provider


def request_signature(
    bands: list[str], aoi_bbox: list[float] | None, resolution: float, offset: int, want_mask: bool
) -> dict[str, Any]:
    """What a finished output must have been fetched with to be reused (compared with its sidecar)."""
    return {
        "bands": bands,
        "aoi_bbox": aoi_bbox,
        "resolution": resolution,
        "offset_applied": offset,
        "mask_requested": want_mask,
    }


def is_finished(out: Path, scene_id: str, signature: Mapping[str, Any]) -> bool:
    """True when ``out`` and its sidecar exist, belong to ``scene_id`` and match the requested settings."""
    sidecar = out.with_suffix(".json")
    if not (out.exists() and sidecar.exists()):
        return False
    try:
        meta = read_json(sidecar)
    except InputError:
        return False
    if meta.get("scene_id") != scene_id:
        return False
    if any(meta.get(k) != v for k, v in signature.items()):
        return False
    mask = meta.get("quality_mask")
    return not mask or (out.parent / mask).exists()


def scene_sidecar(
    scene: Mapping[str, Any],
    prov: Provider | None,
    bands: list[str],
    crs: CRS,
    transform: Affine,
    width: int,
    height: int,
    resolution: float,
    aoi_geom: BaseGeometry | None,
    offset: int,
    offset_reason: str,
    mask_href: str | None,
    mask_out: Path,
    stats: Mapping[str, Any],
    signature: Mapping[str, Any],
) -> dict[str, Any]:
    """The provenance record written next to the scene (STAC-like; never holds credentials or signed URLs)."""
    if stats["valid_fraction"] == 0:
        skip_reason: str | None = "no valid pixel (all nodata)"
    elif mask_href and stats.get("clear_fraction", 1.0) == 0:
        skip_reason = "no clear pixel (all cloud, shadow, snow, water or invalid in SCL)"
    else:
        skip_reason = None
    if mask_href:
        mask_note = "from SCL"
    elif scene.get("mask_asset"):
        mask_note = "not requested (fetch without quality mask)"
    else:
        mask_note = f"no SCL asset ({scene.get('product_level') or 'product level unknown'})"
    native = {b: S2_BANDS[b].resolution for b in bands}
    return {
        "type": "pixeldino_scene",
        "scene_id": scene.get("id"),
        "stac_id": scene.get("stac_id", scene.get("id")),
        "collection": scene.get("collection"),
        "provider": prov.name if prov else (scene.get("provider") or "local"),
        "tile": scene.get("tile"),
        "datetime": scene.get("datetime"),
        "cloud_cover": scene.get("cloud_cover"),
        "snow_cover": scene.get("snow_cover"),
        "processing_baseline": scene.get("processing_baseline"),
        "product_level": scene.get("product_level"),
        "bands": bands,
        "hrefs": {b: str(scene["assets"][b]) for b in bands},
        "mask_href": str(scene["mask_asset"]) if mask_href else None,
        "harmonized": offset != 0,
        "offset_applied": offset,
        "offset_reason": offset_reason,
        "crs": crs.to_string(),
        "transform": list(transform)[:6],
        "shape": [height, width],
        "resolution": resolution,
        "resampling": RESAMPLING.name,
        "resampling_by_band": {b: "none (native grid)" if native[b] == resolution else RESAMPLING.name for b in bands},
        "aoi_bbox": list(aoi_geom.bounds) if aoi_geom is not None else None,
        "nodata": 0,
        "quality_mask": mask_out.name if mask_href else None,
        "quality_mask_note": mask_note,
        "mask_requested": signature["mask_requested"],
        **stats,
        "skipped": skip_reason is not None,
        "skip_reason": skip_reason,
        "loader": loader_version(),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "pixeldino_version": __version__,
    }


def loader_version() -> str:
    """The library that read the bands, with its version, for the sidecar."""
    from importlib.metadata import version

    return f"odc-stac {version('odc-stac')}"
