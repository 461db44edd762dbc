"""Per-tile seasonal composites: per pixel, the median of the clear observations of a tile's fetched scenes."""

from __future__ import annotations

import datetime as dt
import os
import warnings
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Literal

import numpy as np
import rasterio

from pixeldino import __version__
from pixeldino.errors import InputError
from pixeldino.io import TILED_GTIFF_PROFILE, gtiff_to_cog, temporary, write_json
from pixeldino.quality import find_quality_mask, is_skipped
from pixeldino.rasters import open_raster, read_raster

#: ``fetch.composite``: ``none`` (one raster per scene only) or the compositing method.
CompositeMethod = Literal["none", "median"]


def composite_scenes(
    scenes: Sequence[str | os.PathLike[str]],
    out_path: str | os.PathLike[str],
    *,
    method: str = "median",
    rows_per_block: int = 512,
) -> Path:
    """A seasonal composite of fetched scenes of one tile: per pixel, the median over the clear observations.

    A pixel counts as an observation where its bands are not nodata and, for scenes with a quality mask, the mask
    is clear (0). Scenes marked ``skipped`` are left out. The result is a COG with the same bands (uint16, nodata 0
    where no scene saw the pixel clear) and a JSON sidecar listing the inputs.

    Args:
        scenes: scene COGs written by :func:`pixeldino.fetch.fetch_scene`, all on the same grid (same tile, same
            AOI cut).
        out_path: the composite COG to write.
        method: ``median`` (the only method; the median of an even count is the mean of the middle two).
        rows_per_block: rows processed at a time (memory: scenes x bands x rows x width x 4 bytes).

    Raises:
        InputError: no usable scene, grids or bands differ, or a file cannot be read.
    """
    if method != "median":
        raise InputError(f"composite method {method!r} is not supported; use 'median'")
    usable = [Path(p) for p in scenes if not is_skipped(p)]
    if not usable:
        raise InputError(
            f"no usable scene among {[Path(p).name for p in scenes]} for a composite; "
            "all are missing or marked skipped: relax the search limits"
        )
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        fix = "fetch it again (pixeldino fetch)"
        srcs = [stack.enter_context(open_raster(p, "scene", fix)) for p in usable]
        masks = [
            stack.enter_context(open_raster(m, "the quality mask", fix)) if (m := find_quality_mask(p)) else None
            for p in usable
        ]
        ref = srcs[0]
        for p, src in zip(usable[1:], srcs[1:]):
            if (src.crs, src.transform, src.shape, src.descriptions) != (
                ref.crs,
                ref.transform,
                ref.shape,
                ref.descriptions,
            ):
                raise InputError(
                    f"scene {p} is not on the grid or band list of {usable[0]}; a composite needs scenes of one "
                    "tile fetched with the same bands and AOI"
                )
        tmpdir = stack.enter_context(temporary(out, directory=True))
        profile = {
            **TILED_GTIFF_PROFILE,
            "width": ref.width,
            "height": ref.height,
            "count": ref.count,
            "dtype": "uint16",
            "crs": ref.crs,
            "transform": ref.transform,
            "nodata": 0,
        }
        n_obs = 0
        with rasterio.open(tmpdir / "composite.tif", "w", **profile) as dst:
            for row in range(0, ref.height, rows_per_block):
                window = rasterio.windows.Window(0, row, ref.width, min(rows_per_block, ref.height - row))
                stack_ = np.stack([read_raster(src, window=window) for src in srcs]).astype(np.float32)  # (N,C,r,w)
                ok = (stack_ != 0).any(axis=1)
                for k, m in enumerate(masks):
                    if m is not None:
                        ok[k] &= read_raster(m, 1, window=window) == 0
                n_obs += int(ok.sum())
                stack_[~np.broadcast_to(ok[:, None], stack_.shape)] = np.nan
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pixels: nobody saw them clear
                    med = np.nanmedian(stack_, axis=0)
                dst.write(np.nan_to_num(np.round(med), nan=0).astype(np.uint16), window=window)
            for i, desc in enumerate(ref.descriptions, start=1):
                dst.set_band_description(i, desc)
            dst.update_tags(composite=method, scenes=",".join(p.stem for p in usable))
        gtiff_to_cog(tmpdir / "composite.tif", out, blocksize=256 if min(ref.width, ref.height) < 512 else 512)
    write_json(
        out.with_suffix(".json"),
        {
            "type": "pixeldino_composite",
            "method": method,
            "scenes": [p.name for p in usable],
            "left_out": [Path(p).name for p in scenes if Path(p) not in usable],
            "bands": list(ref.descriptions),
            "mean_clear_observations": round(n_obs / (ref.width * ref.height), 3),
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "pixeldino_version": __version__,
        },
    )
    return out
