"""Fetched scenes as sources of chips, shared by the labelled and the unlabelled chip writers.

Opening a scene checks what chipping relies on (it exists, has a CRS, carries the requested bands, its quality
mask lies on its grid); :class:`SceneReader` then reads chip windows of the scene and of its quality mask, and
:class:`DnSample` keeps the per-band pixel sample behind the DN percentiles of the store statistics.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import shapely
from affine import Affine
from rasterio.crs import CRS
from rasterio.io import DatasetReader
from rasterio.windows import Window
from shapely.geometry import box

from pixeldino.bands import band_indexes
from pixeldino.chipstore import NODATA
from pixeldino.errors import InputError
from pixeldino.quality import INVALID, Grid, find_quality_mask, is_skipped, open_quality_mask
from pixeldino.rasters import open_raster, read_raster
from pixeldino.terrain import missing_band_hint

log = logging.getLogger(__name__)

#: A chip is kept only if at least this share of its pixels has data (and, for train chips, a label).
MIN_VALID_FRACTION = 0.5
#: Pixels sampled per chip for the per-band DN percentiles in the stats.
_STAT_PIXELS_PER_CHIP = 1024
_PERCENTILES = (1, 2, 5, 25, 50, 75, 95, 98, 99)


@dataclass
class ChipScene:
    """A fetched scene: where its requested bands are, its grid, and its quality mask (0 = clear), if any."""

    path: Path
    band_indexes: list[int]
    crs: CRS
    transform: Affine
    height: int
    width: int
    mask_path: Path | None = None

    @property
    def bounds_geom(self) -> shapely.Geometry:
        """The scene's extent as a polygon in its CRS."""
        left, top = self.transform @ (0, 0)
        right, bottom = self.transform @ (self.width, self.height)
        return box(min(left, right), min(top, bottom), max(left, right), max(top, bottom))

    def contains(self, row: int, col: int, size: int) -> bool:
        """True when the ``size`` x ``size`` window at (``row``, ``col``) lies wholly inside the scene."""
        return row >= 0 and col >= 0 and row + size <= self.height and col + size <= self.width


def open_scene(path: str | os.PathLike[str], bands: list[str]) -> ChipScene:
    """Open a fetched scene for chipping: find its bands and check its quality mask.

    Args:
        path: the scene COG.
        bands: canonical band ids to read, in order.

    Raises:
        InputError: the scene is missing, unreadable, has no CRS or lacks a band; its mask is on another grid.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"scene {p} not found; run `pixeldino fetch` for it first")
    with open_raster(p, "scene", "fetch it again (pixeldino fetch)") as ds:
        indexes = band_indexes(
            ds.descriptions,
            bands,
            path=p,
            fix_hint=missing_band_hint(
                bands,
                "fetch the scene again with these bands (`pixeldino fetch` names each band B02, B03, ...) "
                "or change 'bands' in the config",
            ),
        )
        scene = ChipScene(p, indexes, ds.crs, ds.transform, ds.height, ds.width)
    scene.mask_path = find_quality_mask(p)
    if scene.mask_path is not None:
        with open_quality_mask(scene.mask_path, Grid(scene.crs, scene.transform, (scene.height, scene.width)), p):
            pass  # opening checks the grid; SceneReader reads the mask later
    return scene


def usable_scenes(paths: Sequence[str | os.PathLike[str]]) -> list[str | os.PathLike[str]]:
    """The scenes not marked ``skipped`` by the fetch (no valid or no clear pixel); warns about the others."""
    keep = []
    for p in paths:
        if is_skipped(p):
            log.warning("scene %s is marked skipped in its sidecar (no usable pixel); no chips from it", p)
        else:
            keep.append(p)
    return keep


class SceneReader:
    """Chip windows of one scene and of its quality mask; a context manager that keeps both files open."""

    def __init__(self, scene: ChipScene) -> None:
        """Open the scene and its quality mask (if it has one)."""
        self.scene = scene
        self._stack = contextlib.ExitStack()
        fix = "fetch the scene again (pixeldino fetch)"
        self._image: DatasetReader = self._stack.enter_context(open_raster(scene.path, "scene", fix))
        self._quality: DatasetReader | None = (
            self._stack.enter_context(open_raster(scene.mask_path, "the quality mask", fix))
            if scene.mask_path
            else None
        )

    def __enter__(self) -> SceneReader:
        """The reader itself."""
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Close the scene and its mask."""
        self.close()

    def close(self) -> None:
        """Close the scene and its mask."""
        self._stack.close()

    def image(self, row: int, col: int, size: int) -> np.ndarray:
        """The (C, S, S) chip at (``row``, ``col``); parts outside the scene are nodata."""
        window = Window(col, row, size, size)
        if self.scene.contains(row, col, size):
            return read_raster(self._image, self.scene.band_indexes, window=window)
        return read_raster(self._image, self.scene.band_indexes, window=window, boundless=True, fill_value=NODATA)

    def quality(self, row: int, col: int, size: int) -> np.ndarray:
        """The (S, S) quality-mask chip (0 = clear); all clear without a mask, INVALID outside the scene."""
        if self._quality is None:
            return np.zeros((size, size), dtype=np.uint8)
        window = Window(col, row, size, size)
        if self.scene.contains(row, col, size):
            return read_raster(self._quality, 1, window=window)
        return read_raster(self._quality, 1, window=window, boundless=True, fill_value=INVALID)


@dataclass
class SkipCounts:
    """Candidate chips left out, by reason: too little data, or too much flagged by the quality mask."""

    nodata: int = 0
    quality: int = 0


@dataclass
class DnSample:
    """Running per-band pixel sample of the written chips, for the DN percentiles of the store statistics."""

    samples: list[np.ndarray] = field(default_factory=list)

    def add(self, image: np.ndarray, valid: np.ndarray, rng: np.random.Generator) -> None:
        """Add up to :data:`_STAT_PIXELS_PER_CHIP` valid pixels of a (C, S, S) chip (drawn from ``rng``)."""
        flat = image.reshape(image.shape[0], -1)[:, valid.reshape(-1)]
        if flat.shape[1] > _STAT_PIXELS_PER_CHIP:
            flat = flat[:, rng.choice(flat.shape[1], _STAT_PIXELS_PER_CHIP, replace=False)]
        self.samples.append(flat)

    def summary(self, bands: list[str]) -> dict[str, Any]:
        """``{band: {"p1": ..., "p99": ..., "mean": ..., "std": ...}}``; empty when no pixel was sampled."""
        if not self.samples:
            return {}
        data = np.concatenate(self.samples, axis=1).astype(np.float64)
        if data.shape[1] == 0:
            return {}
        pct = np.percentile(data, _PERCENTILES, axis=1)
        return {
            band: {
                **{f"p{p}": float(pct[j, i]) for j, p in enumerate(_PERCENTILES)},
                "mean": float(data[i].mean()),
                "std": float(data[i].std()),
            }
            for i, band in enumerate(bands)
        }
