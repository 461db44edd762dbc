"""Cut fetched scenes into training chips and store them in one zarr v3 group (one chunk per chip).

Layout of the store (``chips.zarr``)::

    labelled/image   (N, C, S, S) uint16   DN as fetched (nodata 0)
    labelled/mask    (N, S, S)    uint8    1 = RTS, 0 = background, 255 = ignore (outside footprint, nodata, padding)
    labelled/split   (N,)         uint8    0 = train, 1 = val
    unlabelled/image (M, C, S, S) uint16
    attrs: pixeldino_chips, bands, chip_size, ignore_value, nodata, seed, scenes, index, stats

Sampling rules, chosen so validation numbers are honest:

* the hold-out area (e.g. a strip of the labelled site) is tiled regularly into ``val`` chips, and inside them
  every pixel outside the hold-out is set to ignore — a val metric counts hold-out pixels only;
* ``train`` chips are random windows that contain no hold-out pixel (pixel-centre rasterisation of the hold-out,
  the same rule that defines the val pixels, so train and val pixel sets are disjoint);
* train windows lie mostly (>= half of their pixels) inside the label footprint, and about ``positive_fraction``
  of them contain RTS, because slumps cover well under 1 % of the land and uniform sampling would starve the
  RTS class;
* unlabelled chips are random windows from the unlabelled scenes, skipping windows that are mostly nodata;
* when a scene has a quality mask (``<scene>_mask.tif`` from the SCL, see :mod:`pixeldino.quality`), pixels it
  flags (invalid, cloud, shadow, snow, water) are set to ignore in labelled chips, and unlabelled windows count
  only clear pixels as valid, so mostly-bad windows are skipped; scenes whose sidecar says ``skipped`` (no valid
  or no clear pixel) are left out with a warning.

Everything is drawn from one seeded :class:`numpy.random.Generator`: the same inputs and seed give the same store.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.errors
import shapely
import zarr
from affine import Affine
from rasterio.crs import CRS
from rasterio.warp import transform_bounds
from rasterio.windows import Window
from shapely.geometry import box

from pixeldino.bands import canonical_band, canonical_bands
from pixeldino.errors import ConfigError, InputError
from pixeldino.io import atomic_output, write_json
from pixeldino.labels import IGNORE, burn, read_labels, rasterize_labels
from pixeldino.quality import INVALID, find_quality_mask, is_skipped

log = logging.getLogger(__name__)

STORE_VERSION = 1
SPLITS = {"train": 0, "val": 1}
NODATA = 0

#: A chip is kept only if at least this share of its pixels has data (and, for train chips, a label).
MIN_VALID_FRACTION = 0.5
#: Pixels sampled per chip for the per-band DN percentiles in the stats.
_STAT_PIXELS_PER_CHIP = 1024
#: Cap on candidate windows per scene; above it, candidates are taken on a coarser stride.
_MAX_CANDIDATES = 2_000_000
_PERCENTILES = (1, 2, 5, 25, 50, 75, 95, 98, 99)


@dataclass
class _Scene:
    """A fetched scene: where its requested bands are, and its grid."""

    path: Path
    band_indexes: list[int]
    crs: CRS
    transform: Affine
    height: int
    width: int
    mask_path: Path | None = None  # quality mask on the same grid (0 = clear), if the scene has one

    @property
    def bounds_geom(self) -> shapely.Geometry:
        left, top = self.transform @ (0, 0)
        right, bottom = self.transform @ (self.width, self.height)
        return box(min(left, right), min(top, bottom), max(left, right), max(top, bottom))


@dataclass
class _LabelWindow:
    """The label raster of one labelled scene around its footprint (window in scene pixel coordinates)."""

    scene: int
    row_off: int
    col_off: int
    labels: np.ndarray  # uint8, IGNORE outside the footprint and outside the scene
    holdout: np.ndarray  # bool, hold-out pixels


@dataclass
class _Stats:
    """Running per-band pixel sample for the DN percentiles."""

    samples: list[np.ndarray] = field(default_factory=list)

    def add(self, image: np.ndarray, valid: np.ndarray, rng: np.random.Generator) -> None:
        flat = image.reshape(image.shape[0], -1)[:, valid.reshape(-1)]
        if flat.shape[1] > _STAT_PIXELS_PER_CHIP:
            flat = flat[:, rng.choice(flat.shape[1], _STAT_PIXELS_PER_CHIP, replace=False)]
        self.samples.append(flat)

    def summary(self, bands: list[str]) -> dict[str, Any]:
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


def scene_band_indexes(path: Path, descriptions: Sequence[str | None], bands: list[str]) -> list[int]:
    """1-based band indexes of ``bands`` in a fetched scene, from its band descriptions.

    Raises:
        InputError: the scene has no band descriptions, or lacks one of the requested bands.
    """
    names: dict[str, int] = {}
    for i, desc in enumerate(descriptions, start=1):
        if not desc:
            continue
        try:
            names.setdefault(canonical_band(desc), i)
        except ConfigError:
            continue
    if not names:
        raise InputError(
            f"scene {path} has no Sentinel-2 band descriptions; create it with `pixeldino fetch` "
            "(which names each band B02, B03, ...)"
        )
    missing = [b for b in bands if b not in names]
    if missing:
        raise InputError(
            f"scene {path} lacks band(s) {', '.join(missing)} (it has {', '.join(names)}); "
            "fetch it again with these bands or change 'bands' in the config"
        )
    return [names[b] for b in bands]


def _open_scene(path: str | os.PathLike[str], bands: list[str]) -> _Scene:
    p = Path(path)
    if not p.exists():
        raise InputError(f"scene {p} not found; run `pixeldino fetch` for it first")
    try:
        with rasterio.open(p) as ds:
            if ds.crs is None:
                raise InputError(f"scene {p} has no CRS; re-create it with `pixeldino fetch`")
            scene = _Scene(p, scene_band_indexes(p, ds.descriptions, bands), ds.crs, ds.transform, ds.height,
                           ds.width)
    except rasterio.errors.RasterioError as exc:
        raise InputError(f"cannot read scene {p} ({exc}); the file is corrupt: fetch it again") from exc
    scene.mask_path = _check_quality_mask(scene)
    return scene


def _check_quality_mask(scene: _Scene) -> Path | None:
    """The scene's quality mask, checked to lie on the scene's grid; None when the scene has none."""
    path = find_quality_mask(scene.path)
    if path is None:
        return None
    try:
        with rasterio.open(path) as ds:
            same = ds.crs == scene.crs and ds.transform == scene.transform and ds.shape == (scene.height, scene.width)
    except rasterio.errors.RasterioError as exc:
        raise InputError(f"cannot read quality mask {path} ({exc}); the file is corrupt: fetch the scene again") from exc
    if not same:
        raise InputError(
            f"quality mask {path} is not on the grid of scene {scene.path}; fetch the scene again "
            "(scene and mask must come from the same fetch)"
        )
    return path


def _usable(paths: Sequence[str | os.PathLike[str]]) -> list[str | os.PathLike[str]]:
    """The scenes not marked ``skipped`` by the fetch (no valid or no clear pixel); warns about the others."""
    keep = []
    for p in paths:
        if is_skipped(p):
            log.warning("scene %s is marked skipped in its sidecar (no usable pixel); no chips from it", p)
        else:
            keep.append(p)
    return keep


def _read_quality(ds: rasterio.DatasetReader | None, scene: _Scene, row: int, col: int, size: int) -> np.ndarray:
    """The (S, S) quality-mask chip (0 = clear); all clear when the scene has no mask, INVALID outside the scene."""
    if ds is None:
        return np.zeros((size, size), dtype=np.uint8)
    window = Window(col, row, size, size)
    inside = row >= 0 and col >= 0 and row + size <= scene.height and col + size <= scene.width
    if inside:
        return ds.read(1, window=window)
    return ds.read(1, window=window, boundless=True, fill_value=INVALID)


def _read_chip(ds: rasterio.DatasetReader, scene: _Scene, row: int, col: int, size: int) -> np.ndarray:
    """Read a (C, S, S) chip; parts outside the scene are filled with nodata."""
    window = Window(col, row, size, size)
    inside = row >= 0 and col >= 0 and row + size <= scene.height and col + size <= scene.width
    if inside:
        return ds.read(scene.band_indexes, window=window)
    return ds.read(scene.band_indexes, window=window, boundless=True, fill_value=NODATA)


def _window_sums(a: np.ndarray, size: int, stride: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sum of ``a`` in every ``size`` x ``size`` window at the given stride (summed-area table).

    Returns:
        (row offsets, col offsets, sums with shape (len(rows), len(cols))).
    """
    h, w = a.shape
    table = np.zeros((h + 1, w + 1), dtype=np.int64)
    table[1:, 1:] = a.astype(np.int64).cumsum(axis=0).cumsum(axis=1)
    rows = np.arange(0, h - size + 1, stride)
    cols = np.arange(0, w - size + 1, stride)
    sums = (
        table[np.ix_(rows + size, cols + size)]
        - table[np.ix_(rows, cols + size)]
        - table[np.ix_(rows + size, cols)]
        + table[np.ix_(rows, cols)]
    )
    return rows, cols, sums


def _label_window(
    index: int,
    scene: _Scene,
    labels_path: Path,
    footprint_path: Path | None,
    holdout_path: Path | None,
    size: int,
) -> _LabelWindow | None:
    """Rasterise labels, footprint and hold-out of one scene around the footprint; None if they miss the scene."""
    scene_geom = scene.bounds_geom
    if footprint_path is not None:
        footprint = read_labels(footprint_path, "EPSG:4326")
        # test overlap in geographic coordinates first: a footprint in another UTM zone does not project sensibly
        # into this scene's CRS
        scene_ll = box(*transform_bounds(scene.crs, "EPSG:4326", *scene_geom.bounds, densify_pts=21))
        if not len(footprint) or not footprint.intersects(scene_ll).any():
            return None
        footprint = footprint.to_crs(scene.crs)
        area = shapely.union_all(footprint.geometry.values).intersection(scene_geom)
        if area is None or area.is_empty or area.area == 0:
            return None
    else:
        area = scene_geom
    inv = ~scene.transform
    corners = [inv @ (x, y) for x, y in shapely.get_coordinates(shapely.envelope(area))]
    cols = [c for c, _ in corners]
    rows = [r for _, r in corners]
    row0, row1 = math.floor(min(rows) + 1e-6), math.ceil(max(rows) - 1e-6)
    col0, col1 = math.floor(min(cols) + 1e-6), math.ceil(max(cols) - 1e-6)
    row0, row1 = max(0, row0), min(scene.height, row1)
    col0, col1 = max(0, col0), min(scene.width, col1)
    # windows must fit even when the footprint is smaller than a chip: grow the window (padding is ignored)
    if row1 - row0 < size:
        row0 -= (size - (row1 - row0)) // 2
        row1 = row0 + size
    if col1 - col0 < size:
        col0 -= (size - (col1 - col0)) // 2
        col1 = col0 + size
    shape = (row1 - row0, col1 - col0)
    transform = scene.transform @ Affine.translation(col0, row0)
    labels_gdf = read_labels(labels_path, scene.crs)
    mask = rasterize_labels(labels_gdf, transform, shape, footprint=area)
    rr = np.arange(row0, row1)[:, None]
    cc = np.arange(col0, col1)[None, :]
    mask[(rr < 0) | (rr >= scene.height) | (cc < 0) | (cc >= scene.width)] = IGNORE
    if holdout_path is not None:
        holdout_gdf = read_labels(holdout_path, scene.crs)
        holdout = burn(holdout_gdf, transform, shape)
    else:
        holdout = np.zeros(shape, dtype=bool)
    return _LabelWindow(index, row0, col0, mask, holdout)


def _val_offsets(lo: int, hi: int, extent: int, size: int) -> list[int]:
    """Chip starts that tile [lo, hi) regularly, the last one flush with ``hi``, all within [0, extent - size]."""
    if hi - lo <= size:
        return [max(0, min(lo, extent - size))]
    starts = list(range(lo, hi - size + 1, size))
    if starts[-1] + size < hi:
        starts.append(hi - size)
    return starts


def _plan_val(windows: list[_LabelWindow], size: int) -> list[tuple[int, int, int]]:
    """Regular tiling of each window's labelled hold-out pixels: (window index, row, col) in window coordinates."""
    plan: list[tuple[int, int, int]] = []
    for w_idx, lw in enumerate(windows):
        hold = lw.holdout & (lw.labels != IGNORE)
        if not hold.any():
            continue
        h, w = hold.shape
        rr = np.flatnonzero(hold.any(axis=1))
        cc = np.flatnonzero(hold.any(axis=0))
        for r in _val_offsets(int(rr[0]), int(rr[-1]) + 1, h, size):
            for c in _val_offsets(int(cc[0]), int(cc[-1]) + 1, w, size):
                if hold[r : r + size, c : c + size].any():
                    plan.append((w_idx, r, c))
    return plan


def _train_candidates(windows: list[_LabelWindow], size: int) -> tuple[np.ndarray, np.ndarray]:
    """All admissible train windows, split into those with and without RTS: ``(n, 3)`` arrays of (window, row, col).

    Admissible: no hold-out pixel inside, and at least :data:`MIN_VALID_FRACTION` of the pixels labelled.
    """
    pos: list[np.ndarray] = [np.zeros((0, 3), dtype=np.int64)]
    neg: list[np.ndarray] = [np.zeros((0, 3), dtype=np.int64)]
    for w_idx, lw in enumerate(windows):
        h, w = lw.labels.shape
        stride = max(1, math.ceil(math.sqrt((h - size + 1) * (w - size + 1) / _MAX_CANDIDATES)))
        rows, cols, n_labelled = _window_sums(lw.labels != IGNORE, size, stride)
        _, _, n_hold = _window_sums(lw.holdout, size, stride)
        _, _, n_rts = _window_sums(lw.labels == 1, size, stride)
        ok = (n_hold == 0) & (n_labelled >= MIN_VALID_FRACTION * size * size)
        for sel, bucket in ((ok & (n_rts > 0), pos), (ok & (n_rts == 0), neg)):
            r_idx, c_idx = np.nonzero(sel)
            bucket.append(np.column_stack([np.full(r_idx.size, w_idx), rows[r_idx], cols[c_idx]]).astype(np.int64))
    return np.concatenate(pos), np.concatenate(neg)


def make_chips(
    *,
    scenes: Sequence[str | os.PathLike[str]],
    bands: list[str],
    out_path: str | os.PathLike[str],
    labels: str | os.PathLike[str] | None = None,
    label_footprint: str | os.PathLike[str] | None = None,
    holdout: str | os.PathLike[str] | None = None,
    unlabelled_scenes: Sequence[str | os.PathLike[str]] = (),
    chip_size: int = 192,
    n_labelled: int = 256,
    n_unlabelled: int = 256,
    positive_fraction: float = 0.5,
    seed: int = 0,
    stats_path: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Cut labelled and unlabelled chips from fetched scenes into a zarr store (atomically).

    Args:
        scenes: fetched scene COGs that may hold labelled areas; those whose extent meets the footprint are used.
        bands: bands to store, in order; every scene must carry them (band descriptions).
        out_path: the zarr store to create (replaced if it exists).
        labels: RTS polygons (any vector format and CRS). None: no labelled chips.
        label_footprint: polygons where labelling was exhaustive; pixels outside are ignored. None: the whole of
            every labelled scene counts as labelled.
        holdout: polygons of the validation area; it is tiled into ``val`` chips, and ``train`` chips avoid it.
        unlabelled_scenes: fetched scenes to draw unlabelled chips from.
        chip_size: chip edge in pixels.
        n_labelled: number of ``train`` chips (``val`` chips come in addition, as many as tile the hold-out).
        n_unlabelled: number of unlabelled chips.
        positive_fraction: target share of train chips that contain RTS pixels.
        seed: seed of the random generator.
        stats_path: where to write the stats JSON; default ``stats.json`` next to the store.

    Returns:
        The statistics written to ``stats_path`` (counts, positive fractions, per-band DN percentiles).

    Raises:
        InputError: a scene is missing, unreadable or lacks a band; no scene meets the labels; no window fits.
        ConfigError: invalid sizes or fractions.
    """
    if chip_size < 8:
        raise ConfigError(f"chip_size must be at least 8 pixels, got {chip_size}")
    if n_labelled < 0 or n_unlabelled < 0:
        raise ConfigError("n_labelled and n_unlabelled must not be negative")
    if not 0.0 <= positive_fraction <= 1.0:
        raise ConfigError(f"positive_fraction must be between 0 and 1, got {positive_fraction}")
    band_list = canonical_bands(list(bands))
    size = chip_size
    rng = np.random.default_rng(seed)
    out = Path(out_path)
    labelled_scenes = [_open_scene(p, band_list) for p in _usable(scenes)]
    unlab_scenes = [_open_scene(p, band_list) for p in _usable(unlabelled_scenes)]
    for path in (labels, label_footprint, holdout):
        if path is not None and not Path(path).exists():
            raise InputError(f"{path} not found; check the labels/footprint/holdout paths in your config")

    # --- plan labelled chips -------------------------------------------------------------------------------------
    windows: list[_LabelWindow] = []
    if labels is not None:
        for i, scene in enumerate(labelled_scenes):
            lw = _label_window(
                i, scene, Path(labels), Path(label_footprint) if label_footprint else None,
                Path(holdout) if holdout else None, size,
            )
            if lw is not None:
                windows.append(lw)
        if not windows:
            raise InputError(
                f"none of the {len(labelled_scenes)} scenes overlaps the label footprint "
                f"{label_footprint or labels}; fetch the scenes that cover the labelled area"
            )

    val_plan = _plan_val(windows, size)
    pos_pool, neg_pool = _train_candidates(windows, size)
    n_train_target = n_labelled if windows else 0
    if n_train_target and len(pos_pool) + len(neg_pool) == 0:
        raise InputError(
            f"no {size} px training window fits inside the label footprint outside the hold-out; "
            "use a smaller chip_size or a narrower hold-out"
        )

    # --- write the store ------------------------------------------------------------------------------------------
    n_bands = len(band_list)
    index: list[dict[str, Any]] = []
    stats_acc = _Stats()
    counts = {"train": 0, "val": 0, "train_positive": 0, "val_positive": 0, "unlabelled": 0,
              "skipped_nodata": 0, "skipped_quality": 0}
    pixel_counts = {"train": [0, 0], "val": [0, 0]}  # [rts pixels, labelled pixels]
    with atomic_output(out) as tmp:
        root = zarr.open_group(str(tmp), mode="w")
        n_lab_max = n_train_target + len(val_plan)
        img_arr = root.create_array(
            "labelled/image", shape=(n_lab_max, n_bands, size, size), chunks=(1, n_bands, size, size),
            dtype="uint16", fill_value=NODATA,
        )
        mask_arr = root.create_array(
            "labelled/mask", shape=(n_lab_max, size, size), chunks=(1, size, size), dtype="uint8",
            fill_value=IGNORE,
        )
        splits = np.zeros(n_lab_max, dtype=np.uint8)
        datasets = [rasterio.open(s.path) for s in labelled_scenes]
        qdatasets = [rasterio.open(s.mask_path) if s.mask_path else None for s in labelled_scenes]
        val_seen = [np.zeros(lw.labels.shape, dtype=bool) for lw in windows]
        try:
            n_written = 0

            def emit(w_idx: int, r: int, c: int, split: str) -> bool:
                nonlocal n_written
                lw = windows[w_idx]
                scene = labelled_scenes[lw.scene]
                image = _read_chip(datasets[lw.scene], scene, lw.row_off + r, lw.col_off + c, size)
                valid = (image != NODATA).any(axis=0)
                clear = _read_quality(qdatasets[lw.scene], scene, lw.row_off + r, lw.col_off + c, size) == 0
                mask = lw.labels[r : r + size, c : c + size].copy()
                if split == "val":
                    # count each hold-out pixel once, although the last tile in a row/column overlaps its neighbour
                    mask[~lw.holdout[r : r + size, c : c + size] | val_seen[w_idx][r : r + size, c : c + size]] = IGNORE
                mask[~valid | ~clear] = IGNORE  # nodata, and cloud/shadow/snow/water/invalid per the mask
                labelled = mask != IGNORE
                threshold = MIN_VALID_FRACTION * size * size if split == "train" else 1
                if labelled.sum() < threshold:
                    counts["skipped_nodata" if clear.all() else "skipped_quality"] += 1
                    return False
                if split == "val":
                    val_seen[w_idx][r : r + size, c : c + size] |= labelled
                img_arr[n_written] = image
                mask_arr[n_written] = mask
                splits[n_written] = SPLITS[split]
                n_rts = int((mask == 1).sum())
                n_lab = int(labelled.sum())
                pixel_counts[split][0] += n_rts
                pixel_counts[split][1] += n_lab
                counts[split] += 1
                counts[f"{split}_positive"] += int(n_rts > 0)
                stats_acc.add(image, valid, rng)
                index.append({
                    "group": "labelled", "i": n_written, "scene": scene.path.name,
                    "row": lw.row_off + r, "col": lw.col_off + c, "split": split,
                    "label_fraction": round(n_rts / n_lab, 6),
                })
                n_written += 1
                return True

            for w_idx, r, c in val_plan:
                emit(w_idx, r, c, "val")

            n_pos_target = int(round(n_train_target * positive_fraction)) if len(pos_pool) else 0
            if not len(neg_pool):
                n_pos_target = n_train_target
            for pool, target in ((pos_pool, n_pos_target), (neg_pool, n_train_target - n_pos_target)):
                if target == 0 or not len(pool):
                    continue
                # visit candidates in random order; revisit (with replacement) only if the pool is too small
                order = rng.permutation(len(pool))
                got, tries, cursor = 0, 0, 0
                max_tries = 20 * target + len(pool)
                while got < target and tries < max_tries:
                    if cursor == len(order):
                        order, cursor = rng.permutation(len(pool)), 0
                    w_idx, r, c = (int(v) for v in pool[order[cursor]])
                    cursor += 1
                    tries += 1
                    got += emit(w_idx, r, c, "train")
        finally:
            for ds in [*datasets, *qdatasets]:
                if ds is not None:
                    ds.close()
        img_arr.resize((n_written, n_bands, size, size))
        mask_arr.resize((n_written, size, size))
        split_arr = root.create_array("labelled/split", shape=(n_written,), chunks=(max(1, n_written),),
                                      dtype="uint8", fill_value=0)
        if n_written:
            split_arr[:] = splits[:n_written]

        # --- unlabelled chips ----------------------------------------------------------------------------------
        un_arr = root.create_array(
            "unlabelled/image", shape=(n_unlabelled if unlab_scenes else 0, n_bands, size, size),
            chunks=(1, n_bands, size, size), dtype="uint16", fill_value=NODATA,
        )
        n_un = 0
        if unlab_scenes and n_unlabelled:
            areas = np.array([s.height * s.width for s in unlab_scenes], dtype=np.float64)
            udatasets = [rasterio.open(s.path) for s in unlab_scenes]
            uqdatasets = [rasterio.open(s.mask_path) if s.mask_path else None for s in unlab_scenes]
            try:
                tries = 0
                while n_un < n_unlabelled and tries < 50 * n_unlabelled + 100:
                    tries += 1
                    k = int(rng.choice(len(unlab_scenes), p=areas / areas.sum()))
                    scene = unlab_scenes[k]
                    r = int(rng.integers(0, max(0, scene.height - size) + 1))
                    c = int(rng.integers(0, max(0, scene.width - size) + 1))
                    image = _read_chip(udatasets[k], scene, r, c, size)
                    valid = (image != NODATA).any(axis=0)
                    if valid.mean() < MIN_VALID_FRACTION:
                        counts["skipped_nodata"] += 1
                        continue
                    valid &= _read_quality(uqdatasets[k], scene, r, c, size) == 0
                    if valid.mean() < MIN_VALID_FRACTION:  # mostly cloud, shadow, snow or water
                        counts["skipped_quality"] += 1
                        continue
                    un_arr[n_un] = image
                    stats_acc.add(image, valid, rng)
                    index.append({"group": "unlabelled", "i": n_un, "scene": scene.path.name, "row": r, "col": c,
                                  "split": "unlabelled", "label_fraction": None})
                    n_un += 1
            finally:
                for ds in [*udatasets, *uqdatasets]:
                    if ds is not None:
                        ds.close()
            if n_un == 0:
                raise InputError(
                    f"all sampled windows of the unlabelled scenes ({', '.join(s.path.name for s in unlab_scenes)}) "
                    "are mostly nodata or flagged by the quality mask; check those scenes or choose others"
                )
            un_arr.resize((n_un, n_bands, size, size))
        counts["unlabelled"] = n_un

        stats = {
            "chip_size": size,
            "bands": band_list,
            "seed": seed,
            "counts": counts,
            "requested": {"n_labelled": n_labelled, "n_unlabelled": n_unlabelled,
                          "positive_fraction": positive_fraction},
            "positive_chip_fraction": {
                split: (counts[f"{split}_positive"] / counts[split] if counts[split] else None)
                for split in ("train", "val")
            },
            "positive_pixel_fraction": {
                split: (pixel_counts[split][0] / pixel_counts[split][1] if pixel_counts[split][1] else None)
                for split in ("train", "val")
            },
            "labelled_pixels": {split: pixel_counts[split][1] for split in ("train", "val")},
            "band_dn": stats_acc.summary(band_list),
            "scenes": {
                "labelled": [str(labelled_scenes[lw.scene].path) for lw in windows],
                "unlabelled": [str(s.path) for s in unlab_scenes],
            },
            "labels": str(labels) if labels else None,
            "label_footprint": str(label_footprint) if label_footprint else None,
            "holdout": str(holdout) if holdout else None,
        }
        root.attrs.update({
            "pixeldino_chips": STORE_VERSION,
            "bands": band_list,
            "chip_size": size,
            "ignore_value": IGNORE,
            "nodata": NODATA,
            "seed": seed,
            "splits": SPLITS,
            "index": index,
            "stats": stats,
        })
    write_json(Path(stats_path) if stats_path else out.parent / "stats.json", stats)
    return stats


class ChipStore:
    """Read a chip store written by :func:`make_chips`.

    Example:
        >>> store = ChipStore("results/demo/chips.zarr")
        >>> images, masks = store.labelled("train")  # (N, C, S, S) uint16, (N, S, S) uint8
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise InputError(f"chip store {self.path} not found; run `pixeldino chip` first")
        try:
            self._root = zarr.open_group(str(self.path), mode="r")
        except Exception as exc:
            raise InputError(f"{self.path} is not a readable zarr store ({exc}); run `pixeldino chip` again") from exc
        attrs = self._root.attrs.asdict()
        if attrs.get("pixeldino_chips") != STORE_VERSION:
            raise InputError(f"{self.path} is not a pixeldino chip store (version {STORE_VERSION}); "
                             "run `pixeldino chip` again")
        self.bands: list[str] = list(attrs["bands"])
        self.chip_size: int = int(attrs["chip_size"])
        self.ignore_value: int = int(attrs["ignore_value"])
        self.index: list[dict[str, Any]] = list(attrs.get("index", []))
        self._image = self._root["labelled/image"]
        self._mask = self._root["labelled/mask"]
        self._split = np.asarray(self._root["labelled/split"][...], dtype=np.uint8)
        self._unlabelled = self._root["unlabelled/image"]
        self._stats: dict[str, Any] = dict(attrs.get("stats", {}))
        if self.n_labelled == 0 and self.n_unlabelled == 0:
            raise InputError(f"chip store {self.path} holds no chips; check the chip settings and inputs, then "
                             "run `pixeldino chip` again")

    @property
    def n_labelled(self) -> int:
        """Number of labelled chips (train and val)."""
        return int(self._image.shape[0])

    @property
    def n_unlabelled(self) -> int:
        """Number of unlabelled chips."""
        return int(self._unlabelled.shape[0])

    def labelled_indices(self, split: str = "train") -> np.ndarray:
        """Indices of the labelled chips of one split (``train`` or ``val``)."""
        if split not in SPLITS:
            raise ConfigError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        return np.flatnonzero(self._split == SPLITS[split])

    def read_labelled(self, indices: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Images ``(n, C, S, S)`` uint16 and masks ``(n, S, S)`` uint8 of the given labelled chips."""
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size == 0:
            s = self.chip_size
            return np.zeros((0, len(self.bands), s, s), np.uint16), np.zeros((0, s, s), np.uint8)
        return np.asarray(self._image.oindex[idx]), np.asarray(self._mask.oindex[idx])

    def labelled(self, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
        """All labelled chips of one split as ``(images, masks)``."""
        return self.read_labelled(self.labelled_indices(split))

    def read_unlabelled(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Images ``(n, C, S, S)`` uint16 of the given unlabelled chips."""
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size == 0:
            return np.zeros((0, len(self.bands), self.chip_size, self.chip_size), np.uint16)
        return np.asarray(self._unlabelled.oindex[idx])

    def unlabelled(self) -> np.ndarray:
        """All unlabelled chips ``(M, C, S, S)`` uint16."""
        return np.asarray(self._unlabelled[...])

    def stats(self) -> dict[str, Any]:
        """The statistics recorded when the store was made (counts, positive fractions, DN percentiles)."""
        return dict(self._stats)

    def __repr__(self) -> str:
        n_val = int((self._split == SPLITS["val"]).sum())
        return (f"ChipStore({str(self.path)!r}: {self.n_labelled - n_val} train + {n_val} val labelled, "
                f"{self.n_unlabelled} unlabelled, {len(self.bands)} bands, {self.chip_size} px)")

