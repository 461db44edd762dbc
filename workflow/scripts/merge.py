"""Snakemake script: merge per-scene polygons into one deduplicated equal-area map."""

from pixeldino.merge import MergeParams, run_merge
from pixeldino.params import from_config
from pixeldino.runner import snakemake_stage


def main() -> None:
    out = snakemake.output
    run_merge(from_config(MergeParams, snakemake.params.merge), list(snakemake.input.polygons), out.gpkg, out.parquet)


snakemake_stage(snakemake, "merge", main)
