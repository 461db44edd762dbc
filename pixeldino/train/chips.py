"""The chips a run trains on: read from a chip store (or any object that reads like one) and checked up front.

Every problem with the inputs is found here, before a model is built, and reported as one line that says what to
fix (:class:`~pixeldino.errors.TrainingError`).

**Memory budget.** A chip store is not read into memory as a whole unless it fits ``train.memory_budget_mb``
(:func:`memory_plan`): a chip set (the labelled training chips with their masks, the validation chips, the
unlabelled chips) that does not fit stays in the store as a :class:`~pixeldino.chipstore.ChipRows` view, and
training reads its chips batch by batch (with background prefetching, see :mod:`pixeldino.train.data`). Both kinds
of set return the same arrays for the same indices, so where the chips live never changes a run's numbers.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from pixeldino.errors import TrainingError
from pixeldino.labels import IGNORE
from pixeldino.normalise import NODATA_DN, compute_zscore_stats, n_aux, validate_spec
from pixeldino.train.params import TrainConfig

if TYPE_CHECKING:
    from pixeldino.chipstore import ChipArray, ChipRows

log = logging.getLogger(__name__)

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

    def labelled(self, split: str = "train") -> tuple[ChipArray, ChipArray]:
        """``(images (N, C, S, S) uint16, masks (N, S, S) uint8)`` of the ``train`` or ``val`` split."""
        ...

    def unlabelled(self) -> ChipArray:
        """``(M, C, S, S)`` uint16 unlabelled chips."""
        ...


#: The chip sets of a run, in the order :func:`memory_plan` keeps them in memory: the labelled training chips are
#: read every step and their masks are scanned by :meth:`TrainingChips.check`; validation chips are read in full at
#: every validation; the unlabelled chips are usually the largest set.
CHIP_SETS = ("train", "val", "unlabelled")
#: Bytes per MB of ``train.memory_budget_mb``.
MB = 1_000_000


@dataclass(frozen=True)
class TrainingChips:
    """The chips of one training run (and itself a :class:`ChipSet`): in-memory arrays, or for chip sets beyond
    the memory budget :class:`~pixeldino.chipstore.ChipRows` views that read from the chip store on demand.

    Attributes:
        bands: band names in chip order; stored in the model so inference reads the same bands.
        labelled_images: ``(N, C, S, S)`` uint16 DN chips.
        labelled_masks: ``(N, S, S)`` uint8: 0 background, 1 RTS, 255 ignore (padding, unlabelled area).
        unlabelled_images: ``(M, C, S, S)`` uint16 chips; required by ``fixmatch`` and ``pixeldino``.
        val_images: ``(V, C, S, S)`` uint16 chips or None/empty (then no validation and threshold 0.5).
        val_masks: ``(V, S, S)`` uint8 masks like ``labelled_masks``.
    """

    bands: list[str]
    labelled_images: ChipArray
    labelled_masks: ChipArray
    unlabelled_images: ChipArray | None = None
    val_images: ChipArray | None = None
    val_masks: ChipArray | None = None

    def labelled(self, split: str = "train") -> tuple[ChipArray, ChipArray]:
        """The labelled chips and masks of ``split`` (``train`` or ``val``; empty arrays when there are none)."""
        if split == "train":
            return self.labelled_images, self.labelled_masks
        if self.val_images is None or self.val_masks is None:
            return self.labelled_images[:0], self.labelled_masks[:0]
        return self.val_images, self.val_masks

    def unlabelled(self) -> ChipArray:
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

    @property
    def streamed(self) -> list[str]:
        """The chip sets (of :data:`CHIP_SETS`) that are read from the store on demand rather than held in memory."""
        sets = {"train": self.labelled_images, "val": self.val_images, "unlabelled": self.unlabelled_images}
        return [name for name in CHIP_SETS if sets[name] is not None and not isinstance(sets[name], np.ndarray)]

    def check(self, config: TrainConfig) -> None:
        """Raise a one-line :class:`TrainingError` for chips that ``config`` cannot train on.

        The label masks are scanned block by block, so a streamed chip set is checked without loading it.

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
        values: set[int] = set()
        positive = False
        for block in blocks(masks):
            values.update(np.unique(block).tolist())
            positive = positive or bool((block == 1).any())
        if not values <= {0, 1, IGNORE}:
            raise TrainingError(
                f"label masks hold values {sorted(values)}; only 0, 1 and {IGNORE} (ignore) are allowed"
            )
        if not positive:
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


def blocks(chips: ChipArray, size: int = 128) -> Iterator[np.ndarray]:
    """All of ``chips`` in order, ``size`` chips at a time, as in-memory arrays (a scan of a streamed set reads it
    once and never holds more than one block)."""
    for start in range(0, len(chips), size):
        yield np.asarray(chips[start : start + size])


def memory_plan(sizes: dict[str, int], budget_mb: float) -> dict[str, bool]:
    """Which chip sets to hold in memory: all of them when their total fits ``budget_mb``, else each set, in the
    order of :data:`CHIP_SETS`, that still fits what the sets before it left of the budget.

    Args:
        sizes: bytes of each chip set in memory (images and masks), by name of :data:`CHIP_SETS`.
        budget_mb: ``train.memory_budget_mb`` (0: stream everything).

    Returns:
        Per chip set in ``sizes``: True to read it into memory, False to stream it from the store.
    """
    left = budget_mb * MB
    plan: dict[str, bool] = {}
    for name in sorted(sizes, key=lambda n: CHIP_SETS.index(n) if n in CHIP_SETS else len(CHIP_SETS)):
        plan[name] = sizes[name] <= left
        if plan[name]:
            left -= sizes[name]
    return plan


def _streamed_chips(store: Any, config: TrainConfig, source: Any) -> TrainingChips:
    """The chips of ``config`` from a :class:`~pixeldino.chipstore.ChipStore`: each set in memory if
    :func:`memory_plan` says so, else a view that reads from the store on demand."""
    from pixeldino.chipstore import ChipRows

    images, masks = store.labelled_rows("train")
    val_images, val_masks = store.labelled_rows("val")
    if len(images) == 0:
        raise TrainingError(
            f"{source}: the chip store has no labelled training chips; check the labels and re-run chip"
        )
    ignore = int(getattr(store, "ignore_value", IGNORE))
    if ignore != IGNORE:  # training's convention is 255; map a store written with another ignore value on reading
        masks = ChipRows(masks.array, masks.rows, remap=(ignore, IGNORE))
        val_masks = ChipRows(val_masks.array, val_masks.rows, remap=(ignore, IGNORE))
    sets: dict[str, list[ChipRows]] = {"train": [images, masks], "val": [val_images, val_masks]}
    if config.semi:
        sets["unlabelled"] = [store.unlabelled_rows()]
    sizes = {name: sum(view.nbytes for view in views) for name, views in sets.items()}
    plan = memory_plan(sizes, config.memory_budget_mb)
    loaded: dict[str, list[ChipArray]] = {
        name: [view.load() if plan[name] else view for view in views] for name, views in sets.items()
    }
    for name, in_memory in plan.items():
        log.info(
            "%s chips (%.0f MB): %s", name, sizes[name] / MB,
            "in memory" if in_memory else f"streamed from {source} (memory budget {config.memory_budget_mb} MB)",
        )  # fmt: skip
    return TrainingChips(
        bands=list(store.bands),
        labelled_images=loaded["train"][0],
        labelled_masks=loaded["train"][1],
        unlabelled_images=loaded["unlabelled"][0] if "unlabelled" in loaded else None,
        val_images=loaded["val"][0],
        val_masks=loaded["val"][1],
    )


def load_chips(
    chips: str | os.PathLike[str] | ChipSet, config: TrainConfig, bands: Sequence[str] | None = None
) -> TrainingChips:
    """Read the chips ``config`` trains on: train and val splits, and the unlabelled chips of a semi-supervised mode.

    From a chip store, each of these sets is read into memory only if :func:`memory_plan` fits it into
    ``config.memory_budget_mb``; the others stay in the store and are streamed (:class:`pixeldino.chipstore.ChipRows`).
    Any other :class:`ChipSet` is taken as it is (its arrays are already in memory, or views of its own).

    Args:
        chips: a chip store written by ``pixeldino chip``, or a :class:`ChipSet` such as an open store.
        config: the run's parameters (the mode decides whether unlabelled chips are read at all).
        bands: the band list training expects; other bands in the store are an error (None: take the store's).

    Raises:
        TrainingError: other bands than ``bands``, or no labelled training chips.
        InputError: a path that is no readable chip store.
    """
    from pixeldino.chipstore import ChipStore

    if isinstance(chips, (str, os.PathLike)):
        source: Any = chips
        chip_set: ChipSet = ChipStore(chips)
    else:
        source, chip_set = getattr(chips, "path", "the chip set"), chips
    if bands is not None and list(bands) != list(chip_set.bands):
        raise TrainingError(
            f"{source}: chips have bands {', '.join(chip_set.bands)} but training expects {', '.join(bands)}; "
            "re-run chip with the configured bands"
        )
    if isinstance(chip_set, ChipStore):
        return _streamed_chips(chip_set, config, source)
    images, masks = chip_set.labelled(split="train")
    val_images, val_masks = chip_set.labelled(split="val")
    ignore = int(getattr(chip_set, "ignore_value", IGNORE))
    if ignore != IGNORE:  # training's convention is 255; map a store written with another ignore value
        masks = np.asarray(masks)
        val_masks = np.asarray(val_masks)
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


def resolve_normalisation(spec: dict[str, Any], images: Sequence[ChipArray], n_bands: int) -> dict[str, Any]:
    """The validated normalisation spec; ``zscore`` without statistics gets them from the training chips.

    Args:
        spec: ``train.normalisation``.
        images: the chip sets of the run (labelled and, in the semi-supervised modes, unlabelled); statistics come
            from an evenly spaced subset of each, over their pixels with data (only that subset is read from a
            streamed set).
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
        # auxiliary layers (the spec's 'aux' entries, the last bands) have their own scaling: no statistics
        spec = {**spec, **compute_zscore_stats(stacked, (stacked != NODATA_DN).any(axis=1), n_aux=n_aux(spec))}
    return validate_spec(spec, n_bands)
