"""Snakemake script: merge per-scene polygons into one deduplicated equal-area map."""
from pixeldino.merge import merge_polygons
from pixeldino.pipeline import given
from pixeldino.runner import snakemake_stage


def main() -> None:
    m = snakemake.params.merge
    merge_polygons(
        list(snakemake.input.polygons),
        snakemake.output.gpkg,
        crs=m["crs"],
        out_parquet=snakemake.output.parquet,
        **given(m, {"geometry": "geometry", "min_overlap": "min_overlap"}),
    )


snakemake_stage(snakemake, "merge", main)
