"""Polygonization and merge throughput on a full synthetic scene, and merge scaling to 100k polygons.

1. A 10980 x 10980 probability raster (EPSG:32608) with ``--slumps`` elliptical, irregular detections is polygonized
   (``pixeldino.polygonize.run_polygonize``).
2. The same slumps seen by a neighbouring tile in the next UTM zone (EPSG:32609, shifted by a few metres, as
   two overlapping MGRS tiles would) are merged with the first (``pixeldino.merge.run_merge``): every slump
   must come out once.
3. ``--merge-polygons`` detections spread over many scene files are merged, to show the spatial index keeps this
   far from O(n^2).

    .venv/bin/python benchmarks/polygons.py [--size 10980] [--slumps 3000] [--merge-polygons 100000]

Prints one JSON line per measurement.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine

from pixeldino.io import TILED_GTIFF_PROFILE
from pixeldino.merge import MergeParams, run_merge
from pixeldino.polygonize import PolygonizeParams, run_polygonize, write_layer

ORIGIN_X, ORIGIN_Y = 600000.0, 7600020.0  # a UTM 8N tile near the zone's eastern edge


def synthetic_probability(path: Path, size: int, n_slumps: int, seed: int) -> None:
    """uint8 probability (p x 254) with irregular blobs of 5-40 px radius, written in row strips."""
    rng = np.random.default_rng(seed)
    cy, cx = rng.uniform(50, size - 50, (2, n_slumps))
    ry, rx = rng.uniform(3, 25, (2, n_slumps))
    peak = rng.integers(160, 254, n_slumps)
    profile = dict(
        TILED_GTIFF_PROFILE,
        width=size,
        height=size,
        count=1,
        dtype="uint8",
        nodata=255,
        crs="EPSG:32608",
        transform=Affine(10, 0, ORIGIN_X, 0, -10, ORIGIN_Y),
    )
    strip = 512
    with rasterio.open(path, "w", **profile) as dst:
        dst.scales = (1 / 254,)
        dst.update_tags(
            SCENE_ID="S2_SYNTH_A", TILE="08WXX", DATETIME="2023-07-20T20:00:00Z", MODEL="bench", THRESHOLD="0.5"
        )
        for r0 in range(0, size, strip):
            rows = np.arange(r0, min(r0 + strip, size))[:, None]
            cols = np.arange(size)[None, :]
            block = np.zeros((len(rows), size), np.uint8)
            near = np.nonzero((cy + ry + 2 >= r0) & (cy - ry - 2 < r0 + strip))[0]
            for i in near:
                c0, c1 = int(max(cx[i] - rx[i] - 2, 0)), int(min(cx[i] + rx[i] + 3, size))
                d = ((rows - cy[i]) / ry[i]) ** 2 + ((cols[:, c0:c1] - cx[i]) / rx[i]) ** 2
                val = np.where(d <= 1, peak[i] * (1 - 0.5 * d), 0).astype(np.uint8)
                block[:, c0:c1] = np.maximum(block[:, c0:c1], val)
            dst.write(block, 1, window=((r0, r0 + len(rows)), (0, size)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=10980)
    parser.add_argument("--slumps", type=int, default=3000)
    parser.add_argument("--merge-polygons", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        prob = tmp / "prob.tif"
        synthetic_probability(prob, args.size, args.slumps, args.seed)

        t = time.perf_counter()
        scene_a = run_polygonize(PolygonizeParams(min_area_m2=500), prob, tmp / "a.gpkg")
        dt = time.perf_counter() - t
        km2 = scene_a["area_m2"].sum() / 1e6
        print(
            json.dumps(
                {
                    "step": "polygonize",
                    "size": args.size,
                    "polygons": len(scene_a),
                    "seconds": round(dt, 2),
                    "polygons_per_s": round(len(scene_a) / dt, 1),
                    "scene_km2_per_s": round((args.size * 10 / 1000) ** 2 / dt, 1),
                    "rts_km2": round(km2, 2),
                }
            )
        )

        # the same slumps from a neighbouring tile in the next UTM zone, a few metres off
        scene_b = scene_a.to_crs("EPSG:32609")
        scene_b["geometry"] = scene_b.translate(4.0, -3.0)
        scene_b["scene_id"], scene_b["tile"], scene_b["datetime"] = "S2_SYNTH_B", "09WXX", "2023-08-02T20:00:00Z"
        write_layer(scene_b, tmp / "b.gpkg")
        t = time.perf_counter()
        merged = run_merge(MergeParams(), [tmp / "a.gpkg", tmp / "b.gpkg"], tmp / "merged.gpkg", tmp / "m.parquet")
        dt = time.perf_counter() - t
        print(
            json.dumps(
                {
                    "step": "merge two overlapping tiles",
                    "inputs": 2 * len(scene_a),
                    "slumps": len(merged),
                    "all_deduplicated": bool((merged["n_detections"] == 2).all()),
                    "seconds": round(dt, 2),
                    "polygons_per_s": round(2 * len(scene_a) / dt, 1),
                    "km2_per_s": round(merged["area_m2"].sum() / 1e6 / dt, 2),
                }
            )
        )

        # merge scaling: copies of scene A's polygons shifted across a grid of scenes, neighbours overlapping
        per_scene = len(scene_a)
        n_files = max(1, int(np.ceil(args.merge_polygons / per_scene)))
        step = args.size * 10 - 2000.0  # 2 km overlap between neighbouring synthetic scenes
        files = []
        for k in range(n_files):
            shifted = scene_a.copy()
            shifted["geometry"] = shifted.translate((k % 8) * step, -(k // 8) * step)
            shifted["scene_id"] = f"S2_SYNTH_{k:03d}"
            files.append(tmp / f"s{k:03d}.gpkg")
            write_layer(shifted, files[-1])
        t = time.perf_counter()
        merged = run_merge(MergeParams(), files, tmp / "big.gpkg", tmp / "big.parquet")
        dt = time.perf_counter() - t
        print(
            json.dumps(
                {
                    "step": "merge scaling",
                    "inputs": per_scene * n_files,
                    "files": n_files,
                    "slumps": len(merged),
                    "seconds": round(dt, 2),
                    "polygons_per_s": round(per_scene * n_files / dt, 1),
                }
            )
        )


if __name__ == "__main__":
    main()
