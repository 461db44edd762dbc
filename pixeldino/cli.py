"""The ``pixeldino`` command: one verb per pipeline stage, the same entry points the Snakemake workflow calls.

    pixeldino search  --catalog resources/demo/stac/catalog.json --aoi aoi.gpkg --out manifest.json
    pixeldino search  --provider earth-search --aoi=-136,67.9,-135.5,68.2 --years 2021 2023 --out manifest.json
    pixeldino fetch   --manifest manifest.json --out-dir scenes/
    pixeldino chip    --scenes scenes/*.tif --labels rts.gpkg --footprint aoi.geojson --out chips.zarr
    pixeldino train   --chips chips.zarr --out-dir model/
    pixeldino predict SCENE.tif --model model/model.safetensors --out prob.tif
    pixeldino polygonize prob.tif --out rts.gpkg
    pixeldino merge   polygons/*.gpkg --out rts_polygons.gpkg
    pixeldino coregister scenes/*_T08WMA*.tif --out coregistration/08WMA.json
    pixeldino change  polygons/*.gpkg --years 2021 2023 --coregistration coregistration/*.json --out rts_change.gpkg
    pixeldino catalog --run demo --sidecars scenes/*.json --probabilities predictions/*_prob.tif --out stac/
    pixeldino evaluate --prediction prob.tif --labels rts.gpkg --out metrics.json
    pixeldino config  my.yaml

Every stage setting is an option generated from the stage's parameter dataclass (:mod:`pixeldino.params`), with
the dataclass's default and documentation: the CLI, the workflow config and the library share one default.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pixeldino import __version__
from pixeldino.bands import DEFAULT_BANDS
from pixeldino.params import add_dataclass_options, from_namespace

Handler = Callable[[argparse.Namespace], Any]


def _bands(value: str) -> list[str]:
    from pixeldino.bands import canonical_bands

    return canonical_bands([b for b in value.replace(" ", ",").split(",") if b])


_BANDS_HELP = "comma-separated band ids (e.g. B02,B03,B04 or blue,green,red)"


# ---------------------------------------------------------------- handlers (heavy imports stay inside)
def cmd_search(a: argparse.Namespace) -> None:
    from pixeldino.providers import StacParams
    from pixeldino.search import SearchParams, run_search

    search, stac = from_namespace(SearchParams, a), from_namespace(StacParams, a)
    manifest = run_search(search, stac, bands=a.bands, out_manifest=a.out)
    for scene in manifest["scenes"]:
        print(
            f"{scene['id']}\t{scene['tile']}\t{scene['datetime']}\tcloud {scene['cloud_cover']}\t"
            f"clear {scene['clear_fraction']:.2f}"
        )


def cmd_fetch(a: argparse.Namespace) -> None:
    from pixeldino.fetch import FetchParams, run_fetch
    from pixeldino.tiles import parse_aoi_text

    params = from_namespace(FetchParams, a, clip_to_aoi=a.aoi is not None)
    report = run_fetch(
        params,
        manifest=a.manifest,
        bands=a.bands,
        out_dir=a.out_dir,
        scene_ids=a.scene,
        aoi=parse_aoi_text(a.aoi) if a.aoi else None,
        composites_dir=Path(a.out_dir) / "composites",
        overwrite=a.overwrite,
    )
    reused = set(report.reused)
    for out in report.scenes:
        skipped = " is complete (same bands and settings), skipped (use --overwrite to fetch again)"
        print(f"{out}{skipped if out in reused else ''}")
    for composite in report.composites:
        print(composite)


def cmd_chip(a: argparse.Namespace) -> None:
    from pixeldino.chip import ChipParams, run_chip

    stats = run_chip(
        from_namespace(ChipParams, a),
        scenes=[Path(p) for p in a.scenes],
        bands=a.bands,
        out=a.out,
        labels=a.labels,
        footprint=a.footprint,
        holdout=a.holdout,
        unlabelled_scenes=[Path(p) for p in (a.unlabelled_scenes or a.scenes)],
    )
    print({k: v for k, v in stats.items() if not isinstance(v, (list, dict))})


def cmd_train(a: argparse.Namespace) -> None:
    from pixeldino.train import TrainConfig, TrainOutputs, run_train

    overrides: dict[str, Any] = {"normalisation": {"method": a.normalisation_method}} if a.normalisation_method else {}
    config = from_namespace(TrainConfig, a, **overrides)
    metrics = run_train(config, a.chips, TrainOutputs.in_dir(a.out_dir), bands=a.bands, resume=a.resume)
    print({k: v for k, v in metrics.items() if isinstance(v, (int, float, str))})


def cmd_predict(a: argparse.Namespace) -> None:
    from pixeldino.predict import PredictParams, run_predict
    from pixeldino.quality import QualityParams, find_quality_mask

    run_predict(
        from_namespace(PredictParams, a),
        a.scene,
        a.model,
        a.out,
        out_pseudo=a.pseudo_out,
        quality_mask=a.quality_mask or find_quality_mask(a.scene),
        nodata_classes=from_namespace(QualityParams, a).nodata_classes,
    )
    print(a.out)


def cmd_polygonize(a: argparse.Namespace) -> None:
    from pixeldino.polygonize import PolygonizeParams, run_polygonize
    from pixeldino.quality import WaterParams

    gdf = run_polygonize(
        from_namespace(PolygonizeParams, a),
        a.prob,
        a.out,
        quality_mask=a.quality_mask,
        water=from_namespace(WaterParams, a, prefix="water-"),
    )
    print(f"{a.out}: {len(gdf)} polygons")


def cmd_merge(a: argparse.Namespace) -> None:
    from pixeldino.merge import MergeParams, run_merge

    gdf = run_merge(from_namespace(MergeParams, a), a.inputs, a.out, a.parquet)
    print(f"{a.out}: {len(gdf)} slumps")


def cmd_coregister(a: argparse.Namespace) -> None:
    from pixeldino.change import ChangeParams
    from pixeldino.coregister import coregister_tile

    record = coregister_tile(a.scenes, a.out, band=from_namespace(ChangeParams, a).coregistration_band)
    for scene_id, entry in record["scenes"].items():
        print(
            f"{scene_id}\t{entry['year']}\tdx {entry['dx_px']:+.3f} px\tdy {entry['dy_px']:+.3f} px\t{entry['status']}"
        )


def cmd_change(a: argparse.Namespace) -> None:
    from pixeldino.change import ChangeParams, run_change
    from pixeldino.merge import MergeParams

    tracks = run_change(
        from_namespace(ChangeParams, a),
        from_namespace(MergeParams, a, prefix="merge-"),
        a.inputs,
        a.out,
        years=a.years or None,
        coregistration=a.coregistration,
        out_tracks_parquet=a.tracks_parquet,
        out_years_parquet=a.years_parquet,
        out_change_png=a.change_png,
        out_growth_png=a.growth_png,
    )
    counts = tracks["status"].value_counts().to_dict()
    print(f"{a.out}: {len(tracks)} tracks " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))


def cmd_catalog(a: argparse.Namespace) -> None:
    from pathlib import Path as _Path

    from pixeldino.catalog import build_catalog, validate_catalog
    from pixeldino.errors import InputError

    if a.validate:
        print(f"{a.validate}: {validate_catalog(a.validate, a.schemas)} STAC objects valid")
        return
    if not (a.out and a.run and a.sidecars and a.probabilities):
        raise InputError("catalog: give --out, --run, --sidecars and --probabilities (or --validate CATALOG)")
    merged = {"gpkg": a.merged, "parquet": a.merged_parquet} if a.merged else None
    change = {k: v for k, v in {"gpkg": a.change, "tracks_parquet": a.tracks_parquet}.items() if v} or None
    build_catalog(
        a.out,
        run=a.run,
        sidecars=a.sidecars,
        probabilities=a.probabilities,
        pseudo=a.pseudo or (),
        polygons=a.polygons or (),
        merged=merged,
        change=change,
    )
    root = _Path(a.out) / "catalog.json"
    print(f"{root}: {validate_catalog(root, a.schemas)} STAC objects valid")


def cmd_evaluate(a: argparse.Namespace) -> None:
    from pixeldino.evaluate import evaluate_site
    from pixeldino.io import write_json

    result = evaluate_site(
        a.prediction,
        a.labels,
        aoi_path=a.aoi,
        threshold=a.threshold,
        site=a.site,
        image_path=a.image,
        quicklook_png=a.quicklook,
    )
    write_json(a.out, {"sites": {a.site: result}})
    pixel = result["pixel"]

    def fmt(value: float | None) -> str:  # None: undefined (no positives in labels or prediction)
        return "n/a" if value is None else f"{value:.3f}"

    print(
        f"{a.site}: pixel IoU {fmt(pixel['iou'])}  F1 {fmt(pixel['f1'])}  "
        f"object recall {fmt(result['object']['recall'])}"
    )


def cmd_config(a: argparse.Namespace) -> None:
    import yaml

    from pixeldino.config import load_config

    print(yaml.safe_dump(load_config(*a.config), sort_keys=False), end="")


# ---------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    """The ``pixeldino`` argument parser; stage settings are generated from the parameter dataclasses."""
    from pixeldino.change import ChangeParams
    from pixeldino.chip import ChipParams
    from pixeldino.fetch import FetchParams
    from pixeldino.merge import MergeParams
    from pixeldino.normalise import METHODS
    from pixeldino.polygonize import PolygonizeParams
    from pixeldino.predict import PredictParams
    from pixeldino.providers import StacParams
    from pixeldino.quality import QualityParams, WaterParams
    from pixeldino.search import SearchParams
    from pixeldino.train import TrainConfig

    parser = argparse.ArgumentParser(
        prog="pixeldino",
        description="Map retrogressive thaw slumps in Sentinel-2 imagery with PixelDINO. "
        "Each verb runs one stage; `snakemake` chains them (see README).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"pixeldino {__version__}")
    parser.add_argument("--log", metavar="FILE", help="also write the log to FILE")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)

    def verb(name: str, func: Handler, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        p.set_defaults(func=func)
        return p

    def bands_option(p: argparse.ArgumentParser, default: str | None = ",".join(DEFAULT_BANDS)) -> None:
        p.add_argument("--bands", type=_bands, default=_bands(default) if default else None, help=_BANDS_HELP)

    p = verb("search", cmd_search, "Search a STAC catalog or API for Sentinel-2 scenes; write a scene manifest.")
    add_dataclass_options(p, StacParams)
    add_dataclass_options(p, SearchParams, exclude=("manifest",))
    bands_option(p)
    p.add_argument("--out", required=True, help="manifest JSON to write")

    p = verb("fetch", cmd_fetch, "Fetch the scenes of a manifest into 10 m multi-band COGs (skips completed ones).")
    p.add_argument("--manifest", required=True)
    p.add_argument("--scene", nargs="*", help="only these scene ids (default: all)")
    bands_option(p)
    p.add_argument("--aoi", help="clip to this area of interest (vector file or 'W,S,E,N')")
    add_dataclass_options(p, FetchParams, exclude=("clip_to_aoi", "local"))
    p.add_argument("--out-dir", required=True, help="scene COGs go here (composites in OUT_DIR/composites/)")
    p.add_argument("--overwrite", action="store_true", help="fetch again even scenes that are complete")

    p = verb("chip", cmd_chip, "Cut labelled and unlabelled training chips into a zarr store.")
    p.add_argument("--scenes", nargs="+", required=True, help="scene COGs")
    bands_option(p)
    p.add_argument("--labels", help="RTS polygons (any vector format/CRS)")
    p.add_argument("--footprint", help="area where the labels are complete")
    p.add_argument("--holdout", help="part of the footprint kept for validation")
    p.add_argument("--unlabelled-scenes", nargs="*", help="scenes for unlabelled chips (default: --scenes)")
    add_dataclass_options(p, ChipParams, aliases={"size": ("--chip-size",)})
    p.add_argument("--out", required=True, help="zarr store to write")

    p = verb("train", cmd_train, "Train a segmentation model (PixelDINO or a baseline); export the teacher or student.")
    p.add_argument("--chips", required=True, help="chip store (zarr)")
    p.add_argument(
        "--out-dir",
        required=True,
        help="model.safetensors, model.json, training_log.csv, training_curves.png and the checkpoint go here",
    )
    bands_option(p, default=None)
    p.add_argument(
        "--no-resume", dest="resume", action="store_false", help="start from scratch even if OUT_DIR holds a checkpoint"
    )
    p.add_argument(
        "--normalisation",
        dest="normalisation_method",
        choices=METHODS,
        help="normalisation method (default: TrainConfig's, logsigmoid); zscore statistics are computed "
        "from the training chips",
    )
    add_dataclass_options(p, TrainConfig, exclude=("normalisation",), aliases={"num_threads": ("--threads",)})

    p = verb("predict", cmd_predict, "Sliding-window RTS probability over a whole scene (bounded memory).")
    p.add_argument("scene", help="scene COG (uint16, band descriptions = band ids)")
    p.add_argument("--model", required=True, help="model .safetensors (with its .json)")
    p.add_argument("--out", required=True, help="probability COG to write (uint8, p x 254, nodata 255)")
    p.add_argument("--pseudo-out", help="also write the pseudo-class QA map here")
    p.add_argument(
        "--quality-mask",
        help="uint8 quality mask on the scene grid (default: the one `pixeldino fetch` wrote beside the scene, if any)",
    )
    add_dataclass_options(p, PredictParams, aliases={"num_threads": ("--threads",)})
    add_dataclass_options(p, QualityParams, include=("nodata_classes",))

    p = verb("polygonize", cmd_polygonize, "Turn an RTS probability raster into polygons (GeoPackage layer 'rts').")
    p.add_argument("prob")
    p.add_argument("--out", required=True)
    p.add_argument("--quality-mask", help="the scene's quality mask: per-class fractions per polygon")
    add_dataclass_options(p, PolygonizeParams, aliases={"min_area_m2": ("--min-area",)})
    add_dataclass_options(p, WaterParams, prefix="water-", aliases={"file": ("--permanent-water",)})

    p = verb("merge", cmd_merge, "Merge per-scene polygons into one deduplicated equal-area map.")
    p.add_argument("inputs", nargs="+", help="per-scene GeoPackages")
    p.add_argument("--out", required=True)
    p.add_argument("--parquet", help="also write GeoParquet here")
    add_dataclass_options(p, MergeParams)

    p = verb(
        "coregister",
        cmd_coregister,
        "Measure the sub-pixel shift of each scene of one tile against its reference scene (JSON sidecar).",
    )
    p.add_argument("scenes", nargs="+", help="fetched scene COGs of one MGRS tile, any years")
    p.add_argument("--out", required=True, help="per-tile co-registration JSON to write")
    add_dataclass_options(
        p, ChangeParams, include=("coregistration_band",), aliases={"coregistration_band": ("--band",)}
    )

    p = verb(
        "change",
        cmd_change,
        "Per-year RTS maps and slump tracks (growth, status) from per-scene polygons of several years.",
    )
    p.add_argument("inputs", nargs="+", help="per-scene GeoPackages of all years")
    p.add_argument("--out", required=True, help="GeoPackage: layers rts_<year>, rts_tracks, rts_track_links")
    p.add_argument("--years", type=int, nargs="*", help="years to map (default: those found)")
    p.add_argument("--coregistration", nargs="*", default=[], help="per-tile JSON from `pixeldino coregister`")
    p.add_argument("--tracks-parquet", help="also write the tracks as GeoParquet")
    p.add_argument("--years-parquet", help="also write all year layers as one GeoParquet (column year)")
    p.add_argument("--change-png", help="change map PNG")
    p.add_argument("--growth-png", help="growth distribution PNG")
    add_dataclass_options(p, ChangeParams, exclude=("coregistration_band",))
    add_dataclass_options(
        p,
        MergeParams,
        prefix="merge-",
        aliases={"crs": ("--crs",), "geometry": ("--geometry",), "min_overlap": ("--merge-overlap",)},
    )

    p = verb("catalog", cmd_catalog, "Write (and validate offline) a STAC catalog of a run's outputs.")
    p.add_argument("--out", help="catalog folder to write (catalog.json inside)")
    p.add_argument("--run", help="run name: collection pixeldino-<run>")
    p.add_argument("--sidecars", nargs="*", help="scene JSON sidecars from fetch, one per scene")
    p.add_argument("--probabilities", nargs="*", help="probability COGs, in the order of --sidecars")
    p.add_argument("--pseudo", nargs="*", help="pseudo-class maps, same order")
    p.add_argument("--polygons", nargs="*", help="per-scene polygons, same order")
    p.add_argument("--merged", help="merged GeoPackage")
    p.add_argument("--merged-parquet", help="merged GeoParquet")
    p.add_argument("--change", help="rts_change.gpkg")
    p.add_argument("--tracks-parquet", help="tracks GeoParquet")
    p.add_argument("--validate", metavar="CATALOG", help="only validate this catalog.json")
    p.add_argument("--schemas", help="folder of extension schema files <name>-<version>.json for full validation")

    p = verb("evaluate", cmd_evaluate, "Pixel and object metrics of a prediction against label polygons.")
    p.add_argument("--prediction", required=True, help="probability raster")
    p.add_argument("--labels", required=True)
    p.add_argument("--aoi", help="restrict to this area")
    p.add_argument("--image", help="scene COG for the quicklook background")
    p.add_argument("--site", default="site")
    p.add_argument("--threshold", type=float)
    p.add_argument("--quicklook", help="PNG to write")
    p.add_argument("--out", required=True, help="metrics JSON")

    p = verb(
        "config",
        cmd_config,
        "Validate workflow config files (later ones overlay earlier ones, as with "
        "snakemake --configfile) and print the effective config the workflow runs, defaults filled in.",
    )
    p.add_argument("config", nargs="*", default=["config/config.yaml"])
    return parser


def main(argv: list[str] | None = None) -> int:
    from pixeldino.runner import run_stage

    args = build_parser().parse_args(argv)
    run_stage(args.verb, lambda: args.func(args), [args.log] if args.log else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
