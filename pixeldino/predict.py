"""Scene-scale inference: RTS probability and pseudo-class maps for a whole Sentinel-2 scene, in bounded memory.

The scene is processed block by block on a dask grid: each block reads its window plus a halo in one windowed
``rasterio`` read, runs the model on its patches (see :mod:`pixeldino.engines` for the inference engines) and is
streamed to a tiled GeoTIFF with windowed writes, which is then converted to a COG. No whole-scene array is ever held
in memory.

Seam-free by construction: patch origins lie on one *global* grid (multiples of the stride in scene pixel
coordinates) and every block carries a halo of one patch size, so each output pixel is blended from exactly the
same patches as in a whole-scene computation, whatever the chunking (sums in float64, so the order in which the
patches arrive does not matter either). Beyond the scene edges the data is mirrored (numpy's ``symmetric``), so
edge pixels are covered by full patches like any other pixel.

No patch runs through the model twice: a patch straddling a chunk border is needed by two or four blocks, and
the first block to reach it shares the result with the others through a small cache (see :class:`_PatchCache`).

Blending: each patch's probabilities are weighted by a separable sine window (largest at the patch centre, never
zero) and the sum is normalised by the summed weights. The pseudo-class QA map takes, per pixel, the argmax of the
patch whose window weight there is largest (the "centre-most" patch): blending K logits would need K float
accumulators per pixel, 24x the memory of the probability blend, for a QA layer.
"""

from __future__ import annotations

import colorsys
import contextlib
import hashlib
import logging
import math
import os
import tempfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import rasterio
import torch
from rasterio.errors import RasterioIOError
from rasterio.windows import Window

from pixeldino.bands import canonical_band
from pixeldino.errors import ConfigError, InputError, ModelError, PixeldinoError
from pixeldino.io import TILED_GTIFF_PROFILE, atomic_output, gtiff_to_cog
from pixeldino.engines import DEFAULT_BACKEND, DEFAULT_PRECISION, Engine, load_engine, resolve_engine, resolve_precision
from pixeldino.modelio import load_model
from pixeldino.normalise import normalise
from pixeldino.quality import nodata_lookup

log = logging.getLogger(__name__)

#: Probabilities are stored as ``round(p * PROBABILITY_SCALE)`` in uint8; 255 is nodata.
PROBABILITY_SCALE = 254
NODATA_U8 = 255
#: One worker runs the (locked) forward pass while the other reads, normalises and blends the next block;
#: more workers would only hold more blocks in memory.
_DASK_WORKERS = 2
#: GDAL block cache for the streamed writes and the COG conversion. GDAL's default (5 % of RAM) lets dirty blocks
#: pile up in proportion to the scene; a fixed cache keeps memory independent of scene size.
_GDAL_CACHE_MB = 256
_MIN_PATCH = 64

#: Fixed QA palette for pseudo-classes (tab20, Dark2 and four dark tones): the same colour means the same class
#: in every map a model produces. Classes beyond this list get deterministic golden-ratio hues.
_PALETTE_HEX = (
    "1f77b4 aec7e8 ff7f0e ffbb78 2ca02c 98df8a d62728 ff9896 9467bd c5b0d5 8c564b c49c94 e377c2 f7b6d2 7f7f7f "
    "c7c7c7 bcbd22 dbdb8d 17becf 9edae5 1b9e77 d95f02 7570b3 e7298a 66a61e e6ab02 a6761d 666666 000080 800000 "
    "008080 808000"
).split()


def pseudo_class_palette(n_classes: int) -> dict[int, tuple[int, int, int, int]]:
    """RGBA colour for each pseudo-class ``0..n_classes-1`` plus a transparent nodata entry (255).

    Args:
        n_classes: number of pseudo-classes K (at most 255).

    Returns:
        A rasterio colormap dictionary.
    """
    colours: dict[int, tuple[int, int, int, int]] = {}
    for k in range(n_classes):
        if k < len(_PALETTE_HEX):
            h = _PALETTE_HEX[k]
            colours[k] = (int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16), 255)
        else:
            r, g, b = colorsys.hsv_to_rgb((k * 0.618033988749895) % 1.0, 0.75, 0.85)
            colours[k] = (round(r * 255), round(g * 255), round(b * 255), 255)
    colours[NODATA_U8] = (0, 0, 0, 0)
    return colours


def model_id(model_path: str | os.PathLike[str]) -> str:
    """Short identifier of a model: the first 12 hex digits of the SHA-256 of its weights file."""
    weights = Path(model_path)
    if weights.suffix == ".json":
        weights = weights.with_suffix(".safetensors")
    digest = hashlib.sha256()
    with open(weights, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


def _canonical_or_raw(name: str | None) -> str | None:
    if name is None:
        return None
    try:
        return canonical_band(name)
    except PixeldinoError:
        return name.strip()


def select_band_indexes(src: rasterio.io.DatasetReader, bands: list[str], scene: Path, model: Path) -> list[int]:
    """1-based indexes of ``bands`` in ``src``, matched by band description (provider aliases accepted).

    Raises:
        InputError: when the scene lacks one of the bands.
    """
    available = {_canonical_or_raw(d): i + 1 for i, d in enumerate(src.descriptions) if d}
    wanted = [_canonical_or_raw(b) for b in bands]
    missing = [b for b in wanted if b not in available]
    if missing:
        have = ", ".join(str(d) for d in src.descriptions if d) or "no band descriptions"
        raise InputError(
            f"{scene}: lacks band(s) {', '.join(missing)} that model {model} needs (scene has {have}); "
            "use a scene with these bands, named in the band descriptions"
        )
    return [available[b] for b in wanted]


def default_patch_size(chip_size: int | None, multiple: int) -> int:
    """The model's chip size rounded to its input multiple, at least 64 pixels."""
    base = chip_size or _MIN_PATCH
    rounded = multiple * max(1, round(base / multiple))
    return max(rounded, multiple * math.ceil(_MIN_PATCH / multiple))


def normalisation_lut(spec: dict[str, Any], n_bands: int, dtype: np.dtype | str) -> np.ndarray | None:
    """``(n_bands, 2**bits)`` table of the normalised value of every DN of an 8- or 16-bit unsigned scene.

    Normalising a patch by table look-up is an order of magnitude faster than computing log/exp per pixel and
    gives the same float32 values. None for other data types (normalised directly).
    """
    dtype = np.dtype(dtype)
    if dtype not in (np.dtype(np.uint8), np.dtype(np.uint16)):
        return None
    dn = np.arange(np.iinfo(dtype).max + 1, dtype=dtype)
    return np.ascontiguousarray(normalise(np.broadcast_to(dn, (n_bands, dn.size)), spec, band_axis=0))


def patch_window(size: int) -> np.ndarray:
    """Separable blending weights: a sine bump, largest at the centre and strictly positive at the rim."""
    w1 = np.sin(np.pi * (np.arange(size, dtype=np.float64) + 0.5) / size)
    return np.outer(w1, w1).astype(np.float32)


def _axis_chunks(n: int, chunk: int, halo: int) -> tuple[int, ...]:
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


class _WindowReader:
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
            return self.dataset.read(self.indexes[bands[0] : bands[1]], window=window)

    def read_with_halo(self, rows: tuple[int, int], cols: tuple[int, int], halo: int) -> np.ndarray:
        """All bands over ``rows`` x ``cols`` grown by ``halo`` on each side, in one windowed read; beyond the
        raster's edges mirrored (numpy's ``symmetric``, what dask calls ``reflect``). Needs ``halo`` <= the
        raster's size."""
        height, width = self.shape[1:]
        (r0, r1), (c0, c1) = (rows[0] - halo, rows[1] + halo), (cols[0] - halo, cols[1] + halo)
        inside = (max(r0, 0), min(r1, height)), (max(c0, 0), min(c1, width))
        window = Window.from_slices(slice(*inside[0]), slice(*inside[1]))
        with self.lock:
            data = self.dataset.read(self.indexes, window=window)
        pad = ((0, 0), (inside[0][0] - r0, r1 - inside[0][1]), (inside[1][0] - c0, c1 - inside[1][1]))
        return np.pad(data, pad, mode="symmetric") if any(any(p) for p in pad) else data


class _WindowWriter:
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


class _PatchCache:
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


class _PatchPredictor:
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
        self.cache = _PatchCache()
        self.lut = lut  # see normalisation_lut; None: normalise each patch directly

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
                    pseudo = outs[1].clone() if pseudo is None and len(transforms) > 1 else (
                        outs[1] if pseudo is None else pseudo + outs[1])
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


def _predict_block(placeholder: np.ndarray, reader: _WindowReader, predictor: _PatchPredictor,
                   block_info: dict | None = None) -> np.ndarray:
    """One output block: read its window with the halo, run the predictor on it."""
    (y0, y1), (x0, x1) = block_info[None]["array-location"][1:]  # type: ignore[index]
    return predictor(reader.read_with_halo((y0, y1), (x0, x1), predictor.halo), block_info)


def _apply_quality(pred: np.ndarray, quality: np.ndarray, blank: np.ndarray) -> np.ndarray:
    """Blank the pixels whose quality-mask class the policy makes nodata (``blank``: see ``nodata_lookup``)."""
    out = pred.copy()
    out[:, blank[quality[0]]] = NODATA_U8
    return out


def _check_same_grid(src: rasterio.io.DatasetReader, other: rasterio.io.DatasetReader, scene: Path, mask: Path) -> None:
    same = (
        src.crs == other.crs
        and (src.width, src.height) == (other.width, other.height)
        and src.transform.almost_equals(other.transform, precision=1e-6)
    )
    if not same:
        raise InputError(
            f"{mask}: quality mask grid ({other.crs}, {other.width}x{other.height}) differs from scene {scene} "
            f"({src.crs}, {src.width}x{src.height}); provide a mask on the scene's CRS and pixel grid"
        )


def _stream_profile(src: rasterio.io.DatasetReader) -> dict[str, Any]:
    return dict(
        TILED_GTIFF_PROFILE,
        width=src.width,
        height=src.height,
        count=1,
        dtype="uint8",
        nodata=NODATA_U8,
        crs=src.crs,
        transform=src.transform,
    )


@contextlib.contextmanager
def _open_raster(path: Path, what: str) -> Iterator[rasterio.io.DatasetReader]:
    if not path.exists():
        raise InputError(f"{path}: {what} not found; check the path")
    try:
        ds = rasterio.open(path)
    except RasterioIOError as exc:
        raise InputError(f"{path}: cannot read {what} ({exc}); re-create or re-download it") from exc
    with ds:
        yield ds


def predict_scene(
    scene_path: str | os.PathLike[str],
    model_path: str | os.PathLike[str],
    out_prob: str | os.PathLike[str],
    *,
    out_pseudo: str | os.PathLike[str] | None = None,
    patch_size: int | None = None,
    overlap: float = 0.25,
    batch_size: int = 8,
    chunk_size: int = 2048,
    tta: bool = False,
    device: str = "auto",
    num_threads: int | None = None,
    quality_mask: str | os.PathLike[str] | None = None,
    nodata_classes: Sequence[str] | None = None,
    backend: str = DEFAULT_BACKEND,
    precision: str = DEFAULT_PRECISION,
) -> Path:
    """Predict the RTS probability (and optionally the pseudo-class QA map) of a whole scene.

    Args:
        scene_path: multi-band uint16 GeoTIFF (reflectance x 10000, nodata 0), bands named in the descriptions.
        model_path: ``.safetensors`` model file with its ``.json`` metadata beside it.
        out_prob: output COG: uint8 ``round(p * 254)``, 255 = nodata, band scale 1/254.
        out_pseudo: optional output COG with the pseudo-class argmax (uint8, 255 = nodata, fixed palette).
        patch_size: model input size; default: the model's chip size rounded to its multiple, at least 64.
        overlap: fraction of a patch shared with its neighbour (0 <= overlap < 1).
        batch_size: patches per forward pass.
        chunk_size: dask block size in pixels (raised to at least one patch, the halo).
        tta: average over the 8 flips/rotations (8x slower).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        num_threads: torch intra-op threads on CPU; None leaves torch's default.
        quality_mask: optional uint8 quality mask on the scene's grid (:mod:`pixeldino.quality` classes).
        nodata_classes: mask classes written as nodata (default ``quality.DEFAULT_NODATA_CLASSES``); pixels of
            every other class are predicted.
        backend: inference engine: ``"auto"``, ``"torch"``, ``"onnxruntime"`` or ``"openvino"`` (see
            :mod:`pixeldino.engines`; exports are cached beside the model file).
        precision: ``"auto"`` (bfloat16 on a GPU, float32 on the CPU), ``"float32"`` or ``"bfloat16"``.

    Returns:
        ``Path(out_prob)``.

    Raises:
        InputError: unreadable scene, missing bands, mismatching quality mask.
        ModelError: missing or corrupt model.
        ConfigError: invalid patch size, overlap, batch or chunk size; unknown or uninstalled backend.
    """
    scene, out_prob = Path(scene_path), Path(out_prob)
    if not 0.0 <= overlap < 1.0:
        raise ConfigError(f"overlap {overlap} must be in [0, 1)")
    if batch_size < 1 or chunk_size < 1:
        raise ConfigError(f"batch_size ({batch_size}) and chunk_size ({chunk_size}) must be positive")
    if num_threads:
        torch.set_num_threads(num_threads)
    engine_name, dev = resolve_engine(backend, device, precision)
    precision = resolve_precision(precision, engine_name, dev)
    model, meta = load_model(model_path, dev if engine_name == "torch" else "cpu")
    mid = model_id(model_path)
    multiple = model.config.multiple
    n_classes = model.config.n_pseudo_classes
    if out_pseudo is not None and n_classes > NODATA_U8:
        raise ModelError(f"{model_path}: {n_classes} pseudo-classes do not fit a uint8 map; omit out_pseudo")
    if patch_size is None:
        patch = default_patch_size(meta.get("chip_size"), multiple)
    elif patch_size < multiple or patch_size % multiple:
        raise ConfigError(f"patch_size {patch_size} must be a positive multiple of {multiple} for model {model_path}")
    else:
        patch = patch_size

    with contextlib.ExitStack() as stack:
        src = stack.enter_context(_open_raster(scene, "scene"))
        indexes = select_band_indexes(src, list(meta["bands"]), scene, Path(model_path))
        short = min(src.height, src.width)
        if short < multiple:
            raise InputError(f"{scene}: {src.width}x{src.height} px is smaller than the model input multiple {multiple}")
        patch = min(patch, short // multiple * multiple)  # reflect padding needs the scene to be at least a patch
        stride = max(1, round(patch * (1.0 - overlap)))
        halo = patch
        nodata = src.nodata if src.nodata is not None else 0
        chunks = ((len(indexes),), _axis_chunks(src.height, chunk_size, halo), _axis_chunks(src.width, chunk_size, halo))
        engine = load_engine(engine_name, model, dev, model_path=model_path, model_id=mid, patch=patch,
                             batch_size=batch_size, num_threads=num_threads, precision=precision)
        log.info("predicting %s with the %s engine on %s in %s (patch %d, batch %d)", scene.name, engine.name, dev,
                 precision, patch, batch_size)

        reader = _WindowReader(src, indexes, threading.Lock())
        predictor = _PatchPredictor(
            engine,
            meta["normalisation"],
            patch=patch,
            stride=stride,
            halo=halo,
            batch_size=batch_size,
            nodata=nodata,
            tta=tta,
            want_pseudo=out_pseudo is not None,
            chunks=(chunks[1], chunks[2]),
            lut=normalisation_lut(meta["normalisation"], len(indexes), reader.dtype),
        )
        # Each block reads its own window plus the halo (not whole neighbouring chunks, as map_overlap would):
        # one block's input is alive per worker, and the scene is read about once (plus the halos).
        out_grid = da.zeros((predictor.n_out, src.height, src.width), chunks=((predictor.n_out,), chunks[1], chunks[2]),
                            dtype=np.uint8)
        pred = da.map_blocks(
            _predict_block, out_grid, reader=reader, predictor=predictor, dtype=np.uint8,
            meta=np.empty((0, 0, 0), np.uint8),
        )
        if quality_mask is not None:
            qpath = Path(quality_mask)
            qsrc = stack.enter_context(_open_raster(qpath, "quality mask"))
            _check_same_grid(src, qsrc, scene, qpath)
            qreader = _WindowReader(qsrc, [1], threading.Lock())
            quality = da.from_array(
                qreader, chunks=((1,), chunks[1], chunks[2]), lock=False, asarray=False, meta=np.empty((0, 0, 0), qreader.dtype)
            )
            blank = nodata_lookup(nodata_classes)
            pred = da.map_blocks(_apply_quality, pred, quality, blank=blank, dtype=np.uint8,
                                 meta=np.empty((0, 0, 0), np.uint8))

        out_prob.parent.mkdir(parents=True, exist_ok=True)
        tmpdir = Path(stack.enter_context(tempfile.TemporaryDirectory(dir=out_prob.parent, prefix=".pixeldino-predict-")))
        scene_tags = src.tags()
        tags = {
            "MODEL": mid,
            "THRESHOLD": str(float(meta["threshold"]) if meta.get("threshold") is not None else 0.5),
            "PROBABILITY_SCALE": str(PROBABILITY_SCALE),
            "BANDS": ",".join(meta["bands"]),
            "PATCH_SIZE": str(patch),
            "OVERLAP": str(overlap),
            "TTA": str(bool(tta)).lower(),
            "ENGINE": engine.name,
            "PRECISION": precision,
        }
        # provenance from the scene (pixeldino fetch writes lower-case names; accept either)
        by_lower = {k.lower(): v for k, v in scene_tags.items()}
        tags.update({k: by_lower[k.lower()] for k in ("SCENE_ID", "TILE", "DATETIME") if k.lower() in by_lower})

        stream_paths = [tmpdir / "probability.tif"] + ([tmpdir / "pseudo.tif"] if out_pseudo is not None else [])
        sinks = [stack.enter_context(rasterio.open(p, "w", **_stream_profile(src))) for p in stream_paths]
        targets = [_WindowWriter(s, threading.Lock()) for s in sinks]
        # One band of chunk-rows per dask computation, so memory is bounded by the blocks in flight, not by the
        # scene. Border patches still run through the model once: the predictor's patch cache outlives the bands.
        row_edges = np.cumsum((0, *chunks[1]))
        with rasterio.Env(GDAL_CACHEMAX=_GDAL_CACHE_MB), dask.config.set(scheduler="threads", num_workers=_DASK_WORKERS):
            for r0, r1 in zip(row_edges[:-1], row_edges[1:]):
                rows = slice(int(r0), int(r1))
                da.store(
                    [pred[i, rows] for i in range(len(sinks))],
                    targets,
                    regions=[(rows, slice(None))] * len(sinks),
                    lock=False,
                )

        sinks[0].scales = (1.0 / PROBABILITY_SCALE,)
        sinks[0].set_band_description(1, "rts_probability")
        sinks[0].update_tags(**tags)
        if out_pseudo is not None:
            sinks[1].set_band_description(1, "pseudo_class")
            pseudo_tags = {k: v for k, v in tags.items() if k != "PROBABILITY_SCALE"}
            sinks[1].update_tags(**pseudo_tags, N_PSEUDO_CLASSES=str(n_classes))
            sinks[1].write_colormap(1, pseudo_class_palette(n_classes))
        for s in sinks:
            s.close()

        # Both final files appear together (renamed at exit) or not at all.
        finals = [out_prob] + ([Path(out_pseudo)] if out_pseudo is not None else [])
        tmp_finals = [stack.enter_context(atomic_output(f)) for f in finals]
        for stream, tmp in zip(stream_paths, tmp_finals):
            gtiff_to_cog(stream, tmp)
    return out_prob
