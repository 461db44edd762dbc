"""The JSON sidecar of a fetched scene: its provenance, and the completion record that lets a rerun trust it.

The sidecar ``<scene>.json`` is written last, after the COG and its quality mask. It records where the bands came
from, how they were resampled and harmonised, the grid, the pixel statistics and whether the scene is ``skipped``
(no valid or no clear pixel); it never holds credentials or signed URLs.

Completion record. Its ``completed`` field says what the scene was made from (the request, :func:`request_signature`:
bands, AOI cut, resolution, offset, mask, and the asset hrefs of the manifest) and what was written (the SHA-256 and
size of the COG and of its mask). A rerun skips a scene only when that record matches the request *and* the files
on disk still have those checksums (:func:`is_finished`): a scene left by an earlier faulty run, or truncated or
modified afterwards, is fetched again. A sidecar without the record (written by pixeldino before it existed) does
not count as finished either.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
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

log = logging.getLogger(__name__)
#: The version of the completion record; a record of another version does not count as finished.
COMPLETION_VERSION = 1
_HASH_BLOCK = 1 << 20


def request_signature(
    bands: list[str],
    aoi_bbox: list[float] | None,
    resolution: float,
    offset: int,
    want_mask: bool,
    sources: Mapping[str, str] | None = None,
    aux: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """What a finished output must have been fetched with to be reused (compared with its completion record).

    Args:
        bands: the bands, in output order.
        aoi_bbox: the AOI cut (EPSG:4326 bounds), None for none.
        resolution: the pixel size.
        offset: the harmonisation offset applied.
        want_mask: whether a quality mask was requested.
        sources: the asset hrefs read, by band (and ``SCL`` for the mask), as the manifest gives them (unsigned).
        aux: the auxiliary layers' settings (:func:`pixeldino.auxlayers.aux_request`); None (no layers) leaves the
            key out, so scenes fetched without layers keep their records.
    """
    return {
        "bands": bands,
        "aoi_bbox": aoi_bbox,
        "resolution": resolution,
        "offset_applied": offset,
        "mask_requested": want_mask,
        "sources": dict(sources or {}),
        **({"aux": dict(aux)} if aux else {}),
    }


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_HASH_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def completion_record(signature: Mapping[str, Any], files: list[Path]) -> dict[str, Any]:
    """The ``completed`` field of a sidecar: the request and the checksum and size of each file written."""
    return {
        "version": COMPLETION_VERSION,
        "request": dict(signature),
        "files": {p.name: {"sha256": file_sha256(p), "bytes": p.stat().st_size} for p in files},
    }


def is_finished(out: Path, scene_id: str, signature: Mapping[str, Any]) -> bool:
    """True when ``out`` was completed for ``scene_id`` with this request and its files are unchanged since.

    Checks the sidecar's completion record (module docs): the same request and sources, and every file it lists
    (the COG and, when written, the mask) present with the recorded size and SHA-256. Anything else (no sidecar,
    an unreadable one, one without the record, a changed or missing file) means: fetch again.
    """
    sidecar = out.with_suffix(".json")
    if not (out.exists() and sidecar.exists()):
        return False
    try:
        meta = read_json(sidecar)
    except InputError:
        return False
    record = meta.get("completed") if isinstance(meta, dict) else None
    if meta.get("scene_id") != scene_id or not isinstance(record, dict):
        return False
    if record.get("version") != COMPLETION_VERSION or record.get("request") != dict(signature):
        return False
    files = record.get("files")
    if not isinstance(files, dict) or out.name not in files:
        return False
    mask = meta.get("quality_mask")
    if mask and mask not in files:
        return False
    for name, expected in files.items():
        path = out.parent / name
        if not isinstance(expected, dict) or not path.is_file() or path.stat().st_size != expected.get("bytes"):
            log.info("%s: %s is missing or changed since it was written; fetching again", out, name)
            return False
        if file_sha256(path) != expected.get("sha256"):
            log.info("%s: %s was modified since it was written (checksum differs); fetching again", out, name)
            return False
    return True


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
    written: list[Path],
) -> dict[str, Any]:
    """The provenance record written next to the scene (STAC-like; never holds credentials or signed URLs).

    ``written`` are the files of the scene (the COG and, when written, its mask), complete and in place: their
    checksums go into the completion record (module docs).
    """
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
        "completed": completion_record(signature, written),
    }


def loader_version() -> str:
    """The library that read the bands, with its version, for the sidecar."""
    from importlib.metadata import version

    return f"odc-stac {version('odc-stac')}"
