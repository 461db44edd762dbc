"""Tracking throughput: ``--slumps`` slumps over ``--years`` years, linked into tracks by ``track_slumps``.

Synthetic per-year layers in EPSG:3413: slumps are irregular ellipses (radius 20-150 m) scattered over a region the
size of a few dozen MGRS tiles; each year every slump grows by 0-20 % (shifted by up to 5 m), 3 % vanish and 3 %
new ones appear, and 1 % split into two. The timed call is :func:`pixeldino.change.track_slumps` (spatial index
over all years, connected components, per-track table), plus writing the GeoPackage and GeoParquet outputs.

    .venv/bin/python benchmarks/tracking.py [--slumps 100000] [--years 3]

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import shapely

from pixeldino.change import track_slumps, year_layer
from pixeldino.merge import ground_area_m2, write_layers


def _ellipses(x: np.ndarray, y: np.ndarray, rx: np.ndarray, ry: np.ndarray, angle: np.ndarray) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, 17)[:-1]
    ca, sa = np.cos(angle)[:, None], np.sin(angle)[:, None]
    ex, ey = rx[:, None] * np.cos(t), ry[:, None] * np.sin(t)
    px = x[:, None] + ex * ca - ey * sa
    py = y[:, None] + ex * sa + ey * ca
    rings = np.stack([px, py], axis=-1)
    rings = np.concatenate([rings, rings[:, :1]], axis=1)
    return shapely.polygons(rings)


def synthetic_years(n: int, n_years: int, seed: int = 0) -> dict[int, gpd.GeoDataFrame]:
    rng = np.random.default_rng(seed)
    side = np.sqrt(n) * 1000.0  # about one slump per km2
    x, y = rng.uniform(-2.5e6, -2.5e6 + side, n), rng.uniform(-1e6, -1e6 + side, n)
    rx, ry, angle = rng.uniform(20, 150, n), rng.uniform(20, 150, n), rng.uniform(0, np.pi, n)
    alive = np.ones(n, bool)
    years = {}
    for k in range(n_years):
        year = 2019 + 2 * k
        if k:
            grow = 1 + rng.uniform(0, 0.2, len(x))
            rx, ry = rx * np.sqrt(grow), ry * np.sqrt(grow)
            x, y = x + rng.normal(0, 3, len(x)), y + rng.normal(0, 3, len(x))
            alive &= rng.random(len(x)) > 0.03
            m = int(0.03 * n)
            x = np.concatenate([x, rng.uniform(-2.5e6, -2.5e6 + side, m)])
            y = np.concatenate([y, rng.uniform(-1e6, -1e6 + side, m)])
            rx = np.concatenate([rx, rng.uniform(20, 150, m)])
            ry = np.concatenate([ry, rng.uniform(20, 150, m)])
            angle = np.concatenate([angle, rng.uniform(0, np.pi, m)])
            alive = np.concatenate([alive, np.ones(m, bool)])
        geoms = _ellipses(x[alive], y[alive], rx[alive], ry[alive], angle[alive])
        split = rng.random(len(geoms)) < 0.01 if k == n_years - 1 else np.zeros(len(geoms), bool)
        if split.any():  # cut each splitting slump in two with a 10 m gap
            c = shapely.centroid(geoms[split])
            cx = shapely.get_x(c)
            left = shapely.box(cx - 1e4, -1e7, cx - 5, 1e7)
            right = shapely.box(cx + 5, -1e7, cx + 1e4, 1e7)
            pieces = np.concatenate(
                [shapely.intersection(geoms[split], left), shapely.intersection(geoms[split], right)]
            )
            geoms = np.concatenate([geoms[~split], pieces])
        gdf = gpd.GeoDataFrame({"rts_id": [f"R{year}_{i}" for i in range(len(geoms))]}, geometry=geoms, crs=3413)
        gdf["area_m2"] = ground_area_m2(gdf.geometry)
        years[year] = gdf
    return years


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slumps", type=int, default=100_000)
    parser.add_argument("--years", type=int, default=3)
    args = parser.parse_args()
    t0 = time.perf_counter()
    years = synthetic_years(args.slumps, args.years)
    t1 = time.perf_counter()
    tracks, layers, links = track_slumps(years)
    t2 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        write_layers(
            Path(tmp) / "rts_change.gpkg", {**{year_layer(y): layers[y] for y in layers}, "rts_tracks": tracks}
        )
        tracks.to_parquet(Path(tmp) / "rts_tracks.parquet")
    t3 = time.perf_counter()
    print(
        json.dumps(
            {
                "slumps_first_year": args.slumps,
                "years": args.years,
                "polygons": int(sum(len(v) for v in years.values())),
                "tracks": len(tracks),
                "links": len(links),
                "status": tracks["status"].value_counts().to_dict(),
                "splits": int(tracks["events"].notna().sum()),
                "make_data_s": round(t1 - t0, 1),
                "track_s": round(t2 - t1, 1),
                "write_s": round(t3 - t2, 1),
                "cores": os.cpu_count(),
            }
        )
    )


if __name__ == "__main__":
    main()
