"""Loading a scene's band files onto one output grid with odc-stac, and writing them block by block.

Reading. The band files are read where they live (local path, http(s) URL streamed by GDAL ``/vsicurl`` with range
requests, or ``s3://``) with **odc-stac**: the manifest entry becomes a STAC item whose assets carry the projection
of each file (read from its header, :func:`read_header`), and :func:`odc.stac.load` builds a dask array on an
explicit output grid (:func:`target_grid`): the finest band's extent in the scene's own UTM CRS, optionally cut to
the AOI (snapped outward to the pixel grid). :func:`write_blocks` computes and writes it in blocks of rows, so
memory stays bounded for full 110 km tiles. Every read is retried (:mod:`pixeldino.retry`), and every error GDAL
reports during a read fails it, even one GDAL only logs (:func:`pixeldino.rasters.gdal_errors`): a band that does
not decode never becomes zeros in the output.

Resampling. Bands already on the output grid are copied exactly. The 20 m and 60 m bands are resampled
**bilinearly**: it keeps band-to-band values smooth at the 10 m scale the model sees, never invents values outside
the neighbours' range (unlike cubic), and does not produce the 2 x 2 blocks of nearest neighbour that a
segmentation network can learn. The categorical SCL layer is resampled with nearest neighbour.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import re
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
from rasterio.warp import transform_geom
from shapely.geometry import mapping, shape
from shapely.geometry.base import BaseGeometry

from pixeldino.errors import InputError, PixeldinoError
from pixeldino.harmonize import harmonize_dn
from pixeldino.quality import CLASS_NAMES, INVALID, scl_to_mask
from pixeldino.rasters import gdal_errors, gdal_message, read_failure
from pixeldino.retry import retry_read, wait_until_served

#: Resampling used when a band's native grid differs from the 10 m target grid (see module docs).
RESAMPLING = Resampling.bilinear
#: Edge of the dask chunks odc-stac loads, and rows written per block.
CHUNK = 2048
#: The band name of the scene-classification layer among the loaded bands.
SCL_BAND = "SCL"


def read_header(href: str, scene_id: str, band: str) -> dict[str, Any]:
    """CRS, grid and nodata of one band file (a header read: one or two range requests for a remote COG)."""

    def read() -> dict[str, Any]:
        with rasterio.open(href) as ds:
            return {
                "crs": ds.crs,
                "transform": ds.transform,
                "height": ds.height,
                "width": ds.width,
                "count": ds.count,
                "nodata": ds.nodata,
                "bounds": ds.bounds,
                "dtype": ds.dtypes[0],
            }

    what = f"opening band {band} of scene {scene_id}"
    wait_until_served(href, what)  # a throttling provider's first answer, with its Retry-After, is read here
    try:
        return retry_read(read, what, href=href)
    except RasterioError as exc:  # RasterioIOError and friends: missing, corrupt, not a raster, HTTP errors
        raise InputError(
            f"cannot read band {band} of scene {scene_id} at {href} ({gdal_message(exc)}); "
            "re-download it or re-run the search"
        ) from exc


def target_grid(
    headers: Mapping[str, Mapping[str, Any]], crs: CRS, resolution: float, aoi: BaseGeometry | None, scene_id: str
) -> tuple[Affine, int, int]:
    """The output grid: the finest band's extent at ``resolution``, optionally cut to the AOI (snapped outward)."""
    finest = min(headers.values(), key=lambda h: abs(h["transform"].a))
    left, bottom, right, top = finest["bounds"]
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


def _stac_item(
    scene_id: str,
    when: str | None,
    hrefs: Mapping[str, str],
    headers: Mapping[str, Mapping[str, Any]],
    footprint: dict[str, Any],
) -> Any:
    """A STAC item for odc-stac: one asset per band, with the projection read from each file's header."""
    import pystac

    stamp = dt.datetime.fromisoformat(str(when).replace("Z", "+00:00")) if when else dt.datetime(1970, 1, 1)
    stamp = stamp if stamp.tzinfo else stamp.replace(tzinfo=dt.timezone.utc)
    item = pystac.Item(scene_id, footprint, list(shape(footprint).bounds), stamp, {})
    for band, href in hrefs.items():
        h = headers[band]
        item.add_asset(
            band,
            pystac.Asset(
                href,
                media_type=pystac.MediaType.GEOTIFF,
                roles=["data"],
                extra_fields={
                    "proj:code": h["crs"].to_string(),
                    "proj:shape": [h["height"], h["width"]],
                    "proj:transform": list(h["transform"])[:6],
                    "raster:bands": [
                        {"nodata": h["nodata"] if h["nodata"] is not None else 0, "data_type": h["dtype"]}
                    ],
                },
            ),
        )
    return item


def absolute_href(href: str) -> str:
    """odc-stac needs absolute hrefs: make local paths absolute, leave URLs alone."""
    return href if re.match(r"^[a-z][a-z0-9+.-]*://", href) or href.startswith("/vsi") else str(Path(href).resolve())


def load_scene(
    scene: Mapping[str, Any],
    hrefs: Mapping[str, str],
    headers: Mapping[str, Mapping[str, Any]],
    crs: CRS,
    transform: Affine,
    width: int,
    height: int,
    gdal_options: Mapping[str, str],
    threads: int | None,
) -> Any:
    """The lazy (dask-backed) odc-stac dataset of all bands (and SCL) on the output grid."""
    import odc.stac
    from odc.geo.geobox import GeoBox

    geobox = GeoBox((height, width), transform, crs.to_string())
    footprint = geobox.footprint("EPSG:4326", buffer=2 * abs(transform.a), wrapdateline=True)
    item = _stac_item(str(scene.get("id", "scene")), scene.get("datetime"), hrefs, headers, footprint.json)
    # odc-stac's stub lets **params collide with its named options; the GDAL options never use those names
    odc.stac.configure_rio(cloud_defaults=True, **gdal_options)  # type: ignore[arg-type]
    resampling = {b: ("nearest" if b == SCL_BAND else RESAMPLING.name) for b in hrefs}
    loaded = odc.stac.load(
        [item],
        bands=list(hrefs),
        geobox=geobox,
        resampling=resampling,
        dtype="uint16",
        nodata=0,
        chunks={"x": CHUNK, "y": CHUNK},
        groupby="id",
        fail_on_error=True,
    )
    loaded.attrs["threads"] = threads or os.cpu_count() or 1
    return loaded


def write_blocks(
    data: Any,
    bands: list[str],
    hrefs: Mapping[str, str],
    scene_id: str,
    tmpdir: Path,
    profile: dict[str, Any],
    offset: int,
    with_mask: bool,
) -> dict[str, Any]:
    """Compute the dataset block by block into ``stack.tif`` (and ``mask.tif``); returns pixel statistics."""
    import dask

    height, width = profile["height"], profile["width"]
    n_valid = n_clear = 0
    mask_counts = np.zeros(256, dtype=np.int64)
    stack_profile = {**profile, "count": len(bands), "dtype": "uint16", "nodata": 0}
    mask_profile = {**profile, "count": 1, "dtype": "uint8", "nodata": None, "predictor": 1}
    with ExitStack() as files, dask.config.set(scheduler="threads", num_workers=data.attrs["threads"]):
        dst = files.enter_context(rasterio.open(tmpdir / "stack.tif", "w", **stack_profile))
        mdst = files.enter_context(rasterio.open(tmpdir / "mask.tif", "w", **mask_profile)) if with_mask else None
        for row in range(0, height, CHUNK):
            rows = slice(row, min(row + CHUNK, height))
            window = rasterio.windows.Window(0, row, width, rows.stop - row)
            valid = np.zeros((rows.stop - row, width), dtype=bool)
            for i, band in enumerate(bands, start=1):
                block = _compute(data, band, rows, hrefs[band], scene_id)
                valid |= block != 0
                dst.write(harmonize_dn(block, offset), i, window=window)
            n_valid += int(valid.sum())
            if mdst is not None:
                mask = scl_to_mask(_compute(data, SCL_BAND, rows, hrefs[SCL_BAND], scene_id))
                mask[~valid] = INVALID  # no reflectance, no use, whatever SCL says
                mdst.write(mask, 1, window=window)
                mask_counts += np.bincount(mask.ravel(), minlength=256)
                n_clear += int((mask == 0).sum())
    total = height * width
    stats: dict[str, Any] = {"valid_fraction": round(n_valid / total, 6) if total else 0.0}
    if with_mask:
        stats["clear_fraction"] = round(n_clear / total, 6) if total else 0.0
        stats["quality_fractions"] = {
            name: round(float(mask_counts[v]) / max(total, 1), 6) for v, name in CLASS_NAMES.items()
        }
    return stats


class _GdalReported(Exception):
    """GDAL reported an error during a read that seemed to succeed (see :func:`pixeldino.rasters.gdal_errors`)."""


def _compute(data: Any, band: str, rows: slice, href: str, scene_id: str) -> np.ndarray:
    """Read one band's rows (dask compute) with retries; I/O failures become one-line InputErrors.

    An error GDAL reports in any thread during the computation (odc-stac reads in dask's threads; only this band's
    reads run meanwhile) fails the attempt, like a raised one: such a read may have returned zeros.
    """
    what = f"reading band {band} of scene {scene_id}"

    def attempt() -> np.ndarray:
        with gdal_errors(all_threads=True) as errors:
            block = np.asarray(data[band].isel(time=0, y=rows).values)
        if errors:
            raise _GdalReported(errors[0])  # retried like a raised error when it looks transient (HTTP)
        return block

    try:
        return retry_read(attempt, what, href=href)
    except PixeldinoError:
        raise
    except Exception as exc:  # rasterio, GDAL and odc-stac wrap read errors in several types
        raise read_failure(href, f"band {band} of scene {scene_id}", "re-download it", gdal_message(exc)) from exc
