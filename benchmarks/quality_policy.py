"""Effect of a permanent-water layer on the demo's Bykovsky evaluation (run after `make demo`).

The demo chips are L1C (no SCL), so the per-class quality policy has nothing to act on there. The permanent-water
layer does: Bykovsky is a coastal site. No water-occurrence map is bundled (and none can be downloaded here), so
a stand-in is derived from the chip itself: pixels with NDWI = (B03 - B08) / (B03 + B08) > ``--ndwi`` are water,
as a lake/sea mask from a water-occurrence product would mark them. The Bykovsky prediction is polygonized without
and with the layer (``action: drop``), and each set of polygons is scored against the expert consensus inside the
site's AOI: polygons, polygons not touching any label (false positives), labels hit (object recall), pixel IoU of the
rasterised polygons.

    .venv/bin/python benchmarks/quality_policy.py [--run results/demo] [--ndwi 0.0]

Prints one JSON line per variant.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
from rasterio.features import rasterize, shapes
from shapely.geometry import shape

from pixeldino.labels import read_labels
from pixeldino.polygonize import PolygonizeParams, run_polygonize
from pixeldino.quality import WaterParams
from pixeldino.tiles import load_aoi

DEMO = Path(__file__).resolve().parent.parent / "resources" / "demo"


def water_layer(scene: Path, out: Path, ndwi_min: float) -> float:
    with rasterio.open(scene) as src:
        idx = {d: i + 1 for i, d in enumerate(src.descriptions)}
        green, nir = (src.read(idx[b]).astype(np.float64) for b in ("B03", "B08"))
        ndwi = (green - nir) / np.maximum(green + nir, 1)
        water = (ndwi > ndwi_min).astype(np.uint8)
        geoms = [shape(g) for g, v in shapes(water, mask=water == 1, transform=src.transform) if v == 1]
        gpd.GeoDataFrame(geometry=geoms, crs=src.crs).to_file(out)
    return float(water.mean())


def score(polygons: gpd.GeoDataFrame, labels: gpd.GeoDataFrame, aoi, prob: Path) -> dict[str, float | int]:
    aoi_local = gpd.GeoSeries([aoi], crs=4326).to_crs(polygons.crs).iloc[0]
    polys = polygons[polygons.intersects(aoi_local)]
    labs = labels.to_crs(polygons.crs)
    labs = labs[labs.intersects(aoi_local)]
    with rasterio.open(prob) as src:
        shape_, transform = (src.height, src.width), src.transform
    inside = rasterize([(aoi_local, 1)], out_shape=shape_, transform=transform, dtype="uint8") == 1
    pred = (
        rasterize([(g, 1) for g in polys.geometry], out_shape=shape_, transform=transform, dtype="uint8") == 1
        if len(polys)
        else np.zeros(shape_, bool)
    )
    truth = rasterize([(g, 1) for g in labs.geometry], out_shape=shape_, transform=transform, dtype="uint8") == 1
    tp = int((pred & truth & inside).sum())
    union = int(((pred | truth) & inside).sum())
    false_pos = int(sum(not labs.intersects(g).any() for g in polys.geometry))
    hit = int(sum(polys.intersects(g).any() for g in labs.geometry))
    return {
        "polygons": len(polys),
        "false_positive_polygons": false_pos,
        "labels": len(labs),
        "labels_hit": hit,
        "pixel_iou": round(tp / union, 4) if union else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("results/demo"))
    parser.add_argument("--ndwi", type=float, default=0.0)
    args = parser.parse_args()
    manifest = json.loads((args.run / "manifest.json").read_text())
    scene_id = next(s["id"] for s in manifest["scenes"] if s["tile"] == "52WEE")
    prob = args.run / "predictions" / f"{scene_id}_prob.tif"
    labels = read_labels(DEMO / "labels" / "bykovsky_consensus.gpkg", "EPSG:4326")
    aoi = load_aoi(DEMO / "aoi" / "bykovsky.geojson")
    with tempfile.TemporaryDirectory() as tmp:
        water = Path(tmp) / "water.gpkg"
        share = water_layer(args.run / "scenes" / f"{scene_id}.tif", water, args.ndwi)
        for name, policy in (
            ("no water layer", WaterParams()),
            ("water layer, flag", WaterParams(file=str(water))),
            ("water layer, drop", WaterParams(file=str(water), action="drop")),
        ):
            gdf = run_polygonize(PolygonizeParams(min_area_m2=500), prob, Path(tmp) / "p.gpkg", water=policy)
            flagged = int(gdf["in_permanent_water"].sum())
            print(
                json.dumps(
                    {
                        "variant": name,
                        "water_share_of_chip": round(share, 3),
                        "flagged": flagged,
                        **score(gdf, labels, aoi, prob),
                    }
                )
            )


if __name__ == "__main__":
    main()
