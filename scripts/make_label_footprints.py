"""Derive approximate "labels are complete here" footprints for the shipped RTS inventories.

Training treats pixels outside a label footprint as *ignored* rather than background, so an inventory needs one.
The published inventories do not ship their mapped extents, so we approximate them: the convex hull of the
polygons drawn on one image (Nitze et al. 2021: per `image_id`; Huang et al. 2022: the whole inventory), buffered
by 500 m. Slumps missed inside that hull would be counted as background: an approximation, documented in
resources/arctic/README.md. The paper's held-out regions (Herschel, Lena) go to a separate hold-out file.

    python scripts/make_label_footprints.py            # writes resources/arctic/label_footprints/
"""

from __future__ import annotations

import argparse
from pathlib import Path

import geopandas as gpd
import pandas as pd
from shapely import make_valid

ROOT = Path(__file__).resolve().parent.parent
BUFFER_M = 500.0
HOLDOUT_REGIONS = ("Herschel", "Lena")


def hull_footprints(labels: gpd.GeoDataFrame, by: str | None) -> gpd.GeoDataFrame:
    """Buffered convex hull per group, computed in the local UTM zone (metres)."""
    labels = labels.assign(geometry=labels.geometry.map(make_valid))
    groups = labels.groupby(by) if by else [("all", labels)]
    rows = []
    for key, part in groups:
        utm = part.estimate_utm_crs()
        hull = part.to_crs(utm).union_all().convex_hull.buffer(BUFFER_M)
        rows.append(
            {
                "group": str(key),
                "region": str(part["region"].iloc[0]) if "region" in part else "",
                "n_labels": len(part),
                "geometry": gpd.GeoSeries([hull], crs=utm).to_crs(4326).iloc[0],
            }
        )
    return gpd.GeoDataFrame(rows, crs=4326)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--labels", type=Path, default=ROOT / "resources" / "rts_labels")
    parser.add_argument("--out", type=Path, default=ROOT / "resources" / "arctic" / "label_footprints")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    nitze = gpd.read_file(args.labels / "nitze2021_rts_training_labels.gpkg")
    fp = hull_footprints(nitze, by="image_id")
    held = fp["region"].isin(HOLDOUT_REGIONS)
    fp.to_file(args.out / "nitze2021_footprints.gpkg", layer="footprint")
    fp[held].to_file(args.out / "nitze2021_holdout.gpkg", layer="footprint")

    willow = gpd.read_file(args.labels / "huang2022_willow_river.gpkg")
    hull_footprints(willow, by=None).to_file(args.out / "huang2022_willow_river_footprint.gpkg", layer="footprint")

    summary = pd.DataFrame(
        {
            "footprints": [len(fp)],
            "holdout": [int(held.sum())],
            "area_km2": [round(fp.to_crs(3413).area.sum() / 1e6, 1)],
        }
    )
    print(summary.to_string(index=False))


if __name__ == "__main__":
    main()
