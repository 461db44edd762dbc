"""Snakemake script: seasonal median composite of one tile's fetched scenes."""

from pixeldino.composite import composite_scenes
from pixeldino.runner import snakemake_stage


def main() -> None:
    composite_scenes(list(snakemake.input.scenes), snakemake.output.composite, method=snakemake.params.method)


snakemake_stage(snakemake, "composite", main)
