"""Snakemake script: cut labelled and unlabelled training chips into a zarr store."""
from pathlib import Path

from pixeldino.chip import make_chips
from pixeldino.pipeline import scenes_of_tiles
from pixeldino.runner import snakemake_stage


def main() -> None:
    labels, chips = snakemake.params.labels, snakemake.params.chips
    scenes = [Path(p) for p in snakemake.input.scenes]
    make_chips(
        scenes=scenes,
        bands=snakemake.params.bands,
        out_path=snakemake.output.chips,
        labels=labels["file"],
        label_footprint=labels["footprint"],
        holdout=labels["holdout"],
        unlabelled_scenes=scenes_of_tiles(scenes, chips["unlabelled_tiles"], snakemake.input.manifest),
        chip_size=chips["size"],
        n_labelled=chips["n_labelled"],
        n_unlabelled=chips["n_unlabelled"],
        positive_fraction=chips["positive_fraction"],
        seed=chips["seed"],
    )


snakemake_stage(snakemake, "chip", main)
