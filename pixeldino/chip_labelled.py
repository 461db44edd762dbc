"""Labelled chips: plan the ``val`` tiling of the hold-out and the ``train`` candidates, then write both.

The rules (see :mod:`pixeldino.chip`): the hold-out is tiled regularly into ``val`` chips whose pixels outside
the hold-out are ignored; ``train`` chips are random windows without hold-out pixels, at least half labelled,
about ``positive_fraction`` of them with RTS. Planning happens before the store is opened, so that a plan that
cannot work (no scene meets the labels, no window fits) fails without writing anything.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import geopandas as gpd
import numpy as np
import shapely
import zarr
from affine import Affine
from rasterio.warp import transform_bounds
from shapely.geometry import box

from pixeldino.chip_scenes import MIN_VALID_FRACTION, ChipScene, DnSample, SceneReader, SkipCounts
from pixeldino.chipstore import NODATA, SPLITS
from pixeldino.errors import InputError
from pixeldino.labels import IGNORE, burn, rasterize_labels, read_labels

if TYPE_CHECKING:  # chip.py imports this module; the parameter object is only needed for annotations here
    from pixeldino.chip import ChipParams

#: Cap on train candidate windows per scene; above it, candidates are taken on a coarser stride.
_MAX_CANDIDATES = 2_000_000


@dataclass
class LabelWindow:
    """The label raster of one labelled scene around its footprint (window in scene pixel coordinates)."""

    scene: int
    row_off: int
    col_off: int
    labels: np.ndarray  # uint8, IGNORE outside the footprint and outside the scene
    holdout: np.ndarray  # bool, hold-out pixels


@dataclass
class LabelledPlan:
    """Where the labelled chips may come from.

    Attributes:
        windows: the label window of every labelled scene that meets the footprint.
        val: the ``val`` chips as (window, row, col) in window coordinates, in writing order.
        positive: train candidates with RTS, an ``(n, 3)`` array of (window, row, col).
        negative: train candidates without RTS, likewise.
        n_train: number of ``train`` chips to draw (0 without labels).
    """

    windows: list[LabelWindow]
    val: list[tuple[int, int, int]]
    positive: np.ndarray
    negative: np.ndarray
    n_train: int


@dataclass
class LabelledChips:
    """What :func:`write_labelled_chips` wrote.

    Attributes:
        n: chips written (``train`` and ``val``).
        chips: chips per split.
        positive: chips with RTS per split.
        pixels: per split, ``[RTS pixels, labelled pixels]``.
        index: one entry per chip (group, i, scene, row, col, split, label_fraction).
    """

    n: int = 0
    chips: dict[str, int] = field(default_factory=lambda: {"train": 0, "val": 0})
    positive: dict[str, int] = field(default_factory=lambda: {"train": 0, "val": 0})
    pixels: dict[str, list[int]] = field(default_factory=lambda: {"train": [0, 0], "val": [0, 0]})
    index: list[dict[str, Any]] = field(default_factory=list)


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


def label_window(
    index: int,
    scene: ChipScene,
    labels: gpd.GeoDataFrame,
    footprint: gpd.GeoDataFrame | None,
    holdout: gpd.GeoDataFrame | None,
    size: int,
) -> LabelWindow | None:
    """Rasterise labels, footprint and hold-out of one scene around the footprint; None if they miss the scene.

    Args:
        index: the scene's position in the list of labelled scenes.
        scene: the scene.
        labels: RTS polygons, any CRS.
        footprint: polygons of the labelled area, any CRS; None: the whole scene.
        holdout: polygons of the validation area, any CRS; None: no hold-out.
        size: chip size; the window is at least this large.
    """
    scene_geom = scene.bounds_geom
    if footprint is not None:
        # test overlap in geographic coordinates first: a footprint in another UTM zone does not project sensibly
        # into this scene's CRS
        scene_ll = box(*transform_bounds(scene.crs, "EPSG:4326", *scene_geom.bounds, densify_pts=21))
        if not footprint.to_crs("EPSG:4326").intersects(scene_ll).any():
            return None
        area = shapely.union_all(footprint.to_crs(scene.crs).geometry.values).intersection(scene_geom)
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
    mask = rasterize_labels(labels.to_crs(scene.crs), transform, shape, footprint=area)
    rr = np.arange(row0, row1)[:, None]
    cc = np.arange(col0, col1)[None, :]
    mask[(rr < 0) | (rr >= scene.height) | (cc < 0) | (cc >= scene.width)] = IGNORE
    if holdout is not None:
        hold = burn(holdout.to_crs(scene.crs), transform, shape)
    else:
        hold = np.zeros(shape, dtype=bool)
    return LabelWindow(index, row0, col0, mask, hold)


def _val_offsets(lo: int, hi: int, extent: int, size: int) -> list[int]:
    """Chip starts that tile [lo, hi) regularly, the last one flush with ``hi``, all within [0, extent - size]."""
    if hi - lo <= size:
        return [max(0, min(lo, extent - size))]
    starts = list(range(lo, hi - size + 1, size))
    if starts[-1] + size < hi:
        starts.append(hi - size)
    return starts


def _plan_val(windows: list[LabelWindow], size: int) -> list[tuple[int, int, int]]:
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


def _train_candidates(windows: list[LabelWindow], size: int) -> tuple[np.ndarray, np.ndarray]:
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


def _names(scenes: list[ChipScene]) -> str:
    """The scenes' file names for a message: the first three, and how many more."""
    names = [s.path.name for s in scenes[:3]]
    return ", ".join(names) + (f" and {len(scenes) - 3} more" if len(scenes) > 3 else "")


def plan_labelled_chips(
    scenes: list[ChipScene],
    params: ChipParams,
    *,
    labels: str | os.PathLike[str] | None,
    footprint: str | os.PathLike[str] | None,
    holdout: str | os.PathLike[str] | None,
) -> LabelledPlan:
    """Rasterise the labels around each scene's part of the footprint and plan the ``val`` and ``train`` chips.

    Every assumption the labelled chips rest on is checked here, before anything is written: the three files hold
    polygons, the footprint meets a scene, the labels hold RTS inside the labelled part of the scenes, the hold-out
    meets that part, and some ``train`` window outside the hold-out holds RTS. Otherwise the store would be
    all-negative or lack its validation chips, and the failure would surface only in training (or not at all).

    Args:
        scenes: the labelled scenes; those whose extent misses the footprint get no window.
        params: chip size and the number of ``train`` chips.
        labels: RTS polygons; None plans no labelled chip.
        footprint: where labelling was exhaustive; None: the whole of every scene.
        holdout: the validation area; None: no ``val`` chips.

    Raises:
        InputError: a file holds no polygon, no scene meets the footprint, the labels hold no RTS in the labelled
            area, the hold-out misses it, or no ``train`` window fits or holds RTS.
    """
    size = params.size
    windows: list[LabelWindow] = []
    if labels is None:
        return LabelledPlan(windows, [], np.zeros((0, 3), np.int64), np.zeros((0, 3), np.int64), 0)
    labels_gdf = read_labels(labels, None, require_polygons=True)
    footprint_gdf = read_labels(footprint, None, what="label footprint", require_polygons=True) if footprint else None
    holdout_gdf = read_labels(holdout, None, what="hold-out", require_polygons=True) if holdout else None
    for i, scene in enumerate(scenes):
        lw = label_window(i, scene, labels_gdf, footprint_gdf, holdout_gdf, size)
        if lw is not None:
            windows.append(lw)
    if not windows:
        raise InputError(
            f"none of the {len(scenes)} scenes ({_names(scenes)}) overlaps the label footprint "
            f"{footprint or labels}; fetch the scenes that cover the labelled area"
        )
    where = f"inside the footprint {footprint} " if footprint else ""
    if not any((lw.labels == 1).any() for lw in windows):
        raise InputError(
            f"the {len(labels_gdf)} polygons of {labels} overlap none of the scenes ({_names(scenes)}) {where}"
            "with a single RTS pixel; fetch the scenes that cover the labels, or check the label file's CRS"
        )
    val = _plan_val(windows, size)
    if holdout is not None and not val:
        raise InputError(
            f"the hold-out {holdout} does not overlap the labelled part of the scenes ({_names(scenes)}) {where}"
            "in a single pixel, so there would be no validation chips; draw the hold-out inside the labelled area"
        )
    positive, negative = _train_candidates(windows, size)
    n_train = params.n_labelled
    if n_train and len(positive) + len(negative) == 0:
        raise InputError(
            f"no {size} px training window fits inside the label footprint outside the hold-out; "
            "use a smaller chip size (chips.size, --size) or a narrower hold-out"
        )
    if n_train and not len(positive):
        because = (
            f"every label polygon of {labels} in the labelled area lies in the hold-out {holdout}; move or narrow "
            "the hold-out"
            if holdout is not None
            else f"the RTS of {labels} lie where less than half of a window is labelled; use a smaller chip size "
            "(chips.size, --size) or a wider footprint"
        )
        raise InputError(f"no {size} px training window holds RTS: {because}")
    return LabelledPlan(windows, val, positive, negative, n_train)


class LabelledChipWriter:
    """Writes labelled chips one at a time into ``labelled/image`` and ``labelled/mask``, tallying as it goes."""

    def __init__(
        self,
        root: zarr.Group,
        plan: LabelledPlan,
        readers: list[SceneReader],
        *,
        size: int,
        n_bands: int,
        rng: np.random.Generator,
        dn: DnSample,
        skipped: SkipCounts,
    ) -> None:
        """Create the image and mask arrays, sized for every planned chip (:meth:`finish` trims them)."""
        self.plan, self.readers, self.size, self.n_bands = plan, readers, size, n_bands
        self.rng, self.dn, self.skipped = rng, dn, skipped
        n_max = plan.n_train + len(plan.val)
        self.images = root.create_array(
            "labelled/image",
            shape=(n_max, n_bands, size, size),
            chunks=(1, n_bands, size, size),
            dtype="uint16",
            fill_value=NODATA,
        )
        self.masks = root.create_array(
            "labelled/mask", shape=(n_max, size, size), chunks=(1, size, size), dtype="uint8", fill_value=IGNORE
        )
        self.root = root
        self.splits = np.zeros(n_max, dtype=np.uint8)
        # hold-out pixels already counted: the last val tile of a row or column overlaps its neighbour
        self.val_seen = [np.zeros(lw.labels.shape, dtype=bool) for lw in plan.windows]
        self.written = LabelledChips()

    def write(self, w_idx: int, r: int, c: int, split: str) -> bool:
        """Write the chip at (``r``, ``c``) of label window ``w_idx`` unless too few of its pixels are labelled.

        Returns:
            True when the chip was written.
        """
        size, lw = self.size, self.plan.windows[w_idx]
        reader = self.readers[lw.scene]
        row, col = lw.row_off + r, lw.col_off + c
        image = reader.image(row, col, size)
        valid = (image != NODATA).any(axis=0)
        clear = reader.quality(row, col, size) == 0
        mask = lw.labels[r : r + size, c : c + size].copy()
        if split == "val":
            mask[~lw.holdout[r : r + size, c : c + size] | self.val_seen[w_idx][r : r + size, c : c + size]] = IGNORE
        mask[~valid | ~clear] = IGNORE  # nodata, and cloud/shadow/snow/water/invalid per the mask
        labelled = mask != IGNORE
        threshold = MIN_VALID_FRACTION * size * size if split == "train" else 1
        if labelled.sum() < threshold:
            if clear.all():
                self.skipped.nodata += 1
            else:
                self.skipped.quality += 1
            return False
        if split == "val":
            self.val_seen[w_idx][r : r + size, c : c + size] |= labelled
        out = self.written
        self.images[out.n] = image
        self.masks[out.n] = mask
        self.splits[out.n] = SPLITS[split]
        n_rts = int((mask == 1).sum())
        n_lab = int(labelled.sum())
        out.pixels[split][0] += n_rts
        out.pixels[split][1] += n_lab
        out.chips[split] += 1
        out.positive[split] += int(n_rts > 0)
        self.dn.add(image, valid, self.rng)
        out.index.append(
            {
                "group": "labelled",
                "i": out.n,
                "scene": reader.scene.path.name,
                "row": row,
                "col": col,
                "split": split,
                "label_fraction": round(n_rts / n_lab, 6),
            }
        )
        out.n += 1
        return True

    def write_train(self, pool: np.ndarray, target: int) -> None:
        """Write ``target`` train chips from a candidate pool, visited in random order.

        Candidates are revisited (with replacement) only when the pool runs out before ``target`` chips pass;
        the number of tries is capped so that a pool of mostly unusable windows cannot loop forever.
        """
        if target == 0 or not len(pool):
            return
        order = self.rng.permutation(len(pool))
        got, tries, cursor = 0, 0, 0
        max_tries = 20 * target + len(pool)
        while got < target and tries < max_tries:
            if cursor == len(order):
                order, cursor = self.rng.permutation(len(pool)), 0
            w_idx, r, c = (int(v) for v in pool[order[cursor]])
            cursor += 1
            tries += 1
            got += self.write(w_idx, r, c, "train")

    def finish(self) -> LabelledChips:
        """Trim the arrays to the chips written and store their splits."""
        n, size = self.written.n, self.size
        self.images.resize((n, self.n_bands, size, size))
        self.masks.resize((n, size, size))
        split_arr = self.root.create_array(
            "labelled/split", shape=(n,), chunks=(max(1, n),), dtype="uint8", fill_value=0
        )
        if n:
            split_arr[:] = self.splits[:n]
        return self.written


def write_labelled_chips(
    root: zarr.Group,
    plan: LabelledPlan,
    scenes: list[ChipScene],
    params: ChipParams,
    *,
    n_bands: int,
    rng: np.random.Generator,
    dn: DnSample,
    skipped: SkipCounts,
) -> LabelledChips:
    """Write the planned ``val`` chips, then about ``params.positive_fraction`` positive ``train`` chips.

    Args:
        root: the store's root group.
        plan: from :func:`plan_labelled_chips`.
        scenes: the labelled scenes the plan's windows refer to.
        params: chip size and positive fraction.
        n_bands: bands per chip.
        rng: the store's random generator (train order, DN sample).
        dn: the DN sample of the store statistics, added to.
        skipped: counts of chips left out, added to.
    """
    with contextlib.ExitStack() as stack:
        readers = [stack.enter_context(SceneReader(s)) for s in scenes]
        writer = LabelledChipWriter(
            root, plan, readers, size=params.size, n_bands=n_bands, rng=rng, dn=dn, skipped=skipped
        )
        for w_idx, r, c in plan.val:
            writer.write(w_idx, r, c, "val")
        n_positive = int(round(plan.n_train * params.positive_fraction)) if len(plan.positive) else 0
        if not len(plan.negative):
            n_positive = plan.n_train
        writer.write_train(plan.positive, n_positive)
        writer.write_train(plan.negative, plan.n_train - n_positive)
    return writer.finish()
