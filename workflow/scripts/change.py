"""Snakemake script: per-year RTS maps and slump tracks (growth, status) from co-registered per-scene polygons."""
from pixeldino.change import change_map
from pixeldino.pipeline import given
from pixeldino.runner import snakemake_stage


def main() -> None:
    m, c, out = snakemake.params.merge, snakemake.params.change, snakemake.output
    change_map(
        list(snakemake.input.polygons),
        out.gpkg,
        years=snakemake.params.years,
        crs=m["crs"],
        coregistration=list(snakemake.input.coregistration),
        out_tracks_parquet=out.tracks_parquet,
        out_years_parquet=out.years_parquet,
        out_change_png=out.change_png,
        out_growth_png=out.growth_png,
        **given(m, {"geometry": "geometry", "min_overlap": "merge_overlap"}),
        **given(c, {"min_overlap": "min_overlap", "stable_tolerance": "stable_tolerance",
                    "max_shift_px": "max_shift_px"}),
    )


snakemake_stage(snakemake, "change", main)
