"""The chips a run trains on: read from a chip store (or any object that reads like one) and checked up front.

Every problem with the inputs is found here, before a model is built, and reported as one line that says what to
fix (:class:`~pixeldino.errors.TrainingError`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from pixeldino.errors import TrainingError
from pixeldino.labels import IGNORE
from pixeldino.normalise import NODATA_DN, compute_zscore_stats, validate_spec
from pixeldino.train.params import TrainConfig

#: Chips per chip set that zscore statistics are computed from, and the pixel spacing that keeps about 48x48
#: pixels of each: medians need every sample in memory as float64.
_ZSCORE_CHIPS = 128
_ZSCORE_PIXELS = 48


@runtime_checkable
class ChipSet(Protocol):
    """What training reads from a chip store (:class:`pixeldino.chipstore.ChipStore` is one).

    A chip set may also have an ``ignore_value`` attribute: the mask value of its unlabelled pixels when that is
    not :data:`pixeldino.labels.IGNORE`.
    """

    @property
    def bands(self) -> Sequence[str]:
        """Band names in chip order."""
        ...

    def labelled(self, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
        """``(images (N, C, S, S) uint16, masks (N, S, S) uint8)`` of the ``train`` or ``val`` split."""
        ...

    def unlabelled(self) -> np.ndarray:
        """``(M, C, S, S)`` uint16 unlabelled chips."""
        ...


@dataclass(frozen=True)
class TrainingChips:
    """The chips of one training run, in memory (and itself a :class:`ChipSet`).

    Attributes:
        bands: band names in chip order; stored in the model so inference reads the same bands.
        labelled_images: ``(N, C, S, S)`` uint16 DN chips.
        labelled_masks: ``(N, S, S)`` uint8: 0 background, 1 RTS, 255 ignore (padding, unlabelled area).
        unlabelled_images: ``(M, C, S, S)`` uint16 chips; required by ``fixmatch`` and ``pixeldino``.
        val_images: ``(V, C, S, S)`` uint16 chips or None/empty (then no validation and threshold 0.5).
        val_masks: ``(V, S, S)`` uint8 masks like ``labelled_masks``.
    """

    bands: list[str]
    labelled_images: np.ndarray
    labelled_masks: np.ndarray
    unlabelled_images: np.ndarray | None = None
    val_images: np.ndarray | None = None
    val_masks: np.ndarray | None = None

    def labelled(self, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
        """The labelled chips and masks of ``split`` (``train`` or ``val``; empty arrays when there are none)."""
        if split == "train":
            return self.labelled_images, self.labelled_masks
        if self.val_images is None or self.val_masks is None:
            return self.labelled_images[:0], self.labelled_masks[:0]
        return self.val_images, self.val_masks

    def unlabelled(self) -> np.ndarray:
        """The unlabelled chips (an empty array when there are none)."""
        return self.unlabelled_images if self.unlabelled_images is not None else self.labelled_images[:0]

    @property
    def chip_size(self) -> int:
        """Chip height and width in pixels."""
        return int(self.labelled_images.shape[-1])

    @property
    def has_val(self) -> bool:
        """Whether there are validation chips."""
        return self.val_images is not None and len(self.val_images) > 0

    def check(self, config: TrainConfig) -> None:
        """Raise a one-line :class:`TrainingError` for chips that ``config`` cannot train on.

        Raises:
            TrainingError: no labelled chips, no positive pixels, inconsistent shapes or bands, mask values other
                than 0, 1 and 255, or no unlabelled chips for a semi-supervised mode.
        """
        images, masks = self.labelled_images, self.labelled_masks
        if images is None or len(images) == 0:
            raise TrainingError(
                "there are no labelled training chips; check that the labels overlap the scenes and re-run chip"
            )
        if images.ndim != 4 or masks.shape != (images.shape[0], *images.shape[2:]):
            raise TrainingError(
                f"labelled chips {images.shape} and masks {masks.shape} do not match (want (N,C,S,S) and (N,S,S))"
            )
        _, c, h, w = images.shape
        if c != len(self.bands):
            raise TrainingError(
                f"chips have {c} bands but {len(self.bands)} band names were given ({', '.join(self.bands)})"
            )
        if h != w or h % 2**config.depth:
            raise TrainingError(
                f"chips are {h}x{w} px; training needs square chips whose size is a multiple of {2**config.depth} "
                "(2**depth); re-chip or lower train.depth"
            )
        values = np.unique(masks)
        if not set(values.tolist()) <= {0, 1, IGNORE}:
            raise TrainingError(
                f"label masks hold values {values.tolist()}; only 0, 1 and {IGNORE} (ignore) are allowed"
            )
        if not (masks == 1).any():
            raise TrainingError(
                "the labelled training chips contain no RTS pixels (mask value 1); check the labels and re-run chip"
            )
        unlabelled = self.unlabelled_images
        if config.semi and (unlabelled is None or len(unlabelled) == 0):
            raise TrainingError(
                f"mode {config.mode} needs unlabelled chips but there are none; "
                "chip unlabelled scenes or use mode supervised+aug"
            )
        if unlabelled is not None and len(unlabelled) and unlabelled.shape[1:] != (c, h, w):
            raise TrainingError(f"unlabelled chips {unlabelled.shape[1:]} differ from labelled chips {(c, h, w)}")
        if self.val_images is not None and len(self.val_images):
            val_masks = self.val_masks
            if (
                val_masks is None
                or self.val_images.shape[1:] != (c, h, w)
                or val_masks.shape != (len(self.val_images), h, w)
            ):
                raise TrainingError(
                    f"validation chips {self.val_images.shape} / masks do not match the training chips "
                    f"{(c, h, w)}; re-run chip"
                )


def load_chips(
    chips: str | os.PathLike[str] | ChipSet, config: TrainConfig, bands: Sequence[str] | None = None
) -> TrainingChips:
    """Read the chips ``config`` trains on: train and val splits, and the unlabelled chips of a semi-supervised mode.

    Args:
        chips: a chip store written by ``pixeldino chip``, or a :class:`ChipSet` such as an open store.
        config: the run's parameters (the mode decides whether unlabelled chips are read at all).
        bands: the band list training expects; other bands in the store are an error (None: take the store's).

    Raises:
        TrainingError: other bands than ``bands``, or no labelled training chips.
        InputError: a path that is no readable chip store.
    """
    if isinstance(chips, (str, os.PathLike)):
        from pixeldino.chipstore import ChipStore

        source: Any = chips
        chip_set: ChipSet = ChipStore(chips)
    else:
        source, chip_set = getattr(chips, "path", "the chip set"), chips
    if bands is not None and list(bands) != list(chip_set.bands):
        raise TrainingError(
            f"{source}: chips have bands {', '.join(chip_set.bands)} but training expects {', '.join(bands)}; "
            "re-run chip with the configured bands"
        )
    images, masks = chip_set.labelled(split="train")
    val_images, val_masks = chip_set.labelled(split="val")
    ignore = int(getattr(chip_set, "ignore_value", IGNORE))
    if ignore != IGNORE:  # training's convention is 255; map a store written with another ignore value
        masks = np.where(masks == ignore, IGNORE, masks).astype(np.uint8)
        val_masks = np.where(val_masks == ignore, IGNORE, val_masks).astype(np.uint8)
    if len(images) == 0:
        raise TrainingError(
            f"{source}: the chip store has no labelled training chips; check the labels and re-run chip"
        )
    return TrainingChips(
        bands=list(chip_set.bands),
        labelled_images=images,
        labelled_masks=masks,
        unlabelled_images=chip_set.unlabelled() if config.semi else None,
        val_images=val_images,
        val_masks=val_masks,
    )


def resolve_normalisation(spec: dict[str, Any], images: list[np.ndarray], n_bands: int) -> dict[str, Any]:
    """The validated normalisation spec; ``zscore`` without statistics gets them from the training chips.

    Args:
        spec: ``train.normalisation``.
        images: the chip sets of the run (labelled and, in the semi-supervised modes, unlabelled); statistics come
            from an evenly spaced subset of each, over their pixels with data.
        n_bands: bands per chip.
    """
    if spec.get("method") == "zscore" and not ("center" in spec and "scale" in spec):
        stride = max(1, images[0].shape[-1] // _ZSCORE_PIXELS)
        subsets = [
            im[np.linspace(0, len(im) - 1, min(len(im), _ZSCORE_CHIPS)).astype(int)][:, :, ::stride, ::stride]
            for im in images
            if len(im)
        ]
        stacked = np.concatenate(subsets)
        spec = compute_zscore_stats(stacked, (stacked != NODATA_DN).any(axis=1))
    return validate_spec(spec, n_bands)
