"""Snakemake script: merge per-scene polygons into one deduplicated equal-area map."""
from pixeldino.merge import merge_polygons
from pixeldino.runner import snakemake_stage


def main() -> None:
    merge_polygons(
        list(snakemake.input.polygons),
        snakemake.output.gpkg,
        crs=snakemake.params.crs,
        out_parquet=snakemake.output.parquet,
    )


snakemake_stage(snakemake, "merge", main)
