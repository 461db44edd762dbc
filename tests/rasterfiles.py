"""Rasters that tests write: any array as a GeoTIFF, probability rasters as ``pixeldino predict`` writes them, and
a labelled and an unlabelled synthetic scene (:mod:`pixeldino.synthetic`) with the labelled one's outlines."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine

from pixeldino import synthetic
from pixeldino.io import TILED_GTIFF_PROFILE
from pixeldino.probability import NODATA_U8, PROBABILITY_SCALE

#: The CRS of most test grids: UTM 8N, where the demo scenes (Peel Plateau) lie.
UTM_8N = "EPSG:32608"


def write_geotiff(
    path: Path,
    data: np.ndarray,
    *,
    transform: Affine | None,
    crs: str | None = UTM_8N,
    nodata: float | None = None,
    descriptions: Sequence[str] | None = None,
    scales: Sequence[float] | None = None,
    tags: Mapping[str, str] | None = None,
    **profile: Any,
) -> Path:
    """Write ``data`` ((H, W): one band, or (C, H, W)) as a GeoTIFF of its own dtype.

    Args:
        path: the file to write.
        data: the pixel values.
        transform: the grid's geotransform (None: none).
        crs: the grid's CRS (None: no CRS).
        nodata: the nodata value (None: none).
        descriptions: band descriptions (how pixeldino names bands: ``B02``, ``slope``...).
        scales: band scales (GDAL metadata).
        tags: dataset tags.
        **profile: further creation options (``tiled``, ``compress``...; ``driver`` overrides GTiff).

    Returns:
        ``path``.
    """
    bands = data if data.ndim == 3 else data[None]
    options = {"driver": "GTiff", **profile}
    with rasterio.open(
        path, "w", width=bands.shape[2], height=bands.shape[1], count=bands.shape[0], dtype=bands.dtype.name,
        crs=crs, transform=transform, nodata=nodata, **options,
    ) as dst:  # fmt: skip
        dst.write(bands)
        if descriptions is not None:
            dst.descriptions = tuple(descriptions)
        if scales is not None:
            dst.scales = tuple(scales)
        if tags:
            dst.update_tags(**tags)
    return path


def write_probability_raster(
    path: Path,
    dn: np.ndarray,
    *,
    transform: Affine,
    crs: str = UTM_8N,
    tags: Mapping[str, str] | None = None,
    **profile: Any,
) -> Path:
    """A probability raster as ``pixeldino predict`` writes it: tiled uint8 ``dn`` = p x 254, nodata 255, scale
    1/254, with ``tags`` (``THRESHOLD``, ``MODEL``, ``SCENE_ID``...); ``profile`` overrides creation options."""
    return write_geotiff(
        path,
        dn.astype(np.uint8),
        transform=transform,
        crs=crs,
        nodata=NODATA_U8,
        scales=(1 / PROBABILITY_SCALE,),
        tags=tags,
        **{**TILED_GTIFF_PROFILE, **profile},
    )


def write_synthetic_pair(folder: Path, size: int) -> tuple[synthetic.SyntheticScene, dict[str, Path]]:
    """A labelled Horton scene (6 slumps) and an unlabelled Herschel scene of ``size`` x ``size`` px in ``folder``.

    Returns:
        The labelled scene, and the paths ``scene`` (its GeoTIFF), ``labels`` (its outlines, layer ``rts``) and
        ``unlabelled`` (the Herschel scene's GeoTIFF).
    """
    labelled = synthetic.generate_scene("Horton", 0, size, n_slumps=6)
    unlabelled = synthetic.generate_scene("Herschel", 1, size)
    return labelled, {
        "scene": synthetic.write_scene(labelled, folder / "horton.tif"),
        "labels": synthetic.write_labels(labelled, folder / "horton_rts.gpkg"),
        "unlabelled": synthetic.write_scene(unlabelled, folder / "herschel.tif"),
    }
