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
the first block to reach it shares the result with the others through a small cache (see :class:`PatchCache`).

Blending: each patch's probabilities are weighted by a separable sine window (largest at the patch centre, never
zero) and the sum is normalised by the summed weights. The pseudo-class QA map takes, per pixel, the argmax of the
patch whose window weight there is largest (the "centre-most" patch): blending K logits would need K float
accumulators per pixel, 24x the memory of the probability blend, for a QA layer.
"""

from __future__ import annotations

import colorsys
import contextlib
import logging
import math
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import dask
import dask.array as da
import numpy as np
import rasterio
import torch

from pixeldino import probability
from pixeldino.bands import band_indexes
from pixeldino.engines import (
    BACKENDS,
    DEFAULT_BACKEND,
    DEFAULT_PRECISION,
    PRECISIONS,
    Backend,
    Precision,
    load_engine,
    resolve_engine,
    resolve_precision,
)
from pixeldino.errors import ConfigError, InputError, ModelError
from pixeldino.io import atomic_output, gtiff_to_cog, temporary
from pixeldino.modelio import load_model, model_id  # model_id: re-exported, its home is modelio
from pixeldino.normalise import lookup_table
from pixeldino.patches import (
    PatchPredictor,
    WindowReader,
    WindowWriter,
    apply_quality,
    axis_chunks,
    predict_block,
)
from pixeldino.probability import NODATA_U8, PROBABILITY_SCALE
from pixeldino.quality import Grid, nodata_lookup, open_quality_mask
from pixeldino.rasters import open_raster
from pixeldino.terrain import missing_band_hint

log = logging.getLogger(__name__)

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


@dataclass
class PredictParams:
    """Scene inference settings (config section ``predict``; ``pixeldino predict`` options).

    Attributes:
        patch_size: model input size in pixels; null: the model's chip size rounded to the model's input multiple,
            at least 64.
        overlap: fraction of a patch shared with its neighbour (patches are blended with a sine window).
        batch_size: patches per forward pass.
        chunk_size: dask block size in pixels (raised to at least one patch, the halo); bounds the memory.
        tta: average the 8 flips/rotations (8x slower).
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda``.
        backend: inference engine. ``auto``: torch on a GPU, else the fastest one installed on the CPU
            (onnxruntime, then openvino, then torch; in bfloat16 openvino, then torch). onnxruntime and openvino run
            on the CPU only (pip install 'pixeldino[engines]'); the model is exported once and cached beside the
            model file (<model>.engines/).
        precision: ``auto``: bfloat16 on a GPU (autocast), float32 on the CPU (probabilities equal to torch's within
            1e-3 on every engine). bfloat16 on the CPU (backend torch or openvino) is 1.5-3x faster on CPUs with
            AVX-512-BF16 or AMX and moves probabilities by up to about 1e-2.
        num_threads: CPU threads for the model (null: torch's default; the workflow passes the rule's threads).
        dask_scheduler: run the scene's prediction as one task on a dask distributed cluster: a scheduler address
            (tcp://host:8786) or scheduler file (*.json). For CPU-only sites; Snakemake still decides what runs.
    """

    patch_size: int | None = field(default=None, metadata={"minimum": 16})
    overlap: float = field(default=0.25, metadata={"minimum": 0, "exclusiveMaximum": 1})
    batch_size: int = field(default=16, metadata={"minimum": 1})
    chunk_size: int = field(default=2048, metadata={"minimum": 64})
    tta: bool = False
    device: Literal["auto", "cpu", "cuda"] = "auto"
    backend: Backend = DEFAULT_BACKEND
    precision: Precision = DEFAULT_PRECISION
    num_threads: int | None = field(default=None, metadata={"minimum": 1, "cli": {"metavar": "N"}})
    dask_scheduler: str | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.overlap < 1.0:
            raise ConfigError(f"predict.overlap {self.overlap} must be in [0, 1)")
        if self.batch_size < 1 or self.chunk_size < 1:
            raise ConfigError(
                f"predict.batch_size ({self.batch_size}) and predict.chunk_size ({self.chunk_size}) must be positive"
            )
        if self.backend not in BACKENDS or self.precision not in PRECISIONS:
            raise ConfigError(
                f"predict.backend {self.backend!r} / predict.precision {self.precision!r}: choose "
                f"one of {', '.join(BACKENDS)} / {', '.join(PRECISIONS)}"
            )


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


def default_patch_size(chip_size: int | None, multiple: int) -> int:
    """The model's chip size rounded to its input multiple, at least 64 pixels."""
    base = chip_size or _MIN_PATCH
    rounded = multiple * max(1, round(base / multiple))
    return max(rounded, multiple * math.ceil(_MIN_PATCH / multiple))


def run_predict(
    params: PredictParams,
    scene_path: str | os.PathLike[str],
    model_path: str | os.PathLike[str],
    out_prob: str | os.PathLike[str],
    *,
    out_pseudo: str | os.PathLike[str] | None = None,
    quality_mask: str | os.PathLike[str] | None = None,
    nodata_classes: Sequence[str] | None = None,
) -> Path:
    """The predict stage: :func:`predict_scene` here, or as one task on a dask cluster (``params.dask_scheduler``).

    ``dask_scheduler`` is a scheduler address (``tcp://host:8786``) or a scheduler file (``*.json``, as written by
    ``dask scheduler --scheduler-file`` or dask-jobqueue). The worker must see the same file system and have
    pixeldino installed; paths are made absolute so it finds them from its own working directory.
    """
    kwargs: dict[str, Any] = {"out_pseudo": out_pseudo, "quality_mask": quality_mask, "nodata_classes": nodata_classes}
    if not params.dask_scheduler:
        return predict_scene(params, scene_path, model_path, out_prob, **kwargs)
    try:
        from distributed import Client
    except ImportError:
        raise ConfigError(
            "predict.dask_scheduler is set but the 'distributed' package is missing; pip install 'pixeldino[dask]'"
        ) from None
    absolute = {
        k: (str(Path(v).resolve()) if k in ("out_pseudo", "quality_mask") and v else v) for k, v in kwargs.items()
    }
    scheduler = params.dask_scheduler
    connect = {"scheduler_file": scheduler} if scheduler.endswith(".json") else {"address": scheduler}
    try:
        client = Client(timeout="60s", **connect)
    except OSError as exc:
        raise ConfigError(f"cannot reach the dask scheduler {scheduler} ({exc}); is the cluster running?") from None
    with client:
        log.info("predicting %s on dask cluster %s", scene_path, client.scheduler.address)
        future = client.submit(
            predict_scene,
            params,
            str(Path(scene_path).resolve()),
            str(Path(model_path).resolve()),
            str(Path(out_prob).resolve()),
            pure=False,
            **absolute,
        )
        return Path(future.result())


def predict_scene(
    params: PredictParams,
    scene_path: str | os.PathLike[str],
    model_path: str | os.PathLike[str],
    out_prob: str | os.PathLike[str],
    *,
    out_pseudo: str | os.PathLike[str] | None = None,
    quality_mask: str | os.PathLike[str] | None = None,
    nodata_classes: Sequence[str] | None = None,
) -> Path:
    """Predict the RTS probability (and optionally the pseudo-class QA map) of a whole scene, in this process.

    Args:
        params: patch size, overlap, batch and chunk size, TTA, device, engine and precision (``dask_scheduler``
            is :func:`run_predict`'s).
        scene_path: multi-band uint16 GeoTIFF (reflectance x 10000, nodata 0), bands named in the descriptions.
        model_path: ``.safetensors`` model file with its ``.json`` metadata beside it.
        out_prob: output COG (:mod:`pixeldino.probability`): uint8 ``round(p * 254)``, 255 = nodata.
        out_pseudo: optional output COG with the pseudo-class argmax (uint8, 255 = nodata, fixed palette).
        quality_mask: optional uint8 quality mask on the scene's grid (:mod:`pixeldino.quality` classes).
        nodata_classes: mask classes written as nodata (None: :class:`pixeldino.quality.QualityParams`'s
            default); pixels of every other class are predicted.

    Returns:
        ``Path(out_prob)``.

    Raises:
        InputError: unreadable scene, missing bands, mismatching quality mask.
        ModelError: missing or corrupt model.
        ConfigError: invalid patch size, overlap, batch or chunk size; unknown or uninstalled backend.
    """
    scene, out_prob = Path(scene_path), Path(out_prob)
    patch_size, overlap, batch_size, chunk_size = (
        params.patch_size,
        params.overlap,
        params.batch_size,
        params.chunk_size,
    )
    tta, num_threads = params.tta, params.num_threads
    if num_threads:
        torch.set_num_threads(num_threads)
    engine_name, dev = resolve_engine(params.backend, params.device, params.precision)
    precision = resolve_precision(params.precision, engine_name, dev)
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
        src = stack.enter_context(open_raster(scene, "scene", "fetch it again (pixeldino fetch)"))
        indexes = band_indexes(
            src.descriptions,
            list(meta["bands"]),
            path=scene,
            fix_hint=missing_band_hint(
                meta["bands"],
                f"model {model_path} needs them: use a scene with these bands, named in the band descriptions",
            ),
        )
        short = min(src.height, src.width)
        if short < multiple:
            raise InputError(
                f"{scene}: {src.width}x{src.height} px is smaller than the model input multiple {multiple}"
            )
        patch = min(patch, short // multiple * multiple)  # reflect padding needs the scene to be at least a patch
        stride = max(1, round(patch * (1.0 - overlap)))
        halo = patch
        nodata = src.nodata if src.nodata is not None else 0
        chunks = ((len(indexes),), axis_chunks(src.height, chunk_size, halo), axis_chunks(src.width, chunk_size, halo))
        engine = load_engine(
            engine_name,
            model,
            dev,
            model_path=model_path,
            model_id=mid,
            patch=patch,
            batch_size=batch_size,
            num_threads=num_threads,
            precision=precision,
        )
        log.info(
            "predicting %s with the %s engine on %s in %s (patch %d, batch %d)",
            scene.name,
            engine.name,
            dev,
            precision,
            patch,
            batch_size,
        )

        reader = WindowReader(src, indexes, threading.Lock())
        predictor = PatchPredictor(
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
            lut=lookup_table(meta["normalisation"], len(indexes), reader.dtype),
        )
        # Each block reads its own window plus the halo (not whole neighbouring chunks, as map_overlap would):
        # one block's input is alive per worker, and the scene is read about once (plus the halos).
        out_grid = da.zeros(
            (predictor.n_out, src.height, src.width), chunks=((predictor.n_out,), chunks[1], chunks[2]), dtype=np.uint8
        )
        pred = da.map_blocks(
            predict_block,
            out_grid,
            reader=reader,
            predictor=predictor,
            dtype=np.uint8,
            meta=np.empty((0, 0, 0), np.uint8),
        )
        if quality_mask is not None:
            qsrc = stack.enter_context(open_quality_mask(quality_mask, Grid.of(src), scene))
            qreader = WindowReader(qsrc, [1], threading.Lock())
            quality = da.from_array(
                qreader,
                chunks=((1,), chunks[1], chunks[2]),
                lock=False,
                asarray=False,
                meta=np.empty((0, 0, 0), qreader.dtype),
            )
            blank = nodata_lookup(nodata_classes)
            pred = da.map_blocks(
                apply_quality, pred, quality, blank=blank, dtype=np.uint8, meta=np.empty((0, 0, 0), np.uint8)
            )

        out_prob.parent.mkdir(parents=True, exist_ok=True)
        tmpdir = stack.enter_context(temporary(out_prob, directory=True, outputs=[out_prob, out_pseudo]))
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
        sinks = [stack.enter_context(rasterio.open(p, "w", **probability.profile(src))) for p in stream_paths]
        targets = [WindowWriter(s, threading.Lock()) for s in sinks]
        # One band of chunk-rows per dask computation, so memory is bounded by the blocks in flight, not by the
        # scene. Border patches still run through the model once: the predictor's patch cache outlives the bands.
        row_edges = np.cumsum((0, *chunks[1]))
        with (
            rasterio.Env(GDAL_CACHEMAX=_GDAL_CACHE_MB),
            dask.config.set(scheduler="threads", num_workers=_DASK_WORKERS),
        ):
            for r0, r1 in zip(row_edges[:-1], row_edges[1:]):
                rows = slice(int(r0), int(r1))
                da.store(
                    [pred[i, rows] for i in range(len(sinks))],
                    targets,  # type: ignore[arg-type]  # any object with __setitem__ is a dask store target
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
