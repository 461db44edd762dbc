"""Patch machinery of scene inference: globally aligned patches, batched through the model, blended per block.

See :mod:`pixeldino.predict` for the design (global patch grid, halo, blending window, patch cache); this module
holds the pieces that run inside each dask block.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import rasterio
import torch
from rasterio.windows import Window

from pixeldino.engines import Engine
from pixeldino.normalise import normalise
from pixeldino.probability import NODATA_U8, PROBABILITY_SCALE
from pixeldino.rasters import read_raster


def patch_window(size: int) -> np.ndarray:
    """Separable blending weights: a sine bump, largest at the centre and strictly positive at the rim."""
    w1 = np.sin(np.pi * (np.arange(size, dtype=np.float64) + 0.5) / size)
    return np.outer(w1, w1).astype(np.float32)


def axis_chunks(n: int, chunk: int, halo: int) -> tuple[int, ...]:
    """Chunk sizes along one axis, none smaller than the halo (so that mirroring at the edges never runs out)."""
    size = max(chunk, halo)
    sizes = [size] * (n // size)
    rest = n - size * len(sizes)
    if rest:
        if rest >= halo or not sizes:
            sizes.append(rest)
        else:
            sizes[-1] += rest
    return tuple(sizes)


class WindowReader:
    """Array-like view of some bands of an open raster; dask slices it and each slice is one windowed read."""

    def __init__(self, dataset: rasterio.io.DatasetReader, indexes: list[int], lock: threading.Lock) -> None:
        self.dataset = dataset
        self.indexes = indexes
        self.lock = lock
        self.shape = (len(indexes), dataset.height, dataset.width)
        self.dtype = np.dtype(dataset.dtypes[indexes[0] - 1])
        self.ndim = 3

    def __getitem__(self, key: tuple[slice, slice, slice]) -> np.ndarray:
        bands, rows, cols = (k.indices(n) for k, n in zip(key, self.shape))
        window = Window.from_slices(slice(rows[0], rows[1]), slice(cols[0], cols[1]))
        with self.lock:  # a GDAL dataset handle is not thread-safe
            return read_raster(self.dataset, self.indexes[bands[0] : bands[1]], window=window)

    def read_with_halo(self, rows: tuple[int, int], cols: tuple[int, int], halo: int) -> np.ndarray:
        """All bands over ``rows`` x ``cols`` grown by ``halo`` on each side, in one windowed read; beyond the
        raster's edges mirrored (numpy's ``symmetric``, what dask calls ``reflect``). Needs ``halo`` <= the
        raster's size."""
        height, width = self.shape[1:]
        (r0, r1), (c0, c1) = (rows[0] - halo, rows[1] + halo), (cols[0] - halo, cols[1] + halo)
        inside = (max(r0, 0), min(r1, height)), (max(c0, 0), min(c1, width))
        window = Window.from_slices(slice(*inside[0]), slice(*inside[1]))
        with self.lock:
            data = read_raster(self.dataset, self.indexes, window=window)
        pad = ((0, 0), (inside[0][0] - r0, r1 - inside[0][1]), (inside[1][0] - c0, c1 - inside[1][1]))
        return np.pad(data, pad, mode="symmetric") if any(any(p) for p in pad) else data


class WindowWriter:
    """Target for :func:`dask.array.store`: each stored chunk becomes one windowed write."""

    def __init__(self, dataset: rasterio.io.DatasetWriter, lock: threading.Lock) -> None:
        self.dataset = dataset
        self.lock = lock

    def __setitem__(self, key: tuple[slice, slice], value: np.ndarray) -> None:
        window = Window.from_slices(key[0], key[1])
        with self.lock:
            self.dataset.write(value, 1, window=window)


PatchResult = tuple[np.ndarray, np.ndarray | None]
_CLAIMED = object()


class PatchCache:
    """Patch predictions shared between the blocks that need them, so that each patch runs through the model once.

    Every block needs all patches that touch its core, so a patch straddling a chunk border is needed by two (or
    four) blocks. The first block to reach it claims it, runs the model and leaves the result here; each other
    block takes it, and the last one removes it, so memory is bounded by the border patches of the blocks in
    flight. A block that finds a patch claimed but not ready defers it and, if it is still not ready at the end,
    computes it itself: blocks never wait for each other, which could deadlock.
    """

    def __init__(self) -> None:
        self._items: dict[tuple[int, int], list[Any]] = {}  # key -> [consumers still to come, result | _CLAIMED]
        self._lock = threading.Lock()

    def take_or_claim(self, key: tuple[int, int], consumers: int) -> PatchResult | object | None:
        """The cached result, ``_CLAIMED`` if another block is computing it, or None: the caller must compute it."""
        with self._lock:
            item = self._items.get(key)
            if item is None:
                if consumers > 1:
                    self._items[key] = [consumers, _CLAIMED]
                return None
            if item[1] is _CLAIMED:
                return _CLAIMED
            self._consume(key, item)
            return item[1]

    def take_or_release(self, key: tuple[int, int]) -> PatchResult | None:
        """The cached result if ready; otherwise give up this block's share (the caller computes it itself)."""
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            self._consume(key, item)
            return None if item[1] is _CLAIMED else item[1]

    def put(self, key: tuple[int, int], value: PatchResult) -> None:
        """Store a result the caller claimed (and consumed itself)."""
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                item[1] = value
                self._consume(key, item)

    def _consume(self, key: tuple[int, int], item: list[Any]) -> None:
        item[0] -= 1
        if item[0] <= 0:
            del self._items[key]

    def __len__(self) -> int:
        return len(self._items)


class PatchPredictor:
    """Runs one dask block: cuts globally aligned patches, batches them through the model and blends them."""

    def __init__(
        self,
        engine: Engine,
        spec: dict[str, Any],
        *,
        patch: int,
        stride: int,
        halo: int,
        batch_size: int,
        nodata: float,
        tta: bool,
        want_pseudo: bool,
        chunks: tuple[tuple[int, ...], tuple[int, ...]],
        lut: np.ndarray | None = None,
    ) -> None:
        self.engine = engine
        self.spec = spec
        self.patch = patch
        self.stride = stride
        self.halo = halo
        self.batch_size = batch_size
        self.nodata = nodata
        self.tta = tta
        self.want_pseudo = want_pseudo
        self.window = patch_window(patch)
        self.forward_lock = threading.Lock()
        self.n_out = 2 if want_pseudo else 1
        self.block_starts = [np.cumsum((0, *c))[:-1] for c in chunks]
        self.extent = [int(sum(c)) for c in chunks]
        self.cache = PatchCache()
        self.lut = lut  # see pixeldino.normalise.lookup_table; None: normalise each patch directly

    def _origins(self, start: int, stop: int) -> range:
        """Global patch origins (multiples of the stride) whose patch intersects ``[start, stop)``."""
        first = ((start - self.patch) // self.stride + 1) * self.stride
        return range(first, stop, self.stride)

    def _block_span(self, axis: int, origin: int) -> tuple[int, int]:
        """First and last block index along ``axis`` whose core the patch at ``origin`` touches."""
        lo, hi = max(origin, 0), min(origin + self.patch, self.extent[axis]) - 1
        starts = self.block_starts[axis]
        return int(np.searchsorted(starts, lo, "right")) - 1, int(np.searchsorted(starts, hi, "right")) - 1

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Probabilities ``(B, P, P)`` and pseudo-class argmax ``(B, P, P)`` (or None) for a normalised batch."""
        transforms = [(k, flip) for flip in (False, True) for k in range(4)] if self.tta else [(0, False)]
        with self.forward_lock, torch.inference_mode():
            xt = torch.from_numpy(x).to(self.engine.device)
            prob = torch.zeros((x.shape[0], 1, x.shape[2], x.shape[3]), device=self.engine.device)
            pseudo = None
            for k, flip in transforms:
                v = torch.rot90(xt, k, dims=(2, 3)) if k else xt
                v = torch.flip(v, dims=(3,)) if flip else v
                rts, pse = self.engine(v)  # views of the engine's buffers, valid until its next call
                outs = [rts, pse] if self.want_pseudo else [rts]
                if flip:
                    outs = [torch.flip(o, dims=(3,)) for o in outs]
                if k:
                    outs = [torch.rot90(o, -k, dims=(2, 3)) for o in outs]
                prob += torch.sigmoid(outs[0])
                if self.want_pseudo:
                    pseudo = (
                        outs[1].clone()
                        if pseudo is None and len(transforms) > 1
                        else (outs[1] if pseudo is None else pseudo + outs[1])
                    )
            prob /= len(transforms)
            labels = pseudo.argmax(dim=1).to(torch.uint8).cpu().numpy() if pseudo is not None else None
            return prob[:, 0].cpu().numpy(), labels

    def _normalise_into(self, patch: np.ndarray, out: np.ndarray) -> None:
        if self.lut is None:
            out[:] = normalise(patch, self.spec, band_axis=0)
            return
        for band in range(patch.shape[0]):  # a table look-up per band instead of log/exp per pixel
            np.take(self.lut[band], patch[band], out=out[band], mode="clip")

    def __call__(self, block: np.ndarray, block_info: dict | None = None) -> np.ndarray:
        info = block_info[None]  # type: ignore[index]
        (y0, y1), (x0, x1) = info["array-location"][1:]
        by, bx = info["chunk-location"][1:]
        h, p = self.halo, self.patch
        core = (y1 - y0, x1 - x0)
        valid = (block != self.nodata).any(axis=0)
        # float64 sums: the order in which patches arrive depends on the chunking and on timing, the result not
        prob_sum = np.zeros(core, np.float64)
        weight_sum = np.zeros(core, np.float64)
        if self.want_pseudo:
            best_weight = np.zeros(core, np.float32)
            best_rank = np.full(core, np.iinfo(np.int64).max, np.int64)
            labels = np.zeros(core, np.uint8)

        def accumulate(oy: int, ox: int, result: PatchResult) -> None:
            prob, pseudo = result
            ya, yb, xa, xb = max(oy, y0), min(oy + p, y1), max(ox, x0), min(ox + p, x1)
            src = (slice(ya - oy, yb - oy), slice(xa - ox, xb - ox))
            dst = (slice(ya - y0, yb - y0), slice(xa - x0, xb - x0))
            w = self.window[src]
            prob_sum[dst] += w * prob[src]
            weight_sum[dst] += w
            if pseudo is not None:
                # Centre-most patch wins; exact ties go to the earlier patch in global order, in any chunking.
                rank = (oy // self.stride) * (1 << 32) + ox // self.stride
                better = (w > best_weight[dst]) | ((w == best_weight[dst]) & (rank < best_rank[dst]))
                best_weight[dst] = np.where(better, w, best_weight[dst])
                best_rank[dst] = np.where(better, rank, best_rank[dst])
                labels[dst] = np.where(better, pseudo[src], labels[dst])

        # Visit patches shared with blocks that come later first (a neighbour running at the same time will find
        # them ready), the block's own patches next, and patches shared with earlier blocks last.
        todo = []
        for oy in self._origins(y0, y1):
            ry = self._block_span(0, oy)
            for ox in self._origins(x0, x1):
                ly, lx = oy - y0 + h, ox - x0 + h
                if not valid[ly : ly + p, lx : lx + p].any():  # all-nodata patches never reach the model
                    continue
                rx = self._block_span(1, ox)
                earlier = ry[0] < by or rx[0] < bx
                later = ry[1] > by or rx[1] > bx
                consumers = (ry[1] - ry[0] + 1) * (rx[1] - rx[0] + 1)
                todo.append((2 if earlier else (0 if later else 1), oy, ox, ly, lx, consumers))
        todo.sort(key=lambda t: t[0])

        batch: list[tuple[int, int, int, int, bool]] = []

        def run_batch() -> None:
            x = np.empty((len(batch), block.shape[0], p, p), np.float32)
            for i, (_, _, ly, lx, _) in enumerate(batch):
                self._normalise_into(block[:, ly : ly + p, lx : lx + p], x[i])
                inside = valid[ly : ly + p, lx : lx + p]
                if not inside.all():
                    x[i] *= inside  # nodata pixels enter the model as 0, as in training
            probs, pseudo = self.forward(x)
            for i, (oy, ox, _, _, shared) in enumerate(batch):
                result = (probs[i], pseudo[i] if pseudo is not None else None)
                if shared:
                    self.cache.put((oy, ox), result)
                accumulate(oy, ox, result)
            batch.clear()

        deferred = []
        for _, oy, ox, ly, lx, consumers in todo:
            found = self.cache.take_or_claim((oy, ox), consumers)
            if found is _CLAIMED:
                deferred.append((oy, ox, ly, lx))
            elif found is not None:
                accumulate(oy, ox, found)  # type: ignore[arg-type]
            else:
                batch.append((oy, ox, ly, lx, consumers > 1))
                if len(batch) == self.batch_size:
                    run_batch()
        for oy, ox, ly, lx in deferred:
            found = self.cache.take_or_release((oy, ox))
            if found is not None:
                accumulate(oy, ox, found)
            else:
                batch.append((oy, ox, ly, lx, False))
                if len(batch) == self.batch_size:
                    run_batch()
        if batch:
            run_batch()

        out = np.full((self.n_out, *core), NODATA_U8, np.uint8)
        ok = valid[h : h + core[0], h : h + core[1]] & (weight_sum > 0)
        prob = prob_sum[ok] / weight_sum[ok]
        out[0][ok] = np.rint(np.clip(prob, 0.0, 1.0) * PROBABILITY_SCALE).astype(np.uint8)
        if self.want_pseudo:
            out[1][ok] = labels[ok]
        return out


def predict_block(
    placeholder: np.ndarray, reader: WindowReader, predictor: PatchPredictor, block_info: dict | None = None
) -> np.ndarray:
    """One output block: read its window with the halo, run the predictor on it."""
    (y0, y1), (x0, x1) = block_info[None]["array-location"][1:]  # type: ignore[index]
    return predictor(reader.read_with_halo((y0, y1), (x0, x1), predictor.halo), block_info)


def apply_quality(pred: np.ndarray, quality: np.ndarray, blank: np.ndarray) -> np.ndarray:
    """Blank the pixels whose quality-mask class the policy makes nodata (``blank``: see ``nodata_lookup``)."""
    out = pred.copy()
    out[:, blank[quality[0]]] = NODATA_U8
    return out
