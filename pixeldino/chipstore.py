"""Read a chip store written by ``pixeldino chip``, and the store-format constants writer and reader share.

Layout of the store (``chips.zarr``, zarr v3, one chunk per chip)::

    labelled/image   (N, C, S, S) uint16   DN as fetched (nodata 0)
    labelled/mask    (N, S, S)    uint8    1 = RTS, 0 = background, 255 = ignore (outside footprint, nodata, padding)
    labelled/split   (N,)         uint8    0 = train, 1 = val
    unlabelled/image (M, C, S, S) uint16
    attrs: pixeldino_chips, bands, chip_size, ignore_value, nodata, seed, scenes, index, stats

The reader lives apart from the writer (:mod:`pixeldino.chip`) so that training imports only what reading needs.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from pixeldino.errors import ConfigError, InputError

#: Format version written to the ``pixeldino_chips`` attribute; the reader refuses any other.
STORE_VERSION = 1
#: Code of each labelled split in ``labelled/split``.
SPLITS = {"train": 0, "val": 1}
#: Image value of pixels without data (as in the fetched scenes), and of chip parts outside a scene.
NODATA = 0


class ChipStore:
    """Read a chip store written by :func:`pixeldino.chip.run_chip`.

    Example:
        >>> store = ChipStore("results/demo/chips.zarr")
        >>> images, masks = store.labelled("train")  # (N, C, S, S) uint16, (N, S, S) uint8
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        """Open the store and check its format version.

        Raises:
            InputError: the store is missing, unreadable, of another format version, or holds no chips.
        """
        self.path = Path(path)
        if not self.path.exists():
            raise InputError(f"chip store {self.path} not found; run `pixeldino chip` first")
        try:
            self._root = zarr.open_group(str(self.path), mode="r")
        except Exception as exc:
            raise InputError(f"{self.path} is not a readable zarr store ({exc}); run `pixeldino chip` again") from exc
        attrs: dict[str, Any] = dict(self._root.attrs.asdict())
        if attrs.get("pixeldino_chips") != STORE_VERSION:
            raise InputError(
                f"{self.path} is not a pixeldino chip store (version {STORE_VERSION}); run `pixeldino chip` again"
            )
        self.bands: list[str] = list(attrs["bands"])
        self.chip_size: int = int(attrs["chip_size"])
        self.ignore_value: int = int(attrs["ignore_value"])
        self.index: list[dict[str, Any]] = list(attrs.get("index", []))
        self._image = self._array("labelled/image")
        self._mask = self._array("labelled/mask")
        self._split = np.asarray(self._array("labelled/split")[...], dtype=np.uint8)
        self._unlabelled = self._array("unlabelled/image")
        self._stats: dict[str, Any] = dict(attrs.get("stats", {}))
        if self.n_labelled == 0 and self.n_unlabelled == 0:
            raise InputError(
                f"chip store {self.path} holds no chips; check the chip settings and inputs, then "
                "run `pixeldino chip` again"
            )

    def _array(self, name: str) -> zarr.Array:
        """One of the store's arrays.

        Raises:
            InputError: the store lacks it (an interrupted or foreign write).
        """
        node = self._root.get(name)
        if not isinstance(node, zarr.Array):
            raise InputError(f"chip store {self.path} has no array {name}; run `pixeldino chip` again")
        return node

    @property
    def n_labelled(self) -> int:
        """Number of labelled chips (train and val)."""
        return int(self._image.shape[0])

    @property
    def n_unlabelled(self) -> int:
        """Number of unlabelled chips."""
        return int(self._unlabelled.shape[0])

    def labelled_indices(self, split: str = "train") -> np.ndarray:
        """Indices of the labelled chips of one split (``train`` or ``val``).

        Raises:
            ConfigError: ``split`` is neither ``train`` nor ``val``.
        """
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
        """Counts per split, bands and chip size, for logs."""
        n_val = int((self._split == SPLITS["val"]).sum())
        return (
            f"ChipStore({str(self.path)!r}: {self.n_labelled - n_val} train + {n_val} val labelled, "
            f"{self.n_unlabelled} unlabelled, {len(self.bands)} bands, {self.chip_size} px)"
        )
