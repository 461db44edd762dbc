"""Snakemake script: cut labelled and unlabelled training chips into a zarr store."""

from pathlib import Path

from pixeldino.chip import ChipParams, run_chip
from pixeldino.manifest import scenes_of_tiles
from pixeldino.runner import snakemake_stage


def main() -> None:
    labels, chips = snakemake.params.labels, snakemake.params.chips
    # unlabelled_tiles picks scenes (it needs the manifest), so it is the workflow's, not a chipping parameter
    params = ChipParams(**{k: v for k, v in chips.items() if k != "unlabelled_tiles"})
    scenes = [Path(p) for p in snakemake.input.scenes]
    run_chip(
        params,
        scenes=scenes,
        bands=snakemake.params.bands,
        out=snakemake.output.chips,
        labels=labels["file"],
        footprint=labels["footprint"],
        holdout=labels["holdout"],
        unlabelled_scenes=scenes_of_tiles(scenes, chips["unlabelled_tiles"], snakemake.input.manifest),
        stats_out=snakemake.output.stats,
    )


snakemake_stage(snakemake, "chip", main)
