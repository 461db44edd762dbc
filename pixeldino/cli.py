"""The ``pixeldino`` command: one verb per pipeline stage, the same functions the Snakemake workflow calls.

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
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pixeldino import __version__, quality
from pixeldino.engines import BACKENDS, DEFAULT_BACKEND, DEFAULT_PRECISION, PRECISIONS

Handler = Callable[[argparse.Namespace], Any]


def _bands(value: str) -> list[str]:
    from pixeldino.bands import canonical_bands

    return canonical_bands([b for b in value.replace(" ", ",").split(",") if b])


DEFAULT_BANDS = "B02,B03,B04,B05,B06,B07,B08"


# ---------------------------------------------------------------- handlers (heavy imports stay inside)
def _aoi(value: str | None) -> str | list[float] | None:
    """``--aoi``: a vector file, ``circumpolar``, or ``W,S,E,N`` in degrees."""
    if value is None:
        return None
    parts = value.split(",")
    if len(parts) == 4:
        try:
            return [float(v) for v in parts]
        except ValueError:
            pass
    return value


def cmd_search(a: argparse.Namespace) -> None:
    from pixeldino.search import search_scenes, write_manifest

    manifest = search_scenes(
        a.catalog,
        provider=a.provider,
        collection=a.collection,
        aoi=_aoi(a.aoi),
        tiles=a.tiles or None,
        datetime=a.datetime,
        years=a.years or None,
        months=a.months,
        max_cloud_cover=a.max_cloud_cover,
        max_snow_cover=a.max_snow_cover,
        max_scenes_per_tile=a.max_scenes_per_tile,
        bands=a.bands,
    )
    write_manifest(manifest, a.out)
    for scene in manifest["scenes"]:
        print(f"{scene['id']}\t{scene['tile']}\t{scene['datetime']}\tcloud {scene['cloud_cover']}\t"
              f"clear {scene['clear_fraction']:.2f}")


def cmd_fetch(a: argparse.Namespace) -> None:
    from pixeldino.fetch import composite_scenes, fetch_scene
    from pixeldino.search import read_manifest

    manifest = read_manifest(a.manifest)
    scenes = manifest["scenes"]
    if a.scene:
        scenes = [s for s in scenes if s["id"] in set(a.scene)]
        missing = set(a.scene) - {s["id"] for s in scenes}
        if missing:
            from pixeldino.errors import InputError

            raise InputError(f"{a.manifest}: no scene(s) {sorted(missing)} in the manifest")
    provider = (manifest.get("provider") or {}).get("name")
    per_tile: dict[str, list[Path]] = {}
    for scene in scenes:
        out = Path(a.out_dir) / f"{scene['id']}.tif"
        per_tile.setdefault(scene["tile"], []).append(out)
        if out.exists() and out.with_suffix(".json").exists() and not a.overwrite:
            print(f"{out} exists, skipped (use --overwrite to fetch again)")
            continue
        fetch_scene(
            {"provider": provider, **scene}, a.bands, out, aoi=_aoi(a.aoi), resolution=a.resolution,
            harmonize=not a.no_harmonize, quality_mask=not a.no_mask,
        )
        print(out)
    if a.composite != "none":
        for tile, paths in sorted(per_tile.items()):
            print(composite_scenes(paths, Path(a.out_dir) / "composites" / f"{tile}.tif", method=a.composite))


def cmd_chip(a: argparse.Namespace) -> None:
    from pixeldino.chip import make_chips

    stats = make_chips(
        scenes=[Path(p) for p in a.scenes],
        bands=a.bands,
        out_path=a.out,
        labels=a.labels,
        label_footprint=a.footprint,
        holdout=a.holdout,
        unlabelled_scenes=[Path(p) for p in (a.unlabelled_scenes or a.scenes)],
        chip_size=a.size,
        n_labelled=a.n_labelled,
        n_unlabelled=a.n_unlabelled,
        positive_fraction=a.positive_fraction,
        seed=a.seed,
    )
    print({k: v for k, v in stats.items() if not isinstance(v, (list, dict))})


def cmd_train(a: argparse.Namespace) -> None:
    from pixeldino.params import from_namespace
    from pixeldino.train import TrainConfig, train_from_store

    config = from_namespace(TrainConfig, a, normalisation={"method": a.normalisation})
    metrics = train_from_store(a.chips, a.out_dir, config, bands=a.bands, resume=a.resume)
    print({k: v for k, v in metrics.items() if isinstance(v, (int, float, str))})


def cmd_predict(a: argparse.Namespace) -> None:
    from pixeldino.pipeline import predict_scene_on
    from pixeldino.quality import find_quality_mask

    predict_scene_on(
        a.dask_scheduler,
        a.scene,
        a.model,
        a.out,
        out_pseudo=a.pseudo_out,
        patch_size=a.patch_size,
        overlap=a.overlap,
        batch_size=a.batch_size,
        chunk_size=a.chunk_size,
        tta=a.tta,
        device=a.device,
        num_threads=a.threads,
        quality_mask=a.quality_mask or find_quality_mask(a.scene),
        nodata_classes=a.nodata_classes,
        backend=a.backend,
        precision=a.precision,
    )
    print(a.out)


def cmd_polygonize(a: argparse.Namespace) -> None:
    from pixeldino.polygonize import polygonize_scene

    gdf = polygonize_scene(
        a.prob, a.out, threshold=a.threshold, min_area_m2=a.min_area, opening_radius=a.opening_radius,
        quality_mask=a.quality_mask, permanent_water=a.permanent_water,
        **_given(a, water_action="water_action", water_max_share="water_max_share",
                 water_min_occurrence="water_min_occurrence"),
    )
    print(f"{a.out}: {len(gdf)} polygons")


def _given(a: argparse.Namespace, **names: str) -> dict[str, Any]:
    """Keyword arguments for the options the user gave (``names``: parameter -> option dest); the library's
    defaults apply to the others, so a default is written only once."""
    return {param: getattr(a, dest) for param, dest in names.items() if getattr(a, dest, None) is not None}


def cmd_merge(a: argparse.Namespace) -> None:
    from pixeldino.merge import merge_polygons

    gdf = merge_polygons(a.inputs, a.out, crs=a.crs, out_parquet=a.parquet,
                         **_given(a, geometry="geometry", min_overlap="min_overlap"))
    print(f"{a.out}: {len(gdf)} slumps")


def cmd_coregister(a: argparse.Namespace) -> None:
    from pixeldino.coregister import coregister_tile

    record = coregister_tile(a.scenes, a.out, **_given(a, band="band"))
    for scene_id, entry in record["scenes"].items():
        print(f"{scene_id}\t{entry['year']}\tdx {entry['dx_px']:+.3f} px\tdy {entry['dy_px']:+.3f} px\t{entry['status']}")


def cmd_change(a: argparse.Namespace) -> None:
    from pixeldino.change import change_map

    tracks = change_map(
        a.inputs, a.out, years=a.years or None, crs=a.crs, coregistration=a.coregistration,
        out_tracks_parquet=a.tracks_parquet, out_years_parquet=a.years_parquet, out_change_png=a.change_png,
        out_growth_png=a.growth_png,
        **_given(a, geometry="geometry", merge_overlap="merge_overlap", min_overlap="min_overlap",
                 stable_tolerance="stable_tolerance", max_shift_px="max_shift_px"),
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
    build_catalog(a.out, run=a.run, sidecars=a.sidecars, probabilities=a.probabilities, pseudo=a.pseudo or (),
                  polygons=a.polygons or (), merged=merged, change=change)
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

    print(f"{a.site}: pixel IoU {fmt(pixel['iou'])}  F1 {fmt(pixel['f1'])}  object recall {fmt(result['object']['recall'])}")


def cmd_config(a: argparse.Namespace) -> None:
    import yaml

    from pixeldino.config import load_config

    print(yaml.safe_dump(load_config(a.config), sort_keys=False), end="")


# ---------------------------------------------------------------- parser
def _train_options(p: argparse.ArgumentParser) -> None:
    """One ``--option`` per :class:`pixeldino.train.TrainConfig` field, defaults from the dataclass."""
    from pixeldino import train
    from pixeldino.params import add_dataclass_options

    add_dataclass_options(p, train.TrainConfig, exclude=("normalisation",), choices=train.CHOICES,
                          aliases={"num_threads": ("--threads",)})  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
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

    p = verb("search", cmd_search, "Search a STAC catalog or API for Sentinel-2 scenes; write a scene manifest.")
    p.add_argument("--provider", choices=["local", "earth-search", "planetary-computer", "cdse", "custom"],
                   help="scene provider (default: local for a path, custom for a URL, earth-search without --catalog)")
    p.add_argument("--catalog", help="local static catalog.json (provider local) or STAC API URL (provider custom)")
    p.add_argument("--collection", help="collection id (default: the provider's, e.g. sentinel-2-l2a)")
    p.add_argument("--aoi", help="area of interest: vector file, 'W,S,E,N' in degrees, or 'circumpolar'")
    p.add_argument("--tiles", nargs="*", default=[], help="MGRS tiles, e.g. 08WMA")
    p.add_argument("--datetime", default="2021-07-01/2021-08-31", help="date range START/END")
    p.add_argument("--years", type=int, nargs="*", default=[], help="search --months of these years instead")
    p.add_argument("--months", type=int, nargs="+", default=[7, 8], help="months of the season (with --years)")
    p.add_argument("--max-cloud-cover", type=float, default=20.0, help="percent")
    p.add_argument("--max-snow-cover", type=float, default=100.0, help="percent")
    p.add_argument("--max-scenes-per-tile", type=int, default=1)
    p.add_argument("--bands", type=_bands, default=DEFAULT_BANDS, help="comma-separated band ids")
    p.add_argument("--out", required=True, help="manifest JSON to write")

    p = verb("fetch", cmd_fetch, "Fetch the scenes of a manifest into 10 m multi-band COGs (skips completed ones).")
    p.add_argument("--manifest", required=True)
    p.add_argument("--scene", nargs="*", help="only these scene ids (default: all)")
    p.add_argument("--bands", type=_bands, default=DEFAULT_BANDS)
    p.add_argument("--aoi", help="clip to this area of interest (vector file or 'W,S,E,N')")
    p.add_argument("--resolution", type=float, default=10.0, help="metres")
    p.add_argument("--no-harmonize", action="store_true", help="keep the baseline >= 04.00 offset in the DN")
    p.add_argument("--no-mask", action="store_true", help="do not write the SCL quality mask")
    p.add_argument("--composite", choices=["none", "median"], default="none",
                   help="also write a per-tile median composite to OUT_DIR/composites/")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--overwrite", action="store_true")

    p = verb("chip", cmd_chip, "Cut labelled and unlabelled training chips into a zarr store.")
    p.add_argument("--scenes", nargs="+", required=True, help="scene COGs")
    p.add_argument("--bands", type=_bands, default=DEFAULT_BANDS)
    p.add_argument("--labels", help="RTS polygons (any vector format/CRS)")
    p.add_argument("--footprint", help="area where the labels are complete")
    p.add_argument("--holdout", help="part of the footprint kept for validation")
    p.add_argument("--unlabelled-scenes", nargs="*", help="scenes for unlabelled chips (default: --scenes)")
    p.add_argument("--size", type=int, default=64, help="chip size in pixels")
    p.add_argument("--n-labelled", type=int, default=96)
    p.add_argument("--n-unlabelled", type=int, default=96)
    p.add_argument("--positive-fraction", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="zarr store to write")

    p = verb("train", cmd_train, "Train a segmentation model (PixelDINO or a baseline); export the teacher or student.")
    p.add_argument("--chips", required=True, help="chip store (zarr)")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--bands", type=_bands, default=None, help="expected bands (default: the chip store's)")
    p.add_argument("--no-resume", dest="resume", action="store_false",
                   help="start from scratch even if OUT_DIR holds a checkpoint")
    p.add_argument("--normalisation", choices=["logsigmoid", "zscore", "scale"], default="logsigmoid")
    _train_options(p)

    p = verb("predict", cmd_predict, "Sliding-window RTS probability over a whole scene (bounded memory).")
    p.add_argument("scene", help="scene COG (uint16, band descriptions = band ids)")
    p.add_argument("--model", required=True, help="model .safetensors (with its .json)")
    p.add_argument("--out", required=True, help="probability COG to write (uint8, p x 254, nodata 255)")
    p.add_argument("--pseudo-out", help="also write the pseudo-class QA map here")
    p.add_argument("--patch-size", type=int)
    p.add_argument("--overlap", type=float, default=0.25)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--chunk-size", type=int, default=2048)
    p.add_argument("--tta", action="store_true", help="average the 8 flips/rotations")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--backend", choices=BACKENDS, default=DEFAULT_BACKEND,
                   help="inference engine; auto: torch on a GPU, else openvino > onnxruntime > torch, as installed")
    p.add_argument("--precision", choices=PRECISIONS, default=DEFAULT_PRECISION,
                   help="auto: bfloat16 on a GPU, float32 on the CPU; bfloat16 on the CPU: faster, ~1e-2 off")
    p.add_argument("--threads", type=int, help="CPU threads for the model")
    p.add_argument("--quality-mask", help="uint8 quality mask on the scene grid (default: the one "
                   "`pixeldino fetch` wrote beside the scene, if any)")
    p.add_argument("--nodata-classes", nargs="*", choices=sorted(quality.CLASS_VALUES.keys() - {"clear"}),
                   default=list(quality.DEFAULT_NODATA_CLASSES),
                   help="mask classes written as nodata; pixels of the other classes are predicted")
    p.add_argument("--dask-scheduler", help="run on a dask distributed cluster: address or scheduler file")

    p = verb("polygonize", cmd_polygonize, "Turn an RTS probability raster into polygons (GeoPackage layer 'rts').")
    p.add_argument("prob")
    p.add_argument("--out", required=True)
    p.add_argument("--threshold", type=float, help="default: the model's calibrated threshold")
    p.add_argument("--min-area", type=float, default=500.0, help="minimum polygon area, m2")
    p.add_argument("--opening-radius", type=int, default=0, help="binary opening radius, pixels")
    p.add_argument("--quality-mask", help="the scene's quality mask: per-class fractions per polygon")
    p.add_argument("--permanent-water", help="permanent-water layer: vector file or water-occurrence raster")
    p.add_argument("--water-action", choices=quality.WATER_ACTIONS, default=quality.DEFAULT_WATER_ACTION,
                   help="polygons mostly in permanent water: flag or drop")
    p.add_argument("--water-max-share", type=float, default=quality.DEFAULT_WATER_MAX_SHARE,
                   help="share of a polygon in water that makes it 'inside'")
    p.add_argument("--water-min-occurrence", type=float, default=quality.DEFAULT_WATER_MIN_OCCURRENCE,
                   help="raster layers: permanent water from this value up")

    p = verb("merge", cmd_merge, "Merge per-scene polygons into one deduplicated equal-area map.")
    p.add_argument("inputs", nargs="+", help="per-scene GeoPackages")
    p.add_argument("--out", required=True)
    p.add_argument("--parquet", help="also write GeoParquet here")
    p.add_argument("--crs", default="EPSG:3413")
    p.add_argument("--geometry", default=argparse.SUPPRESS, choices=["best", "union"],
                   help="best single detection per slump (the default) or the union of overlapping detections")
    p.add_argument("--min-overlap", default=argparse.SUPPRESS, type=float, help="best: overlap share that makes two detections one slump")

    p = verb("coregister", cmd_coregister,
             "Measure the sub-pixel shift of each scene of one tile against its reference scene (JSON sidecar).")
    p.add_argument("scenes", nargs="+", help="fetched scene COGs of one MGRS tile, any years")
    p.add_argument("--out", required=True, help="per-tile co-registration JSON to write")
    p.add_argument("--band", default=argparse.SUPPRESS, help="band to correlate (default: pixeldino.coregister.DEFAULT_BAND)")

    p = verb("change", cmd_change,
             "Per-year RTS maps and slump tracks (growth, status) from per-scene polygons of several years.")
    p.add_argument("inputs", nargs="+", help="per-scene GeoPackages of all years")
    p.add_argument("--out", required=True, help="GeoPackage: layers rts_<year>, rts_tracks, rts_track_links")
    p.add_argument("--years", type=int, nargs="*", help="years to map (default: those found)")
    p.add_argument("--coregistration", nargs="*", default=[], help="per-tile JSON from `pixeldino coregister`")
    p.add_argument("--crs", default="EPSG:3413")
    p.add_argument("--tracks-parquet", help="also write the tracks as GeoParquet")
    p.add_argument("--years-parquet", help="also write all year layers as one GeoParquet (column year)")
    p.add_argument("--change-png", help="change map PNG")
    p.add_argument("--growth-png", help="growth distribution PNG")
    p.add_argument("--geometry", default=argparse.SUPPRESS, choices=["best", "union"], help="within-year merge rule (default: as for merge)")
    p.add_argument("--merge-overlap", default=argparse.SUPPRESS, type=float, help="within-year merge: overlap share of one slump")
    p.add_argument("--min-overlap", default=argparse.SUPPRESS, type=float, help="tracking: overlap share that links two years")
    p.add_argument("--stable-tolerance", default=argparse.SUPPRESS, type=float, help="relative area change still counted as stable")
    p.add_argument("--max-shift-px", default=argparse.SUPPRESS, type=float, help="refuse co-registration shifts above this")

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

    p = verb("config", cmd_config, "Validate a workflow config and print it with all defaults filled in.")
    p.add_argument("config", nargs="?", default="config/config.yaml")
    return parser


def main(argv: list[str] | None = None) -> int:
    from pixeldino.runner import run_stage

    args = build_parser().parse_args(argv)
    run_stage(args.verb, lambda: args.func(args), [args.log] if args.log else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
