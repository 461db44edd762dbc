"""What each ``pixeldino`` verb does once its command line is parsed (:mod:`pixeldino.cli` builds the parser).

Every handler takes the parsed :class:`argparse.Namespace`, runs its stage and prints what it wrote. The stage
modules are imported inside the handlers, so that this module stays light: ``pixeldino merge`` must not pay for
the torch import of ``predict`` and ``train``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pixeldino.params import from_namespace


def cmd_search(a: argparse.Namespace) -> None:
    """Search for scenes; write the manifest and print one line per scene."""
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
    """Fetch the manifest's scenes; print each scene (and composite) written or reused."""
    from pixeldino.auxlayers import AuxParams
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
        aux=from_namespace(AuxParams, a, prefix="aux-"),
    )
    reused = set(report.reused)
    for out in report.scenes:
        skipped = " is complete (same bands and settings), skipped (use --overwrite to fetch again)"
        print(f"{out}{skipped if out in reused else ''}")
    for composite in report.composites:
        print(composite)


def cmd_chip(a: argparse.Namespace) -> None:
    """Cut the chip store; print its summary."""
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
    print(stats["summary"])


def cmd_train(a: argparse.Namespace) -> None:
    """Train a model; print its scalar metrics."""
    from pixeldino.train import TrainConfig, TrainOutputs, run_train

    overrides: dict[str, Any] = {"normalisation": {"method": a.normalisation_method}} if a.normalisation_method else {}
    config = from_namespace(TrainConfig, a, **overrides)
    metrics = run_train(config, a.chips, TrainOutputs.in_dir(a.out_dir), bands=a.bands, resume=a.resume)
    print({k: v for k, v in metrics.items() if isinstance(v, (int, float, str))})


def cmd_predict(a: argparse.Namespace) -> None:
    """Predict one scene's probability raster (the scene's quality mask by default); print its path."""
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
    """Polygonise a probability raster; print the number of polygons."""
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
    """Merge per-scene polygons; print the number of slumps."""
    from pixeldino.merge import MergeParams, run_merge

    gdf = run_merge(from_namespace(MergeParams, a), a.inputs, a.out, a.parquet)
    print(f"{a.out}: {len(gdf)} slumps")


def cmd_coregister(a: argparse.Namespace) -> None:
    """Co-register the scenes of one tile; print each scene's shift."""
    from pixeldino.change import ChangeParams
    from pixeldino.coregister import coregister_tile

    record = coregister_tile(a.scenes, a.out, band=from_namespace(ChangeParams, a).coregistration_band)
    for scene_id, entry in record["scenes"].items():
        print(
            f"{scene_id}\t{entry['year']}\tdx {entry['dx_px']:+.3f} px\tdy {entry['dy_px']:+.3f} px\t{entry['status']}"
        )


def cmd_change(a: argparse.Namespace) -> None:
    """Per-year maps and slump tracks; print the track counts by status."""
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
    """Write the run's STAC catalog (or only validate one, ``--validate``); print how many objects are valid."""
    from pixeldino.catalog import build_catalog
    from pixeldino.errors import InputError
    from pixeldino.stac_checks import validate_catalog

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
        model_card=a.model_card,
    )
    root = Path(a.out) / "catalog.json"
    print(f"{root}: {validate_catalog(root, a.schemas)} STAC objects valid")


def cmd_card(a: argparse.Namespace) -> None:
    """Validate a model's card offline; print its summary."""
    from pixeldino.modelcard import card_summary, read_model_card
    from pixeldino.modelio import model_card_path
    from pixeldino.stac_checks import validate_stac_file

    card = read_model_card(a.model)
    path = a.model if str(a.model).endswith(".stac.json") else model_card_path(a.model)
    validate_stac_file(path, a.schemas)
    print(f"{path}: valid model card (STAC item, MLM extension)")
    print(card_summary(card))


def cmd_evaluate(a: argparse.Namespace) -> None:
    """Evaluate a prediction against labels; write the metrics JSON and print the headline numbers."""
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
    """Validate config files; print the effective config."""
    import yaml

    from pixeldino.config import load_config

    print(yaml.safe_dump(load_config(*a.config), sort_keys=False), end="")
