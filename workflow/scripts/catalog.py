"""Snakemake script: the STAC catalog of the run's outputs, validated offline once written."""

from pixeldino.catalog import build_catalog, validate_catalog
from pixeldino.runner import snakemake_stage


def main() -> None:
    i = snakemake.input
    out = snakemake.output.catalog
    build_catalog(
        out,
        run=snakemake.params.run,
        sidecars=list(i.sidecars),
        probabilities=list(i.probabilities),
        pseudo=list(i.pseudo),
        polygons=list(i.polygons),
        merged={"gpkg": i.merged_gpkg, "parquet": i.merged_parquet},
        change=snakemake.params.change,
    )
    validate_catalog(f"{out}/catalog.json")


snakemake_stage(snakemake, "catalog", main)
