"""Snakemake script: per-year RTS maps and slump tracks (growth, status) from co-registered per-scene polygons."""

from pixeldino.change import ChangeParams, run_change
from pixeldino.merge import MergeParams
from pixeldino.params import from_config
from pixeldino.runner import snakemake_stage


def main() -> None:
    out = snakemake.output
    run_change(
        from_config(ChangeParams, snakemake.params.change),
        from_config(MergeParams, snakemake.params.merge),
        list(snakemake.input.polygons),
        out.gpkg,
        years=snakemake.params.years,
        coregistration=list(snakemake.input.coregistration),
        out_tracks_parquet=out.tracks_parquet,
        out_years_parquet=out.years_parquet,
        out_change_png=out.change_png,
        out_growth_png=out.growth_png,
    )


snakemake_stage(snakemake, "change", main)
