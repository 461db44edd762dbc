"""How long Snakemake takes to plan the Arctic: a dry run of config/arctic.yaml over the pre-made fixture manifest
(one scene per land MGRS tile of the RTS circumpolar domain; scripts/make_arctic_fixture_manifest.py).

    .venv/bin/python benchmarks/dag_scale.py [--scenes-per-tile 1 3]

Prints one JSON line per size: scenes, jobs, seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "tests"))

from make_arctic_fixture_manifest import fixture_manifest  # noqa: E402
from wfutil import job_counts, run_snakemake  # noqa: E402

from pixeldino.manifest import write_manifest  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes-per-tile", type=int, nargs="+", default=[1, 3])
    args = parser.parse_args()
    for n in args.scenes_per_tile:
        with tempfile.TemporaryDirectory() as tmp:
            manifest = Path(tmp) / "manifest.json"
            write_manifest(fixture_manifest(n), manifest)
            overlay = Path(tmp) / "fixture.yaml"
            overlay.write_text(f"search:\n  manifest: {manifest}\n")
            started = time.perf_counter()
            res = run_snakemake(ROOT, "-n", "--cores", "8", "--configfile", "config/arctic.yaml", str(overlay))
            seconds = time.perf_counter() - started
            if res.returncode != 0:
                raise SystemExit(res.stderr[-2000:])
            counts = job_counts(res.stdout)
            print(
                json.dumps(
                    {"scenes": counts.get("fetch_scene"), "jobs": counts.get("total"), "seconds": round(seconds, 2)}
                )
            )


if __name__ == "__main__":
    main()
