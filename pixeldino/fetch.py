"""Fetch one scene from its manifest entry into a single multi-band 10 m Cloud-Optimized GeoTIFF.

Band files are read where they live (local path or http(s) URL, which GDAL streams with ``/vsicurl``), warped onto
one 10 m grid in the scene's own CRS and stacked. The 20 m and 60 m bands are resampled **bilinearly**: it keeps
band-to-band values smooth at the 10 m scale the model sees, never invents values outside the neighbours' range
(unlike cubic), and does not produce the 2 x 2 blocks of nearest neighbour that a segmentation network can learn.
Bands already on the target grid are copied exactly (nearest on an aligned grid is the identity).

The work is done window by window into a tiled GeoTIFF that is then converted to a COG, so memory stays bounded
for full 110 km tiles; the COG and its JSON sidecar appear only when complete (:func:`pixeldino.io.atomic_output`).
"""

from __future__ import annotations

import datetime as dt
import math
import os
import tempfile
from collections.abc import Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_geom
from rasterio.windows import Window
from shapely.geometry import box, mapping, shape
from shapely.geometry.base import BaseGeometry

from pixeldino import __version__
from pixeldino.bands import canonical_bands
from pixeldino.errors import InputError
from pixeldino.io import TILED_GTIFF_PROFILE, gtiff_to_cog, write_json
from pixeldino.search import load_aoi

#: Resampling used when a band's native grid differs from the 10 m target grid (see module docs).
RESAMPLING = Resampling.bilinear

#: Rows processed per write; 1024 rows x 10980 columns x uint16 ~ 22 MB per band read.
_ROWS_PER_BLOCK = 1024


def _open(href: str, scene_id: str, band: str, stack: ExitStack) -> rasterio.DatasetReader:
    try:
        return stack.enter_context(rasterio.open(href))
    except RasterioError as exc:  # RasterioIOError and friends: missing, corrupt, not a raster, HTTP errors
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(
            f"cannot read band {band} of scene {scene_id} at {href} ({reason}); re-download it or re-run the search"
        ) from exc


def _target_grid(
    datasets: Mapping[str, rasterio.DatasetReader], crs: CRS, resolution: float, aoi: BaseGeometry | None, scene_id: str
) -> tuple[Affine, int, int]:
    """The output grid: the finest band's extent at ``resolution``, optionally cut to the AOI (snapped outward)."""
    finest = min(datasets.values(), key=lambda ds: abs(ds.transform.a))
    left, bottom, right, top = finest.bounds
    width = int(round((right - left) / resolution))
    height = int(round((top - bottom) / resolution))
    transform = Affine(resolution, 0.0, left, 0.0, -resolution, top)
    if aoi is None:
        return transform, width, height
    aoi_local = shape(transform_geom("EPSG:4326", crs, mapping(aoi)))
    ax0, ay0, ax1, ay1 = aoi_local.bounds
    col0 = max(0, math.floor((ax0 - left) / resolution))
    col1 = min(width, math.ceil((ax1 - left) / resolution))
    row0 = max(0, math.floor((top - ay1) / resolution))
    row1 = min(height, math.ceil((top - ay0) / resolution))
    if col1 <= col0 or row1 <= row0:
        raise InputError(
            f"the AOI {tuple(round(v, 4) for v in aoi.bounds)} does not overlap scene {scene_id}; "
            "check the AOI or drop the scene from the manifest"
        )
    return transform @ Affine.translation(col0, row0), col1 - col0, row1 - row0


def _needs_warp(ds: rasterio.DatasetReader, crs: CRS, transform: Affine) -> bool:
    """False when the band already sits on the target grid (same CRS, pixel size, whole-pixel offset)."""
    t = ds.transform
    if ds.crs != crs or not math.isclose(t.a, transform.a) or not math.isclose(t.e, transform.e) or t.b or t.d:
        return True
    dc = (transform.c - t.c) / t.a
    dr = (transform.f - t.f) / t.e
    return not (math.isclose(dc, round(dc), abs_tol=1e-6) and math.isclose(dr, round(dr), abs_tol=1e-6))


def fetch_scene(
    scene: Mapping[str, Any],
    bands: list[str],
    out_path: str | os.PathLike[str],
    *,
    aoi: str | os.PathLike[str] | BaseGeometry | None = None,
    resolution: float = 10.0,
) -> Path:
    """Read a scene's band files and write them as one multi-band uint16 COG on a common grid.

    Args:
        scene: one entry of a scene manifest (``id``, ``assets`` {band: href}, ``crs``, ``tile``, ``datetime``...).
        bands: bands to stack, in output order (canonical or provider names).
        out_path: the COG to write; a JSON sidecar with provenance is written at ``out_path.with_suffix('.json')``.
        aoi: optional area (vector file, or geometry in EPSG:4326): the output is cut to its bounding box,
            snapped outward to the scene's pixel grid.
        resolution: output pixel size in the scene CRS units (metres).

    Returns:
        The path of the COG.

    Raises:
        InputError: a band asset is missing from the scene, a file cannot be read, a band's CRS differs from the
            manifest's ``crs``, or the AOI misses the scene.
    """
    band_list = canonical_bands(list(bands))
    scene_id = str(scene.get("id", "?"))
    assets: Mapping[str, str] = scene.get("assets") or {}
    missing = [b for b in band_list if b not in assets]
    if missing:
        raise InputError(
            f"scene {scene_id} has no asset for band(s) {', '.join(missing)} "
            f"(it has {', '.join(sorted(assets)) or 'none'});"
            " re-run the search with these bands or drop them from 'bands'"
        )
    out = Path(out_path)
    aoi_geom = load_aoi(aoi)
    bbox = scene.get("bbox")
    if aoi_geom is not None and bbox and bbox[0] <= bbox[2]:
        # keep only the AOI parts near this scene: a multi-site AOI may hold parts on the other side of the globe,
        # which do not project sensibly into this scene's UTM zone
        aoi_geom = aoi_geom.intersection(box(*bbox).buffer(0.01))
        if aoi_geom.is_empty:
            raise InputError(
                f"the AOI does not overlap scene {scene_id} (bbox {bbox}); check the AOI or drop the scene"
            )
    expected_crs = CRS.from_user_input(scene["crs"]) if scene.get("crs") else None

    with ExitStack() as stack:
        datasets = {b: _open(str(assets[b]), scene_id, b, stack) for b in band_list}
        for band, ds in datasets.items():
            if ds.crs is None:
                raise InputError(f"band {band} of scene {scene_id} at {assets[band]} has no CRS; the file is damaged")
            if ds.count < 1:
                raise InputError(f"band {band} of scene {scene_id} at {assets[band]} has no raster band")
            if expected_crs is not None and ds.crs != expected_crs:
                raise InputError(
                    f"band {band} of scene {scene_id} is in {ds.crs.to_string()} but the manifest says {scene['crs']}; "
                    "re-run the search (the manifest is stale) or fix the catalog"
                )
        crs = expected_crs or next(iter(datasets.values())).crs
        transform, width, height = _target_grid(datasets, crs, resolution, aoi_geom, scene_id)

        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.stem}.") as tmpdir:
            # The intermediate tiled GeoTIFF is deleted on exit: only the COG copy below becomes an output.
            tiled = Path(tmpdir) / "stack.tif"
            profile = {
                **TILED_GTIFF_PROFILE, "width": width, "height": height, "count": len(band_list),
                "dtype": "uint16", "crs": crs, "transform": transform, "nodata": 0,
            }
            if width < 512 or height < 512:
                profile.update(blockxsize=256, blockysize=256)
            with rasterio.open(tiled, "w", **profile) as dst:
                for i, band in enumerate(band_list, start=1):
                    ds = datasets[band]
                    warp = _needs_warp(ds, crs, transform)
                    source = stack.enter_context(
                        WarpedVRT(
                            ds, crs=crs, transform=transform, width=width, height=height,
                            resampling=RESAMPLING if warp else Resampling.nearest,
                            src_nodata=ds.nodata if ds.nodata is not None else 0, nodata=0,
                        )
                    )
                    for row in range(0, height, _ROWS_PER_BLOCK):
                        window = Window(0, row, width, min(_ROWS_PER_BLOCK, height - row))
                        try:
                            block = source.read(1, window=window)
                        except RasterioError as exc:
                            raise InputError(
                                f"cannot read band {band} of scene {scene_id} at {assets[band]} "
                                f"({str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}); "
                                "the file is corrupt or truncated: re-download it"
                            ) from exc
                        dst.write(np.clip(block, 0, 65535).astype(np.uint16), i, window=window)
                    dst.set_band_description(i, band)
                dst.update_tags(
                    scene_id=scene_id,
                    tile=str(scene.get("tile") or ""),
                    datetime=str(scene.get("datetime") or ""),
                    processing_baseline=str(scene.get("processing_baseline") or ""),
                    bands=",".join(band_list),
                    resampling=RESAMPLING.name,
                    pixeldino_version=__version__,
                )
            gtiff_to_cog(tiled, out, blocksize=256 if (width < 512 or height < 512) else 512)

    sidecar = {
        "type": "pixeldino_scene",
        "scene_id": scene_id,
        "stac_id": scene.get("stac_id", scene_id),
        "tile": scene.get("tile"),
        "datetime": scene.get("datetime"),
        "cloud_cover": scene.get("cloud_cover"),
        "snow_cover": scene.get("snow_cover"),
        "processing_baseline": scene.get("processing_baseline"),
        "bands": band_list,
        "hrefs": {b: str(assets[b]) for b in band_list},
        "crs": crs.to_string(),
        "transform": list(transform)[:6],
        "shape": [height, width],
        "resolution": resolution,
        "resampling": RESAMPLING.name,
        "aoi_bbox": list(aoi_geom.bounds) if aoi_geom is not None else None,
        "nodata": 0,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "pixeldino_version": __version__,
    }
    try:
        write_json(out.with_suffix(".json"), sidecar)
    except Exception:
        # a COG without its provenance would look complete to the next stage; remove it
        out.unlink(missing_ok=True)
        raise
    return out
