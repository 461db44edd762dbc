"""Unlabelled chips: random windows of the unlabelled scenes, skipping those with too few clear data pixels."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr

from pixeldino.chip_scenes import MIN_VALID_FRACTION, ChipScene, DnSample, SceneReader, SkipCounts
from pixeldino.chipstore import NODATA
from pixeldino.errors import InputError

if TYPE_CHECKING:  # chip.py imports this module; the parameter object is only needed for annotations here
    from pixeldino.chip import ChipParams


@dataclass
class UnlabelledChips:
    """What :func:`write_unlabelled_chips` wrote.

    Attributes:
        n: chips written.
        index: one entry per chip (group, i, scene, row, col, split, label_fraction).
    """

    n: int = 0
    index: list[dict[str, Any]] = field(default_factory=list)


def write_unlabelled_chips(
    root: zarr.Group,
    scenes: list[ChipScene],
    params: ChipParams,
    *,
    n_bands: int,
    rng: np.random.Generator,
    dn: DnSample,
    skipped: SkipCounts,
) -> UnlabelledChips:
    """Write ``params.n_unlabelled`` random windows of ``scenes`` into ``unlabelled/image``.

    Scenes are drawn in proportion to their area, windows uniformly inside the scene. A window is kept when at
    least :data:`~pixeldino.chip_scenes.MIN_VALID_FRACTION` of its pixels have data and are clear in the quality
    mask; the number of tries is capped so that scenes of mostly clouds cannot loop forever.

    Args:
        root: the store's root group.
        scenes: the unlabelled scenes (none: an empty array).
        params: chip size and number of chips.
        n_bands: bands per chip.
        rng: the store's random generator (scene, window, DN sample).
        dn: the DN sample of the store statistics, added to.
        skipped: counts of windows left out, added to.

    Raises:
        InputError: every sampled window was mostly nodata or flagged by the quality mask.
    """
    size, target = params.size, params.n_unlabelled
    images = root.create_array(
        "unlabelled/image",
        shape=(target if scenes else 0, n_bands, size, size),
        chunks=(1, n_bands, size, size),
        dtype="uint16",
        fill_value=NODATA,
    )
    out = UnlabelledChips()
    if not scenes or not target:
        return out
    areas = np.array([s.height * s.width for s in scenes], dtype=np.float64)
    with contextlib.ExitStack() as stack:
        readers = [stack.enter_context(SceneReader(s)) for s in scenes]
        tries = 0
        while out.n < target and tries < 50 * target + 100:
            tries += 1
            k = int(rng.choice(len(scenes), p=areas / areas.sum()))
            scene = scenes[k]
            r = int(rng.integers(0, max(0, scene.height - size) + 1))
            c = int(rng.integers(0, max(0, scene.width - size) + 1))
            image = readers[k].image(r, c, size)
            valid = (image != NODATA).any(axis=0)
            if valid.mean() < MIN_VALID_FRACTION:
                skipped.nodata += 1
                continue
            valid &= readers[k].quality(r, c, size) == 0
            if valid.mean() < MIN_VALID_FRACTION:  # mostly cloud, shadow, snow or water
                skipped.quality += 1
                continue
            images[out.n] = image
            dn.add(image, valid, rng)
            out.index.append(
                {
                    "group": "unlabelled",
                    "i": out.n,
                    "scene": scene.path.name,
                    "row": r,
                    "col": c,
                    "split": "unlabelled",
                    "label_fraction": None,
                }
            )
            out.n += 1
    if out.n == 0:
        raise InputError(
            f"all sampled windows of the unlabelled scenes ({', '.join(s.path.name for s in scenes)}) "
            "are mostly nodata or flagged by the quality mask; check those scenes or choose others"
        )
    images.resize((out.n, n_bands, size, size))
    return out
