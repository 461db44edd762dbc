"""Write the Arctic dry-run fixture: a scene manifest with one plausible scene per land tile of the domain.

The manifest has the structure `pixeldino search` writes (validated by `pixeldino.manifest.write_manifest`) but
invented scene ids and unreachable hrefs: it exists so that `snakemake -n --configfile config/arctic.yaml` can plan
the whole Arctic without network access (tests/test_workflow_scale.py, benchmarks/dag_scale.py).

    python scripts/make_arctic_fixture_manifest.py [--scenes-per-tile N] [--out tests/data/arctic_manifest.json]
"""

from __future__ import annotations

import argparse
from datetime import datetime, timedelta, timezone
from pathlib import Path

from pixeldino.manifest import write_manifest
from pixeldino.tiles import domain_tiles, tile_footprint, utm_crs_for_tile

ROOT = Path(__file__).resolve().parent.parent
BANDS = ["B02", "B03", "B04", "B08"]


def fixture_manifest(scenes_per_tile: int = 1) -> dict:
    """One manifest entry per (land tile of the circumpolar domain, scene), deterministic."""
    scenes = []
    for t, tile in enumerate(domain_tiles(land_only=True)):
        for k in range(scenes_per_tile):
            when = datetime(2022, 7, 1, 20, 0, tzinfo=timezone.utc) + timedelta(days=(t * 7 + k * 13) % 60)
            scene_id = f"S2_{tile}_{when:%Y%m%d}_{k}"
            scenes.append(
                {
                    "id": scene_id,
                    "stac_id": scene_id,
                    "tile": tile,
                    "datetime": when.isoformat(),
                    "cloud_cover": round((t * 3.7 + k) % 10, 1),
                    "snow_cover": 0.0,
                    "clear_fraction": 0.9,
                    "processing_baseline": "05.09",
                    "crs": utm_crs_for_tile(tile),
                    "bbox": [round(v, 5) for v in tile_footprint(tile).bounds],
                    "assets": {b: f"https://fixture.invalid/{tile}/{scene_id}/{b}.tif" for b in BANDS},
                }
            )
    return {
        "pixeldino_manifest": 1,
        "created": "2026-11-21T00:00:00+00:00",
        "catalog": "fixture",
        "collection": "sentinel-2-l2a",
        "query": {"aoi": "circumpolar", "note": "dry-run fixture: scene ids and hrefs are invented"},
        "scenes": scenes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes-per-tile", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "data" / "arctic_manifest.json")
    args = parser.parse_args()
    manifest = fixture_manifest(args.scenes_per_tile)
    write_manifest(manifest, args.out)
    print(f"{args.out}: {len(manifest['scenes'])} scenes")


if __name__ == "__main__":
    main()
