"""Chips per second read from a chip store (zarr, one chunk per chip), the way training reads them.

Builds a store with the real :func:`pixeldino.chip.run_chip` from a synthetic fetched scene (uint16, random
reflectance-like DN, so compression is realistic, not flattering), then times with
:class:`pixeldino.chipstore.ChipStore`:

* ``bulk``: ``store.labelled("train")`` + ``store.unlabelled()``, what the trainer does once at start-up;
* ``random_batches``: ``read_labelled`` / ``read_unlabelled`` of random batches, what a streaming loader for stores
  larger than RAM would do every step.

Prints one JSON line::

    python benchmarks/chip_read.py --chip-size 192 --bands 7 --n-chips 256 --batch 16
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pixeldino.chip import ChipParams, run_chip  # noqa: E402
from pixeldino.chipstore import ChipStore  # noqa: E402

BAND_IDS = ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"]


def _scene(path: Path, size: int, n_bands: int, seed: int) -> list[str]:
    """A smooth-plus-noise uint16 scene (like 10 m reflectance x 10000) with band descriptions."""
    rng = np.random.default_rng(seed)
    bands = BAND_IDS[:n_bands]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=size,
        height=size,
        count=n_bands,
        dtype="uint16",
        crs="EPSG:32608",
        transform=Affine(10, 0, 400_000, 0, -10, 7_600_000),
        nodata=0,
        tiled=True,
        blockxsize=512,
        blockysize=512,
        compress="deflate",
        predictor=2,
    ) as dst:
        for i, band in enumerate(bands, start=1):
            field = 1500 + 800 * np.sin(xx / (50 + 7 * i)) * np.cos(yy / (80 + 5 * i))
            data = np.clip(field + rng.normal(0, 120, field.shape), 1, 10000).astype(np.uint16)
            dst.write(data, i)
            dst.set_band_description(i, band)
    return bands


def _rate(n: int, seconds: list[float]) -> float:
    return n / statistics.median(seconds)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--chip-size", type=int, default=192)
    p.add_argument("--bands", type=int, default=7)
    p.add_argument("--n-chips", type=int, default=256, help="labelled and unlabelled chips each")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--scene-size", type=int, default=2048)
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        scene = Path(tmp) / "scene.tif"
        bands = _scene(scene, args.scene_size, args.bands, seed=0)
        # a sparse label layer so the positive/negative sampling works
        import geopandas as gpd
        from shapely.geometry import box

        labels = Path(tmp) / "labels.gpkg"
        polys = [
            box(400_000 + x, 7_600_000 - 4000 - x, 400_000 + x + 200, 7_600_000 - 3800 - x)
            for x in range(0, 10 * args.scene_size - 400, 1500)
        ]
        gpd.GeoDataFrame(geometry=polys, crs="EPSG:32608").to_file(labels, layer="rts")
        store_path = Path(tmp) / "chips.zarr"
        t0 = time.perf_counter()
        params = ChipParams(size=args.chip_size, n_labelled=args.n_chips, n_unlabelled=args.n_chips, seed=0)
        run_chip(params, scenes=[scene], bands=bands, out=store_path, labels=labels, unlabelled_scenes=[scene])
        build_s = time.perf_counter() - t0
        size_mb = sum(f.stat().st_size for f in store_path.rglob("*") if f.is_file()) / 1e6

        bulk: list[float] = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            store = ChipStore(store_path)
            images, masks = store.labelled("train")
            unlabelled = store.unlabelled()
            bulk.append(time.perf_counter() - t0)
        n_bulk = len(images) + len(unlabelled)

        rng = np.random.default_rng(0)
        store = ChipStore(store_path)
        lab_idx = store.labelled_indices("train")
        batches: list[float] = []
        n_batches = max(1, 2 * args.n_chips // args.batch)
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            for _ in range(n_batches // 2):
                store.read_labelled(np.sort(rng.choice(lab_idx, args.batch, replace=False)))
                store.read_unlabelled(np.sort(rng.choice(store.n_unlabelled, args.batch, replace=False)))
            batches.append(time.perf_counter() - t0)

    result = {
        "chip_size": args.chip_size,
        "bands": args.bands,
        "chips": n_bulk,
        "store_mb": round(size_mb, 1),
        "build_s": round(build_s, 2),
        "bulk_chips_per_s": round(_rate(n_bulk, bulk)),
        "random_batch": args.batch,
        "random_batch_chips_per_s": round(_rate((n_batches // 2) * 2 * args.batch, batches)),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
