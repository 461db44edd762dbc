"""Compare two result folders of the workflow: model weights, probability rasters, polygons and metrics.

A refactor that must not change results is checked with it, e.g. the demo before and after:

    git worktree add /tmp/before HEAD~1
    (cd /tmp/before && PYTHONPATH=. ../main/.venv/bin/snakemake --cores 2 --configfile config/config.yaml)
    make demo && .venv/bin/python scripts/compare_runs.py /tmp/before/results/demo results/demo

Exits 1 when anything differs.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio


def digest(path: Path) -> str:
    """The first 16 hex digits of a file's SHA-256."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def compare(a: Path, b: Path) -> list[str]:
    """Print one line per compared output; return the differences."""
    differences = []
    weights = [digest(p / "model" / "model.safetensors") for p in (a, b)]
    print("model/model.safetensors", *weights)
    if weights[0] != weights[1]:
        differences.append("model weights")
    for pa in sorted((a / "predictions").glob("*_prob.tif")):
        with rasterio.open(pa) as x, rasterio.open(b / "predictions" / pa.name) as y:
            same = np.array_equal(x.read(), y.read()) and x.tags() == y.tags()
        print(f"predictions/{pa.name}", "identical" if same else "DIFFERS")
        if not same:
            differences.append(pa.name)
    for name in ["rts_polygons.gpkg"] + [f"polygons/{p.name}" for p in sorted((a / "polygons").glob("*.gpkg"))]:
        ga, gb = (gpd.read_file(p / name, layer="rts") for p in (a, b))
        cols = [c for c in ga.columns if c != "geometry"]
        same = (
            len(ga) == len(gb)
            and list(ga.columns) == list(gb.columns)
            and all(x.equals(y) for x, y in zip(ga.geometry, gb.geometry))
            and ga[cols].astype(str).equals(gb[cols].astype(str))
        )
        print(name, f"{len(ga)} / {len(gb)} polygons", "identical" if same else "DIFFERS")
        if not same:
            differences.append(name)
    ma, mb = (json.loads((p / "evaluation" / "metrics.json").read_text()) for p in (a, b))
    for site in ma["sites"]:
        print(
            f"pixel IoU {site}:",
            ma["sites"][site]["pixel"]["iou"],
            mb["sites"].get(site, {}).get("pixel", {}).get("iou"),
        )
    if ma != mb:
        differences.append("evaluation/metrics.json")
    return differences


def main() -> int:
    if len(sys.argv) != 3:
        print("usage: compare_runs.py RESULTS_A RESULTS_B", file=sys.stderr)
        return 2
    differences = compare(Path(sys.argv[1]), Path(sys.argv[2]))
    print("identical" if not differences else f"differ: {', '.join(differences)}")
    return 1 if differences else 0


if __name__ == "__main__":
    sys.exit(main())
